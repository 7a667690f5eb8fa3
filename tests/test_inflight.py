"""InFlight: which requests may be sent together (pure; the sink's use is in test_sink.py)."""
import pytest

from transforms.inflight import InFlight


def test_disjoint_requests_start_together_up_to_the_limit():
    f = InFlight(2)
    for r, users in (("r1", {"a"}), ("r2", {"b"}), ("r3", {"c"})):
        f.add(r, frozenset(users))
    assert f.start() == ["r1", "r2"]
    assert f.start() == [] and f.running == 2 and f.waiting == 1
    f.finish("r2")
    assert f.start() == ["r3"]


def test_a_user_request_waits_for_the_earlier_one_and_holds_later_ones_back():
    f = InFlight(4)
    f.add("r1", frozenset({"a", "b"}))
    f.add("r2", frozenset({"b"}))  # shares b with r1
    f.add("r3", frozenset({"c", "b"}))  # shares b with r2, which waits: must not overtake it
    f.add("r4", frozenset({"d"}))  # nothing in common: may overtake
    assert f.start() == ["r1", "r4"]
    f.finish("r1")
    assert f.start() == ["r2"]
    f.finish("r2")
    assert f.start() == ["r3"]
    f.finish("r3")
    f.finish("r4")
    assert f.idle()


def test_limit_must_be_positive():
    with pytest.raises(ValueError):
        InFlight(0)
