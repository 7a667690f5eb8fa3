"""The feed's two keyed steps, and the fan-out to the cohort's syncs (docs/api-facts.md, A6):

* **Drop repeats** by ``message_id`` (Amplitude retries; Pub/Sub redelivers): state per
  message id, kept ``dedup_seconds``, a repeat counted (``cohort_feed/duplicate_messages``).
* **Newest computed_time wins** per (cohort, user): order is not guaranteed, so each user keeps
  the newest ``computed_time`` seen and its direction; an older change is dropped and counted
  (``cohort_feed/superseded``). A change at the same time in the same direction passes (a
  replay; adding or removing twice is harmless). State per user expires ``state_ttl_seconds``
  after its last change. Users without a ``user_id`` cannot be keyed and pass unordered (the
  reference documents ``user_id`` on every user).
* **Fan-out**: each change goes to every feed sync of its cohort, with the Braze key the sync's
  target maps (``user_id``, or an alias read from the user's properties); no value →
  ``skipped: unresolved_mapping``, reported.

The first sync of a cohort arrives as a mass entry and goes through the same steps.
Each step is guarded (``transforms.guard``): an unexpected error on one element becomes a dead
letter (its batch as JSON, ``internal_error``) and a counter, and the job goes on.
"""
from __future__ import annotations

import time
import typing
from typing import Callable, Dict, List, Tuple

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.cohorts.model import CohortSync, Target
from transforms.cohorts.feed import DEAD_LETTER_TAG, FeedBatch, feed_dead_letter
from transforms.cohorts.members import mapped_value
from transforms.cohorts.records import ADD, REMOVE, SKIPPED, UNRESOLVED_MAPPING, Result
from transforms.guard import count_internal_error, failure_of, guarded

__all__ = ["SKIPPED_TAG", "UNORDERED_TAG", "DropRepeatedMessages", "NewestChangePerUser", "FanOutToSyncs",
           "batch_json", "newer"]

METRICS_NAMESPACE = "cohort_feed"
SKIPPED_TAG = "skipped"
UNORDERED_TAG = "unordered"
# A user's change between steps: (computed_ms, in_cohort, user_id, properties JSON, cohort_id, message_id)
UserChange = Tuple[int, bool, str, str, str, str]


def batch_json(batch: FeedBatch, users=None) -> bytes:
    """A batch (or some of its users) as a feed message, for a dead letter that a replay can read."""
    users = batch.users if users is None else users
    return orjson.dumps({"cohort_id": batch.cohort_id, "cohort_name": batch.cohort_name,
                         "in_cohort": batch.in_cohort, "computed_time": str(batch.computed_ms / 1000),
                         "message_id": batch.message_id,
                         "users": [{"user_id": u, **({"user_properties": orjson.loads(p)} if p else {})}
                                   for u, p in users]})


def _batch_of(element) -> FeedBatch:
    value = element[1] if isinstance(element, tuple) and len(element) == 2 else element
    return value if isinstance(value, FeedBatch) else FeedBatch(*value)


def _dead_letter_with(stage, as_feed_json):
    """``guarded``'s fallback for a feed step: the element as a feed message a replay can send
    again (``as_feed_json``), or as text when it cannot be one, dead-lettered ``internal_error``."""
    def on_error(dofn, element, failure):
        try:
            data = as_feed_json(element)
        except Exception:  # noqa: BLE001 - describe it as text when it cannot be JSON
            data = repr(element).encode("utf-8", "replace")[:100_000]
        yield pvalue.TaggedOutput(DEAD_LETTER_TAG, feed_dead_letter(data, "internal_error", failure.detail, stage,
                                                                    error_class=failure.error_class))
    return on_error


def _dead_letter_of_batch(stage):
    return _dead_letter_with(stage, lambda element: batch_json(_batch_of(element)))


class _DropRepeatsDoFn(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", FastPrimitivesCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, dedup_seconds: float, clock: Callable[[], float]):
        self._dedup_seconds = dedup_seconds
        self._clock = clock
        self._repeats = Metrics.counter(METRICS_NAMESPACE, "duplicate_messages")

    @guarded("cohort_feed.dedup", _dead_letter_of_batch("cohort_feed.dedup"))
    def process(self, element, seen=beam.DoFn.StateParam(SEEN), expiry=beam.DoFn.TimerParam(EXPIRY)):
        _, batch = element
        if seen.read():
            self._repeats.inc()
            return
        expiry.set(Timestamp(self._clock() + self._dedup_seconds))
        seen.write(True)
        yield FeedBatch(*batch)

    @on_timer(EXPIRY)
    def forget(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()


class DropRepeatedMessages(beam.PTransform):
    def __init__(self, dedup_seconds: float, clock: Callable[[], float] = time.time):
        super().__init__()
        self._dedup_seconds = dedup_seconds
        self._clock = clock

    def expand(self, batches):
        return (batches
                | "KeyByMessageId" >> beam.Map(lambda b: (b.message_id, tuple(b))).with_output_types(
                    typing.Tuple[str, typing.Tuple])
                | "DropRepeats" >> beam.ParDo(_DropRepeatsDoFn(self._dedup_seconds, self._clock)).with_outputs(
                    DEAD_LETTER_TAG, main="batches"))


def newer(stored, computed_ms: int, in_cohort: bool) -> bool:
    """Pure: whether a change at ``computed_ms`` replaces the stored ``(computed_ms, in_cohort)``."""
    if stored is None:
        return True
    stored_ms, stored_in = stored
    return computed_ms > stored_ms or (computed_ms == stored_ms and in_cohort == stored_in)


class _SplitUsersDoFn(beam.DoFn):
    """A batch → one keyed change per user (``cohort|user``), or unordered without a user_id."""

    @guarded("cohort_feed.users", _dead_letter_of_batch("cohort_feed.users"))
    def process(self, batch):
        for user_id, props in batch.users:
            change = (batch.computed_ms, batch.in_cohort, user_id, props, batch.cohort_id, batch.message_id)
            if user_id:
                yield f"{batch.cohort_id}|{user_id}", change
            else:
                yield pvalue.TaggedOutput(UNORDERED_TAG, change)


def _change_json(element) -> bytes:
    change = element[1] if isinstance(element, tuple) and len(element) == 2 else element
    when, in_cohort, user_id, props, cohort_id, message_id = change
    return batch_json(FeedBatch(message_id, cohort_id, "", in_cohort, when, ((user_id, props),)))


def _dead_letter_of_change(stage):
    return _dead_letter_with(stage, _change_json)


class _NewestDoFn(beam.DoFn):
    NEWEST = ReadModifyWriteStateSpec("newest", FastPrimitivesCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, state_ttl_seconds: float, clock: Callable[[], float]):
        self._ttl = state_ttl_seconds
        self._clock = clock
        self._superseded = Metrics.counter(METRICS_NAMESPACE, "superseded")

    @guarded("cohort_feed.newest", _dead_letter_of_change("cohort_feed.newest"))
    def process(self, element, newest=beam.DoFn.StateParam(NEWEST), expiry=beam.DoFn.TimerParam(EXPIRY)):
        _, change = element
        stored = newest.read()
        if not newer(tuple(stored) if stored is not None else None, change[0], change[1]):
            self._superseded.inc()
            return
        expiry.set(Timestamp(self._clock() + self._ttl))
        newest.write((change[0], change[1]))
        yield tuple(change)

    @on_timer(EXPIRY)
    def forget(self, newest=beam.DoFn.StateParam(NEWEST)):
        newest.clear()


class NewestChangePerUser(beam.PTransform):
    """``FeedBatch`` → user changes ``(computed_ms, in_cohort, user_id, props, cohort_id, message_id)``
    that are the newest for their user; dead letters on ``DEAD_LETTER_TAG``."""

    def __init__(self, state_ttl_seconds: float, clock: Callable[[], float] = time.time):
        super().__init__()
        self._ttl = state_ttl_seconds
        self._clock = clock

    def expand(self, batches):
        split = batches | "SplitUsers" >> beam.ParDo(_SplitUsersDoFn()).with_outputs(
            UNORDERED_TAG, DEAD_LETTER_TAG, main="keyed")
        newest = (split.keyed
                  | "TypeChanges" >> beam.Map(lambda kv: kv).with_output_types(typing.Tuple[str, typing.Tuple])
                  | "KeepNewestChange" >> beam.ParDo(_NewestDoFn(self._ttl, self._clock)).with_outputs(
                      DEAD_LETTER_TAG, main="changes"))
        changes = (newest.changes, split[UNORDERED_TAG]) | "FlattenChanges" >> beam.Flatten()
        dead = (split[DEAD_LETTER_TAG], newest[DEAD_LETTER_TAG]) | "FlattenDeadLetters" >> beam.Flatten()
        return {"changes": changes, DEAD_LETTER_TAG: dead}


class _FanOutDoFn(beam.DoFn):
    def __init__(self, routes: Dict[str, List[Tuple[str, str, str]]]):
        self._routes = routes  # cohort_id → [(sync name, mapping type, source field)]

    @guarded("cohort_feed.fan_out", _dead_letter_of_change("cohort_feed.fan_out"))
    def process(self, change):
        when, in_cohort, user_id, props, cohort_id, message_id = change
        op = ADD if in_cohort else REMOVE
        for sync_name, _, field in self._routes.get(cohort_id, ()):
            key = user_id if field == "user_id" else None
            if key is None or not key:
                key = mapped_value(orjson.loads(props), field) if props else None
            if not key:
                yield pvalue.TaggedOutput(SKIPPED_TAG, (sync_name, Result(
                    op, "", (), SKIPPED, UNRESOLVED_MAPPING, f"no value for {field!r} in the feed message "
                                                             f"{message_id}")))
                continue
            yield sync_name, (when, key, op, (), user_id, props)


class FanOutToSyncs(beam.PTransform):
    """User changes → ``(sync name, (time_ms, key, op, (), user_id, props))`` per feed sync of
    the cohort; unresolved users as ``(sync name, Result)`` on ``SKIPPED_TAG``."""

    def __init__(self, syncs: List[Tuple[CohortSync, Target]]):
        super().__init__()
        self._routes: Dict[str, List[Tuple[str, str, str]]] = {}
        for sync, target in syncs:
            self._routes.setdefault(sync.cohort_id, []).append(
                (sync.name, target.user_mapping.type, target.user_mapping.source))

    def expand(self, changes):
        return changes | "FanOut" >> beam.ParDo(_FanOutDoFn(self._routes)).with_outputs(
            SKIPPED_TAG, DEAD_LETTER_TAG, main="changes")


def count_timer_failure(stage: str, error: BaseException) -> None:
    count_internal_error(stage, failure_of(stage, error))
