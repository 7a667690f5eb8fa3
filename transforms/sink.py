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
from typing import Callable, Dict, Iterable, List, NamedTuple, Sequence, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer

from transforms.coders import REQUEST, STATE_CODER, JsonBag, typed
from transforms.guard import Failure as StageFailure
from transforms.guard import INTERNAL_ERROR, guarded
from transforms.model import Sync
from transforms.outage import OUTAGE_BUDGET_EXHAUSTED, RETRIES_EXHAUSTED, Hold, Parked
from transforms.records import BRAZE_OBJECT, BrazeItem, DeadLetter, Outcome, Request, ShadowRequest, utc_now_iso
from transforms.secrets import is_reference, resolve_api_key
from transforms.sending import AFTER_AMBIGUOUS_RETRY, API_KEY_UNAVAILABLE, RequestSender
from transforms.shadow import SHADOW_TAG, ShadowCounters
# The sink's DoFn is split by concept: dispatch (sending a key's requests in order) and holding
# (through outages); their names used by other modules stay importable from here.
from transforms.sink_dispatch import DEAD_LETTER_TAG, STAGE, UNKNOWN_SYNC, DispatchMixin, dead_letter_outputs
from transforms.sink_holding import HoldingMixin, held_queue
from transforms.sink_state import METRICS_NAMESPACE, Failure, SyncState, close_all

__all__ = ["WriteToBraze", "DEAD_LETTER_TAG", "OUTCOMES_TAG", "SHADOW_TAG", "STAGE", "METRICS_NAMESPACE",
           "RETRIES_EXHAUSTED", "OUTAGE_BUDGET_EXHAUSTED", "AFTER_AMBIGUOUS_RETRY", "API_KEY_UNAVAILABLE",
           "UNKNOWN_SYNC"]

_LOG = logging.getLogger(__name__)

OUTCOMES_TAG = "outcomes"  # the main output's name in the DoOutputsTuple

DEFAULT_OUTAGE_BUDGET_SECONDS = 4 * 3600.0  # Amplitude's own destination retries 4 hours (docs/api-facts.md, A4)


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
        yield from dead_letter_outputs(item, Failure(INTERNAL_ERROR, failure.detail, None, 0), failure.error_class)


def in_order(request: Request, next_seq, early, early_count) -> List[Request]:
    """The requests of a key that may go now, in packing order: ``request`` and the early ones
    it unblocks; none when ``request`` itself came early (it waits in ``early``). The cells are
    the sink's ``next_seq``, ``early`` (a ``JsonBag`` of requests) and ``early_count``."""
    expected = next_seq.read() or 0
    if request.seq > expected:
        early.add(request)
        early_count.write((early_count.read() or 0) + 1)
        return []
    due = [request]
    if early_count.read():
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


class _BrazeSinkDoFn(HoldingMixin, DispatchMixin, beam.DoFn):
    """Keyed like ``transforms.batching``. State per key: ``next_seq`` (the next request to send),
    ``early`` (requests that overtook their predecessor; normally empty), and while holding,
    ``queue`` and ``hold`` (``transforms.outage``). Per request: one read and one write of
    ``next_seq``; per held request one bag append. Its arrival path and timers are here; sending
    is ``transforms.sink_dispatch`` and holding ``transforms.sink_holding``."""

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
        close_all(self._states.values())

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
        due = in_order(request, next_seq, JsonBag(early, REQUEST), early_count)
        if not due:
            self._early.inc()
            return
        held = held_queue(queue, hold)
        now = self._clock()
        if held.active():
            self._count_held(due, +1)
            held.park(Parked(r, now) for r in due)
            return
        outcome = self._send_all(due, 1, 0.0)
        yield from outcome.outputs
        if outcome.held:
            self._start_holding(held, outcome, now, retry, window_end, window)

    # -----------------------------------------------------------------------------------------
    # Holding: retries by timer, drains in order, dead letters only past the budget.

    @on_timer(RETRY)
    def on_retry(self, fired_at=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam,
                 queue=beam.DoFn.StateParam(QUEUE), hold=beam.DoFn.StateParam(HOLD),
                 retry=beam.DoFn.TimerParam(RETRY), window_end=beam.DoFn.TimerParam(WINDOW_END)):
        if self._sender is None:
            self.setup()
        held = held_queue(queue, hold)
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
        held = held_queue(queue, hold)
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
