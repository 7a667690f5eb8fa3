"""Property values Braze would refuse are fixed, and every fix is named."""
import pytest

from transforms.sanitize import DROP, clean_attribute, clean_properties


@pytest.mark.parametrize(
    "properties, cleaned, changes",
    [
        ({"a": "x" * 300}, {"a": "x" * 255}, ["truncated_string"]),
        ({"$a": 1, "": 2, "time": 3, "event_name": 4, "n" * 256: 5, "ok": 6}, {"ok": 6}, ["dropped_property_name"] * 5),
        ({"a": None, "b": 1}, {"b": 1}, []),
        ({"a": {"b.c": 1, "$d": 2, "e": None, "f": ["x" * 300, None]}}, {"a": {"f": ["x" * 255]}},
         ["dropped_nested_key", "dropped_nested_key", "dropped_null", "truncated_string", "dropped_null"]),
        ({"big": ["y" * 250] * 500, "small": [1]}, {"small": [1]}, ["dropped_oversized_property"]),
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
