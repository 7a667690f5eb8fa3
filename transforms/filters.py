"""Event filters: a sync's ``events.select`` compiled into one fast predicate.

Pure functions, called per event per sync, so every path is split and every value prepared
once, at compile time; the per-event work is dict lookups and comparisons.

Paths. A condition's ``property`` names any top-level event field (``event_type``,
``user_id``, ``platform``, ...), ``event_properties.X`` or ``user_properties.X``; further dots
walk into nested objects (``event_properties.cart.total``). Amplitude shows nested objects
flattened with dots, so a key that itself contains dots is found too: when the walk misses at
some level, the rest of the path is tried there as one literal key (``event_properties`` →
``"cart.total"``). A path that cannot be followed (absent key, ``null`` or a non-object on the
way) is *missing*.

Operator semantics. Amplitude documents its streaming-filter operators only in part
(``docs/api-facts.md``, A4: the full streaming list is unconfirmed; its segment
operators say ``contains`` is case-insensitive). Where it is silent we take the conservative
reading: a condition holds only when the value clearly satisfies it, and no type coercion.

- ``is``: the value equals the configured value, or any of a configured list. Strings compare
  exactly (case-sensitive). Numbers compare numerically (``1`` is ``1.0``) but never equal a
  string (``"1"`` is not ``1``) or a boolean (``true`` is not ``1``). On a list property, ``is``
  holds when any element equals. A missing or ``null`` property is never anything.
- ``contains``: case-insensitive substring on a string property; on a list property, when any
  string element contains it. Numbers, booleans, objects and missing values contain nothing.
- ``starts_with``: case-insensitive prefix, with the same rules as ``contains``.
- ``greater_than`` / ``greater_or_equal`` / ``less_than`` / ``less_or_equal``: only when the
  property is a number (int or float, not a boolean); numeric strings are not coerced, lists
  do not compare, missing is false.
- ``is_set``: the property is present and not ``null`` (``""``, ``0``, ``false`` and ``[]`` are
  set).
- The negations are exact complements, for every input: ``is_not`` is ``not is``,
  ``does_not_contain`` is ``not contains``, ``is_not_set`` is ``not is_set``. So ``is_not`` and
  ``does_not_contain`` hold for a missing property.

Selectors. ``compile_selectors`` returns a predicate that holds when any selector matches: its
``event_type`` equals the event's exactly (or is ``"*"``) and all its ``where`` conditions hold
(no conditions: every event of the type). No selectors: nothing matches.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Tuple

from transforms.model import Condition, EventSelector

__all__ = ["MISSING", "compile_condition", "compile_path", "compile_selectors", "get_path"]

Predicate = Callable[[dict], bool]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self):
        return "MISSING"  # unpickles to the module singleton


MISSING: Any = _Missing()  # returned by get_path when the path leads nowhere


def _walk(obj, parts: Tuple[str, ...]):
    for i, part in enumerate(parts):
        if obj.__class__ is not dict and not isinstance(obj, dict):
            return MISSING
        value = obj.get(part, MISSING)
        if value is MISSING:
            if i + 1 < len(parts):
                # A flattened key with dots in it ("cart.total"), as Amplitude displays nested objects.
                return obj.get(".".join(parts[i:]), MISSING)
            return MISSING
        obj = value
    return obj


def get_path(event: dict, path: str):
    """The value at a dotted ``path`` in ``event``, or ``MISSING``; ``None`` is returned as is."""
    return _walk(event, tuple(path.split(".")))


def compile_path(path: str) -> Callable[[dict], Any]:
    """A fast getter for a dotted path: ``compile_path(p)(event) == get_path(event, p)``."""
    parts = tuple(path.split("."))
    if len(parts) == 1:
        key = parts[0]

        def get1(event):
            return event.get(key, MISSING)

        return get1
    if len(parts) == 2:
        k0, k1 = parts

        def get2(event):
            inner = event.get(k0, MISSING)
            if inner.__class__ is dict or isinstance(inner, dict):
                value = inner.get(k1, MISSING)
                return value
            if inner is MISSING:
                return event.get(path, MISSING)
            return MISSING

        return get2

    def getn(event):
        return _walk(event, parts)

    return getn


def _is_number(value) -> bool:
    cls = value.__class__
    return cls is int or cls is float or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _typed(value):
    """A hashable key that equals across int/float but never across str/bool/number."""
    if isinstance(value, bool):
        return (bool, value)
    if isinstance(value, (int, float)):
        return (float, value)
    if isinstance(value, str):
        return (str, value)
    return None  # objects, lists, None: never equal to a configured value


def _equals_any(targets: frozenset) -> Callable[[Any], bool]:
    strings = frozenset(t[1] for t in targets if t[0] is str)

    def test(value) -> bool:
        if value.__class__ is str:  # the common case, without building a key
            return value in strings
        if isinstance(value, list):
            return any(_typed(v) in targets for v in value)
        return _typed(value) in targets

    return test


def _text_test(needle: str, starts: bool) -> Callable[[Any], bool]:
    needle = needle.casefold()

    def one(value) -> bool:
        if not isinstance(value, str):
            return False
        hay = value.casefold()
        return hay.startswith(needle) if starts else needle in hay

    def test(value) -> bool:
        if isinstance(value, list):
            return any(one(v) for v in value)
        return one(value)

    return test


def _number_test(op: str, bound) -> Callable[[Any], bool]:
    if op == "greater_than":
        def test(value):
            return _is_number(value) and value > bound
    elif op == "greater_or_equal":
        def test(value):
            return _is_number(value) and value >= bound
    elif op == "less_than":
        def test(value):
            return _is_number(value) and value < bound
    else:  # less_or_equal
        def test(value):
            return _is_number(value) and value <= bound
    return test


def compile_condition(cond: Condition) -> Predicate:
    """A predicate ``event -> bool`` for one condition (semantics in the module docstring)."""
    get = compile_path(cond.property)
    op = cond.op
    if op in ("is_set", "is_not_set"):
        want = op == "is_set"

        def is_set(event):
            value = get(event)
            return (value is not MISSING and value is not None) is want

        return is_set

    if op in ("is", "is_not"):
        values = cond.value if isinstance(cond.value, (tuple, list)) else (cond.value,)
        targets = frozenset(t for t in (_typed(v) for v in values) if t is not None)
        test = _equals_any(targets)
    elif op in ("contains", "does_not_contain", "starts_with"):
        if not isinstance(cond.value, str):
            raise ValueError(f"{op} needs a string value, got {type(cond.value).__name__}")
        test = _text_test(cond.value, starts=op == "starts_with")
    elif op in ("greater_than", "greater_or_equal", "less_than", "less_or_equal"):
        bound = cond.value
        if not _is_number(bound) or (isinstance(bound, float) and not math.isfinite(bound)):
            raise ValueError(f"{op} needs a finite number, got {type(bound).__name__}")
        test = _number_test(op, bound)
    else:
        raise ValueError(f"unknown operator {op!r}")

    # MISSING and None fail every positive test above, so the negations hold for them.
    if op in ("is_not", "does_not_contain"):
        def negated(event):
            return not test(get(event))

        return negated

    def positive(event):
        return test(get(event))

    return positive


def _all_of(preds: Tuple[Predicate, ...]) -> Predicate:
    if len(preds) == 1:
        return preds[0]

    def all_hold(event):
        for p in preds:
            if not p(event):
                return False
        return True

    return all_hold


def compile_selectors(selectors: Tuple[EventSelector, ...]) -> Predicate:
    """A predicate ``event -> bool``: any selector matches (``"*"`` matches every event_type)."""
    by_type: dict = {}  # event_type -> list of predicates, or None meaning "every event of the type"
    wildcard: list = []
    wildcard_all = False
    for sel in selectors:
        pred = _all_of(tuple(compile_condition(c) for c in sel.where)) if sel.where else None
        if sel.event_type == "*":
            if pred is None:
                wildcard_all = True
            else:
                wildcard.append(pred)
        elif pred is None:
            by_type[sel.event_type] = None
        elif sel.event_type not in by_type or by_type[sel.event_type] is not None:
            by_type.setdefault(sel.event_type, []).append(pred)

    if wildcard_all:
        return lambda event: True
    typed = {k: (None if v is None else tuple(v)) for k, v in by_type.items()}
    wild = tuple(wildcard)
    sentinel = ()

    def select(event):
        event_type = event.get("event_type")
        preds = typed.get(event_type, sentinel) if event_type.__class__ is str else sentinel
        if preds is None:
            return True
        for p in preds:
            if p(event):
                return True
        for p in wild:
            if p(event):
                return True
        return False

    return select
