"""Replayed Braze objects (the operator's replay subscription) pass the checks fresh ones pass,
or become dead letters with a reason: pure rules by table, then ``ReadReplayedObjects`` on the
FnApiRunner with Pub/Sub message shapes as ``ReadFromPubSub(with_attributes=True)`` gives them."""

import apache_beam as beam
import orjson
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.transforms.window import TimestampedValue

import transforms.replay as replay_module
from pipeline.config import parse_syncs
from tests.conftest import run_and_collect
from transforms.records import ATTRIBUTES, BRAZE_OBJECT, DEAD_LETTERED, EVENTS, PURCHASES, BrazeItem
from transforms.replay import DEAD_LETTER_TAG, OUTCOME_TAG, Refusal, ReadReplayedObjects, ReplayRules, \
    replayed_item

TIME = "2026-11-20T10:00:00.000Z"
SYNCS = parse_syncs({"syncs": [
    {"name": "us", "endpoint": "http://127.0.0.1:1", "api_key": "env:K0", "app_id": "app-1",
     "users": {"properties": ["plan", "tags", "email"], "update_existing_only": True},
     "events": {"select": [{"event_type": "Order Completed",
                            "where": [{"property": "event_properties.total", "op": "greater_than", "value": 0}]}],
                "properties": ["total", "note"], "purchases": True}},
    {"name": "devices", "endpoint": "http://127.0.0.1:1", "api_key": "env:K1",
     "identifier": {"type": "user_alias", "source": "device_id", "alias_label": "amp_device"},
     "users": {"properties": ["plan"]},
     "events": {"select": [{"event_type": "*"}]}},
    {"name": "off", "endpoint": "http://127.0.0.1:1", "api_key": "env:K2", "enabled": False,
     "events": {"select": [{"event_type": "*"}]}},
    {"name": "tracking-only", "endpoint": "http://127.0.0.1:1", "api_key": "env:K3",
     "events": {"select": [{"event_type": "*"}]}},
]}, allow_insecure_endpoints=True)
RULES = {sync.name: ReplayRules(sync) for sync in SYNCS}

EVENT = {"external_id": "u-1", "_update_existing_only": True, "app_id": "app-1", "name": "Order Completed",
         "time": TIME, "properties": {"total": 12}}
ALIAS = {"alias_name": "d-1", "alias_label": "amp_device"}


def check(obj, sync="us", kind=EVENTS, **extra):
    data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    attributes = {"sync": sync, "kind": kind, **extra} if sync is not None else {"kind": kind}
    return replayed_item(data, attributes, RULES, "m-1/0", 1_000)


def _with(base, **changes):
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


# --- What passes, and how it is normalised


def test_a_replayed_event_becomes_the_same_item_a_fresh_one_is():
    item, changes = check(EVENT)
    assert item == BrazeItem("us", "u-1", EVENTS, EVENT, ("m-1/0",), "replay", 1_000)
    assert changes == ()


def test_update_flag_and_app_id_are_set_as_the_sync_sets_them_whatever_the_object_says():
    item, _ = check(_with(EVENT, _update_existing_only=False, app_id="someone-else"))
    assert item.obj["_update_existing_only"] is True and item.obj["app_id"] == "app-1"
    item, _ = check(_with(EVENT, _update_existing_only=None))  # absent: an update-only sync still says true
    assert item.obj["_update_existing_only"] is True
    # An alias sync that may create users sends an explicit false (Braze creates alias users only then).
    item, _ = check({"user_alias": ALIAS, "_update_existing_only": True, "name": "x", "time": TIME}, sync="devices")
    assert item.obj["_update_existing_only"] is False and item.user_key == "d-1" and "app_id" not in item.obj


def test_values_are_sanitised_as_fresh_ones_and_the_fixes_named():
    item, changes = check(_with(EVENT, properties={"note": "n" * 300, "total": None}))
    assert item.obj["properties"] == {"note": "n" * 255}
    assert changes == ("truncated_string",)
    item, changes = check({"external_id": "u-1", "plan": "p" * 300, "tags": list(range(30)), "email": "a@b.co"},
                          kind=ATTRIBUTES)
    assert item.obj == {"external_id": "u-1", "_update_existing_only": True, "plan": "p" * 255,
                        "tags": list(range(5, 30)), "email": "a@b.co"}
    assert changes == ("truncated_string", "truncated_array")


STANDARD = {"name": "std", "endpoint": "http://127.0.0.1:1", "api_key": "env:K4",
            "users": {"properties": ["email", "country", "dob", "plan"]}}


def test_standard_attributes_are_formatted_as_fresh_ones_or_refused():
    rules = {"std": ReplayRules(parse_syncs({"syncs": [STANDARD]}, allow_insecure_endpoints=True)[0])}

    def replay(obj):
        return replayed_item(orjson.dumps({"external_id": "u-1", **obj}), {"sync": "std", "kind": ATTRIBUTES},
                             rules, "m-1/0")

    item, _ = replay({"email": " Ada@Example.COM ", "country": "Germany", "dob": "1990-01-02", "plan": "pro"})
    assert item.obj == {"external_id": "u-1", "email": "ada@example.com", "country": "DE", "dob": "1990-01-02",
                        "plan": "pro"}
    # What the job itself sent passes unchanged (a replay of its own dead letter).
    again, _ = replay({k: v for k, v in item.obj.items() if k != "external_id"})
    assert again.obj == item.obj
    refusal = replay({"email": "not an email", "country": "Atlantis", "plan": "pro"})
    assert isinstance(refusal, Refusal) and refusal.reason == "invalid_standard_attribute"
    assert "email: invalid_email" in refusal.detail and "country: unknown_country" in refusal.detail


def test_a_purchase_passes_when_the_sync_sends_purchases():
    purchase = {"external_id": "u-1", "product_id": "sku-1", "currency": "EUR", "price": 9.5, "quantity": 2,
                "time": TIME}
    item, _ = check(purchase, kind=PURCHASES)
    assert item.kind == PURCHASES and item.obj == {**purchase, "_update_existing_only": True, "app_id": "app-1"}


# --- What is refused, and why


def _nested_list(levels):
    value = []
    for _ in range(levels):
        value = [value]
    return value


REFUSED = [
    ("no sync attribute", dict(obj=EVENT, sync=None), "invalid_replay"),
    ("empty sync attribute", dict(obj=EVENT, sync=""), "invalid_replay"),
    ("odd kind", dict(obj=EVENT, kind="users"), "invalid_replay"),
    ("unknown sync", dict(obj=EVENT, sync="nope"), "unknown_sync"),
    ("disabled sync", dict(obj=EVENT, sync="off"), "sync_disabled"),
    ("users off for the sync", dict(obj={"external_id": "u", "plan": "a"}, sync="tracking-only", kind=ATTRIBUTES),
     "users_disabled"),
    ("purchases off for the sync", dict(obj=EVENT, sync="devices", kind=PURCHASES), "purchases_disabled"),
    ("not JSON", dict(obj=b"{broken"), "invalid_json"),
    ("truncated data", dict(obj=orjson.dumps(EVENT)[:-5]), "invalid_json"),
    ("not an object", dict(obj=[EVENT]), "not_an_object"),
    ("too deep", dict(obj=_with(EVENT, properties={"total": _nested_list(70)})), "too_deep"),
    ("deeper than orjson reads", dict(obj=b"[" * 2000 + b"]" * 2000), "too_deep"),
    ("too large", dict(obj=_with(EVENT, properties={"note": "x" * 1_100_000})), "too_large"),
    ("no identifier", dict(obj=_with(EVENT, external_id=None)), "invalid_identifier"),
    ("another sync's identifier type", dict(obj=_with(EVENT, external_id=None, braze_id="b-1")),
     "invalid_identifier"),
    ("two identifiers", dict(obj=_with(EVENT, braze_id="b-1")), "invalid_identifier"),
    ("identifier not a string", dict(obj=_with(EVENT, external_id=42)), "invalid_identifier"),
    ("empty identifier", dict(obj=_with(EVENT, external_id="")), "invalid_identifier"),
    ("identifier too long", dict(obj=_with(EVENT, external_id="u" * 1025)), "invalid_identifier"),
    ("alias with another label", dict(obj={"user_alias": {"alias_name": "d", "alias_label": "x"}, "name": "e",
                                           "time": TIME}, sync="devices"), "invalid_identifier"),
    ("alias with extra keys", dict(obj={"user_alias": {**ALIAS, "x": 1}, "name": "e", "time": TIME},
                                   sync="devices"), "invalid_identifier"),
    ("event not selected", dict(obj=_with(EVENT, name="Song Played")), "not_selected"),
    ("an identify call", dict(obj={"user_alias": ALIAS, "name": "$identify", "time": TIME}, sync="devices"),
     "not_selected"),
    ("event without name", dict(obj=_with(EVENT, name=None)), "invalid_field"),
    ("event with a bad time", dict(obj=_with(EVENT, time="yesterday")), "invalid_field"),
    ("event time not a string", dict(obj=_with(EVENT, time=1234)), "invalid_field"),
    ("unselected event property", dict(obj=_with(EVENT, properties={"total": 1, "ssn": "x"})),
     "unselected_property"),
    ("properties not an object", dict(obj=_with(EVENT, properties=["total"])), "invalid_field"),
    ("a field fresh events never have", dict(obj=_with(EVENT, email_subscribe="opted_in")), "unknown_field"),
    ("unselected attribute (e.g. a subscription)", dict(obj={"external_id": "u", "email_subscribe": "opted_in"},
                                                        kind=ATTRIBUTES), "unselected_attribute"),
    ("a control field as an attribute", dict(obj={"external_id": "u", "_merge_objects": True, "plan": "a"},
                                             kind=ATTRIBUTES), "unselected_attribute"),
    ("nothing left after sanitising", dict(obj=b'{"external_id": "u", "plan": 18446744073709551615}',
                                           kind=ATTRIBUTES), "nothing_to_send"),
    ("an identifier alone", dict(obj={"external_id": "u"}, kind=ATTRIBUTES), "nothing_to_send"),
    ("purchase with a bad currency", dict(obj={"external_id": "u", "product_id": "p", "currency": "euro",
                                               "price": 1, "time": TIME}, kind=PURCHASES), "invalid_field"),
    ("purchase quantity over 100", dict(obj={"external_id": "u", "product_id": "p", "currency": "EUR",
                                             "price": 1, "quantity": 101, "time": TIME}, kind=PURCHASES),
     "invalid_field"),
    ("purchase without a price", dict(obj={"external_id": "u", "product_id": "p", "currency": "EUR",
                                           "time": TIME}, kind=PURCHASES), "invalid_field"),
]


@pytest.mark.parametrize("name, args, reason", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused(name, args, reason):
    refusal = check(**args)
    assert isinstance(refusal, Refusal) and refusal.reason == reason
    assert refusal.detail


def test_odd_attribute_values_are_refused_not_crashed_on():
    for attributes in ({"sync": 5, "kind": EVENTS}, {"sync": ["us"], "kind": EVENTS}, {"sync": "us", "kind": None},
                       None, "not a dict"):
        refusal = replayed_item(orjson.dumps(EVENT), attributes, RULES, "m-1/0")
        assert isinstance(refusal, Refusal) and refusal.reason == "invalid_replay"


# --- ReadReplayedObjects on the FnApiRunner

def _run(messages):
    def build(p):
        out = (p | beam.Create(messages, reshuffle=False)
               | "Stamp" >> beam.Map(lambda m: TimestampedValue(m, 1_795_168_800))
               | ReadReplayedObjects(SYNCS))
        return {"objects": out.objects, "dead": out[DEAD_LETTER_TAG], "outcomes": out[OUTCOME_TAG]}

    collected = run_and_collect(build, runner="FnApiRunner")
    counters = {f"{c.key.metric.namespace}/{c.key.metric.name}": c.committed
                for c in collected.result.metrics().query(MetricsFilter())["counters"]}
    return {tag: list(values) for tag, values in collected.items() if values}, counters


def _message(obj, message_id, **attributes):
    data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return PubsubMessage(data, attributes, message_id=message_id)


def test_the_transform_passes_good_objects_and_dead_letters_the_rest_unchanged():
    forged = {"external_id": "victim", "email_subscribe": "opted_in"}
    messages = [
        _message(_with(EVENT, properties={"note": "n" * 300}), "good-1", sync="us", kind=EVENTS),
        _message({"user_alias": ALIAS, "plan": "gold"}, "good-2", sync="devices", kind=ATTRIBUTES),
        _message(forged, "forged", sync="us", kind=ATTRIBUTES),
        _message(b"\xff\xfe not json", "garbage", sync="us", kind=EVENTS),
        _message(EVENT, "no-attributes"),
    ]
    out, counters = _run(messages)
    objects = sorted(out["objects"], key=lambda it: it.sources)
    assert [(it.sync, it.kind, it.sources, it.branch, it.publish_time_ms) for it in objects] == [
        ("us", EVENTS, ("good-1/0",), "replay", 1_795_168_800_000),
        ("devices", ATTRIBUTES, ("good-2/0",), "replay", 1_795_168_800_000)]
    assert objects[0].obj["properties"] == {"note": "n" * 255}
    dead = {d.sources[0]: d for d in out["dead"]}
    assert {s: d.reason for s, d in dead.items()} == {
        "forged/0": "unselected_attribute", "garbage/0": "invalid_json", "no-attributes/0": "invalid_replay"}
    for letter in dead.values():  # the data unchanged, so it can be fixed and replayed again
        assert letter.stage == "replay" and letter.payload_type == BRAZE_OBJECT
        assert letter.data == next(m.data for m in messages if f"{m.message_id}/0" == letter.sources[0])
    assert dead["forged/0"].sync == "us" and dead["forged/0"].kind == ATTRIBUTES
    assert sorted((o.source, o.sync, o.branch, o.status, o.reason) for o in out["outcomes"]) == [
        ("forged/0", "us", "replay", DEAD_LETTERED, "unselected_attribute"),
        ("garbage/0", "us", "replay", DEAD_LETTERED, "invalid_json"),
        ("no-attributes/0", "", "replay", DEAD_LETTERED, "invalid_replay")]
    assert counters["replay/messages_in"] == 5 and counters["replay/accepted"] == 2
    assert counters["replay/refused.unselected_attribute"] == 1
    assert counters["sanitize/truncated_string"] == 1


def test_an_unexpected_error_is_a_dead_letter_and_the_rest_go_on(monkeypatch):
    real = replay_module.replayed_item

    def fail_for_devices(data, attributes, *args, **kwargs):
        if attributes.get("sync") == "devices":
            raise RuntimeError("unexpected")
        return real(data, attributes, *args, **kwargs)

    monkeypatch.setattr(replay_module, "replayed_item", fail_for_devices)  # the FnApiRunner runs in this process
    out, counters = _run([_message(EVENT, "ok", sync="us", kind=EVENTS),
                          _message({"user_alias": ALIAS, "plan": "a"}, "boom", sync="devices", kind=ATTRIBUTES)])
    assert [it.sources for it in out["objects"]] == [("ok/0",)]
    [letter] = out["dead"]
    assert (letter.reason, letter.error_class, letter.sources) == ("internal_error", "RuntimeError", ("boom/0",))
    assert "unexpected" in letter.detail
    assert [(o.source, o.reason) for o in out["outcomes"]] == [("boom/0", "internal_error")]
    assert counters["internal_errors/replay"] == 1


def test_at_least_one_sync_is_needed():
    with pytest.raises(ValueError, match="syncs"):
        ReadReplayedObjects([])
