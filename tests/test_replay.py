"""pipeline.replay: chosen dead letters go back byte for byte, input events to the input topic and
Braze objects to the operator's replay topic; malformed letters are counted and left in place."""
import io

import orjson
import pytest

from pipeline.replay import EMPTY, NOT_CHOSEN, NO_DESTINATION, TRUNCATED, UNREADABLE, Replay, main, plan, replay
from transforms.dead_letters import MAX_DATA_BYTES, to_pubsub_message
from transforms.records import BRAZE_OBJECT, EVENTS, DeadLetter

EVENT = {"external_id": "user-00009", "name": "Order Completed", "time": "2026-11-20T10:00:00.000Z"}


def _attributes(letter):
    return to_pubsub_message(letter).attributes


PARSE = DeadLetter("parse", "invalid_json", "not JSON", "", b"{broken")
BRAZE = DeadLetter("braze", "braze_rejected", "'time' is not valid", "us", orjson.dumps(EVENT),
                   payload_type=BRAZE_OBJECT, kind=EVENTS, http_status=201, attempts=1)


# --- plan: one letter → where it goes, or why it stays (never raises)


@pytest.mark.parametrize("data, attributes, expected", [
    (b"{broken", _attributes(PARSE), Replay("input", b"{broken", {})),
    (BRAZE.data, _attributes(BRAZE), Replay("replay", BRAZE.data, {"sync": "us", "kind": "events"})),
    (b"{}", {}, UNREADABLE),
    (b"{}", None, UNREADABLE),
    (None, _attributes(PARSE), UNREADABLE),
    (b"{}", {**_attributes(PARSE), "format": "1"}, UNREADABLE),
    (b"{}", {k: v for k, v in _attributes(PARSE).items() if k != "format"}, UNREADABLE),
    (b"{}", {**_attributes(PARSE), "reason": 5}, UNREADABLE),  # a non-string value
    (b"{}", {**_attributes(PARSE), "stage": None}, UNREADABLE),
    (b"{}", {**_attributes(PARSE), "payload_type": "something"}, UNREADABLE),
    (b"{}", {**_attributes(BRAZE), "kind": "users"}, UNREADABLE),
    (b"{}", {k: v for k, v in _attributes(BRAZE).items() if k != "sync"}, UNREADABLE),
    (b"{", {**_attributes(PARSE), "data_truncated": "true"}, TRUNCATED),
    (b"", _attributes(PARSE), EMPTY),
])
def test_plan(data, attributes, expected):
    assert plan(data, attributes) == expected


def test_plan_filters_by_reason_stage_and_sync_all_together():
    attributes = _attributes(BRAZE)
    assert isinstance(plan(BRAZE.data, attributes, reasons={"braze_rejected"}, stages={"braze"}, syncs={"us"}), Replay)
    assert plan(BRAZE.data, attributes, reasons={"invalid_json"}) == NOT_CHOSEN
    assert plan(BRAZE.data, attributes, stages={"parse"}) == NOT_CHOSEN
    assert plan(BRAZE.data, attributes, syncs={"eu"}) == NOT_CHOSEN
    assert plan(PARSE.data, _attributes(PARSE), syncs={"us"}) == NOT_CHOSEN  # a parse letter has no sync


# --- Through the emulator


@pytest.fixture
def topics(pubsub_emulator, unique_name):
    names = {n: unique_name(n) for n in ("dl", "dl-sub", "in", "in-sub", "rp", "rp-sub")}
    pubsub_emulator.create_topic(names["dl"])
    # A long ack deadline: letters left in place must be available at once, not after it.
    pubsub_emulator.create_subscription(names["dl-sub"], names["dl"], ack_deadline_seconds=300)
    for topic, sub in (("in", "in-sub"), ("rp", "rp-sub")):
        pubsub_emulator.create_topic(names[topic])
        pubsub_emulator.create_subscription(names[sub], names[topic])
    return names


def _publish_letters(emulator, topic):
    huge = DeadLetter("parse", "message_too_large", "too big", "", b"x" * (MAX_DATA_BYTES + 10))
    messages = [to_pubsub_message(letter) for letter in (
        PARSE,
        DeadLetter("parse", "missing_event_type", "no event_type", "", b'{"user_id": "u-1"}'),
        BRAZE,
        DeadLetter("braze", "braze_auth", "HTTP 401", "eu", orjson.dumps({**EVENT, "external_id": "e-1"}),
                   payload_type=BRAZE_OBJECT, kind=EVENTS, http_status=401),
        huge,
    )]
    for message in messages:
        emulator.publish(topic, [message.data], message.attributes)
    # Malformed: an old-format letter (JSON with a non-string reason), no attributes at all,
    # a braze_object without its sync.
    emulator.publish(topic, [orjson.dumps({"stage": "parse", "reason": 7, "payload": "x"})])
    emulator.publish(topic, [b"not a dead letter"], {"note": "hand-made"})
    odd = dict(to_pubsub_message(BRAZE).attributes)
    del odd["sync"]
    emulator.publish(topic, [BRAZE.data], odd)
    return 8


def test_replay_moves_the_chosen_letters_to_their_topics_and_leaves_the_rest_at_once(pubsub_emulator, topics):
    total = _publish_letters(pubsub_emulator, topics["dl"])
    sub = pubsub_emulator.subscription_path(topics["dl-sub"])
    to = dict(input_topic=pubsub_emulator.topic_path(topics["in"]),
              replay_topic=pubsub_emulator.topic_path(topics["rp"]), pull_timeout_seconds=2)
    chosen = dict(reasons={"invalid_json", "braze_rejected", "braze_auth", "message_too_large"})

    out = io.StringIO()
    dry = replay(sub, **to, **chosen, dry_run=True, out=out)
    assert (dry["read"], dry["would_move"], dry["moved"]) == (total, 3, 0)
    assert "would move 3 (1 to the input topic, 2 to the replay topic)" in out.getvalue()
    assert pubsub_emulator.pull(topics["in-sub"], timeout=2) == []  # a dry run moves nothing
    assert pubsub_emulator.pull(topics["rp-sub"], timeout=2) == []

    out = io.StringIO()
    counts = replay(sub, **to, **chosen, syncs=set(), out=out)
    assert (counts["read"], counts["moved"], counts["to_input"], counts["to_replay"]) == (total, 3, 1, 2)
    assert (counts[NOT_CHOSEN], counts[UNREADABLE], counts[TRUNCATED]) == (1, 3, 1)
    assert out.getvalue().strip() == (
        f"replay: read {total} dead letters, moved 3 (1 to the input topic, 2 to the replay topic), left 5 in "
        "place (not chosen: 1, unreadable: 3, truncated: 1)")

    [event] = pubsub_emulator.pull_until(topics["in-sub"], 1, deadline_seconds=20)
    assert (event.data, dict(event.attributes)) == (b"{broken", {})  # the original bytes, no attributes
    objects = pubsub_emulator.pull_until(topics["rp-sub"], 2, deadline_seconds=20)
    assert sorted((m.data, tuple(sorted(m.attributes.items()))) for m in objects) == sorted([
        (BRAZE.data, (("kind", "events"), ("sync", "us"))),
        (orjson.dumps({**EVENT, "external_id": "e-1"}), (("kind", "events"), ("sync", "eu")))])
    # Left in place, and available at once (the subscription's ack deadline is 300 s).
    left = pubsub_emulator.pull_until(topics["dl-sub"], 5, deadline_seconds=20)
    assert len(left) == 5
    assert sorted(m.attributes.get("reason", "-") for m in left) == [
        "-", "-", "braze_rejected", "message_too_large", "missing_event_type"]


def test_braze_objects_without_a_replay_topic_stay_and_the_command_says_so(pubsub_emulator, topics):
    pubsub_emulator.publish(topics["dl"], [BRAZE.data], to_pubsub_message(BRAZE).attributes)
    out = io.StringIO()
    counts = replay(pubsub_emulator.subscription_path(topics["dl-sub"]),
                    input_topic=pubsub_emulator.topic_path(topics["in"]), pull_timeout_seconds=2, out=out)
    assert (counts["moved"], counts[NO_DESTINATION]) == (0, 1)
    assert "no destination: 1" in out.getvalue()
    assert len(pubsub_emulator.pull_until(topics["dl-sub"], 1, deadline_seconds=20)) == 1


def test_the_command_line(pubsub_emulator, topics, capsys):
    sub = pubsub_emulator.subscription_path(topics["dl-sub"])
    in_topic = pubsub_emulator.topic_path(topics["in"])
    for argv, message in [
        ([f"--dead_letter_subscription={sub}"], "give --input_topic, --replay_topic or both"),
        ([f"--dead_letter_subscription={sub}", f"--input_topic={in_topic}", f"--replay_topic={in_topic}"],
         "--replay_topic must not be the input topic"),
        (["--dead_letter_subscription=subs/x", f"--input_topic={in_topic}"], "projects/P/subscriptions/S"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err

    # A publish that fails (the replay topic does not exist) leaves the letter and exits 1.
    pubsub_emulator.publish(topics["dl"], [BRAZE.data], to_pubsub_message(BRAZE).attributes)
    missing = pubsub_emulator.topic_path(topics["rp"] + "-missing")
    assert main([f"--dead_letter_subscription={sub}", f"--replay_topic={missing}"]) == 1
    captured = capsys.readouterr()
    assert "moved 0" in captured.out and "publish failed: 1" in captured.out
    assert "could not publish to the replay topic" in captured.err
    assert len(pubsub_emulator.pull_until(topics["dl-sub"], 1, deadline_seconds=20)) == 1
