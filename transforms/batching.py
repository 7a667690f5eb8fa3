"""Pack Braze objects into /users/track-sized requests (the packer: state, timers, order).

Beam's BatchElements is not a hard cap and GroupIntoBatches counts elements only, so this is a
small GroupIntoBatches of our own: the same state/timer structure, with a cap on objects and
bytes checked *before* adding, by the pure rules in ``transforms.packing`` (what fits, one
attribute object per user, carrying a user's objects over together).

Keys are ``(sync, shard of the user)``: one user's objects share a shard, so they travel in
the same request when they arrive together, and Braze applies that request's attributes
before its events. Shards bound the parallelism per sync (and the state a runner keeps).
"""
from __future__ import annotations

import time
from typing import List, Tuple

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from transforms.coders import BATCH, ITEM, STATE_CODER, JsonBag, JsonValue, typed
from transforms.guard import INTERNAL_ERROR, Failure, count_internal_error, failure_of, guarded
from transforms.packing import EMPTY_FILL, Counts, Fill, RequestLimits, admit, admit_last, carry_over, collapse, \
    fill_of, object_size, shard_key
from transforms.records import BRAZE_OBJECT, DEAD_LETTERED, NO_PREDECESSOR, BrazeItem, DeadLetter, Outcome, \
    Request, UserBatch, utc_now_iso

OUTCOME_TAG = "outcomes"
DEAD_LETTER_TAG = "dead_letters"
# Batches stamped within this of the window's end were made when the input ended (timers
# carry milliseconds, so identify's last flush is stamped up to 1 ms before the end).
END_OF_WINDOW_MICROS = 1_000_000

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
            if limits.full(added.counts):
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
            self._cached_fill = None if stored is None else Fill(Counts(*stored[0]), tuple(stored[1]))
        return self._cached_fill

    def set_fill(self, fill: Fill) -> None:
        self._cached_fill = fill
        self._fill.write([list(fill.counts), list(fill.merging)])

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
