"""What the Braze sink (``transforms.sink``) keeps while it runs, apart from the retry policy.

* ``SyncState``: one sync's API key, clients, throttler and metrics inside one DoFn instance,
  and the rules for reading the key (lazily, not again for a while after a permanent error,
  re-read at most once a minute after a 401). Safe to share between the sink's sending
  threads: each thread gets its own client (one HTTP session per thread), the key and the
  throttler change under a lock.
* ``SyncMetrics``: that sync's counters, named ``<sync>.<metric>`` in namespace ``braze``;
  ``RecordedMetrics`` stands in for them in a sending thread (below).
* ``Budget`` (re-exported from ``transforms.retry_policy``): the retry time one input batch has used.
* ``Failure`` and ``item_failures``: why an object was not delivered, and the objects Braze
  named in a 2xx or 400 answer's ``errors[]`` traced back to their place in the batch.

The sink's DoFn builds a ``SyncState`` per sync in ``setup()`` and never pickles one, so keys
and sessions stay on the worker that read them. This module only holds them; the decisions
(retry, split, dead-letter) stay in ``transforms.sink``.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from apache_beam.io.components.adaptive_throttler import AdaptiveThrottler
from apache_beam.metrics import Metrics

from transforms.model import Sync
from transforms import braze_client as bc
from transforms.braze_client import BrazeClient
from transforms.retry_policy import Budget  # noqa: F401 (re-exported)
from transforms.scrub import scrub
from transforms.secrets import SecretError

__all__ = ["METRICS_NAMESPACE", "KEY_REFRESH_MIN_SECONDS", "KEY_ERROR_RETRY_SECONDS", "THROTTLE_WINDOW_MS",
           "THROTTLE_BUCKET_MS", "THROTTLE_OVERLOAD_RATIO", "Failure", "Budget", "SyncMetrics", "RecordedMetrics",
           "Tally", "SyncState", "item_failures"]

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


def close_all(states) -> None:
    """Close every sync's sessions (a DoFn's teardown): one that fails is logged, never raised,
    so every other session is still closed."""
    for state in states:
        try:
            state.close()
        except Exception:  # noqa: BLE001 - teardown must reach every session
            _LOG.warning("could not close the Braze session of sync %s", state.sync.name)


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
        # Outage metrics (README, "Operations"): objects held right now (the counter goes up
        # when a request is held and down when it leaves the queue), holds begun, seconds spent
        # holding (summed over batch keys) and the age of the oldest held object.
        self.objects_held = counter("objects_held")
        self.outages = counter("outages")
        self.outage_seconds = counter("outage_seconds")
        self.oldest_held_age_seconds = Metrics.distribution(METRICS_NAMESPACE, f"{sync_name}.oldest_held_age_seconds")
        self.objects_per_request = Metrics.distribution(METRICS_NAMESPACE, f"{sync_name}.objects_per_request")
        self.delivery_latency_ms = Metrics.distribution(METRICS_NAMESPACE, f"{sync_name}.delivery_latency_ms")


class RecordedMetrics:
    """``SyncMetrics``' interface for a sending thread.

    Beam attributes a metric update to the bundle of the thread that makes it, and drops
    updates made on other threads. So a sending thread records ``m.<metric>.inc(n)`` and
    ``.update(v)`` here, and the bundle's thread ``replay``s them into the real metrics."""

    def __init__(self):
        self.updates: List[Tuple[str, str, float]] = []

    def __getattr__(self, metric: str) -> "_RecordedMetric":
        if metric.startswith("_"):
            raise AttributeError(metric)
        return _RecordedMetric(self.updates, metric)

    def replay(self, metrics: SyncMetrics) -> None:
        for metric, method, value in self.updates:
            getattr(getattr(metrics, metric), method)(value)


class _RecordedMetric:
    __slots__ = ("_updates", "_name")

    def __init__(self, updates, name):
        self._updates, self._name = updates, name

    def inc(self, n=1) -> None:
        self._updates.append((self._name, "inc", n))

    def update(self, value) -> None:
        self._updates.append((self._name, "update", value))


class Tally:
    """Where one batch's metric updates go: the sync's ``SyncMetrics`` when it is sent on the
    bundle's thread; a ``RecordedMetrics`` (and a list of waits) replayed there when it is sent
    on the pool. ``throttled(seconds)`` reports time spent held back by Braze."""

    def __init__(self, metrics, report_throttled: Callable[[float], None]):
        self.m = metrics
        self.throttled = report_throttled


class SyncState:
    """One sync's key, clients, throttler and metrics inside one DoFn instance.

    ``resolve_key`` and ``clock`` are the sink's (injectable for tests); the key is read on
    the first request, not at construction, so a DoFn that never sees a sync never reads its
    secret. Every sending thread has its own client; a key read again after a 401 bumps
    ``key_version``, and each thread replaces its client before its next request."""

    def __init__(self, sync: Sync, adaptive_throttling: bool, timeout_seconds: float,
                 resolve_key: Callable[[str], str], clock: Callable[[], float]):
        self.sync = sync
        self.key: Optional[str] = None
        self.key_version = 0
        self.key_error: Optional[SecretError] = None
        self.key_error_until = 0.0
        self.last_auth_refresh: Optional[float] = None
        self.metrics = SyncMetrics(sync.name)
        self.throttler = (AdaptiveThrottler(THROTTLE_WINDOW_MS, THROTTLE_BUCKET_MS, THROTTLE_OVERLOAD_RATIO)
                          if adaptive_throttling else None)
        self._timeout_seconds = timeout_seconds
        self._resolve_key = resolve_key
        self._clock = clock
        self._lock = threading.Lock()
        self._local = threading.local()  # this thread's (client, key_version)
        self._clients: List[BrazeClient] = []  # every open client, for close()
        self._old_keys: List[str] = []  # keys replaced after a 401, still scrubbed from texts
        self._last_pushback_ms: Optional[float] = None
        self._last_success: Optional[float] = None  # clock seconds of the last request Braze took

    def scrub(self, text: str) -> str:
        """``text`` without this sync's keys, old and new, in any rendering."""
        return scrub(text, (self.key, *self._old_keys))

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
            self._local = threading.local()
        for client in clients:
            client.close()

    def client_or_error(self) -> Tuple[Optional[BrazeClient], Optional[SecretError]]:
        """This thread's client, reading the key first if needed; or why the key cannot be read.

        A permanent error is remembered for ``KEY_ERROR_RETRY_SECONDS`` and returned without
        reading the secret again; a transient one is returned for the caller to retry."""
        local = self._local
        client = getattr(local, "client", None)
        if client is not None and local.version == self.key_version:
            return client, None
        with self._lock:
            if self.key is None:
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
            if client is not None:  # made with a key that was replaced since
                self._clients.remove(client)
                client.close()
            client = BrazeClient(self.sync.endpoint, self.key, self._timeout_seconds)
            self._clients.append(client)
            local.client, local.version = client, self.key_version
            return client, None

    def version_in_use(self) -> int:
        """The key version of this thread's client (after ``client_or_error``)."""
        return getattr(self._local, "version", self.key_version)

    def refresh_key(self, version_in_use: int) -> bool:
        """After a 401 with the key of ``version_in_use``: True if there is another key to try
        (another thread already read a new one, or it changed in the secret now)."""
        with self._lock:
            if self.key_version != version_in_use:
                return True
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
            if self.key:
                self._old_keys.append(self.key)
            self.key = key
            self.key_version += 1
            return True

    def hold_back(self, now_ms: float) -> bool:
        """Whether to hold one more request back (the adaptive throttler; False when it is off).

        The request is always counted, but held back only if Braze pushed back within the
        throttler's window: the throttler counts a request not yet answered as not accepted,
        so requests in flight together would otherwise hold each other back at start-up."""
        if self.throttler is None:
            return False
        with self._lock:
            throttle = self.throttler.throttle_request(now_ms)
            return throttle and self._last_pushback_ms is not None and \
                now_ms - self._last_pushback_ms < THROTTLE_WINDOW_MS

    def answered(self, now_ms: float) -> None:
        """A request was answered without pushback (for the throttler, and ``succeeded_since``)."""
        with self._lock:
            self._last_success = now_ms / 1000.0
            if self.throttler is not None:
                self.throttler.successful_request(now_ms)

    def succeeded_since(self, when: float) -> bool:
        """Whether Braze answered a request of this sync (from this worker) after ``when``."""
        with self._lock:
            return self._last_success is not None and self._last_success > when

    def note_pushback(self, now_ms: float) -> None:
        """Braze pushed a request back (429, 5xx, timeout, dropped connection)."""
        with self._lock:
            self._last_pushback_ms = now_ms


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
