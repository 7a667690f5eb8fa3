"""Identify's pure operations: Amplitude user-property operations → Braze attribute values.

Braze bills every attribute it receives, changed or not, and does not order separate
requests (docs/api-facts.md, B17); Amplitude's own Braze stream sends selected properties
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

A property's state entry is one of three records (``Known``, ``Unknown``, ``TrackedEdits``),
stored in the user's state as a JSON list (``stored``) and read back by ``entry_of``, which
tells them apart by length: the form every running job's state already has.

No Beam here: ``transforms.identify`` (the DoFn) calls these, and the tests drive them with
tables.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

from apache_beam.metrics import Metrics

# The value rules and the collapse of one user's items live in transforms.attribute_values
# (transforms.batching applies them too); their public names stay importable from here.
from transforms.attribute_values import MISSING, NOT_ATTRIBUTES, contains, edit_known_list, \
    is_identify_attributes, is_number, is_operation, is_scalar, merge_attribute_items, merge_attribute_value, \
    same, unique
from transforms.braze_facts import INT64_MAX, INT64_MIN, MAX_ARRAY_LENGTH
from transforms.sanitize import DEFAULT_MAX_ARRAY_LENGTH, OMIT, clean_attribute_value, clean_value

__all__ = [
    "MAX_TRACKED_VALUES", "ARRAY_ADD_OPS", "ABSOLUTE_OPS", "INCREMENTAL_OPS", "OPERATIONS", "NOT_ATTRIBUTES",
    "UNCHANGED", "SUPERSEDED", "NOT_A_NUMBER", "NOT_A_LIST", "INVALID_OPERAND", "FRACTIONAL_INCREMENT",
    "NUMBER_OUT_OF_RANGE", "is_operation", "merge_attribute_value", "in_braze_number_range", "selected_updates",
    "Known", "Unknown", "TrackedEdits", "entry_of", "stored", "Applied", "apply_updates", "attribute_delta",
    "skip_reason", "clean_updates", "is_identify_attributes", "merge_attribute_items",
]

MAX_TRACKED_VALUES = MAX_ARRAY_LENGTH  # values remembered per unknown array (Braze keeps at most this many)

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
NUMBER_OUT_OF_RANGE = "number_out_of_range"  # beyond Braze's 64-bit integers, or not finite


def in_braze_number_range(value) -> bool:
    """A number Braze can store: a 64-bit signed integer or a finite float (docs/api-facts.md, B7)."""
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    return is_number(value)


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


# A property's state entry. Both times are event times in milliseconds: ``set_ms`` of the last
# absolute write ($set, $unset, $setOnce, $clearAll), ``changed_ms`` of the last write of any kind.


class Known(NamedTuple):
    """Braze holds ``value`` (None: no value), as far as the job knows."""

    set_ms: int
    changed_ms: int
    value: object


class Unknown(NamedTuple):
    """Braze holds a value the job does not know (an ``inc`` was sent to an unknown number)."""

    set_ms: int
    changed_ms: int


class TrackedEdits(NamedTuple):
    """An array the job never saw whole: the values its own edits put in and took out, so the
    same ``add`` or ``remove`` is not sent twice."""

    set_ms: int
    changed_ms: int
    present: list
    absent: list


Entry = Union[Known, Unknown, TrackedEdits]
_ENTRY_BY_LENGTH = {3: Known, 2: Unknown, 4: TrackedEdits}


def entry_of(stored) -> Optional[Entry]:
    """A stored entry (a JSON list) → its record; None for none or a form this code does not know."""
    if not isinstance(stored, (list, tuple)):
        return None
    kind = _ENTRY_BY_LENGTH.get(len(stored))
    return kind(*stored) if kind is not None else None


def stored(entry: Entry) -> list:
    """A record → the JSON list the state holds (the format running jobs already have)."""
    return list(entry)


def _known(entry) -> bool:
    return isinstance(entry, Known)


def apply_updates(updates: Iterable[Tuple[str, str, object]], state: Optional[dict], selected: frozenset,
                  time_ms: int = 0, max_array_length: Optional[int] = None) -> Applied:
    """Apply one event's updates (at event time ``time_ms``) to a user's state.

    ``max_array_length``: a known array keeps only its newest values, as Braze's own arrays do
    (docs/api-facts.md, B6), so the whole array the job sends never outgrows Braze's limit."""
    state = state if isinstance(state, dict) else {}
    props: Dict[str, Entry] = {}
    for name, value in (state.get("p") or {}).items():
        entry = entry_of(value) if name in selected else None
        if entry is not None:
            props[name] = entry
    start = dict(props)
    delta: Dict[str, object] = {}
    ignored: List[Tuple[str, str]] = []

    def put(name, value):
        if isinstance(value, list):
            value = unique(value)  # what Braze stores: its arrays hold unique values
            if max_array_length is not None and len(value) > max_array_length:
                value = value[-max_array_length:]
        entry = props.get(name)
        props[name] = Known(time_ms, time_ms, value)
        if not (_known(entry) and same(entry.value, value)):
            delta[name] = value

    for op, name, value in updates:
        if op == "$clearAll":
            for prop in sorted(selected):
                entry = props.get(prop)
                if _known(entry) and entry.value is None:
                    continue
                if entry is not None and time_ms < entry.changed_ms:
                    ignored.append((prop, SUPERSEDED))
                else:
                    put(prop, None)
            continue
        if name not in selected or op not in OPERATIONS:
            continue
        entry = props.get(name)
        if op in ABSOLUTE_OPS:
            if entry is not None and time_ms < entry.changed_ms:
                ignored.append((name, SUPERSEDED))
            elif op == "$setOnce" and entry is not None and not (_known(entry) and entry.value is None):
                ignored.append((name, UNCHANGED))
            else:
                put(name, None if op == "$unset" else value)
            continue
        # Incremental: $add and array edits.
        if entry is not None and time_ms < entry.set_ms:
            ignored.append((name, SUPERSEDED))
            continue
        t_abs, t_last = (entry.set_ms, max(entry.changed_ms, time_ms)) if entry is not None else (0, time_ms)
        if op == "$add":
            if not is_number(value):
                ignored.append((name, INVALID_OPERAND))
            elif _known(entry):
                current = entry.value
                if current is not None and not is_number(current):
                    ignored.append((name, NOT_A_NUMBER))
                    continue
                total = value if current is None else current + value
                if not in_braze_number_range(total):
                    ignored.append((name, NUMBER_OUT_OF_RANGE))
                    continue
                props[name] = Known(t_abs, t_last, total)
                if current is None or not same(total, current):
                    delta[name] = total
            else:
                step = value if isinstance(value, int) else int(value) if float(value).is_integer() else None
                if step is None:
                    ignored.append((name, FRACTIONAL_INCREMENT))
                elif step:
                    merged = merge_attribute_value(delta.get(name, MISSING), {"inc": step})
                    if not in_braze_number_range(merged["inc"] if isinstance(merged, dict) else merged):
                        ignored.append((name, NUMBER_OUT_OF_RANGE))
                        continue
                    props[name] = Unknown(t_abs, t_last)
                    delta[name] = merged
            continue
        values = list(value) if isinstance(value, list) else [value]
        if _known(entry):
            current = entry.value
            if current is None and op == "$remove":
                props[name] = Known(t_abs, t_last, None)
                continue
            current = [] if current is None else current
            if not isinstance(current, list):
                ignored.append((name, NOT_A_LIST))
                continue
            new = edit_known_list(current, op, values)
            if max_array_length is not None and len(new) > max_array_length:
                new = new[-max_array_length:]
            props[name] = Known(t_abs, t_last, new)
            if not same(new, entry.value):
                delta[name] = new
        elif not values or not all(is_scalar(v) for v in values):
            ignored.append((name, INVALID_OPERAND))
        else:
            # Unknown array: remember which values the job's own edits put in or took out.
            present, absent = (entry.present, entry.absent) if isinstance(entry, TrackedEdits) else ([], [])
            done = absent if op == "$remove" else present
            todo = [v for v in unique(values) if not contains(done, v)]
            if not todo:
                ignored.append((name, UNCHANGED))
                continue
            if op == "$remove":
                present, absent = [v for v in present if not contains(todo, v)], absent + todo
            else:
                present, absent = present + todo, [v for v in absent if not contains(todo, v)]
            props[name] = TrackedEdits(t_abs, t_last, present[-MAX_TRACKED_VALUES:], absent[-MAX_TRACKED_VALUES:])
            edit = {"remove": todo} if op == "$remove" else {"add": todo}
            delta[name] = merge_attribute_value(delta.get(name, MISSING), edit)

    before = {}
    for name in list(delta):
        entry = start.get(name)
        if _known(entry):
            if not is_operation(delta[name]) and same(entry.value, delta[name]):
                del delta[name]  # several operations that end where they started
            else:
                before[name] = entry.value
    new_state = {"p": {name: stored(entry) for name, entry in props.items()},
                 "n": int(state.get("n") or 0) + (1 if delta else 0)}
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


def clean_updates(updates: Iterable[Tuple[str, str, object]], max_array_length: Optional[int] = None):
    """``(updates Braze can take, [(property, reason)] refused)``: operands sanitised as event
    properties are (``transforms.sanitize``: long strings cut, invalid nested keys and nulls
    dropped), and values no fix can make sendable refused, never sent as null (which would
    delete the attribute). Each fix and refusal is counted (``sanitize.<change>``)."""
    kept, refused = [], []
    for op, name, value in updates:
        if op in ("$set", "$setOnce"):
            result = clean_attribute_value(value, max_array_length or DEFAULT_MAX_ARRAY_LENGTH)
            _count(*result.changes)
            if result.value is OMIT:
                refused.append((name, result.omitted))
                continue
            value = result.value
        elif op == "$add":
            if isinstance(value, int) and not isinstance(value, bool) and not in_braze_number_range(value):
                refused.append((name, NUMBER_OUT_OF_RANGE))
                continue
        elif op in ARRAY_ADD_OPS or op == "$remove":
            values = value if isinstance(value, list) else [value]
            changes: List[str] = []
            cleaned_values = [clean_value(v, changes) for v in values]
            _count(*changes)
            cleaned_values = [v for v in cleaned_values if v is not None and _numbers_in_range(v)]
            if not cleaned_values:
                refused.append((name, INVALID_OPERAND))
                continue
            value = cleaned_values if isinstance(value, list) else cleaned_values[0]
        kept.append((op, name, value))
    return kept, refused


def _numbers_in_range(value) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, (int, float)):
        return in_braze_number_range(value)
    children = value.values() if isinstance(value, dict) else value
    return all(_numbers_in_range(v) for v in children)


_COUNTERS: Dict[str, object] = {}


def _count(*changes: str) -> None:
    for change in changes:
        counter = _COUNTERS.get(change)
        if counter is None:
            counter = _COUNTERS[change] = Metrics.counter("sanitize", change)
        counter.inc()
