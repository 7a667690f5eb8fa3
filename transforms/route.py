"""Fan each event out to every enabled sync, into its track and identify branches.

Per (event, sync) each branch either produces work or records why it skipped the event
(``events_disabled``, ``not_selected``, ``missing_identifier``, ...), so every event is
accounted for in every branch of every sync.
"""
from __future__ import annotations

from typing import Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from pipeline.config import Sync
from transforms.filters import compile_selectors
from transforms.identifiers import IdentifierMapper
from transforms.identify import identify_key, selected_updates
from transforms.records import EVENTS, IDENTIFY, SKIPPED, TRACK, BrazeItem, Outcome
from transforms.track import NOT_TRACKED_EVENT_TYPES, event_object

IDENTIFY_TAG = "identify"
OUTCOME_TAG = "outcomes"


class _SyncRoute:
    """What one sync needs per event, compiled once per worker."""

    def __init__(self, sync: Sync):
        self.name = sync.name
        self.mapper = IdentifierMapper(sync.identifier, sync.users.update_existing_only)
        self.events_enabled = sync.events.enabled
        self.selects = compile_selectors(sync.events.select) if sync.events.enabled else None
        self.event_properties = sync.events.properties
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


class _RouteDoFn(beam.DoFn):
    def __init__(self, syncs: Tuple[Sync, ...]):
        self._syncs = syncs
        self._routes = None

    def setup(self):
        self._routes = [_SyncRoute(sync) for sync in self._syncs]

    def process(self, parsed):
        event = parsed.event
        source = parsed.source
        for route in self._routes:
            route.events_in.inc()
            user_key = route.mapper.user_key(event)
            fields = route.mapper.fields(user_key) if user_key is not None else None

            # Track branch.
            if not route.events_enabled:
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, TRACK, "events_disabled"))
            elif event["event_type"] in NOT_TRACKED_EVENT_TYPES:
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, TRACK, "identify_call"))
            elif not route.selects(event):
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, TRACK, "not_selected"))
            elif fields is None:
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, TRACK, "missing_identifier"))
            else:
                obj = event_object(event, parsed.time_ms, fields, route.event_properties, route.app_id)
                yield BrazeItem(route.name, user_key, EVENTS, obj, (source,), TRACK, parsed.publish_time_ms)

            # Identify branch: only events that touch a selected property reach the state.
            if not route.users_enabled:
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, IDENTIFY, "users_disabled"))
                continue
            updates = selected_updates(event["user_properties"], route.user_properties)
            if not updates:
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, IDENTIFY, "no_selected_property"))
            elif fields is None:
                yield pvalue.TaggedOutput(OUTCOME_TAG, route.skip(source, IDENTIFY, "missing_identifier"))
            else:
                yield pvalue.TaggedOutput(
                    IDENTIFY_TAG, (identify_key(route.name, user_key), (source, parsed.publish_time_ms, fields, updates))
                )


class RouteToSyncs(beam.PTransform):
    """ParsedEvent → track BrazeItems (main), identify work (tag ``identify``), skips (tag ``outcomes``)."""

    def __init__(self, syncs: Tuple[Sync, ...]):
        super().__init__()
        if not syncs:
            raise ValueError("RouteToSyncs needs at least one enabled sync")
        self._syncs = tuple(syncs)

    def expand(self, events):
        return events | "Route" >> beam.ParDo(_RouteDoFn(self._syncs)).with_outputs(
            IDENTIFY_TAG, OUTCOME_TAG, main="track"
        )
