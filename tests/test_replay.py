"""Replay: chosen dead letters go back to the input topic, byte for byte; the rest stay put."""
import io

import orjson
import pytest

from pipeline.replay import replay
from transforms.dead_letters import to_pubsub_message
from transforms.records import BRAZE_OBJECT, DeadLetter

EVENT = {"external_id": "user-00009", "name": "Order Completed", "time": "2026-11-20T10:00:00.000Z"}
LETTERS = [
    DeadLetter("parse", "invalid_json", "not JSON", "", b"{broken"),
    DeadLetter("parse", "missing_event_type", "no event_type", "", b'{"user_id": "u-1"}'),
    DeadLetter("braze", "braze_rejected", "'time' is not valid", "us", orjson.dumps(EVENT),
               payload_type=BRAZE_OBJECT, http_status=201, attempts=1),
]


@pytest.mark.integration
def test_replay_moves_only_the_chosen_dead_letters_unchanged(pubsub_emulator, unique_name):
    dl_topic, dl_sub, in_topic, in_sub = (unique_name(n) for n in ("dl", "dl-sub", "in", "in-sub"))
    pubsub_emulator.create_topic(dl_topic)
    pubsub_emulator.create_subscription(dl_sub, dl_topic, ack_deadline_seconds=10)
    pubsub_emulator.create_topic(in_topic)
    pubsub_emulator.create_subscription(in_sub, in_topic)
    for letter in LETTERS:
        message = to_pubsub_message(letter)
        pubsub_emulator.publish(dl_topic, [message.data], message.attributes)
    sub_path, topic_path = pubsub_emulator.subscription_path(dl_sub), pubsub_emulator.topic_path(in_topic)

    dry = replay(sub_path, topic_path, reasons={"invalid_json", "braze_rejected"}, dry_run=True, out=io.StringIO())
    assert (dry["read"], dry["chosen"], dry["moved"]) == (3, 1, 0)

    out = io.StringIO()
    counts = replay(sub_path, topic_path, reasons={"invalid_json", "braze_rejected"}, out=out)
    assert (counts["moved_parse"], counts["left"]) == (1, 2)
    assert "moved 1" in out.getvalue()

    [moved] = pubsub_emulator.pull_until(in_sub, 1, deadline_seconds=20)
    assert moved.data == b"{broken"  # the original bytes, as published
    # The letters not chosen (or not replayable to the input topic) are still there, at once.
    left = pubsub_emulator.pull_until(dl_sub, 2, deadline_seconds=20)
    assert sorted(m.attributes["reason"] for m in left) == ["braze_rejected", "missing_event_type"]
