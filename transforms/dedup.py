"""Drop repeated events (same insert id) within a bounded window.

Pub/Sub delivers at least once and publishers retry, and Braze stores every event object it
gets as a new event (docs/api-facts.md, B16): a repeat that reaches Braze is a duplicate for good.
Amplitude dedups on ``insert_id`` per device; so do we, before the fan-out to syncs, which is
the same as doing it per sync because every sync sees the same stream, at a fraction of the
state. A repeat is not silently dropped: it ends as a ``skipped/duplicate`` outcome and is
counted.

Shape (Beam's ``DeduplicatePerKey`` model): the state key is the dedup key itself,
``insert id | device_id or user_id``, holding one small integer, and a timer forgets it when the
window has passed. The timer is in event time (publish time + window): a processing-time timer
would hold this step's output watermark at the event's publish time for the whole window (Beam's
Python SDK holds a processing-time timer's watermark at its element's timestamp), and every
later step orders by that watermark. A publisher's retry is a new message published within the
window; a redelivery by Pub/Sub keeps its publish time, and the watermark cannot pass a message
that is not acknowledged yet, so a redelivery is always caught. Per event: one state read, and
for a first sighting one write and one timer: O(1), whatever the traffic or the window. Keys are as many as distinct
events in a window and spread evenly (no hot key); events without an insert id cannot repeat
by id and bypass the keyed step altogether.

The local BundleBasedDirectRunner scans every key's timers after each bundle, so this shape
costs it time that grows with the keys in a window (docs/architecture.md, "Local runners");
Dataflow keeps timers per key in its backend and has no such scan.
"""
from __future__ import annotations

from typing import Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer

from transforms.coders import typed
from transforms.guard import INTERNAL_ERROR, Failure, guarded
from transforms.records import DEAD_LETTERED, SKIPPED, DeadLetter, Outcome, ParsedEvent, utc_now_iso

OUTCOME_TAG = "outcomes"
DEAD_LETTER_TAG = "dead_letters"
DEDUP_BRANCH = "dedup"
BYPASS_TAG = "no_insert_id"


def dedup_key(parsed: ParsedEvent) -> Optional[str]:
    """The key repeats share, or None when the event has no insert id (it passes)."""
    if not parsed.insert_id:
        return None
    event = parsed.event
    return f"{parsed.insert_id}|{event.get('device_id') or event.get('user_id') or ''}"


def _event_bytes(parsed) -> bytes:
    import orjson  # the event as JSON again: its input bytes are not kept past parse

    return orjson.dumps(parsed.event)


def _failed(stage: str):
    def on_error(dofn, element, failure: Failure):
        parsed = element[1] if isinstance(element, tuple) and len(element) == 2 else element
        source = getattr(parsed, "source", "")
        event = getattr(parsed, "event", None)
        yield pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
            stage=stage, reason=INTERNAL_ERROR, detail=failure.detail, sync="",
            data=_event_bytes(parsed) if isinstance(event, dict) else b"", failed_at=utc_now_iso(),
            sources=(source,) if source else (), error_class=failure.error_class))
        if source:
            yield pvalue.TaggedOutput(OUTCOME_TAG, Outcome(source, "", DEDUP_BRANCH, DEAD_LETTERED, INTERNAL_ERROR))
    return on_error


class _KeyByInsertIdDoFn(beam.DoFn):
    """``(dedup key, event)`` for the keyed step; events without an insert id bypass it."""

    @guarded("dedup", _failed("dedup"))
    def process(self, parsed):
        key = dedup_key(parsed)
        if key is None:
            yield pvalue.TaggedOutput(BYPASS_TAG, parsed)
        else:
            yield key, parsed


class _DropRepeatsDoFn(beam.DoFn):
    """Keyed by the dedup key: remembers that it was seen until the window has passed."""

    SEEN = ReadModifyWriteStateSpec("seen", VarIntCoder())
    FORGET = TimerSpec("forget", TimeDomain.WATERMARK)

    def __init__(self, window_seconds: float):
        self._window = window_seconds
        self._dropped = Metrics.counter("dedup", "duplicates_dropped")

    @guarded("dedup", _failed("dedup"))
    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam,
                seen=beam.DoFn.StateParam(SEEN), forget=beam.DoFn.TimerParam(FORGET)):
        _, parsed = element
        if seen.read():
            self._dropped.inc()
            yield pvalue.TaggedOutput(OUTCOME_TAG, Outcome(parsed.source, "", DEDUP_BRANCH, SKIPPED, "duplicate"))
            return
        seen.write(1)
        forget.set(min(timestamp + self._window, window.max_timestamp()))
        yield parsed

    @on_timer(FORGET)
    def forget(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()


class DropRepeats(beam.PTransform):
    """ParsedEvent → ParsedEvent without repeats (``events``), ``outcomes`` for what was dropped,
    ``dead_letters`` for what failed unexpectedly."""

    def __init__(self, window_seconds: float):
        super().__init__()
        if window_seconds <= 0:
            raise ValueError(f"the dedup window must be > 0 seconds, got {window_seconds}")
        self._window = window_seconds

    def expand(self, events):
        keyed = events | "KeyByInsertId" >> beam.ParDo(_KeyByInsertIdDoFn()).with_outputs(
            BYPASS_TAG, OUTCOME_TAG, DEAD_LETTER_TAG, main="keyed")
        kept = (
            typed(keyed.keyed, Tuple[str, ParsedEvent])
            | "DropRepeatsPerInsertId" >> beam.ParDo(_DropRepeatsDoFn(self._window)).with_outputs(
                OUTCOME_TAG, DEAD_LETTER_TAG, main="kept")
        )
        for outputs in (keyed, kept):
            typed(outputs[OUTCOME_TAG], Outcome)
            typed(outputs[DEAD_LETTER_TAG], DeadLetter)
        typed(keyed[BYPASS_TAG], ParsedEvent)
        typed(kept.kept, ParsedEvent)
        unique = (kept.kept, keyed[BYPASS_TAG]) | "WithEventsWithoutInsertId" >> beam.Flatten()
        return {
            "events": typed(unique, ParsedEvent),
            "outcomes": typed((keyed[OUTCOME_TAG], kept[OUTCOME_TAG]) | "DedupOutcomes" >> beam.Flatten(), Outcome),
            "dead_letters": typed((keyed[DEAD_LETTER_TAG], kept[DEAD_LETTER_TAG]) | "DedupDeadLetters" >> beam.Flatten(),
                                  DeadLetter),
        }
