"""The identify branch's pure core: every Amplitude operation, their combinations, event-time
order, and the collapse of one user's updates into one attribute object."""
import pytest

from transforms.identify import (
    apply_updates, attribute_delta, merge_attribute_items, merge_attribute_value, selected_updates,
    skip_reason,
)
from transforms.records import ATTRIBUTES, BrazeItem

SELECTED = frozenset({"plan", "age", "tags", "city", "born", "prefs", "score"})


def run(steps, state=None):
    """Apply steps in arrival order; a step is user_properties, or ``(event time ms, user_properties)``.
    Returns each step's delta and the final state."""
    deltas = []
    for i, step in enumerate(steps):
        time_ms, props = step if isinstance(step, tuple) else (i + 1, step)
        applied = apply_updates(selected_updates(props, SELECTED), state, SELECTED, time_ms)
        deltas.append(applied.attributes)
        state = applied.state
    return deltas, state


OPERATIONS = [
    # --- snapshots (plain keys on ordinary events) are $set
    ("first value sent, unchanged not re-sent, changed sent, unselected never sent",
     [{"plan": "free", "other": 1}, {"plan": "free"}, {"plan": "pro"}], [{"plan": "free"}, {}, {"plan": "pro"}]),
    ("a snapshot never unsets what it omits", [{"plan": "pro"}, {"city": "Oslo"}], [{"plan": "pro"}, {"city": "Oslo"}]),
    ("a null in a snapshot is ignored", [{"plan": "pro"}, {"plan": None}], [{"plan": "pro"}, {}]),
    # --- types are kept as sent
    ("1, '1', true and 1.0 are different values",
     [{"age": 1}, {"age": "1"}, {"age": True}, {"age": True}, {"age": 1.0}],
     [{"age": 1}, {"age": "1"}, {"age": True}, {}, {"age": 1.0}]),
    ("ISO dates stay strings", [{"born": "2024-03-01"}, {"born": "2024-03-01T00:00:00Z"}],
     [{"born": "2024-03-01"}, {"born": "2024-03-01T00:00:00Z"}]),
    ("nested objects go whole, and only when any part changed",
     [{"prefs": {"theme": "dark", "n": {"email": True}}}, {"prefs": {"n": {"email": True}, "theme": "dark"}},
      {"prefs": {"theme": "dark", "n": {"email": False}}}],
     [{"prefs": {"theme": "dark", "n": {"email": True}}}, {}, {"prefs": {"theme": "dark", "n": {"email": False}}}]),
    ("arrays of scalars as a whole", [{"tags": ["a", 1, True]}, {"tags": ["a", 1, True]}], [{"tags": ["a", 1, True]}, {}]),
    # --- $set / $unset
    ("$set, then $unset ('-') → null once", [{"$set": {"plan": "pro"}}, {"$unset": {"plan": "-"}}, {"$unset": {"plan": "-"}}],
     [{"plan": "pro"}, {"plan": None}, {}]),
    ("$set to null removes", [{"$set": {"plan": "pro"}}, {"$set": {"plan": None}}], [{"plan": "pro"}, {"plan": None}]),
    ("$unset of a property the job has no record of: null, once",
     [{"$unset": {"plan": "-"}}, {"$unset": {"plan": "-"}}], [{"plan": None}, {}]),
    ("unset then set", [{"plan": "pro"}, {"$unset": {"plan": "-"}}, {"$set": {"plan": "pro"}}],
     [{"plan": "pro"}, {"plan": None}, {"plan": "pro"}]),
    # --- $setOnce
    ("$setOnce only while the property has no value", [{"$setOnce": {"city": "Oslo"}}, {"$setOnce": {"city": "Rome"}}],
     [{"city": "Oslo"}, {}]),
    ("$setOnce after a $set does nothing", [{"city": "Oslo"}, {"$setOnce": {"city": "Rome"}}], [{"city": "Oslo"}, {}]),
    ("$setOnce after $unset applies (the property has no value, as in Amplitude)",
     [{"city": "Oslo"}, {"$unset": {"city": "-"}}, {"$setOnce": {"city": "Rome"}}],
     [{"city": "Oslo"}, {"city": None}, {"city": "Rome"}]),
    ("$setOnce after an inc on an unknown value does nothing (Braze has a value)",
     [{"$add": {"age": 1}}, {"$setOnce": {"age": 30}}], [{"age": {"inc": 1}}, {}]),
    # --- $add
    ("$add on a known value sends the total (a retried request cannot add twice)",
     [{"$set": {"age": 3}}, {"$add": {"age": 2}}, {"$add": {"age": 0.5}}], [{"age": 3}, {"age": 5}, {"age": 5.5}]),
    ("$add on an unknown value sends an increment, and stays unknown", [{"$add": {"age": 2}}, {"$add": {"age": 1}}],
     [{"age": {"inc": 2}}, {"age": {"inc": 1}}]),
    ("$add on a removed value starts at 0", [{"age": 4}, {"$unset": {"age": "-"}}, {"$add": {"age": 2}}],
     [{"age": 4}, {"age": None}, {"age": 2}]),
    ("$add of 0 changes nothing", [{"age": 4}, {"$add": {"age": 0}}], [{"age": 4}, {}]),
    ("$add of a whole float on an unknown value is an integer inc", [{"$add": {"age": 2.0}}], [{"age": {"inc": 2}}]),
    ("$add of a fraction on an unknown value is skipped (Braze's inc takes integers)", [{"$add": {"age": 2.5}}], [{}]),
    ("$add on a string or of a string is skipped", [{"age": "x"}, {"$add": {"age": 1}}, {"$add": {"score": "1"}}],
     [{"age": "x"}, {}, {}]),
    ("after an inc, a $set makes the value known again", [{"$add": {"age": 1}}, {"age": 7}, {"$add": {"age": 1}}],
     [{"age": {"inc": 1}}, {"age": 7}, {"age": 8}]),
    # --- arrays
    ("$append / $postInsert on an unknown array: add", [{"$append": {"tags": "a"}}, {"$postInsert": {"tags": ["b", "b"]}}],
     [{"tags": {"add": ["a"]}}, {"tags": {"add": ["b"]}}]),
    ("$prepend / $preInsert on an unknown array: add", [{"$prepend": {"tags": ["a", "b"]}}, {"$preInsert": {"tags": "c"}}],
     [{"tags": {"add": ["a", "b"]}}, {"tags": {"add": ["c"]}}]),
    ("$remove on an unknown array: remove", [{"$remove": {"tags": ["a"]}}], [{"tags": {"remove": ["a"]}}]),
    ("append on a known array: the whole array, new values last, duplicates not kept",
     [{"tags": ["a"]}, {"$append": {"tags": ["a", "b"]}}, {"$postInsert": {"tags": "b"}}], [{"tags": ["a"]}, {"tags": ["a", "b"]}, {}]),
    ("prepend on a known array: the whole array, in Amplitude's order",
     [{"tags": ["x"]}, {"$prepend": {"tags": ["a", "b"]}}, {"$preInsert": {"tags": ["x"]}}],
     [{"tags": ["x"]}, {"tags": ["a", "b", "x"]}, {}]),
    ("remove on a known array", [{"tags": ["a", "b"]}, {"$remove": {"tags": "a"}}, {"$remove": {"tags": "a"}}],
     [{"tags": ["a", "b"]}, {"tags": ["b"]}, {}]),
    ("append on a removed array starts from empty; remove on it does nothing",
     [{"tags": ["a"]}, {"$unset": {"tags": "-"}}, {"$remove": {"tags": "a"}}, {"$append": {"tags": "b"}}],
     [{"tags": ["a"]}, {"tags": None}, {}, {"tags": ["b"]}]),
    ("array edit on a known scalar is skipped", [{"tags": "a"}, {"$append": {"tags": "b"}}], [{"tags": "a"}, {}]),
    ("objects cannot be added to an unknown array", [{"$append": {"tags": {"k": 1}}}], [{}]),
    ("on an unknown array the job remembers its own edits and does not repeat them",
     [{"$append": {"tags": "a"}}, {"$postInsert": {"tags": ["a", "b"]}}, {"$remove": {"tags": "a"}},
      {"$remove": {"tags": "a"}}, {"$prepend": {"tags": "a"}}, {"$clearAll": "-"}],
     [{"tags": {"add": ["a"]}}, {"tags": {"add": ["b"]}}, {"tags": {"remove": ["a"]}}, {}, {"tags": {"add": ["a"]}},
      {p: None for p in SELECTED}]),
    # --- $clearAll
    ("$clearAll nulls every selected property except those known to have no value",
     [{"plan": "pro", "city": "Oslo", "age": None}, {"$unset": {"born": "-"}}, {"$clearAll": "-"}, {"$clearAll": "-"}],
     [{"plan": "pro", "city": "Oslo"}, {"born": None},
      {"age": None, "city": None, "plan": None, "prefs": None, "score": None, "tags": None}, {}]),
    ("$clearAll ignores the other operations of its identify", [{"$clearAll": "-", "$set": {"plan": "pro"}}],
     [{p: None for p in SELECTED}]),
    # --- several operations and properties
    ("operations on unselected properties do nothing", [{"$set": {"nope": 1}, "$unset": {"nope2": "-"}, "$add": {"n": 1}}], [{}]),
    ("one identify, several operations on different properties",
     [{"$set": {"plan": "pro"}, "$add": {"age": 1}, "$append": {"tags": "a"}, "$setOnce": {"city": "Oslo"}}],
     [{"plan": "pro", "age": {"inc": 1}, "tags": {"add": ["a"]}, "city": "Oslo"}]),
    ("the same property in two operations of one call: the first counts (SDK rule)",
     [{"$set": {"age": 3}, "$add": {"age": 2}}, {"$unset": {"plan": "-"}, "$set": {"plan": "pro"}}],
     [{"age": 3}, {"plan": None}]),
    ("unknown operations are ignored", [{"$bogus": {"plan": "x"}, "$set": {"plan": "pro"}}], [{"plan": "pro"}]),
    # --- event-time order
    ("an older snapshot arriving late does not overwrite a newer value",
     [(20, {"plan": "pro"}), (10, {"plan": "free"}), (30, {"plan": "free"})], [{"plan": "pro"}, {}, {"plan": "free"}]),
    ("an older $unset arriving late is ignored", [(20, {"plan": "pro"}), (10, {"$unset": {"plan": "-"}})], [{"plan": "pro"}, {}]),
    ("an unchanged newer value still moves the property's time on",
     [(10, {"plan": "a"}), (30, {"plan": "a"}), (20, {"plan": "b"})], [{"plan": "a"}, {}, {}]),
    ("an $add older than the last $set is already in it",
     [(20, {"$set": {"age": 3}}), (10, {"$add": {"age": 2}})], [{"age": 3}, {}]),
    ("increments commute: a late $add newer than the last $set applies",
     [(10, {"$set": {"age": 3}}), (30, {"$add": {"age": 1}}), (20, {"$add": {"age": 2}})], [{"age": 3}, {"age": 4}, {"age": 6}]),
    ("a $set older than an applied $add is ignored",
     [(30, {"$add": {"age": 1}}), (20, {"$set": {"age": 3}})], [{"age": {"inc": 1}}, {}]),
    ("$clearAll leaves properties written after it",
     [(10, {"plan": "pro", "city": "Oslo"}), (30, {"city": "Rome"}), (20, {"$clearAll": "-"})],
     [{"plan": "pro", "city": "Oslo"}, {"city": "Rome"},
      {"age": None, "born": None, "plan": None, "prefs": None, "score": None, "tags": None}]),
]


@pytest.mark.parametrize("steps, expected", [case[1:] for case in OPERATIONS], ids=[case[0] for case in OPERATIONS])
def test_operations(steps, expected):
    deltas, _ = run(steps)
    assert deltas == expected


def test_several_operations_that_end_where_they_started_send_nothing():
    # Not possible through selected_updates (one operation per property), but apply_updates
    # takes any list: a value that ends as it was is not sent.
    _, state = run([{"plan": "free"}])
    applied = apply_updates([("$set", "plan", "pro"), ("$set", "plan", "free")], state, SELECTED, 10)
    assert applied.attributes == {}


def test_state_holds_only_selected_properties_with_their_times():
    _, state = run([(5, {"plan": "pro", "secret": "x", "$set": {"other": 2}}), (7, {"$add": {"age": 1}})])
    assert state == {"p": {"plan": [5, 5, "pro"], "age": [0, 7]}, "n": 2}


def test_a_property_no_longer_selected_is_dropped_from_state():
    _, state = run([{"plan": "pro", "city": "Oslo"}])
    applied = apply_updates([("$set", "plan", "pro")], state, frozenset({"plan"}), 9)
    assert applied.state["p"] == {"plan": [9, 9, "pro"]}


def test_before_values_are_reported_only_where_known():
    _, state = run([{"plan": "free"}, {"$unset": {"city": "-"}}])
    applied = apply_updates(selected_updates({"plan": "pro", "city": "Oslo", "born": "2000-01-01"}, SELECTED),
                            state, SELECTED, 10)
    assert applied.before == {"plan": "free", "city": None}


def test_skip_reasons():
    _, state = run([(20, {"plan": "pro"})])
    assert skip_reason(apply_updates([("$set", "plan", "x")], state, SELECTED, 10)) == "superseded"
    assert skip_reason(apply_updates([("$set", "plan", "pro")], state, SELECTED, 30)) == "unchanged"
    assert skip_reason(apply_updates([("$add", "age", 0.5)], state, SELECTED, 30)) == "fractional_increment"


def test_attribute_delta_is_the_short_form():
    delta, state = attribute_delta([("$set", "plan", "pro")], None, SELECTED)
    assert delta == {"plan": "pro"} and state["p"]["plan"][2] == "pro"


@pytest.mark.parametrize(
    "previous, new, expected",
    [
        ("a", "b", "b"),
        (3, {"inc": 2}, 5),
        (None, {"inc": 2}, 2),
        ({"inc": 1}, {"inc": 2}, {"inc": 3}),
        (["a", "b"], {"add": ["a", "c"]}, ["b", "a", "c"]),  # Braze moves a present value to the end
        (["a", "b"], {"remove": ["a"]}, ["b"]),
        (None, {"add": ["a"]}, ["a"]),
        ({"add": ["a"]}, {"remove": ["a"]}, {"remove": ["a"]}),  # the later edit of a value wins
        ({"remove": ["a"]}, {"add": ["a", "b"]}, {"add": ["a", "b"]}),
        ({"add": ["a"], "remove": ["b"]}, {"add": ["c"]}, {"add": ["a", "c"], "remove": ["b"]}),
        ({"inc": 1}, 7, 7),
    ],
)
def test_merge_attribute_value(previous, new, expected):
    assert merge_attribute_value(previous, new) == expected


def _item(seq, before, source, publish=None, **attributes):
    obj = {"external_id": "u-1", "_update_existing_only": True, **attributes}
    return BrazeItem("s", "u-1", ATTRIBUTES, obj, (source,), "identify", publish, seq, before)


def test_merged_items_apply_in_state_order_with_all_sources():
    merged = merge_attribute_items([
        _item(3, {"plan": "b"}, "m/3", 30, plan="c", age={"inc": 1}),
        _item(2, {"plan": "a"}, "m/2", 20, plan="b", age={"inc": 2}),
    ])
    assert merged.obj == {"external_id": "u-1", "_update_existing_only": True, "plan": "c", "age": {"inc": 3}}
    assert (merged.sources, merged.publish_time_ms) == (("m/2", "m/3"), 20)


def test_a_value_that_returns_to_what_braze_held_is_not_written():
    merged = merge_attribute_items([
        _item(1, {"plan": "a"}, "m/1", plan="b", city="Oslo"),
        _item(2, {"plan": "b", "city": "Oslo"}, "m/2", plan="a", city=None),
    ])
    assert merged.obj == {"external_id": "u-1", "_update_existing_only": True, "city": None}


def test_nothing_left_keeps_only_the_identifier_so_every_source_is_accounted_for():
    merged = merge_attribute_items([_item(1, {"plan": "a"}, "m/1", plan="b"), _item(2, {"plan": "b"}, "m/2", plan="a")])
    assert merged.obj == {"external_id": "u-1", "_update_existing_only": True}
    assert merged.sources == ("m/1", "m/2")
