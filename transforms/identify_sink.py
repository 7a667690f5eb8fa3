"""The ``/users/identify`` sink: merge requests → Braze, batched, paced, held through outages.

Input: ``(sync, MergeRequest)`` from ``transforms.device_merge``, each stamped with the time its
merge became due. Keyed by sync: one key per sync sends that sync's calls, so the pacing in
``transforms.identify_sending`` holds for the whole job (there is about one request per device
that signs in, far fewer than ``/users/track`` requests).

After the /users/track sink. The graph feeds this step, beside the requests, the track sink's
outcomes turned into nothing (``pipeline.graph``): this step's watermark then trails the track
sink's, and a request waits in state (``pending``) until the watermark has passed its time, so
the alias profile's objects, stamped earlier, have been sent to Braze first. That holds where
timers hold the watermark, as Beam's Fn API has processing-time timers do at the time of the
element that set them: the packer's batch wait and the track sink's retries through an outage
then hold this step back too (the FnApiRunner does; Dataflow should, by the same API). The
local streaming runner keeps no such holds, and only the settle time keeps the order there.
Requests that are due together leave together, 50 to a body.

Outages, as the track sink (``transforms.sink``, ``transforms.outage``): a call that still fails
after a few quick retries (5xx, 429, timeouts) parks its requests in the key's state, and a
processing-time timer retries them with backoff, or as long as a 429 asks, until Braze answers;
requests that come due meanwhile queue behind them. Requests held longer than
``--braze_outage_budget`` are dead-lettered (``outage_budget_exhausted``). At the end of a
bounded input or a drain, what is held gets a last round within ``max_attempts`` /
``max_retry_seconds``, then ``retries_exhausted``.

Every request ends once: sent (counted ``merge.<sync>.sent``, and emitted on tag ``sent``),
or a ``DeadLetter`` with stage ``identify``, a reason and what to do, whose data is a
``/users/identify`` body with that one entry (kind ``aliases_to_identify``): once the cause is
fixed, POST it to the sync's endpoint. (``pipeline.replay`` leaves these letters in place: the
replay topic takes ``/users/track`` objects only.) Merge requests are not events: the events
they came from are accounted for by their own branches, so there are no outcomes here.

The API key lives only in the per-sync ``SyncState`` built in ``setup()``, never pickled.
"""
from __future__ import annotations

import logging
import math
import random
import time
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import FloatCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from transforms.model import Sync
from transforms.coders import MERGE, STATE_CODER, JsonBag, JsonValue, typed
from transforms.guard import INTERNAL_ERROR, Failure as StageFailure, count_internal_error, failure_of, guarded
from transforms.identify_sending import KIND, IdentifySender, MergeMetrics, Settled, entry_body
from transforms.outage import OUTAGE_BUDGET_EXHAUSTED, RETRIES_EXHAUSTED, HeldQueue, Hold, Parked, split_expired
from transforms.records import BRAZE_OBJECT, DeadLetter, MergeRequest, utc_now_iso
from transforms.retry_policy import hold_delay
from transforms.secrets import resolve_api_key
from transforms.sink_state import Failure, SyncState, close_all

__all__ = ["STAGE", "DEAD_LETTER_TAG", "SENT_TAG", "SendMerges"]

_LOG = logging.getLogger(__name__)

STAGE = "identify"
DEAD_LETTER_TAG = "dead_letters"
SENT_TAG = "sent"
INLINE_ATTEMPTS = 3  # quick retries before a request is parked (as the track sink)
INLINE_SECONDS = 5.0
HOLD_BACKOFF_BASE_SECONDS = 5.0
MAX_PER_FIRING = 1000  # requests one retry firing sends, so a drain is a series of short work items
# Requests that come due within the same few seconds leave together (up to 50 to a body): the
# flush timer is set to the next multiple of this. A merge waits a minute anyway (the settle).
FLUSH_GRID_SECONDS = 5.0
_LAST_SECONDS = GlobalWindow().max_timestamp().micros // 1_000_000


class Params(NamedTuple):
    timeout_seconds: float = 10.0
    max_attempts: int = 6
    max_retry_seconds: float = 120.0
    outage_budget_seconds: float = 4 * 3600.0
    hold_backoff_cap_seconds: float = 300.0


def _parked(fields) -> Parked:
    return Parked(MERGE(fields[0]), fields[1])


def _dead_letter(request: MergeRequest, failure: Failure, error_class: str = ""):
    return pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
        stage=STAGE, reason=failure.reason, detail=failure.detail, sync=request.sync, data=entry_body([request]),
        payload_type=BRAZE_OBJECT, kind=KIND, http_status=failure.http_status, attempts=failure.attempts,
        failed_at=utc_now_iso(), sources=tuple(request.sources), error_class=error_class))


def _failed_request(dofn, element, failure: StageFailure):
    request = element[1] if isinstance(element, tuple) and len(element) == 2 else None
    if isinstance(request, MergeRequest):
        yield _dead_letter(request, Failure(INTERNAL_ERROR, failure.detail, None, 0), failure.error_class)
    else:
        yield pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
            stage=STAGE, reason=INTERNAL_ERROR, detail=failure.detail, sync="", data=repr(element)[:10000].encode(),
            payload_type=BRAZE_OBJECT, failed_at=utc_now_iso(), error_class=failure.error_class))


class _MergeSinkDoFn(beam.DoFn):
    """Keyed by sync. State: ``pending`` (requests with the time they are due), ``flush_due``,
    and while holding ``queue`` and ``hold`` (``transforms.outage.HeldQueue``)."""

    PENDING = BagStateSpec("pending", STATE_CODER)
    FLUSH_DUE = ReadModifyWriteStateSpec("flush_due", FloatCoder())
    QUEUE = BagStateSpec("queue", STATE_CODER)
    HOLD = ReadModifyWriteStateSpec("hold", STATE_CODER)
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)
    RETRY = TimerSpec("retry", TimeDomain.REAL_TIME)
    WINDOW_END = TimerSpec("window_end", TimeDomain.WATERMARK)

    def __init__(self, syncs: Tuple[Sync, ...], params: Params, resolve_key, sleep, clock):
        self._syncs = tuple(syncs)
        self._params = params
        self._resolve_key = resolve_key
        self._sleep = sleep
        self._clock = clock
        self._states: Dict[str, SyncState] = {}
        self._metrics: Dict[str, MergeMetrics] = {}
        self._sender: Optional[IdentifySender] = None
        self._rng = random.Random()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_states"] = {}  # never ship keys or sessions
        state["_sender"] = None
        return state

    def setup(self):
        self._states = {s.name: SyncState(s, False, self._params.timeout_seconds, self._resolve_key, self._clock)
                        for s in self._syncs}
        self._metrics = {s.name: MergeMetrics(s.name) for s in self._syncs}
        self._sender = IdentifySender(sleep=self._sleep, clock=self._clock, rng=self._rng)

    def teardown(self):
        close_all(self._states.values())

    @guarded(STAGE, _failed_request)
    def process(self, element, timestamp=beam.DoFn.TimestampParam, pending=beam.DoFn.StateParam(PENDING),
                flush_due=beam.DoFn.StateParam(FLUSH_DUE), flush=beam.DoFn.TimerParam(FLUSH)):
        _, request = element
        due = min(math.ceil(timestamp.micros / 1e6 / FLUSH_GRID_SECONDS) * FLUSH_GRID_SECONDS, _LAST_SECONDS)
        JsonBag(pending).add([due, request])
        current = flush_due.read()
        if current is None or due < current:
            flush.set(Timestamp.of(due))
            flush_due.write(due)
        return ()

    @on_timer(FLUSH)
    def on_flush(self, fired_at=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam,
                 pending=beam.DoFn.StateParam(PENDING), flush_due=beam.DoFn.StateParam(FLUSH_DUE),
                 queue=beam.DoFn.StateParam(QUEUE), hold=beam.DoFn.StateParam(HOLD),
                 flush=beam.DoFn.TimerParam(FLUSH), retry=beam.DoFn.TimerParam(RETRY),
                 window_end=beam.DoFn.TimerParam(WINDOW_END)):
        """The watermark, and so the track sink, passed these requests' time: send them."""
        held = HeldQueue(JsonBag(queue, _parked), JsonValue(hold))
        due: List[MergeRequest] = []
        try:
            if self._sender is None:
                self.setup()
            bag = JsonBag(pending)
            now = fired_at.micros / 1e6
            entries = sorted(((t, MERGE(r)) for t, r in bag.read()), key=lambda e: e[0])
            due = [r for t, r in entries if t <= now + 1e-6]
            later = [(t, r) for t, r in entries if t > now + 1e-6]
            bag.clear()
            for t, r in later:
                bag.add([t, r])
            if later:
                flush.set(Timestamp.of(later[0][0]))
                flush_due.write(later[0][0])
            else:
                flush_due.clear()
            if not due:
                return
            if held.active():  # Braze is failing: queue behind what is held
                self._count_held(due, +1)
                held.park(Parked(r, self._clock()) for r in due)
                return
            settled = self._send(due, INLINE_ATTEMPTS, INLINE_SECONDS)
            yield from self._settle(settled)
            if settled.held:
                self._start_holding(held, settled, retry, window_end, window)
        except Exception as error:  # noqa: BLE001 - a timer must never raise (it would retry forever)
            yield from self._salvage(held, error, due)

    @on_timer(RETRY)
    def on_retry(self, fired_at=beam.DoFn.TimestampParam, queue=beam.DoFn.StateParam(QUEUE),
                 hold=beam.DoFn.StateParam(HOLD), retry=beam.DoFn.TimerParam(RETRY)):
        held = HeldQueue(JsonBag(queue, _parked), JsonValue(hold))
        try:
            if not held.active():
                return
            if self._sender is None:
                self.setup()
            now = self._clock()
            if now < fired_at.seconds() - 1:  # fired before its time: the input ended
                yield from self._final_round(held)
            else:
                yield from self._retry_held(held, now, retry)
        except Exception as error:  # noqa: BLE001 - a timer must never raise
            yield from self._salvage(held, error)

    @on_timer(WINDOW_END)
    def on_window_end(self, queue=beam.DoFn.StateParam(QUEUE), hold=beam.DoFn.StateParam(HOLD),
                      retry=beam.DoFn.TimerParam(RETRY)):
        """End of a bounded input, or a drain: a last round for what is held."""
        held = HeldQueue(JsonBag(queue, _parked), JsonValue(hold))
        try:
            if held.active():
                if self._sender is None:
                    self.setup()
                retry.clear()
                yield from self._final_round(held)
        except Exception as error:  # noqa: BLE001 - a timer must never raise
            yield from self._salvage(held, error)

    # -----------------------------------------------------------------------------------------

    def _send(self, requests: List[MergeRequest], attempts: int, seconds: float) -> Settled:
        """Send requests of one sync (a key is one sync); unknown syncs are refused."""
        sync = requests[0].sync
        state, metrics = self._states.get(sync), self._metrics.get(sync)
        if state is None:
            failure = Failure("unknown_sync", f"sync {sync!r} is not in the syncs file", None, 0)
            return Settled([], [(r, failure) for r in requests], [])
        return self._sender.send(state, metrics, requests, max_attempts=attempts, max_seconds=seconds)

    def _settle(self, settled: Settled):
        for request in settled.sent:
            self._metrics[request.sync].sent.inc()
            yield pvalue.TaggedOutput(SENT_TAG, request)
        for request, failure in settled.failed:
            metrics = self._metrics.get(request.sync)
            if metrics is not None:
                metrics.dead_lettered.inc()
            yield _dead_letter(request, failure)

    def _start_holding(self, held: HeldQueue, settled: Settled, retry, window_end, window) -> None:
        now = self._clock()
        held.set_hold(Hold(since=now, head_tries=settled.attempts, head_failed_at=now, last_error=settled.error,
                           last_status=settled.http_status))
        self._count_held(settled.held, +1)
        held.park(Parked(r, now) for r in settled.held)
        metrics = self._metrics.get(settled.held[0].sync)
        if metrics is not None:
            metrics.outages.inc()
        _LOG.warning("sync %s: Braze is failing /users/identify (%s); holding %d merge requests and retrying",
                     settled.held[0].sync, settled.error, len(settled.held))
        retry.set(Timestamp.of(now + self._delay(1, settled.wait_seconds)))
        window_end.set(window.max_timestamp())

    def _retry_held(self, held: HeldQueue, now: float, retry):
        hold = held.hold
        expired, entries = split_expired(held.entries(), now, self._params.outage_budget_seconds)
        self._count_held([p.request for p in expired], -1)
        for parked in expired:
            yield from self._give_up(parked.request, OUTAGE_BUDGET_EXHAUSTED, hold,
                                     f"Braze did not take it within the outage budget of "
                                     f"{self._params.outage_budget_seconds:.0f} s")
        batch, rest = entries[:MAX_PER_FIRING], entries[MAX_PER_FIRING:]
        settled = Settled([], [], [])
        if batch:
            self._count_held([p.request for p in batch], -1)
            settled = self._send([p.request for p in batch], INLINE_ATTEMPTS, INLINE_SECONDS)
            self._count_held(settled.held, +1)
            yield from self._settle(settled)
        still = {id(r) for r in settled.held}
        remaining = [p for p in batch if id(p.request) in still] + rest
        if not remaining:
            _LOG.warning("sync %s: Braze answers /users/identify again; the held merge requests were sent after "
                         "%.0f s", batch[0].request.sync if batch else "?", now - hold.since)
            held.clear()
            return
        if settled.held:
            hold = hold._replace(retries=hold.retries + 1, head_tries=hold.head_tries + settled.attempts,
                                 last_error=settled.error, last_status=settled.http_status)
        held.set_hold(hold)
        handled = len(expired) + len(batch) - len(settled.held)
        held.commit(handled, remaining, rewrite=handled > 0)
        wait = self._delay(hold.retries, settled.wait_seconds) if settled.held else 0.0
        retry.set(Timestamp.of(self._clock() + wait))

    def _final_round(self, held: HeldQueue):
        hold = held.hold
        entries = held.entries()
        held.clear()
        requests = [p.request for p in entries]
        self._count_held(requests, -1)
        by_sync: Dict[str, List[MergeRequest]] = {}
        for r in requests:
            by_sync.setdefault(r.sync, []).append(r)
        for batch in by_sync.values():
            settled = self._send(batch, self._params.max_attempts, self._params.max_retry_seconds)
            yield from self._settle(settled)
            for request in settled.held:
                attempts = hold.head_tries + settled.attempts
                yield from self._give_up(request, RETRIES_EXHAUSTED, hold._replace(head_tries=attempts),
                                         f"gave up after {attempts} attempt(s); last error: {settled.error}")

    def _give_up(self, request: MergeRequest, reason: str, hold: Hold, why: str):
        metrics = self._metrics.get(request.sync)
        if metrics is not None:
            metrics.dead_lettered.inc()
        detail = f"{why}; last error: {hold.last_error}" if reason == OUTAGE_BUDGET_EXHAUSTED else why
        yield _dead_letter(request, Failure(reason, detail + "; POST this dead letter's data to the sync's endpoint "
                                            "at /users/identify once Braze answers", hold.last_status,
                                            hold.head_tries))

    def _salvage(self, held: HeldQueue, error: BaseException, extra: Iterable[MergeRequest] = ()):
        """An unexpected error in a timer: what it held is dead-lettered, never retried forever."""
        failure = failure_of(STAGE, error)
        count_internal_error(STAGE, failure)
        try:
            entries = [p.request for p in held.entries()]
            held.clear()
        except Exception:  # noqa: BLE001 - the state itself cannot be read
            entries = []
        for request in list(extra) + entries:
            yield _dead_letter(request, Failure(INTERNAL_ERROR, failure.detail, None, 0), failure.error_class)

    def _delay(self, retries: int, wait_hint: Optional[float]) -> float:
        cap = self._params.hold_backoff_cap_seconds
        return hold_delay(retries, wait_hint, min(HOLD_BACKOFF_BASE_SECONDS, cap), cap, self._rng)

    def _count_held(self, requests: Iterable[MergeRequest], sign: int) -> None:
        for request in requests:
            metrics = self._metrics.get(request.sync)
            if metrics is not None:
                metrics.held.inc(sign)


class SendMerges(beam.PTransform):
    """``(sync, MergeRequest)`` → the merge requests Braze received (tag ``sent``) and
    ``DeadLetter`` (tag ``dead_letters``). See the module docstring.

    Args:
      syncs: the syncs requests may name (name, endpoint, api_key reference).
      timeout_seconds, max_attempts, max_retry_seconds, outage_budget_seconds,
        hold_backoff_cap_seconds: as for ``transforms.sink.WriteToBraze`` (the same options).
      resolve_key, sleep, clock: injectable for tests.
    """

    def __init__(self, syncs: Iterable[Sync], *, timeout_seconds: float = 10.0, max_attempts: int = 6,
                 max_retry_seconds: float = 120.0, outage_budget_seconds: float = 4 * 3600.0,
                 hold_backoff_cap_seconds: float = 300.0,
                 resolve_key: Callable[[str], str] = resolve_api_key,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time):
        super().__init__()
        for name, value in (("timeout_seconds", timeout_seconds), ("max_retry_seconds", max_retry_seconds),
                            ("outage_budget_seconds", outage_budget_seconds),
                            ("hold_backoff_cap_seconds", hold_backoff_cap_seconds)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (value == 0 and name != "max_retry_seconds"):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        self._syncs = tuple(syncs)
        self._params = Params(float(timeout_seconds), max_attempts, float(max_retry_seconds),
                              float(outage_budget_seconds), float(hold_backoff_cap_seconds))
        self._resolve_key, self._sleep, self._clock = resolve_key, sleep, clock

    def expand(self, requests):
        written = requests | "SendPerSync" >> beam.ParDo(_MergeSinkDoFn(
            self._syncs, self._params, self._resolve_key, self._sleep, self._clock)
        ).with_outputs(SENT_TAG, DEAD_LETTER_TAG, main="unused")
        typed(written[SENT_TAG], MergeRequest)
        typed(written[DEAD_LETTER_TAG], DeadLetter)
        typed(written.unused, MergeRequest)  # nothing is emitted there
        return written
