"""Fixed-window request counting per API key, as Braze's "3,000 requests per 3 seconds".

Windows start at multiples of the window length, so ``X-RateLimit-Reset`` is a plain epoch
second that every client computes alike (the general Braze page says "UTC epoch seconds").
"""
from __future__ import annotations

import math
import threading


class RateLimiter:
    def __init__(self, limit: int, window_seconds: float):
        if limit < 1 or window_seconds <= 0:
            raise ValueError(f"rate limit {limit} per {window_seconds}s is not positive")
        self.limit = limit
        self.window_seconds = window_seconds
        self._lock = threading.Lock()
        self._windows: dict = {}  # key -> (window start, requests counted)

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()

    def hit(self, key, now: float) -> tuple:
        """Count one request for ``key``: (allowed, headers dict)."""
        start = now - now % self.window_seconds
        with self._lock:
            window_start, count = self._windows.get(key, (start, 0))
            if window_start != start:
                count = 0
            count += 1
            self._windows[key] = (start, count)
        return count <= self.limit, self._headers(start, now, max(0, self.limit - count), count > self.limit)

    def peek(self, now: float) -> dict:
        """Headers for a request that is not counted (no valid key)."""
        start = now - now % self.window_seconds
        return self._headers(start, now, self.limit, False)

    def _headers(self, start: float, now: float, remaining: int, limited: bool) -> dict:
        reset = start + self.window_seconds
        headers = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(remaining),
                   "X-RateLimit-Reset": str(math.ceil(reset))}
        if limited:
            headers["Retry-After"] = str(max(1, math.ceil(reset - now)))
        return headers
