"""Replay: chosen dead letters go back to the input topic; replayed Braze objects reach Braze."""
import io

import apache_beam as beam
import orjson
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream

from local.braze_sim import SimClient
from pipeline.config import parse_syncs
from pipeline.graph import EventsToBraze
from pipeline.replay import replay
from transforms.parse import REPLAY_ATTRIBUTE
from transforms.records import DeadLetter

EVENT = {"external_id": "user-00009", "name": "Order Completed", "time": "2026-11-20T10:00:00.000Z"}
LETTERS = [
    DeadLetter("parse", "invalid_json", "not JSON", "", "{broken"),
    DeadLetter("braze", "braze_auth", "HTTP 401", "us", EVENT, 401, 1),
    DeadLetter("braze", "braze_rejected", "'time' is not valid", "us", {"external_id": "x"}, 201, 1),
]


@pytest.mark.integration
def test_replay_moves_only_the_chosen_dead_letters(pubsub_emulator, unique_name):
    dl_topic, dl_sub, in_topic, in_sub = (unique_name(n) for n in ("dl", "dl-sub", "in", "in-sub"))
    pubsub_emulator.create_topic(dl_topic)
    pubsub_emulator.create_subscription(dl_sub, dl_topic, ack_deadline_seconds=10)
    pubsub_emulator.create_topic(in_topic)
    pubsub_emulator.create_subscription(in_sub, in_topic)
    for letter in LETTERS:
        pubsub_emulator.publish(dl_topic, [letter.to_json()], letter.attributes())
    sub_path, topic_path = pubsub_emulator.subscription_path(dl_sub), pubsub_emulator.topic_path(in_topic)

    dry = replay(sub_path, topic_path, reasons={"braze_auth", "invalid_json"}, dry_run=True, out=io.StringIO())
    assert (dry["read"], dry["chosen"], dry["moved"]) == (3, 2, 0)

    out = io.StringIO()
    counts = replay(sub_path, topic_path, reasons={"braze_auth", "invalid_json"}, out=out)
    assert (counts["moved_parse"], counts["moved_braze"], counts["left"]) == (1, 1, 1)
    assert "moved 2" in out.getvalue()

    moved = {m.data: m.attributes for m in pubsub_emulator.pull_until(in_sub, 2, deadline_seconds=20)}
    assert moved[b"{broken"]["replayed_reason"] == "invalid_json"  # the original message, as published
    [braze] = [orjson.loads(d) for d, a in moved.items() if a.get(REPLAY_ATTRIBUTE) == "braze"]
    assert (braze["payload"], braze["sync"]) == (EVENT, "us")
    # The letter not chosen is still in the dead-letter subscription, available at once.
    [left] = pubsub_emulator.pull_until(dl_sub, 1, deadline_seconds=20)
    assert orjson.loads(left.data)["reason"] == "braze_rejected"


COLLECTED = []


def _collect(element):
    COLLECTED.append(element)


@pytest.mark.integration
def test_a_replayed_braze_object_reaches_braze_without_passing_the_identify_state(braze_sim):
    syncs = parse_syncs({"syncs": [{"name": "us", "endpoint": braze_sim.url, "api_key": "env:K",
                                    "events": {"select": [{"event_type": "*"}]}}]}, allow_insecure_endpoints=True)
    message = PubsubMessage(LETTERS[1].to_json(), {REPLAY_ATTRIBUTE: "braze"}, message_id="m-1")
    COLLECTED.clear()
    options = PipelineOptions([], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        out = (p | test_stream.TestStream().add_elements([message]).advance_watermark_to_infinity()
               | EventsToBraze(syncs, resolve_key=lambda ref, key=braze_sim.api_key: key, max_batch_wait_seconds=1))
        out["outcomes"] | beam.Map(_collect)
    [user] = SimClient(braze_sim.url).users()
    assert (user["external_id"], [e["name"] for e in user["events"]]) == ("user-00009", ["Order Completed"])
    assert [(o.source, o.branch, o.status) for o in COLLECTED] == [("m-1/0", "replay", "delivered")]
