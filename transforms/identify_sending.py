"""``/users/identify`` calls, tried until settled or until they must be held (the policy).

``IdentifySender.send`` takes a sync's merge requests and sends them in bodies of at most 50
entries (``transforms.anonymous.identify_bodies``), by the rules ``transforms.sending`` applies
to ``/users/track`` where Braze answers alike (``classify_identify``):

* 2xx "success": every entry of the body is sent. Braze says only that it *received* them
  (an alias that names nobody is dropped silently, docs/api-facts.md, B13); ``errors[]`` entries
  cannot be traced to entries on this endpoint, so they are logged, not dead-lettered.
* 400 for several entries: the halves are sent, to find the entry Braze refuses; one entry
  alone is refused (``braze_rejected`` with Braze's message). 413: the halves too.
* 401 (after one re-read of the key, in case it was rotated), 403, 404, 415, a 2xx that is not
  "success": every entry refused, with what to fix (``braze_forbidden``: the key lacks the
  ``users.identify`` permission).
* 408, 429, 5xx, timeouts, connection errors: retried by the job's one retry policy
  (``transforms.retry_policy``: backoff with full jitter, a 429 as long as its headers say)
  within the attempts and seconds given; then *held*: the caller parks them and retries later
  (``transforms.identify_sink``).
* Entries Braze would refuse are never sent (``identify_request_problem``: an external id over
  987 bytes).

Rate: Braze allows 20,000 requests a minute for ``/users/identify``, ``/users/alias/new``,
``/users/merge``, ``/users/delete`` and ``/users/alias/update`` together, per workspace,
apart from ``/users/track`` (docs/api-facts.md, B11). A sync's calls are made by one key of the sink (one worker
at a time), at most ``requests_per_minute`` of them (``IDENTIFY_REQUESTS_PER_MINUTE``, a twentieth
of Braze's limit, so other syncs and tools on the workspace keep the rest); with 50 entries a
call that is 50,000 merges a minute per sync. Nothing here touches Beam state.
"""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import orjson
from apache_beam.metrics import Metrics

from transforms import braze_client as bc
from transforms.anonymous import IdentifyRequest, classify_identify, identify_bodies, identify_request_problem
from transforms.braze_facts import ALIAS_REQUESTS_PER_MINUTE
from transforms.braze_client import TransportError
from transforms.records import MergeRequest
from transforms.retry_policy import Budget, RetryPolicy
from transforms.sink_state import Failure, SyncState

__all__ = ["IDENTIFY_REQUESTS_PER_MINUTE", "KIND", "MergeMetrics", "Settled", "IdentifySender", "entry_body"]

_LOG = logging.getLogger("transforms.identify_sink")

# A twentieth of Braze's shared limit (docs/api-facts.md, B11), so other callers of the same
# workspace keep the rest.
IDENTIFY_REQUESTS_PER_MINUTE = ALIAS_REQUESTS_PER_MINUTE // 20
KIND = "aliases_to_identify"  # a dead letter's ``kind``: its data is a /users/identify body
API_KEY_UNAVAILABLE = "api_key_unavailable"

# What to do about each refusal, for the dead letter's detail (a person reads it).
_FIXES = {
    bc.BRAZE_FORBIDDEN: "the sync's REST API key needs the users.identify permission besides users.track; "
                        "Braze keys cannot gain permissions, so create a key with both and store it under the "
                        "sync's api_key reference",
    bc.BRAZE_AUTH: "the key is not valid for this endpoint: check the sync's api_key and endpoint",
    bc.BRAZE_NOT_FOUND: "check the sync's endpoint",
}
_RESEND = "; then POST this dead letter's data to the sync's endpoint at /users/identify"


def entry_body(requests: Sequence[MergeRequest]) -> bytes:
    """A /users/identify body for these requests (each entry once)."""
    items, seen = [], set()
    for r in requests:
        entry = (r.external_id, r.alias_name, r.alias_label)
        if entry not in seen:
            seen.add(entry)
            items.append(IdentifyRequest(*entry).item())
    return orjson.dumps({KIND: items})


class MergeMetrics:
    """Counters of one sync's /users/identify calls, namespace ``merge``, names ``<sync>.<metric>``."""

    def __init__(self, sync: str):
        def counter(name):
            return Metrics.counter("merge", f"{sync}.{name}")

        self.requests = counter("requests")  # HTTP requests made
        self.sent = counter("sent")  # merge requests Braze received
        self.dead_lettered = counter("dead_lettered")
        self.retries = counter("retries")
        self.rate_limited = counter("rate_limited")
        self.auth_failures = counter("auth_failures")
        self.held = counter("held")  # up when held, down when it leaves the queue: held now
        self.outages = counter("outages")


class Settled(NamedTuple):
    """How one ``send`` ended: what Braze received, what it refused (with why), and what is still
    failing transiently, in order, with the last error and the wait Braze asked for."""

    sent: List[MergeRequest]
    failed: List[Tuple[MergeRequest, Failure]]
    held: List[MergeRequest]
    wait_seconds: Optional[float] = None
    error: str = ""
    http_status: Optional[int] = None
    attempts: int = 0


class IdentifySender:
    """The sending rules of one identify sink instance: pacing and the rules above; its waits
    are the retry policy's (``policy``, or one built from the backoff settings)."""

    def __init__(self, *, backoff_base_seconds: float = 0.5, backoff_cap_seconds: float = 30.0,
                 policy: Optional[RetryPolicy] = None, requests_per_minute: float = IDENTIFY_REQUESTS_PER_MINUTE,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time,
                 rng: Optional[random.Random] = None):
        self._policy = policy or RetryPolicy(backoff_base_seconds=backoff_base_seconds,
                                             backoff_cap_seconds=backoff_cap_seconds,
                                             max_rate_limit_wait_seconds=float("inf"))
        self._interval = 60.0 / requests_per_minute
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._last_request: Dict[str, float] = {}

    def send(self, state: SyncState, metrics: MergeMetrics, requests: Sequence[MergeRequest], *,
             max_attempts: int, max_seconds: float) -> Settled:
        sent: List[MergeRequest] = []
        failed: List[Tuple[MergeRequest, Failure]] = []
        valid: List[MergeRequest] = []
        for r in requests:
            problem = identify_request_problem(IdentifyRequest(r.external_id, r.alias_name, r.alias_label))
            if problem:
                failed.append((r, Failure(problem, _problem_detail(problem), None, 0)))
            else:
                valid.append(r)
        budget = Budget(self._clock, max_seconds)
        chunks = _chunks(valid)
        for i, chunk in enumerate(chunks):
            held = self._send(state, metrics, chunk, budget, max_attempts, sent, failed)
            if held is not None:  # Braze is failing: the rest waits with it, unsent
                rest = [r for later in chunks[i + 1:] for r in later]
                return held._replace(sent=sent, failed=failed, held=list(held.held) + rest)
        return Settled(sent, failed, [])

    def _send(self, state: SyncState, metrics: MergeMetrics, chunk: List[MergeRequest], budget: Budget,
              max_attempts: int, sent: list, failed: list) -> Optional[Settled]:
        """One body until settled; returns a Settled with ``held`` when it must wait, else None."""
        body = entry_body(chunk)
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            client, key_error = state.client_or_error()
            version = state.version_in_use()
            if key_error is not None and key_error.permanent:
                failed.extend((r, Failure(API_KEY_UNAVAILABLE, str(key_error), None, attempt - 1)) for r in chunk)
                return None
            answer = None
            if key_error is not None:
                verdict = bc.Verdict(bc.RETRY, "secret_unavailable", str(key_error))
            else:
                self._pace(state.sync.name)
                metrics.requests.inc()
                try:
                    answer = client.post_identify(body)
                except TransportError as e:
                    answer = e
                verdict = classify_identify(answer)
            if verdict.action == bc.OK:
                if verdict.detail:
                    _LOG.warning("sync %s: Braze took a /users/identify request with %s", state.sync.name,
                                 state.scrub(verdict.detail))
                sent.extend(chunk)
                return None
            unique = {(r.external_id, r.alias_name, r.alias_label) for r in chunk}
            if verdict.action in (bc.SPLIT, bc.REJECT) and len(unique) > 1:
                first, second = chunk[:len(chunk) // 2], chunk[len(chunk) // 2:]
                held = self._send(state, metrics, first, budget, max_attempts, sent, failed)
                if held is not None:
                    return held._replace(held=list(held.held) + second)
                return self._send(state, metrics, second, budget, max_attempts, sent, failed)
            if verdict.action == bc.FAIL and verdict.reason == bc.BRAZE_AUTH:
                metrics.auth_failures.inc()
                if not refreshed and state.refresh_key(version):
                    refreshed = True
                    continue
            if verdict.action in (bc.SPLIT, bc.REJECT, bc.FAIL):
                detail = state.scrub(verdict.detail)
                fix = _FIXES.get(verdict.reason)
                text = f"Braze refused /users/identify: {detail}" + (f"; {fix}{_RESEND}" if fix else "")
                if verdict.reason in _FIXES:
                    _LOG.error("sync %s: %s", state.sync.name, text)
                failed.extend((r, Failure(verdict.reason, text, verdict.http_status, attempt)) for r in chunk)
                return None
            # RETRY
            if verdict.rate_limited:
                metrics.rate_limited.inc()
            following = self._policy.after_failure(attempt, answer, verdict, budget, self._clock(), self._rng,
                                                   max_attempts=max_attempts)
            if following.wait is None:
                return Settled([], [], list(chunk), following.header_wait, state.scrub(verdict.detail),
                               verdict.http_status, attempt)
            wait = following.wait
            metrics.retries.inc()
            if wait > 0:
                self._sleep(wait)
                budget.waited += wait

    def _pace(self, sync: str) -> None:
        """At most ``requests_per_minute`` calls per sync from this instance (one key per sync)."""
        now = self._clock()
        last = self._last_request.get(sync)
        if last is not None and now < last + self._interval:
            self._sleep(last + self._interval - now)
            now = last + self._interval
        self._last_request[sync] = now


def _chunks(requests: List[MergeRequest]) -> List[List[MergeRequest]]:
    """Requests in bodies of at most 50 distinct entries; a repeat rides with its first copy."""
    bodies = identify_bodies([IdentifyRequest(r.external_id, r.alias_name, r.alias_label) for r in requests])
    return [[requests[p] for p in positions] for _, positions in bodies]


def _problem_detail(problem: str) -> str:
    if problem == "external_id_too_large":
        return "the user's id is over Braze's 987 bytes for an external_id, so Braze cannot hold it; not sent"
    return "the merge request lacks an external_id, alias name or label; not sent"
