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
(``transforms.attribute_values.merge_attribute_items``) to collapse one user's updates in a
request into one object without writing a value Braze already holds (A → B → A in one
request sends nothing), then removes the key: Braze refuses ``$``-prefixed names, so it
could never be billed by mistake.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

# The value rules and the collapse of one user's items live in transforms.attribute_values
# (transforms.batching applies them too); their public names stay importable from here.
from transforms.attribute_values import META_KEY, MISSING, NOT_ATTRIBUTES, contains, edit_known_list, \
    is_identify_attributes, is_number, is_operation, is_scalar, merge_attribute_items, merge_attribute_value, \
    same, unique, without_meta
from transforms.records import ATTRIBUTES, IDENTIFY, SKIPPED, BrazeItem, Outcome

__all__ = [
    "OUTCOME_TAG", "META_KEY", "DEFAULT_TTL_SECONDS", "EXPIRY_SLACK", "MAX_TRACKED_VALUES", "ARRAY_ADD_OPS",
    "ABSOLUTE_OPS", "INCREMENTAL_OPS", "OPERATIONS", "NOT_ATTRIBUTES", "UNCHANGED", "SUPERSEDED", "NOT_A_NUMBER",
    "NOT_A_LIST", "INVALID_OPERAND", "FRACTIONAL_INCREMENT", "is_operation", "merge_attribute_value",
    "selected_updates", "Applied", "apply_updates", "attribute_delta", "skip_reason", "is_identify_attributes",
    "without_meta", "merge_attribute_items", "identify_key", "IdentifyDoFn",
]

OUTCOME_TAG = "outcomes"
DEFAULT_TTL_SECONDS = 30 * 24 * 3600.0
EXPIRY_SLACK = 0.01  # the state expires between 99% and 100% of the TTL after the last update
MAX_TRACKED_VALUES = 100  # values remembered per unknown array (Braze keeps at most 100 per array)

ARRAY_ADD_OPS = ("$append", "$postInsert", "$prepend", "$preInsert")
ABSOLUTE_OPS = ("$set", "$unset", "$setOnce")
INCREMENTAL_OPS = ("$add",) + ARRAY_ADD_OPS + ("$remove",)
OPERATIONS = ABSOLUTE_OPS + INCREMENTAL_OPS + ("$clearAll",)
_OPERATION_NAMES = frozenset(OPERATIONS)

# Why an update was not applied (also the outcome reason when nothing was sent).
UNCHANGED = "unchanged"
SUPERSEDED = "superseded"  # older than a newer write of the same property
NOT_A_NUMBER = "not_a_number"  # $add on a value that is not a number
NOT_A_LIST = "not_a_list"  # array edit on a value that is not an array
INVALID_OPERAND = "invalid_operand"  # $add of a non-number; array values Braze cannot add
FRACTIONAL_INCREMENT = "fractional_increment"  # Braze's inc takes integers only


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
            value = unique(value)  # what Braze stores: its arrays hold unique values
        entry = props.get(name)
        props[name] = [time_ms, time_ms, value]
        if not (_known(entry) and same(entry[2], value)):
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
            if not is_number(value):
                ignored.append((name, INVALID_OPERAND))
            elif _known(entry):
                current = entry[2]
                if current is not None and not is_number(current):
                    ignored.append((name, NOT_A_NUMBER))
                    continue
                total = value if current is None else current + value
                props[name] = [t_abs, t_last, total]
                if current is None or not same(total, current):
                    delta[name] = total
            else:
                step = value if isinstance(value, int) else int(value) if float(value).is_integer() else None
                if step is None:
                    ignored.append((name, FRACTIONAL_INCREMENT))
                elif step:
                    props[name] = [t_abs, t_last]
                    delta[name] = merge_attribute_value(delta.get(name, MISSING), {"inc": step})
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
            new = edit_known_list(current, op, values)
            props[name] = [t_abs, t_last, new]
            if not same(new, entry[2]):
                delta[name] = new
        elif not values or not all(is_scalar(v) for v in values):
            ignored.append((name, INVALID_OPERAND))
        else:
            # Unknown array: remember which values the job's own edits put in or took out.
            present, absent = (entry[2], entry[3]) if entry is not None and len(entry) == 4 else ([], [])
            done = absent if op == "$remove" else present
            todo = [v for v in unique(values) if not contains(done, v)]
            if not todo:
                ignored.append((name, UNCHANGED))
                continue
            if op == "$remove":
                present, absent = [v for v in present if not contains(todo, v)], absent + todo
            else:
                present, absent = present + todo, [v for v in absent if not contains(todo, v)]
            props[name] = [t_abs, t_last, present[-MAX_TRACKED_VALUES:], absent[-MAX_TRACKED_VALUES:]]
            edit = {"remove": todo} if op == "$remove" else {"add": todo}
            delta[name] = merge_attribute_value(delta.get(name, MISSING), edit)

    before = {}
    for name in list(delta):
        entry = start.get(name)
        if _known(entry):
            if not is_operation(delta[name]) and same(entry[2], delta[name]):
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
        if not is_number(ttl_seconds) or ttl_seconds <= 0:
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
