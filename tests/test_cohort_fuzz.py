"""Property-based: whatever bytes or JSON arrive on the cohort feed, nothing raises, and every
message is accounted for (readable batches go on; the rest are dead-lettered with a reason and
their bytes unchanged). First the pure parser, then the streaming graph on TestStream."""
import json

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as Stream  # not collected by pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipeline.cohort_config import CohortSync, Target
from pipeline.cohort_feed import FeedSettings, FeedToBraze
from transforms.cohorts.delivery import RetryPolicy
from transforms.cohorts.feed import parse_feed_message

COHORTS = ("c1", "c2")
scalars = st.none() | st.booleans() | st.integers(min_value=-(2 ** 80), max_value=2 ** 80) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=10), inner, max_size=4), max_leaves=20)


def dumps(value) -> bytes:
    """JSON as any publisher might send it: integers beyond 64 bits, deep nesting (orjson refuses both)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def deep(depth: int):
    value = "x"
    for _ in range(depth):
        value = {"a": [value]}
    return value


users = st.lists(st.one_of(
    st.fixed_dictionaries({"user_id": st.one_of(st.text(max_size=20), st.integers(), st.none(), any_json)},
                          optional={"user_properties": st.one_of(any_json, st.integers(0, 450).map(deep))}),
    any_json), max_size=5)
batches = st.fixed_dictionaries(
    {"cohort_id": st.one_of(st.sampled_from(COHORTS + ("zz",)), any_json),
     "in_cohort": st.one_of(st.booleans(), any_json),
     "computed_time": st.one_of(st.integers(1_700_000_000, 1_800_000_000).map(str), st.integers(), any_json),
     "users": st.one_of(users, any_json)},
    optional={"message_id": st.one_of(st.text(max_size=30), any_json), "cohort_name": any_json})
messages = st.one_of(
    st.binary(max_size=200),
    any_json.map(dumps),
    batches.map(dumps),
    st.lists(batches, max_size=3).map(dumps),
    st.integers(1, 1100).map(lambda n: b"[" * n + b"]" * n),  # nesting past orjson's limit
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_the_parser_never_raises_and_accounts_for_every_message(data):
    found, problems = parse_feed_message(data, "pubsub-1", known_cohorts=COHORTS)
    assert found or problems  # nothing vanishes
    for batch in found:
        assert batch.cohort_id in COHORTS and isinstance(batch.in_cohort, bool) and batch.message_id
        assert all(isinstance(u, str) and isinstance(p, str) for u, p in batch.users)
    for reason, detail in problems:
        assert reason and isinstance(detail, str)


class Letters:
    """Dead letters the pipeline produced (a class attribute: the DoFn runs on a pickled copy)."""

    collected = []

    @staticmethod
    def add(letter):
        Letters.collected.append(letter)


def _counter(result, name):
    counters = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return int(sum(c.committed or c.attempted or 0 for c in counters))


@pytest.mark.integration
# Each example is a pipeline run (about a second): a few, and no shrinking.
@settings(max_examples=3, deadline=None, database=None, phases=(Phase.generate,),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(messages, min_size=1, max_size=25))
def test_the_streaming_graph_survives_any_input(module_braze_sim, monkeypatch, tmp_path_factory, inputs):
    monkeypatch.setenv("FUZZ_REST_KEY", module_braze_sim.api_key)
    target = Target("Attr", module_braze_sim.url, "env:FUZZ_REST_KEY", delivery="attribute", verify_users=False)
    syncs = [(CohortSync(f"s-{c}", c, c.upper(), "Attr", "real_time", "feed"), target) for c in COHORTS]
    options = PipelineOptions(["--runner=BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    Letters.collected = []
    p = beam.Pipeline(options=options)
    stream = Stream().add_elements(list(inputs)).advance_processing_time(61).advance_watermark_to_infinity()
    settings_ = FeedSettings("projects/p/subscriptions/s", "projects/p/topics/d", str(tmp_path_factory.mktemp("r")),
                             flush_seconds=60, shards=1)
    policy = RetryPolicy(timeout_seconds=5, max_attempts=1, max_retry_seconds=0)
    dead = p | stream | FeedToBraze(syncs, settings_, policy=policy, clock=lambda: 0.0)
    _ = dead | beam.Map(Letters.add)
    result = p.run()
    result.wait_until_finish()  # no exception escaped a DoFn

    expected_dead = [data for data in inputs if parse_feed_message(data, "x", COHORTS)[1]]
    parse_letters = [letter for letter in Letters.collected if letter.stage == "cohort_feed.parse"]
    assert sorted(letter.data for letter in parse_letters) == sorted(expected_dead)  # bytes unchanged
    assert all(letter.reason != "internal_error" for letter in Letters.collected)
    accepted = sum(len(parse_feed_message(data, "x", COHORTS)[0]) for data in inputs)
    assert _counter(result, "messages_in") == len(inputs)
    assert _counter(result, "batches_in") == accepted
