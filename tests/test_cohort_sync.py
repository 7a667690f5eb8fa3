"""The cohort-sync job against the Braze simulator: full then incremental, both delivery modes,
failure then resend, the Default target, unknown and unresolved users, saved target names,
requests of at most 1,000 ids, the report and the email (a real SMTP server, aiosmtpd).
The existence check itself (/users/export/ids) has its own tests in test_cohort_lookup.py."""
import csv
import os
import shutil

import orjson
import pytest

from pipeline import cohorts as job
from pipeline.cohort_config import parse_cohorts
from pipeline.cohort_batch import RunSwitches, plan_sync, run_batch_sync
from transforms.cohorts.delivery import RetryPolicy
from transforms.cohorts.report import CSV_COLUMNS
from transforms.cohorts.state import StateError, StateStore

pytestmark = pytest.mark.integration

DATA = os.path.join(os.path.dirname(__file__), "data")
COHORT = "c_power"
FAST = RetryPolicy(timeout_seconds=5, max_attempts=2, max_retry_seconds=1, backoff_base_seconds=0.01,
                   backoff_cap_seconds=0.01)


@pytest.fixture
def sim(braze_sim, monkeypatch):
    monkeypatch.setenv("TEST_REST_KEY", braze_sim.api_key)
    monkeypatch.setenv("TEST_PARTNER_KEY", braze_sim.partner_api_keys[0])
    monkeypatch.setenv("TEST_DATA_IMPORT_KEY", braze_sim.client_secrets[0])
    client = braze_sim.client()
    client.seed_users(*({"external_id": u} for u in ("u1", "u2", "u3", "u4", "u5")))
    yield braze_sim
    client.close()


def _target(sim, name="US", delivery="partner", mapping=None, **extra):
    t = {"name": name, "endpoint": sim.url, "delivery": delivery, "user_mapping": mapping or {"type": "user_id"}}
    if delivery == "partner":
        t.update(api_key="env:TEST_DATA_IMPORT_KEY", partner_api_key="env:TEST_PARTNER_KEY")
        if extra.get("verify_users", True):
            t.update(lookup_api_key="env:TEST_REST_KEY")  # REST key with users.export.ids
    else:
        t.update(api_key="env:TEST_REST_KEY")
    t.update(extra)
    return t


def _config(*targets, cadence="daily", email=None):
    doc = {"targets": list(targets), "cohort_syncs": [
        {"name": f"sync-{i}", "cohort_id": COHORT, "cohort_name": "Power users", "target": t["name"],
         "cadence": cadence} for i, t in enumerate(targets)]}
    if email:
        doc["notifications"] = {"email": email}
    return parse_cohorts(doc, allow_insecure_endpoints=True)


def _snapshot(directory, name, rows, columns=("amplitude_id", "user_id", "device_id")):
    path = os.path.join(str(directory), name)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def _run(config, sync_name, state_dir, snapshot, **kwargs):
    plan = plan_sync(config, sync_name, str(state_dir))
    return plan, run_batch_sync(plan, snapshot=snapshot, policy=FAST, shards=2, **kwargs)


def _members(sim, cohort=COHORT):
    return sorted(u["external_id"] for u in sim.client().users() if cohort in u["cohorts"])


def _attribute_members(sim, attribute="amplitude_cohorts", value="[Amplitude] Power users: c_power"):
    return sorted(u["external_id"] for u in sim.client().users() if value in (u["attributes"].get(attribute) or []))


def _cohort_requests(sim, since=0):
    return [r for r in sim.client().requests(since) if r["path"].startswith("/partners/")]


def _lookups(sim, since=0):
    return [r for r in sim.client().requests(since) if r["path"] == "/users/export/ids"]


def _sent(outcome, op):
    return sorted(r["braze_id"] for r in outcome.report["users"] if r["operation"] == op and r["status"] == "sent")


FIRST = [(101, "u1", "d1"), (102, "u2", "d2"), (103, "u3", "d3"), (104, "ghost", "d4"), (105, "", "d5")]
SECOND = [(102, "u2", "d2"), (103, "u3", "d3"), (106, "u4", "d6"), (107, "u5", "d7")]


def test_partner_first_sync_is_full_then_only_changes(sim, tmp_path):
    config = _config(_target(sim))
    first, second = _snapshot(tmp_path, "1.csv", FIRST), _snapshot(tmp_path, "2.csv", SECOND)
    state = tmp_path / "state"

    plan, outcome = _run(config, "sync-0", state, first)
    assert (plan.mode, outcome.status) == ("full", "success")
    assert _members(sim) == ["u1", "u2", "u3"]
    assert all(u["external_id"] != "ghost" for u in sim.client().users())  # not created
    requests = _cohort_requests(sim)
    assert requests[0]["path"] == "/partners/amplitude/cohorts"  # the name call comes first
    assert requests[0]["body"]["name"] == "Power users" and requests[0]["body"]["client_secret"] == "[redacted]"
    adds = [r["body"]["cohort_changes"] for r in requests[1:]]
    # ghost is unknown to Braze: looked up, then neither sent nor billed.
    assert sorted(i for changes in adds for c in changes for i in c["user_ids"]) == ["u1", "u2", "u3"]
    assert all("should_remove" not in c for changes in adds for c in changes)
    assert sorted(i for r in _lookups(sim) for i in r["body"]["external_ids"]) == ["ghost", "u1", "u2", "u3"]
    assert outcome.report["counts"] == {"added": 3, "removed": 0, "skipped": 2, "failed": 0, "unchanged": 0}
    skipped = [r for r in outcome.report["users"] if r["skipped"]]
    assert [(r["amplitude_id"], r["braze_id"], r["status"], r["skip_reason"]) for r in skipped] == [
        ("105", "", "skipped", "unresolved_mapping"), ("104", "ghost", "skipped", "unknown_to_braze")]
    assert skipped[0]["detail"] == "no value for 'user_id'"
    assert sorted(StateStore(str(state)).read_membership(COHORT, "US")) == ["u1", "u2", "u3"]  # ghost not saved

    since = sim.client().requests_page()["next"]
    plan, outcome = _run(config, "sync-0", state, second)
    assert (plan.mode, outcome.status) == ("incremental", "success")
    assert _members(sim) == ["u2", "u3", "u4", "u5"]
    requests = _cohort_requests(sim, since)
    assert all(r["path"] == "/partners/amplitude/cohorts/users" for r in requests)  # same name: no name call
    changes = [c for r in requests for c in r["body"]["cohort_changes"]]
    assert sorted(i for c in changes if not c.get("should_remove") for i in c["user_ids"]) == ["u4", "u5"]
    assert sorted(i for c in changes if c.get("should_remove") for i in c["user_ids"]) == ["u1"]
    assert all(len(r["body"]["cohort_changes"]) == 1 for r in requests)  # adds and removes never share a request
    assert (_sent(outcome, "add"), _sent(outcome, "remove")) == (["u4", "u5"], ["u1"])
    assert outcome.report["counts"]["unchanged"] == 2
    assert sorted(StateStore(str(state)).read_membership(COHORT, "US")) == ["u2", "u3", "u4", "u5"]

    with open(outcome.csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert {(r["amplitude_id"], r["operation"], r["status"]) for r in rows} == {
        ("106", "add", "sent"), ("107", "add", "sent"), ("101", "remove", "sent")}
    report = orjson.loads(open(outcome.json_path, "rb").read())
    assert report["status"] == "success" and report["mode"] == "incremental" and report["run_id"] == plan.run_id
    assert any("never creates users" in n and "unknown_to_braze" in n for n in report["notes"])


def test_attribute_mode_full_then_incremental(sim, tmp_path):
    config = _config(_target(sim, delivery="attribute"))
    state = tmp_path / "state"
    plan, outcome = _run(config, "sync-0", state, _snapshot(tmp_path, "1.csv", FIRST))
    assert outcome.status == "success"
    assert _attribute_members(sim) == ["u1", "u2", "u3"]
    assert all(u["external_id"] != "ghost" for u in sim.client().users())
    track = [r for r in sim.client().requests() if r["path"] == "/users/track"]
    objects = [o for r in track for o in r["body"]["attributes"]]
    assert sorted(o["external_id"] for o in objects) == ["u1", "u2", "u3"]  # ghost: skipped, not sent
    assert [r["skip_reason"] for r in outcome.report["users"] if r["braze_id"] == "ghost"] == ["unknown_to_braze"]
    assert all(o["_update_existing_only"] is True for o in objects)
    assert {o["external_id"]: o["amplitude_cohorts"] for o in objects}["u1"] == {
        "add": ["[Amplitude] Power users: c_power"]}

    since = sim.client().requests_page()["next"]
    plan, outcome = _run(config, "sync-0", state, _snapshot(tmp_path, "2.csv", SECOND))
    assert (plan.mode, outcome.status) == ("incremental", "success")
    assert _attribute_members(sim) == ["u2", "u3", "u4", "u5"]
    objects = [o for r in sim.client().requests(since) if r["path"] == "/users/track" for o in r["body"]["attributes"]]
    assert sorted((o["external_id"], next(iter(o["amplitude_cohorts"]))) for o in objects) == [
        ("u1", "remove"), ("u4", "add"), ("u5", "add")]


def test_a_failed_run_keeps_the_last_membership_and_is_resent(sim, tmp_path):
    config = _config(_target(sim))
    state = tmp_path / "state"
    _run(config, "sync-0", state, _snapshot(tmp_path, "1.csv", FIRST))
    store = StateStore(str(state))
    before = store.read_meta(COHORT, "US")

    sim.client().set_faults(error_rate=1.0, error_statuses=[503])
    second = _snapshot(tmp_path, "2.csv", SECOND)
    plan, outcome = _run(config, "sync-0", state, second)
    assert outcome.status == "failed"
    assert outcome.report["counts"]["failed"] == 3  # u4, u5 in, u1 out: their lookup already failed
    assert any("lookup_failed" in e for e in outcome.report["errors"])
    assert all("retries_exhausted" in r["detail"] for r in outcome.report["users"] if r["status"] == "failed")
    assert store.read_meta(COHORT, "US") == before  # not replaced
    assert _members(sim) == ["u1", "u2", "u3"]
    assert orjson.loads(open(outcome.json_path, "rb").read())["status"] == "failed"

    sim.client().clear_faults()
    plan, outcome = _run(config, "sync-0", state, second)
    assert (plan.mode, outcome.status) == ("incremental", "success")
    assert (_sent(outcome, "add"), _sent(outcome, "remove")) == (["u4", "u5"], ["u1"])  # all of it again
    assert _members(sim) == ["u2", "u3", "u4", "u5"]


def test_a_failed_first_run_is_followed_by_a_full_one(sim, tmp_path, monkeypatch):
    config = _config(_target(sim))
    monkeypatch.setenv("TEST_PARTNER_KEY", "wrong")
    plan, outcome = _run(config, "sync-0", tmp_path / "state", _snapshot(tmp_path, "1.csv", FIRST))
    assert outcome.status == "failed"
    assert "naming the cohort in Braze failed: braze_auth" in outcome.report["errors"][0]
    assert "wrong" not in open(outcome.json_path).read()
    monkeypatch.setenv("TEST_PARTNER_KEY", sim.partner_api_keys[0])
    plan, outcome = _run(config, "sync-0", tmp_path / "state", _snapshot(tmp_path, "1.csv", FIRST))
    assert (plan.mode, outcome.status) == ("full", "success")
    assert _members(sim) == ["u1", "u2", "u3"]


def test_the_single_key_file_syncs_to_the_default_target(sim, tmp_path):
    text = open(os.path.join(DATA, "cohorts_default.yaml")).read()
    text = text.replace("https://rest.iad-03.braze.com", sim.url).replace("BRAZE_DATA_IMPORT_KEY", "TEST_DATA_IMPORT_KEY")
    text = text.replace("BRAZE_PARTNER_KEY", "TEST_PARTNER_KEY")
    config_path = tmp_path / "cohorts.yaml"
    config_path.write_text(text)
    snapshot = os.path.join(DATA, "cohorts_snapshot_1.csv")
    code = job.run(["--config", str(config_path), "--sync", "power-users", "--snapshot", snapshot,
                    "--state_dir", str(tmp_path / "state"), "--allow_insecure_endpoints", "--runner", "FnApiRunner"])
    assert code == 0
    assert _members(sim, "abc123") == ["u1", "u2", "u3"]
    assert sorted(StateStore(str(tmp_path / "state")).read_membership("abc123", "Default")) == [
        "ghost-1", "u1", "u2", "u3"]
    reports = os.listdir(tmp_path / "state" / "reports" / "abc123" / "Default")
    assert len(reports) == 2  # .json and .csv

    jsonl = os.path.join(DATA, "cohorts_snapshot_2.jsonl")
    code = job.run(["--config", str(config_path), "--sync", "power-users", "--snapshot", jsonl,
                    "--state_dir", str(tmp_path / "state"), "--allow_insecure_endpoints", "--runner", "FnApiRunner"])
    assert code == 0
    assert _members(sim, "abc123") == ["u2", "u3", "u4"]


def test_a_renamed_target_is_refused_until_the_old_one_is_deleted(sim, tmp_path, capsys):
    state = tmp_path / "state"
    _run(_config(_target(sim, name="US Production")), "sync-0", state, _snapshot(tmp_path, "1.csv", FIRST))
    renamed = _config(_target(sim, name="US Prod"))
    with pytest.raises(StateError, match="target 'US Prod' is the saved target 'US Production'"):
        plan_sync(renamed, "sync-0", str(state))
    assert job.run(["--state_dir", str(state), "--delete_target", "US Production"]) == 0
    assert "deleted target 'US Production' and 1 membership file(s)" in capsys.readouterr().out
    plan, outcome = _run(renamed, "sync-0", state, _snapshot(tmp_path, "2.csv", SECOND))
    assert (plan.mode, outcome.status) == ("full", "success")
    # A new target next to a saved one is not a rename.
    both = _config(_target(sim, name="US Prod"), _target(sim, name="Attr", delivery="attribute"))
    plan_sync(both, "sync-1", str(state))


def test_partner_requests_carry_at_most_1000_ids(sim, tmp_path):
    ids = [f"bulk-{i}" for i in range(2300)]
    sim.client().seed_users(*({"external_id": i} for i in ids))
    rows = [(10_000 + n, i, "") for n, i in enumerate(ids)]
    plan, outcome = _run(_config(_target(sim)), "sync-0", tmp_path / "state", _snapshot(tmp_path, "big.csv", rows))
    assert outcome.status == "success"
    sizes = [len(r["body"]["cohort_changes"][0]["user_ids"]) for r in _cohort_requests(sim)[1:]]
    assert max(sizes) <= 1000 and sum(sizes) == 2300
    assert len(_members(sim)) == 2300
    lookups = [len(r["body"]["external_ids"]) for r in _lookups(sim)]
    assert max(lookups) <= 50 and sum(lookups) == 2300
    assert len(lookups) == sum(-(-size // 50) for size in sizes)  # 1 lookup per 50 ids of each request


def _alias_and_device_targets(sim, tmp_path, second_email):
    """Braze knows the alias a@x.io (label email) and the device anon-1; sync-0 maps users by
    that alias, sync-1 by device id; the snapshot holds them and a second user (anon-2,
    ``second_email``). Returns (config, snapshot)."""
    sim.client().seed_users({"user_aliases": [{"alias_name": "a@x.io", "alias_label": "email"}]},
                            {"device_ids": ["anon-1"]})
    config = _config(
        _target(sim, name="Aliases", mapping={"type": "user_alias", "alias_label": "email", "alias_source": "email"}),
        _target(sim, name="Devices", mapping={"type": "device_id"}, partner="amplitude-dev"))
    columns = ("amplitude_id", "user_id", "device_id", "email")
    rows = [(1, "", "anon-1", "a@x.io"), (2, "", "anon-2", second_email)]
    return config, _snapshot(tmp_path, "1.csv", rows, columns)


def test_alias_and_device_id_mappings(sim, tmp_path):
    client = sim.client()
    config, snapshot = _alias_and_device_targets(sim, tmp_path, second_email="")
    for name in ("sync-0", "sync-1"):
        _, outcome = _run(config, name, tmp_path / "state", snapshot)
        assert outcome.status == "success"
    users = client.users()
    alias_user = next(u for u in users if u["user_aliases"])
    device_user = next(u for u in users if u["device_ids"])
    assert alias_user["cohorts"] == [COHORT] and device_user["cohorts"] == [COHORT]
    assert len(users) == 7  # nobody created
    paths = {r["path"] for r in _cohort_requests(sim)}
    assert "/partners/amplitude-dev/cohorts/users" in paths


def test_batch_runs_of_a_feed_sync_bootstrap_it_then_need_reconcile(sim, tmp_path):
    config = _config(_target(sim), cadence="real_time")  # source: feed by default
    _run(config, "sync-0", tmp_path / "state", _snapshot(tmp_path, "1.csv", FIRST))
    with pytest.raises(StateError, match="already has its initial population.*needs --reconcile"):
        plan_sync(config, "sync-0", str(tmp_path / "state"))
    plan = plan_sync(config, "sync-0", str(tmp_path / "state"), reconcile=True)
    outcome = run_batch_sync(plan, snapshot=_snapshot(tmp_path, "2.csv", SECOND), policy=FAST,
                             switches=RunSwitches(reconcile=True))
    assert (plan.mode, outcome.status) == ("incremental", "success")
    assert "run with --reconcile" in outcome.report["notes"]


def test_bad_options_exit_2(tmp_path, capsys):
    assert job.run(["--config", "x.yaml", "--state_dir", str(tmp_path)]) == 2
    assert "--sync is required for a batch run" in capsys.readouterr().err
    assert job.run(["--config", "x.yaml", "--state_dir", str(tmp_path),
                    "--input_subscription", "projects/p/subscriptions/s"]) == 2
    assert "--dead_letter_topic is required with --input_subscription" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Email, over a real SMTP server


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    class Inbox(Message):
        def __init__(self):
            super().__init__()
            self.messages = []

        def handle_message(self, message):
            self.messages.append(message)

    inbox = Inbox()
    port = _free_port()  # aiosmtpd's readiness check cannot follow port 0
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _email(port):
    return {"smtp_host": "127.0.0.1", "smtp_port": port, "sender": "cohorts@example.com",
            "recipients": ["growth@example.com", "data@example.com"]}


def test_email_on_success_and_on_failure(sim, tmp_path, smtp_server):
    port, inbox = smtp_server
    config = _config(_target(sim), email=_email(port))
    state = tmp_path / "state"
    _, outcome = _run(config, "sync-0", state, _snapshot(tmp_path, "1.csv", FIRST))
    assert outcome.report["email"]["sent"] is True
    sim.client().set_faults(error_rate=1.0)
    _, failed = _run(config, "sync-0", state, _snapshot(tmp_path, "2.csv", SECOND))
    assert failed.status == "failed" and failed.report["email"]["sent"] is True
    assert len(inbox.messages) == 2
    ok, bad = inbox.messages
    assert ok["Subject"].startswith("[amplitude-braze] Cohort sync sync-0 succeeded: Power users (c_power)")
    assert "+3 -0 skipped 2 failed 0" in ok["Subject"]
    assert ok["To"] == "growth@example.com, data@example.com"
    assert "FAILED" in bad["Subject"] and "failed 3" in bad["Subject"]
    body = bad.get_payload(decode=True).decode()
    assert "lookup_failed" in body and failed.json_path in body
    assert sim.partner_api_keys[0] not in body and sim.client_secrets[0] not in body and sim.api_key not in body


def test_an_email_that_cannot_be_sent_does_not_fail_the_sync(sim, tmp_path):
    port = _free_port()  # nothing listens there
    config = _config(_target(sim), email={**_email(port), "timeout_seconds": 2})
    _, outcome = _run(config, "sync-0", tmp_path / "state", _snapshot(tmp_path, "1.csv", FIRST))
    assert outcome.status == "success"
    assert outcome.report["email"]["sent"] is False and "SMTP 127.0.0.1" in outcome.report["email"]["error"]
    assert orjson.loads(open(outcome.json_path, "rb").read())["email"]["sent"] is False


def test_state_and_reports_can_live_apart(sim, tmp_path):
    config = _config(_target(sim))
    plan = plan_sync(config, "sync-0", str(tmp_path / "state"), report_dir=str(tmp_path / "reports"))
    outcome = run_batch_sync(plan, snapshot=_snapshot(tmp_path, "1.csv", FIRST), policy=FAST)
    assert outcome.json_path.startswith(str(tmp_path / "reports" / "reports" / COHORT / "US"))
    assert not os.path.exists(plan.run_dir)  # scratch files removed
    shutil.rmtree(tmp_path / "reports")
