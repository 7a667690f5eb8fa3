"""Fan each event out to every enabled sync, into its track and identify branches.

Per (event, sync) each branch either produces work or records why it skipped the event
(``events_disabled``, ``not_selected``, ``missing_identifier``, ...), so every event is
accounted for in every branch of every sync. An unexpected error on one event dead-letters
that event (stage ``route``) and nothing else.

Track: a selected event becomes a Braze event object, or, where the sync sets
``events.purchases`` and the event carries revenue, purchase objects (``transforms.purchases``;
a purchase over Braze's quantity cap of 100 gives several objects, each carrying the event's
source). Identify: the selected user-property updates, keyed by (sync, user), with the event
time, so ``transforms.identify`` can apply them in event-time order.

An event that updates its user in a sync sends its track objects through the identify step
with the update: ``IdentifyDoFn`` emits the attribute object and then those objects, so they
reach the packer together and share a request (Braze applies a request's attributes before
its events). On the direct path the events would arrive first and could leave without it.
Events that update nobody go straight to the packer, as a ``UserBatch`` that needs no order.
"""
from __future__ import annotations

from typing import Tuple

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from pipeline.config import Sync
from transforms.coders import typed
from transforms.filters import compile_selectors
from transforms.guard import INTERNAL_ERROR, Failure, guarded
from transforms.identifiers import IdentifierMapper
from transforms.identify import identify_key, selected_updates
from transforms.purchases import purchase_of, purchase_objects
from transforms.records import DEAD_LETTERED, EVENTS, IDENTIFY, NO_PREDECESSOR, PURCHASES, SKIPPED, TRACK, \
    BrazeItem, DeadLetter, IdentifyWork, Outcome, UserBatch, utc_now_iso
from transforms.track import NOT_TRACKED_EVENT_TYPES, event_object

IDENTIFY_TAG = "identify"
OUTCOME_TAG = "outcomes"
DEAD_LETTER_TAG = "dead_letters"
ROUTE_BRANCH = "route"


class _SyncRoute:
    """What one sync needs per event, compiled once per worker."""

    def __init__(self, sync: Sync):
        self.name = sync.name
        self.mapper = IdentifierMapper(sync.identifier, sync.users.update_existing_only)
        self.events_enabled = sync.events.enabled
        self.selects = compile_selectors(sync.events.select) if sync.events.enabled else None
        self.event_properties = sync.events.properties
        self.purchases = sync.events.enabled and sync.events.purchases
        self.app_id = sync.app_id
        self.users_enabled = sync.users.enabled
        self.user_properties = frozenset(sync.users.properties)
        counter = lambda name: Metrics.counter("route", f"{sync.name}.{name}")  # noqa: E731
        self.events_in = counter("events_in")
        self.skipped = {}
        self._counter = counter

    def skip(self, source: str, branch: str, reason: str) -> Outcome:
        key = (branch, reason)
        if key not in self.skipped:
            self.skipped[key] = self._counter(f"{branch}.skipped.{reason}")
        self.skipped[key].inc()
        return Outcome(source, self.name, branch, SKIPPED, reason)


def _failed_event(dofn, parsed, failure: Failure):
    source = getattr(parsed, "source", "")
    event = getattr(parsed, "event", None)
    yield pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
        stage=ROUTE_BRANCH, reason=INTERNAL_ERROR, detail=failure.detail, sync="",
        data=orjson.dumps(event) if isinstance(event, dict) else b"", failed_at=utc_now_iso(),
        sources=(source,) if source else (), error_class=failure.error_class))
    if source:
        yield pvalue.TaggedOutput(OUTCOME_TAG, Outcome(source, "", ROUTE_BRANCH, DEAD_LETTERED, INTERNAL_ERROR))


class _RouteDoFn(beam.DoFn):
    def __init__(self, syncs: Tuple[Sync, ...]):
        self._syncs = syncs
        self._routes = None

    def setup(self):
        self._routes = [_SyncRoute(sync) for sync in self._syncs]

    @guarded(ROUTE_BRANCH, _failed_event)
    def process(self, parsed):
        event = parsed.event
        source = parsed.source
        for route in self._routes:
            route.events_in.inc()
            user_key = route.mapper.user_key(event)
            fields = route.mapper.fields(user_key) if user_key is not None else None

            # Track branch.
            track = []
            if not route.events_enabled:
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, TRACK, "events_disabled"))
            elif event["event_type"] in NOT_TRACKED_EVENT_TYPES:
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, TRACK, "identify_call"))
            elif not route.selects(event):
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, TRACK, "not_selected"))
            elif fields is None:
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, TRACK, "missing_identifier"))
            else:
                for out in self._track(route, parsed, user_key, fields):
                    if isinstance(out, pvalue.TaggedOutput):
                        yield out
                    else:
                        track.append(out)

            # Identify branch: only events that touch a selected property reach the state.
            if not route.users_enabled:
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, IDENTIFY, "users_disabled"))
                yield from _unordered(route.name, user_key, track)
                continue
            updates = selected_updates(event["user_properties"], route.user_properties)
            if not updates:
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, IDENTIFY, "no_selected_property"))
                yield from _unordered(route.name, user_key, track)
            elif fields is None:
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, IDENTIFY, "missing_identifier"))
                yield from _unordered(route.name, user_key, track)
            else:
                # The event's own objects ride along, so they reach the packer right after the
                # attribute update they go with, and not before it on the shorter path.
                yield pvalue.TaggedOutput(IDENTIFY_TAG, (
                    identify_key(route.name, user_key),
                    IdentifyWork(source, parsed.publish_time_ms, parsed.time_ms, fields,
                                 tuple(tuple(u) for u in updates), tuple(track)),
                ))

    @staticmethod
    def _track(route: _SyncRoute, parsed, user_key: str, fields: dict):
        """The event's track objects (or a skip): BrazeItems for the caller to group."""
        event, source = parsed.event, parsed.source
        purchase = purchase_of(event) if route.purchases else None
        if isinstance(purchase, str):
            yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, TRACK, purchase))
        elif purchase is not None:
            for obj in purchase_objects(purchase, event, parsed.time_ms, fields, route.event_properties, route.app_id):
                yield BrazeItem(route.name, user_key, PURCHASES, obj, (source,), TRACK, parsed.publish_time_ms)
        else:
            obj = event_object(event, parsed.time_ms, fields, route.event_properties, route.app_id)
            yield BrazeItem(route.name, user_key, EVENTS, obj, (source,), TRACK, parsed.publish_time_ms)


def _unordered(sync: str, user_key, track):
    """An event's track objects that update nobody: one batch, with no order to keep."""
    if track:
        yield UserBatch(sync, user_key, tuple(track), 0, NO_PREDECESSOR)


class RouteToSyncs(beam.PTransform):
    """ParsedEvent → track objects as ``UserBatch`` (main), ``(identify key, IdentifyWork)``
    (tag ``identify``), skips (tag ``outcomes``), failures (tag ``dead_letters``)."""

    def __init__(self, syncs: Tuple[Sync, ...]):
        super().__init__()
        if not syncs:
            raise ValueError("RouteToSyncs needs at least one enabled sync")
        self._syncs = tuple(syncs)

    def expand(self, events):
        routed = events | "Route" >> beam.ParDo(_RouteDoFn(self._syncs)).with_outputs(
            IDENTIFY_TAG, OUTCOME_TAG, DEAD_LETTER_TAG, main="track")
        typed(routed.track, UserBatch)
        typed(routed[IDENTIFY_TAG], Tuple[str, IdentifyWork])
        typed(routed[OUTCOME_TAG], Outcome)
        typed(routed[DEAD_LETTER_TAG], DeadLetter)
        return routed
