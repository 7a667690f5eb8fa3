"""The existence check before cohort delivery (/users/export/ids): the pure parts, then whole
syncs against the Braze simulator: unknown users skipped and retried once Braze knows them,
both delivery modes, alias and device id mappings, failed lookups, verify_users: false."""
import csv
import logging

import orjson
import pytest

from pipeline.cohort_config import CohortSync, Target, UserMapping
from pipeline.cohort_batch import plan_sync, run_batch_sync
from transforms import braze_client as bc
from transforms.braze_client import Response, TransportError
from transforms.cohorts.delivery import CohortDeliverer, DeliverChanges, RetryPolicy
from transforms.cohorts.lookup import classify_lookup, known_keys, lookup_bodies, lookup_key_reference
from transforms.cohorts.records import ADD, REMOVE, Change
from transforms.cohorts.state import StateStore
from tests.test_cohort_sync import (  # noqa: F401 - sim is a fixture
    COHORT, FIRST, SECOND, _alias_and_device_targets, _attribute_members, _config, _cohort_requests, _lookups,
    _members, _run, _sent, _snapshot, _target, sim,
)

FIELDS = ["external_id", "user_aliases", "braze_id"]
PARTNER_WITHOUT_LOOKUP_KEY = Target("T", "https://rest.iad-01.braze.com", "env:K", partner_api_key="env:P")
SYNC = CohortSync("s", "c1", "C", "T", "daily")


# ---------------------------------------------------------------------------------------------
# Pure parts


def test_lookup_bodies_batch_50_ids_or_aliases_and_one_device_id():
    keys = [f"u{i}" for i in range(120)]
    bodies = lookup_bodies(UserMapping("user_id"), keys + ["u0"])  # a repeated key is asked once
    assert [len(k) for k, _ in bodies] == [50, 50, 20]
    assert bodies[0][1] == {"external_ids": keys[:50], "fields_to_export": FIELDS}
    [(asked, body)] = lookup_bodies(UserMapping("user_alias", "email"), ["a@x.io"])
    assert body == {"user_aliases": [{"alias_name": "a@x.io", "alias_label": "email"}], "fields_to_export": FIELDS}
    bodies = lookup_bodies(UserMapping("device_id"), ["d1", "d2"])
    assert bodies == [(["d1"], {"device_id": "d1", "fields_to_export": FIELDS}),
                      (["d2"], {"device_id": "d2", "fields_to_export": FIELDS})]


def test_known_users_are_matched_by_the_returned_fields():
    answer = {"users": [{"external_id": "u1", "user_aliases": [{"alias_name": "a", "alias_label": "email"},
                                                               {"alias_name": "b", "alias_label": "other"}]},
                        {"braze_id": "x"}, "junk"],
              "invalid_user_ids": ["u2"], "message": "success"}
    assert known_keys(UserMapping("user_id"), ["u1", "u2", "u3"], answer) == {"u1"}  # u3: not returned = unknown
    assert known_keys(UserMapping("user_alias", "email"), ["a", "b"], answer) == {"a"}  # b has another label
    assert known_keys(UserMapping("device_id"), ["d1"], answer) == {"d1"}
    assert known_keys(UserMapping("device_id"), ["d1"], {"users": []}) == set()


@pytest.mark.parametrize("answer, action, reason", [
    (Response(201, {"users": [], "message": "success"}, {}), bc.OK, ""),
    (Response(201, {"message": "success"}, {}), bc.FAIL, bc.BRAZE_FAILED),
    (Response(400, {"message": "'fields_to_export' is required"}, {}), bc.FAIL, bc.BRAZE_REJECTED),
    (Response(401, {"message": "Invalid API Key"}, {}), bc.FAIL, bc.BRAZE_AUTH),
    (Response(403, {}, {}), bc.FAIL, bc.BRAZE_FORBIDDEN),
    (Response(429, {}, {"retry-after": "1"}), bc.RETRY, "http_429"),
    (Response(503, {}, {}), bc.RETRY, "http_503"),
    (TransportError("timeout", "read timeout"), bc.RETRY, "timeout"),
])
def test_lookup_verdicts(answer, action, reason):
    verdict = classify_lookup(answer)
    assert (verdict.action, verdict.reason) == (action, reason)


def test_which_key_the_check_uses():
    with pytest.raises(ValueError, match="verify_users needs lookup_api_key"):
        lookup_key_reference(PARTNER_WITHOUT_LOOKUP_KEY)
    assert lookup_key_reference(Target("T", "https://x", "env:K", partner_api_key="env:P", verify_users=False)) is None
    assert lookup_key_reference(Target("T", "https://x", "env:K", partner_api_key="env:P",
                                       lookup_api_key="env:L")) == "env:L"
    assert lookup_key_reference(Target("T", "https://x", "env:K", delivery="attribute")) == "env:K"
    with pytest.raises(ValueError, match="lookup_api_key"):  # refused when the job is built
        DeliverChanges(PARTNER_WITHOUT_LOOKUP_KEY, SYNC)
    with pytest.raises(ValueError, match="lookup_api_key"):
        CohortDeliverer(PARTNER_WITHOUT_LOOKUP_KEY, SYNC)


# ---------------------------------------------------------------------------------------------
# Whole syncs against the simulator

@pytest.mark.integration
@pytest.mark.parametrize("delivery", ["partner", "attribute"])
def test_unknown_users_are_skipped_then_added_once_braze_knows_them(sim, tmp_path, delivery):
    config = _config(_target(sim, delivery=delivery))
    state, snapshot = tmp_path / "state", _snapshot(tmp_path, "1.csv", FIRST)
    members = _members if delivery == "partner" else _attribute_members

    plan, outcome = _run(config, "sync-0", state, snapshot)
    assert outcome.status == "success"
    assert members(sim) == ["u1", "u2", "u3"] and sim.client().user("ghost") is None
    rows = {r["braze_id"]: r for r in outcome.report["users"]}
    assert (rows["ghost"]["status"], rows["ghost"]["skipped"], rows["ghost"]["skip_reason"]) == (
        "skipped", True, "unknown_to_braze")
    assert "not sent" in rows["ghost"]["detail"]
    with open(outcome.csv_path, newline="") as f:
        csv_rows = {r["braze_id"]: r for r in csv.DictReader(f)}
    assert (csv_rows["ghost"]["status"], csv_rows["ghost"]["skipped"], csv_rows["ghost"]["skip_reason"]) == (
        "skipped", "true", "unknown_to_braze")
    assert sorted(StateStore(str(state)).read_membership(COHORT, "US")) == ["u1", "u2", "u3"]
    assert sim.client().counters()["data_points"] == 3  # nothing billed for ghost

    sim.client().seed_users({"external_id": "ghost"})  # Braze learns about the user later
    since = sim.client().requests_page()["next"]
    plan, outcome = _run(config, "sync-0", state, snapshot)  # same cohort: ghost is "entering" again
    assert (plan.mode, outcome.status) == ("incremental", "success")
    assert _sent(outcome, "add") == ["ghost"] and outcome.report["counts"]["unchanged"] == 3
    assert [r["body"]["external_ids"] for r in _lookups(sim, since)] == [["ghost"]]  # only the change is looked up
    assert members(sim) == ["ghost", "u1", "u2", "u3"]
    assert sorted(StateStore(str(state)).read_membership(COHORT, "US")) == ["ghost", "u1", "u2", "u3"]


@pytest.mark.integration
def test_a_remove_of_a_user_braze_does_not_know_is_skipped_and_forgotten(sim, tmp_path):
    state = tmp_path / "state"
    # Before the check, ghost was "sent" and saved as a member.
    _run(_config(_target(sim, verify_users=False)), "sync-0", state, _snapshot(tmp_path, "1.csv", FIRST))
    assert "ghost" in StateStore(str(state)).read_membership(COHORT, "US")
    since = sim.client().requests_page()["next"]
    plan, outcome = _run(_config(_target(sim)), "sync-0", state, _snapshot(tmp_path, "2.csv", SECOND))
    assert (plan.mode, outcome.status) == ("incremental", "success")
    [ghost] = [r for r in outcome.report["users"] if r["braze_id"] == "ghost"]
    assert (ghost["operation"], ghost["status"], ghost["skip_reason"]) == ("remove", "skipped", "unknown_to_braze")
    sent = [i for r in _cohort_requests(sim, since) for c in r["body"]["cohort_changes"] for i in c["user_ids"]]
    assert sorted(sent) == ["u1", "u4", "u5"]
    assert sorted(StateStore(str(state)).read_membership(COHORT, "US")) == ["u2", "u3", "u4", "u5"]


@pytest.mark.integration
def test_alias_and_device_id_mappings_are_checked(sim, tmp_path):
    client = sim.client()
    config, snapshot = _alias_and_device_targets(sim, tmp_path, second_email="b@x.io")
    for name, unknown in (("sync-0", "b@x.io"), ("sync-1", "anon-2")):
        _, outcome = _run(config, name, tmp_path / "state", snapshot)
        assert outcome.status == "success"
        assert [(r["braze_id"], r["skip_reason"]) for r in outcome.report["users"] if r["skipped"]] == [
            (unknown, "unknown_to_braze")]
    lookups = [r["body"] for r in _lookups(sim)]
    aliases = [b for b in lookups if "user_aliases" in b]
    assert len(aliases) == 1 and sorted(a["alias_name"] for a in aliases[0]["user_aliases"]) == ["a@x.io", "b@x.io"]
    assert sorted(b["device_id"] for b in lookups if "device_id" in b) == ["anon-1", "anon-2"]  # one request each
    sent = [c for r in _cohort_requests(sim) if r["path"].endswith("/users") for c in r["body"]["cohort_changes"]]
    assert [a["alias_name"] for c in sent for a in c.get("aliases", ())] == ["a@x.io"]
    assert [d for c in sent for d in c.get("device_ids", ())] == ["anon-1"]
    assert len(client.users()) == 7  # nobody created

    client.seed_users({"user_aliases": [{"alias_name": "b@x.io", "alias_label": "email"}]},
                      {"device_ids": ["anon-2"]})
    for name, known in (("sync-0", "b@x.io"), ("sync-1", "anon-2")):
        plan, outcome = _run(config, name, tmp_path / "state", snapshot)
        assert (plan.mode, outcome.status, _sent(outcome, "add")) == ("incremental", "success", [known])
    assert sum(COHORT in u["cohorts"] for u in client.users()) == 4


@pytest.mark.integration
@pytest.mark.parametrize("delivery", ["partner", "attribute"])
def test_a_refused_lookup_fails_the_run_and_keeps_the_state(sim, tmp_path, monkeypatch, caplog, delivery):
    caplog.set_level(logging.DEBUG)
    bad_key = "lookup-key-that-braze-refuses-0123456789"
    monkeypatch.setenv("TEST_LOOKUP_KEY", bad_key)
    config = _config(_target(sim, delivery=delivery, lookup_api_key="env:TEST_LOOKUP_KEY"))
    state, snapshot = tmp_path / "state", _snapshot(tmp_path, "1.csv", FIRST)
    plan, outcome = _run(config, "sync-0", state, snapshot)
    assert outcome.status == "failed"
    assert outcome.report["counts"]["failed"] == 4 and outcome.report["counts"]["added"] == 0
    assert any("lookup_failed" in e for e in outcome.report["errors"])
    failed = [r for r in outcome.report["users"] if r["status"] == "failed"]
    assert all("/users/export/ids braze_auth: HTTP 401" in r["detail"] for r in failed)
    delivered = ("/users/track", "/partners/amplitude/cohorts/users")
    assert not [r for r in sim.client().requests() if r["path"] in delivered]
    assert StateStore(str(state)).read_meta(COHORT, "US") is None  # no membership saved
    texts = [open(outcome.json_path).read(), open(outcome.csv_path).read(), caplog.text, repr(outcome.report)]
    assert not any(bad_key in t or sim.api_key in t for t in texts)

    monkeypatch.setenv("TEST_LOOKUP_KEY", sim.api_key)
    plan, outcome = _run(config, "sync-0", state, snapshot)
    assert (plan.mode, outcome.status, outcome.report["counts"]["added"]) == ("full", "success", 3)


@pytest.mark.integration
def test_an_unreadable_lookup_key_fails_the_changes(sim, tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_MISSING_KEY", raising=False)
    config = _config(_target(sim, delivery="attribute", lookup_api_key="env:TEST_MISSING_KEY"))
    _, outcome = _run(config, "sync-0", tmp_path / "state", _snapshot(tmp_path, "1.csv", FIRST))
    assert outcome.status == "failed" and any("api_key_unavailable" in e for e in outcome.report["errors"])
    assert not _lookups(sim) and _attribute_members(sim) == []


@pytest.mark.integration
def test_lookups_wait_out_a_429(sim, tmp_path):
    sim.client().set_faults(rate_limit_burst=1, retry_after_seconds=1)
    config = _config(_target(sim, delivery="attribute"))
    plan = plan_sync(config, "sync-0", str(tmp_path / "state"))
    policy = RetryPolicy(timeout_seconds=5, max_attempts=3, max_retry_seconds=5, backoff_base_seconds=0.01,
                         backoff_cap_seconds=0.01)
    outcome = run_batch_sync(plan, snapshot=_snapshot(tmp_path, "1.csv", FIRST), policy=policy, shards=1)
    assert outcome.status == "success" and _attribute_members(sim) == ["u1", "u2", "u3"]
    assert [r["status"] for r in _lookups(sim)] == [429, 201]


@pytest.mark.integration
@pytest.mark.parametrize("delivery", ["partner", "attribute"])
def test_verify_users_false_sends_unchecked_as_before(sim, tmp_path, delivery):
    config = _config(_target(sim, delivery=delivery, verify_users=False))
    state = tmp_path / "state"
    _, outcome = _run(config, "sync-0", state, _snapshot(tmp_path, "1.csv", FIRST))
    assert outcome.status == "success" and not _lookups(sim)
    assert _sent(outcome, "add") == ["ghost", "u1", "u2", "u3"]  # ghost "sent", ignored by Braze
    assert sim.client().user("ghost") is None
    assert any("does not say which ids it matched" in n for n in outcome.report["notes"])
    assert "ghost" in StateStore(str(state)).read_membership(COHORT, "US")


@pytest.mark.integration
def test_deliverer_keeps_the_order_of_changes(sim):
    """Skipped and sent results come back in the order the changes came in."""
    target = Target("T", sim.url, "env:TEST_REST_KEY", delivery="attribute")
    changes = [Change(ADD, "ghost", ("1",)), Change(ADD, "u1", ("2",)), Change(ADD, "nobody", ()),
               Change(ADD, "u2", ("3",))]
    with CohortDeliverer(target, SYNC) as deliverer:
        results = deliverer.deliver(ADD, changes)
        assert [(r.key, r.status, r.reason) for r in results] == [
            ("ghost", "skipped", "unknown_to_braze"), ("u1", "done", ""), ("nobody", "skipped", "unknown_to_braze"),
            ("u2", "done", "")]
        assert deliverer.deliver(REMOVE, [Change(REMOVE, "ghost", ())])[0].reason == "unknown_to_braze"
    assert orjson.loads(orjson.dumps(results[0].to_json()))["reason"] == "unknown_to_braze"
