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
from apache_beam import pvalue
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from transforms.attribute_values import NOT_ATTRIBUTES, is_identify_attributes, merge_attribute_items
from transforms.coders import BATCH, ITEM, STATE_CODER, JsonBag, JsonValue, typed
from transforms.guard import INTERNAL_ERROR, Failure, count_internal_error, failure_of, guarded
from transforms.records import BRAZE_OBJECT, DEAD_LETTERED, KINDS, NO_PREDECESSOR, BrazeItem, DeadLetter, Outcome, \
    Request, UserBatch, utc_now_iso
from transforms.sanitize import clean_attributes

OUTCOME_TAG = "outcomes"
DEAD_LETTER_TAG = "dead_letters"
# Batches stamped within this of the window's end were made when the input ended (timers
# carry milliseconds, so identify's last flush is stamped up to 1 ms before the end).
END_OF_WINDOW_MICROS = 1_000_000

from transforms.braze_facts import MAX_BODY_BYTES, MAX_OBJECTS_PER_REQUEST as MAX_OBJECTS  # noqa: E402
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
            out.append(_merged(group) if len(group) > 1 else group[0])
    return out


def _merged(group: List[BrazeItem]) -> BrazeItem:
    """One user's attribute items as one; values are sanitised again because merging can make
    a value Braze would refuse (two ``inc`` steps summing past 64 bits)."""
    dropped: List[str] = []
    merged = merge_attribute_items(group, dropped)
    obj, changes, _ = clean_attributes(merged.obj, NOT_ATTRIBUTES)
    for change in (*dropped, *changes):
        Metrics.counter("sanitize", change).inc()
    return merged._replace(obj=obj) if changes else merged


def pack(items: List[BrazeItem], limits: RequestLimits) -> List[List[BrazeItem]]:
    """Split items, in order, into requests as ``_PackDoFn`` does (for tests and the benchmark)."""
    requests: List[List[BrazeItem]] = []
    batch, _ = pack_more([], EMPTY_FILL, items, limits, requests)
    if batch:
        requests.append(collapse(batch))
    return requests


def pack_more(batch: List[BrazeItem], fill, items, limits: RequestLimits, requests: list):
    """``pack`` resumed: go on filling the open request ``batch`` (with its ``fill``) with
    ``items``, appending each request that closes to ``requests`` (collapsed); returns the open
    request's ``(batch, fill)``, so the caller can feed more items later."""
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
    return batch, fill


def shard_key(sync: str, user_key: str, shards: int) -> str:
    # crc32 is stable across processes (Python's hash() of str is salted per process).
    return f"{sync}#{zlib.crc32(user_key.encode('utf-8')) % shards}"


# A watermark at W says no element earlier than W will come, not that one *at* W has: a held
# batch waits for the watermark to be this far past its predecessor's timestamp (batch
# timestamps are whole milliseconds, transforms.identify.next_tau).
RELEASE_MARGIN_MICROS = 1000


def release_time(batch: UserBatch) -> int:
    return batch.after + RELEASE_MARGIN_MICROS


def release_plan(held: List[UserBatch], watermark_micros: int):
    """``(batches to release now in order, batches to keep)`` once the watermark has reached
    ``watermark_micros`` (pure). A batch goes once the watermark is past its predecessor's
    timestamp (``after``), when that predecessor has surely arrived; released batches go in
    timestamp order, which per user is the order identify made them."""
    ready = sorted((b for b in held if release_time(b) <= watermark_micros), key=lambda b: (b.tau, b.after))
    keep = [b for b in held if release_time(b) > watermark_micros]
    return ready, keep


def _failed_batch(dofn, element, failure: Failure):
    """``guarded``'s fallback for one arriving batch: its objects are dead-lettered."""
    _, batch = element
    yield from dead_letter_items(getattr(batch, "items", ()), "pack", failure)


def dead_letter_items(items, stage: str, failure: Failure):
    for item in items:
        try:
            data = orjson.dumps(item.obj)
        except Exception:  # noqa: BLE001 - describing a failure must not fail
            data = b""
        yield pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
            stage=stage, reason=INTERNAL_ERROR, detail=failure.detail, sync=item.sync, data=data,
            payload_type=BRAZE_OBJECT, kind=item.kind, failed_at=utc_now_iso(), sources=tuple(item.sources),
            error_class=failure.error_class))
        for source in item.sources:
            yield pvalue.TaggedOutput(OUTCOME_TAG, Outcome(source, item.sync, item.branch, DEAD_LETTERED,
                                                           INTERNAL_ERROR))


class _PackDoFn(beam.DoFn):
    """Keyed by ``shard_key``: a user's batches in order, packed into numbered requests.

    State per key: ``held`` (batches waiting for their predecessor, normally none for long),
    ``items`` and ``fill`` (the request being filled), ``next_seq`` (the next request number).
    Per object: one bag append and one small ``fill`` write; a flush reads the request's
    objects once. Timers: ``release`` (watermark: a held batch's predecessor has arrived),
    ``buffering_end`` (processing time: the request has waited ``max_wait``), ``window_end``
    (end of input or drain: flush what is left).
    """

    HELD = BagStateSpec("held", STATE_CODER)
    RELEASE_AT = ReadModifyWriteStateSpec("release_at", VarIntCoder())
    ITEMS = BagStateSpec("items", STATE_CODER)
    FILL = ReadModifyWriteStateSpec("fill", STATE_CODER)
    NEXT_SEQ = ReadModifyWriteStateSpec("next_seq", VarIntCoder())
    RELEASE = TimerSpec("release", TimeDomain.WATERMARK)
    BUFFERING = TimerSpec("buffering_end", TimeDomain.REAL_TIME)
    WINDOW_END = TimerSpec("window_end", TimeDomain.WATERMARK)

    def __init__(self, limits: RequestLimits, max_wait_seconds: float, clock=time.time):
        self._limits = limits
        self._max_wait = max_wait_seconds
        self._clock = clock
        self._batch_size = Metrics.distribution("batching", "objects_per_batch")
        self._carried = Metrics.counter("batching", "objects_carried_over")
        self._held = Metrics.counter("batching", "batches_held_for_order")

    @guarded("pack", _failed_batch)
    def process(self, element, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam,
                held=beam.DoFn.StateParam(HELD), release_at=beam.DoFn.StateParam(RELEASE_AT),
                items=beam.DoFn.StateParam(ITEMS), fill=beam.DoFn.StateParam(FILL),
                next_seq=beam.DoFn.StateParam(NEXT_SEQ), release=beam.DoFn.TimerParam(RELEASE),
                buffering=beam.DoFn.TimerParam(BUFFERING), window_end=beam.DoFn.TimerParam(WINDOW_END)):
        key, batch = element
        held, items, fill = JsonBag(held, BATCH), JsonBag(items, ITEM), JsonValue(fill)
        if timestamp.micros >= window.max_timestamp().micros - END_OF_WINDOW_MICROS:
            # Made when the input ended (identify's last flush): everything before it has
            # arrived, and a timer set now might never fire, so all of it goes at once.
            ready, _ = release_plan(held.read() + [batch], MAX_TIMESTAMP.micros)
            held.clear()
            release_at.clear()
            request = _Request(items, fill, next_seq, buffering)
            for b in ready:
                yield from self._add(key, b.items, request, window, None, timers=False)
            yield from self._flush(key, request)
            return
        if batch.after == NO_PREDECESSOR:
            yield from self._add(key, batch.items, _Request(items, fill, next_seq, buffering), window, window_end)
            return
        held.add(batch)
        self._held.inc()
        at = release_at.read()
        if at is None or release_time(batch) < at:
            release.set(Timestamp(micros=release_time(batch)))
            release_at.write(release_time(batch))

    @on_timer(RELEASE)
    def on_release(self, key=beam.DoFn.KeyParam, fired_at=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam,
                   held=beam.DoFn.StateParam(HELD), release_at=beam.DoFn.StateParam(RELEASE_AT),
                   items=beam.DoFn.StateParam(ITEMS), fill=beam.DoFn.StateParam(FILL),
                   next_seq=beam.DoFn.StateParam(NEXT_SEQ), release=beam.DoFn.TimerParam(RELEASE),
                   buffering=beam.DoFn.TimerParam(BUFFERING), window_end=beam.DoFn.TimerParam(WINDOW_END)):
        held, items, fill = JsonBag(held, BATCH), JsonBag(items, ITEM), JsonValue(fill)
        ready, keep = release_plan(held.read(), fired_at.micros)
        held.clear()
        for batch in keep:
            held.add(batch)
        if keep:
            at = min(release_time(b) for b in keep)
            release.set(Timestamp(micros=at))
            release_at.write(at)
        else:
            release_at.clear()
        request = _Request(items, fill, next_seq, buffering)
        for batch in ready:
            yield from self._guard_timer(batch.items, lambda b=batch: list(
                self._add(key, b.items, request, window, window_end)), request)

    @on_timer(BUFFERING)
    def on_buffering_end(self, key=beam.DoFn.KeyParam, items=beam.DoFn.StateParam(ITEMS),
                         fill=beam.DoFn.StateParam(FILL), next_seq=beam.DoFn.StateParam(NEXT_SEQ),
                         buffering=beam.DoFn.TimerParam(BUFFERING)):
        request = _Request(JsonBag(items, ITEM), JsonValue(fill), next_seq, buffering)
        yield from self._guard_timer((), lambda: list(self._flush(key, request, cancel_timer=False)), request)

    @on_timer(WINDOW_END)
    def on_window_end(self, key=beam.DoFn.KeyParam, held=beam.DoFn.StateParam(HELD),
                      release_at=beam.DoFn.StateParam(RELEASE_AT), items=beam.DoFn.StateParam(ITEMS),
                      fill=beam.DoFn.StateParam(FILL), next_seq=beam.DoFn.StateParam(NEXT_SEQ),
                      buffering=beam.DoFn.TimerParam(BUFFERING), window=beam.DoFn.WindowParam,
                      window_end=beam.DoFn.TimerParam(WINDOW_END)):
        # The input ended (or the job drains): every held batch's predecessor has arrived.
        held, items, fill = JsonBag(held, BATCH), JsonBag(items, ITEM), JsonValue(fill)
        ready, _ = release_plan(held.read(), MAX_TIMESTAMP.micros)
        held.clear()
        release_at.clear()
        request = _Request(items, fill, next_seq, buffering)
        for batch in ready:
            yield from self._guard_timer(batch.items, lambda b=batch: list(
                self._add(key, b.items, request, window, None)), request)
        yield from self._guard_timer((), lambda: list(self._flush(key, request)), request)

    def _guard_timer(self, items, work, request: "_Request"):
        """A timer must never raise (Dataflow would retry it forever). On an unexpected error,
        the objects being handled and those of the request being filled are dead-lettered,
        each once, and the request is cleared from state."""
        try:
            yield from work()
        except Exception as error:  # noqa: BLE001 - see the docstring
            failure = failure_of("pack", error)
            count_internal_error("pack", failure)
            waiting = request.peek()
            request.clear()
            yield from dead_letter_items(waiting + [i for i in items if i not in waiting], "pack", failure)

    def _add(self, key, new_items, request: "_Request", window, window_end, timers: bool = True):
        limits = self._limits
        for item in new_items:
            size = object_size(item)
            fill = request.fill()
            added = admit_last(fill or EMPTY_FILL, item, size, limits)
            if added is None:
                send, keep = carry_over(request.peek(), item, limits)
                send = collapse(send)
                request.replace(keep)
                if keep:
                    # The kept objects keep their deadline: the buffering timer is left as it is.
                    self._carried.inc(len(keep))
                    fill = fill_of(keep, limits)
                else:
                    request.buffering.clear()
                    fill = None
                yield from self._emit(key, send, request)
                added = admit(fill or EMPTY_FILL, item, size, limits)
            if fill is None and timers:
                # A new request starts waiting now; it leaves within max_wait even if never full.
                request.buffering.set(Timestamp.of(self._clock() + self._max_wait))
                if window_end is not None:
                    window_end.set(window.max_timestamp())
            request.items.add(item)
            if limits.full(added[0]):
                yield from self._flush(key, request)
            else:
                request.set_fill(added)

    def _flush(self, key, request: "_Request", cancel_timer: bool = True):
        batch = collapse(request.peek())  # before clearing: a failure leaves the objects in state
        request.clear(cancel_timer)
        yield from self._emit(key, batch, request)

    def _emit(self, key, batch, request: "_Request"):
        """Number one collapsed request and send it on."""
        if batch:
            self._batch_size.update(len(batch))
            yield key, Request(key, request.take_seq(), tuple(batch))


class _Request:
    """The request being filled for one key: its state cells, read once per call."""

    def __init__(self, items, fill, next_seq, buffering):
        self.items, self._fill, self._next_seq, self.buffering = items, fill, next_seq, buffering
        self._cached_fill = _UNREAD

    def fill(self):
        if self._cached_fill is _UNREAD:
            stored = self._fill.read()
            self._cached_fill = None if stored is None else (tuple(stored[0]), tuple(stored[1]))
        return self._cached_fill

    def set_fill(self, fill) -> None:
        self._cached_fill = fill
        self._fill.write([list(fill[0]), list(fill[1])])

    def peek(self) -> List[BrazeItem]:
        return list(self.items.read())

    def replace(self, items: List[BrazeItem]) -> None:
        self.items.clear()
        for item in items:
            self.items.add(item)

    def clear(self, cancel_timer: bool = True) -> None:
        """Forget the request. Its buffering timer is cancelled only if one is set (a request was
        being filled) and it is not the one firing: the FnApiRunner keeps a timer cleared
        needlessly at the end of a bounded input pending for ever."""
        if cancel_timer and self.fill() is not None:
            self.buffering.clear()
        self.items.clear()
        self._fill.clear()
        self._cached_fill = None

    def take_seq(self) -> int:
        seq = self._next_seq.read() or 0
        self._next_seq.write(seq + 1)
        return seq


_UNREAD = object()


class PackRequests(beam.PTransform):
    """``UserBatch`` → ``(key, Request)``: each batch key's requests, sized for one
    /users/track call, numbered in the order they were packed."""

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

    def expand(self, batches):
        shards = self._shards
        keyed = batches | "KeyByUserShard" >> beam.Map(
            lambda b: (shard_key(b.sync, b.user_key, shards), b)).with_output_types(Tuple[str, UserBatch])
        packed = keyed | "PackInOrder" >> beam.ParDo(_PackDoFn(self._limits, self._max_wait, self._clock)).with_outputs(
            OUTCOME_TAG, DEAD_LETTER_TAG, main="requests")
        typed(packed.requests, Tuple[str, Request])
        typed(packed[OUTCOME_TAG], Outcome)
        typed(packed[DEAD_LETTER_TAG], DeadLetter)
        return packed
