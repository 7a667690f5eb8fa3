"""Make property and attribute values Braze will take, and say what was changed.

Braze refuses a whole event or purchase object for one bad property (docs/api-facts.md, B5), and
drops every nested-attribute update of a request for one bad nested value (B6). Losing a
user's event because one of its properties was 300 characters long is worse than sending it
with that property cut, so values are fixed where the fix is obvious and the loss is small,
and each fix is counted under its own name (``sanitize.<change>``):

=============================  ==============================================================
change                         rule (Braze's limit)
=============================  ==============================================================
``truncated_string``           a string over 255 characters or 479 UTF-8 bytes is cut to fit,
                               on a character boundary (B7: Braze truncates past either;
                               events, purchases, attributes, strings inside arrays/objects)
``dropped_property_name``      a property whose name is empty, over 255 characters, starts
                               with ``$``, or is ``time`` / ``event_name`` is left out
``dropped_null``               a null inside a nested value or an array is left out (a null
                               property is simply not sent)
``dropped_nested_key``         a nested-object key with ``.`` or ``$`` or over 255 characters
                               (in an attribute also with whitespace, B6)
``dropped_oversized_property`` array/object properties over 100 KB in total: the largest are
                               left out until the rest fits
``dropped_deep_value``         a value nested deeper than 40 levels (Amplitude's own limit)
``dropped_invalid_number``     an integer outside 64-bit signed range or a float that is not
                               finite, inside a value (B7: NaN/Infinity are not JSON, and a
                               JSON encoder would write ``null``)
``dropped_invalid_time``       (attributes) a nested ``{"$time": ...}`` that is not an ISO 8601
                               time in years 1-3000 (B6: one bad ``$time`` drops every
                               nested update of the request)
``dropped_array_element``      (attributes) an object or array inside a flat array (B7:
                               flat arrays hold plain values)
``truncated_array``            (attributes) a flat array, or the values of an ``add``, over
                               the array length limit: the newest are kept, as Braze's FIFO
                               does (B6); also cut to 100 KB
``omitted_<reason>``           (attributes) the whole value left out, never sent as ``null``
                               (which would delete the attribute): ``integer_out_of_range``,
                               ``not_finite``, ``invalid_increment``, ``invalid_array_edit``,
                               ``empty_array_edit``, ``nested_too_large``, ``nothing_left``,
                               ``unsupported_type``
=============================  ==============================================================

Where Braze's documentation is silent or UNCONFIRMED, the safe side (the smaller limit, leaving a value
out rather than sending what Braze might refuse for the whole request):

* 100 KB is read as 100,000 bytes of compact JSON, the smaller reading (B7).
* Flat arrays hold at most ``DEFAULT_MAX_ARRAY_LENGTH`` (25) values unless the caller knows
  the workspace's setting (B6: 25 by default); which end Braze keeps of a longer whole-array
  set is UNCONFIRMED, so the job cuts it itself and keeps the newest, as an ``add`` would.
* Numbers and booleans in flat arrays are kept (only strings are documented, UNCONFIRMED):
  identify sends what Amplitude holds, and dropping them would lose data for certain.
* ``$time`` is accepted in ISO 8601 only (Braze lists other date formats for flat attributes;
  their use inside ``$time`` is not documented).
* A top-level ``{"$time": ...}`` is treated as a nested object (UNCONFIRMED at top level).

Control characters, right-to-left marks, zero-width characters and text that looks like
instructions are kept as sent: they are valid strings, and this job never interprets them.
"""
from __future__ import annotations

import datetime
import math
import re
from typing import Dict, FrozenSet, List, NamedTuple, Tuple

import orjson

__all__ = ["MAX_STRING_CHARS", "MAX_STRING_BYTES", "DEFAULT_MAX_ARRAY_LENGTH", "MAX_ATTRIBUTE_BYTES", "OMIT",
           "DROP", "cut_string", "clean_value", "clean_properties", "AttributeValue", "clean_attribute_value",
           "clean_attributes", "clean_attribute"]

from transforms.braze_facts import INT64_MAX, INT64_MIN, MAX_NAME_CHARS, MAX_STRING_BYTES, MAX_STRING_CHARS  # noqa: E402
from transforms.braze_facts import MAX_PROPERTIES_BYTES as MAX_STRUCTURED_BYTES  # noqa: E402
from transforms.braze_facts import RESERVED_EVENT_PROPERTIES as RESERVED_PROPERTY_NAMES  # noqa: E402

MAX_DEPTH = 40

Changes = List[str]


def cut_string(text: str) -> Tuple[str, bool]:
    """``text`` within 255 characters and 479 UTF-8 bytes, cut on a character boundary, and
    whether it was cut."""
    if len(text) <= MAX_STRING_CHARS and (len(text) * 4 <= MAX_STRING_BYTES
                                          or len(text.encode("utf-8", "surrogatepass")) <= MAX_STRING_BYTES):
        return text, False
    text = text[:MAX_STRING_CHARS]
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_STRING_BYTES:
        text = encoded[:MAX_STRING_BYTES].decode("utf-8", "ignore")
    return text, True


def _valid_number(value) -> bool:
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    return math.isfinite(value)


def _valid_name(name) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and not name.startswith("$")
            and name not in RESERVED_PROPERTY_NAMES)


def clean_value(value, changes: Changes, depth: int = 0, attribute: bool = False):
    """A value Braze will take, or ``None`` when nothing of it can be kept.

    ``attribute``: the value is inside a nested custom attribute, where keys may hold no
    whitespace and ``{"$time": "<ISO 8601>"}`` is a time (docs/api-facts.md, B6, B7)."""
    if isinstance(value, str):
        value, cut = cut_string(value)
        if cut:
            changes.append("truncated_string")
        return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        if _valid_number(value):
            return value
        changes.append("dropped_invalid_number")
        return None
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
            element = clean_value(element, changes, depth + 1, attribute)
            if element is not None:
                cleaned.append(element)
        return cleaned
    if attribute and "$time" in value:
        if len(value) == 1 and _valid_time(value["$time"]):
            return value
        changes.append("dropped_invalid_time")
        return None
    cleaned = {}
    for key, element in value.items():
        if not _valid_nested_key(key, attribute):
            changes.append("dropped_nested_key")
            continue
        if element is None:
            changes.append("dropped_null")
            continue
        element = clean_value(element, changes, depth + 1, attribute)
        if element is not None:
            cleaned[key] = element
    return cleaned


_WHITESPACE = re.compile(r"\s")


def _valid_nested_key(key, attribute: bool) -> bool:
    if not isinstance(key, str) or not key or "." in key or "$" in key or len(key) > MAX_NAME_CHARS:
        return False
    return not attribute or (cut_string(key)[0] == key and not _WHITESPACE.search(key))


# An ISO 8601 date, optionally with a time and a zone; checked again by datetime below.
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?")


def _valid_time(text) -> bool:
    """An ISO 8601 time in years 1 to 3000 (Braze does not store nested times past 3000)."""
    if not isinstance(text, str) or not _ISO_TIME.fullmatch(text):
        return False
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return False
    return when.year <= 3000


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


# --------------------------------------------------------------------------------------------
# Custom attribute values, as identify sends them


from transforms.braze_facts import DEFAULT_ARRAY_LENGTH as DEFAULT_MAX_ARRAY_LENGTH  # noqa: E402
from transforms.braze_facts import MAX_ATTRIBUTE_BYTES  # noqa: E402
OMIT = object()  # leave the attribute out of the object (a null would delete it in Braze)
DROP = OMIT  # the older name


class AttributeValue(NamedTuple):
    """One attribute value made acceptable to Braze.

    ``value`` is what to send, or ``OMIT``: leave the attribute out of the object. ``changes``
    names every fix and, when omitted, ``omitted_<reason>``; count each as
    ``sanitize.<change>``. ``omitted`` is the reason, "" when the value is sent."""

    value: object
    changes: Tuple[str, ...] = ()
    omitted: str = ""


def _omit(changes: Changes, reason: str) -> AttributeValue:
    return AttributeValue(OMIT, tuple(changes) + (f"omitted_{reason}",), reason)


def _json_bytes(value) -> int:
    return len(orjson.dumps(value))


def clean_attribute_value(value, max_array_length: int = DEFAULT_MAX_ARRAY_LENGTH) -> AttributeValue:
    """One custom attribute value as identify would send it: a plain value, an array (flat or of
    objects), a nested object, ``{"inc": n}``, or ``{"add": [...]}`` / ``{"remove": [...]}``
    (both may appear). ``None`` stays ``None`` (it removes the attribute, on purpose). Pure; see
    the module docstring for every rule and the safe side taken where Braze is silent."""
    if max_array_length is not DEFAULT_MAX_ARRAY_LENGTH and (
            isinstance(max_array_length, bool) or not isinstance(max_array_length, int) or max_array_length < 1):
        raise ValueError(f"max_array_length must be an integer >= 1, got {max_array_length!r}")
    if type(value) is str:  # most values: checked first, and a short one needs no cut
        if len(value) * 4 <= MAX_STRING_BYTES:
            return AttributeValue(value)
        value, cut = cut_string(value)
        return AttributeValue(value, ("truncated_string",) if cut else ())
    changes: Changes = []
    if value is None or isinstance(value, bool):
        return AttributeValue(value)
    if isinstance(value, int):
        return AttributeValue(value) if _valid_number(value) else _omit(changes, "integer_out_of_range")
    if isinstance(value, float):
        return AttributeValue(value) if math.isfinite(value) else _omit(changes, "not_finite")
    if isinstance(value, str):
        value, cut = cut_string(value)
        return AttributeValue(value, ("truncated_string",) if cut else ())
    if isinstance(value, dict):
        if value.keys() == {"inc"}:
            step = value["inc"]
            if isinstance(step, int) and not isinstance(step, bool) and _valid_number(step):
                return AttributeValue(value)
            return _omit(changes, "invalid_increment")
        if value and value.keys() <= {"add", "remove"}:
            return _array_edit(value, max_array_length, changes)
        return _nested(value, changes)
    if isinstance(value, list):
        if value and all(isinstance(element, dict) for element in value):
            return _nested(value, changes)  # an array of objects: no count limit, 100 KB
        return _flat_array(value, max_array_length, changes)
    return _omit(changes, "unsupported_type")


def _nested(value, changes: Changes) -> AttributeValue:
    cleaned = clean_value(value, changes, attribute=True)
    if cleaned is None or (value and not cleaned):  # all of it dropped: {} would erase the stored one
        return _omit(changes, "nothing_left")
    if _json_bytes(cleaned) > MAX_ATTRIBUTE_BYTES:
        # Braze would drop the update silently (B6); cutting keys would change its meaning.
        return _omit(changes, "nested_too_large")
    return AttributeValue(cleaned, tuple(changes))


def _flat_values(values: list, changes: Changes) -> list:
    """The plain values of a flat array, each one fixed or dropped."""
    out = []
    for element in values:
        if element is None:
            changes.append("dropped_null")
        elif isinstance(element, (dict, list)):
            changes.append("dropped_array_element")
        else:
            element = clean_value(element, changes)
            if element is not None:
                out.append(element)
    return out


def _newest(values: list, max_length: int, changes: Changes) -> list:
    """The newest (last) values that fit the length limit and ``MAX_ATTRIBUTE_BYTES``."""
    kept = values[-max_length:]
    while kept and _json_bytes(kept) > MAX_ATTRIBUTE_BYTES:
        kept = kept[max(1, len(kept) // 10):]  # about 10% at a time: a few encodes, not one per value
    if len(kept) < len(values):
        changes.append("truncated_array")
    return kept


def _flat_array(value: list, max_length: int, changes: Changes) -> AttributeValue:
    values = _flat_values(value, changes)
    if value and not values:  # an empty array would erase the stored one; [] itself is meant
        return _omit(changes, "nothing_left")
    return AttributeValue(_newest(values, max_length, changes), tuple(changes))


def _array_edit(value: dict, max_length: int, changes: Changes) -> AttributeValue:
    edit = {}
    for op in ("add", "remove"):
        if op not in value:
            continue
        if not isinstance(value[op], list):
            return _omit(changes, "invalid_array_edit")
        values = _flat_values(value[op], changes)
        if op == "add":
            values = _newest(values, max_length, changes)  # Braze would keep only the newest anyway
        if values:
            edit[op] = values
    if not edit:
        return _omit(changes, "empty_array_edit")
    return AttributeValue(edit, tuple(changes))


def clean_attributes(obj: dict, not_attributes: FrozenSet[str] = frozenset(),
                     max_array_length: int = DEFAULT_MAX_ARRAY_LENGTH):
    """A whole attributes object: ``(object to send, changes, ((name, reason), ...) omitted)``.

    Keys in ``not_attributes`` (identifiers, control fields; ``transforms.attribute_values.
    NOT_ATTRIBUTES``) are kept as they are; every other value goes through
    ``clean_attribute_value``."""
    cleaned, changes, omitted = {}, [], []
    for name, value in obj.items():
        if name in not_attributes:
            cleaned[name] = value
            continue
        result = clean_attribute_value(value, max_array_length)
        changes.extend(result.changes)
        if result.value is OMIT:
            omitted.append((name, result.omitted))
        else:
            cleaned[name] = result.value
    return cleaned, tuple(changes), tuple(omitted)


def clean_attribute(value) -> Tuple[object, Changes]:
    """``clean_attribute_value`` in the older shape: ``(value or DROP, changes)``."""
    result = clean_attribute_value(value)
    return result.value, list(result.changes)
