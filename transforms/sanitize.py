"""Make property values Braze will take, and say what was changed.

Braze refuses a whole event or purchase object for one bad property (braze-api.md §1.5), and
drops every nested-attribute update of a request for one bad nested value (§1.7). Losing a
user's event because one of its properties was 300 characters long is worse than sending it
with that property cut, so values are fixed where the fix is obvious and the loss is small,
and each fix is counted under its own name (``sanitize.<change>``):

=============================  ==============================================================
change                         rule (Braze's limit)
=============================  ==============================================================
``truncated_string``           a string over 255 characters is cut to 255 (events, purchases,
                               attributes and strings inside arrays and objects)
``dropped_property_name``      a property whose name is empty, over 255 characters, starts
                               with ``$``, or is ``time`` / ``event_name`` is left out
``dropped_null``               a null inside a nested value is left out (a null property is
                               simply not sent)
``dropped_nested_key``         a nested-object key with ``.`` or ``$`` or over 255 characters
``dropped_oversized_property`` array/object properties over 100 KB in total: the largest are
                               left out until the rest fits
``dropped_deep_value``         a value nested deeper than 40 levels (Amplitude's own limit)
=============================  ==============================================================

Control characters, right-to-left marks, zero-width characters and text that looks like
instructions are kept as sent: they are valid strings, and this job never interprets them.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import orjson

MAX_STRING_CHARS = 255
MAX_NAME_CHARS = 255
MAX_STRUCTURED_BYTES = 100 * 1024
MAX_DEPTH = 40
RESERVED_PROPERTY_NAMES = frozenset({"time", "event_name"})

Changes = List[str]


def _valid_name(name) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and not name.startswith("$")
            and name not in RESERVED_PROPERTY_NAMES)


def clean_value(value, changes: Changes, depth: int = 0):
    """A value Braze will take, or ``None`` when nothing of it can be kept."""
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            changes.append("truncated_string")
            return value[:MAX_STRING_CHARS]
        return value
    if not isinstance(value, (list, dict)):
        return value
    if depth >= MAX_DEPTH:
        changes.append("dropped_deep_value")
        return None
    if isinstance(value, list):
        cleaned = []
        for element in value:
            if element is None:
                changes.append("dropped_null")
                continue
            element = clean_value(element, changes, depth + 1)
            if element is not None:
                cleaned.append(element)
        return cleaned
    cleaned = {}
    for key, element in value.items():
        if not isinstance(key, str) or not key or "." in key or "$" in key or len(key) > MAX_NAME_CHARS:
            changes.append("dropped_nested_key")
            continue
        if element is None:
            changes.append("dropped_null")
            continue
        element = clean_value(element, changes, depth + 1)
        if element is not None:
            cleaned[key] = element
    return cleaned


def clean_properties(properties: Dict[str, object]) -> Tuple[Dict[str, object], Changes]:
    """Event or purchase ``properties`` Braze will take, and the changes made."""
    changes: Changes = []
    cleaned = {}
    structured = []
    for name, value in properties.items():
        if not _valid_name(name):
            changes.append("dropped_property_name")
            continue
        if value is None:
            continue
        value = clean_value(value, changes)
        if value is None:
            continue
        cleaned[name] = value
        if isinstance(value, (list, dict)):
            structured.append((len(orjson.dumps(value)), name))
    total = sum(size for size, _ in structured)
    for size, name in sorted(structured, reverse=True):
        if total <= MAX_STRUCTURED_BYTES:
            break
        del cleaned[name]
        total -= size
        changes.append("dropped_oversized_property")
    return cleaned, changes


DROP = object()  # clean_attribute: leave the attribute out (a null would remove it in Braze)


def clean_attribute(value) -> Tuple[object, Changes]:
    """One custom attribute value (a plain value, not an operation) Braze will take, or DROP."""
    changes: Changes = []
    if value is None:
        return None, changes  # null removes the attribute: keep it
    cleaned = clean_value(value, changes)
    return (DROP if cleaned is None else cleaned), changes
