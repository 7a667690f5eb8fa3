"""One /users/track request, tried until it is settled or must be held (the sink's policy).

``RequestSender.send`` sends one request's objects and applies every rule of ``docs/architecture.md``,
"Delivery", built from the pure rules in ``transforms.braze_client``:

* 2xx "success": delivered, except the objects Braze names in ``errors[]``, which are refused
  with Braze's text.
* 400 (every object invalid): each object refused with its reason.
* 413 / "Max Input Length Exceeded": the halves are sent, recursively; one object alone that is
  still too large is refused ``payload_too_large``. If the first half must be held, the second
  is held with it unsent (a user's objects can sit in both halves).
* 401 / 403 / 404 / 415 and a 2xx that is not "success": the whole request refused. A 401 first
  re-reads the key once, in case it was rotated.
* 408 / 429 / 5xx / timeouts / connection errors: retried by the job's one retry policy
  (``transforms.retry_policy``: exponential backoff with full jitter, a 429 as long as its
  headers say) within the attempts and seconds the caller gives;
  what is still failing then is returned as *held*, with the wait Braze asked for. The caller
  decides whether held means "park and retry later" (an outage, in streaming) or
  ``retries_exhausted`` (the end of a bounded input, or a request that fails while Braze takes
  others).

Nothing here touches Beam state; the sink (``transforms.sink``) owns the decisions that need it.
"""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

from transforms import braze_client as bc
from transforms.braze_client import TransportError, build_track_body, classify
from transforms.records import BrazeItem
from transforms.retry_policy import Budget, RetryPolicy
from transforms.sink_state import Failure, SyncState, Tally, item_failures

__all__ = ["AFTER_AMBIGUOUS_RETRY", "API_KEY_UNAVAILABLE", "Sent", "RequestSender"]

_LOG = logging.getLogger("transforms.sink")

# The reason on a DELIVERED outcome whose request was retried after a failure that may have
# been applied (a timeout, a dropped connection, a 500): Braze may hold it twice.
AFTER_AMBIGUOUS_RETRY = "after_ambiguous_retry"
API_KEY_UNAVAILABLE = "api_key_unavailable"

Result = Union[None, str, Failure]  # None or AFTER_AMBIGUOUS_RETRY: delivered; a Failure: refused


class Sent(NamedTuple):
    """How one request ended: settled objects, and the objects to hold (in their order)."""

    results: List[Tuple[BrazeItem, Result]]
    held: Tuple[BrazeItem, ...] = ()
    wait_seconds: Optional[float] = None  # how long Braze asked to wait (a 429's headers)
    error: str = ""  # the last transient error, for logs and dead letters
    http_status: Optional[int] = None
    attempts: int = 0
    ambiguous: bool = False  # an attempt that failed may have been applied
    seconds: float = 0.0  # time spent on it, waits included
    throttled: bool = False  # not sent: the client-side throttle held it back


class RequestSender:
    """The sending rules of one sink instance; its waits are the retry policy's (``policy``, or
    one built from the backoff settings, waiting as long as a 429 asks)."""

    def __init__(self, *, backoff_base_seconds: float = 0.5, backoff_cap_seconds: float = 30.0,
                 policy: Optional[RetryPolicy] = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time,
                 rng: Optional[random.Random] = None):
        self._policy = policy or RetryPolicy(backoff_base_seconds=backoff_base_seconds,
                                             backoff_cap_seconds=backoff_cap_seconds,
                                             max_rate_limit_wait_seconds=float("inf"))
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    def send(self, state: SyncState, items: Sequence[BrazeItem], tally: Tally, *, max_attempts: int,
             max_seconds: float, ambiguous: bool = False, retrying: bool = False, throttle: bool = True) -> Sent:
        """Send ``items`` as one request (halves if too large) until settled, or until
        ``max_attempts`` / ``max_seconds`` leave only waiting: then the rest is held.

        ``retrying``: the request was held after failing before (counted as a retry).
        ``throttle``: while most of this sync's recent requests were pushed back (the adaptive
        throttler), a new request is not sent at all but returned held (``throttled``), so the
        caller holds it by timer instead of a thread sleeping."""
        if retrying:
            tally.m.retries.inc()
            if ambiguous:
                tally.m.ambiguous_retries.inc()
        if throttle and state.hold_back(self._clock() * 1000.0):
            return Sent([], held=tuple(items), error="held back: Braze pushed back on most of this sync's "
                        "recent requests", throttled=True)
        budget = Budget(self._clock, max_seconds)
        results: List[Tuple[BrazeItem, Result]] = []
        held = self._send(state, list(items), budget, results, tally, max_attempts, ambiguous)
        return held._replace(results=results, seconds=budget.elapsed())

    def _send(self, state: SyncState, items: List[BrazeItem], budget: Budget, results, tally: Tally,
              max_attempts: int, ambiguous: bool) -> Sent:
        m = tally.m
        attempt = 0
        auth_refreshed = False
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
                results.extend((it, Failure(API_KEY_UNAVAILABLE, str(key_error), None, attempt - 1)) for it in items)
                return Sent([])
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
                now_ms = self._clock() * 1000.0
                if verdict.action != bc.RETRY:
                    state.answered(now_ms)
                else:
                    state.note_pushback(now_ms)

            if verdict.action == bc.OK:
                failed = item_failures(verdict, index_map, attempt)
                for position, it in enumerate(items):
                    results.append((it, failed.get(position, AFTER_AMBIGUOUS_RETRY if ambiguous else None)))
                return Sent([], attempts=attempt)
            if verdict.action == bc.SPLIT:
                if len(items) == 1:
                    results.append((items[0], Failure(
                        bc.PAYLOAD_TOO_LARGE, f"a single object is too large for Braze ({verdict.detail})",
                        verdict.http_status, attempt)))
                    return Sent([], attempts=attempt)
                middle = len(items) // 2
                _LOG.info("sync %s: Braze answered %s for %d objects; sending halves",
                          state.sync.name, verdict.http_status, len(items))
                first = self._send(state, items[:middle], budget, results, tally, max_attempts, ambiguous)
                if first.held:
                    return first._replace(held=first.held + tuple(items[middle:]))
                return self._send(state, items[middle:], budget, results, tally, max_attempts, ambiguous)
            if verdict.action == bc.REJECT:
                failed = item_failures(verdict, index_map, attempt)
                rest = Failure(bc.BRAZE_REJECTED, verdict.detail, verdict.http_status, attempt)
                for position, it in enumerate(items):
                    results.append((it, failed.get(position, rest)))
                return Sent([], attempts=attempt)
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
                failure = Failure(verdict.reason, verdict.detail, verdict.http_status, attempt)
                results.extend((it, failure) for it in items)
                return Sent([], attempts=attempt)

            # RETRY: a transient failure.
            if verdict.rate_limited:
                m.rate_limited.inc()
            # The failed request may have been applied; Braze has no idempotency key, so a
            # retry may duplicate events (docs/api-facts.md, B16), and it is counted when made.
            ambiguous = ambiguous or verdict.maybe_applied
            following = self._policy.after_failure(attempt, answer, verdict, budget, self._clock(), self._rng,
                                                   max_attempts=max_attempts)
            if following.wait is None:
                return Sent([], held=tuple(items), wait_seconds=following.header_wait, error=verdict.detail,
                            http_status=verdict.http_status, attempts=attempt, ambiguous=ambiguous)
            wait = following.wait
            m.retries.inc()
            if verdict.maybe_applied:
                m.ambiguous_retries.inc()
            if wait > 0:
                self._sleep(wait)
                budget.waited += wait
                if verdict.rate_limited:
                    tally.throttled(wait)
