"""Repeats of an insert id within the window reach Braze once; the repeat is accounted for."""
import collections

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream

from local.braze_sim import SimClient
from pipeline.config import parse_syncs
from pipeline.graph import EventsToBraze
from transforms.dedup import remember


def test_remember_within_the_window_and_forget_after_it():
    seen = {}
    assert remember(seen, "a", now=100.0, window=10.0) is False
    assert remember(seen, "a", now=105.0, window=10.0) is True  # a repeat
    assert remember(seen, "b", now=111.0, window=10.0) is False  # and "a" expired meanwhile
    assert set(seen) == {"b"}
    assert remember(seen, "a", now=112.0, window=10.0) is False


COLLECTED = collections.defaultdict(list)


def _collect(element, name):
    COLLECTED[name].append(element)


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
    COLLECTED.clear()
    options = PipelineOptions([], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        out = (p | test_stream.TestStream().add_elements([first, repeat, other]).advance_watermark_to_infinity()
               | EventsToBraze(syncs, resolve_key=lambda ref, key=braze_sim.api_key: key, max_batch_wait_seconds=1))
        out["outcomes"] | beam.Map(_collect, "outcomes")
    [user] = SimClient(braze_sim.url).users()
    assert len(user["events"]) == 2
    assert [(o.branch, o.status, o.reason) for o in COLLECTED["outcomes"] if o.branch == "dedup"] == [
        ("dedup", "skipped", "duplicate")]
