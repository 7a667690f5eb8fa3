"""Pack Braze objects into /users/track-sized requests.

Braze caps a request at 75 objects in all (``combined``, current accounts) or 75 per array
(``per_type``, legacy rate limits), and at 4 MB. Beam's BatchElements is not a hard cap and
GroupIntoBatches counts elements only, so this is a small GroupIntoBatches of our own: the
same state/timer structure, with a cap on objects and bytes checked *before* adding.

Keys are ``(sync, shard of the user)``: one user's objects share a shard, so they travel in
the same request when they arrive together, and Braze applies that request's attributes
before its events. Shards bound the parallelism per sync (and the state a runner keeps).
"""
from __future__ import annotations

import time
import zlib
from typing import List, Tuple

import apache_beam as beam
import orjson
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.records import KINDS, BrazeItem

MAX_OBJECTS = 75
MAX_BODY_BYTES = 4 * 1024 * 1024
LIMIT_MODES = ("combined", "per_type")
# Room for the body's own brackets, keys and commas: 3 array keys and a comma per object.
_BODY_OVERHEAD_BYTES = 64
_KIND_INDEX = {kind: i for i, kind in enumerate(KINDS)}


def object_size(item: BrazeItem) -> int:
    return len(orjson.dumps(item.obj)) + 1  # + the comma between objects


class RequestLimits:
    """Whether one more object fits in the request being filled (pure, unit-tested)."""

    def __init__(self, mode: str = "combined", max_objects: int = MAX_OBJECTS, max_bytes: int = MAX_BODY_BYTES):
        if mode not in LIMIT_MODES:
            raise ValueError(f"braze batch limit mode must be one of {LIMIT_MODES}, got {mode!r}")
        if not 1 <= max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects must be 1..{MAX_OBJECTS}, got {max_objects}")
        self.mode = mode
        self.max_objects = max_objects
        self.max_bytes = max_bytes - _BODY_OVERHEAD_BYTES

    def fits(self, counts: Tuple[int, int, int, int], kind: str, size: int) -> bool:
        """``counts`` = (attributes, events, purchases, bytes) already in the request."""
        if counts[3] + size > self.max_bytes:
            return False
        if self.mode == "combined":
            return counts[0] + counts[1] + counts[2] < self.max_objects
        return counts[_KIND_INDEX[kind]] < self.max_objects

    def full(self, counts: Tuple[int, int, int, int]) -> bool:
        if self.mode == "combined":
            return counts[0] + counts[1] + counts[2] >= self.max_objects
        return all(c >= self.max_objects for c in counts[:3])

    @staticmethod
    def add(counts: Tuple[int, int, int, int], kind: str, size: int) -> Tuple[int, int, int, int]:
        updated = list(counts)
        updated[_KIND_INDEX[kind]] += 1
        updated[3] += size
        return tuple(updated)


EMPTY = (0, 0, 0, 0)


def pack(items: List[BrazeItem], limits: RequestLimits) -> List[List[BrazeItem]]:
    """Split items, in order, into requests within the limits (for tests and the benchmark)."""
    requests, current, counts = [], [], EMPTY
    for item in items:
        size = object_size(item)
        if current and not limits.fits(counts, item.kind, size):
            requests.append(current)
            current, counts = [], EMPTY
        current.append(item)
        counts = limits.add(counts, item.kind, size)
    if current:
        requests.append(current)
    return requests


def shard_key(item: BrazeItem, shards: int) -> str:
    # crc32 is stable across processes (Python's hash() of str is salted per process).
    return f"{item.sync}#{zlib.crc32(item.user_key.encode('utf-8')) % shards}"


class _PackDoFn(beam.DoFn):
    ITEMS = BagStateSpec("items", FastPrimitivesCoder())
    COUNTS = ReadModifyWriteStateSpec("counts", FastPrimitivesCoder())
    BUFFERING = TimerSpec("buffering_end", TimeDomain.REAL_TIME)
    WINDOW_END = TimerSpec("window_end", TimeDomain.WATERMARK)

    def __init__(self, limits: RequestLimits, max_wait_seconds: float, clock=time.time):
        self._limits = limits
        self._max_wait = max_wait_seconds
        self._clock = clock
        self._batch_size = Metrics.distribution("batching", "objects_per_batch")

    def process(
        self,
        element,
        window=beam.DoFn.WindowParam,
        items=beam.DoFn.StateParam(ITEMS),
        counts_state=beam.DoFn.StateParam(COUNTS),
        buffering=beam.DoFn.TimerParam(BUFFERING),
        window_end=beam.DoFn.TimerParam(WINDOW_END),
    ):
        key, item = element
        size = object_size(item)
        counts = counts_state.read() or EMPTY
        if counts != EMPTY and not self._limits.fits(counts, item.kind, size):
            yield from self._flush(key, items, counts_state, buffering)
            counts = EMPTY
        if counts == EMPTY:
            # A new request starts waiting now; it leaves within max_wait even if never full.
            buffering.set(Timestamp.of(self._clock() + self._max_wait))
            window_end.set(window.max_timestamp())
        items.add(item)
        counts = self._limits.add(counts, item.kind, size)
        if self._limits.full(counts):
            yield from self._flush(key, items, counts_state, buffering)
        else:
            counts_state.write(counts)

    @on_timer(BUFFERING)
    def on_buffering_end(
        self,
        key=beam.DoFn.KeyParam,
        items=beam.DoFn.StateParam(ITEMS),
        counts_state=beam.DoFn.StateParam(COUNTS),
        buffering=beam.DoFn.TimerParam(BUFFERING),
    ):
        yield from self._flush(key, items, counts_state, buffering)

    @on_timer(WINDOW_END)
    def on_window_end(
        self,
        key=beam.DoFn.KeyParam,
        items=beam.DoFn.StateParam(ITEMS),
        counts_state=beam.DoFn.StateParam(COUNTS),
        buffering=beam.DoFn.TimerParam(BUFFERING),
    ):
        yield from self._flush(key, items, counts_state, buffering)

    def _flush(self, key, items, counts_state, buffering):
        batch = list(items.read())
        items.clear()
        counts_state.clear()
        buffering.clear()
        if batch:
            self._batch_size.update(len(batch))
            yield key, batch


class PackRequests(beam.PTransform):
    """BrazeItem → ``(key, [BrazeItem, ...])`` batches sized for one /users/track request."""

    def __init__(self, *, limit_mode: str = "combined", max_wait_seconds: float = 2.0, shards: int = 4, clock=time.time):
        super().__init__()
        if max_wait_seconds <= 0:
            raise ValueError(f"max_batch_wait_seconds must be > 0, got {max_wait_seconds}")
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        self._limits = RequestLimits(limit_mode)
        self._max_wait = max_wait_seconds
        self._shards = shards
        self._clock = clock

    def expand(self, items):
        shards = self._shards
        return (
            items
            | "KeyByUserShard" >> beam.Map(lambda item: (shard_key(item, shards), item))
            | "Pack" >> beam.ParDo(_PackDoFn(self._limits, self._max_wait, self._clock))
        )
