"""One retry policy for every call to Braze and Amplitude: backoff with jitter, the waits a 429's
headers ask for, and budgets of attempts and seconds.

Every caller tries a call, classifies the answer (``transforms.braze_client.classify`` or its
own judge) and, on a transient failure (408, 429, 5xx, a timeout, a dropped connection), asks
``RetryPolicy.after_failure`` whether to wait and try again, and how long. What to do besides
stays with the caller, which alone knows it:

* ``transforms.sending.RequestSender`` (``/users/track``): split on 413, per-object errors, the
  key re-read on 401; when the tries are over, the request is *held* (``transforms.sink_holding``
  retries it by timer, waiting ``hold_delay``) or, at the end of the input, given up.
* ``transforms.identify_sending.IdentifySender`` (``/users/identify``): the same, plus pacing.
* the cohort job's delivery (``send_with_retries``: partner, attribute and lookup calls): past
  the budget, ``FAIL retries_exhausted``.
* ``transforms.cohorts.amplitude_api.CohortDownloader``: the waits; giving up at the run's
  deadline is its own.

Where Braze's headers are unclear (``X-RateLimit-Reset`` as an epoch or a delta), the reading
is in ``retry_wait_seconds`` (docs/api-facts.md, B11). Nothing here touches Beam state.
"""
from __future__ import annotations

import datetime
import email.utils
import math
import random
import time
from typing import Callable, Mapping, NamedTuple, Optional, Tuple

from transforms import braze_client as bc
from transforms.braze_client import Response, TransportError

__all__ = ["RETRIES_EXHAUSTED", "RetryPolicy", "Next", "Budget", "backoff_seconds", "retry_wait_seconds",
           "hold_delay", "send_with_retries"]

RETRIES_EXHAUSTED = "retries_exhausted"
# X-RateLimit-Reset values at or below this are read as "seconds from now" (the MAU-plan
# reading, seconds left in an hourly window); larger values that are not in the future are
# past epoch instants (the general reading) and mean "no wait". docs/api-facts.md, B11.
_RESET_DELTA_MAX_SECONDS = 24 * 3600


class Budget:
    """Retry time used by one call (or one input batch): wall time, or the sum of the waits if
    larger (an injected ``sleep`` may not let the clock move)."""

    def __init__(self, clock: Callable[[], float], max_seconds: float):
        self._clock = clock
        self._start = clock()
        self.max_seconds = max_seconds
        self.waited = 0.0

    def elapsed(self) -> float:
        return max(self._clock() - self._start, self.waited)

    def remaining(self) -> float:
        return self.max_seconds - self.elapsed()


class Next(NamedTuple):
    """What follows a transient failure: ``wait`` seconds, then try again; or, when ``wait`` is
    None, no more tries (the caller holds or gives up). ``header_wait``: what a 429's headers
    asked for, if they did (the caller's hold waits as long)."""

    wait: Optional[float]
    header_wait: Optional[float] = None


class RetryPolicy(NamedTuple):
    """How transient failures are retried; one value per caller, checked once (``check``).

    ``max_attempts`` / ``max_retry_seconds`` bound one call (a caller may pass its own, as the
    sinks do per try); backoff is exponential with full jitter from ``backoff_base_seconds`` up
    to ``backoff_cap_seconds``; a 429 waits as its headers ask, at most
    ``max_rate_limit_wait_seconds``. ``timeout_seconds`` is the transport's, per request."""

    timeout_seconds: float = 10.0
    max_attempts: int = 6
    max_retry_seconds: float = 120.0
    backoff_base_seconds: float = 0.5
    backoff_cap_seconds: float = 30.0
    max_rate_limit_wait_seconds: float = 60.0

    def check(self) -> "RetryPolicy":
        """The policy itself, or ``ValueError`` naming the setting to fix."""
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        for name in ("timeout_seconds", "max_retry_seconds", "backoff_base_seconds", "backoff_cap_seconds",
                     "max_rate_limit_wait_seconds"):
            value = getattr(self, name)
            finite = name == "max_rate_limit_wait_seconds" or (isinstance(value, (int, float)) and math.isfinite(value))
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not finite or value < 0 \
                    or (name == "timeout_seconds" and value == 0):
                raise ValueError(f"{name} must be a finite number >= 0 (timeout > 0), got {value!r}")
        return self

    def backoff(self, attempt: int, rng=random) -> float:
        """The wait after failed attempt number ``attempt`` (from 1), with full jitter."""
        return backoff_seconds(attempt, self.backoff_base_seconds, self.backoff_cap_seconds, rng)

    def asked_wait(self, headers: Mapping[str, str], now_epoch: float) -> Optional[float]:
        """How long rate-limit headers ask to wait (at most ``max_rate_limit_wait_seconds``)."""
        return retry_wait_seconds(headers, now_epoch, self.max_rate_limit_wait_seconds)

    def after_failure(self, attempt: int, answer, verdict: bc.Verdict, budget: Budget, now_epoch: float,
                      rng=random, *, max_attempts: Optional[int] = None, clip_to_budget: bool = False) -> Next:
        """After failed attempt ``attempt`` (a RETRY verdict): wait and try again, or stop.

        It stops after ``max_attempts`` (the policy's unless given), when the budget is spent,
        or when the wait would outlast it; ``clip_to_budget``: a backoff longer than what is
        left is cut to it (one more try at the end) instead, while a header wait still stops."""
        header = None
        if verdict.rate_limited and isinstance(answer, Response):
            header = self.asked_wait(answer.headers, now_epoch)
        limit = self.max_attempts if max_attempts is None else max_attempts
        remaining = budget.remaining()
        if clip_to_budget:
            if attempt >= limit or remaining <= 0 or (header is not None and header > remaining):
                return Next(None, header)
            wait = header if header is not None else self.backoff(attempt, rng)
            return Next(max(0.0, min(wait, remaining)), header)
        wait = header if header is not None else self.backoff(attempt, rng)
        if attempt >= limit or remaining <= 0 or wait > remaining:
            return Next(None, header)
        return Next(wait, header)


def retry_wait_seconds(headers: Mapping[str, str], now_epoch: float,
                       cap_seconds: float = 60.0) -> Optional[float]:
    """How long the rate-limit headers ask us to wait, at most ``cap_seconds``; None if they
    don't say.

    In order: ``Retry-After`` (seconds or an HTTP date), ``X-Ratelimit-Retry-After``
    (seconds), then ``X-RateLimit-Reset``: an epoch instant when it lies in the future, else
    seconds from now when it is small (both readings are documented, docs/api-facts.md, B11).
    Header names are matched case-insensitively.
    """
    h = {str(k).lower(): str(v).strip() for k, v in (headers or {}).items()}
    wait = _seconds(h.get("retry-after"))
    if wait is None and h.get("retry-after"):
        wait = _http_date_wait(h["retry-after"], now_epoch)
    if wait is None:
        wait = _seconds(h.get("x-ratelimit-retry-after"))
    if wait is None:
        reset = _seconds(h.get("x-ratelimit-reset"))
        if reset is not None:
            if reset > now_epoch:
                wait = reset - now_epoch
            elif reset <= _RESET_DELTA_MAX_SECONDS:
                wait = reset
            else:
                wait = 0.0  # an epoch instant already past
    if wait is None:
        return None
    return max(0.0, min(float(wait), float(cap_seconds)))


def _seconds(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _http_date_wait(value: str, now_epoch: float) -> Optional[float]:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now_epoch)


def backoff_seconds(attempt: int, base: float = 0.5, cap: float = 30.0, rng=random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))].

    ``attempt`` is the number of the attempt that just failed, from 1.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt!r}")
    exponent = min(attempt - 1, 60)  # no float overflow for silly attempt numbers
    ceiling = min(float(cap), float(base) * (2.0 ** exponent))
    return rng.uniform(0.0, ceiling)


def hold_delay(tries: int, wait_hint: Optional[float], base: float, cap: float, rng: random.Random) -> float:
    """Seconds until a held key's next try: what a 429's headers asked (and a little jitter, so
    the keys that were told the same time do not all come back at once), else exponential
    backoff with equal jitter, between half and all of ``min(cap, base * 2^(tries-1))``."""
    if wait_hint is not None:
        return max(0.0, wait_hint) + rng.uniform(0.0, min(1.0, base))
    ceiling = min(cap, base * 2 ** min(max(tries - 1, 0), 30))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


def send_with_retries(send: Callable[[], Response], judge: Callable, policy: RetryPolicy,
                      sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time,
                      rng=random) -> Tuple[bc.Verdict, int]:
    """Send until the answer is not RETRY, or the policy's attempts or seconds run out.

    Returns ``(final verdict, attempts)``; an exhausted budget is ``FAIL retries_exhausted``
    with the last error. A backoff longer than the time left is cut to it.
    """
    budget, attempt = Budget(clock, policy.max_retry_seconds), 0
    while True:
        attempt += 1
        try:
            answer = send()
        except TransportError as e:
            answer = e
        verdict = judge(answer)
        if verdict.action != bc.RETRY:
            return verdict, attempt
        following = policy.after_failure(attempt, answer, verdict, budget, clock(), rng, clip_to_budget=True)
        if following.wait is None:
            return bc.Verdict(bc.FAIL, RETRIES_EXHAUSTED,
                              f"gave up after {attempt} attempt(s) in {budget.elapsed():.1f}s; last error: "
                              f"{verdict.detail}", verdict.http_status), attempt
        if following.wait > 0:
            sleep(following.wait)
            budget.waited += following.wait
