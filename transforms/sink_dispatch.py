"""The Braze sink's dispatch: a batch key's requests sent in order, and what each settled as.

``DispatchMixin`` is part of the sink's DoFn (``transforms.sink._BrazeSinkDoFn``), kept apart
because it is a concept of its own: it sends a list of one key's requests through
``transforms.sending.RequestSender`` (the rules for each answer), in order, up to
``max_in_flight`` at once for requests that share no user (``transforms.inflight``), stops
starting new ones once one must be held, and turns what settled into ``Outcome``s and
``DeadLetter``s. A sync in shadow mode sends nothing: each request becomes its
``ShadowRequest``. The DoFn provides ``_params``, ``_states``, ``_sender``, ``_pool``,
``_shadow``, ``_shadow_counters``, ``_clock`` and ``_throttled_seconds``.
"""
from __future__ import annotations

import concurrent.futures
from typing import Dict, Iterable, List, NamedTuple, Optional

import orjson
from apache_beam import pvalue

from transforms.inflight import InFlight
from transforms.outage import Parked
from transforms.records import BRAZE_OBJECT, DEAD_LETTERED, DELIVERED, BrazeItem, DeadLetter, Outcome, Request, \
    utc_now_iso
from transforms.sending import AFTER_AMBIGUOUS_RETRY, Sent
from transforms.shadow import shadow_outputs
from transforms.sink_state import Failure, RecordedMetrics, SyncState, Tally

__all__ = ["DEAD_LETTER_TAG", "STAGE", "UNKNOWN_SYNC", "Dispatched", "DispatchMixin", "dead_letter_outputs"]

DEAD_LETTER_TAG = "dead_letters"
STAGE = "braze"
UNKNOWN_SYNC = "unknown_sync"


def dead_letter_outputs(item: BrazeItem, failure: Failure, error_class: str = "", state: Optional[SyncState] = None):
    """An object given up: its ``DeadLetter`` (the object as data, the detail scrubbed of keys) and
    an ``Outcome`` per source."""
    detail = state.scrub(failure.detail) if state is not None else failure.detail
    yield pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
        stage=STAGE, reason=failure.reason, detail=detail, sync=item.sync, data=orjson.dumps(item.obj),
        payload_type=BRAZE_OBJECT, kind=item.kind, http_status=failure.http_status, attempts=failure.attempts,
        failed_at=utc_now_iso(), sources=tuple(item.sources), error_class=error_class))
    for source in item.sources:
        yield Outcome(source, item.sync, item.branch, DEAD_LETTERED, failure.reason)


class Dispatched(NamedTuple):
    """What sending some of a key's requests left: the outputs of what settled, the requests
    that must be held (in order), and the first held one's ``Sent``."""

    outputs: List
    held: List[Parked]
    first_held: Optional[Sent]


class DispatchMixin:
    """Sending one key's requests; see the module docstring for what the DoFn provides."""


    def _send_all(self, requests: List[Request], attempts: int, seconds: float,
                  first_ambiguous: bool = False, first_retrying: bool = False, throttle: bool = True) -> "Dispatched":
        """Send requests in order; stop starting new ones once one must be held. Returns the
        outputs of what settled and the held requests (in order) with the first one's ``Sent``.
        The requests share a batch key, so a sync: in shadow mode none is sent, each becomes its
        ``ShadowRequest`` (whatever path brought it here: arrival, a hold's retry, the end)."""
        if requests and requests[0].items and requests[0].items[0].sync in self._shadow:
            return Dispatched([out for r in requests for out in shadow_outputs(r, self._shadow_counters)], [], None)
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
        return Dispatched(outputs, held, first_held)

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
        return list(dead_letter_outputs(item, failure, "", state))
