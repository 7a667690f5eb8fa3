"""The identify branch: Amplitude user-property changes → Braze attribute objects.

Braze bills every attribute it receives, changed or not, and Amplitude's own Braze stream
sends selected properties "only when they change". So per (sync, user) the job keeps the last
value it sent for each selected property (Beam state, no lookups) and sends only what differs.

Operations (from ``$identify`` events; other events carry a plain snapshot, read as ``$set``):

- ``$set`` → the value, when it differs from the last value sent (types kept: 1 ≠ "1" ≠ True).
- ``$setOnce`` → the value, only when nothing was ever sent for that property.
- ``$unset`` (and the SDK's ``"-"``) → ``null``, once.
- ``$add`` → the new total where the last value sent is known, so a retried request cannot add
  twice; ``{"inc": n}`` where it is not (then the total is unknown until the next ``$set``).
- ``$append``/``$postInsert``/``$prepend``/``$preInsert`` → ``{"add": [...]}``. Braze arrays
  hold unique values and ``add`` puts them at the end, so prepend order and duplicates are not
  kept; ``$remove`` → ``{"remove": [...]}``.
- ``$clearAll`` → ``null`` for every selected property that had a value.

A snapshot never unsets what it omits.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from transforms.records import ATTRIBUTES, IDENTIFY, SKIPPED, BrazeItem, Outcome

OUTCOME_TAG = "outcomes"

_ARRAY_ADD_OPS = ("$append", "$postInsert", "$prepend", "$preInsert")
_UNSET_OPS = ("$unset",)
# Applied in this order within one identify; the SDK keeps one op per property anyway.
_OP_ORDER = ("$clearAll", "$unset", "$setOnce", "$set", "$add") + _ARRAY_ADD_OPS + ("$remove",)
_MISSING = object()


def _same(a, b) -> bool:
    """Equal and of the same JSON type (Python says True == 1 == 1.0; Braze does not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def selected_updates(user_properties: dict, selected: frozenset) -> List[Tuple[str, str, object]]:
    """``(op, property, value)`` for the selected properties an event touches, in apply order."""
    updates = []
    plain = {k: v for k, v in user_properties.items() if not k.startswith("$")}
    for op in _OP_ORDER:
        if op == "$set":
            operands = dict(user_properties.get("$set") or {}) if isinstance(user_properties.get("$set"), dict) else {}
            operands.update(plain)
        elif op == "$clearAll":
            if "$clearAll" in user_properties:
                updates.append(("$clearAll", "", None))
            continue
        else:
            operands = user_properties.get(op)
            if not isinstance(operands, dict):
                continue
        for name, value in operands.items():
            if name in selected:
                updates.append((op, name, value))
    return updates


def attribute_delta(updates: Iterable[Tuple[str, str, object]], last_sent: Dict[str, object], selected: frozenset):
    """Apply updates to the last-sent values; return ``(delta, new_last_sent)``.

    ``delta`` holds only the attributes to send. ``last_sent`` maps each selected property to
    the value Braze now holds as far as the job knows; a property whose value is unknown (after
    an ``inc`` or an array edit on an unknown array) is absent.
    """
    state = dict(last_sent)
    delta: Dict[str, object] = {}

    def set_value(name, value):
        if name in state and _same(state[name], value):
            return
        state[name] = value
        delta[name] = value

    for op, name, value in updates:
        if op == "$clearAll":
            for prop in sorted(selected):
                if state.get(prop) is not None:
                    set_value(prop, None)
        elif op in _UNSET_OPS:
            if state.get(name, _MISSING) is not None:
                state[name] = None
                delta[name] = None
        elif op == "$setOnce":
            if name not in state:
                set_value(name, value)
        elif op == "$set":
            set_value(name, value)
        elif op == "$add":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            known = state.get(name, _MISSING)
            if known is not _MISSING and isinstance(known, (int, float)) and not isinstance(known, bool):
                set_value(name, known + value)
            elif known is None:  # unset: Amplitude starts from 0
                set_value(name, value)
            else:
                previous = delta.get(name)
                increment = value + (previous["inc"] if isinstance(previous, dict) and "inc" in previous else 0)
                delta[name] = {"inc": increment}
                state.pop(name, None)
        elif op in _ARRAY_ADD_OPS or op == "$remove":
            values = _as_list(value)
            key = "remove" if op == "$remove" else "add"
            known = state.get(name, _MISSING)
            if isinstance(known, list):
                new = [v for v in known if not any(_same(v, r) for r in values)] if key == "remove" else (
                    known + [v for v in values if not any(_same(v, k) for k in known)]
                )
                set_value(name, new)
                continue
            edit = delta.get(name)
            if not isinstance(edit, dict) or not ({"add", "remove"} >= edit.keys()):
                edit = {}
            edit.setdefault(key, []).extend(values)
            delta[name] = edit
            state.pop(name, None)
    return delta, state


def identify_key(sync: str, user_key: str) -> str:
    """State key of one user in one sync. A string key encodes deterministically, and sync
    names cannot contain the separator."""
    return f"{sync}|{user_key}"


class IdentifyDoFn(beam.DoFn):
    """Keyed by ``identify_key(sync, user)``; holds that user's last-sent values for the sync.

    Input values: ``(source, publish_time_ms, identifier_fields, updates)``. Output: a BrazeItem
    with the changed attributes, or (tag ``outcomes``) ``skipped/unchanged`` when nothing changed.
    """

    LAST_SENT = ReadModifyWriteStateSpec("last_sent", FastPrimitivesCoder())

    def __init__(self, selected_by_sync: Dict[str, Tuple[str, ...]]):
        self._selected = {sync: frozenset(props) for sync, props in selected_by_sync.items()}
        self._unchanged = Metrics.counter("identify", "unchanged")

    def process(self, element, last_sent_state=beam.DoFn.StateParam(LAST_SENT)):
        key, (source, publish_time_ms, identifier_fields, updates) = element
        sync, user_key = key.split("|", 1)
        last_sent = last_sent_state.read() or {}
        delta, new_state = attribute_delta(updates, last_sent, self._selected[sync])
        if not delta:  # every state change comes with a delta
            self._unchanged.inc()
            yield pvalue.TaggedOutput(OUTCOME_TAG, Outcome(source, sync, IDENTIFY, SKIPPED, "unchanged"))
            return
        last_sent_state.write(new_state)
        obj = dict(identifier_fields)
        obj.update(delta)
        yield BrazeItem(sync, user_key, ATTRIBUTES, obj, (source,), IDENTIFY, publish_time_ms)
