"""The bounded log of requests made to the Braze endpoints, for tests to read back.

Bodies are kept as the bytes received and parsed only when read, because a benchmark sends
millions of objects: parsed dicts would cost several times the memory. Two bounds apply:
``max_entries`` drops the oldest entries, ``max_body_bytes`` drops the oldest bodies (their
entry stays, with ``"body": null`` and ``"body_dropped": true``).
"""
from __future__ import annotations

import collections
import itertools
from typing import Optional

import orjson

_INDEX, _PATH, _STATUS, _AT, _OBJECTS, _BODY, _FAULT = range(7)


class RequestLog:
    def __init__(self, max_entries: int = 200_000, max_body_bytes: int = 256 * 1024 * 1024):
        self.max_entries = max_entries
        self.max_body_bytes = max_body_bytes
        self.clear()

    def clear(self) -> None:
        self._entries: collections.deque = collections.deque()
        self._with_body: collections.deque = collections.deque()
        self._next_index = 0
        self._body_bytes = 0

    def add(self, path: str, status: Optional[int], received_at: float, objects: Optional[dict],
            body: Optional[bytes], fault: Optional[str] = None) -> None:
        """``body`` must be valid JSON bytes with secrets already removed, or None."""
        entry = [self._next_index, path, status, received_at, objects, body, fault]
        self._next_index += 1
        self._entries.append(entry)
        if len(self._entries) > self.max_entries:
            self._drop_body(self._entries.popleft())
        if body is not None:
            self._with_body.append(entry)
            self._body_bytes += len(body)
            while self._body_bytes > self.max_body_bytes and self._with_body:
                self._drop_body(self._with_body.popleft(), mark=True)

    def _drop_body(self, entry: list, mark: bool = False) -> None:
        if entry[_BODY] is not None:
            self._body_bytes -= len(entry[_BODY])
            entry[_BODY] = None
            if mark:
                entry.append(True)  # read() reports it as "body_dropped"

    def read(self, since: int = 0, limit: Optional[int] = None) -> dict:
        """Entries with index >= since (oldest first), and ``next`` to pass as since later."""
        first = self._entries[0][_INDEX] if self._entries else self._next_index
        start = max(0, since - first)
        stop = len(self._entries) if limit is None else min(len(self._entries), start + limit)
        out = []
        for entry in itertools.islice(self._entries, start, stop):
            item = {"index": entry[_INDEX], "path": entry[_PATH], "status": entry[_STATUS],
                    "received_at": entry[_AT], "objects": entry[_OBJECTS],
                    "body": None if entry[_BODY] is None else orjson.loads(entry[_BODY])}
            if entry[_FAULT]:
                item["fault"] = entry[_FAULT]
            if len(entry) > 7:
                item["body_dropped"] = True
            out.append(item)
        next_index = out[-1]["index"] + 1 if out else max(since, first)
        return {"requests": out, "next": next_index}
