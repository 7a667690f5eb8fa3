"""Delivering the feed's changes: buffered per sync and shard, flushed at least every minute.

Changes for one sync (``(time_ms, key, op, amplitude_ids, user_id, properties)``, from
``transforms.cohorts.feed_state``) are keyed by a shard of the Braze id and buffered in state;
the first change of an empty buffer sets a processing-time timer ``flush_seconds`` (≤ 60)
ahead, and the end of the input (a drain, or a test's end) flushes too. At a flush the last
change per user wins (by time, then arrival), and the changes go out through the same
``CohortDeliverer`` as batch runs.

Failures: changes whose request failed after the retries stay buffered, unless a newer change
for that user arrived, and go again at the next flush ("changes are sent once the issue is
resolved", docs/api-facts.md, A5), and their FAILED results go to the reports (a failed hour is
emailed). The *final* flush (drain, end of input) cannot wait for a next one: its failed changes
go to the dead letters, each as a feed message for that user a replay can republish, never
dropped. An unexpected error in a flush dead-letters the buffered changes the same way
(``internal_error``). Users the existence check finds unknown to Braze are skipped
(``unknown_to_braze``) and not kept.
"""
from __future__ import annotations

import logging
import time
import typing
import zlib
from typing import Callable, Iterable, List

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.cohorts.model import CohortSync, Target
from transforms.cohorts.delivery import CohortDeliverer, RetryPolicy
from transforms.cohorts.feed import DEAD_LETTER_TAG, feed_dead_letter
from transforms.cohorts.records import ADD, FAILED, REMOVE, Change
from transforms.guard import INTERNAL_ERROR, count_internal_error, failure_of
from transforms.secrets import resolve_api_key

__all__ = ["MAX_FLUSH_SECONDS", "FlushAndDeliver", "collapse", "redelivery_message"]

_LOG = logging.getLogger(__name__)
MAX_FLUSH_SECONDS = 60.0
METRICS_NAMESPACE = "cohort_feed"
STAGE = "cohort_feed.deliver"


def collapse(buffered: Iterable[tuple]) -> List[Change]:
    """The last change per key (by time, then arrival order), as ``Change`` records."""
    last = {}
    for position, (when, key, op, ids, *_) in enumerate(buffered):
        current = last.get(key)
        if current is None or (when, position) >= (current[0], current[1]):
            last[key] = (when, position, op, tuple(ids))
    return [Change(op, key, ids) for key, (_, _, op, ids) in sorted(last.items())]


def redelivery_message(sync: CohortSync, change: tuple) -> bytes:
    """One buffered change as a feed message (one user), for a dead letter a replay republishes.

    Its ``message_id`` is new, so the feed's dedup does not drop the replay, and its
    ``computed_time`` is the change's own, so a newer change for the user still wins."""
    when, key, op, _ids, *rest = change
    user_id = rest[0] if rest and rest[0] else key
    props = rest[1] if len(rest) > 1 and rest[1] else ""
    user = {"user_id": user_id, **({"user_properties": orjson.loads(props)} if props else {})}
    return orjson.dumps({"cohort_id": sync.cohort_id, "cohort_name": sync.cohort_name, "in_cohort": op == ADD,
                         "computed_time": str(when / 1000), "message_id": f"redelivery:{sync.name}:{key}:{when}",
                         "users": [user]})


class FlushAndDeliver(beam.PTransform):
    """One sync's changes → delivered ``Result`` records, flushed at least every
    ``flush_seconds`` of processing time (≤ 60) and at the end of the input; dead letters on
    ``DEAD_LETTER_TAG``.

    Args:
      target, sync: where the changes go.
      flush_seconds: longest time a change waits before it is sent (0 < s ≤ 60).
      shards: buffers per sync (parallel requests); one user always lands in the same one.
      clock: epoch seconds for the flush timer, injectable for TestStream (its processing time
        starts at 0).
    """

    def __init__(self, target: Target, sync: CohortSync, policy: RetryPolicy = RetryPolicy(), *,
                 flush_seconds: float = MAX_FLUSH_SECONDS, shards: int = 1, resolve_key=resolve_api_key,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time):
        super().__init__()
        if isinstance(flush_seconds, bool) or not isinstance(flush_seconds, (int, float)) or \
                not 0 < flush_seconds <= MAX_FLUSH_SECONDS:
            raise ValueError(f"flush_seconds must be > 0 and <= {MAX_FLUSH_SECONDS:g}, got {flush_seconds!r}")
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValueError(f"shards must be an integer >= 1, got {shards!r}")
        self._deliverer = CohortDeliverer(target, sync, policy, resolve_key=resolve_key, sleep=sleep)
        self._flush_seconds = float(flush_seconds)
        self._shards = shards
        self._clock = clock

    def expand(self, changes):
        shards = self._shards
        return (
            changes
            | "KeyByShard" >> beam.Map(lambda c: (zlib.crc32(c[1].encode("utf-8")) % shards, tuple(c)))
            .with_output_types(typing.Tuple[int, typing.Tuple])
            | "BufferFlushAndSend" >> beam.ParDo(
                _FlushDoFn(self._deliverer, self._flush_seconds, self._clock)).with_outputs(
                    DEAD_LETTER_TAG, main="results")
        )


class _FlushDoFn(beam.DoFn):
    BUFFER = BagStateSpec("changes", FastPrimitivesCoder())
    TIMER_SET = ReadModifyWriteStateSpec("timer_set", FastPrimitivesCoder())
    FLUSH_TIMER = TimerSpec("flush", TimeDomain.REAL_TIME)
    END_TIMER = TimerSpec("end", TimeDomain.WATERMARK)

    def __init__(self, deliverer: CohortDeliverer, flush_seconds: float, clock):
        self._deliverer = deliverer
        self._flush_seconds = flush_seconds
        self._clock = clock
        self._flushes = Metrics.counter(METRICS_NAMESPACE, "flushes")
        self._retrying = Metrics.counter(METRICS_NAMESPACE, f"{deliverer.sync.name}.changes_retried")
        self._dead = Metrics.counter(METRICS_NAMESPACE, f"{deliverer.sync.name}.changes_dead_lettered")

    def setup(self):
        self._deliverer.open()

    def teardown(self):
        self._deliverer.close()

    def process(self, element, window=beam.DoFn.WindowParam, buffer=beam.DoFn.StateParam(BUFFER),
                timer_set=beam.DoFn.StateParam(TIMER_SET), flush_timer=beam.DoFn.TimerParam(FLUSH_TIMER),
                end_timer=beam.DoFn.TimerParam(END_TIMER)):
        try:
            _, change = element
            when, key, op, ids, *rest = change
            record = (int(when), str(key), str(op), tuple(str(i) for i in ids), *[str(r) for r in rest])
        except Exception as error:  # noqa: BLE001 - not a change: say so, never stop the job
            failure = failure_of(STAGE, error)
            count_internal_error(STAGE, failure)
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, feed_dead_letter(
                repr(element).encode("utf-8", "replace")[:100_000], INTERNAL_ERROR, failure.detail, STAGE,
                self._deliverer.sync.name, failure.error_class))
            return
        end_timer.set(window.max_timestamp())
        if not timer_set.read():
            flush_timer.set(Timestamp(self._clock() + self._flush_seconds))
            timer_set.write(True)
        buffer.add(record)

    @on_timer(FLUSH_TIMER)
    def on_flush_timer(self, buffer=beam.DoFn.StateParam(BUFFER), timer_set=beam.DoFn.StateParam(TIMER_SET),
                       flush_timer=beam.DoFn.TimerParam(FLUSH_TIMER)):
        yield from self._flush(buffer, timer_set, flush_timer)

    @on_timer(END_TIMER)
    def on_end_timer(self, buffer=beam.DoFn.StateParam(BUFFER), timer_set=beam.DoFn.StateParam(TIMER_SET),
                     flush_timer=beam.DoFn.TimerParam(FLUSH_TIMER)):
        yield from self._flush(buffer, timer_set, flush_timer, final=True)

    def _flush(self, buffer, timer_set, flush_timer, final=False):
        buffered = list(buffer.read())
        buffer.clear()
        timer_set.clear()
        if not buffered:
            return
        self._flushes.inc()
        sync = self._deliverer.sync
        latest = {}
        for change in buffered:  # the newest buffered change per user, to keep or dead-letter
            if change[1] not in latest or change[0] >= latest[change[1]][0]:
                latest[change[1]] = change
        try:
            changes = collapse(buffered)
            results = []
            for op in (ADD, REMOVE):
                results.extend(self._deliverer.deliver(op, [c for c in changes if c.op == op]))
        except Exception as error:  # noqa: BLE001 - a timer must not raise: dead-letter what it held
            failure = failure_of(STAGE, error)
            count_internal_error(STAGE, failure)
            for change in latest.values():
                self._dead.inc()
                yield pvalue.TaggedOutput(DEAD_LETTER_TAG, feed_dead_letter(
                    redelivery_message(sync, change), INTERNAL_ERROR, failure.detail, STAGE, sync.name,
                    failure.error_class))
            return
        failed = [r for r in results if r.status == FAILED]
        if failed and not final:
            # Kept for the next flush, where a newer change for the same user (arriving later,
            # with a later time or position) still wins.
            for r in failed:
                buffer.add(latest[r.key])
                self._retrying.inc()
            flush_timer.set(Timestamp(self._clock() + self._flush_seconds))
            timer_set.write(True)
            _LOG.error("feed sync %s: %d changes failed and will be sent again at the next flush", sync.name,
                       len(failed))
            results = [r._replace(detail=f"{r.detail} (kept: sent again at the next flush)") if r.status == FAILED
                       else r for r in results]
        elif failed:
            for r in failed:
                self._dead.inc()
                yield pvalue.TaggedOutput(DEAD_LETTER_TAG, feed_dead_letter(
                    redelivery_message(sync, latest[r.key]), r.reason, f"the final flush could not deliver this "
                    f"change: {r.detail}; replay it to the feed's topic once the cause is fixed", STAGE, sync.name))
        yield from results
