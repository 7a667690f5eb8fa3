"""Identify's per-property state entries have names (transforms.identify_ops), and the state a
running job already holds (JSON lists told apart by length) stays readable and keeps its form."""
import orjson

from transforms.identify_ops import Known, TrackedEdits, Unknown, apply_updates, entry_of, stored

# A user's state as the job before the named entries wrote it: a known value, an unknown number
# after an inc, an array known only by the job's own edits.
OLD_STATE = orjson.loads(b'{"p": {"plan": [5, 7, "pro"], "visits": [3, 3], "tags": [1, 2, ["a"], ["b"]]}, "n": 4}')
SELECTED = frozenset({"plan", "visits", "tags"})


def test_stored_entries_are_read_by_their_form():
    assert entry_of([5, 7, "pro"]) == Known(set_ms=5, changed_ms=7, value="pro")
    assert entry_of([3, 3]) == Unknown(set_ms=3, changed_ms=3)
    assert entry_of([1, 2, ["a"], ["b"]]) == TrackedEdits(set_ms=1, changed_ms=2, present=["a"], absent=["b"])
    assert entry_of(None) is None and entry_of([1]) is None and entry_of("x") is None


def test_state_written_before_is_applied_and_written_back_in_the_same_form():
    applied = apply_updates([("$set", "plan", "pro"), ("$add", "visits", 1), ("$append", "tags", "a")],
                            OLD_STATE, SELECTED, time_ms=10)
    assert applied.attributes == {"visits": {"inc": 1}}  # plan unchanged, "a" already added by the job
    written = orjson.loads(orjson.dumps(applied.state))
    assert written["p"]["plan"] == [10, 10, "pro"]
    assert written["p"]["visits"] == [3, 10]
    assert written["p"]["tags"] == [1, 2, ["a"], ["b"]]
    assert [len(v) for v in written["p"].values()] == [3, 2, 4]


def test_a_record_is_stored_as_the_list_the_state_holds():
    assert stored(Known(1, 2, None)) == [1, 2, None]
    assert orjson.dumps({"p": {"x": stored(Unknown(1, 2))}}) == b'{"p":{"x":[1,2]}}'
