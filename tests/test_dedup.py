"""Repeats of an insert id within the window reach Braze once; the repeat is accounted for."""

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue

from local.braze_sim import SimClient
from pipeline.config import parse_syncs
from pipeline.graph import EventsToBraze
from transforms.dedup import DropRepeats, dedup_key
from transforms.parse import parse_message
from tests.conftest import run_and_collect



def _parsed(message_id, **event):
    [parsed] = parse_message(orjson.dumps({"event_type": "Play", "time": 1_795_168_800_000, **event}), message_id,
                             None)
    return parsed


def test_the_key_is_the_insert_id_and_the_device_and_events_without_one_have_none():
    assert dedup_key(_parsed("m", insert_id="i-1", device_id="d-1", user_id="u")) == "i-1|d-1"
    assert dedup_key(_parsed("m", uuid="x-1", user_id="u")) == "x-1|u"
    assert dedup_key(_parsed("m", user_id="u")) is None


def test_a_repeat_within_the_window_is_dropped_and_one_after_it_passes():
    """The keyed step forgets an insert id once the watermark (publish time) is a window past the
    first sighting (window 10 s; published at 100 s, then 105 s and 120 s)."""
    window = 10.0
    stream = (test_stream.TestStream()
              .add_elements([TimestampedValue(_parsed("m1", insert_id="i-1", user_id="u"), 100),
                             TimestampedValue(_parsed("m2", user_id="u"), 100)])
              .advance_watermark_to(104)
              .add_elements([TimestampedValue(_parsed("m3", insert_id="i-1", user_id="u"), 105)])  # within
              .advance_watermark_to(115)
              .add_elements([TimestampedValue(_parsed("m4", insert_id="i-1", user_id="u"), 120)])  # after it
              .advance_watermark_to_infinity())
    options = PipelineOptions([], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True

    def build(p):
        out = p | stream | DropRepeats(window)
        return {"kept": out["events"] | "Kept" >> beam.Map(lambda e: e.source),
                "dropped": out["outcomes"] | "Dropped" >> beam.Map(lambda o: (o.source, o.reason))}

    COLLECTED = run_and_collect(build, options)
    assert sorted(COLLECTED["kept"]) == ["m1/0", "m2/0", "m4/0"]
    assert COLLECTED["dropped"] == [("m3/0", "duplicate")]


@pytest.mark.integration
def test_a_redelivered_event_reaches_braze_once(braze_sim):
    syncs = parse_syncs({"syncs": [{"name": "s", "endpoint": braze_sim.url, "api_key": "env:K",
                                    "events": {"select": [{"event_type": "*"}]}}]}, allow_insecure_endpoints=True)
    first = orjson.dumps({"event_type": "Play", "user_id": "user-00001", "time": 1_795_168_800_000, "insert_id": "i-1"})
    # The same event again, as Pub/Sub redelivers or a publisher retries (a different message),
    # plus one without an insert id, which always passes.
    repeat = orjson.dumps({"event_type": "Play", "user_id": "user-00001", "time": 1_795_168_800_000,
                           "insert_id": "i-1", "retry": 1})
    other = orjson.dumps({"event_type": "Play", "user_id": "user-00001", "time": 1_795_168_800_001})
    options = PipelineOptions([], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True

    def build(p):
        out = (p | test_stream.TestStream().add_elements([first, repeat, other]).advance_watermark_to_infinity()
               | EventsToBraze(syncs, resolve_key=lambda ref, key=braze_sim.api_key: key, max_batch_wait_seconds=1))
        return {"outcomes": out["outcomes"]}

    COLLECTED = run_and_collect(build, options)
    [user] = SimClient(braze_sim.url).users()
    assert len(user["events"]) == 2
    assert [(o.branch, o.status, o.reason) for o in COLLECTED["outcomes"] if o.branch == "dedup"] == [
        ("dedup", "skipped", "duplicate")]
