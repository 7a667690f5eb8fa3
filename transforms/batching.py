"""Pack Braze objects into /users/track-sized requests.

Braze caps a request at 75 objects in all (``combined``, current accounts) or 75 per array
(``per_type``, legacy rate limits), and at 4 MB. Beam's BatchElements is not a hard cap and
GroupIntoBatches counts elements only, so this is a small GroupIntoBatches of our own: the
same state/timer structure, with a cap on objects and bytes checked *before* adding.

Keys are ``(sync, shard of the user)``: one user's objects share a shard, so they travel in
the same request when they arrive together, and Braze applies that request's attributes
before its events. Shards bound the parallelism per sync (and the state a runner keeps).

One user, one request, one attribute object:

- At flush time a user's attribute updates collapse into one object carrying the final
  values (``collapse``), so several updates in one batch window cost one object and only the
  data points of what finally changed. The merged object carries every source, so the sink
  still accounts for each event.
- A user's attribute update that will merge takes no object slot, so it never forces a flush.
- When an object does not fit (75 objects per array in ``per_type`` mode, or 4 MB), the
  objects already waiting for that user are kept back with it for the next request
  (``carry_over``) instead of being sent without it; they keep their original deadline.
- An event that updates its user reaches the packer right behind that update (see
  ``transforms.route``). An update that would fill the request opens the next one instead
  (that request leaves with 74 objects), so its event's objects join it.
- Left: an update and events of *different* events of one user can still be split by a full
  request, or by a flush on time between them (each event's own update stays with it).
"""
from __future__ import annotations

import collections
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

from transforms.identify import is_identify_attributes, merge_attribute_items, without_meta
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
# A request being filled: (counts, users whose attribute object later ones merge into).
EMPTY_FILL = (EMPTY, ())


def _user(item: BrazeItem) -> Tuple[str, str]:
    return item.sync, item.user_key


def admit(fill, item: BrazeItem, size: int, limits: RequestLimits):
    """The request's fill with ``item`` added, or None when it does not fit.

    An attribute update of a user who already has one in the request merges into it at
    flush time, so it takes bytes but no object slot. The first object of a request always
    fits (one object over 4 MB is Braze's to refuse, and the sink dead-letters it)."""
    counts, merging = fill
    mergeable = is_identify_attributes(item)
    if mergeable and item.user_key in merging:
        if counts[3] + size > limits.max_bytes:
            return None
        return (counts[0], counts[1], counts[2], counts[3] + size), merging
    if counts != EMPTY and not limits.fits(counts, item.kind, size):
        return None
    return limits.add(counts, item.kind, size), (merging + (item.user_key,) if mergeable else merging)


def admit_last(fill, item: BrazeItem, size: int, limits: RequestLimits):
    """``admit``, except that an attribute update that would fill the request opens the next
    one instead: its event's objects come right behind it (``transforms.route``), and a full
    request leaves at once, so they would be sent without it."""
    added = admit(fill, item, size, limits)
    if (added is not None and fill[0] != EMPTY and is_identify_attributes(item) and limits.full(added[0])
            and added[0][:3] != fill[0][:3]):
        return None
    return added


def fill_of(items: List[BrazeItem], limits: RequestLimits):
    """The fill of a request holding ``items``, or None if they do not fit in one."""
    fill = EMPTY_FILL
    for item in items:
        fill = admit(fill, item, object_size(item), limits)
        if fill is None:
            return None
    return fill


def carry_over(batch: List[BrazeItem], item: BrazeItem, limits: RequestLimits):
    """``(send now, keep for the next request)`` when ``item`` does not fit in ``batch``.

    The objects of ``item``'s user wait with it for the next request, so a user's attributes
    are not sent in one request and their events in another (Braze orders only within a
    request). Only when that leaves something to send and the user's objects fit together."""
    user = _user(item)
    keep = [i for i in batch if _user(i) == user]
    if not keep or len(keep) == len(batch) or fill_of(keep + [item], limits) is None:
        return batch, []
    return [i for i in batch if _user(i) != user], keep


def collapse(batch: List[BrazeItem]) -> List[BrazeItem]:
    """One attribute object per user: a user's attribute updates merge into one object in the
    place of the first (``transforms.identify.merge_attribute_items``). Other objects, and
    attribute objects not made by the identify step (replays), pass as they are."""
    groups = collections.defaultdict(list)
    for item in batch:
        if is_identify_attributes(item):
            groups[_user(item)].append(item)
    if not groups:
        return list(batch)
    out = []
    for item in batch:
        if not is_identify_attributes(item):
            out.append(item)
            continue
        group = groups.pop(_user(item), None)
        if group is not None:
            out.append(merge_attribute_items(group) if len(group) > 1 else without_meta(group[0]))
    return out


def pack(items: List[BrazeItem], limits: RequestLimits) -> List[List[BrazeItem]]:
    """Split items, in order, into requests as ``_PackDoFn`` does (for tests and the benchmark)."""
    requests, batch, fill = [], [], EMPTY_FILL
    for item in items:
        size = object_size(item)
        added = admit_last(fill, item, size, limits)
        if added is None:
            send, batch = carry_over(batch, item, limits)
            requests.append(collapse(send))
            fill = fill_of(batch, limits)
            added = admit(fill, item, size, limits)
        batch.append(item)
        fill = added
        if limits.full(fill[0]):
            requests.append(collapse(batch))
            batch, fill = [], EMPTY_FILL
    if batch:
        requests.append(collapse(batch))
    return requests


def shard_key(item: BrazeItem, shards: int) -> str:
    # crc32 is stable across processes (Python's hash() of str is salted per process).
    return f"{item.sync}#{zlib.crc32(item.user_key.encode('utf-8')) % shards}"


class _PackDoFn(beam.DoFn):
    ITEMS = BagStateSpec("items", FastPrimitivesCoder())
    FILL = ReadModifyWriteStateSpec("fill", FastPrimitivesCoder())
    BUFFERING = TimerSpec("buffering_end", TimeDomain.REAL_TIME)
    WINDOW_END = TimerSpec("window_end", TimeDomain.WATERMARK)

    def __init__(self, limits: RequestLimits, max_wait_seconds: float, clock=time.time):
        self._limits = limits
        self._max_wait = max_wait_seconds
        self._clock = clock
        self._batch_size = Metrics.distribution("batching", "objects_per_batch")
        self._carried = Metrics.counter("batching", "objects_carried_over")

    def process(
        self,
        element,
        window=beam.DoFn.WindowParam,
        items=beam.DoFn.StateParam(ITEMS),
        fill_state=beam.DoFn.StateParam(FILL),
        buffering=beam.DoFn.TimerParam(BUFFERING),
        window_end=beam.DoFn.TimerParam(WINDOW_END),
    ):
        key, item = element
        size = object_size(item)
        fill = fill_state.read()
        added = admit_last(fill or EMPTY_FILL, item, size, self._limits)
        if added is None:
            send, keep = carry_over(list(items.read()), item, self._limits)
            items.clear()
            if keep:
                # The kept objects keep their deadline: the buffering timer is left as it is.
                for kept in keep:
                    items.add(kept)
                self._carried.inc(len(keep))
                fill = fill_of(keep, self._limits)
            else:
                buffering.clear()
                fill = None
            yield from self._emit(key, send)
            added = admit(fill or EMPTY_FILL, item, size, self._limits)
        if fill is None:
            # A new request starts waiting now; it leaves within max_wait even if never full.
            buffering.set(Timestamp.of(self._clock() + self._max_wait))
            window_end.set(window.max_timestamp())
        items.add(item)
        if self._limits.full(added[0]):
            yield from self._flush(key, items, fill_state, buffering)
        else:
            fill_state.write(added)

    @on_timer(BUFFERING)
    def on_buffering_end(
        self,
        key=beam.DoFn.KeyParam,
        items=beam.DoFn.StateParam(ITEMS),
        fill_state=beam.DoFn.StateParam(FILL),
        buffering=beam.DoFn.TimerParam(BUFFERING),
    ):
        yield from self._flush(key, items, fill_state, buffering)

    @on_timer(WINDOW_END)
    def on_window_end(
        self,
        key=beam.DoFn.KeyParam,
        items=beam.DoFn.StateParam(ITEMS),
        fill_state=beam.DoFn.StateParam(FILL),
        buffering=beam.DoFn.TimerParam(BUFFERING),
    ):
        yield from self._flush(key, items, fill_state, buffering)

    def _flush(self, key, items, fill_state, buffering):
        batch = list(items.read())
        items.clear()
        fill_state.clear()
        buffering.clear()
        yield from self._emit(key, batch)

    def _emit(self, key, batch):
        if batch:
            batch = collapse(batch)
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
