"""The Braze sink: each batch key's requests → POST /users/track, in order, through outages.

Input: ``(key, Request)`` from ``transforms.batching``, numbered per key in the order they were
packed. Beam keeps no order across the shuffle in between, so a request that arrives before its
predecessor waits for it (``early``): a key's requests reach Braze in the order they were
packed, which keeps each user's objects in the order identify made them (a user's objects all
share one key).

Each request is sent by ``transforms.sending.RequestSender`` (the rules for every answer), once
per try. A transient failure means Braze is failing or throttling: the key then holds
(``transforms.outage``): that request and every later one of the key wait in state, in order,
and a timer retries the first with backoff until Braze answers, then the queue drains
in order. Objects are dead-lettered only past ``--braze_outage_budget`` (reason
``outage_budget_exhausted``), or when one request keeps failing while Braze takes this sync's
others (``retries_exhausted``). At the end of a bounded input, or when the job drains, what is
held gets one last round of retries within ``max_attempts`` / ``max_retry_seconds``, and what
still fails is dead-lettered: nothing is dropped silently.

Up to ``max_in_flight`` requests of a key may be in flight together when several are ready at
once (a drain after an outage); two that share a user never are (``transforms.inflight``).

Every object ends as an ``Outcome`` per source, DELIVERED or DEAD_LETTERED; a dead-lettered
object also gives one ``DeadLetter`` on ``DEAD_LETTER_TAG``. No Braze or transport failure, and
no unexpected error, raises out of ``process`` or a timer.

A sync in shadow mode goes through the same ordering, and where a request would be sent, its
body leaves on ``SHADOW_TAG`` instead (``transforms.shadow``): nothing is sent, no key is read.

The API key lives only in the DoFn's per-sync state (``transforms.sink_state.SyncState``, built
in ``setup()`` and never pickled) and the client's session headers: it is never logged, never put
in a metric name, a dead letter or an outcome.
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
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.model import Sync
from transforms.coders import REQUEST, STATE_CODER, JsonBag, JsonValue, typed
from transforms.guard import Failure as StageFailure
from transforms.guard import INTERNAL_ERROR, count_internal_error, failure_of, guarded
from transforms.inflight import InFlight
from transforms.outage import OUTAGE_BUDGET_EXHAUSTED, RETRIES_EXHAUSTED, HeldQueue, Hold, Parked, retry_delay, \
    split_expired
from transforms.records import BRAZE_OBJECT, DEAD_LETTERED, DELIVERED, BrazeItem, DeadLetter, Outcome, Request, \
    ShadowRequest, utc_now_iso
from transforms.secrets import is_reference, resolve_api_key
from transforms.sending import AFTER_AMBIGUOUS_RETRY, API_KEY_UNAVAILABLE, RequestSender, Sent
from transforms.shadow import SHADOW_TAG, ShadowCounters, shadow_outputs
from transforms.sink_state import METRICS_NAMESPACE, Failure, RecordedMetrics, SyncState, Tally

__all__ = ["WriteToBraze", "DEAD_LETTER_TAG", "OUTCOMES_TAG", "SHADOW_TAG", "STAGE", "METRICS_NAMESPACE",
           "RETRIES_EXHAUSTED", "OUTAGE_BUDGET_EXHAUSTED", "AFTER_AMBIGUOUS_RETRY", "API_KEY_UNAVAILABLE",
           "UNKNOWN_SYNC"]

_LOG = logging.getLogger(__name__)

DEAD_LETTER_TAG = "dead_letters"
OUTCOMES_TAG = "outcomes"  # the main output's name in the DoOutputsTuple
STAGE = "braze"
UNKNOWN_SYNC = "unknown_sync"

# One retry timer sends for at most this long before it hands over to the next firing, so a
# drain after a long outage is a series of short work items, not one long one.
DRAIN_SECONDS_PER_FIRING = 20.0
DEFAULT_OUTAGE_BUDGET_SECONDS = 4 * 3600.0
# While holding, the first retry comes 2.5-5 s after the failure, then twice as long each time
# up to the cap: quick enough for a blip, and an hour-long outage costs a few dozen requests.
HOLD_BACKOFF_BASE_SECONDS = 2.0


class WriteToBraze(beam.PTransform):
    """Send each batch key's requests to ``/users/track`` in order, holding them through outages.

    Input: PCollection of ``(key, Request)``; a request's objects all belong to one sync and are
    already sized for Braze (≤ 75 objects, ≤ 4 MB). Output: a DoOutputsTuple whose main output
    (also reachable as ``OUTCOMES_TAG``) holds ``Outcome`` records, whose ``DEAD_LETTER_TAG``
    ("dead_letters") output holds ``DeadLetter`` records, and whose ``SHADOW_TAG`` ("shadow")
    output holds a ``ShadowRequest`` for each request of a sync in shadow mode, which is not sent
    (the output exists, empty, when no sync is in shadow mode, so the graph keeps its shape when a
    sync changes mode).

    Args:
      syncs: the ``pipeline.config.Sync`` entries the requests may name; each needs a name, an
        http(s) endpoint and an api_key *reference* (``env:NAME`` or
        ``projects/P/secrets/S/versions/V``).
      timeout_seconds: connect and read timeout of every request.
      max_attempts, max_retry_seconds: retries of one request that are not an outage: at the
        end of a bounded input or a drain, and for a request that keeps failing while Braze
        takes the sync's others. While streaming, a request is sent once per try: a transient
        failure holds the key and a timer retries it, so no thread ever sleeps on Braze.
      outage_budget_seconds: how long a held object may wait for Braze before it is
        dead-lettered ``outage_budget_exhausted``.
      hold_backoff_cap_seconds: the longest wait between two retries while holding.
      resolve_key: reference → key; read lazily, once per DoFn instance and sync.
      sleep, clock: injectable for tests (``clock`` returns epoch seconds).
      backoff_base_seconds, backoff_cap_seconds: the quick retries' exponential backoff.
      adaptive_throttling: slow down on the client side when Braze pushes back.
      max_in_flight: requests of one key in flight at once when several are ready (1 to 64).
    """

    def __init__(self, syncs: Iterable[Sync], *, timeout_seconds: float = 10.0, max_attempts: int = 6,
                 max_retry_seconds: float = 120.0, outage_budget_seconds: float = DEFAULT_OUTAGE_BUDGET_SECONDS,
                 hold_backoff_cap_seconds: float = 300.0, resolve_key: Callable[[str], str] = resolve_api_key,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time,
                 backoff_base_seconds: float = 0.5, backoff_cap_seconds: float = 30.0,
                 adaptive_throttling: bool = True, max_in_flight: int = 1):
        super().__init__()
        self._syncs = _check_syncs(syncs)
        _check_positive("timeout_seconds", timeout_seconds)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or not 1 <= max_in_flight <= 64:
            raise ValueError(f"max_in_flight must be an integer from 1 to 64, got {max_in_flight!r}")
        _check_positive("max_retry_seconds", max_retry_seconds, allow_zero=True)
        _check_positive("outage_budget_seconds", outage_budget_seconds)
        _check_positive("hold_backoff_cap_seconds", hold_backoff_cap_seconds)
        _check_positive("backoff_base_seconds", backoff_base_seconds, allow_zero=True)
        _check_positive("backoff_cap_seconds", backoff_cap_seconds, allow_zero=True)
        for name, fn in (("resolve_key", resolve_key), ("sleep", sleep), ("clock", clock)):
            if not callable(fn):
                raise ValueError(f"{name} must be callable, got {fn!r}")
        self._params = _Params(
            timeout_seconds=float(timeout_seconds), max_attempts=max_attempts,
            max_retry_seconds=float(max_retry_seconds), outage_budget_seconds=float(outage_budget_seconds),
            hold_backoff_cap_seconds=float(hold_backoff_cap_seconds),
            backoff_base_seconds=float(backoff_base_seconds), backoff_cap_seconds=float(backoff_cap_seconds),
            adaptive_throttling=bool(adaptive_throttling), max_in_flight=max_in_flight)
        self._resolve_key = resolve_key
        self._sleep = sleep
        self._clock = clock

    def expand(self, requests):
        sent = requests | "SendInOrder" >> beam.ParDo(
            _BrazeSinkDoFn(self._syncs, self._params, self._resolve_key, self._sleep, self._clock)
        ).with_outputs(DEAD_LETTER_TAG, SHADOW_TAG, main=OUTCOMES_TAG)
        typed(sent[OUTCOMES_TAG], Outcome)
        typed(sent[DEAD_LETTER_TAG], DeadLetter)
        typed(sent[SHADOW_TAG], ShadowRequest)
        return sent


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
    outage_budget_seconds: float
    hold_backoff_cap_seconds: float
    backoff_base_seconds: float
    backoff_cap_seconds: float
    adaptive_throttling: bool
    max_in_flight: int


def _parked(fields) -> Parked:
    return Parked(REQUEST(fields[0]), fields[1])


def _held_queue(queue, hold) -> HeldQueue:
    return HeldQueue(JsonBag(queue, _parked), JsonValue(hold))


def _failed_request(dofn, element, failure: StageFailure):
    """``guarded``'s fallback: every object of the request is dead-lettered."""
    request = element[1] if isinstance(element, tuple) and len(element) == 2 else element
    items = getattr(request, "items", None)
    if not isinstance(items, tuple) or not all(isinstance(i, BrazeItem) for i in items):
        # Not even a request: nothing to account for but the element itself.
        yield pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
            stage=STAGE, reason=INTERNAL_ERROR, detail=failure.detail, sync="", data=repr(element)[:10000].encode(),
            payload_type=BRAZE_OBJECT, failed_at=utc_now_iso(), error_class=failure.error_class))
        return
    for item in items:
        yield from _dead_letter(item, Failure(INTERNAL_ERROR, failure.detail, None, 0), failure.error_class)


def _dead_letter(item: BrazeItem, failure: Failure, error_class: str = "", state: Optional[SyncState] = None):
    detail = state.scrub(failure.detail) if state is not None else failure.detail
    yield pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
        stage=STAGE, reason=failure.reason, detail=detail, sync=item.sync, data=orjson.dumps(item.obj),
        payload_type=BRAZE_OBJECT, kind=item.kind, http_status=failure.http_status, attempts=failure.attempts,
        failed_at=utc_now_iso(), sources=tuple(item.sources), error_class=error_class))
    for source in item.sources:
        yield Outcome(source, item.sync, item.branch, DEAD_LETTERED, failure.reason)


class _BrazeSinkDoFn(beam.DoFn):
    """Keyed like ``transforms.batching``. State per key: ``next_seq`` (the next request to send),
    ``early`` (requests that overtook their predecessor; normally empty), and while holding,
    ``queue`` and ``hold`` (``transforms.outage``). Per request: one read and one write of
    ``next_seq``; per held request one bag append."""

    NEXT_SEQ = ReadModifyWriteStateSpec("next_seq", VarIntCoder())
    EARLY = BagStateSpec("early", STATE_CODER)
    EARLY_COUNT = ReadModifyWriteStateSpec("early_count", VarIntCoder())
    QUEUE = BagStateSpec("queue", STATE_CODER)
    HOLD = ReadModifyWriteStateSpec("hold", STATE_CODER)
    RETRY = TimerSpec("retry", TimeDomain.REAL_TIME)
    WINDOW_END = TimerSpec("window_end", TimeDomain.WATERMARK)

    def __init__(self, syncs: Sequence[Sync], params: _Params, resolve_key, sleep, clock):
        self._syncs = tuple(syncs)
        self._shadow = frozenset(s.name for s in self._syncs if s.shadow)
        self._shadow_counters = ShadowCounters()
        self._params = params
        self._resolve_key = resolve_key
        self._sleep = sleep
        self._clock = clock
        self._states: Dict[str, SyncState] = {}
        self._rng = random.Random()
        self._sender = None
        self._pool = None
        self._throttled_seconds = None
        self._throttled_remainder = 0.0
        self._early = Metrics.counter(METRICS_NAMESPACE, "requests_out_of_order")

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
        self._sender = RequestSender(backoff_base_seconds=self._params.backoff_base_seconds,
                                     backoff_cap_seconds=self._params.backoff_cap_seconds,
                                     sleep=self._sleep, clock=self._clock, rng=self._rng)
        # Reported where Dataflow looks for backend throttling (as Beam's own IOs do). The
        # namespace is this class's qualified name, transforms.sink._BrazeSinkDoFn: moving the
        # class to another module would rename the metric.
        self._throttled_seconds = Metrics.counter(_BrazeSinkDoFn, "cumulativeThrottlingSeconds")
        if self._params.max_in_flight > 1 and self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._params.max_in_flight,
                                                               thread_name_prefix="braze-sink")

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
    # Arrival: in packing order, then sent, or held behind an outage.

    @guarded(STAGE, _failed_request)
    def process(self, element, window=beam.DoFn.WindowParam, next_seq=beam.DoFn.StateParam(NEXT_SEQ),
                early=beam.DoFn.StateParam(EARLY), early_count=beam.DoFn.StateParam(EARLY_COUNT),
                queue=beam.DoFn.StateParam(QUEUE), hold=beam.DoFn.StateParam(HOLD),
                retry=beam.DoFn.TimerParam(RETRY), window_end=beam.DoFn.TimerParam(WINDOW_END)):
        if self._sender is None:
            self.setup()
        _, request = element
        due = self._in_order(request, next_seq, JsonBag(early, REQUEST), early_count)
        if not due:
            return
        held = _held_queue(queue, hold)
        now = self._clock()
        if held.active():
            self._count_held(due, +1)
            held.park(Parked(r, now) for r in due)
            return
        outcome = self._send_all(due, 1, 0.0)
        yield from outcome.outputs
        if outcome.held:
            self._start_holding(held, outcome, now, retry, window_end, window)

    def _in_order(self, request: Request, next_seq, early, early_count) -> List[Request]:
        """The requests that may go now, in order: this one and the early ones it unblocks."""
        expected = next_seq.read() or 0
        if request.seq > expected:
            early.add(request)
            early_count.write((early_count.read() or 0) + 1)
            self._early.inc()
            return []
        due = [request]
        waiting = early_count.read() or 0
        if waiting:
            pending = sorted(early.read(), key=lambda r: r.seq)
            following = request.seq + 1
            rest = []
            for r in pending:
                if r.seq == following:
                    due.append(r)
                    following += 1
                else:
                    rest.append(r)
            early.clear()
            for r in rest:
                early.add(r)
            early_count.write(len(rest)) if rest else early_count.clear()
        next_seq.write(max(expected, due[-1].seq + 1))
        return due

    # -----------------------------------------------------------------------------------------
    # Holding: retries by timer, drains in order, dead letters only past the budget.

    @on_timer(RETRY)
    def on_retry(self, fired_at=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam,
                 queue=beam.DoFn.StateParam(QUEUE), hold=beam.DoFn.StateParam(HOLD),
                 retry=beam.DoFn.TimerParam(RETRY), window_end=beam.DoFn.TimerParam(WINDOW_END)):
        if self._sender is None:
            self.setup()
        held = _held_queue(queue, hold)
        if not held.active():
            return
        now = self._clock()
        try:
            if now < fired_at.seconds() - 1:  # fired before its time: the input ended
                yield from self._final_round(held)
            else:
                yield from self._retry_held(held, now, retry)
        except Exception as error:  # noqa: BLE001 - a timer must never raise (it would retry forever)
            yield from self._salvage(held, error)

    @on_timer(WINDOW_END)
    def on_window_end(self, early=beam.DoFn.StateParam(EARLY), early_count=beam.DoFn.StateParam(EARLY_COUNT),
                      queue=beam.DoFn.StateParam(QUEUE), hold=beam.DoFn.StateParam(HOLD),
                      retry=beam.DoFn.TimerParam(RETRY)):
        """End of a bounded input, or a drain: last round for what is held or still early."""
        if self._sender is None:
            self.setup()
        held = _held_queue(queue, hold)
        early = JsonBag(early, REQUEST)
        try:
            leftovers = sorted(early.read(), key=lambda r: r.seq) if early_count.read() else []
            early.clear()
            early_count.clear()
            if leftovers:
                _LOG.warning("%d requests never saw their predecessor; sending them now", len(leftovers))
                if not held.active():
                    held.set_hold(Hold(since=self._clock()))
                self._count_held(leftovers, +1)
                held.park(Parked(r, self._clock()) for r in leftovers)
            if held.active():
                retry.clear()
                yield from self._final_round(held)
        except Exception as error:  # noqa: BLE001 - a timer must never raise
            yield from self._salvage(held, error)

    def _start_holding(self, held: HeldQueue, outcome: "_Outcome", now: float, retry, window_end, window) -> None:
        first = outcome.held[0]
        state = self._state_of(first.request)
        sent = outcome.first_held
        held.set_hold(Hold(since=now, head_tries=sent.attempts, head_failed_at=now, head_seconds=sent.seconds,
                           last_failed_at=now,
                           ambiguous=sent.ambiguous, last_error=state.scrub(sent.error) if state else sent.error,
                           last_status=sent.http_status))
        self._count_held([p.request for p in outcome.held], +1)
        held.park(outcome.held)
        if state is not None:
            state.metrics.outages.inc()
            _LOG.warning("sync %s: Braze is failing (%s); holding this key's requests and retrying",
                         state.sync.name, held.hold.last_error)
        delay = self._hold_delay(1, sent.wait_seconds)
        if sent.throttled or sent.wait_seconds is not None:
            self._report_throttled(delay)
        retry.set(Timestamp.of(now + delay))
        window_end.set(window.max_timestamp())

    def _retry_held(self, held: HeldQueue, now: float, retry):
        hold = held.hold
        entries = held.entries()
        state = self._state_of(entries[0].request) if entries else None
        if state is not None:
            held_for = int(max(0.0, now - hold.since))
            state.metrics.outage_seconds.inc(held_for - hold.counted)
            hold = hold._replace(counted=held_for)
            state.metrics.oldest_held_age_seconds.update(int(max(0.0, now - entries[0].parked_at)))
        expired, entries = split_expired(entries, now, self._params.outage_budget_seconds)
        handled = len(expired)
        for parked in expired:
            yield from self._give_up(parked, OUTAGE_BUDGET_EXHAUSTED,
                                     f"Braze did not take it within the outage budget of "
                                     f"{self._params.outage_budget_seconds:.0f} s; last error: {hold.last_error}",
                                     hold)
        deadline = now + DRAIN_SECONDS_PER_FIRING
        rewrite = False
        while entries and self._clock() < deadline:
            chunk = entries[:max(1, self._params.max_in_flight) * 4]
            outcome = self._send_all([p.request for p in chunk], 1, 0.0,
                                     first_ambiguous=hold.ambiguous, first_retrying=True)
            yield from outcome.outputs
            still = {p.request.seq: p for p in outcome.held}
            kept = []
            for old in chunk:
                new = still.get(old.request.seq)
                self._count_held([old.request], -1)
                if new is not None:
                    self._count_held([new.request], +1)
                    kept.append(Parked(new.request, old.parked_at))  # keeps its place and its age
                    rewrite = rewrite or len(new.request.items) != len(old.request.items)
            settled = len(chunk) - len(kept)
            handled += settled
            if not kept:
                entries = entries[len(chunk):]
                hold = hold._replace(head_tries=0, head_failed_at=now, head_seconds=0.0, ambiguous=False)
                continue
            # Still failing: the held requests keep their place, the rest of the queue behind them.
            rewrite = rewrite or settled > 0
            entries = kept + entries[len(chunk):]
            sent = outcome.first_held
            same_head = chunk[0].request.seq == kept[0].request.seq
            # A strike: the same request failed again (not throttled, not rate-limited) although
            # Braze took another request of this sync since its previous failure.
            struck = (same_head and state is not None and not sent.throttled and sent.wait_seconds is None
                      and state.succeeded_since(hold.last_failed_at))
            strikes = hold.strikes + 1 if struck else 0
            if strikes >= self._params.max_attempts:
                yield from self._give_up(kept[0], RETRIES_EXHAUSTED,
                                         f"failed {strikes} times in a row while Braze took other requests of "
                                         f"this sync; last error: {sent.error}", hold._replace(
                                             last_status=sent.http_status, head_tries=hold.head_tries + sent.attempts))
                entries = entries[1:]
                handled += 1
                rewrite = True
                hold = hold._replace(head_tries=0, head_failed_at=now, head_seconds=0.0, strikes=0,
                                     last_failed_at=now)
                held.set_hold(hold)
                held.commit(handled, entries, rewrite)
                if entries:
                    retry.set(Timestamp.of(self._clock()))
                else:
                    held.clear()
                return
            hold = hold._replace(retries=hold.retries + 1, strikes=strikes, last_failed_at=self._clock(),
                                 head_tries=(hold.head_tries if same_head else 0) + sent.attempts,
                                 head_failed_at=hold.head_failed_at if same_head else now,
                                 head_seconds=(hold.head_seconds if same_head else 0.0) + sent.seconds,
                                 ambiguous=sent.ambiguous, last_error=state.scrub(sent.error) if state else sent.error,
                                 last_status=sent.http_status)
            held.set_hold(hold)
            held.commit(handled, entries, rewrite)
            delay = self._hold_delay(hold.retries, sent.wait_seconds)
            if sent.throttled or sent.wait_seconds is not None:
                self._report_throttled(delay)
            retry.set(Timestamp.of(now + delay))
            return
        if entries:  # the firing's time is up: the next one goes on at once
            held.set_hold(hold)
            held.commit(handled, entries, rewrite)
            retry.set(Timestamp.of(self._clock()))
            return
        if state is not None:
            state.metrics.outage_seconds.inc(int(max(0.0, self._clock() - hold.since)) - hold.counted)
            _LOG.warning("sync %s: Braze answers again; the held requests of this key were sent after %.0f s",
                         state.sync.name, now - hold.since)
        held.clear()

    def _hold_delay(self, retries: int, wait_hint: Optional[float]) -> float:
        return retry_delay(retries, wait_hint, min(HOLD_BACKOFF_BASE_SECONDS, self._params.hold_backoff_cap_seconds),
                           self._params.hold_backoff_cap_seconds, self._rng)

    def _final_round(self, held: HeldQueue):
        """The input ended: each held request gets what is left of ``max_attempts`` and
        ``max_retry_seconds`` (the first one has used some already), then a dead letter."""
        hold = held.hold
        entries = held.entries()
        held.clear()
        self._count_held([p.request for p in entries], -1)
        for i, parked in enumerate(entries):
            tries, seconds = (hold.head_tries, hold.head_seconds) if i == 0 else (0, 0.0)
            attempts_left = self._params.max_attempts - tries
            seconds_left = self._params.max_retry_seconds - seconds
            if tries and (attempts_left <= 0 or seconds_left <= 0):
                still, sent_attempts, sent_seconds, error, status = parked, 0, 0.0, hold.last_error, hold.last_status
                outputs = []
            else:
                outcome = self._send_all([parked.request], max(1, attempts_left), max(0.0, seconds_left),
                                         first_ambiguous=hold.ambiguous if i == 0 else False,
                                         first_retrying=tries > 0, throttle=False)
                outputs = outcome.outputs
                still = outcome.held[0] if outcome.held else None
                sent = outcome.first_held
                if sent is not None:
                    sent_attempts, sent_seconds, error, status = sent.attempts, sent.seconds, sent.error, sent.http_status
            yield from outputs
            if still is None:
                continue
            state = self._state_of(still.request)
            attempts = tries + sent_attempts
            detail = f"gave up after {attempts} attempt(s) in {seconds + sent_seconds:.1f}s; last error: {error}"
            for item in still.request.items:
                yield from self._emit_failure(item, Failure(RETRIES_EXHAUSTED, detail, status, attempts), state)

    def _give_up(self, parked: Parked, reason: str, detail: str, hold: Hold):
        self._count_held([parked.request], -1)
        state = self._state_of(parked.request)
        _LOG.warning("sync %s: %d held objects dead-lettered (%s)", state.sync.name if state else "?",
                     len(parked.request.items), reason)
        failure = Failure(reason, detail, hold.last_status, hold.head_tries)
        for item in parked.request.items:
            yield from self._emit_failure(item, failure, state)

    def _salvage(self, held: HeldQueue, error: BaseException):
        """An unexpected error in a timer: what is held is dead-lettered, never retried forever."""
        failure = failure_of(STAGE, error)
        count_internal_error(STAGE, failure)
        try:
            entries = held.entries()
        except Exception:  # noqa: BLE001 - the state itself cannot be read
            entries = []
        held.clear()
        for parked in entries:
            for item in parked.request.items:
                yield from _dead_letter(item, Failure(INTERNAL_ERROR, failure.detail, None, 0), failure.error_class)

    # -----------------------------------------------------------------------------------------
    # Sending: in order, up to max_in_flight at once for requests that share no user.

    def _send_all(self, requests: List[Request], attempts: int, seconds: float,
                  first_ambiguous: bool = False, first_retrying: bool = False, throttle: bool = True) -> "_Outcome":
        """Send requests in order; stop starting new ones once one must be held. Returns the
        outputs of what settled and the held requests (in order) with the first one's ``Sent``.
        The requests share a batch key, so a sync: in shadow mode none is sent, each becomes its
        ``ShadowRequest`` (whatever path brought it here: arrival, a hold's retry, the end)."""
        if requests and requests[0].items and requests[0].items[0].sync in self._shadow:
            return _Outcome([out for r in requests for out in shadow_outputs(r, self._shadow_counters)], [], None)
        if self._pool is None or len(requests) == 1:
            sents = []
            for i, request in enumerate(requests):
                sent = self._send_one(request, attempts, seconds, first_ambiguous and i == 0,
                                      first_retrying and i == 0, throttle, None)
                sents.append(sent)
                if sent is not None and sent.held:
                    break
            sents += [None] * (len(requests) - len(sents))
        else:
            sents = self._send_concurrently(requests, attempts, seconds, first_ambiguous, first_retrying, throttle)
        outputs: List = []
        held: List[Parked] = []
        first_held = None
        now = self._clock()
        for request, sent in zip(requests, sents):
            state = self._state_of(request)
            if sent is None:  # not started: waits behind the held one
                held.append(Parked(request, now))
                continue
            if not isinstance(sent, Sent):  # a (Sent, recorded metrics, waits) from a pool thread
                sent, recorded, waits = sent
                if state is not None:
                    recorded.replay(state.metrics)
                for seconds_waited in waits:
                    self._report_throttled(seconds_waited)
            outputs.extend(self._emit(sent.results, state))
            if sent.held:
                held.append(Parked(request._replace(items=sent.held), now))
                first_held = first_held or sent
        return _Outcome(outputs, held, first_held)

    def _send_one(self, request: Request, attempts: int, seconds: float, ambiguous: bool, retrying: bool,
                  throttle: bool, tally):
        state = self._state_of(request)
        if state is None:
            return Sent([(it, Failure(UNKNOWN_SYNC, f"sync {it.sync!r} is not configured for the Braze sink",
                                      None, 0)) for it in request.items])
        tally = tally or Tally(state.metrics, self._report_throttled)
        return self._sender.send(state, request.items, tally, max_attempts=attempts, max_seconds=seconds,
                                 ambiguous=ambiguous, retrying=retrying, throttle=throttle and not retrying)

    def _send_concurrently(self, requests: List[Request], attempts: int, seconds: float, first_ambiguous: bool,
                           first_retrying: bool, throttle: bool):
        admission = InFlight(self._params.max_in_flight)
        for i, request in enumerate(requests):
            admission.add(i, frozenset((it.sync, it.user_key) for it in request.items))
        results: List = [None] * len(requests)
        running: Dict[concurrent.futures.Future, int] = {}
        stop = False

        def on_pool(request, first):
            waits: List[float] = []
            tally = Tally(RecordedMetrics(), waits.append)
            sent = self._send_one(request, attempts, seconds, first and first_ambiguous, first and first_retrying,
                                  throttle, tally)
            return sent, tally.m, waits

        while True:
            if not stop:
                for i in admission.start():
                    running[self._pool.submit(on_pool, requests[i], i == 0)] = i
            if not running:
                break
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                i = running.pop(future)
                admission.finish(i)
                results[i] = future.result()
                if results[i][0].held:
                    stop = True
        return results

    # -----------------------------------------------------------------------------------------

    def _state_of(self, request: Request) -> Optional[SyncState]:
        return self._states.get(request.items[0].sync) if request.items else None

    def _count_held(self, requests: Iterable[Request], sign: int) -> None:
        for request in requests:
            state = self._state_of(request)
            if state is not None:
                state.metrics.objects_held.inc(sign * len(request.items))

    def _report_throttled(self, seconds: float) -> None:
        total = self._throttled_remainder + seconds
        whole = int(total)
        self._throttled_remainder = total - whole
        if whole and self._throttled_seconds is not None:
            self._throttled_seconds.inc(whole)

    def _emit(self, results, state: Optional[SyncState]) -> List:
        """Outcomes (and dead letters) of settled objects: None or AFTER_AMBIGUOUS_RETRY when
        delivered, else a Failure."""
        out: List = []
        now_ms = self._clock() * 1000.0
        for it, failure in results:
            if failure is None or failure == AFTER_AMBIGUOUS_RETRY:
                if state is not None:
                    state.metrics.objects_delivered.inc()
                    if it.publish_time_ms is not None:
                        state.metrics.delivery_latency_ms.update(max(0, int(now_ms - it.publish_time_ms)))
                out.extend(Outcome(source, it.sync, it.branch, DELIVERED, failure or "") for source in it.sources)
            else:
                out.extend(self._emit_failure(it, failure, state))
        return out

    def _emit_failure(self, item: BrazeItem, failure: Failure, state: Optional[SyncState]):
        if state is not None:
            state.metrics.objects_dead_lettered.inc()
        return list(_dead_letter(item, failure, "", state))


class _Outcome(NamedTuple):
    outputs: List
    held: List[Parked]
    first_held: Optional[Sent]
