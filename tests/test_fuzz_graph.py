"""Any input, through the whole streaming graph: nothing escapes, everything is accounted for
once, and every dead letter can be republished byte for byte.

Hypothesis draws messages of every kind (arbitrary bytes, arbitrary JSON, events with every
identify operation and odd operands, nesting up to 1,000 levels, integers beyond 64 bits, long
and unusual strings, arrays of mixed events) and runs them through ``EventsToBraze`` on the
FnApiRunner, sending to the Braze simulator over real HTTP. The cases issue 12 found by hand are
pinned as ``@example``s. Each example is a whole pipeline run (about a second), so the example
count is modest; ``HYPOTHESIS_PROFILE=deep`` runs more.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Dict, List

import apache_beam as beam
import orjson
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import TimestampedValue
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from local.braze_sim import BrazeSimulator
from pipeline.config import parse_syncs
from pipeline.graph import EventsToBraze
from transforms.dead_letters import MAX_ATTRIBUTE_BYTES, to_pubsub_message
from transforms.parse import array_element_spans
from transforms.records import INPUT_EVENT
from tests.conftest import run_and_collect

settings.register_profile("default", max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("deep", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

T0 = 1_796_000_000_000
SELECTED = ["plan", "score", "tags", "prefs"]
OPERATIONS = ["$set", "$setOnce", "$add", "$append", "$prepend", "$preInsert", "$postInsert", "$remove",
              "$unset", "$clearAll"]
PUBSUB_LIMIT_BYTES = 10 * 1000 * 1000

COLLECTED: Dict[str, list] = collections.defaultdict(list)


def nested(levels: int, leaf=1):
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


def dumps(value) -> bytes:
    """JSON as a publisher might send it: the stdlib encoder, which writes integers of any size."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 80), max_value=2 ** 80),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.text(min_size=250, max_size=1200), st.sampled_from(["", "-", "null", "Anonymous", "0", "\u202e\u200b", "🎵" * 300]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                             st.dictionaries(st.text(max_size=12), inner, max_size=6)),
                           max_leaves=25)
deep_values = st.integers(min_value=0, max_value=1000).map(nested)
values = st.one_of(json_values, deep_values, st.lists(st.text(max_size=8), min_size=30, max_size=300))
operations = st.dictionaries(st.sampled_from(OPERATIONS),
                             st.one_of(st.dictionaries(st.sampled_from(SELECTED + ["other"]), values, max_size=4),
                                       values), max_size=4)
snapshots = st.dictionaries(st.sampled_from(SELECTED + ["other", "$bogus"]), values, max_size=4)
users = st.sampled_from(["u-1", "u-2", "u-3"])


@st.composite
def events(draw):
    event = {"event_type": draw(st.one_of(st.sampled_from(["$identify", "Play", "Order Completed", "_identify"]),
                                          json_values))}
    for field, strategy in (("user_id", st.one_of(users, json_values)), ("device_id", st.one_of(users, scalars)),
                            ("time", st.one_of(st.integers(T0, T0 + 10_000), scalars)),
                            ("event_time", st.one_of(st.just("2026-11-20 10:00:00.000"), scalars)),
                            ("insert_id", st.one_of(st.text(min_size=1, max_size=8), scalars)),
                            ("event_properties", st.one_of(st.dictionaries(st.text(max_size=8), values, max_size=5),
                                                           values)),
                            ("user_properties", st.one_of(operations, snapshots, values)),
                            ("revenue", st.one_of(st.floats(allow_nan=False), scalars))):
        if draw(st.booleans()):
            event[field] = draw(strategy)
    return event


messages = st.one_of(
    events().map(dumps),
    st.lists(st.one_of(events(), json_values), min_size=1, max_size=6).map(dumps),
    st.binary(max_size=300),
    json_values.map(dumps),
    deep_values.map(dumps),
)


@pytest.fixture(scope="module")
def sim():
    with BrazeSimulator() as simulator:
        yield simulator


def _syncs(url):
    return parse_syncs({"syncs": [
        {"name": "ext", "endpoint": url, "api_key": "env:FUZZ_KEY",
         "users": {"properties": SELECTED}, "events": {"select": [{"event_type": "*"}],
                                                      "properties": ["p", "deep", "big"], "purchases": True}},
        {"name": "dev", "endpoint": url, "api_key": "env:FUZZ_KEY",
         "identifier": {"type": "user_alias", "source": "device_id", "alias_label": "device"},
         "users": {"properties": ["plan"]}, "events": {"select": [{"event_type": "Play"}]}},
    ]}, allow_insecure_endpoints=True)


def _run(sim, datas: List[bytes]):
    inputs = [TimestampedValue(PubsubMessage(d, {}, message_id=f"m{i}"), T0 / 1000 + i) for i, d in enumerate(datas)]

    def build(p):
        out = (p | beam.Create(inputs)
               | EventsToBraze(_syncs(sim.url), resolve_key=lambda ref, k=sim.api_key: k, sleep=lambda s: None,
                               max_attempts=2, max_retry_seconds=1))
        return {"outcomes": out["outcomes"], "dead_letters": out["dead_letters"]}

    COLLECTED.clear()
    COLLECTED.update(run_and_collect(build, PipelineOptions([], runner="FnApiRunner")))


def _event_sources(message_id: str, data: bytes) -> List[str]:
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return [f"{message_id}/0"]
    if len(data) <= 1024 * 1024 and isinstance(decoded, list) and decoded:
        return [f"{message_id}/{i}" for i in range(len(decoded))]
    return [f"{message_id}/0"]


def check(datas: List[bytes]) -> None:
    outcomes, letters = COLLECTED["outcomes"], COLLECTED["dead_letters"]
    # Every event is accounted for exactly once: once for all (no sync), or once per sync and branch.
    parts = collections.defaultdict(list)
    for o in outcomes:
        parts[o.source].append((o.sync, o.branch))
    expected = {s for i, d in enumerate(datas) for s in _event_sources(f"m{i}", d)}
    assert set(parts) == expected
    for source, seen in parts.items():
        if any(sync == "" for sync, _ in seen):
            assert len(seen) == 1, (source, seen)
        else:
            assert sorted(seen) == sorted({(s, b) for s in ("ext", "dev") for b in ("track", "identify")}), seen
    assert not [o for o in outcomes if o.reason == "internal_error"], "a stage failed unexpectedly"
    # Every dead letter: a reason, fits Pub/Sub, and its input bytes republish unchanged.
    for letter in letters:
        assert letter.reason and letter.detail
        message = to_pubsub_message(letter)
        assert len(message.data) + sum(len(k) + len(v.encode()) for k, v in message.attributes.items()) \
            < PUBSUB_LIMIT_BYTES
        assert all(len(v.encode("utf-8")) <= MAX_ATTRIBUTE_BYTES for v in message.attributes.values())
        if letter.payload_type == INPUT_EVENT and letter.stage == "parse":
            message_index, event_index = (int(x) for x in letter.sources[0][1:].split("/"))
            original = datas[message_index]
            if message.attributes.get("data_truncated"):
                assert original.startswith(message.data) and int(message.attributes["data_bytes"]) == len(original)
            elif letter.data != original:  # one event of an array: its own bytes, as they stand
                spans = array_element_spans(original, len(orjson.loads(original)))
                start, end = spans[event_index]
                assert letter.data == original[start:end]


@given(st.lists(messages, min_size=1, max_size=8))
@example([dumps([nested(300), {"event_type": "Play", "user_id": "u-1", "time": T0}])])
@example([dumps({"event_type": "Play", "user_id": "u-1", "time": T0, "event_properties": {"x": nested(500)}})])
@example([dumps({"event_type": "$identify", "user_id": "u-1", "time": T0, "user_properties": {"$set": {"prefs": nested(300)}}})])
@example([dumps({"event_type": "$identify", "user_id": "u-2", "time": T0 + i,
                 "user_properties": {"$add": {"score": 18446744073709551615}}}) for i in range(2)])
@example([dumps({"event_type": "$identify", "user_id": "u-3", "time": T0 + i,
                 "user_properties": {"$add": {"score": 1e308}}}) for i in range(2)])
@example([dumps({"event_type": "$identify", "user_id": "u-1", "time": T0 + i,
                 "user_properties": {"$append": {"tags": f"v{i}"}}}) for i in range(60)])
@example([b"\x01" * 1_500_000, dumps({"event_type": "Play", "user_id": "u-1", "time": T0})])
def test_any_input_is_accounted_for_and_nothing_escapes(sim, datas):
    _run(sim, datas)
    check(datas)


def test_huge_binary_input_becomes_a_bounded_dead_letter(sim):
    """9 MB of 0xFF: dead-lettered whole (not re-encoded), cut to fit Pub/Sub and marked so."""
    datas = [b"\xff" * 9_500_000]
    _run(sim, datas)
    check(datas)
    [letter] = COLLECTED["dead_letters"]
    message = to_pubsub_message(letter)
    assert letter.reason == "message_too_large" and message.attributes["data_truncated"] == "true"
    assert len(message.data) < PUBSUB_LIMIT_BYTES
