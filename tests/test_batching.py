"""The packer never exceeds Braze's caps: 75 objects (combined or per type) and 4 MB."""
import pytest

from transforms.batching import RequestLimits, pack, shard_key
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
    assert len({shard_key(item(user="user-42"), 8) for _ in range(10)}) == 1
    assert len({shard_key(item(user=f"user-{i}"), 8) for i in range(200)}) == 8
