"""The identify branch's stateful step: per (sync, user), what Braze holds, and the reorder buffer.

What each Amplitude operation becomes, and the event-time rules per property, are the pure
functions of ``transforms.identify_ops`` (re-exported here); this module keeps their state in
Beam, orders a user's updates, and emits what one flush produces.
State per (sync, user): ``{"p": {property: entry}, "n": seq, "e": expiry}`` with an entry
per property (``transforms.identify_ops``: ``Known`` value, ``Unknown`` number after an
``inc``, ``TrackedEdits`` of an array the job never saw whole, at most 100 values each). Only
selected properties are kept, so the size is about ``Σ (len(name) + len(value) + 20 bytes)``
over the user's selected properties, ``n`` counts the objects sent and ``e`` is the expiry
time. A timer clears it ``ttl_seconds`` after the user's last update, by publish time
(``--user_state_ttl_days``; the timer is moved only when that moves it by over 1%). A
forgotten user is new again: their next values are sent in full, an ``$add`` becomes an
``inc``, and a ``$setOnce`` is sent again (it may overwrite a first-touch value set over a
TTL ago; the snapshots Amplitude sends with later events carry its resolved value and
correct it). ``s`` marks the state of a sync in shadow mode, whose values never reached
Braze; a change of mode reads the state afresh, as for a forgotten user (``in_mode``).

Each attribute item carries (``BrazeItem.seq``, ``BrazeItem.before``) the user's sequence
number and the value Braze held before it for each key where the job knows it.
``transforms.batching`` uses both (``transforms.attribute_values.merge_attribute_items``) to
collapse one user's updates in a request into one object without writing a value Braze already
holds (A → B → A in one request sends nothing).

Order. Pub/Sub keeps no order, so each user's updates wait ``lateness_seconds`` in a reorder
buffer and are applied in event-time order (``flush_plan``); what one flush produces leaves as
one ``UserBatch`` whose timestamp increases per user and names the previous one, which is how the
packer keeps a user's batches in order across the shuffle (``transforms.batching``). An update
that arrives later than that, behind a newer one, falls back to the rules above (superseded).
Operand values are sanitised before they are applied (``clean_updates``), so the state only ever
holds what Braze is sent.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.coders import FloatCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms.coders import STATE_CODER, WORK, JsonBag, JsonValue
from transforms.guard import INTERNAL_ERROR, Failure, count_internal_error, failure_of, guarded
# The pure operations; their public names stay importable from here.
from transforms.identify_ops import (  # noqa: F401
    ABSOLUTE_OPS, ARRAY_ADD_OPS, FRACTIONAL_INCREMENT, INCREMENTAL_OPS, INVALID_OPERAND, MAX_TRACKED_VALUES,
    NOT_A_LIST, NOT_A_NUMBER, NOT_ATTRIBUTES, NUMBER_OUT_OF_RANGE, OPERATIONS, SUPERSEDED, UNCHANGED, Applied,
    apply_updates, attribute_delta, clean_updates, in_braze_number_range, is_identify_attributes, is_number,
    is_operation, merge_attribute_items, merge_attribute_value, selected_updates, skip_reason,
)
from transforms.records import ATTRIBUTES, DEAD_LETTERED, IDENTIFY, NO_PREDECESSOR, SKIPPED, TRACK, BrazeItem, \
    DeadLetter, IdentifyWork, Outcome, UserBatch, utc_now_iso

__all__ = [
    "OUTCOME_TAG", "DEFAULT_TTL_SECONDS", "EXPIRY_SLACK", "MAX_TRACKED_VALUES", "ARRAY_ADD_OPS",
    "ABSOLUTE_OPS", "INCREMENTAL_OPS", "OPERATIONS", "NOT_ATTRIBUTES", "UNCHANGED", "SUPERSEDED", "NOT_A_NUMBER",
    "NOT_A_LIST", "INVALID_OPERAND", "FRACTIONAL_INCREMENT", "is_operation", "merge_attribute_value",
    "selected_updates", "Applied", "apply_updates", "attribute_delta", "skip_reason", "is_identify_attributes",
    "merge_attribute_items", "identify_key", "IdentifyDoFn",
]

OUTCOME_TAG = "outcomes"
DEAD_LETTER_TAG = "dead_letters"
DEFAULT_TTL_SECONDS = 30 * 24 * 3600.0
EXPIRY_SLACK = 0.01  # the state expires between 99% and 100% of the TTL after the last update


# --------------------------------------------------------------------------------------------
# The DoFn


def identify_key(sync: str, user_key: str) -> str:
    """State key of one user in one sync. A string key encodes deterministically, and sync
    names cannot contain the separator."""
    return f"{sync}|{user_key}"


class _Pending(NamedTuple):
    """An update waiting in a user's reorder buffer: its publish time (seconds) and what."""

    arrived: float
    work: IdentifyWork


def flush_plan(pending: Sequence[_Pending], now: float, lateness: float):
    """Which buffered updates to apply now, in event-time order, and which to keep (pure).

    ``arrived`` and ``now`` are in the watermark's time (publish times). An update is due once
    the watermark is ``lateness`` seconds past its publish time. Every buffered update whose
    event time is at or before the newest due one goes with it, so an update is applied in
    event-time order relative to every update published no more than ``lateness`` after it."""
    due = [p for p in pending if p.arrived + lateness <= now + 1e-6]
    if not due:
        return [], list(pending)
    cutoff = max(p.work.time_ms for p in due)
    go = [p for p in pending if p.work.time_ms <= cutoff]
    keep = [p for p in pending if p.work.time_ms > cutoff]
    go.sort(key=lambda p: p.work.time_ms)  # stable: equal times keep their arrival order
    return [p.work for p in go], keep


# Batch timestamps are whole milliseconds (timers carry milliseconds on some runners) and stay
# inside the global window: at its very end (the input ended, or a drain) several batches of a
# user can share the last timestamp, and ``UserBatch.after`` orders them.
TAU_STEP_MICROS = 1000
LAST_TAU = GlobalWindow().max_timestamp().micros // TAU_STEP_MICROS * TAU_STEP_MICROS


def next_tau(previous: Optional[int], timestamp_micros: int) -> int:
    """A user's next batch timestamp: at least a millisecond after the previous one, and never
    before the element or timer that emits it (Beam refuses an output earlier than its input)."""
    at = -(-timestamp_micros // TAU_STEP_MICROS) * TAU_STEP_MICROS  # rounded up to a millisecond
    tau = at if previous is None else max(previous + TAU_STEP_MICROS, at)
    return min(tau, LAST_TAU)


def _failed_work(dofn, element, failure: Failure):
    """``guarded``'s fallback: the event's update is dead-lettered (its track objects too)."""
    key, work = element
    sync = key.split("|", 1)[0] if isinstance(key, str) else ""
    yield from _dead_letter_work(work, sync, failure)


def _dead_letter_work(work, sync: str, failure: Failure):
    sources = (work.source,) if isinstance(getattr(work, "source", None), str) else ()
    yield pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
        stage=IDENTIFY, reason=INTERNAL_ERROR, detail=failure.detail, sync=sync,
        data=_work_bytes(work), failed_at=utc_now_iso(), sources=sources, error_class=failure.error_class))
    for source in sources:
        yield pvalue.TaggedOutput(OUTCOME_TAG, Outcome(source, sync, IDENTIFY, DEAD_LETTERED, INTERNAL_ERROR))
        if getattr(work, "track", ()):
            yield pvalue.TaggedOutput(OUTCOME_TAG, Outcome(source, sync, TRACK, DEAD_LETTERED, INTERNAL_ERROR))


def _work_bytes(work) -> bytes:
    try:
        return orjson.dumps({"updates": [list(u) for u in work.updates], "fields": work.fields,
                             "time_ms": work.time_ms})
    except Exception:  # noqa: BLE001 - describing a failure must not fail
        return b""


# Set in the state of a user of a sync in shadow mode: its values were never sent to Braze.
SHADOW_MARK = "s"


def in_mode(state, shadow: bool):
    """A user's state as the sync's mode may use it (pure). Values recorded in the other mode are
    dropped, keeping only the order (``n``, ``t``) and the expiry (``e``): a shadow sync's values
    never reached Braze, so once the sync is live they must not be skipped as unchanged, and a
    live sync's values say nothing about what its shadow has shown. The user is then new to the
    sync, as after the TTL (README, "Shadow mode")."""
    if not isinstance(state, dict) or bool(state.get(SHADOW_MARK)) == shadow:
        return state
    return {k: state[k] for k in ("n", "t", "e") if k in state}


class IdentifyDoFn(beam.DoFn):
    """Keyed by ``identify_key(sync, user)``; holds that user's state for the sync.

    Input: ``IdentifyWork``. Each update waits ``lateness_seconds`` in a per-user reorder
    buffer (``flush_plan``), then the due ones are applied in event-time order, and the user's
    objects of that flush leave as one ``UserBatch``: per update, its attribute object (if it
    changed anything), then the event's own track objects. A skip is reported (tag
    ``outcomes``) for an update that changed nothing. The batch's timestamp ``tau`` increases
    per user and names its predecessor, so the packer can keep the user's batches in order
    across the shuffle. ``lateness_seconds=0`` applies each update as it arrives.

    ``shadow_syncs``: the syncs in shadow mode; their users' state is marked so, and read afresh
    when the sync's mode changes (``in_mode``), e.g. when an ``--update`` turns it live.

    The state expires ``ttl_seconds`` after the user's last update (by publish time), on an
    event-time timer (see ``_apply`` for why not a processing-time one). Metrics (namespace
    ``identify``): ``unchanged``, ``superseded`` and the other
    skip reasons, ``expired`` (users forgotten), ``reordered`` (updates applied in another order
    than they arrived).

    State per user, read and written once per flush: the attribute values the job knows Braze
    holds for the selected properties (``apply_updates``), the sequence number, the expiry and
    the last ``tau``; the buffer holds the user's updates of the last ``lateness_seconds``.
    """

    USER = ReadModifyWriteStateSpec("user", STATE_CODER)
    PENDING = BagStateSpec("pending", STATE_CODER)
    FLUSH_DUE = ReadModifyWriteStateSpec("flush_due", FloatCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

    def __init__(self, selected_by_sync: Dict[str, Tuple[str, ...]], ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 clock=time.time, lateness_seconds: float = 0.0, max_array_length: Optional[int] = None,
                 shadow_syncs: Iterable[str] = ()):
        if not is_number(lateness_seconds) or lateness_seconds < 0:
            raise ValueError(f"lateness_seconds must be a number >= 0, got {lateness_seconds!r}")
        self._selected = {sync: frozenset(props) for sync, props in selected_by_sync.items()}
        self._shadow = frozenset(shadow_syncs)
        self._ttl = float(ttl_seconds)
        self._lateness = float(lateness_seconds)
        self._max_array = max_array_length
        self._clock = clock
        self._skipped = {}
        self._expired = Metrics.counter("identify", "expired")
        self._reordered = Metrics.counter("identify", "reordered")

    def _skip(self, source: str, sync: str, reason: str) -> Outcome:
        counter = self._skipped.get(reason)
        if counter is None:
            counter = self._skipped[reason] = Metrics.counter("identify", reason)
        counter.inc()
        return Outcome(source, sync, IDENTIFY, SKIPPED, reason)

    @guarded(IDENTIFY, _failed_work)
    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                user_state=beam.DoFn.StateParam(USER), pending=beam.DoFn.StateParam(PENDING),
                flush_due=beam.DoFn.StateParam(FLUSH_DUE), flush=beam.DoFn.TimerParam(FLUSH),
                expiry=beam.DoFn.TimerParam(EXPIRY)):
        key, work = element
        if self._lateness <= 0:
            yield from self._apply(key, [work], timestamp, JsonValue(user_state), expiry)
            return
        # Event time: the update waits until the watermark, which follows Pub/Sub's publish
        # times, has passed its own publish time plus the lateness, so every update published
        # up to then has arrived, whatever order Pub/Sub delivered them in.
        arrived = timestamp.micros / 1e6
        JsonBag(pending).add([arrived, work])
        due = flush_due.read()
        if due is None or arrived + self._lateness < due:
            flush.set(Timestamp.of(arrived + self._lateness))
            flush_due.write(arrived + self._lateness)

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, fired_at=beam.DoFn.TimestampParam,
                 user_state=beam.DoFn.StateParam(USER), pending=beam.DoFn.StateParam(PENDING),
                 flush_due=beam.DoFn.StateParam(FLUSH_DUE), flush=beam.DoFn.TimerParam(FLUSH),
                 expiry=beam.DoFn.TimerParam(EXPIRY)):
        user_state, pending = JsonValue(user_state), JsonBag(pending)
        entries = [_Pending(a, WORK(w)) for a, w in pending.read()]
        if not entries:
            flush_due.clear()
            return
        now = fired_at.micros / 1e6
        works, keep = flush_plan(entries, now, self._lateness)
        pending.clear()
        for entry in keep:
            pending.add([entry.arrived, entry.work])
        if keep:
            due = min(entry.arrived for entry in keep) + self._lateness
            flush.set(Timestamp.of(due))
            flush_due.write(due)
        else:
            flush_due.clear()
        chosen = {w.source for w in works}
        if [e.work.source for e in entries if e.work.source in chosen] != [w.source for w in works]:
            self._reordered.inc()
        try:
            yield from list(self._apply(key, works, fired_at, user_state, expiry))
        except Exception as error:  # noqa: BLE001 - a timer must never raise (it would retry forever)
            failure = failure_of(IDENTIFY, error)
            count_internal_error(IDENTIFY, failure)
            for work in works:
                yield from _dead_letter_work(work, key.split("|", 1)[0], failure)

    def _apply(self, key, works, timestamp, user_state, expiry):
        """Apply updates in order to the user's state; emit one UserBatch and the skips."""
        if not works:
            return
        sync, user_key = key.split("|", 1)
        selected = self._selected[sync]
        shadow = sync in self._shadow
        state = in_mode(user_state.read(), shadow)
        stored_expiry = state.get("e") if isinstance(state, dict) else None
        last_tau = state.get("t") if isinstance(state, dict) else None
        items: List[BrazeItem] = []
        for work in works:
            updates, refused = clean_updates(work.updates, self._max_array)
            applied = apply_updates(updates, state, selected, work.time_ms, self._max_array)
            state = applied.state
            attributes = applied.attributes
            if not attributes:
                reason = refused[0][1] if refused and not updates else skip_reason(applied)
                yield pvalue.TaggedOutput(OUTCOME_TAG, self._skip(work.source, sync, reason))
            else:
                obj = dict(work.fields)
                obj.update(attributes)
                items.append(BrazeItem(sync, user_key, ATTRIBUTES, obj, (work.source,), IDENTIFY,
                                       work.publish_time_ms, state["n"], applied.before))
            items.extend(work.track)
        # The expiry moves with every update, but the timer is only reset when it would move by
        # more than 1% of the TTL: a timer write per event is the costlier part on most runners.
        # It is an event-time timer: a processing-time timer would hold this step's output
        # watermark at the element's timestamp for the whole TTL (Beam's Python SDK holds it
        # there), and the packer releases a user's batches by that watermark.
        deadline = min(timestamp.micros / 1e6 + self._ttl, LAST_TAU / 1e6)
        if stored_expiry is None or deadline - stored_expiry > self._ttl * EXPIRY_SLACK:
            expiry.set(Timestamp.of(deadline))
            stored_expiry = deadline
        state["e"] = stored_expiry
        if shadow:
            state[SHADOW_MARK] = 1
        if items:
            tau = next_tau(last_tau, timestamp.micros)
            state["t"] = tau
            batch = UserBatch(sync, user_key, tuple(items), tau,
                              NO_PREDECESSOR if last_tau is None else last_tau)
            user_state.write(state)  # last: a failure above leaves the state as it was
            yield TimestampedValue(batch, Timestamp(micros=tau))
        else:
            if last_tau is not None:
                state["t"] = last_tau
            user_state.write(state)  # event times advance even when nothing is sent

    @on_timer(EXPIRY)
    def expire(self, user_state=beam.DoFn.StateParam(USER)):
        user_state.clear()
        self._expired.inc()
