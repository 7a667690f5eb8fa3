"""Event filters: every operator on present, missing, null, list, nested and mistyped values."""
import pickle

import pytest

from pipeline.config import OPERATORS, Condition, EventSelector, parse_syncs
from transforms.filters import MISSING, compile_condition, compile_path, compile_selectors, get_path

EVENT = {
    "event_type": "Order Completed",
    "user_id": "u1",
    "device_id": "d1",
    "platform": "iOS",
    "event_properties": {
        "total": 42.5,
        "count": 3,
        "zero": 0,
        "sku": "SKU-123",
        "name": "Spring Sale Shoes",
        "numeric_text": "100",
        "flag": True,
        "off": False,
        "empty": "",
        "nothing": None,
        "tags": ["Red", "big", 7],
        "numbers": [1, 2],
        "cart": {"total": 10, "items": {"first": "hat"}},
        "flat.key": "dotted",
        "obj": {"a": 1},
    },
    "user_properties": {"plan": "Pro", "age": 30, "email": "a@example.com", "crm": {"id": "C1"}},
}

# (property, op, value, expected on EVENT)
CASES = [
    # is / is_not: exact strings, numeric numbers, no coercion, lists of values, lists on the event
    ("platform", "is", "iOS", True),
    ("platform", "is", "ios", False),  # case-sensitive
    ("platform", "is", ("Android", "iOS"), True),
    ("platform", "is", ("Android", "Web"), False),
    ("event_properties.count", "is", 3, True),
    ("event_properties.count", "is", 3.0, True),  # 3 == 3.0
    ("event_properties.count", "is", "3", False),  # "3" != 3
    ("event_properties.numeric_text", "is", 100, False),
    ("event_properties.numeric_text", "is", "100", True),
    ("event_properties.flag", "is", True, True),
    ("event_properties.flag", "is", 1, False),  # a boolean is not a number
    ("event_properties.count", "is", True, False),
    ("event_properties.off", "is", 0, False),
    ("event_properties.zero", "is", False, False),
    ("event_properties.empty", "is", "", True),
    ("event_properties.tags", "is", "big", True),  # any element
    ("event_properties.tags", "is", "red", False),  # elements exact too
    ("event_properties.tags", "is", 7.0, True),
    ("event_properties.tags", "is", "7", False),
    ("event_properties.obj", "is", "a", False),
    ("event_properties.nothing", "is", "x", False),
    ("event_properties.absent", "is", "x", False),
    ("platform", "is_not", "iOS", False),
    ("platform", "is_not", "Android", True),
    ("platform", "is_not", ("Android", "iOS"), False),
    ("event_properties.count", "is_not", 3.0, False),
    ("event_properties.count", "is_not", "3", True),
    ("event_properties.tags", "is_not", "big", False),
    ("event_properties.nothing", "is_not", "x", True),
    ("event_properties.absent", "is_not", "x", True),  # missing: is_not holds
    # contains / does_not_contain: case-insensitive substring; lists: any string element
    ("event_properties.name", "contains", "sale", True),
    ("event_properties.name", "contains", "SALE SH", True),
    ("event_properties.name", "contains", "winter", False),
    ("event_properties.tags", "contains", "re", True),
    ("event_properties.tags", "contains", "BIG", True),
    ("event_properties.tags", "contains", "7", False),  # numbers contain nothing
    ("event_properties.count", "contains", "3", False),
    ("event_properties.flag", "contains", "true", False),
    ("event_properties.obj", "contains", "a", False),
    ("event_properties.nothing", "contains", "x", False),
    ("event_properties.absent", "contains", "x", False),
    ("event_properties.name", "does_not_contain", "sale", False),
    ("event_properties.name", "does_not_contain", "winter", True),
    ("event_properties.tags", "does_not_contain", "big", False),
    ("event_properties.count", "does_not_contain", "3", True),
    ("event_properties.absent", "does_not_contain", "x", True),
    ("event_properties.nothing", "does_not_contain", "x", True),
    # starts_with: case-insensitive prefix
    ("event_properties.sku", "starts_with", "sku-", True),
    ("event_properties.sku", "starts_with", "123", False),
    ("event_properties.tags", "starts_with", "BI", True),
    ("event_properties.count", "starts_with", "3", False),
    ("event_properties.absent", "starts_with", "x", False),
    ("event_properties.nothing", "starts_with", "x", False),
    # comparisons: numbers only
    ("event_properties.total", "greater_than", 42, True),
    ("event_properties.total", "greater_than", 42.5, False),
    ("event_properties.total", "greater_or_equal", 42.5, True),
    ("event_properties.total", "less_than", 43, True),
    ("event_properties.total", "less_than", 42.5, False),
    ("event_properties.total", "less_or_equal", 42.5, True),
    ("event_properties.zero", "greater_or_equal", 0, True),
    ("event_properties.zero", "less_than", 0, False),
    ("event_properties.numeric_text", "greater_than", 1, False),  # numeric strings never compare
    ("event_properties.numeric_text", "less_than", 1000, False),
    ("event_properties.flag", "greater_than", 0, False),  # booleans are not numbers
    ("event_properties.off", "less_than", 1, False),
    ("event_properties.numbers", "greater_than", 0, False),  # lists do not compare
    ("event_properties.nothing", "greater_than", 0, False),
    ("event_properties.absent", "greater_than", -1e9, False),
    ("event_properties.absent", "less_or_equal", 1e9, False),
    # is_set / is_not_set: present and not null
    ("event_properties.total", "is_set", None, True),
    ("event_properties.empty", "is_set", None, True),
    ("event_properties.off", "is_set", None, True),
    ("event_properties.zero", "is_set", None, True),
    ("event_properties.nothing", "is_set", None, False),
    ("event_properties.absent", "is_set", None, False),
    ("event_properties.total", "is_not_set", None, False),
    ("event_properties.nothing", "is_not_set", None, True),
    ("event_properties.absent", "is_not_set", None, True),
    # top-level fields and nested paths
    ("event_type", "is", "Order Completed", True),
    ("user_id", "is_set", None, True),
    ("session_id", "is_not_set", None, True),
    ("user_properties.plan", "is", "Pro", True),
    ("user_properties.age", "greater_or_equal", 18, True),
    ("user_properties.crm.id", "is", "C1", True),
    ("event_properties.cart.total", "is", 10, True),
    ("event_properties.cart.items.first", "starts_with", "H", True),
    ("event_properties.cart.items.second", "is_set", None, False),
    ("event_properties.cart.total.deeper", "is_set", None, False),  # through a number
    ("event_properties.sku.x", "is_set", None, False),  # through a string
    ("event_properties.nothing.x", "is_set", None, False),  # through null
    ("event_properties.tags.0", "is_set", None, False),  # no list indexing
    ("event_properties.flat.key", "is", "dotted", True),  # a key with a dot in it
    ("missing_top.x", "is_not_set", None, True),
]


@pytest.mark.parametrize("prop, op, value, expected", CASES, ids=[f"{c[0]} {c[1]} {c[2]!r}" for c in CASES])
def test_operator(prop, op, value, expected):
    assert compile_condition(Condition(prop, op, value))(EVENT) is expected


def test_every_operator_is_covered():
    assert {c[1] for c in CASES} == set(OPERATORS)


NEGATIONS = [("is", "is_not"), ("contains", "does_not_contain"), ("is_set", "is_not_set")]


@pytest.mark.parametrize("positive, negative", NEGATIONS)
def test_negations_are_exact_complements(positive, negative):
    values = {"is": ("x", 3, True, ("big", 42.5)), "contains": ("e", "sale", "zz"), "is_set": (None,)}[positive]
    paths = ["platform", "event_properties.absent", *(f"event_properties.{k}" for k in EVENT["event_properties"])]
    for path in paths:
        for value in values:
            pos = compile_condition(Condition(path, positive, value))(EVENT)
            neg = compile_condition(Condition(path, negative, value))(EVENT)
            assert pos is not neg, (path, value)


@pytest.mark.parametrize("event", [{}, {"event_properties": None}, {"event_properties": "text"}, {"event_properties": []}])
def test_degenerate_events(event):
    for op, value, expected in [("is", "x", False), ("is_not", "x", True), ("contains", "x", False),
                                ("does_not_contain", "x", True), ("starts_with", "x", False),
                                ("greater_than", 0, False), ("less_than", 0, False),
                                ("is_set", None, False), ("is_not_set", None, True)]:
        for path in ("event_properties.a", "event_properties.a.b"):
            assert compile_condition(Condition(path, op, value))(event) is expected, (event, path, op)


def test_unicode_case_insensitivity():
    event = {"event_properties": {"city": "STRASSE", "name": "Émile"}}
    assert compile_condition(Condition("event_properties.city", "contains", "straße"))(event)
    assert compile_condition(Condition("event_properties.name", "starts_with", "émi"))(event)


@pytest.mark.parametrize("path, expected", [
    ("user_id", "u1"),
    ("event_properties.total", 42.5),
    ("event_properties.cart.items.first", "hat"),
    ("event_properties.nothing", None),
    ("event_properties.absent", MISSING),
    ("event_properties.cart.absent", MISSING),
    ("event_properties.sku.x", MISSING),
    ("event_properties.flat.key", "dotted"),
    ("nope", MISSING),
    ("nope.deeper", MISSING),
])
def test_get_path_and_compile_path_agree(path, expected):
    assert get_path(EVENT, path) == expected or (expected is MISSING and get_path(EVENT, path) is MISSING)
    assert compile_path(path)(EVENT) is get_path(EVENT, path) or compile_path(path)(EVENT) == get_path(EVENT, path)


def test_literal_dotted_keys_at_top_level():
    event = {"a.b": 1, "x": {"y.z": 2}}
    for path, expected in [("a.b", 1), ("x.y.z", 2)]:
        assert get_path(event, path) == expected
        assert compile_path(path)(event) == expected


def test_nested_wins_over_literal_dotted_key():
    event = {"p": {"a": {"b": "nested"}, "a.b": "flat"}}
    assert get_path(event, "p.a.b") == "nested"


def test_missing_survives_pickling():
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING
    assert repr(MISSING) == "MISSING"


@pytest.mark.parametrize("cond", [
    Condition("x", "gt", 1),
    Condition("x", "greater_than", "1"),
    Condition("x", "greater_than", float("inf")),
    Condition("x", "contains", 1),
])
def test_invalid_conditions_are_refused_at_compile_time(cond):
    with pytest.raises(ValueError):
        compile_condition(cond)


# ---------------------------------------------------------------------------- selectors


def _ev(event_type, **props):
    return {"event_type": event_type, "event_properties": props}


BIG = Condition("event_properties.total", "greater_than", 100)
RED = Condition("event_properties.colour", "is", "red")


@pytest.mark.parametrize("selectors, event, expected", [
    ((), _ev("A"), False),
    ((EventSelector("A"),), _ev("A"), True),
    ((EventSelector("A"),), _ev("a"), False),  # event types match exactly
    ((EventSelector("A"),), _ev("B"), False),
    ((EventSelector("*"),), _ev("anything"), True),
    ((EventSelector("*"),), {}, True),
    ((EventSelector("A", (BIG,)),), _ev("A", total=101), True),
    ((EventSelector("A", (BIG,)),), _ev("A", total=100), False),
    ((EventSelector("A", (BIG, RED)),), _ev("A", total=101, colour="red"), True),  # all hold
    ((EventSelector("A", (BIG, RED)),), _ev("A", total=101, colour="blue"), False),
    ((EventSelector("A", (BIG, RED)),), _ev("A", total=1, colour="red"), False),
    ((EventSelector("A", (BIG,)), EventSelector("A", (RED,))), _ev("A", total=1, colour="red"), True),  # any
    ((EventSelector("A", (BIG,)), EventSelector("A", (RED,))), _ev("A", total=1, colour="blue"), False),
    ((EventSelector("A", (BIG,)), EventSelector("A")), _ev("A", total=1), True),  # unconditional wins
    ((EventSelector("A"), EventSelector("A", (BIG,))), _ev("A", total=1), True),
    ((EventSelector("A"), EventSelector("B", (RED,))), _ev("B", colour="red"), True),
    ((EventSelector("A"), EventSelector("B", (RED,))), _ev("B", colour="blue"), False),
    ((EventSelector("A"), EventSelector("*", (RED,))), _ev("Z", colour="red"), True),
    ((EventSelector("A"), EventSelector("*", (RED,))), _ev("Z"), False),
    ((EventSelector("A", (BIG,)), EventSelector("*", (RED,))), _ev("A", total=1, colour="red"), True),
    ((EventSelector("A"), EventSelector("*")), _ev("Z"), True),
    ((EventSelector("A"),), {"event_properties": {}}, False),  # no event_type
    ((EventSelector("A"),), {"event_type": ["A"]}, False),  # unhashable event_type
    ((EventSelector("A", (Condition("event_type", "is", "A"),)),), _ev("A"), True),
])
def test_selectors(selectors, event, expected):
    assert compile_selectors(selectors)(event) is expected


def test_selectors_from_the_syncs_file():
    (sync,) = parse_syncs({"syncs": [{
        "name": "s", "endpoint": "https://rest.iad-01.braze.com", "api_key": "env:K",
        "events": {"select": [
            {"event_type": "Order Completed", "where": [
                {"property": "event_properties.total", "op": "greater_than", "value": 0},
                {"property": "platform", "op": "is", "value": ["iOS", "Android"]},
            ]},
            {"event_type": "Signup"},
        ]},
    }]})
    select = compile_selectors(sync.events.select)
    assert select(EVENT) is True
    assert select({**EVENT, "platform": "Web"}) is False
    assert select({"event_type": "Signup"}) is True
    assert select({"event_type": "Login"}) is False
