"""Replaying dead-lettered objects of a sync with mappings and anonymous users: a mapped
attribute or event property passes as a fresh one would, and so does an object of a device's
alias profile, which keeps its own user key; anything else is still refused."""
import orjson
import pytest

from pipeline.config import parse_syncs
from transforms.anonymous import anonymous_user_key
from transforms.records import ATTRIBUTES, EVENTS, BrazeItem
from transforms.replay import Refusal, ReplayRules, replayed_item

LABEL = "amp_device"
[SYNC] = parse_syncs({"syncs": [{
    "name": "us", "endpoint": "http://127.0.0.1:1", "api_key": "env:K0",
    "identifier": {"anonymous": {"source": "device_id", "alias_label": LABEL}},
    "users": {"properties": ["plan"], "mappings": [{"from": "user_properties.Email Address", "to": "email"}]},
    "events": {"select": [{"event_type": "*"}], "properties": ["total"],
               "mappings": [{"from": "platform", "to": "platform"}]},
}]}, allow_insecure_endpoints=True)
RULES = {"us": ReplayRules(SYNC)}
ALIAS = {"alias_name": "d-1", "alias_label": LABEL}


def check(obj, kind):
    return replayed_item(orjson.dumps(obj), {"sync": "us", "kind": kind}, RULES, "m-1/0", 1_000)


def test_mapped_attributes_and_event_properties_replay_as_fresh_ones():
    item, _ = check({"external_id": "u-1", "email": "ada@example.com", "plan": "pro"}, ATTRIBUTES)
    assert item.obj == {"external_id": "u-1", "email": "ada@example.com", "plan": "pro"}
    item, _ = check({"external_id": "u-1", "name": "Buy", "time": "2026-11-20T10:00:00.000Z",
                     "properties": {"total": 3, "platform": "iOS"}}, EVENTS)
    assert item.obj["properties"] == {"total": 3, "platform": "iOS"}


def test_an_object_of_a_devices_alias_profile_replays_under_its_own_user_key():
    item, _ = check({"user_alias": ALIAS, "_update_existing_only": True, "name": "App Opened",
                     "time": "2026-11-20T10:00:00.000Z"}, EVENTS)
    assert isinstance(item, BrazeItem) and item.user_key == anonymous_user_key("d-1")
    # Created as a fresh anonymous object is: Braze makes alias-only profiles only with false.
    assert item.obj == {"user_alias": ALIAS, "_update_existing_only": False, "name": "App Opened",
                        "time": "2026-11-20T10:00:00.000Z"}


@pytest.mark.parametrize("obj, kind", [
    ({"user_alias": {"alias_name": "d-1", "alias_label": "other"}, "plan": "a"}, ATTRIBUTES),
    ({"user_alias": ALIAS, "external_id": "u-1", "plan": "a"}, ATTRIBUTES),
    ({"braze_id": "b-1", "plan": "a"}, ATTRIBUTES),
    ({"external_id": "u-1", "Email Address": "ada@example.com"}, ATTRIBUTES),  # the source name, not the target
])
def test_anything_else_is_still_refused(obj, kind):
    refusal = check(obj, kind)
    assert isinstance(refusal, Refusal) and refusal.reason in ("invalid_identifier", "unselected_attribute")
