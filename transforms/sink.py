"""The Braze sink: batches of Braze objects → POST /users/track → outcomes and dead letters.

Policy (DESIGN.md, "Braze sink and failures"), built from the pure rules in
``transforms.braze_client``:

* 2xx "success": delivered, except the objects Braze names in ``errors[]``, which go to the
  dead letters with Braze's text.
* 400 (every object invalid): each object to the dead letters with its reason.
* 413 / "Max Input Length Exceeded": send the halves, recursively; one object alone that is
  still too large is dead-lettered ``payload_too_large``.
* 401 / 403 / 404 / 415 and a 2xx that is not "success": the whole batch to the dead letters.
  A 401 first re-reads the key once, in case it was rotated.
* 408 / 429 / 5xx / timeouts / connection errors: retry with exponential backoff and full
  jitter (429: as long as the rate-limit headers say), within ``max_attempts`` and
  ``max_retry_seconds``; past either, every object is dead-lettered ``retries_exhausted``.

Up to ``max_in_flight`` requests are in flight at once per DoFn instance, on a thread pool;
two requests that share a user never are, and go in the order their batches arrived
(``transforms.inflight``), since Braze does not order separate requests. A retry's wait or a
429's holds only its own request. With ``max_in_flight=1`` every request is sent on the
bundle's thread, one after the other.

Every object ends as an ``Outcome`` per source, DELIVERED or DEAD_LETTERED; a dead-lettered
object also gives one ``DeadLetter`` on ``DEAD_LETTER_TAG``. Nothing is dropped silently, and
no Braze or transport failure raises out of ``process``.

The API key lives only in the DoFn's per-sync state (``transforms.sink_state.SyncState``,
built in ``setup()`` and never pickled) and the client's session headers: it is never logged,
never put in a metric name, a dead letter or an outcome.
"""
from __future__ import annotations

import concurrent.futures
import logging
import math
import random
import time
import urllib.parse
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from pipeline.config import Sync
from transforms import braze_client as bc
from transforms.braze_client import TransportError, backoff_seconds, build_track_body, classify, retry_wait_seconds
from transforms.inflight import Sender, windowed
from transforms.records import BRAZE_OBJECT, DEAD_LETTERED, DELIVERED, BrazeItem, DeadLetter, Outcome, utc_now_iso
from transforms.secrets import is_reference, resolve_api_key
from transforms.sink_state import METRICS_NAMESPACE, Budget, Failure, RecordedMetrics, SyncState, Tally, \
    item_failures

__all__ = ["WriteToBraze", "DEAD_LETTER_TAG", "OUTCOMES_TAG", "STAGE", "METRICS_NAMESPACE"]

_LOG = logging.getLogger(__name__)

DEAD_LETTER_TAG = "dead_letters"
OUTCOMES_TAG = "outcomes"  # the main output's name in the DoOutputsTuple
STAGE = "braze"
# METRICS_NAMESPACE ("braze") is defined in transforms.sink_state, beside the per-sync
# counters it names, and imported above so it stays public here.

# Reasons the sink itself adds to those of braze_client.classify.
RETRIES_EXHAUSTED = "retries_exhausted"
# The reason on a DELIVERED outcome whose request was retried after a failure that may have
# been applied (a timeout, a dropped connection, a 500): Braze may hold it twice.
AFTER_AMBIGUOUS_RETRY = "after_ambiguous_retry"
API_KEY_UNAVAILABLE = "api_key_unavailable"
UNKNOWN_SYNC = "unknown_sync"

# While the sync's adaptive throttler (``transforms.sink_state``) says Braze pushed back on
# most recent requests, a new batch waits in steps of this, up to the cap per batch.
THROTTLE_DELAY_SECONDS = 1.0
MAX_THROTTLE_SECONDS_PER_BATCH = 10.0


class WriteToBraze(beam.PTransform):
    """Send batches of Braze objects to ``/users/track``.

    Input: PCollection of ``(key, list[BrazeItem])`` batches, all items of a batch for one
    sync, already sized for Braze (≤ 75 objects, ≤ 4 MB). Output: a DoOutputsTuple whose main
    output (also reachable as ``OUTCOMES_TAG``) holds ``Outcome`` records and whose
    ``DEAD_LETTER_TAG`` ("dead_letters") output holds ``DeadLetter`` records.

    Args:
      syncs: the ``pipeline.config.Sync`` entries the batches may name; each needs a name, an
        http(s) endpoint and an api_key *reference* (``env:NAME`` or
        ``projects/P/secrets/S/versions/V``).
      timeout_seconds: connect and read timeout of every request.
      max_attempts: requests per batch (or per half of a split batch), first one included.
      max_retry_seconds: time budget per input batch for retries; whichever of the two limits
        comes first ends the retries.
      resolve_key: reference → key; read lazily, once per DoFn instance and sync.
      sleep, clock: injectable for tests (``clock`` returns epoch seconds).
      backoff_base_seconds, backoff_cap_seconds: exponential backoff with full jitter.
      max_rate_limit_wait_seconds: cap on one wait that a 429's headers ask for.
      adaptive_throttling: slow down on the client side when Braze pushes back.
      max_in_flight: requests in flight at once per DoFn instance (1: on the bundle's thread).
    """

    def __init__(self, syncs: Iterable[Sync], *, timeout_seconds: float = 10.0, max_attempts: int = 6,
                 max_retry_seconds: float = 120.0, resolve_key: Callable[[str], str] = resolve_api_key,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time,
                 backoff_base_seconds: float = 0.5, backoff_cap_seconds: float = 30.0,
                 max_rate_limit_wait_seconds: float = 60.0, adaptive_throttling: bool = True,
                 max_in_flight: int = 1):
        super().__init__()
        self._syncs = _check_syncs(syncs)
        _check_positive("timeout_seconds", timeout_seconds)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or not 1 <= max_in_flight <= 64:
            raise ValueError(f"max_in_flight must be an integer from 1 to 64, got {max_in_flight!r}")
        _check_positive("max_retry_seconds", max_retry_seconds, allow_zero=True)
        _check_positive("backoff_base_seconds", backoff_base_seconds, allow_zero=True)
        _check_positive("backoff_cap_seconds", backoff_cap_seconds, allow_zero=True)
        _check_positive("max_rate_limit_wait_seconds", max_rate_limit_wait_seconds, allow_zero=True)
        for name, fn in (("resolve_key", resolve_key), ("sleep", sleep), ("clock", clock)):
            if not callable(fn):
                raise ValueError(f"{name} must be callable, got {fn!r}")
        self._params = _Params(
            timeout_seconds=float(timeout_seconds), max_attempts=max_attempts,
            max_retry_seconds=float(max_retry_seconds), backoff_base_seconds=float(backoff_base_seconds),
            backoff_cap_seconds=float(backoff_cap_seconds),
            max_rate_limit_wait_seconds=float(max_rate_limit_wait_seconds),
            adaptive_throttling=bool(adaptive_throttling), max_in_flight=max_in_flight)
        self._resolve_key = resolve_key
        self._sleep = sleep
        self._clock = clock

    def expand(self, batches):
        return batches | "Post to Braze" >> beam.ParDo(
            _BrazeSinkDoFn(self._syncs, self._params, self._resolve_key, self._sleep, self._clock)
        ).with_outputs(DEAD_LETTER_TAG, main=OUTCOMES_TAG)


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_syncs(syncs) -> Tuple[Sync, ...]:
    if syncs is None or isinstance(syncs, (str, bytes, Sync)):
        raise ValueError(f"syncs must be an iterable of pipeline.config.Sync, got {syncs!r}")
    syncs = tuple(syncs)
    if not syncs:
        raise ValueError("syncs must name at least one sync")
    seen = set()
    for sync in syncs:
        if not isinstance(sync, Sync):
            raise ValueError(f"syncs must hold pipeline.config.Sync entries, got {type(sync).__name__}")
        if not isinstance(sync.name, str) or not sync.name:
            raise ValueError(f"sync name must be a non-empty string, got {sync.name!r}")
        if sync.name in seen:
            raise ValueError(f"sync name {sync.name!r} appears more than once")
        seen.add(sync.name)
        url = urllib.parse.urlsplit(sync.endpoint) if isinstance(sync.endpoint, str) else None
        if url is None or url.scheme not in ("https", "http") or not url.hostname or url.query or url.fragment:
            raise ValueError(f"sync {sync.name!r}: endpoint must be an http(s) base URL, got {sync.endpoint!r}")
        if not is_reference(sync.api_key):
            # The value is not shown: it may be a key pasted where the reference belongs.
            raise ValueError(f"sync {sync.name!r}: api_key must be a reference, env:NAME or "
                             "projects/P/secrets/S/versions/V (the value given is not shown)")
    return syncs


class _Params(NamedTuple):
    timeout_seconds: float
    max_attempts: int
    max_retry_seconds: float
    backoff_base_seconds: float
    backoff_cap_seconds: float
    max_rate_limit_wait_seconds: float
    adaptive_throttling: bool
    max_in_flight: int


class _BrazeSinkDoFn(beam.DoFn):
    def __init__(self, syncs: Sequence[Sync], params: _Params, resolve_key, sleep, clock):
        self._syncs = tuple(syncs)
        self._params = params
        self._resolve_key = resolve_key
        self._sleep = sleep
        self._clock = clock
        self._states: Dict[str, SyncState] = {}
        self._rng = random.Random()
        self._throttled_seconds = None
        self._throttled_remainder = 0.0
        self._pool = None
        self._sender = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_states"] = {}  # never ship keys or sessions
        state["_pool"] = state["_sender"] = None
        return state

    def setup(self):
        self._states = {s.name: SyncState(s, self._params.adaptive_throttling, self._params.timeout_seconds,
                                          self._resolve_key, self._clock)
                        for s in self._syncs}
        self._rng = random.Random()
        # Reported where Dataflow looks for backend throttling (as Beam's own IOs do). The
        # namespace is this class's qualified name, transforms.sink._BrazeSinkDoFn: moving the
        # class to another module would rename the metric.
        self._throttled_seconds = Metrics.counter(_BrazeSinkDoFn, "cumulativeThrottlingSeconds")
        if self._params.max_in_flight > 1 and self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._params.max_in_flight,
                                                               thread_name_prefix="braze-sink")

    def start_bundle(self):
        if self._pool is not None:
            self._sender = Sender(self._params.max_in_flight, self._pool)

    def finish_bundle(self):
        if self._sender is not None:
            while not self._sender.idle():
                yield from self._settled(wait=True)

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for state in self._states.values():
            try:
                state.close()
            except Exception:  # noqa: BLE001 - teardown must reach every session
                _LOG.warning("could not close the Braze session of sync %s", state.sync.name)

    # -----------------------------------------------------------------------------------------

    def process(self, element, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        _, items = element
        items = list(items)
        if not items:
            return
        if not self._states:
            self.setup()
        if self._pool is not None and self._sender is None:  # a runner that skipped start_bundle
            self.start_bundle()
        groups: Dict[str, List[BrazeItem]] = {}
        for it in items:  # a batch holds one sync; be safe if it does not
            groups.setdefault(it.sync, []).append(it)
        for sync_name, group in groups.items():
            state = self._states.get(sync_name)
            if state is None:
                _LOG.error("batch of %d objects names sync %r, which WriteToBraze was not given",
                           len(group), sync_name)
                failure = Failure(UNKNOWN_SYNC, f"sync {sync_name!r} is not configured for the Braze sink", None, 0)
                yield from self._emit([(it, failure) for it in group], None)
            elif self._sender is None:
                results = self._deliver(state, group, Tally(state.metrics, self._report_throttled))
                yield from self._emit(results, state)
            else:
                self._sender.submit(frozenset((sync_name, it.user_key) for it in group),
                                    lambda state=state, group=group: self._deliver_on_pool(state, group),
                                    (state, window, timestamp))
        if self._sender is not None:
            yield from self._settled(wait=False)
            while self._sender.waiting >= self._params.max_in_flight:  # hold the input back
                yield from self._settled(wait=True)

    def _deliver(self, state: SyncState, items: List[BrazeItem], tally: Tally):
        """Send one batch until it is settled: one (item, None | reason | Failure) per item."""
        budget = Budget(self._clock, self._params.max_retry_seconds)
        self._throttle(state, tally)
        results: List[Tuple[BrazeItem, Optional[Failure]]] = []
        self._send(state, items, budget, results, tally)
        return results

    def _deliver_on_pool(self, state: SyncState, items: List[BrazeItem]):
        waits: List[float] = []
        tally = Tally(RecordedMetrics(), waits.append)
        return self._deliver(state, items, tally), tally.m, waits

    def _settled(self, wait: bool):
        """Outputs of the batches the pool finished, in their own window, with their metrics."""
        for (state, window, timestamp), (results, recorded, waits) in self._sender.finished(wait):
            recorded.replay(state.metrics)
            for seconds in waits:
                self._report_throttled(seconds)
            for output in self._emit(results, state):
                yield windowed(output, window, timestamp)

    def _throttle(self, state: SyncState, tally: Tally) -> None:
        """Hold a new batch back while most recent requests to this sync were pushed back."""
        if state.throttler is None:
            return
        throttled = 0.0
        while throttled < MAX_THROTTLE_SECONDS_PER_BATCH and state.hold_back(self._clock() * 1000.0):
            self._sleep(THROTTLE_DELAY_SECONDS)
            throttled += THROTTLE_DELAY_SECONDS
        if throttled:
            _LOG.info("sync %s: held a batch back %.1f s because Braze pushed back recently",
                      state.sync.name, throttled)
            tally.throttled(throttled)

    def _report_throttled(self, seconds: float) -> None:
        total = self._throttled_remainder + seconds
        whole = int(total)
        self._throttled_remainder = total - whole
        if whole:
            self._throttled_seconds.inc(whole)

    def _send(self, state: SyncState, items: List[BrazeItem], budget: Budget,
              results: List[Tuple[BrazeItem, Optional[Failure]]], tally: Tally) -> None:
        """Send one request's worth of items until it is settled; append one result per item."""
        params = self._params
        m = tally.m
        attempt = 0
        auth_refreshed = False
        ambiguous = False
        while True:
            attempt += 1
            answer = None
            index_map: dict = {}
            if attempt > 1:
                # A retry is a request too: count it in the throttler's history (the answer
                # is ignored, the retry was already delayed by backoff).
                state.hold_back(self._clock() * 1000.0)
            client, key_error = state.client_or_error()
            key_version = state.version_in_use()
            if key_error is not None and key_error.permanent:
                _LOG.error("sync %s: cannot read the Braze API key: %s", state.sync.name, key_error)
                self._fail_all(results, items, Failure(API_KEY_UNAVAILABLE, str(key_error), None, attempt - 1))
                return
            if key_error is not None:
                verdict = bc.Verdict(bc.RETRY, "secret_unavailable", str(key_error))
            else:
                body, index_map = build_track_body(items)
                m.requests.inc()
                m.objects_sent.inc(len(items))
                m.objects_per_request.update(len(items))
                try:
                    answer = client.post_track(body)
                except TransportError as e:
                    answer = e
                verdict = classify(answer)
                if verdict.action != bc.RETRY:
                    state.answered(self._clock() * 1000.0)
                else:
                    state.note_pushback(self._clock() * 1000.0)

            if verdict.action == bc.OK:
                failed = item_failures(verdict, index_map, attempt)
                for position, it in enumerate(items):
                    results.append((it, failed.get(position, AFTER_AMBIGUOUS_RETRY if ambiguous else None)))
                return
            if verdict.action == bc.SPLIT:
                if len(items) == 1:
                    self._fail_all(results, items, Failure(
                        bc.PAYLOAD_TOO_LARGE, f"a single object is too large for Braze ({verdict.detail})",
                        verdict.http_status, attempt))
                    return
                middle = len(items) // 2
                _LOG.info("sync %s: Braze answered %s for %d objects; sending halves",
                          state.sync.name, verdict.http_status, len(items))
                self._send(state, items[:middle], budget, results, tally)
                self._send(state, items[middle:], budget, results, tally)
                return
            if verdict.action == bc.REJECT:
                failed = item_failures(verdict, index_map, attempt)
                rest = Failure(bc.BRAZE_REJECTED, verdict.detail, verdict.http_status, attempt)
                for position, it in enumerate(items):
                    results.append((it, failed.get(position, rest)))
                return
            if verdict.action == bc.FAIL:
                if verdict.reason == bc.BRAZE_AUTH:
                    m.auth_failures.inc()
                    if not auth_refreshed and state.refresh_key(key_version):
                        auth_refreshed = True
                        _LOG.warning("sync %s: Braze answered 401; the key changed since it was read, "
                                     "retrying once with the new one", state.sync.name)
                        continue
                if verdict.reason in (bc.BRAZE_AUTH, bc.BRAZE_FORBIDDEN, bc.BRAZE_NOT_FOUND,
                                      bc.BRAZE_UNSUPPORTED_MEDIA):
                    _LOG.error("sync %s: Braze refused the request (%s, HTTP %s); %d objects dead-lettered. "
                               "Check the sync's endpoint and API key permissions.",
                               state.sync.name, verdict.reason, verdict.http_status, len(items))
                self._fail_all(results, items, Failure(verdict.reason, verdict.detail, verdict.http_status,
                                                        attempt))
                return

            # RETRY
            if verdict.rate_limited:
                m.rate_limited.inc()
            header_wait = None
            if verdict.rate_limited and isinstance(answer, bc.Response):
                header_wait = retry_wait_seconds(answer.headers, self._clock(),
                                                 params.max_rate_limit_wait_seconds)
            remaining = budget.remaining()
            if attempt >= params.max_attempts or remaining <= 0 or (
                    header_wait is not None and header_wait > remaining):
                detail = (f"gave up after {attempt} attempt(s) in {budget.elapsed():.1f}s; "
                          f"last error: {verdict.detail}")
                _LOG.warning("sync %s: %d objects dead-lettered, %s", state.sync.name, len(items), detail)
                self._fail_all(results, items, Failure(RETRIES_EXHAUSTED, detail, verdict.http_status, attempt))
                return
            if header_wait is not None:
                wait = header_wait
            else:
                wait = backoff_seconds(attempt, params.backoff_base_seconds, params.backoff_cap_seconds, self._rng)
            wait = max(0.0, min(wait, remaining))
            m.retries.inc()
            if verdict.maybe_applied:
                # The failed request may have been applied; Braze has no idempotency key,
                # so this retry may duplicate events (braze-api.md section 6).
                m.ambiguous_retries.inc()
                ambiguous = True
            if wait > 0:
                self._sleep(wait)
                budget.waited += wait
                if verdict.rate_limited:
                    tally.throttled(wait)

    @staticmethod
    def _fail_all(results, items, failure: Failure) -> None:
        results.extend((it, failure) for it in items)

    def _emit(self, results: Sequence[Tuple[BrazeItem, Optional[Failure]]], state: Optional[SyncState]):
        """``results``: per item, None or AFTER_AMBIGUOUS_RETRY when delivered, else a Failure."""
        now_ms = self._clock() * 1000.0
        failed_at = utc_now_iso()
        m = state.metrics if state is not None else None
        for it, failure in results:
            if failure is None or failure == AFTER_AMBIGUOUS_RETRY:
                if m is not None:
                    m.objects_delivered.inc()
                    if it.publish_time_ms is not None:
                        m.delivery_latency_ms.update(max(0, int(now_ms - it.publish_time_ms)))
                for source in it.sources:
                    yield Outcome(source, it.sync, it.branch, DELIVERED, failure or "")
                continue
            detail = state.scrub(failure.detail) if state is not None else failure.detail
            if m is not None:
                m.objects_dead_lettered.inc()
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                stage=STAGE, reason=failure.reason, detail=detail, sync=it.sync, data=orjson.dumps(it.obj),
                payload_type=BRAZE_OBJECT, kind=it.kind, http_status=failure.http_status,
                attempts=failure.attempts, failed_at=failed_at, sources=tuple(it.sources)))
            for source in it.sources:
                yield Outcome(source, it.sync, it.branch, DEAD_LETTERED, failure.reason)
