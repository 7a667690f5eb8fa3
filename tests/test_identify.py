"""The identify branch's pure core: only selected properties, only what changed."""
import pytest

from transforms.identify import attribute_delta, selected_updates

SELECTED = frozenset({"plan", "age", "tags", "city"})


def run(steps, last=None):
    """Apply a list of user_properties dicts in order; return each delta."""
    state = dict(last or {})
    deltas = []
    for props in steps:
        delta, state = attribute_delta(selected_updates(props, SELECTED), state, SELECTED)
        deltas.append(delta)
    return deltas, state


@pytest.mark.parametrize(
    "steps, expected",
    [
        # snapshot: first value sent, unchanged not re-sent, changed sent, unselected never sent
        ([{"plan": "free", "other": 1}, {"plan": "free"}, {"plan": "pro"}], [{"plan": "free"}, {}, {"plan": "pro"}]),
        # types are kept: 1, "1" and True are different values
        ([{"age": 1}, {"age": "1"}, {"age": True}, {"age": True}], [{"age": 1}, {"age": "1"}, {"age": True}, {}]),
        # $set / $unset ("-" from the SDK) → null once
        ([{"$set": {"plan": "pro"}}, {"$unset": {"plan": "-"}}, {"$unset": {"plan": "-"}}], [{"plan": "pro"}, {"plan": None}, {}]),
        # $setOnce only when nothing was ever sent
        ([{"$setOnce": {"city": "Oslo"}}, {"$setOnce": {"city": "Rome"}}], [{"city": "Oslo"}, {}]),
        # $add on a known value sends the total; on an unknown one an increment
        ([{"$set": {"age": 3}}, {"$add": {"age": 2}}], [{"age": 3}, {"age": 5}]),
        ([{"$add": {"age": 2}}, {"$add": {"age": 1}}], [{"age": {"inc": 2}}, {"age": {"inc": 1}}]),
        # array edits
        ([{"$append": {"tags": "a"}}, {"$remove": {"tags": ["a"]}}], [{"tags": {"add": ["a"]}}, {"tags": {"remove": ["a"]}}]),
        ([{"$set": {"tags": ["a"]}}, {"$postInsert": {"tags": ["a", "b"]}}], [{"tags": ["a"]}, {"tags": ["a", "b"]}]),
        # $clearAll nulls every selected property that had a value
        ([{"plan": "pro", "city": "Oslo"}, {"$clearAll": "-"}], [{"plan": "pro", "city": "Oslo"}, {"city": None, "plan": None}]),
        # a snapshot never unsets what it omits
        ([{"plan": "pro"}, {"city": "Oslo"}], [{"plan": "pro"}, {"city": "Oslo"}]),
        # ops on an unselected property do nothing
        ([{"$set": {"nope": 1}, "$unset": {"nope2": "-"}}], [{}]),
    ],
)
def test_operations(steps, expected):
    deltas, _ = run(steps)
    assert deltas == expected


def test_state_holds_only_selected_properties():
    _, state = run([{"plan": "pro", "secret": "x", "$set": {"other": 2}}])
    assert state == {"plan": "pro"}
