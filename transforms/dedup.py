"""Drop repeated events (same insert id) within a bounded window.

Pub/Sub delivers at least once and publishers retry, and Braze stores every event object it
gets as a new event (braze-api.md §6): a repeat that reaches Braze is a duplicate for good.
Amplitude dedups on ``insert_id`` per device; so do we, before the fan-out to syncs, which is
the same as doing it per sync because every sync sees the same stream, at a fraction of the
state. The key is ``insert id | device_id or user_id``; an event without an insert id is keyed
by its own source, so it never repeats.

State per key is one boolean and a processing-time timer that clears it after the window, so
it holds at most (events per window) keys. A repeat is not silently dropped: it ends as a
``skipped/duplicate`` outcome and is counted.
"""
from __future__ import annotations

import time
from typing import Any, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import BooleanCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.records import SKIPPED, Outcome, ParsedEvent

OUTCOME_TAG = "outcomes"
DEDUP_BRANCH = "dedup"


def dedup_key(parsed: ParsedEvent) -> str:
    """The key repeats share; unique to the event when it has no insert id."""
    if not parsed.insert_id:
        return f"~{parsed.source}"
    event = parsed.event
    return f"{parsed.insert_id}|{event.get('device_id') or event.get('user_id') or ''}"


class _DropRepeatsDoFn(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, window_seconds: float, clock=time.time):
        self._window = window_seconds
        self._clock = clock
        self._dropped = Metrics.counter("dedup", "duplicates_dropped")

    def process(self, element, seen=beam.DoFn.StateParam(SEEN), expiry=beam.DoFn.TimerParam(EXPIRY)):
        _, parsed = element
        if seen.read():
            self._dropped.inc()
            yield pvalue.TaggedOutput(OUTCOME_TAG, Outcome(parsed.source, "", DEDUP_BRANCH, SKIPPED, "duplicate"))
            return
        seen.write(True)
        expiry.set(Timestamp.of(self._clock() + self._window))
        yield parsed

    @on_timer(EXPIRY)
    def expire(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()


class DropRepeats(beam.PTransform):
    """ParsedEvent → ParsedEvent without repeats (main) and ``outcomes`` for what was dropped."""

    def __init__(self, window_seconds: float, clock=time.time):
        super().__init__()
        if window_seconds <= 0:
            raise ValueError(f"the dedup window must be > 0 seconds, got {window_seconds}")
        self._window = window_seconds
        self._clock = clock

    def expand(self, events):
        kept = (
            events
            # A typed key: Beam then knows its coder is deterministic, as state keys must be.
            | "KeyByInsertId" >> beam.Map(lambda parsed: (dedup_key(parsed), parsed)).with_output_types(
                Tuple[str, Any])
            | "DropRepeats" >> beam.ParDo(_DropRepeatsDoFn(self._window, self._clock)).with_outputs(
                OUTCOME_TAG, main="kept")
        )
        return {"events": kept.kept, "outcomes": kept[OUTCOME_TAG]}
