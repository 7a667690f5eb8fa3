"""The partner endpoints' transport and how their answers are judged.

Every cohort call goes through ``transforms.retry_policy.send_with_retries`` (re-exported here
with ``RetryPolicy``), the retry policy the streaming sinks use too: 408/429/5xx/timeouts/
connection errors are retried with exponential backoff and full jitter (a 429 waits as its
rate-limit headers say), within ``max_attempts`` and ``max_retry_seconds``; past either, the
answer is ``FAIL retries_exhausted`` with the last error.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import requests

from transforms import braze_client as bc
from transforms.braze_client import BrazeClient, Response, TransportError, classify
from transforms.retry_policy import RETRIES_EXHAUSTED, RetryPolicy, send_with_retries  # noqa: F401 (re-exported)

__all__ = ["RETRIES_EXHAUSTED", "PartnerClient", "RetryPolicy", "classify_partner", "send_with_retries"]


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
    the partner endpoints, through its public seam: the keys travel in the body, so no
    Authorization header is sent, and both keys are scrubbed from any error text."""

    def __init__(self, endpoint: str, path: str, secrets: Sequence[str], timeout_seconds: float,
                 session: Optional[requests.Session] = None):
        super().__init__(endpoint, secrets[0], timeout_seconds, session, path=path, authorization=False,
                         also_scrub=secrets)
