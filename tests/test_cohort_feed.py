"""Amplitude's Pub/Sub cohort feed: parsing (pure), newest-computed_time-wins, and the streaming
mode end to end on TestStream (BundleBasedDirectRunner) against the Braze simulator: two
cohorts, a repeated message, an out-of-order exit, an unknown cohort, bad messages, the final
flush's dead letters, and the hourly/daily reports."""
import os

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as Stream  # not collected by pytest

from pipeline.cohort_config import CohortSync, Target
from pipeline.cohort_feed import FeedSettings, FeedToBraze
from transforms.cohorts.delivery import CohortDeliverer, RetryPolicy
from transforms.cohorts.feed import computed_ms, parse_feed_message
from transforms.cohorts.feed_state import newer
from transforms.cohorts.realtime import collapse
from transforms.cohorts.records import ADD, REMOVE, Change

FAST = RetryPolicy(timeout_seconds=5, max_attempts=2, max_retry_seconds=1, backoff_base_seconds=0.01,
                   backoff_cap_seconds=0.01)
T0 = 1767225600  # 2026-01-01T00:00:00Z, epoch seconds


def batch(cohort, users, in_cohort=True, at=T0, message_id=None, **extra):
    return orjson.dumps({"cohort_name": cohort.title(), "cohort_id": cohort, "in_cohort": in_cohort,
                         "computed_time": str(at), "message_id": message_id or f"{cohort}:{at}:{in_cohort}",
                         "users": [{"user_id": u} for u in users], **extra})


# ---------------------------------------------------------------------------------------------
# Pure parts


def test_feed_batches_and_the_change_shape_are_read():
    [b], problems = parse_feed_message(batch("c1", ["u1", "u2"], at=T0), "p1")
    assert problems == [] and (b.cohort_id, b.in_cohort, b.computed_ms, b.users) == (
        "c1", True, T0 * 1000, (("u1", ""), ("u2", "")))
    # compute_time (the field lists' spelling), a number, milliseconds, ISO 8601: all the same instant
    for value in (T0, str(T0), T0 * 1000, "2026-01-01T00:00:00Z"):
        assert computed_ms(value) == T0 * 1000
    doc = {"cohort_id": 7, "in_cohort": False, "compute_time": T0, "users": [{"user_id": 5, "user_properties":
                                                                              {"email": "a@x.io", "deep": {"x": 1}}}]}
    [b], _ = parse_feed_message(orjson.dumps(doc), "p2")
    assert (b.cohort_id, b.message_id, b.users) == ("7", "pubsub:p2:0", (("5", '{"email":"a@x.io"}'),))
    change = {"cohort_id": "c1", "change": "leave", "user_id": "u9", "time": T0 * 1000}
    [b], _ = parse_feed_message(orjson.dumps([change]), "p3")
    assert (b.in_cohort, b.users, b.computed_ms) == (False, (("u9", ""),), T0 * 1000)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_message"), (b"{nope", "invalid_json"), (b"\xff\xfe", "invalid_encoding"), (b"[]", "empty_message"),
    (b"42", "not_an_object"), (b'{"cohort_id": "c1"}', "unknown_shape"),
    (b'{"in_cohort": true, "users": []}', "invalid_cohort_id"),
    (b'{"cohort_id": "c1", "in_cohort": "yes", "users": []}', "invalid_in_cohort"),
    (b'{"cohort_id": "c1", "in_cohort": true, "computed_time": "soon", "users": []}', "invalid_computed_time"),
    (b'{"cohort_id": "c1", "in_cohort": true, "computed_time": "1", "users": []}', "invalid_computed_time"),
    (b'{"cohort_id": "c1", "in_cohort": true, "computed_time": "1767225600", "users": {}}', "invalid_users"),
    (b'{"cohort_id": "zz", "in_cohort": true, "computed_time": "1767225600", "users": []}', "unknown_cohort"),
])
def test_bad_messages_say_why(data, reason):
    batches, problems = parse_feed_message(data, "p", known_cohorts=["c1"])
    assert batches == [] and [r for r, _ in problems] == [reason]


def test_an_array_keeps_its_good_batches_beside_a_bad_one():
    data = b"[" + batch("c1", ["u1"]) + b', {"cohort_id": "c1"}]'
    batches, problems = parse_feed_message(data, "p", known_cohorts=["c1"])
    assert [b.users for b in batches] == [(("u1", ""),)]
    assert problems == [("unknown_shape", "element 1: neither a feed batch (in_cohort, users) nor a change "
                                          "(change: enter|leave)")]


def test_the_newest_computed_time_wins():
    assert newer(None, 5, True)
    assert not newer((10, False), 5, True)  # an older entry after a newer exit: dropped
    assert newer((10, False), 11, True)
    assert newer((10, True), 10, True) and not newer((10, True), 10, False)  # a replay passes, a conflict does not
    buffered = [(10, "u1", ADD, ()), (20, "u1", REMOVE, ()), (5, "u2", REMOVE, (), "u2", ""), (5, "u2", ADD, ())]
    assert collapse(buffered) == [Change(REMOVE, "u1", ()), Change(ADD, "u2", ())]


# ---------------------------------------------------------------------------------------------
# The streaming mode


class Collected:
    """Dead letters seen by the pipeline (on the class: the DoFn works on a pickled copy)."""

    letters = []

    @staticmethod
    def add(letter):
        Collected.letters.append(letter)


def _targets(sim):
    partner = Target("US", sim.url, "env:FEED_DATA_IMPORT_KEY", partner_api_key="env:FEED_PARTNER_KEY",
                     lookup_api_key="env:FEED_REST_KEY")
    attribute = Target("Attr", sim.url, "env:FEED_REST_KEY", delivery="attribute")
    return partner, attribute


def _run_feed(stream, syncs, report_dir, email=None):
    options = PipelineOptions(["--runner=BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    Collected.letters = []
    settings = FeedSettings("projects/p/subscriptions/s", "projects/p/topics/d", str(report_dir), flush_seconds=60,
                            shards=2)
    with beam.Pipeline(options=options) as p:
        dead = p | stream | FeedToBraze(syncs, settings, email=email, policy=FAST, clock=lambda: 0.0)
        _ = dead | beam.Map(Collected.add)
    return list(Collected.letters)


@pytest.fixture
def feed_sim(braze_sim, monkeypatch):
    monkeypatch.setenv("FEED_REST_KEY", braze_sim.api_key)
    monkeypatch.setenv("FEED_PARTNER_KEY", braze_sim.partner_api_keys[0])
    monkeypatch.setenv("FEED_DATA_IMPORT_KEY", braze_sim.client_secrets[0])
    braze_sim.client().seed_users(*({"external_id": f"u{i}"} for i in range(1, 7)))
    return braze_sim


@pytest.mark.integration
def test_two_cohorts_with_repeats_reordering_unknown_cohorts_and_bad_messages(feed_sim, tmp_path):
    partner, attribute = _targets(feed_sim)
    power = CohortSync("power", "c_power", "Power", "US", "real_time", "feed")
    churn = CohortSync("churn", "c_churn", "Churn", "Attr", "hourly", "feed")
    with CohortDeliverer(partner, power, FAST) as d:  # the job names partner cohorts before the stream
        assert d.name_cohort() is None
    stream = (Stream()
              .add_elements([batch("c_power", ["u1", "u2", "u3"]),  # the first sync: a mass entry
                             batch("c_churn", ["u4", "u5"]),
                             batch("c_power", ["u1", "u2", "u3"]),  # repeated: same message_id
                             batch("c_power", ["u2"], in_cohort=False, at=T0 + 120),  # u2 leaves at +120 ...
                             batch("c_other", ["u6"]),  # no feed sync for it
                             b"{not json"])
              .advance_processing_time(61)
              .add_elements([batch("c_power", ["u2"], at=T0 + 60),  # ... an older entry arrives late: dropped
                             batch("c_churn", ["u5"], in_cohort=False, at=T0 + 30),
                             batch("c_churn", ["u9-unknown-to-braze"], at=T0 + 40)])
              .advance_processing_time(61)
              .advance_watermark_to_infinity())
    letters = _run_feed(stream, [(power, partner), (churn, attribute)], tmp_path)

    users = {u["external_id"]: u for u in feed_sim.client().users()}
    assert sorted(k for k, u in users.items() if "c_power" in u["cohorts"]) == ["u1", "u3"]
    label = "[Amplitude] Churn: c_churn"
    assert sorted(k for k, u in users.items() if label in (u["attributes"].get("amplitude_cohorts") or [])) == ["u4"]
    assert "u9-unknown-to-braze" not in users  # never created
    partner_calls = [c for r in feed_sim.client().requests() if r["path"].endswith("/cohorts/users")
                     for c in r["body"]["cohort_changes"]]
    # u2 entered and left within one flush: only the exit is sent; the repeat is not sent at all.
    assert sorted(i for c in partner_calls if not c.get("should_remove") for i in c["user_ids"]) == ["u1", "u3"]
    assert [i for c in partner_calls if c.get("should_remove") for i in c["user_ids"]] == ["u2"]
    assert sorted((letter.reason, letter.stage) for letter in letters) == [
        ("invalid_json", "cohort_feed.parse"), ("unknown_cohort", "cohort_feed.parse")]
    unknown = next(letter for letter in letters if letter.reason == "unknown_cohort")
    assert unknown.data == batch("c_other", ["u6"])  # the bytes as published: a replay republishes them

    reports = {}
    for sync in ("US", "Attr"):
        for name in sorted(os.listdir(tmp_path / "reports" / ("c_power" if sync == "US" else "c_churn") / sync)):
            if name.endswith(".json"):
                reports[(sync, name)] = orjson.loads(
                    (tmp_path / "reports" / ("c_power" if sync == "US" else "c_churn") / sync / name).read_bytes())
    assert sorted(reports) == [("Attr", "feed-daily-19700101.json"), ("Attr", "feed-hourly-19700101T00.json"),
                               ("US", "feed-daily-19700101.json"), ("US", "feed-hourly-19700101T00.json")]
    power_day = reports[("US", "feed-daily-19700101.json")]
    assert (power_day["mode"], power_day["status"]) == ("feed_daily", "success")
    assert power_day["counts"] == {"added": 2, "removed": 1, "skipped": 0, "failed": 0, "unchanged": 0}
    churn_day = reports[("Attr", "feed-daily-19700101.json")]
    assert churn_day["counts"] == {"added": 2, "removed": 1, "skipped": 1, "failed": 0, "unchanged": 0}
    assert [u["skip_reason"] for u in churn_day["users"] if u["skipped"]] == ["unknown_to_braze"]


@pytest.mark.integration
def test_the_final_flush_dead_letters_what_it_could_not_deliver(feed_sim, tmp_path):
    partner, _ = _targets(feed_sim)
    power = CohortSync("power", "c_power", "Power", "US", "real_time", "feed")
    with CohortDeliverer(partner, power, FAST) as d:
        assert d.name_cohort() is None
    feed_sim.client().set_faults(error_rate=1.0, error_statuses=[503])
    stream = (Stream().add_elements([batch("c_power", ["u1"]), batch("c_power", ["u2"], in_cohort=False,
                                                                     message_id="m2")])
              .advance_watermark_to_infinity())
    letters = _run_feed(stream, [(power, partner)], tmp_path)
    assert sorted((letter.stage, letter.reason, letter.sync) for letter in letters) == [
        ("cohort_feed.deliver", "lookup_failed", "power")] * 2
    replays = sorted(orjson.loads(letter.data)["users"][0]["user_id"] for letter in letters)
    assert replays == ["u1", "u2"]
    [left] = [orjson.loads(letter.data) for letter in letters if orjson.loads(letter.data)["in_cohort"] is False]
    assert left["computed_time"] == str(float(T0)) and left["message_id"].startswith("redelivery:power:u2:")
    # The replayed message is a feed message the job reads (and its new message_id is not a repeat).
    feed_sim.client().clear_faults()
    stream = Stream().add_elements([letter.data for letter in letters]).advance_watermark_to_infinity()
    assert _run_feed(stream, [(power, partner)], tmp_path) == []
    assert sorted(u["external_id"] for u in feed_sim.client().users() if "c_power" in u["cohorts"]) == ["u1"]
    hourly = orjson.loads((tmp_path / "reports" / "c_power" / "US" / "feed-hourly-19700101T00.json").read_bytes())
    assert hourly["status"] == "success"  # the second run's report replaced the first one's
