"""The whole graph (minus Pub/Sub) on the streaming runner, fed by TestStream, into the simulator.

Assertions read the simulator's state (what Braze would hold) and the dead letters the graph
produced; outcomes are collected through a side-effect sink because ``assert_that`` misses
output emitted when the final window closes (docs/api-facts.md, D5).
"""
import collections

import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream

from local.braze_sim import SimClient
from pipeline.config import parse_syncs
from pipeline.graph import EventsToBraze
from tests.conftest import run_and_collect
from transforms.dead_letters import to_pubsub_message

COLLECTED = collections.defaultdict(list)  # what the last _run collected (tests/conftest.py)


def _syncs(url):
    return parse_syncs(
        {
            "syncs": [
                {
                    "name": "ext",
                    "endpoint": url,
                    "api_key": "env:TEST_BRAZE_KEY",
                    "app_id": "app-1",
                    "users": {"properties": ["plan"]},
                    "events": {"select": [{"event_type": "Order Completed",
                                           "where": [{"property": "event_properties.total", "op": "greater_than", "value": 0}]}],
                               "properties": ["total"]},
                },
                {
                    "name": "alias",
                    "endpoint": url,
                    "api_key": "env:TEST_BRAZE_KEY",
                    "identifier": {"type": "user_alias", "source": "device_id", "alias_label": "amp_device"},
                    "events": {"select": [{"event_type": "*"}]},
                },
            ]
        },
        allow_insecure_endpoints=True,
    )


def _event(i, event_type="Order Completed", total=10, user="user-00001", plan="free"):
    return orjson.dumps({
        "event_type": event_type, "user_id": user, "device_id": f"dev-{user}", "time": 1_700_000_000_000 + i,
        "insert_id": f"ins-{i}", "event_properties": {"total": total, "secret": "not selected"},
        "user_properties": {"plan": plan},
    })


def _run(syncs, messages, key, max_in_flight=1):
    options = PipelineOptions([], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    stream = test_stream.TestStream().add_elements(messages).advance_watermark_to_infinity()

    def build(p):
        out = p | stream | EventsToBraze(syncs, max_batch_wait_seconds=1, resolve_key=lambda ref: key,
                                        sleep=lambda s: None, max_in_flight=max_in_flight)
        return {"outcomes": out["outcomes"], "dead_letters": out["dead_letters"]}

    COLLECTED.clear()
    COLLECTED.update(run_and_collect(build, options))


@pytest.mark.integration
@pytest.mark.parametrize("max_in_flight", [1, 4])
def test_events_and_changed_attributes_reach_braze_per_sync(braze_sim, max_in_flight):
    messages = [
        _event(1, plan="free"),
        _event(2, plan="free"),  # unchanged plan: no attribute sent
        _event(3, plan="pro", total=0),  # filtered out by where total > 0 for "ext", sent for "alias"
        _event(4, event_type="Page Viewed", user="user-00002"),
        b"{broken",
    ]
    _run(_syncs(braze_sim.url), messages, braze_sim.api_key, max_in_flight)

    users = {(u.get("external_id") or u["user_aliases"][0]["alias_name"]): u for u in SimClient(braze_sim.url).users()}
    ext = users["user-00001"]
    assert [e["name"] for e in ext["events"]] == ["Order Completed", "Order Completed"]
    assert all(e["properties"] == {"total": 10} and e["app_id"] == "app-1" for e in ext["events"])
    assert ext["attributes"] == {"plan": "pro"}
    # The alias sync created alias-only users (explicit _update_existing_only: false) with every event.
    assert sorted(len(users[f"dev-user-0000{n}"]["events"]) for n in (1, 2)) == [1, 3]
    # The ext sync did not select Page Viewed, but user-00002's plan was new: attributes only.
    assert (users["user-00002"]["events"], users["user-00002"]["attributes"]) == ([], {"plan": "free"})

    [dead] = COLLECTED["dead_letters"]
    assert (dead.stage, dead.reason, dead.data) == ("parse", "invalid_json", b"{broken")
    per_event = collections.defaultdict(set)
    for o in COLLECTED["outcomes"]:
        per_event[o.source].add((o.sync, o.branch))
    # Every event is accounted for: once if it could not be parsed, else once per sync and branch.
    assert sorted(len(parts) for parts in per_event.values()) == [1, 4, 4, 4, 4]


@pytest.mark.integration
def test_objects_braze_rejects_are_dead_lettered_with_brazes_reason_and_no_key(braze_sim):
    syncs = parse_syncs({"syncs": [{
        "name": "ext", "endpoint": braze_sim.url, "api_key": "env:TEST_BRAZE_KEY",
        "events": {"select": [{"event_type": "*"}], "properties": ["note"]}}]}, allow_insecure_endpoints=True)
    too_long = "u" * 990  # a valid Amplitude id, but Braze refuses external_ids over 987 bytes
    messages = [
        orjson.dumps({"event_type": "Note", "user_id": too_long, "time": 1_700_000_000_001,
                      "event_properties": {"note": "ok"}}),
        orjson.dumps({"event_type": "Note", "user_id": "user-00004", "time": 1_700_000_000_002,
                      "event_properties": {"note": "x" * 300}}),  # fixed, not refused: cut to 255
    ]
    _run(syncs, messages, braze_sim.api_key)
    dead = COLLECTED["dead_letters"]
    assert [(d.stage, d.reason, d.sync) for d in dead] == [("braze", "braze_rejected", "ext")]
    assert orjson.loads(dead[0].data)["external_id"] == too_long
    assert braze_sim.api_key not in repr([to_pubsub_message(d) for d in dead])
    [delivered] = SimClient(braze_sim.url).users()
    assert (delivered["external_id"], delivered["events"][0]["properties"]) == ("user-00004", {"note": "x" * 255})
