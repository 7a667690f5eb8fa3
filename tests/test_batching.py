"""The packer never exceeds Braze's caps: 75 objects (combined or per type) and 4 MB."""
import pytest

from transforms.packing import RequestLimits, pack, shard_key
from transforms.records import ATTRIBUTES, EVENTS, PURCHASES, BrazeItem


def item(kind=EVENTS, user="u", payload=""):
    return BrazeItem("s", user, kind, {"external_id": user, "name": "e", "p": payload}, ("m/0",), "track", None)


def counts(batch):
    return {k: sum(1 for i in batch if i.kind == k) for k in (ATTRIBUTES, EVENTS, PURCHASES)}


def test_combined_mode_caps_objects_in_all():
    items = [item(kind) for kind in (ATTRIBUTES, EVENTS, PURCHASES) for _ in range(60)]
    batches = pack(items, RequestLimits("combined"))
    assert [len(b) for b in batches] == [75, 75, 30]
    assert sum(len(b) for b in batches) == 180


def test_per_type_mode_caps_each_array():
    items = [item(kind) for kind in (ATTRIBUTES, EVENTS, PURCHASES) for _ in range(80)]
    batches = pack(items, RequestLimits("per_type"))
    assert all(max(counts(b).values()) <= 75 for b in batches)
    assert sum(len(b) for b in batches) == 240


def test_byte_cap():
    big = "x" * 200_000
    batches = pack([item(payload=big) for _ in range(50)], RequestLimits("combined"))
    assert all(sum(len(i.obj["p"]) for i in b) < 4 * 1024 * 1024 for b in batches)
    assert sum(len(b) for b in batches) == 50 and len(batches) == 3


def test_bad_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="combined"):
        RequestLimits("75")


def test_one_user_always_lands_on_the_same_shard():
    assert len({shard_key("s", "user-42", 8) for _ in range(10)}) == 1
    assert len({shard_key("s", f"user-{i}", 8) for i in range(200)}) == 8


# --- One user, one request, one attribute object -------------------------------------------

from transforms.packing import collapse  # noqa: E402


def attrs(user, seq, before=None, source=None, **values):
    obj = {"external_id": user, **values}
    return BrazeItem("s", user, ATTRIBUTES, obj, (source or f"{user}/{seq}",), "identify", None, seq, before or {})


def event(user, n=0, payload=""):
    return BrazeItem("s", user, EVENTS, {"external_id": user, "name": "e", "n": n, "p": payload}, (f"{user}/e{n}",),
                     "track", None)


def test_a_users_attribute_updates_collapse_into_one_object_before_nothing_else_changes():
    batch = [event("a", 1), attrs("a", 1, plan="free"), event("b", 1), attrs("a", 2, {"plan": "free"}, plan="pro"),
             attrs("b", 1, city="Oslo")]
    out = collapse(batch)
    assert [(i.kind, i.user_key) for i in out] == [("events", "a"), ("attributes", "a"), ("events", "b"), ("attributes", "b")]
    assert out[1].obj == {"external_id": "a", "plan": "pro"} and out[1].sources == ("a/1", "a/2")
    assert out[3].obj == {"external_id": "b", "city": "Oslo"}


def test_attribute_objects_not_made_by_identify_are_left_alone():
    replayed = BrazeItem("s", "a", ATTRIBUTES, {"external_id": "a", "plan": "x"}, ("r/0",), "replay", None)
    assert collapse([replayed, replayed]) == [replayed, replayed]


def test_an_update_that_merges_takes_no_object_slot():
    items = [event(f"u{i}") for i in range(73)] + [attrs("a", 1, plan="a")] + [attrs("a", n, plan=str(n)) for n in range(2, 6)]
    items.append(event("a"))
    [request] = pack(items, RequestLimits("combined"))
    assert len(request) == 75 and sum(1 for i in request if i.kind == ATTRIBUTES) == 1
    assert request[73].obj["plan"] == "5" and len(request[73].sources) == 5


def test_when_a_request_is_full_the_users_waiting_objects_go_on_with_the_new_one():
    # per_type: 75 events fill the events array; the attribute object still fits, then the
    # user's next event does not: that user's waiting objects move to the next request with it.
    limits = RequestLimits("per_type")
    items = [event(f"u{i}") for i in range(74)] + [event("a", 1), attrs("a", 1, plan="pro"), event("a", 2)]
    first, second = pack(items, limits)
    assert {i.user_key for i in first} == {f"u{i}" for i in range(74)}
    assert [(i.kind, i.user_key) for i in second] == [("events", "a"), ("attributes", "a"), ("events", "a")]


def test_by_bytes_too_the_users_objects_stay_together():
    big = "x" * 1_200_000
    items = [event("b", 1, big), event("a", 1, big), attrs("a", 1, plan="pro"), event("a", 2, big), event("a", 3, big)]
    requests = pack(items, RequestLimits("combined"))
    assert [[i.user_key for i in r] for r in requests] == [["b"], ["a", "a", "a", "a"]]


def test_an_attribute_update_that_would_fill_a_request_opens_the_next_one_for_its_events():
    items = [event(f"u{i}") for i in range(74)] + [attrs("a", 1, plan="pro"), event("a", 1)]
    first, second = pack(items, RequestLimits("combined"))
    assert len(first) == 74 and [(i.kind, i.user_key) for i in second] == [("attributes", "a"), ("events", "a")]
