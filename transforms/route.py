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

What each branch sends is the sync's mappings (``transforms.mappings``): ``users.properties``
and ``users.mappings`` give the identify updates under their Braze names, with standard
attributes in Braze's format; a value that cannot be made valid is left out and counted
(``route.<sync>.identify.value_skipped.<reason>``), and when nothing else is left the event's
identify branch is skipped with that reason (``invalid_email``, ``unknown_country``, ...).
``events.properties`` and ``events.mappings`` give the event and purchase properties.

Anonymous users (``identifier.anonymous``): an event without the main identifier's value goes
to its device's alias profile instead of being skipped (``transforms.anonymous``), under a
user key no external id can take (``anonymous_user_key``). Every event of such a sync that
names a device, identified or anonymous, is also reported to the merge step (tag
``anonymous``: ``(anonymous_key(sync, device), DeviceSighting)``), which decides when to ask
Braze to merge the alias profile into the user's (``transforms.device_merge``). An anonymous
event is reported only when it sent something to the alias profile, since only then can the
profile exist.
"""
from __future__ import annotations

from typing import Tuple

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms.model import Sync
from transforms.anonymous import AnonymousRouting, anonymous_key, anonymous_user_key
from transforms.coders import typed
from transforms.filters import compile_selectors
from transforms.guard import INTERNAL_ERROR, Failure, guarded
from transforms.identifiers import IdentifierMapper
from transforms.identify import identify_key
from transforms.mappings import EventMappings, UserMappings
from transforms.purchases import purchase_of, purchase_objects
from transforms.records import DEAD_LETTERED, EVENTS, IDENTIFY, NO_PREDECESSOR, PURCHASES, SKIPPED, TRACK, \
    BrazeItem, DeadLetter, DeviceSighting, IdentifyWork, Outcome, UserBatch, utc_now_iso
from transforms.track import NOT_TRACKED_EVENT_TYPES, event_object

IDENTIFY_TAG = "identify"
ANONYMOUS_TAG = "anonymous"
OUTCOME_TAG = "outcomes"
DEAD_LETTER_TAG = "dead_letters"
ROUTE_BRANCH = "route"
NO_SELECTED_PROPERTY = "no_selected_property"


class _SyncRoute:
    """What one sync needs per event, compiled once per worker."""

    def __init__(self, sync: Sync):
        self.name = sync.name
        self.mapper = IdentifierMapper(sync.identifier, sync.users.update_existing_only)
        self.anonymous = AnonymousRouting.of(sync.identifier)
        self.shadow = sync.shadow
        self.events_enabled = sync.events.enabled
        self.selects = compile_selectors(sync.events.select) if sync.events.enabled else None
        self.event_mappings = EventMappings.from_settings(sync.events)
        self.purchases = sync.events.enabled and sync.events.purchases
        self.app_id = sync.app_id
        self.users_enabled = sync.users.enabled
        self.user_mappings = UserMappings.from_settings(sync.users)
        counter = lambda name: Metrics.counter("route", f"{sync.name}.{name}")  # noqa: E731
        self.events_in = counter("events_in")
        self.to_alias = counter("anonymous_to_alias")
        self.skipped = {}
        self.values_skipped = {}
        self._counter = counter

    def skip(self, source: str, branch: str, reason: str) -> Outcome:
        key = (branch, reason)
        if key not in self.skipped:
            self.skipped[key] = self._counter(f"{branch}.skipped.{reason}")
        self.skipped[key].inc()
        return Outcome(source, self.name, branch, SKIPPED, reason)

    def value_skipped(self, reason: str) -> None:
        """A standard attribute's value that cannot be made valid, left out of an update."""
        counter = self.values_skipped.get(reason)
        if counter is None:
            counter = self.values_skipped[reason] = self._counter(f"{IDENTIFY}.value_skipped.{reason}")
        counter.inc()


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
            device = route.anonymous.device(event) if route.anonymous is not None else None
            identified = user_key is not None
            if identified:
                fields = route.mapper.fields(user_key)
            elif device is not None:  # anonymous: the device's alias profile
                user_key = anonymous_user_key(device)
                fields = route.anonymous.fields(device)
            else:
                fields = None

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

            # Identify branch: only events that touch a mapped field reach the state.
            updated = False
            if not route.users_enabled:
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, IDENTIFY, "users_disabled"))
                yield from _unordered(route.name, user_key, track)
            else:
                updates, skipped = route.user_mappings.updates(event)
                if skipped and fields is not None:
                    for _, reason in skipped:
                        route.value_skipped(reason)
                if not updates:
                    reason = skipped[0][1] if skipped and fields is not None else NO_SELECTED_PROPERTY
                    yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, IDENTIFY, reason))
                    yield from _unordered(route.name, user_key, track)
                elif fields is None:
                    yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, IDENTIFY, "missing_identifier"))
                    yield from _unordered(route.name, user_key, track)
                else:
                    # The event's own objects ride along, so they reach the packer right after the
                    # attribute update they go with, and not before it on the shorter path.
                    updated = True
                    yield pvalue.TaggedOutput(IDENTIFY_TAG, (
                        identify_key(route.name, user_key),
                        IdentifyWork(source, parsed.publish_time_ms, parsed.time_ms, fields,
                                     tuple(tuple(u) for u in updates), tuple(track)),
                    ))

            # The merge step hears of every device: who it belongs to, or that its alias got data.
            # A sync in shadow mode sends nothing to Braze, merges included.
            if device is not None:
                if identified or track or updated:
                    if not identified:
                        route.to_alias.inc()
                    if route.shadow:
                        continue
                    yield pvalue.TaggedOutput(ANONYMOUS_TAG, (
                        anonymous_key(route.name, device),
                        DeviceSighting(source, user_key if identified else None)))

    @staticmethod
    def _track(route: _SyncRoute, parsed, user_key: str, fields: dict):
        """The event's track objects (or a skip): BrazeItems for the caller to group."""
        event, source = parsed.event, parsed.source
        purchase = purchase_of(event) if route.purchases else None
        if isinstance(purchase, str):
            yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, TRACK, purchase))
        elif purchase is not None:
            for obj in purchase_objects(purchase, event, parsed.time_ms, fields, route.event_mappings, route.app_id):
                yield BrazeItem(route.name, user_key, PURCHASES, obj, (source,), TRACK, parsed.publish_time_ms)
        else:
            obj = event_object(event, parsed.time_ms, fields, route.event_mappings, route.app_id)
            yield BrazeItem(route.name, user_key, EVENTS, obj, (source,), TRACK, parsed.publish_time_ms)


def _unordered(sync: str, user_key, track):
    """An event's track objects that update nobody: one batch, with no order to keep."""
    if track:
        yield UserBatch(sync, user_key, tuple(track), 0, NO_PREDECESSOR)


class RouteToSyncs(beam.PTransform):
    """ParsedEvent → track objects as ``UserBatch`` (main), ``(identify key, IdentifyWork)``
    (tag ``identify``), ``(anonymous key, DeviceSighting)`` (tag ``anonymous``), skips (tag
    ``outcomes``), failures (tag ``dead_letters``)."""

    def __init__(self, syncs: Tuple[Sync, ...]):
        super().__init__()
        if not syncs:
            raise ValueError("RouteToSyncs needs at least one enabled sync")
        self._syncs = tuple(syncs)

    def expand(self, events):
        routed = events | "Route" >> beam.ParDo(_RouteDoFn(self._syncs)).with_outputs(
            IDENTIFY_TAG, ANONYMOUS_TAG, OUTCOME_TAG, DEAD_LETTER_TAG, main="track")
        typed(routed.track, UserBatch)
        typed(routed[IDENTIFY_TAG], Tuple[str, IdentifyWork])
        typed(routed[ANONYMOUS_TAG], Tuple[str, DeviceSighting])
        typed(routed[OUTCOME_TAG], Outcome)
        typed(routed[DEAD_LETTER_TAG], DeadLetter)
        return routed
