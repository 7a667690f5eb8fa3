"""Fetching a cohort's members from Amplitude's Behavioral Cohorts API (docs/api-facts.md, A7).

Three steps, on ``https://amplitude.com`` (US) or ``https://analytics.eu.amplitude.com`` (EU),
with HTTP Basic auth (the project's API key and secret key):

1. ``GET /api/5/cohorts/request/<cohort_id>``: 202 with a ``request_id``. Every such call
   counts against the monthly download budget (the caller reserves one first,
   ``transforms.cohorts.lease.reserve_download``).
2. ``GET /api/5/cohorts/request-status/<request_id>``: 202 while ``JOB INPROGRESS``, 200 when
   ``JOB COMPLETED``. How a failed job looks is unconfirmed: anything else is a failure whose
   text is shown; polling stops at the run's deadline.
3. ``GET /api/5/cohorts/request/<request_id>/file``: the CSV in the body, or a 302 to a
   pre-signed S3 URL that works for one minute. The redirect is followed at once, without the
   Amplitude credentials (the S3 URL carries its own signature); when S3 refuses (the link
   expired), ``/file`` is asked again for a fresh link (it stays valid for 7 days).

Before step 1, ``GET /api/3/cohorts`` (not counted in the budget) says whether the cohort exists
and its ``size``: a cohort over the download limit (2,000,000) is refused before any download
is spent. 429 (5 concurrent requests per project, shared with the Dashboard REST API; 60
"request a cohort" calls per 10 minutes) waits as ``Retry-After`` says, or backs off, and so do
5xx and connection errors, all within the run's deadline.

Errors are ``AmplitudeError`` with a short ``reason`` and a text a person can act on; the keys
never appear in them (scrubbed in every rendering, ``transforms.scrub``).
"""
from __future__ import annotations

import random
import time
from typing import Callable, Optional

import orjson
import requests
from apache_beam.io.filesystems import FileSystems

from transforms.retry_policy import RetryPolicy
from transforms.scrub import remember_secret, scrub

__all__ = ["AmplitudeError", "CohortDownloader", "AUTH_FAILED", "COHORT_NOT_FOUND", "COHORT_TOO_LARGE",
           "DOWNLOAD_TIMEOUT", "DOWNLOAD_FAILED", "RATE_LIMITED"]

AUTH_FAILED = "amplitude_auth"
COHORT_NOT_FOUND = "cohort_not_found"
COHORT_TOO_LARGE = "cohort_too_large"
DOWNLOAD_TIMEOUT = "download_timeout"
DOWNLOAD_FAILED = "download_failed"
RATE_LIMITED = "amplitude_rate_limited"
_CHUNK_BYTES = 1 << 20
_FILE_ATTEMPTS = 3  # fresh S3 links asked for when one expired


class AmplitudeError(Exception):
    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class CohortDownloader:
    """One run's client. ``deadline_seconds`` bounds the whole fetch (polling included)."""

    def __init__(self, base_url: str, api_key: str, secret_key: str, *, deadline_seconds: float = 3600.0,
                 timeout_seconds: float = 60.0, poll_seconds: float = 5.0, max_wait_seconds: float = 120.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 session: Optional[requests.Session] = None):
        self.base_url = base_url.rstrip("/")
        self._secrets = (api_key, secret_key)
        for secret in self._secrets:
            remember_secret(secret)
        self._session = session or requests.Session()
        self._session.auth = (api_key, secret_key)
        self._timeout = timeout_seconds
        self._poll = poll_seconds
        self._max_wait = max_wait_seconds
        # The job's one retry policy: errors back off from 1 s to 30 s; a 429 waits as its
        # headers ask, else from 5 s, at most max_wait_seconds. The deadline is this client's own.
        self._errors = RetryPolicy(backoff_base_seconds=1.0, backoff_cap_seconds=30.0)
        self._rate_limits = RetryPolicy(backoff_base_seconds=5.0, backoff_cap_seconds=max_wait_seconds,
                                        max_rate_limit_wait_seconds=max_wait_seconds)
        self._sleep = sleep
        self._clock = clock
        self._deadline = clock() + deadline_seconds
        self._deadline_seconds = deadline_seconds
        self._rng = random.Random()
        self.requests_made = 0

    def __repr__(self) -> str:
        return f"CohortDownloader(base_url={self.base_url!r})"

    def close(self) -> None:
        self._session.close()

    # -- the steps ------------------------------------------------------------------------

    def cohort_size(self, cohort_id: str) -> Optional[int]:
        """The cohort's ``size`` from the cohort list; AmplitudeError when it is not listed."""
        r = self._get("/api/3/cohorts", "listing the cohorts")
        body = _json(r)
        cohorts = body.get("cohorts") if isinstance(body, dict) else None
        if not isinstance(cohorts, list):
            raise AmplitudeError(DOWNLOAD_FAILED, "the cohort list has no 'cohorts' array")
        for cohort in cohorts:
            if isinstance(cohort, dict) and str(cohort.get("id")) == cohort_id:
                size = cohort.get("size")
                return int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else None
        raise AmplitudeError(COHORT_NOT_FOUND, f"Amplitude lists no cohort with id {cohort_id!r} in this project: "
                                               "check cohort_id in the cohorts file (the id is in the cohort's URL)")

    def request(self, cohort_id: str) -> str:
        r = self._get(f"/api/5/cohorts/request/{cohort_id}", "requesting the download")
        request_id = (_json(r) or {}).get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise AmplitudeError(DOWNLOAD_FAILED, f"HTTP {r.status_code}: the answer has no request_id")
        return request_id

    def wait(self, request_id: str) -> None:
        """Poll until the job is done; DOWNLOAD_TIMEOUT at the deadline."""
        while True:
            r = self._get(f"/api/5/cohorts/request-status/{request_id}", "polling the download", accept=(200, 202))
            status = str((_json(r) or {}).get("async_status", ""))
            if r.status_code == 200 and status.upper() == "JOB COMPLETED":
                return
            if r.status_code == 200 or "FAIL" in status.upper() or "ERROR" in status.upper():
                raise AmplitudeError(DOWNLOAD_FAILED, f"Amplitude's download job did not complete: HTTP "
                                                      f"{r.status_code}, status {status or _text(r)!r}")
            self._wait_or_give_up(self._poll, "the download job was still running")

    def download(self, request_id: str, destination: str) -> int:
        """Save the file (following a redirect to S3) to ``destination``; returns its bytes."""
        for attempt in range(1, _FILE_ATTEMPTS + 1):
            r = self._get(f"/api/5/cohorts/request/{request_id}/file", "downloading the file",
                          accept=(200, 301, 302, 303, 307, 308), stream=True)
            if r.status_code == 200:
                return _save(r, destination)
            location = r.headers.get("Location", "")
            r.close()
            try:
                s3 = requests.get(location, timeout=self._timeout, stream=True, allow_redirects=False)
            except requests.RequestException as e:
                detail = f"{type(e).__name__}"
            else:
                if s3.status_code == 200:
                    return _save(s3, destination)
                detail = f"HTTP {s3.status_code}"
                s3.close()
            if attempt == _FILE_ATTEMPTS:
                raise AmplitudeError(DOWNLOAD_FAILED, f"the file's storage link failed {attempt} times ({detail}); "
                                                      "the 1-minute link may have expired each time")
        raise AssertionError("unreachable")

    def fetch(self, cohort_id: str, destination: str, *, max_size: int,
              before_request: Callable[[], None] = lambda: None) -> int:
        """The whole fetch: size check, ``before_request()`` (counts the download), request,
        poll, download. Returns the file's bytes."""
        size = self.cohort_size(cohort_id)
        if size is not None and size > max_size:
            raise AmplitudeError(COHORT_TOO_LARGE, f"cohort {cohort_id!r} has {size:,} users, over the download "
                                                   f"limit of {max_size:,}; no download was requested. Use "
                                                   "source: feed for it (Amplitude's Pub/Sub cohort feed)")
        before_request()
        request_id = self.request(cohort_id)
        self.wait(request_id)
        return self.download(request_id, destination)

    # -- transport ------------------------------------------------------------------------

    def _get(self, path: str, doing: str, accept=(200, 202), stream: bool = False) -> requests.Response:
        attempt = 0
        while True:
            attempt += 1
            self.requests_made += 1
            try:
                r = self._session.get(self.base_url + path, timeout=self._timeout, allow_redirects=False,
                                      stream=stream)
            except requests.RequestException as e:
                last = f"{type(e).__name__}: {self._scrub(str(e))}"
                self._wait_or_give_up(self._errors.backoff(attempt, self._rng), f"{doing}: {last}")
                continue
            if r.status_code in accept:
                return r
            text = _text(r)
            if r.status_code in (401, 403):
                raise AmplitudeError(AUTH_FAILED, f"{doing}: Amplitude refused the credentials (HTTP "
                                                  f"{r.status_code}): check amplitude.api_key and secret_key in the "
                                                  "cohorts file name the project's API key and secret key")
            if r.status_code == 404:
                raise AmplitudeError(COHORT_NOT_FOUND, f"{doing}: HTTP 404 {text}".rstrip())
            if r.status_code == 429:
                wait = self._rate_limits.asked_wait(dict(r.headers), time.time())
                if wait is None:
                    wait = self._rate_limits.backoff(attempt, self._rng)
                self._wait_or_give_up(wait, f"{doing}: Amplitude answered 429 ({text})", RATE_LIMITED)
                continue
            if r.status_code >= 500:
                self._wait_or_give_up(self._errors.backoff(attempt, self._rng),
                                      f"{doing}: HTTP {r.status_code} {text}".rstrip())
                continue
            raise AmplitudeError(DOWNLOAD_FAILED, f"{doing}: HTTP {r.status_code} {text}".rstrip())

    def _wait_or_give_up(self, seconds: float, why: str, reason: str = DOWNLOAD_TIMEOUT) -> None:
        if self._clock() + seconds > self._deadline:
            raise AmplitudeError(reason, f"gave up at the run's deadline of {self._deadline_seconds:g} s "
                                         f"(--download_deadline_minutes): {self._scrub(why)}")
        self._sleep(seconds)

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)


def _json(r: requests.Response):
    try:
        return orjson.loads(r.content or b"null")
    except orjson.JSONDecodeError:
        return None


def _text(r: requests.Response) -> str:
    try:
        return (r.text or "")[:300]
    except Exception:  # noqa: BLE001 - a streamed body
        return ""


def _save(r: requests.Response, destination: str) -> int:
    size = 0
    with FileSystems.create(destination, compression_type="uncompressed") as out:
        for chunk in r.iter_content(_CHUNK_BYTES):
            if chunk:
                out.write(chunk)
                size += len(chunk)
    r.close()
    return size
