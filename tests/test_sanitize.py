"""Property values Braze would refuse are fixed, and every fix is named."""
import pytest

import math

import orjson

from transforms.attribute_values import NOT_ATTRIBUTES
from transforms.sanitize import (
    DROP, MAX_ATTRIBUTE_BYTES, OMIT, AttributeValue, clean_attribute, clean_attribute_value, clean_attributes,
    clean_properties, cut_string,
)


@pytest.mark.parametrize(
    "properties, cleaned, changes",
    [
        ({"a": "x" * 300}, {"a": "x" * 255}, ["truncated_string"]),
        ({"$a": 1, "": 2, "time": 3, "event_name": 4, "n" * 256: 5, "ok": 6}, {"ok": 6}, ["dropped_property_name"] * 5),
        ({"a": None, "b": 1}, {"b": 1}, []),
        ({"a": {"b.c": 1, "$d": 2, "e": None, "f": ["x" * 300, None]}}, {"a": {"f": ["x" * 255]}},
         ["dropped_nested_key", "dropped_nested_key", "dropped_null", "truncated_string", "dropped_null"]),
        ({"big": ["y" * 250] * 500, "small": [1]}, {"small": [1]}, ["dropped_oversized_property"]),
        # 479 UTF-8 bytes as well as 255 characters, cut on a character boundary
        ({"a": "é" * 255}, {"a": "é" * 239}, ["truncated_string"]),
        ({"a": 18446744073709551615, "b": [1, 2 ** 63], "c": 2 ** 63 - 1}, {"b": [1], "c": 2 ** 63 - 1},
         ["dropped_invalid_number", "dropped_invalid_number"]),
        # kept as sent: control characters, RTL and zero-width marks, instruction-like text
        ({"a": "\x00\x1b[31m\u202eevil\u200b", "b": "Ignore previous instructions"},
         {"a": "\x00\x1b[31m\u202eevil\u200b", "b": "Ignore previous instructions"}, []),
    ],
)
def test_clean_properties(properties, cleaned, changes):
    assert clean_properties(properties) == (cleaned, changes)


def test_depth_bomb_is_cut_at_amplitudes_depth_limit():
    value = 1
    for _ in range(60):
        value = {"k": value}
    cleaned, changes = clean_properties({"deep": value})
    assert changes == ["dropped_deep_value"]
    depth, node = 0, cleaned["deep"]
    while node:
        node, depth = node["k"], depth + 1
    assert depth == 39


def test_attribute_null_is_kept_and_an_unkeepable_value_is_dropped_not_nulled():
    assert clean_attribute(None) == (None, [])
    deep = 1
    for _ in range(50):
        deep = [deep]
    assert clean_attribute(deep)[0] is not None
    assert clean_attribute("z" * 256) == ("z" * 255, ["truncated_string"])
    assert clean_attribute(2 ** 64) == (DROP, ["omitted_integer_out_of_range"])


# ---------------------------------------------------------------------------------------------
# Strings: 255 characters and 479 UTF-8 bytes (docs/api-facts.md, B7)


@pytest.mark.parametrize("text, expected, cut", [
    ("x" * 255, "x" * 255, False),
    ("x" * 256, "x" * 255, True),
    ("\u00e9" * 239, "\u00e9" * 239, False),  # 478 bytes
    ("\u00e9" * 240, "\u00e9" * 239, True),  # 480 bytes: cut on a character, not mid-way
    ("\u65e5" * 160, "\u65e5" * 159, True),  # 3-byte characters: 159 x 3 = 477
    ("a" + "\U0001f600" * 120, "a" + "\U0001f600" * 119, True),  # 4-byte characters: 1 + 476
])
def test_cut_string(text, expected, cut):
    assert cut_string(text) == (expected, cut)
    assert len(expected) <= 255 and len(expected.encode()) <= 479


# ---------------------------------------------------------------------------------------------
# Attribute values (docs/api-facts.md, B6 and B7), one table: value in → value out, changes, omission


def _deep(levels, leaf=1):
    value = leaf
    for _ in range(levels):
        value = {"k": value}
    return value


LONG = "x" * 300
ATTRIBUTE_CASES = [
    # plain values
    ("null removes: kept", None, None, ()),
    ("bool", True, True, ()),
    ("int at the 64-bit edges", 2 ** 63 - 1, 2 ** 63 - 1, ()),
    ("negative int edge", -(2 ** 63), -(2 ** 63), ()),
    ("int over 64-bit signed", 2 ** 63, OMIT, ("omitted_integer_out_of_range",)),
    ("two $adds of u64 max", 2 * 18446744073709551615, OMIT, ("omitted_integer_out_of_range",)),
    ("float", 1.5, 1.5, ()),
    ("infinite float ($add overflow)", math.inf, OMIT, ("omitted_not_finite",)),
    ("NaN", math.nan, OMIT, ("omitted_not_finite",)),
    ("string cut", LONG, "x" * 255, ("truncated_string",)),
    ("multibyte string cut by bytes", "\u65e5" * 200, "\u65e5" * 159, ("truncated_string",)),
    # inc
    ("inc", {"inc": 5}, {"inc": 5}, ()),
    ("inc negative", {"inc": -3}, {"inc": -3}, ()),
    ("inc float", {"inc": 1.5}, OMIT, ("omitted_invalid_increment",)),
    ("inc bool", {"inc": True}, OMIT, ("omitted_invalid_increment",)),
    ("inc beyond 64 bits", {"inc": 2 ** 64}, OMIT, ("omitted_invalid_increment",)),
    # add / remove
    ("add", {"add": ["a", "b"]}, {"add": ["a", "b"]}, ()),
    ("add and remove", {"add": ["a"], "remove": ["b"]}, {"add": ["a"], "remove": ["b"]}, ()),
    ("add keeps the newest 25", {"add": [str(i) for i in range(30)]}, {"add": [str(i) for i in range(5, 30)]},
     ("truncated_array",)),
    ("add cleans values", {"add": [LONG, None, {"o": 1}, 2 ** 70, "ok"]}, {"add": ["x" * 255, "ok"]},
     ("truncated_string", "dropped_null", "dropped_array_element", "dropped_invalid_number")),
    ("remove is not capped", {"remove": [str(i) for i in range(30)]}, {"remove": [str(i) for i in range(30)]}, ()),
    ("add of nothing usable", {"add": [None]}, OMIT, ("dropped_null", "omitted_empty_array_edit")),
    ("add not a list", {"add": "a"}, OMIT, ("omitted_invalid_array_edit",)),
    # flat arrays
    ("flat array", ["a", 1, True], ["a", 1, True], ()),
    ("empty array is meant", [], [], ()),
    ("flat array keeps the newest 25", list(range(2000)), list(range(1975, 2000)), ("truncated_array",)),
    ("flat array cleans values", ["a", None, ["n"], LONG], ["a", "x" * 255],
     ("dropped_null", "dropped_array_element", "truncated_string")),
    ("flat array with nothing usable", [None, ["n"]], OMIT,
     ("dropped_null", "dropped_array_element", "omitted_nothing_left")),
    # nested objects
    ("nested", {"a": {"b": 1}}, {"a": {"b": 1}}, ()),
    ("empty object is meant", {}, {}, ()),
    ("nested keys without $ . or spaces", {"a.b": 1, "$c": 2, "d e": 3, "f\tg": 4, "ok": 5}, {"ok": 5},
     ("dropped_nested_key",) * 4),
    ("nested key over 255 characters", {"k" * 256: 1, "ok": 1}, {"ok": 1}, ("dropped_nested_key",)),
    ("nested key over 479 bytes", {"\u65e5" * 200: 1, "ok": 1}, {"ok": 1}, ("dropped_nested_key",)),
    ("no nulls inside", {"a": None, "b": [1, None], "c": 1}, {"b": [1], "c": 1}, ("dropped_null", "dropped_null")),
    ("nested strings cut", {"a": LONG}, {"a": "x" * 255}, ("truncated_string",)),
    ("nested numbers checked", {"a": 2 ** 64, "b": 1}, {"b": 1}, ("dropped_invalid_number",)),
    ("$time well-formed", {"t": {"$time": "2026-01-15T10:00:00Z"}}, {"t": {"$time": "2026-01-15T10:00:00Z"}}, ()),
    ("$time date only", {"t": {"$time": "2026-01-15"}}, {"t": {"$time": "2026-01-15"}}, ()),
    ("$time malformed", {"t": {"$time": "yesterday"}, "n": 1}, {"n": 1}, ("dropped_invalid_time",)),
    ("$time impossible date", {"t": {"$time": "2026-02-30"}, "n": 1}, {"n": 1}, ("dropped_invalid_time",)),
    ("$time past year 3000", {"t": {"$time": "3001-01-01"}, "n": 1}, {"n": 1}, ("dropped_invalid_time",)),
    ("$time null", {"t": {"$time": None}, "n": 1}, {"n": 1}, ("dropped_invalid_time",)),
    ("$time with other keys", {"t": {"$time": "2026-01-15", "x": 1}, "n": 1}, {"n": 1}, ("dropped_invalid_time",)),
    ("nested with nothing usable", {"$a": 1}, OMIT, ("dropped_nested_key", "omitted_nothing_left")),
    # arrays of objects
    ("array of objects", [{"id": 1}, {"id": 2}], [{"id": 1}, {"id": 2}], ()),
    ("array of objects: no count limit", [{"id": i} for i in range(100)], [{"id": i} for i in range(100)], ()),
    ("array of objects cleaned", [{"id": 1, "$x": 2, "t": {"$time": "no"}}], [{"id": 1}],
     ("dropped_nested_key", "dropped_invalid_time")),
    ("nested over 100 KB", {"a": ["y" * 250] * 450}, OMIT, ("omitted_nested_too_large",)),
    ("array of objects over 100 KB", [{"s": "y" * 250}] * 450, OMIT, ("omitted_nested_too_large",)),
    # not JSON at all
    ("unsupported type", object, OMIT, ("omitted_unsupported_type",)),
]


@pytest.mark.parametrize("name, value, expected, changes", ATTRIBUTE_CASES, ids=[c[0] for c in ATTRIBUTE_CASES])
def test_clean_attribute_value(name, value, expected, changes):
    result = clean_attribute_value(value)
    assert result.value == expected if expected is not OMIT else result.value is OMIT
    assert result.changes == changes
    omitted = [c[len("omitted_"):] for c in changes if c.startswith("omitted_")]
    assert result.omitted == (omitted[0] if omitted else "")
    if result.value is not OMIT:  # what is sent always encodes: no inf/NaN, no int past 64 bits
        orjson.dumps(result.value)


def test_a_nested_value_deeper_than_40_levels_is_cut_there():
    result = clean_attribute_value(_deep(45))
    assert result.changes == ("dropped_deep_value",)
    depth, node = 0, result.value
    while isinstance(node, dict) and node:
        node, depth = node["k"], depth + 1
    assert depth == 39


def test_the_array_length_limit_is_the_workspaces_when_known():
    assert clean_attribute_value(list(range(120)), max_array_length=100) == AttributeValue(
        list(range(20, 120)), ("truncated_array",))
    assert clean_attribute_value({"add": list(range(120))}, max_array_length=500).value == {"add": list(range(120))}
    with pytest.raises(ValueError, match="max_array_length"):
        clean_attribute_value([1], max_array_length=0)


def test_a_long_flat_array_is_also_cut_to_100_kb_keeping_the_newest():
    values = [f"{i:03d}" + "y" * 250 for i in range(500)]  # ~128 KB in all
    result = clean_attribute_value(values, max_array_length=500)
    assert result.changes == ("truncated_array",)
    assert len(orjson.dumps(result.value)) <= MAX_ATTRIBUTE_BYTES
    assert result.value == values[-len(result.value):] and len(result.value) > 300


def test_a_whole_attributes_object_keeps_identifiers_and_reports_omissions():
    obj = {"external_id": "u-1", "_update_existing_only": True, "plan": LONG, "total": math.inf,
           "tags": {"add": ["a"]}, "gone": None}
    cleaned, changes, omitted = clean_attributes(obj, NOT_ATTRIBUTES)
    assert cleaned == {"external_id": "u-1", "_update_existing_only": True, "plan": "x" * 255,
                       "tags": {"add": ["a"]}, "gone": None}
    assert changes == ("truncated_string", "omitted_not_finite")
    assert omitted == (("total", "not_finite"),)
