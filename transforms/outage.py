"""Holding a batch key's requests through a Braze outage: the policy (pure) and the queue.

An outage is Braze failing or throttling across the board: 5xx, timeouts, dropped connections,
429s. A refusal of particular objects (400, ``errors[]``, 401/403 after a key re-read) is not
one, and is dead-lettered at once. During an outage a batch key stops sending: its request that
failed and every later request of that key wait, in order, in the key's state (``HeldQueue``),
and a processing-time timer retries the first of them after a backoff with jitter (or as long as
a 429's headers ask). When Braze answers again the queue drains in order, then new requests go
straight out again. No thread sleeps for the outage, and other keys are not held by this one.

Only objects held longer than the outage budget (``--braze_outage_budget``, 4 h by default:
Amplitude's own destination retries that long) are dead-lettered, as
``outage_budget_exhausted``. A request that keeps failing (5xx, timeouts) while Braze takes this
sync's other requests is not an outage but a poisoned request: after ``max_attempts`` such
failures in a row it is dead-lettered as ``retries_exhausted``, so it cannot hold its key for
the whole budget. (Failures during an outage, before Braze answers anything again, are no
strikes: when Braze recovers, every key's first request is retried, not given up.)

State per key (docs/architecture.md, "The stateful stages"): the queue (a bag of ``Parked`` requests, one append
per request held) and one small ``Hold`` record. The queue is read once per retry; handled
entries at its front are skipped by count and the bag is rewritten only when at least half of it
was handled, so each held request is written O(1) times however long the outage.
"""
from __future__ import annotations

from typing import Iterable, List, NamedTuple, Optional, Tuple

from transforms.records import Request
# The wait between two tries of a held key is the retry policy's (transforms.retry_policy).
from transforms.retry_policy import RETRIES_EXHAUSTED  # noqa: F401 (re-exported)
from transforms.retry_policy import hold_delay as retry_delay  # noqa: F401 (re-exported)

__all__ = ["OUTAGE_BUDGET_EXHAUSTED", "RETRIES_EXHAUSTED", "Parked", "Hold", "HeldQueue", "retry_delay",
           "parse_duration"]

OUTAGE_BUDGET_EXHAUSTED = "outage_budget_exhausted"


class Parked(NamedTuple):
    """A request held in a key's queue, and when it was first held (epoch seconds)."""

    request: Request
    parked_at: float


class Hold(NamedTuple):
    """A key's outage: since when it holds, and how its first held request has fared."""

    since: float
    head_tries: int = 0  # failed attempts of the request at the front of the queue
    head_failed_at: float = 0.0  # when it first failed
    head_seconds: float = 0.0  # time spent sending it so far, waits included
    ambiguous: bool = False  # one of its failed attempts may have been applied
    last_error: str = ""
    last_status: Optional[int] = None
    drained: int = 0  # entries at the front of the queue bag already handled
    counted: int = 0  # seconds of this hold already added to the outage_seconds counter
    retries: int = 1  # rounds in a row in which Braze took nothing (for the backoff)
    last_failed_at: float = 0.0  # when the first held request last failed
    strikes: int = 0  # its failures in a row while Braze took other requests of the sync


def parse_duration(text) -> float:
    """``"4h"``, ``"30m"``, ``"90s"``, ``"1h30m"`` or a number of seconds → seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower()
        if not value:
            raise ValueError("a duration is required, e.g. 4h, 30m or 90s")
        try:
            seconds = float(value)
        except ValueError:
            seconds, number = 0.0, ""
            units = {"h": 3600.0, "m": 60.0, "s": 1.0}
            for char in value:
                if char.isdigit() or char == ".":
                    number += char
                elif char in units and number:
                    seconds += float(number) * units[char]
                    number = ""
                else:
                    raise ValueError(f"not a duration: {text!r} (use e.g. 4h, 30m, 90s or 1h30m)") from None
            if number:
                raise ValueError(f"not a duration: {text!r}: {number} has no unit (h, m or s)")
    if not seconds > 0 or seconds != seconds:
        raise ValueError(f"a duration must be > 0, got {text!r}")
    return seconds


class HeldQueue:
    """A key's held requests, in order, over two state cells: the ``Parked`` bag and ``Hold``."""

    def __init__(self, queue, hold):
        self._queue = queue
        self._hold_cell = hold
        self._hold: Optional[Hold] = None
        self._read = False

    @property
    def hold(self) -> Optional[Hold]:
        if not self._read:
            stored = self._hold_cell.read()
            self._hold = None if stored is None else Hold(*stored)
            self._read = True
        return self._hold

    def active(self) -> bool:
        return self.hold is not None

    def set_hold(self, hold: Optional[Hold]) -> None:
        self._hold, self._read = hold, True
        if hold is None:
            self._hold_cell.clear()
        else:
            self._hold_cell.write(list(hold))

    def park(self, parked: Iterable[Parked]) -> int:
        """Append requests at the back, in order; how many were appended."""
        n = 0
        for entry in parked:
            self._queue.add(entry)
            n += 1
        return n

    def entries(self) -> List[Parked]:
        """The requests still held, front first."""
        hold = self.hold
        skip = hold.drained if hold is not None else 0
        return list(self._queue.read())[skip:]

    def commit(self, handled: int, remaining: List[Parked], rewrite: bool = False) -> None:
        """``handled`` entries at the front were settled and ``remaining`` are still held.
        ``rewrite`` when the first of ``remaining`` differs from what the bag holds (a request
        that was partly sent); otherwise the bag is rewritten only once half of it is handled."""
        hold = self.hold
        drained = (hold.drained if hold is not None else 0) + handled
        if not remaining:
            self._queue.clear()
            drained = 0
        elif rewrite or drained >= len(remaining):
            self._queue.clear()
            for entry in remaining:
                self._queue.add(entry)
            drained = 0
        if hold is not None:
            self.set_hold(hold._replace(drained=drained))

    def clear(self) -> None:
        self._queue.clear()
        self.set_hold(None)


def split_expired(entries: List[Parked], now: float, budget_seconds: float) -> Tuple[List[Parked], List[Parked]]:
    """``(held longer than the budget, the rest)``; entries are in the order they were held."""
    expired = 0
    while expired < len(entries) and now - entries[expired].parked_at >= budget_seconds:
        expired += 1
    return entries[:expired], entries[expired:]
