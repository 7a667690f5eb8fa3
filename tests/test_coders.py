"""Every record that crosses a stage travels with an explicit coder, never the pickle fallback,
and the coders round-trip whatever parse lets through."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.coders import coders as beam_coders
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.pipeline_context import PipelineContext

from pipeline.stream import build_pipeline
from transforms.coders import JsonBag, JsonValue
from transforms.parse import MAX_EVENT_DEPTH
from transforms.records import BrazeItem, DeadLetter, IdentifyWork, Outcome, ParsedEvent, Request, UserBatch

FALLBACKS = (beam_coders.FastPrimitivesCoder, beam_coders.PickleCoder, beam_coders.DeterministicFastPrimitivesCoder)
# Beam's own Pub/Sub IO passes PubsubMessage objects between its internal steps; not our records.
BEAM_PUBSUB_STEPS = ("ReadFromPubSub/", "ReadReplaySubscription/", "/Publish/", "/ToPubsubMessage")


def _job_graph():
    return build_pipeline(PipelineOptions([
        "--input_subscription=projects/my-project/subscriptions/events",
        "--dead_letter_topic=projects/my-project/topics/dead-letters",
        "--outcome_topic=projects/my-project/topics/outcomes",
        "--replay_subscription=projects/my-project/subscriptions/replay",
        "--shadow_topic=projects/my-project/topics/shadow",
        "--sync_config=templates/env/syncs.dev.yaml", "--runner=BundleBasedDirectRunner"]))


def _fallbacks(coder):
    found = [coder] if isinstance(coder, FALLBACKS) else []
    for component in coder._get_component_coders() if hasattr(coder, "_get_component_coders") else ():
        found += _fallbacks(component)
    return found


def test_no_pcollection_of_ours_falls_back_to_pickle():
    proto = _job_graph().to_runner_api()
    context = PipelineContext(proto.components)
    pickled = []
    for pcollection in proto.components.pcollections.values():
        name = pcollection.unique_name
        if any(step in name for step in BEAM_PUBSUB_STEPS):
            continue
        if _fallbacks(context.coders.get_by_id(pcollection.coder_id)):
            pickled.append(name)
    assert pickled == []


def _deep(levels):
    value = "leaf"
    for _ in range(levels):
        value = {"k": [value]}
    return value


EVENT = {"event_type": "Play ▶", "user_id": "ユーザー", "user_properties": {"$set": {"p": _deep(MAX_EVENT_DEPTH // 2 - 2)}},
         "big": 18446744073709551615, "neg": -(2 ** 63), "f": 1e308, "none": None, "s": "\u202e\x00" * 100}
ITEM = BrazeItem("s", "u", "attributes", {"external_id": "u", "p": EVENT["user_properties"]["$set"]["p"]}, ("m/0", "m/1"),
                 "identify", 12, 3, {"p": None})


@pytest.mark.parametrize("record", [
    ParsedEvent("m/0", None, None, 1, EVENT),
    ITEM,
    IdentifyWork("m/0", 5, 6, {"external_id": "u"}, (("$set", "p", EVENT),), (ITEM,)),
    UserBatch("s", "u", (ITEM, ITEM), 1000, -1),
    Request("s#0", 7, (ITEM,)),
    Outcome("m/0", "s", "track", "skipped", "not_selected"),
    DeadLetter("parse", "too_deep", "d", "", b"\xff\x00" * 10, sources=("m/0",)),
])
def test_records_round_trip_through_their_registered_coder(record):
    coder = beam.coders.registry.get_coder(type(record))
    assert not _fallbacks(coder)
    assert coder.decode(coder.encode(record)) == record


class _Cell:
    def __init__(self):
        self.value, self.bag = None, []

    def read(self):
        return self.value if self.value is not None or not self.bag else list(self.bag)

    def write(self, value):
        assert isinstance(value, bytes)  # what Beam's BytesCoder cell holds
        self.value = value

    def add(self, value):
        assert isinstance(value, bytes)
        self.bag.append(value)

    def clear(self):
        self.value, self.bag = None, []


def test_state_cells_hold_json_bytes_and_rebuild_records():
    value = JsonValue(_Cell())
    value.write({"p": {"plan": [1, 2, None, "x"]}, "n": 3})
    assert value.read() == {"p": {"plan": [1, 2, None, "x"]}, "n": 3}
    from transforms.coders import BATCH
    bag = JsonBag(_Cell(), BATCH)
    bag.add(UserBatch("s", "u", (ITEM,), 1000, -1))
    assert bag.read() == [UserBatch("s", "u", (ITEM,), 1000, -1)]
