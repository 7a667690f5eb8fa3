"""Faults injected on the Braze endpoints, configured through POST /_sim/faults.

Every fault except ``apply_then_error_rate`` happens before the request is applied, so a 5xx,
a hang or a drop means nothing was written. ``apply_then_error_rate`` applies the request and
then answers 500: the ambiguous case Braze documents, where a retry double-counts events.
``poison_marker``: every request whose body holds this string answers the first of
``error_statuses``, however often it is sent (a request Braze fails on, while it takes others).
"""
from __future__ import annotations

import http
import random
import threading
from typing import Optional

_RATES = ("error_rate", "hang_rate", "drop_rate", "apply_then_error_rate", "rate_limit_rate")
_NUMBERS = ("retry_after_seconds", "latency_ms", "hang_seconds", "rate_limit_burst_size")
KNOWN = frozenset(_RATES + _NUMBERS + ("error_statuses", "rate_limit_burst", "seed", "poison_marker"))
_SERVER_ERRORS = frozenset(s.value for s in http.HTTPStatus if 500 <= s.value <= 599)
DEFAULTS = {"error_statuses": [500, 502, 503], "retry_after_seconds": 1, "latency_ms": 0,
            "hang_seconds": 30, "rate_limit_burst": 0, "rate_limit_burst_size": 3}


def check(spec) -> Optional[str]:
    """A message for a bad fault spec, else None."""
    if not isinstance(spec, dict):
        return "faults must be a JSON object"
    unknown = set(spec) - KNOWN
    if unknown:
        return f"unknown fault keys: {sorted(unknown)}"
    for key in _RATES:
        value = spec.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            return f"'{key}' must be a number from 0 to 1"
    for key in _NUMBERS:
        value = spec.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            return f"'{key}' must be a number >= 0"
    burst = spec.get("rate_limit_burst", 0)
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
        return "'rate_limit_burst' must be an integer >= 0"
    marker = spec.get("poison_marker")
    if marker is not None and (not isinstance(marker, str) or not marker):
        return "'poison_marker' must be a non-empty string"
    statuses = spec.get("error_statuses", [500])
    if not isinstance(statuses, list) or not statuses or \
            not all(isinstance(s, int) and s in _SERVER_ERRORS for s in statuses):
        return f"'error_statuses' must be a non-empty array of {sorted(_SERVER_ERRORS)}"
    return None


class Faults:
    def __init__(self):
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self.config = dict(DEFAULTS)
            self._burst_left = 0
            self._rng = random.Random()

    def configure(self, spec: dict) -> None:
        """Replace the whole configuration (keys not given go back to their defaults)."""
        with self._lock:
            self.config = {**DEFAULTS, **spec}
            self._burst_left = self.config["rate_limit_burst"]
            self._rng = random.Random(spec.get("seed"))

    def latency_seconds(self) -> float:
        return self.config["latency_ms"] / 1000.0

    def decide(self, body: bytes = b"") -> Optional[tuple]:
        """None, or (kind, detail): ("burst", retry_after), ("drop", None),
        ("hang", seconds), ("error", status) or ("apply_then_error", 500)."""
        config = self.config
        marker = config.get("poison_marker")
        if marker and marker.encode("utf-8") in body:
            return "error", config["error_statuses"][0]
        with self._lock:
            if self._burst_left > 0:
                self._burst_left -= 1
                return "burst", config["retry_after_seconds"]
            rng = self._rng
            if config.get("rate_limit_rate") and rng.random() < config["rate_limit_rate"]:
                # A burst: this request and the next few answer 429, as when a workspace is
                # over its limit for a moment.
                self._burst_left = max(0, int(config["rate_limit_burst_size"]) - 1)
                return "burst", config["retry_after_seconds"]
            if config.get("drop_rate") and rng.random() < config["drop_rate"]:
                return "drop", None
            if config.get("hang_rate") and rng.random() < config["hang_rate"]:
                return "hang", config["hang_seconds"]
            if config.get("error_rate") and rng.random() < config["error_rate"]:
                return "error", rng.choice(config["error_statuses"])
            if config.get("apply_then_error_rate") and rng.random() < config["apply_then_error_rate"]:
                return "apply_then_error", 500
        return None

    def to_json(self) -> dict:
        with self._lock:
            return {**self.config, "rate_limit_burst_left": self._burst_left}
