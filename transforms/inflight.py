"""Which Braze requests may be in flight together (``InFlight``, pure; the sink runs it on a
thread pool when a batch key has several requests ready at once).

Braze applies one request's objects in order but does not order separate requests
(docs/api-facts.md, B16): two requests in flight for one user could land out of order, and an older
attribute value would win. So requests that share a user are sent one after the other, in the
order they reached the sink, and requests without a common user may overlap, up to a limit.
A request waiting for a user also holds back later requests for that user, so no request
overtakes an earlier one of the same user.
"""
from __future__ import annotations

import collections
from typing import Deque, Dict, FrozenSet, Hashable, List, Tuple

__all__ = ["InFlight"]


class InFlight:
    """Admission of requests: ``add`` them in arrival order, ``start`` what may go now, ``finish``
    what came back. Users are any hashable ids (the sink uses ``(sync, user key)``)."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"the in-flight limit must be >= 1, got {limit}")
        self.limit = limit
        self._waiting: Deque[Tuple[Hashable, FrozenSet[Hashable]]] = collections.deque()
        self._running: Dict[Hashable, FrozenSet[Hashable]] = {}

    def add(self, request: Hashable, users: FrozenSet[Hashable]) -> None:
        self._waiting.append((request, frozenset(users)))

    def start(self) -> List[Hashable]:
        """The waiting requests that may be sent now, in arrival order; they count as running."""
        started: List[Hashable] = []
        if not self._waiting or len(self._running) >= self.limit:
            return started
        busy = set()
        for users in self._running.values():
            busy |= users
        still_waiting: Deque[Tuple[Hashable, FrozenSet[Hashable]]] = collections.deque()
        while self._waiting:
            request, users = self._waiting.popleft()
            if len(self._running) < self.limit and busy.isdisjoint(users):
                self._running[request] = users
                started.append(request)
            else:
                still_waiting.append((request, users))
            busy |= users  # a later request of these users waits behind this one
        self._waiting = still_waiting
        return started

    def finish(self, request: Hashable) -> None:
        del self._running[request]

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def idle(self) -> bool:
        return not self._waiting and not self._running
