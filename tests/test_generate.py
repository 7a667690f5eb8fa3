"""The sample-event generator: deterministic, realistic, and with every awkward case present."""
import collections
import os
import re
import subprocess
import sys

import orjson
import pytest

from local.generate import (
    DEFAULT_START_MS, IDENTIFY_OPERATIONS, MALFORMED_KINDS, GeneratorConfig, generate_messages, main,
    read_messages,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


def classify(body):
    """("ok", [events]) for a usable message, else (malformed kind, [])."""
    if body == b"":
        return "empty_body", []
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8", []
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "invalid_json", []
    if not isinstance(value, (dict, list)):
        return "not_an_object", []
    events = value if isinstance(value, list) else [value]
    for event in events:
        if "event_type" not in event:
            return "missing_event_type", []
        if not event.get("user_id") and not event.get("device_id"):
            return "missing_ids", []
        if "time" in event and not isinstance(event["time"], int):
            return "time_not_a_number", []
    return "ok", events


def events_of(messages):
    return [event for body in messages for event in classify(body)[1]]


def event_count(messages):
    """What --events counts: array elements, and one per malformed message."""
    return sum(len(events) or 1 for _, events in map(classify, messages))


@pytest.fixture(scope="module")
def sample():
    return list(generate_messages(events=2000, users=50, seed=11))


def test_same_arguments_give_identical_bytes_and_another_seed_does_not():
    first = list(generate_messages(events=500, users=20, seed=3))
    assert first == list(generate_messages(events=500, users=20, seed=3))
    assert first != list(generate_messages(events=500, users=20, seed=4))


@pytest.mark.parametrize("config", [
    GeneratorConfig(events=1000, users=10, seed=1),
    GeneratorConfig(events=777, users=3, seed=2, malformed_share=0.2, duplicate_share=0.2, array_share=0.3),
    GeneratorConfig(events=1, users=1, seed=3),
    GeneratorConfig(events=0, users=1, seed=3),
])
def test_events_counts_events_not_messages(config):
    assert event_count(list(generate_messages(config))) == config.events


def test_both_shapes_are_present_and_well_formed(sample):
    events = events_of(sample)
    http = [e for e in events if "time" in e]
    export = [e for e in events if "event_time" in e]
    assert len(http) + len(export) == len(events)
    assert 0.3 < len(http) / len(events) < 0.7
    for event in http:
        assert isinstance(event["time"], int) and event["time"] >= DEFAULT_START_MS
        assert event["insert_id"] and "$insert_id" not in event
    for event in export:
        assert EXPORT_TIME.match(event["event_time"]), event["event_time"]
        assert event["$insert_id"] and event["uuid"] and isinstance(event["amplitude_id"], int)
        assert EXPORT_TIME.match(event["server_received_time"]) and isinstance(event["data"], dict)
    identified = [e["user_id"] for e in events if e.get("user_id")]
    assert all(len(user_id) >= 5 for user_id in identified)


def test_times_increase_event_by_event(sample):
    first_copies = list(dict.fromkeys(sample))  # a duplicate repeats an earlier message verbatim
    events = events_of(first_copies)
    http_times = [e["time"] for e in events if "time" in e]
    export_times = [e["event_time"] for e in events if "event_time" in e]
    assert http_times == sorted(http_times)
    assert export_times == sorted(export_times)  # fixed-width UTC strings sort as times


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_identify_operation_appears_in_2000_events(seed):
    events = events_of(generate_messages(events=2000, users=50, seed=seed))
    identifies = [e for e in events if e["event_type"] == "$identify"]
    seen = collections.Counter(op for e in identifies for op in e["user_properties"])
    assert set(seen) == set(IDENTIFY_OPERATIONS)
    for event in identifies:
        operations = event["user_properties"]
        assert all(key.startswith("$") for key in operations), "operations and plain keys must not mix"
        if "$clearAll" in operations:
            assert operations == {"$clearAll": "-"}
        for key in operations.get("$unset", {}):
            assert operations["$unset"][key] == "-"
        keys = [key for values in operations.values() if isinstance(values, dict) for key in values]
        assert len(keys) == len(set(keys)), f"a property under two operations: {operations}"


def test_ordinary_events_carry_a_snapshot_that_changes_now_and_then(sample):
    snapshots = collections.defaultdict(list)
    for event in events_of(sample):
        if event["event_type"] != "$identify" and event.get("user_id"):
            snapshots[event["user_id"]].append(event["user_properties"])
    pairs = [(a, b) for series in snapshots.values() for a, b in zip(series, series[1:])]
    changed = sum(a != b for a, b in pairs)
    assert 0.02 < changed / len(pairs) < 0.25
    some = next(iter(snapshots.values()))[0]
    assert {"plan", "country", "city", "age", "favorite_genres", "is_subscriber", "signup_date",
            "preferences"} <= set(some)
    assert isinstance(some["favorite_genres"], list) and isinstance(some["preferences"]["notifications"], dict)


def test_revenue_unicode_long_strings_and_nesting_are_present(sample):
    events = events_of(sample)
    def revenue_field(event, name):
        return event.get(name, event["event_properties"].get("$" + name))
    assert any(revenue_field(e, "revenue") is not None for e in events)
    assert any(revenue_field(e, "price") is not None and revenue_field(e, "quantity") for e in events)
    assert any(e["event_type"] == "[Amplitude] Revenue" for e in events)
    orders = [e for e in events if e["event_type"] == "Order Completed"]
    assert orders and all(isinstance(e["event_properties"]["items"], list) for e in orders)
    text = b"".join(sample).decode("utf-8", "replace")
    assert "東京" in text and "Zoë" in text and "🎧" in text
    assert re.search(r'"[^"]{256,}"', text), "no string longer than 255 characters"
    assert any(isinstance(e["event_properties"].get("product", {}).get("category"), dict) for e in events)


def test_anonymous_events_have_a_device_id_only(sample):
    events = events_of(sample)
    anonymous = [e for e in events if not e.get("user_id")]
    assert 0.01 < len(anonymous) / len(events) < 0.1
    assert all(e["device_id"] for e in anonymous)


def test_duplicates_and_arrays_are_present():
    messages = list(generate_messages(events=5000, users=100, seed=5, duplicate_share=0.02, array_share=0.05))
    valid = [m for m in messages if classify(m)[0] == "ok"]
    repeats = sum(count - 1 for count in collections.Counter(valid).values())
    arrays = [m for m in valid if m.startswith(b"[")]
    assert 0.01 < repeats / len(messages) < 0.03
    assert 0.03 < len(arrays) / len(messages) < 0.08
    assert all(2 <= len(orjson.loads(m)) <= 5 for m in arrays)


def test_malformed_share_is_respected_and_every_kind_appears():
    messages = list(generate_messages(events=5000, users=100, seed=9, malformed_share=0.05))
    kinds = collections.Counter(classify(m)[0] for m in messages)
    malformed = sum(count for kind, count in kinds.items() if kind != "ok")
    assert set(kinds) == {"ok", *MALFORMED_KINDS}
    assert 0.035 < malformed / len(messages) < 0.065
    assert all(b"\n" not in m for m in messages), "a body with a newline would break the JSONL file"


def test_no_malformed_messages_when_the_share_is_zero():
    messages = generate_messages(events=3000, users=30, seed=9, malformed_share=0.0)
    assert all(classify(m)[0] == "ok" for m in messages)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="add up to more than 1"):
        GeneratorConfig(events=10, malformed_share=0.6, array_share=0.6)
    with pytest.raises(ValueError, match="users"):
        GeneratorConfig(events=10, users=0)


def test_cli_writes_a_jsonl_file_with_the_requested_events(tmp_path):
    out = tmp_path / "sample.jsonl"
    command = [sys.executable, "-m", "local.generate", "--events", "1500", "--users", "40", "--seed", "7",
               "--out", str(out), "--malformed-share", "0.03"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=60)
    first = out.read_bytes()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=60)

    assert out.read_bytes() == first
    messages = read_messages(str(out))
    assert messages == list(generate_messages(events=1500, users=40, seed=7, malformed_share=0.03))
    assert event_count(messages) == 1500
    assert b"" in messages  # the empty body survived as an empty line


def test_cli_publishes_to_the_emulator(pubsub_emulator, unique_name):
    topic, subscription = unique_name("events"), unique_name("events-sub")
    pubsub_emulator.create_topic(topic)
    pubsub_emulator.create_subscription(subscription, topic)
    expected = list(generate_messages(events=300, users=20, seed=8))

    assert main(["--events", "300", "--users", "20", "--seed", "8", "--topic", topic,
                 "--project", pubsub_emulator.project]) == 0
    received = pubsub_emulator.pull_until(subscription, len(expected), deadline_seconds=30)

    assert sorted(m.data for m in received) == sorted(expected)
    assert all(m.attributes["source"] == "local.generate" for m in received)
