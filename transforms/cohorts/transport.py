"""The partner endpoints' transport and the retry loop every cohort call goes through.

Retries follow the streaming sink (``transforms.sink``), built from the same pure rules in
``transforms.braze_client``: 408/429/5xx/timeouts/connection errors are retried with
exponential backoff and full jitter (a 429 waits as its rate-limit headers say), within
``max_attempts`` and ``max_retry_seconds``; past either, the answer is ``FAIL
retries_exhausted`` with the last error.
"""
from __future__ import annotations

import math
import random
import time
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import requests

from transforms import braze_client as bc
from transforms.braze_client import BrazeClient, Response, TransportError, backoff_seconds, classify, \
    retry_wait_seconds
from transforms.scrub import remember_secret, scrub

__all__ = ["RETRIES_EXHAUSTED", "PartnerClient", "RetryPolicy", "classify_partner", "send_with_retries"]

RETRIES_EXHAUSTED = "retries_exhausted"


def classify_partner(response: Union[Response, TransportError]) -> bc.Verdict:
    """The partner endpoints' answer → verdict. Any 2xx is success (its body is unconfirmed);
    423 "resource locked" is retried; a 400 fails the whole request (no per-id errors)."""
    if isinstance(response, Response):
        shown = ""
        if isinstance(response.body, dict) and isinstance(response.body.get("message"), str):
            shown = response.body["message"]
        shown = shown or response.text
        if 200 <= response.status < 300:
            return bc.Verdict(bc.OK, http_status=response.status)
        if response.status == 423:
            return bc.Verdict(bc.RETRY, "http_423", f"HTTP 423: {shown}".rstrip(": "), 423)
        if response.status in (400, 413):
            return bc.Verdict(bc.FAIL, bc.BRAZE_REJECTED, f"HTTP {response.status}: {shown}".rstrip(": "),
                              response.status)
    return classify(response)


class PartnerClient(BrazeClient):
    """``BrazeClient``'s transport (session, timeouts, no redirects, TLS, TransportError) for
    the partner endpoints: the keys travel in the body, so no Authorization header is sent,
    and both keys are scrubbed from any error text."""

    def __init__(self, endpoint: str, path: str, secrets: Sequence[str], timeout_seconds: float,
                 session: Optional[requests.Session] = None):
        super().__init__(endpoint, secrets[0], timeout_seconds, session)
        self.url = self.endpoint + path
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        self._secrets = tuple(s for s in secrets if s)
        for secret in self._secrets:
            remember_secret(secret)

    def post(self, body: bytes) -> Response:
        return self.post_track(body)  # the same POST, to self.url

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    def __repr__(self) -> str:
        return f"PartnerClient(url={self.url!r}, timeout_seconds={self.timeout_seconds})"

    __str__ = __repr__


class RetryPolicy(NamedTuple):
    timeout_seconds: float = 10.0
    max_attempts: int = 6
    max_retry_seconds: float = 120.0
    backoff_base_seconds: float = 0.5
    backoff_cap_seconds: float = 30.0
    max_rate_limit_wait_seconds: float = 60.0

    def check(self) -> "RetryPolicy":
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        for name in ("timeout_seconds", "max_retry_seconds", "backoff_base_seconds", "backoff_cap_seconds",
                     "max_rate_limit_wait_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0 \
                    or (name == "timeout_seconds" and value == 0):
                raise ValueError(f"{name} must be a finite number >= 0 (timeout > 0), got {value!r}")
        return self


def send_with_retries(send: Callable[[], Response], judge: Callable, policy: RetryPolicy,
                      sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time,
                      rng=random) -> Tuple[bc.Verdict, int]:
    """Send until the answer is not RETRY, or the attempts or time budget run out.

    Returns ``(final verdict, attempts)``; an exhausted budget is ``FAIL retries_exhausted``.
    """
    start, waited, attempt = clock(), 0.0, 0
    while True:
        attempt += 1
        try:
            answer = send()
        except TransportError as e:
            answer = e
        verdict = judge(answer)
        if verdict.action != bc.RETRY:
            return verdict, attempt
        header_wait = None
        if verdict.rate_limited and isinstance(answer, Response):
            header_wait = retry_wait_seconds(answer.headers, clock(), policy.max_rate_limit_wait_seconds)
        elapsed = max(clock() - start, waited)
        remaining = policy.max_retry_seconds - elapsed
        if attempt >= policy.max_attempts or remaining <= 0 or (header_wait is not None and header_wait > remaining):
            return bc.Verdict(bc.FAIL, RETRIES_EXHAUSTED,
                              f"gave up after {attempt} attempt(s) in {elapsed:.1f}s; last error: {verdict.detail}",
                              verdict.http_status), attempt
        wait = header_wait if header_wait is not None else backoff_seconds(
            attempt, policy.backoff_base_seconds, policy.backoff_cap_seconds, rng)
        wait = max(0.0, min(wait, remaining))
        if wait > 0:
            sleep(wait)
            waited += wait
