"""Real-time cohort sync: parsing, last-change-wins, and the minute flush driven by TestStream
against the Braze simulator (BundleBasedDirectRunner, streaming)."""
import os

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as Stream  # not collected by pytest

from pipeline.cohort_config import CohortSync, Target, UserMapping
from transforms.cohorts.delivery import RetryPolicy
from transforms.cohorts.realtime import FlushAndDeliver, FlushReporter, ParseCohortChanges, collapse, parse_message
from transforms.cohorts.records import ADD, REMOVE, Change

COHORT = "live_1"
SYNC = CohortSync("live", COHORT, "Live users", "US", "real_time")
FAST = RetryPolicy(timeout_seconds=5, max_attempts=2, max_retry_seconds=1, backoff_base_seconds=0.01,
                   backoff_cap_seconds=0.01)


def _change(user, change, time_ms, cohort=COHORT, **extra):
    return orjson.dumps({"cohort_id": cohort, "change": change, "amplitude_id": 1, "user_id": user,
                         "time": time_ms, **extra})


def test_parse_both_message_shapes():
    mapping = UserMapping("user_id")
    changes, skipped, ignored = parse_message(_change("u1", "enter", 5), COHORT, mapping)
    assert changes == [(5, "u1", ADD, ("1",))] and not skipped and not ignored
    webhook = orjson.dumps({"cohort_id": COHORT, "cohort_name": "Live users", "in_cohort": False,
                            "computed_time": "2026-01-01T00:00:00Z", "message_id": "x::leave::0",
                            "users": [{"user_id": "u2"}, {"user_properties": {"user_id": "u3"}}, {"device_id": "d"}]})
    changes, skipped, _ = parse_message(webhook, COHORT, mapping)
    assert [(k, op) for _, k, op, _ in changes] == [("u2", REMOVE), ("u3", REMOVE)]
    assert changes[0][0] == 1767225600000
    assert [s.reason for s in skipped] == ["unresolved_mapping"]
    assert parse_message(_change("u1", "enter", 1, cohort="other"), COHORT, mapping)[2] == 1
    assert parse_message(b"{nope", COHORT, mapping)[1][0].reason == "invalid_message"
    assert parse_message(_change("u1", "maybe", 1), COHORT, mapping)[1][0].reason == "invalid_message"


def test_last_change_per_user_wins():
    buffered = [(10, "u1", ADD, ("1",)), (20, "u1", REMOVE, ("1",)), (5, "u2", REMOVE, ()), (5, "u2", ADD, ()),
                (30, "u3", ADD, ()), (25, "u3", REMOVE, ())]
    assert collapse(buffered) == [Change(REMOVE, "u1", ("1",)), Change(ADD, "u2", ()), Change(ADD, "u3", ())]


def test_flush_seconds_is_bounded_by_a_minute():
    target = Target("US", "http://127.0.0.1:1", "env:X", partner_api_key="env:Y")
    for bad in (0, 61, True):
        with pytest.raises(ValueError, match="flush_seconds"):
            FlushAndDeliver(target, SYNC, flush_seconds=bad)


@pytest.mark.integration
@pytest.mark.parametrize("delivery", ["partner", "attribute"])
def test_changes_are_flushed_every_minute_through_the_same_delivery(braze_sim, tmp_path, monkeypatch, delivery):
    monkeypatch.setenv("RT_REST_KEY", braze_sim.api_key)
    monkeypatch.setenv("RT_PARTNER_KEY", braze_sim.partner_api_keys[0])
    monkeypatch.setenv("RT_DATA_IMPORT_KEY", braze_sim.client_secrets[0])
    client = braze_sim.client()
    client.seed_users(*({"external_id": u} for u in ("u1", "u2", "u3", "u4")))
    if delivery == "partner":
        target = Target("US", braze_sim.url, "env:RT_DATA_IMPORT_KEY", partner_api_key="env:RT_PARTNER_KEY",
                        lookup_api_key="env:RT_REST_KEY")
        # The job names the cohort before the stream starts (pipeline.cohorts.name_cohort_first).
        from transforms.cohorts.delivery import CohortDeliverer
        with CohortDeliverer(target, SYNC, FAST) as d:
            assert d.name_cohort() is None
    else:
        target = Target("US", braze_sim.url, "env:RT_REST_KEY", delivery="attribute")

    stream = (Stream()
              .add_elements([_change("u1", "enter", 1), _change("u2", "enter", 2), _change("ghost", "enter", 3),
                             _change(None, "enter", 4), _change("u9", "enter", 5, cohort="another")])
              .advance_processing_time(61)
              .add_elements([_change("u1", "leave", 10), _change("u3", "enter", 11), _change("u4", "enter", 12),
                             _change("u4", "leave", 13)])
              .advance_processing_time(61)
              .advance_watermark_to_infinity())
    options = PipelineOptions(["--runner=BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    reporter = FlushReporter(SYNC, target, str(tmp_path))
    with beam.Pipeline(options=options) as p:
        changes = p | stream | ParseCohortChanges(COHORT, target.user_mapping)
        _ = changes.changes | FlushAndDeliver(target, SYNC, FAST, flush_seconds=60, clock=lambda: 0.0,
                                              on_flush=reporter)

    users = {u["external_id"]: u for u in client.users()}
    assert set(users) == {"u1", "u2", "u3", "u4"}  # ghost was not created...
    lookups = [r["body"]["external_ids"] for r in client.requests() if r["path"] == "/users/export/ids"]
    assert "ghost" in lookups[0]  # ...but looked up, found unknown, and not sent
    if delivery == "partner":
        members = sorted(k for k, u in users.items() if COHORT in u["cohorts"])
        sent = [c for r in client.requests() if r["path"].endswith("/cohorts/users") for c in r["body"]["cohort_changes"]]
        flat = [(i, bool(c.get("should_remove"))) for c in sent for i in c["user_ids"]]
    else:
        label = "[Amplitude] Live users: live_1"
        members = sorted(k for k, u in users.items() if label in (u["attributes"].get("amplitude_cohorts") or []))
        objects = [o for r in client.requests() if r["path"] == "/users/track" for o in r["body"]["attributes"]]
        assert all(o["_update_existing_only"] is True for o in objects)
        flat = [(o["external_id"], "remove" in o["amplitude_cohorts"]) for o in objects]
    assert members == ["u2", "u3"]
    # Two flushes, in order: the first minute's adds, then the second minute's last changes
    # (u4 entered and left within the minute: only the leave is sent).
    assert sorted(flat[:2]) == [("u1", False), ("u2", False)]
    assert sorted(flat[2:]) == [("u1", True), ("u3", False), ("u4", True)]

    reports = sorted(os.listdir(tmp_path / "reports" / COHORT / "US"))
    assert len(reports) == 4  # two flushes, .json and .csv each
    flushed = [orjson.loads(open(tmp_path / "reports" / COHORT / "US" / r, "rb").read())
               for r in reports if r.endswith(".json")]
    assert {f["mode"] for f in flushed} == {"real_time"} and {f["status"] for f in flushed} == {"success"}
    assert sorted((f["counts"]["added"], f["counts"]["removed"], f["counts"]["skipped"]) for f in flushed) == [
        (1, 2, 0), (2, 0, 1)]
    [ghost] = [u for f in flushed for u in f["users"] if u["skipped"]]
    assert (ghost["braze_id"], ghost["skip_reason"]) == ("ghost", "unknown_to_braze")
    assert all("Real time keeps no membership" in f["notes"][0] for f in flushed)


class _ClearFaultsAfterFailure:
    """on_flush that records each flush and lets Braze recover after the first failure."""

    statuses = []  # on the class: the DoFn works on a pickled copy of the instance

    def __init__(self, url):
        self.url = url

    def __call__(self, results, status, was_failing):
        from local.braze_sim import SimClient
        _ClearFaultsAfterFailure.statuses.append((status, was_failing))
        if status == "failed":
            SimClient(self.url).clear_faults()


@pytest.mark.integration
def test_changes_of_a_failed_flush_are_sent_at_the_next_one(braze_sim, monkeypatch):
    monkeypatch.setenv("RT_REST_KEY", braze_sim.api_key)
    monkeypatch.setenv("RT_PARTNER_KEY", braze_sim.partner_api_keys[0])
    monkeypatch.setenv("RT_DATA_IMPORT_KEY", braze_sim.client_secrets[0])
    client = braze_sim.client()
    client.seed_users(*({"external_id": u} for u in ("u1", "u2")))
    target = Target("US", braze_sim.url, "env:RT_DATA_IMPORT_KEY", partner_api_key="env:RT_PARTNER_KEY",
                    lookup_api_key="env:RT_REST_KEY")
    from transforms.cohorts.delivery import CohortDeliverer
    with CohortDeliverer(target, SYNC, FAST) as d:
        assert d.name_cohort() is None
    client.set_faults(error_rate=1.0, error_statuses=[503])
    stream = (Stream()
              .add_elements([_change("u1", "enter", 1)])
              .advance_processing_time(61)
              .add_elements([_change("u2", "enter", 2)])
              .advance_processing_time(61)
              .advance_watermark_to_infinity())
    options = PipelineOptions(["--runner=BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    recorder = _ClearFaultsAfterFailure(braze_sim.url)
    _ClearFaultsAfterFailure.statuses.clear()
    with beam.Pipeline(options=options) as p:
        changes = p | stream | ParseCohortChanges(COHORT, target.user_mapping)
        _ = changes.changes | FlushAndDeliver(target, SYNC, FAST, flush_seconds=60, clock=lambda: 0.0,
                                              on_flush=recorder)
    # The failed flush, the retry of its change (recovered), then the second minute's change.
    assert recorder.statuses == [("failed", False), ("success", True), ("success", False)]
    assert sorted(u["external_id"] for u in client.users() if COHORT in u["cohorts"]) == ["u1", "u2"]
