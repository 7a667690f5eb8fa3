"""Drop repeated events (same insert id) within a bounded window.

Pub/Sub delivers at least once and publishers retry, and Braze stores every event object it
gets as a new event (braze-api.md §6): a repeat that reaches Braze is a duplicate for good.
Amplitude dedups on ``insert_id`` per device; so do we, before the fan-out to syncs, which is
the same as doing it per sync because every sync sees the same stream, at a fraction of the
state. The key is ``insert id | device_id or user_id``; an event without an insert id passes.

State: per shard (a hash of the key, 256 shards), the keys seen in the window with their expiry,
so it holds (events per window) keys in all, ~60 bytes each, and each event rewrites its
shard's entry (about events-per-window / 256 keys). A repeat is not silently dropped: it ends as
a ``skipped/duplicate`` outcome and is counted.
"""
from __future__ import annotations

import time
import zlib
from typing import Any, Dict, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.records import SKIPPED, Outcome, ParsedEvent

OUTCOME_TAG = "outcomes"
DEDUP_BRANCH = "dedup"


DEFAULT_SHARDS = 256


def dedup_key(parsed: ParsedEvent):
    """The key repeats share, or None when the event has no insert id (it passes)."""
    if not parsed.insert_id:
        return None
    event = parsed.event
    return f"{parsed.insert_id}|{event.get('device_id') or event.get('user_id') or ''}"


def shard_of(parsed: ParsedEvent, shards: int) -> str:
    key = dedup_key(parsed)
    return "-" if key is None else str(zlib.crc32(key.encode("utf-8")) % shards)


def remember(seen: Dict[str, float], key: str, now: float, window: float) -> bool:
    """Pure core: True if ``key`` was seen within the window; records it and forgets expired keys."""
    if seen.get(key, 0.0) > now:
        return True
    for old in [k for k, expiry in seen.items() if expiry <= now]:
        del seen[old]
    seen[key] = now + window
    return False


class _DropRepeatsDoFn(beam.DoFn):
    """Keyed by shard: the state is ``{dedup key: expiry}`` of the keys seen in the window.

    A bounded number of keys (shards), not one per event: runners track state and timers per
    key, and the local DirectRunner scans every key it ever saw on each timer pass, which made a
    key per insert id cost time quadratic in the events. One timer per shard clears what expired.
    """

    SEEN = ReadModifyWriteStateSpec("seen", FastPrimitivesCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, window_seconds: float, clock=time.time):
        self._window = window_seconds
        self._clock = clock
        self._dropped = Metrics.counter("dedup", "duplicates_dropped")

    def process(self, element, seen_state=beam.DoFn.StateParam(SEEN), expiry=beam.DoFn.TimerParam(EXPIRY)):
        _, parsed = element
        key = dedup_key(parsed)
        if key is None:
            yield parsed
            return
        seen = seen_state.read() or {}
        now = self._clock()
        if remember(seen, key, now, self._window):
            self._dropped.inc()
            yield pvalue.TaggedOutput(OUTCOME_TAG, Outcome(parsed.source, "", DEDUP_BRANCH, SKIPPED, "duplicate"))
            return
        if len(seen) == 1:  # the shard was empty: clean up when this key expires
            expiry.set(Timestamp.of(now + self._window))
        seen_state.write(seen)
        yield parsed

    @on_timer(EXPIRY)
    def expire(self, fired_at=beam.DoFn.TimestampParam, seen_state=beam.DoFn.StateParam(SEEN),
               expiry=beam.DoFn.TimerParam(EXPIRY)):
        seen = seen_state.read() or {}
        now = self._clock()
        live = {k: t for k, t in seen.items() if t > now}
        if live and now >= fired_at.seconds() - 1:  # fired early: the input ended, nothing to keep
            seen_state.write(live)
            expiry.set(Timestamp.of(min(live.values())))
        else:
            seen_state.clear()


class DropRepeats(beam.PTransform):
    """ParsedEvent → ParsedEvent without repeats (main) and ``outcomes`` for what was dropped."""

    def __init__(self, window_seconds: float, clock=time.time, shards: int = DEFAULT_SHARDS):
        super().__init__()
        if window_seconds <= 0:
            raise ValueError(f"the dedup window must be > 0 seconds, got {window_seconds}")
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        self._window = window_seconds
        self._clock = clock
        self._shards = shards

    def expand(self, events):
        kept = (
            events
            # A typed key: Beam then knows its coder is deterministic, as state keys must be.
            | "KeyByInsertIdShard" >> beam.Map(lambda parsed, n=self._shards: (shard_of(parsed, n), parsed))
            .with_output_types(Tuple[str, Any])
            | "DropRepeats" >> beam.ParDo(_DropRepeatsDoFn(self._window, self._clock)).with_outputs(
                OUTCOME_TAG, main="kept")
        )
        return {"events": kept.kept, "outcomes": kept[OUTCOME_TAG]}
