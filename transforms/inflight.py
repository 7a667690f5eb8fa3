"""Which Braze requests may be in flight together (``InFlight``, pure), and a thread-pool
runner that keeps to it for the sink (``Sender``).

Braze applies one request's objects in order but does not order separate requests
(braze-api.md §6): two requests in flight for one user could land out of order, and an older
attribute value would win. So requests that share a user are sent one after the other, in the
order they reached the sink, and requests without a common user may overlap, up to a limit.
A request waiting for a user also holds back later requests for that user, so no request
overtakes an earlier one of the same user.
"""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
from typing import Any, Callable, Deque, Dict, FrozenSet, Hashable, Iterator, List, Tuple

from apache_beam import pvalue
from apache_beam.utils.windowed_value import WindowedValue

__all__ = ["InFlight", "Sender", "windowed"]


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


class Sender:
    """Runs work on a thread pool under ``InFlight``'s rule and hands finished work back on the
    caller's thread (the bundle's: Beam takes outputs and metric updates only there).

    One per bundle, over a pool that lives as long as the DoFn. ``submit(users, work,
    context)``; ``finished(wait)`` yields ``(context, result)`` of what completed (blocking for
    at least one with ``wait``) and re-raises a worker's exception there, so a bug fails the
    bundle, which the runner retries, instead of vanishing."""

    def __init__(self, limit: int, pool: concurrent.futures.Executor):
        self._admission = InFlight(limit)
        self._pool = pool
        self._jobs: Dict[int, list] = {}  # id → [work, context, future or None]
        self._ids = itertools.count()

    def submit(self, users: FrozenSet[Hashable], work: Callable[[], Any], context: Any) -> None:
        request = next(self._ids)
        self._jobs[request] = [work, context, None]
        self._admission.add(request, users)
        self._start()

    def finished(self, wait: bool) -> Iterator[Tuple[Any, Any]]:
        running = {job[2]: request for request, job in self._jobs.items() if job[2] is not None}
        if not running:
            return
        if wait:
            concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
        done = [(future, request) for future, request in running.items() if future.done()]
        for _, request in done:
            self._admission.finish(request)
        self._start()
        for future, request in done:
            _, context, _ = self._jobs.pop(request)
            yield context, future.result()

    @property
    def waiting(self) -> int:
        return self._admission.waiting

    def idle(self) -> bool:
        return self._admission.idle()

    def _start(self) -> None:
        for request in self._admission.start():
            job = self._jobs[request]
            job[2] = self._pool.submit(job[0])


def windowed(output, window, timestamp):
    """An output of an input element, in that element's window and at its timestamp, for
    emitting after ``process`` moved on to other elements (or from ``finish_bundle``)."""
    if isinstance(output, pvalue.TaggedOutput):
        return pvalue.TaggedOutput(output.tag, WindowedValue(output.value, timestamp, (window,)))
    return WindowedValue(output, timestamp, (window,))
