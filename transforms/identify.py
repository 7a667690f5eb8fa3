"""The identify branch: Amplitude user-property operations → Braze attribute objects.

Braze bills every attribute it receives, changed or not, and does not order separate
requests (reference braze-api.md §6); Amplitude's own Braze stream sends selected properties
"only when they change". So per (sync, user) the job keeps, in Beam state and with no
lookups, what Braze holds for each selected property as far as the job knows, and sends only
what changes it. Operations come from ``$identify`` events; other events carry a snapshot of
the user's properties, read as ``$set`` (a snapshot never unsets what it omits, and a null in
a snapshot is ignored).

==========================  =====================================================================
Amplitude                   Braze attribute value sent
==========================  =====================================================================
``$set``                    the value, when it differs from the last value sent (types kept:
                            1, 1.0, "1" and true differ; ISO dates stay strings; nested objects
                            and arrays go as they are). ``$set`` to null removes, as ``$unset``.
``$unset`` (SDK: ``"-"``)   ``null``, once: not while the job knows the property has no value
``$setOnce``                the value, only while the property has no value as far as the job
                            knows (never sent, or last sent ``null``), as Amplitude applies it
``$add``                    the new total where the job knows the value Braze holds (a retried
                            request cannot add twice); ``{"inc": n}`` where it does not (integers
                            only; a fractional step on an unknown value is skipped); an unset
                            value counts as 0, as in Amplitude
``$append``/``$postInsert`` known array: the whole new array (1 data point, retry-safe);
                            unknown: ``{"add": [...]}``
``$prepend``/``$preInsert`` known array: the whole array with the values first, in Amplitude's
                            order; unknown: ``{"add": [...]}``, which Braze puts at the end
``$remove``                 known array: the whole new array; unknown: ``{"remove": [...]}``
``$clearAll``               ``null`` for every selected property, except those the job knows
                            have no value
==========================  =====================================================================

Removing a property the job has no record of still sends ``null``: Braze may hold a value
written before the user's state expired, or before the job replaced another integration.
That costs at most one data point per (user, property), once; then the job knows.
Braze arrays hold unique values, so the duplicates ``$append``/``$prepend`` allow are not kept.
One property in several operations of one identify: the first one counts (the SDKs' rule);
``$clearAll`` ignores every other operation of its identify (also the SDKs' rule).

Event-time order. Events of one user can arrive out of order, and Beam does not buffer them
into order. Each property remembers the event time of its last *absolute* write (``$set``,
``$unset``, ``$setOnce``, ``$clearAll``) and of its last write of any kind:

- an absolute write older than the property's last write is ignored (``superseded``): an
  older snapshot or ``$set`` never overwrites a newer value;
- an incremental write (``$add``, array edits) older than the last absolute write is ignored
  (that absolute value already includes it); otherwise it applies whenever it arrives, because
  increments commute. Array edits among themselves apply in arrival order (``$append x`` and
  ``$remove x`` arriving swapped leave the opposite result; the next snapshot corrects it).
- ``$setOnce`` is judged against what the job has sent when it arrives.

State per (sync, user): ``{"p": {property: entry}, "n": seq, "e": expiry}`` with an entry
``[t_abs, t_last, value]`` (the value Braze holds; None when removed), ``[t_abs, t_last]``
(Braze holds a number the job does not know, after an ``inc``), or
``[t_abs, t_last, present, absent]`` (an array the job does not know, with the values its own
edits added or removed, so the same ``add`` is not sent twice; at most 100 of each). Only
selected properties are kept, so the size is about ``Σ (len(name) + len(value) + 20 bytes)``
over the user's selected properties, ``n`` counts the objects sent and ``e`` is the expiry
time. A timer clears it ``ttl_seconds`` after the user's last update
(``--user_state_ttl_days``; the timer is moved only when that moves it by over 1%). A
forgotten user is new again: their next values are sent in full, an ``$add`` becomes an
``inc``, and a ``$setOnce`` is sent again (it may overwrite a first-touch value set over a
TTL ago; the snapshots Amplitude sends with later events carry its resolved value and
correct it).

Each attribute item carries, under ``META_KEY``, the user's sequence number and the value
Braze held before it for each key where the job knows it. ``transforms.batching`` uses both
to collapse one user's updates in a request into one object without writing a value Braze
already holds (A → B → A in one request sends nothing), then removes the key: Braze refuses
``$``-prefixed names, so it could never be billed by mistake.
"""
from __future__ import annotations

import math
import time
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.records import ATTRIBUTES, IDENTIFY, SKIPPED, BrazeItem, Outcome

OUTCOME_TAG = "outcomes"
META_KEY = "$amplitude_braze"
DEFAULT_TTL_SECONDS = 30 * 24 * 3600.0
EXPIRY_SLACK = 0.01  # the state expires between 99% and 100% of the TTL after the last update
MAX_TRACKED_VALUES = 100  # values remembered per unknown array (Braze keeps at most 100 per array)

ARRAY_ADD_OPS = ("$append", "$postInsert", "$prepend", "$preInsert")
ABSOLUTE_OPS = ("$set", "$unset", "$setOnce")
INCREMENTAL_OPS = ("$add",) + ARRAY_ADD_OPS + ("$remove",)
OPERATIONS = ABSOLUTE_OPS + INCREMENTAL_OPS + ("$clearAll",)
_OPERATION_NAMES = frozenset(OPERATIONS)
# Keys of an attribute object that are not attributes.
NOT_ATTRIBUTES = frozenset(("external_id", "braze_id", "user_alias", "_update_existing_only",
                            "_merge_objects", "push_token_import", META_KEY))

# Why an update was not applied (also the outcome reason when nothing was sent).
UNCHANGED = "unchanged"
SUPERSEDED = "superseded"  # older than a newer write of the same property
NOT_A_NUMBER = "not_a_number"  # $add on a value that is not a number
NOT_A_LIST = "not_a_list"  # array edit on a value that is not an array
INVALID_OPERAND = "invalid_operand"  # $add of a non-number; array values Braze cannot add
FRACTIONAL_INCREMENT = "fractional_increment"  # Braze's inc takes integers only

_MISSING = object()


# --------------------------------------------------------------------------------------------
# Values


def _same(a, b) -> bool:
    """Equal and of the same JSON type (Python says True == 1 == 1.0; Braze does not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _contains(values: list, value) -> bool:
    return any(_same(v, value) for v in values)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value) -> bool:
    return isinstance(value, (str, bool)) or _is_number(value)


def _is_inc(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "inc" in value


def _is_array_edit(value) -> bool:
    return isinstance(value, dict) and bool(value) and value.keys() <= {"add", "remove"}


def is_operation(value) -> bool:
    """An ``inc`` or array edit, whose effect depends on the value Braze holds."""
    return _is_inc(value) or _is_array_edit(value)


def _unique(values: list) -> list:
    """``values`` without repeats (by ``_same``), first occurrence kept, in order."""
    out: list = []
    seen = set()  # (type, value) of the scalars kept: a set look-up instead of a scan
    for v in values:
        if isinstance(v, (str, int, float)) or v is None:  # bool is an int; type() keeps it apart
            key = (type(v), v)
            if key not in seen:
                seen.add(key)
                out.append(v)
        elif not _contains(out, v):
            out.append(v)
    return out


def _edit_known_list(current: list, op: str, values: list) -> list:
    if op == "$remove":
        return [v for v in current if not _contains(values, v)]
    new = [v for v in _unique(values) if not _contains(current, v)]
    return new + current if op in ("$prepend", "$preInsert") else current + new


def _apply_array_edit(current: list, edit: dict) -> list:
    """What Braze does: remove, then add (a value already present moves to the end)."""
    added = edit.get("add", [])
    gone = edit.get("remove", []) + added
    return [v for v in current if not _contains(gone, v)] + _unique(added)


def merge_attribute_value(previous, new):
    """One attribute value with the same effect as sending ``previous`` and then ``new``.

    ``previous`` may be ``_MISSING``. Edits of one array combine so that, per value, the later
    edit wins and ``add`` and ``remove`` never name the same value (Braze's order between the
    two within one object is not documented)."""
    if previous is _MISSING:
        return new
    if _is_inc(new):
        if _is_inc(previous):
            return {"inc": previous["inc"] + new["inc"]}
        if previous is None:
            return new["inc"]
        if _is_number(previous):
            return previous + new["inc"]
        return new
    if _is_array_edit(new):
        if isinstance(previous, list):
            return _apply_array_edit(previous, new)
        if previous is None:
            return _apply_array_edit([], new)
        if _is_array_edit(previous):
            add, remove = list(previous.get("add", [])), list(previous.get("remove", []))
            for v in new.get("remove", []):
                add = [a for a in add if not _same(a, v)]
                if not _contains(remove, v):
                    remove.append(v)
            for v in new.get("add", []):
                remove = [r for r in remove if not _same(r, v)]
                add = [a for a in add if not _same(a, v)] + [v]
            return {k: v for k, v in (("add", add), ("remove", remove)) if v}
        return new
    return new


# --------------------------------------------------------------------------------------------
# Operations → attribute delta (pure)


def selected_updates(user_properties: dict, selected: frozenset) -> List[Tuple[str, str, object]]:
    """``(op, property, value)`` for the selected properties an event touches, in the order sent.

    Plain keys are a snapshot (``$set``); a null in a snapshot is ignored. A property named
    in several operations counts once, the first time; ``$clearAll`` stands alone."""
    if "$clearAll" in user_properties:
        return [("$clearAll", "", None)] if selected else []
    updates, seen = [], set()
    for key, operands in user_properties.items():
        if key[:1] == "$":
            if key in _OPERATION_NAMES and isinstance(operands, dict):
                for name, value in operands.items():
                    if name in selected and name not in seen:
                        seen.add(name)
                        updates.append((key, name, value))
        elif key in selected and operands is not None and key not in seen:
            seen.add(key)
            updates.append(("$set", key, operands))
    return updates


class Applied(NamedTuple):
    attributes: dict  # the attributes to send; empty when nothing changed
    state: dict  # the user's new state
    before: dict  # per sent attribute, the value Braze held before it, where the job knows it
    ignored: Tuple[Tuple[str, str], ...]  # (property, reason) of updates not applied


def _known(entry) -> bool:
    return entry is not None and len(entry) == 3


def apply_updates(updates: Iterable[Tuple[str, str, object]], state: Optional[dict], selected: frozenset,
                  time_ms: int = 0) -> Applied:
    """Apply one event's updates (at event time ``time_ms``) to a user's state."""
    state = state if isinstance(state, dict) else {}
    props = {k: v for k, v in (state.get("p") or {}).items() if k in selected}
    start = dict(props)
    delta: Dict[str, object] = {}
    ignored: List[Tuple[str, str]] = []

    def put(name, value):
        if isinstance(value, list):
            value = _unique(value)  # what Braze stores: its arrays hold unique values
        entry = props.get(name)
        props[name] = [time_ms, time_ms, value]
        if not (_known(entry) and _same(entry[2], value)):
            delta[name] = value

    for op, name, value in updates:
        if op == "$clearAll":
            for prop in sorted(selected):
                entry = props.get(prop)
                if _known(entry) and entry[2] is None:
                    continue
                if entry is not None and time_ms < entry[1]:
                    ignored.append((prop, SUPERSEDED))
                else:
                    put(prop, None)
            continue
        if name not in selected or op not in OPERATIONS:
            continue
        entry = props.get(name)
        if op in ABSOLUTE_OPS:
            if entry is not None and time_ms < entry[1]:
                ignored.append((name, SUPERSEDED))
            elif op == "$setOnce" and entry is not None and not (_known(entry) and entry[2] is None):
                ignored.append((name, UNCHANGED))
            else:
                put(name, None if op == "$unset" else value)
            continue
        # Incremental: $add and array edits.
        if entry is not None and time_ms < entry[0]:
            ignored.append((name, SUPERSEDED))
            continue
        t_abs, t_last = (entry[0], max(entry[1], time_ms)) if entry is not None else (0, time_ms)
        if op == "$add":
            if not _is_number(value):
                ignored.append((name, INVALID_OPERAND))
            elif _known(entry):
                current = entry[2]
                if current is not None and not _is_number(current):
                    ignored.append((name, NOT_A_NUMBER))
                    continue
                total = value if current is None else current + value
                props[name] = [t_abs, t_last, total]
                if current is None or not _same(total, current):
                    delta[name] = total
            else:
                step = value if isinstance(value, int) else int(value) if float(value).is_integer() else None
                if step is None:
                    ignored.append((name, FRACTIONAL_INCREMENT))
                elif step:
                    props[name] = [t_abs, t_last]
                    delta[name] = merge_attribute_value(delta.get(name, _MISSING), {"inc": step})
            continue
        values = list(value) if isinstance(value, list) else [value]
        if _known(entry):
            current = entry[2]
            if current is None and op == "$remove":
                props[name] = [t_abs, t_last, None]
                continue
            current = [] if current is None else current
            if not isinstance(current, list):
                ignored.append((name, NOT_A_LIST))
                continue
            new = _edit_known_list(current, op, values)
            props[name] = [t_abs, t_last, new]
            if not _same(new, entry[2]):
                delta[name] = new
        elif not values or not all(_is_scalar(v) for v in values):
            ignored.append((name, INVALID_OPERAND))
        else:
            # Unknown array: remember which values the job's own edits put in or took out.
            present, absent = (entry[2], entry[3]) if entry is not None and len(entry) == 4 else ([], [])
            done = absent if op == "$remove" else present
            todo = [v for v in _unique(values) if not _contains(done, v)]
            if not todo:
                ignored.append((name, UNCHANGED))
                continue
            if op == "$remove":
                present, absent = [v for v in present if not _contains(todo, v)], absent + todo
            else:
                present, absent = present + todo, [v for v in absent if not _contains(todo, v)]
            props[name] = [t_abs, t_last, present[-MAX_TRACKED_VALUES:], absent[-MAX_TRACKED_VALUES:]]
            edit = {"remove": todo} if op == "$remove" else {"add": todo}
            delta[name] = merge_attribute_value(delta.get(name, _MISSING), edit)

    before = {}
    for name in list(delta):
        entry = start.get(name)
        if _known(entry):
            if not is_operation(delta[name]) and _same(entry[2], delta[name]):
                del delta[name]  # several operations that end where they started
            else:
                before[name] = entry[2]
    new_state = {"p": props, "n": int(state.get("n") or 0) + (1 if delta else 0)}
    return Applied(delta, new_state, before, tuple(ignored))


def attribute_delta(updates, last_sent, selected: frozenset, time_ms: int = 0):
    """``(attributes to send, new state)``: ``apply_updates`` without the details."""
    applied = apply_updates(updates, last_sent, selected, time_ms)
    return applied.attributes, applied.state


def skip_reason(applied: Applied) -> str:
    """Why an event changed nothing: ``unchanged`` unless every update was refused for a reason."""
    reasons = {reason for _, reason in applied.ignored}
    if len(reasons) == 1 and UNCHANGED not in reasons:
        return reasons.pop()
    return SUPERSEDED if reasons == {SUPERSEDED} else UNCHANGED


# --------------------------------------------------------------------------------------------
# Collapsing one user's attribute objects (called by transforms.batching at flush time)


def is_identify_attributes(item: BrazeItem) -> bool:
    return item.kind == ATTRIBUTES and META_KEY in item.obj


def without_meta(item: BrazeItem) -> BrazeItem:
    if item.kind != ATTRIBUTES or META_KEY not in item.obj:
        return item
    return item._replace(obj={k: v for k, v in item.obj.items() if k != META_KEY})


def merge_attribute_items(items: Sequence[BrazeItem]) -> BrazeItem:
    """One user's attribute items (from ``IdentifyDoFn``) → one item with the same effect.

    Items apply in the order the state produced them (their sequence number, not arrival
    order, which Beam does not keep across a shuffle). A key whose final value is the value
    Braze held before the first of them is dropped; if nothing is left the object keeps only
    its identifier (0 data points), so every source is still accounted for by the sink."""
    ordered = sorted(items, key=lambda it: it.obj[META_KEY].get("seq", 0))
    merged: dict = {}
    before: dict = {}
    for it in ordered:
        known_before = it.obj[META_KEY].get("before") or {}
        for key, value in it.obj.items():
            if key == META_KEY:
                continue
            if key in NOT_ATTRIBUTES:
                merged[key] = value
                continue
            if key not in before:
                before[key] = known_before.get(key, _MISSING)
            merged[key] = merge_attribute_value(merged.get(key, _MISSING), value)
    for key, value in before.items():
        if value is not _MISSING and not is_operation(merged[key]) and _same(value, merged[key]):
            del merged[key]
    times = [it.publish_time_ms for it in ordered if it.publish_time_ms is not None]
    return ordered[0]._replace(obj=merged, sources=tuple(s for it in ordered for s in it.sources),
                               publish_time_ms=min(times) if times else None)


# --------------------------------------------------------------------------------------------
# The DoFn


def identify_key(sync: str, user_key: str) -> str:
    """State key of one user in one sync. A string key encodes deterministically, and sync
    names cannot contain the separator."""
    return f"{sync}|{user_key}"


class IdentifyDoFn(beam.DoFn):
    """Keyed by ``identify_key(sync, user)``; holds that user's state for the sync.

    Input values: ``(source, publish_time_ms, event_time_ms, identifier_fields, updates,
    track_items)``. Output: a BrazeItem with the changed attributes (and ``META_KEY``), or
    (tag ``outcomes``) a skip with the reason when nothing changed; then the event's own track
    items, passed through so they reach the packer right behind its attribute update.

    The state expires ``ttl_seconds`` after the user's last update, on a processing-time
    timer read from ``clock`` (injectable: under TestStream the processing-time clock starts
    at 0, not at wall time). Metrics (namespace ``identify``): ``unchanged``, ``superseded``
    and the other skip reasons, and ``expired`` (users forgotten).
    """

    LAST_SENT = ReadModifyWriteStateSpec("last_sent", FastPrimitivesCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, selected_by_sync: Dict[str, Tuple[str, ...]], ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 clock=time.time):
        if not _is_number(ttl_seconds) or ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be a number > 0, got {ttl_seconds!r}")
        self._selected = {sync: frozenset(props) for sync, props in selected_by_sync.items()}
        self._ttl = float(ttl_seconds)
        self._clock = clock
        self._skipped = {}
        self._expired = Metrics.counter("identify", "expired")

    def _skip(self, source: str, sync: str, reason: str) -> Outcome:
        counter = self._skipped.get(reason)
        if counter is None:
            counter = self._skipped[reason] = Metrics.counter("identify", reason)
        counter.inc()
        return Outcome(source, sync, IDENTIFY, SKIPPED, reason)

    def process(self, element, last_sent_state=beam.DoFn.StateParam(LAST_SENT),
                expiry=beam.DoFn.TimerParam(EXPIRY)):
        key, (source, publish_time_ms, time_ms, identifier_fields, updates, *rest) = element
        sync, user_key = key.split("|", 1)
        state = last_sent_state.read()
        applied = apply_updates(updates, state, self._selected[sync], time_ms)
        # The expiry moves with every update, but the timer is only reset when it would move by
        # more than 1% of the TTL: a timer write per event is the costlier part on most runners.
        deadline = self._clock() + self._ttl
        stored = state.get("e") if isinstance(state, dict) else None
        if stored is None or deadline - stored > self._ttl * EXPIRY_SLACK:
            expiry.set(Timestamp.of(deadline))
            stored = deadline
        applied.state["e"] = stored
        last_sent_state.write(applied.state)  # event times advance even when nothing is sent
        if not applied.attributes:
            yield pvalue.TaggedOutput(OUTCOME_TAG, self._skip(source, sync, skip_reason(applied)))
        else:
            obj = dict(identifier_fields)
            obj.update(applied.attributes)
            obj[META_KEY] = {"seq": applied.state["n"], "before": applied.before}
            yield BrazeItem(sync, user_key, ATTRIBUTES, obj, (source,), IDENTIFY, publish_time_ms)
        if rest:
            yield from rest[0]

    @on_timer(EXPIRY)
    def expire(self, last_sent_state=beam.DoFn.StateParam(LAST_SENT)):
        last_sent_state.clear()
        self._expired.inc()
