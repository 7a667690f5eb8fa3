"""What the Braze sink (``transforms.sink``) keeps while it runs, apart from the retry policy.

* ``SyncState``: one sync's API key, client, throttler and metrics inside one DoFn instance,
  and the rules for reading the key (lazily, not again for a while after a permanent error,
  re-read at most once a minute after a 401).
* ``SyncMetrics``: that sync's counters, named ``<sync>.<metric>`` in namespace ``braze``.
* ``Budget``: the retry time one input batch has used.
* ``Failure`` and ``item_failures``: why an object was not delivered, and the objects Braze
  named in a 2xx or 400 answer's ``errors[]`` traced back to their place in the batch.

The sink's DoFn builds a ``SyncState`` per sync in ``setup()`` and never pickles one, so keys
and sessions stay on the worker that read them. This module only holds them; the decisions
(retry, split, dead-letter) stay in ``transforms.sink``.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from apache_beam.io.components.adaptive_throttler import AdaptiveThrottler
from apache_beam.metrics import Metrics

from pipeline.config import Sync
from transforms import braze_client as bc
from transforms.braze_client import BrazeClient
from transforms.secrets import SecretError

__all__ = ["METRICS_NAMESPACE", "KEY_REFRESH_MIN_SECONDS", "KEY_ERROR_RETRY_SECONDS", "THROTTLE_WINDOW_MS",
           "THROTTLE_BUCKET_MS", "THROTTLE_OVERLOAD_RATIO", "Failure", "Budget", "SyncMetrics", "SyncState",
           "item_failures"]

# The sink's logger: these messages are part of the sink's log, whichever module writes them.
_LOG = logging.getLogger("transforms.sink")

METRICS_NAMESPACE = "braze"

# A 401 re-reads the key at most this often per sync and DoFn instance, so a key that is
# simply wrong does not cost a Secret Manager read per batch.
KEY_REFRESH_MIN_SECONDS = 60.0
# After a permanent SecretError, batches for that sync are dead-lettered without re-reading
# the secret for this long.
KEY_ERROR_RETRY_SECONDS = 30.0

# Client-side adaptive throttling (SRE book, "Handling overload"): with K=2 it starts only
# once more than half of the recent requests were pushed back (429, 5xx, timeouts). How long
# the sink then holds a batch back is up to ``transforms.sink``.
THROTTLE_WINDOW_MS = 60_000
THROTTLE_BUCKET_MS = 1_000
THROTTLE_OVERLOAD_RATIO = 2.0


class Failure(NamedTuple):
    """Why one object was not delivered; becomes its ``DeadLetter`` and outcome reason."""
    reason: str
    detail: str
    http_status: Optional[int]
    attempts: int


class Budget:
    """Retry time used by one input batch: wall time, or the sum of our waits if larger (an
    injected ``sleep`` may not let the clock move)."""

    def __init__(self, clock: Callable[[], float], max_seconds: float):
        self._clock = clock
        self._start = clock()
        self.max_seconds = max_seconds
        self.waited = 0.0

    def elapsed(self) -> float:
        return max(self._clock() - self._start, self.waited)

    def remaining(self) -> float:
        return self.max_seconds - self.elapsed()


class SyncMetrics:
    """Counters and distributions for one sync, named ``<sync>.<metric>`` in namespace braze."""

    def __init__(self, sync_name: str):
        def counter(name):
            return Metrics.counter(METRICS_NAMESPACE, f"{sync_name}.{name}")

        self.requests = counter("requests")
        self.objects_sent = counter("objects_sent")
        self.objects_delivered = counter("objects_delivered")
        self.objects_dead_lettered = counter("objects_dead_lettered")
        self.retries = counter("retries")
        self.ambiguous_retries = counter("ambiguous_retries")
        self.rate_limited = counter("rate_limited")
        self.auth_failures = counter("auth_failures")
        self.objects_per_request = Metrics.distribution(METRICS_NAMESPACE, f"{sync_name}.objects_per_request")
        self.delivery_latency_ms = Metrics.distribution(METRICS_NAMESPACE, f"{sync_name}.delivery_latency_ms")


class SyncState:
    """One sync's key, client, throttler and metrics inside one DoFn instance.

    ``resolve_key`` and ``clock`` are the sink's (injectable for tests); the key is read on
    the first request, not at construction, so a DoFn that never sees a sync never reads its
    secret."""

    def __init__(self, sync: Sync, adaptive_throttling: bool, timeout_seconds: float,
                 resolve_key: Callable[[str], str], clock: Callable[[], float]):
        self.sync = sync
        self.key: Optional[str] = None
        self.client: Optional[BrazeClient] = None
        self.key_error: Optional[SecretError] = None
        self.key_error_until = 0.0
        self.last_auth_refresh: Optional[float] = None
        self.metrics = SyncMetrics(sync.name)
        self.throttler = (AdaptiveThrottler(THROTTLE_WINDOW_MS, THROTTLE_BUCKET_MS, THROTTLE_OVERLOAD_RATIO)
                          if adaptive_throttling else None)
        self._timeout_seconds = timeout_seconds
        self._resolve_key = resolve_key
        self._clock = clock

    def scrub(self, text: str) -> str:
        return text.replace(self.key, "***") if self.key and text else text

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            finally:
                self.client = None

    def client_or_error(self) -> Tuple[Optional[BrazeClient], Optional[SecretError]]:
        """The client, reading the key first if needed; or why the key cannot be read.

        A permanent error is remembered for ``KEY_ERROR_RETRY_SECONDS`` and returned without
        reading the secret again; a transient one is returned for the caller to retry."""
        if self.client is not None:
            return self.client, None
        now = self._clock()
        if self.key_error is not None and now < self.key_error_until:
            return None, self.key_error
        try:
            key = self._resolve_key(self.sync.api_key)
        except SecretError as e:
            if e.permanent:
                self.key_error, self.key_error_until = e, now + KEY_ERROR_RETRY_SECONDS
            return None, e
        self.key_error = None
        self.key = key
        self.client = BrazeClient(self.sync.endpoint, key, self._timeout_seconds)
        return self.client, None

    def refresh_key(self) -> bool:
        """Re-read the key after a 401; True if it changed and the client now uses it."""
        now = self._clock()
        if self.last_auth_refresh is not None and now - self.last_auth_refresh < KEY_REFRESH_MIN_SECONDS:
            return False
        self.last_auth_refresh = now
        try:
            key = self._resolve_key(self.sync.api_key)
        except SecretError as e:
            _LOG.warning("sync %s: could not re-read the API key after a 401: %s", self.sync.name, e)
            return False
        if key == self.key:
            return False
        self.close()
        self.key = key
        self.client = BrazeClient(self.sync.endpoint, key, self._timeout_seconds)
        return True


def item_failures(verdict: bc.Verdict, index_map, attempt: int) -> Dict[int, Failure]:
    """The objects Braze named in ``errors[]``, by position in the sent batch, each with the
    error types Braze gave for it. ``index_map`` is ``build_track_body``'s ``(array, index) →
    position``; an error naming no object the job sent is ignored."""
    texts: Dict[int, List[str]] = {}
    for error in verdict.item_errors:
        position = index_map.get((error.input_array, error.index))
        if position is not None:
            texts.setdefault(position, []).append(error.type)
    return {position: Failure(bc.BRAZE_REJECTED, "; ".join(types), verdict.http_status, attempt)
            for position, types in texts.items()}
