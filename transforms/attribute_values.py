"""Braze attribute values as Braze applies them, and merging several into one (pure).

Two users of one set of rules: ``transforms.identify`` decides what a user's update changes
(it compares values and edits arrays the way Braze would), and ``transforms.batching``
collapses one user's attribute objects in a request into one object
(``merge_attribute_items``), which must have the same effect on Braze as sending them in
order. Keeping the rules in one place keeps the two from drifting apart.

Values compare by JSON type as well as value (``same``): Python says ``True == 1 == 1.0``;
Braze does not. Braze arrays hold unique values, and an array edit ``{"add": [...],
"remove": [...]}`` removes first, then adds (a value already present moves to the end).

Each attribute item ``IdentifyDoFn`` emits carries the user's sequence number (``seq``) and
the value Braze held before it for each key where the job knows it (``before``), as fields of
the ``BrazeItem`` beside the object; ``merge_attribute_items`` reads both.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from transforms.records import ATTRIBUTES, BrazeItem

__all__ = ["NOT_ATTRIBUTES", "MISSING", "same", "contains", "is_number", "is_scalar", "is_operation",
           "unique", "edit_known_list", "merge_attribute_value", "is_identify_attributes", "merge_attribute_items"]

# Keys of an attribute object that are not attributes.
NOT_ATTRIBUTES = frozenset(("external_id", "braze_id", "user_alias", "_update_existing_only",
                            "_merge_objects", "push_token_import"))

# "No value given", as distinct from a null value (which removes the attribute in Braze).
MISSING = object()


# --------------------------------------------------------------------------------------------
# Values


def same(a, b) -> bool:
    """Equal and of the same JSON type (Python says True == 1 == 1.0; Braze does not)."""
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is str or kind is int or kind is float or kind is bool or a is None:  # most values
        return a == b
    if isinstance(a, list):
        if len(a) != len(b):
            return False
        for x, y in zip(a, b):  # a loop, not all(generator): lists are compared often (arrays)
            if not same(x, y):
                return False
        return True
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def contains(values: list, value) -> bool:
    return any(same(v, value) for v in values)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_scalar(value) -> bool:
    return isinstance(value, (str, bool)) or is_number(value)


def _is_inc(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "inc" in value


def _is_array_edit(value) -> bool:
    return isinstance(value, dict) and bool(value) and value.keys() <= {"add", "remove"}


def is_operation(value) -> bool:
    """An ``inc`` or array edit, whose effect depends on the value Braze holds."""
    return _is_inc(value) or _is_array_edit(value)


def unique(values: list) -> list:
    """``values`` without repeats (by ``same``), first occurrence kept, in order."""
    out: list = []
    seen = set()  # (type, value) of the scalars kept: a set look-up instead of a scan
    for v in values:
        if isinstance(v, (str, int, float)) or v is None:  # bool is an int; type() keeps it apart
            key = (type(v), v)
            if key not in seen:
                seen.add(key)
                out.append(v)
        elif not contains(out, v):
            out.append(v)
    return out


def edit_known_list(current: list, op: str, values: list) -> list:
    """An Amplitude array operation (``$append``, ``$prepend``, ``$remove``...) applied to an
    array whose value the job knows; Braze then gets the whole new array."""
    if op == "$remove":
        return [v for v in current if not contains(values, v)]
    new = [v for v in unique(values) if not contains(current, v)]
    return new + current if op in ("$prepend", "$preInsert") else current + new


def _apply_array_edit(current: list, edit: dict) -> list:
    """What Braze does: remove, then add (a value already present moves to the end)."""
    added = edit.get("add", [])
    gone = edit.get("remove", []) + added
    return [v for v in current if not contains(gone, v)] + unique(added)


from transforms.braze_facts import INT64_MAX, INT64_MIN  # noqa: E402


def merge_attribute_value(previous, new, dropped: Optional[list] = None):
    """One attribute value with the same effect as sending ``previous`` and then ``new``.

    ``previous`` may be ``MISSING``. Edits of one array combine so that, per value, the later
    edit wins and ``add`` and ``remove`` never name the same value (Braze's order between the
    two within one object is not documented). Two increments whose sum would pass Braze's
    64-bit integers keep the first; the second is noted in ``dropped``."""
    if previous is MISSING:
        return new
    if _is_inc(new):
        if _is_inc(previous):
            total = previous["inc"] + new["inc"]
            if isinstance(total, int) and not INT64_MIN <= total <= INT64_MAX:
                if dropped is not None:
                    dropped.append("dropped_overflowing_increment")
                return previous
            return {"inc": total}
        if previous is None:
            return new["inc"]
        if is_number(previous):
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
                add = [a for a in add if not same(a, v)]
                if not contains(remove, v):
                    remove.append(v)
            for v in new.get("add", []):
                remove = [r for r in remove if not same(r, v)]
                add = [a for a in add if not same(a, v)] + [v]
            return {k: v for k, v in (("add", add), ("remove", remove)) if v}
        return new
    return new


# --------------------------------------------------------------------------------------------
# Collapsing one user's attribute objects (called by transforms.batching at flush time)


def is_identify_attributes(item: BrazeItem) -> bool:
    return item.kind == ATTRIBUTES and item.before is not None


def merge_attribute_items(items: Sequence[BrazeItem], dropped: Optional[list] = None) -> BrazeItem:
    """One user's attribute items (from ``IdentifyDoFn``) → one item with the same effect.

    Items apply in the order the state produced them (their sequence number, not arrival
    order, which Beam does not keep across a shuffle). A key whose final value is the value
    Braze held before the first of them is dropped; if nothing is left the object keeps only
    its identifier (0 data points), so every source is still accounted for by the sink."""
    ordered = sorted(items, key=lambda it: it.seq)
    merged: dict = {}
    before: dict = {}
    for it in ordered:
        known_before = it.before or {}
        for key, value in it.obj.items():
            if key in NOT_ATTRIBUTES:
                merged[key] = value
                continue
            if key not in before:
                before[key] = known_before.get(key, MISSING)
            merged[key] = merge_attribute_value(merged.get(key, MISSING), value, dropped)
    for key, value in before.items():
        if value is not MISSING and not is_operation(merged[key]) and same(value, merged[key]):
            del merged[key]
    times = [it.publish_time_ms for it in ordered if it.publish_time_ms is not None]
    return ordered[0]._replace(obj=merged, sources=tuple(s for it in ordered for s in it.sources),
                               publish_time_ms=min(times) if times else None)
