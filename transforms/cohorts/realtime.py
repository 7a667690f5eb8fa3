"""Real-time cohort sync: enter/leave messages from Pub/Sub, flushed at least every minute.

Message shapes (UTF-8 JSON; both accepted, one or a JSON array of them per message):

* a change: ``{"cohort_id": "c1", "change": "enter"|"leave", "amplitude_id": 1, "user_id": "u1",
  "device_id": "d1", "time": 1767225600000}`` (``time`` epoch ms or ISO 8601; the fields the
  target's mapping reads must be there);
* Amplitude's cohort-webhook payload (amplitude.md §3.6): ``{"cohort_id", "in_cohort": true|false,
  "users": [{"user_id": ..., "user_properties": {...}}], "message_id", "computed_time"}``; the mapped
  field is looked up on the user, then in its ``user_properties``.

Messages for other cohorts are ignored (counted); users without a value for the mapped field
are skipped (``unresolved_mapping``, counted and logged: like Amplitude, real-time skips are
not in a CSV).

Flushing: changes are keyed by a shard of the Braze id and buffered in state; the first
change of an empty buffer sets a processing-time timer ``flush_seconds`` (≤ 60) ahead, and the
end of the input (drain, or a test's end) flushes too. At a flush the last change per user
wins (by ``time``, then arrival), and the changes go out through the same ``CohortDeliverer``
as batch runs. Changes whose request failed after the retries stay buffered, unless a newer
change for that user arrived, and go again at the next flush ("changes are sent once the
issue is resolved", amplitude.md §3.1); that includes changes whose ``/users/export/ids``
check failed (``verify_users``, see ``transforms.cohorts.lookup``). Users the check finds
unknown to Braze are skipped (``unknown_to_braze``) and not kept: with no membership state,
such a user is added when a later enter arrives after Braze knows them. Each flush that sent anything writes a report
(``mode: real_time``) when a report directory is given; the email goes only when a flush fails
after the previous one succeeded, and when one succeeds after failures, not every minute.

Real time does not update the snapshot state file (a minute-by-minute rewrite of the whole
membership would not scale); it sends deltas only, as the stream gives them.
"""
from __future__ import annotations

import datetime
import logging
import time
import typing
import zlib
from typing import Callable, Iterable, List, Optional, Tuple

import apache_beam as beam
import orjson
from apache_beam import coders, pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from pipeline.cohort_config import CohortSync, EmailSettings, Target, UserMapping
from transforms.cohorts.delivery import CohortDeliverer, RetryPolicy
from transforms.cohorts.members import mapped_value
from transforms.cohorts.records import ADD, FAILED, REMOVE, SKIPPED, UNRESOLVED_MAPPING, Change, Result
from transforms.secrets import resolve_api_key

__all__ = ["MAX_FLUSH_SECONDS", "FlushAndDeliver", "FlushReporter", "ParseCohortChanges", "SKIPPED_TAG",
           "collapse", "parse_message"]

_LOG = logging.getLogger(__name__)
MAX_FLUSH_SECONDS = 60.0
SKIPPED_TAG = "skipped"
METRICS_NAMESPACE = "cohorts"
_ENTER = ("enter", "entered", "add", "join")
_LEAVE = ("leave", "left", "exit", "remove")


def _time_ms(value) -> int:
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        try:
            dt = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return 0
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=datetime.timezone.utc)
        return int(dt.timestamp() * 1000)
    return 0


def parse_message(data: bytes, cohort_id: str, mapping: UserMapping) -> Tuple[List[tuple], List[Result], int]:
    """``(changes, skipped, ignored)``: changes are ``(time_ms, key, op, amplitude_ids)``."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return [], [Result(ADD, "", (), SKIPPED, "invalid_message", "not JSON")], 0
    records = document if isinstance(document, list) else [document]
    changes, skipped, ignored = [], [], 0
    field = mapping.source
    for record in records:
        if not isinstance(record, dict):
            skipped.append(Result(ADD, "", (), SKIPPED, "invalid_message", "not a JSON object"))
            continue
        if str(record.get("cohort_id")) != cohort_id:
            ignored += 1
            continue
        if "users" in record and "in_cohort" in record:  # cohort webhook shape
            op = ADD if record["in_cohort"] is True else REMOVE
            when = _time_ms(record.get("computed_time"))
            users = [u for u in record["users"] if isinstance(u, dict)] if isinstance(record["users"], list) else []
        else:
            change = str(record.get("change", "")).lower()
            if change not in _ENTER + _LEAVE:
                skipped.append(Result(ADD, "", (), SKIPPED, "invalid_message",
                                      "'change' must be 'enter' or 'leave'"))
                continue
            op = ADD if change in _ENTER else REMOVE
            when = _time_ms(record.get("time"))
            users = [record]
        for user in users:
            amplitude_id = mapped_value(user, "amplitude_id")
            ids = (amplitude_id,) if amplitude_id else ()
            key = mapped_value(user, field)
            if key is None and isinstance(user.get("user_properties"), dict):
                key = mapped_value(user["user_properties"], field)
            if key is None:
                skipped.append(Result(op, "", ids, SKIPPED, UNRESOLVED_MAPPING, f"no value for {field!r}"))
                continue
            changes.append((when, key, op, ids))
    return changes, skipped, ignored


def collapse(buffered: Iterable[tuple]) -> List[Change]:
    """The last change per key (by time, then arrival order), as ``Change`` records."""
    last = {}
    for position, (when, key, op, ids) in enumerate(buffered):
        current = last.get(key)
        if current is None or (when, position) >= (current[0], current[1]):
            last[key] = (when, position, op, tuple(ids))
    return [Change(op, key, ids) for key, (_, _, op, ids) in sorted(last.items())]


class ParseCohortChanges(beam.PTransform):
    """Pub/Sub payloads (bytes, or PubsubMessage) → ``(time_ms, key, op, amplitude_ids)``; skips on a tag."""

    def __init__(self, cohort_id: str, mapping: UserMapping):
        super().__init__()
        self._cohort_id = cohort_id
        self._mapping = mapping

    def expand(self, messages):
        return messages | "Parse changes" >> beam.ParDo(
            _ParseDoFn(self._cohort_id, self._mapping)).with_outputs(SKIPPED_TAG, main="changes")


class _ParseDoFn(beam.DoFn):
    def __init__(self, cohort_id, mapping):
        self._cohort_id = cohort_id
        self._mapping = mapping
        self._ignored = Metrics.counter(METRICS_NAMESPACE, "realtime_other_cohort")
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "realtime_skipped")

    def process(self, message):
        data = getattr(message, "data", message)
        changes, skipped, ignored = parse_message(data, self._cohort_id, self._mapping)
        if ignored:
            self._ignored.inc(ignored)
        for r in skipped:
            self._skipped.inc()
            _LOG.info("real-time change skipped: %s (%s)", r.reason, r.detail)
            yield pvalue.TaggedOutput(SKIPPED_TAG, r)
        yield from changes


class FlushAndDeliver(beam.PTransform):
    """``(time_ms, key, op, amplitude_ids)`` → delivered ``Result`` records, flushed at least
    every ``flush_seconds`` of processing time (≤ 60), and at the end of the input.

    Args:
      target, sync: where the changes go.
      flush_seconds: longest time a change waits before it is sent (0 < s ≤ 60).
      shards: buffers per cohort (parallel requests); one user always lands in the same one.
      on_flush: optional ``callable(results, status, was_failing)`` called on the worker after
        each flush, ``status`` "success" or "failed", ``was_failing`` the previous flush's
        state (``FlushReporter``: reports and notifications).
      clock: epoch seconds for the flush timer, injectable for TestStream (its processing time
        starts at 0).
    """

    def __init__(self, target: Target, sync: CohortSync, policy: RetryPolicy = RetryPolicy(), *,
                 flush_seconds: float = MAX_FLUSH_SECONDS, shards: int = 1,
                 on_flush: Optional[Callable] = None, resolve_key=resolve_api_key,
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
        self._on_flush = on_flush
        self._clock = clock

    def expand(self, changes):
        shards = self._shards
        return (
            changes
            | "Key by shard" >> beam.Map(lambda c: (zlib.crc32(c[1].encode("utf-8")) % shards, c)).with_output_types(
                typing.Tuple[int, typing.Any])
            | "Buffer, flush and send" >> beam.ParDo(
                _FlushDoFn(self._deliverer, self._flush_seconds, self._on_flush, self._clock))
        )


class _FlushDoFn(beam.DoFn):
    BUFFER = BagStateSpec("changes", coders.PickleCoder())
    TIMER_SET = ReadModifyWriteStateSpec("timer_set", coders.BooleanCoder())
    FAILING = ReadModifyWriteStateSpec("failing", coders.BooleanCoder())
    FLUSH_TIMER = TimerSpec("flush", TimeDomain.REAL_TIME)
    END_TIMER = TimerSpec("end", TimeDomain.WATERMARK)

    def __init__(self, deliverer: CohortDeliverer, flush_seconds: float, on_flush, clock):
        self._deliverer = deliverer
        self._flush_seconds = flush_seconds
        self._on_flush = on_flush
        self._clock = clock
        self._flushes = Metrics.counter(METRICS_NAMESPACE, "realtime_flushes")

    def setup(self):
        self._deliverer.open()

    def teardown(self):
        self._deliverer.close()

    def process(self, element, window=beam.DoFn.WindowParam, buffer=beam.DoFn.StateParam(BUFFER),
                timer_set=beam.DoFn.StateParam(TIMER_SET), flush_timer=beam.DoFn.TimerParam(FLUSH_TIMER),
                end_timer=beam.DoFn.TimerParam(END_TIMER)):
        _, change = element
        buffer.add(tuple(change))
        end_timer.set(window.max_timestamp())
        if not timer_set.read():
            flush_timer.set(Timestamp(self._clock() + self._flush_seconds))
            timer_set.write(True)

    @on_timer(FLUSH_TIMER)
    def on_flush_timer(self, buffer=beam.DoFn.StateParam(BUFFER), timer_set=beam.DoFn.StateParam(TIMER_SET),
                       failing=beam.DoFn.StateParam(FAILING), flush_timer=beam.DoFn.TimerParam(FLUSH_TIMER)):
        yield from self._flush(buffer, timer_set, failing, flush_timer)

    @on_timer(END_TIMER)
    def on_end_timer(self, buffer=beam.DoFn.StateParam(BUFFER), timer_set=beam.DoFn.StateParam(TIMER_SET),
                     failing=beam.DoFn.StateParam(FAILING), flush_timer=beam.DoFn.TimerParam(FLUSH_TIMER)):
        yield from self._flush(buffer, timer_set, failing, flush_timer, final=True)

    def _flush(self, buffer, timer_set, failing, flush_timer, final=False):
        buffered = list(buffer.read())
        buffer.clear()
        timer_set.clear()
        if not buffered:
            return
        self._flushes.inc()
        changes = collapse(buffered)
        results = []
        for op in (ADD, REMOVE):
            results.extend(self._deliverer.deliver(op, [c for c in changes if c.op == op]))
        failed = [r for r in results if r.status == FAILED]
        if failed and not final:
            # Keep them for the next flush; a newer change for the same user (arriving later,
            # with a later time or position) still wins there.
            by_key = {(c.key, c.op): c for c in changes}
            latest = {k: w for (w, k, _, _) in buffered}
            for r in failed:
                c = by_key[(r.key, r.op)]
                buffer.add((latest.get(c.key, 0), c.key, c.op, c.amplitude_ids))
            flush_timer.set(Timestamp(self._clock() + self._flush_seconds))
            timer_set.write(True)
            _LOG.error("real-time sync %s: %d changes failed and will be sent again at the next flush",
                       self._deliverer.sync.name, len(failed))
        status = "failed" if failed else "success"
        was_failing = bool(failing.read())
        failing.write(bool(failed))
        if self._on_flush is not None:
            try:
                self._on_flush(results, status, was_failing)
            except Exception:  # noqa: BLE001 - reporting must not stop delivery
                _LOG.exception("real-time sync %s: the flush report/notification failed", self._deliverer.sync.name)
        yield from results


class FlushReporter:
    """``on_flush`` for ``FlushAndDeliver``: a report per flush that sent anything (when
    ``report_dir`` is set), and an email when the sync starts failing or recovers."""

    def __init__(self, sync: CohortSync, target: Target, report_dir: str = "",
                 email: Optional[EmailSettings] = None):
        self.sync = sync
        self.target = target
        self.report_dir = report_dir
        self.email = email

    def __call__(self, results: List[Result], status: str, was_failing: bool) -> Optional[dict]:
        from transforms.cohorts.notify import send_run_email
        from transforms.cohorts.report import build_report, report_paths, write_report
        from transforms.cohorts.state import new_run_id

        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        run_id = "rt-" + new_run_id()
        errors = []
        failed = [r for r in results if r.status == FAILED]
        if failed:
            errors.append(f"{len(failed)} change(s) failed after retries "
                          f"({', '.join(sorted({r.reason for r in failed}))}); they are sent again at the next flush")
        report = build_report(run_id=run_id, sync=self.sync, target=self.target, mode="real_time", started_at=now,
                              finished_at=now, status=status, results=results, errors=errors)
        paths = report_paths(self.report_dir, self.sync.cohort_id, self.target.name, run_id) if self.report_dir else ()
        if (status == "failed") != was_failing:  # started failing, or recovered
            report["email"] = send_run_email(self.email, report, paths)
        else:
            report["email"] = {"sent": False, "error": "only sent when the sync starts failing or recovers"}
        if paths:
            write_report(report, *paths)
        return report
