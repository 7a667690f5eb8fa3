"""Download-based syncs through the Amplitude stand-in (local/amplitude_sim) and the Braze simulator:
full then delta, auth failure, 429s, a download that never completes, the monthly budget, a
cohort over the size limit, overlapping runs, and the safety refusals. Each failure is a failed
run whose report and email (a real SMTP server) say why, with the last membership kept."""
import os

import pytest

from local.amplitude_sim import AmplitudeSimulator
from pipeline.cohort_batch import RunSwitches, plan_sync, run_batch_sync
from pipeline.cohort_config import parse_cohorts
from transforms.cohorts.amplitude_api import CohortDownloader
from transforms.cohorts.lease import acquire_lease, downloads_this_month
from transforms.cohorts.state import StateStore
from tests.test_cohort_sync import FAST, _members, _target, sim, smtp_server  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration
COHORT = "c_dl"
MEMBERS = [{"amplitude_id": 101, "user_id": "u1"}, {"amplitude_id": 102, "user_id": "u2"},
           {"amplitude_id": 103, "user_id": "u3"}, {"amplitude_id": 104, "user_id": ""}]


@pytest.fixture
def amplitude(monkeypatch):
    with AmplitudeSimulator(job_seconds=0.1) as simulator:
        monkeypatch.setenv("AMP_KEY", simulator.api_key)
        monkeypatch.setenv("AMP_SECRET", simulator.secret_key)
        simulator.client().set_cohort(COHORT, "Downloaded", MEMBERS)
        yield simulator


def _config(braze, amplitude, email_port=None, cadence="daily", **amplitude_settings):
    doc = {"targets": [_target(braze)],
           "cohort_syncs": [{"name": "dl", "cohort_id": COHORT, "cohort_name": "Downloaded", "target": "US",
                             "cadence": cadence, "source": "download", "max_removed_share": 0.5}],
           "amplitude": {"api_key": "env:AMP_KEY", "secret_key": "env:AMP_SECRET", "endpoint": amplitude.url,
                         **amplitude_settings}}
    if email_port:
        doc["notifications"] = {"email": {"smtp_host": "127.0.0.1", "smtp_port": email_port,
                                          "sender": "cohorts@example.com", "recipients": ["growth@example.com"]}}
    return parse_cohorts(doc, allow_insecure_endpoints=True)


def _fast_downloader(*args, **kwargs):
    return CohortDownloader(*args, **{**kwargs, "poll_seconds": 0.05, "max_wait_seconds": 0.2})


def _sync(config, state, switches=RunSwitches(), downloader=_fast_downloader):
    plan = plan_sync(config, "dl", str(state))
    return plan, run_batch_sync(plan, switches=switches, policy=FAST, shards=1, downloader_factory=downloader)


def test_a_full_download_then_a_delta(sim, amplitude, tmp_path):
    config = _config(sim, amplitude)
    state = tmp_path / "state"
    plan, outcome = _sync(config, state)
    assert (plan.mode, outcome.status) == ("full", "success"), outcome.report["errors"]
    assert _members(sim, COHORT) == ["u1", "u2", "u3"]
    assert outcome.report["counts"] == {"added": 3, "removed": 0, "skipped": 1, "failed": 0, "unchanged": 0}
    calls = [(r["path"], r["status"]) for r in amplitude.client().requests()]
    assert calls[:2] == [("/api/3/cohorts", 200), (f"/api/5/cohorts/request/{COHORT}", 202)]  # size, one download
    assert calls[-1][1] == 302 and calls[-1][0].endswith("/file")  # followed to the 1-minute storage link

    amplitude.client().set_cohort(COHORT, "Downloaded", MEMBERS[1:3] + [{"amplitude_id": 105, "user_id": "u4"}])
    plan, outcome = _sync(config, state)
    assert (plan.mode, outcome.status) == ("incremental", "success")
    assert _members(sim, COHORT) == ["u2", "u3", "u4"]
    assert outcome.report["counts"] == {"added": 1, "removed": 1, "skipped": 0, "failed": 0, "unchanged": 2}
    assert downloads_this_month(str(state)) == 2 == amplitude.client().usage()["download_requests"]
    # the membership is a file per run behind a pointer; the old run's file is kept as "previous"
    pointer, _ = StateStore(str(state)).read_pointer(COHORT, "US")
    assert pointer["path"].endswith(plan.run_id + ".jsonl") and os.path.exists(pointer["previous"])


def _failed(outcome, inbox, text):
    assert outcome.status == "failed"
    assert any(text in e for e in outcome.report["errors"]), outcome.report["errors"]
    assert outcome.report["email"]["sent"] is True
    body = inbox.messages[-1].get_payload(decode=True).decode()
    assert "FAILED" in inbox.messages[-1]["Subject"] and text in body
    return body


def test_failures_are_reported_and_emailed_and_keep_the_last_membership(sim, amplitude, tmp_path, smtp_server):
    port, inbox = smtp_server
    config = _config(sim, amplitude, email_port=port)
    state = tmp_path / "state"
    assert _sync(config, state)[1].status == "success"
    store = StateStore(str(state))
    before = store.read_pointer(COHORT, "US")

    # Wrong secret key: refused by Amplitude before any download is spent; no key in the report.
    os.environ["AMP_SECRET"] = "wrong-secret-key-1234"
    body = _failed(_sync(config, state)[1], inbox, "Amplitude refused the credentials (HTTP 401)")
    assert "wrong-secret-key-1234" not in body and amplitude.api_key not in body
    os.environ["AMP_SECRET"] = amplitude.secret_key

    # 429s: waited out within the deadline, then the run succeeds.
    amplitude.client().set_faults(rate_limit_next=2, retry_after_seconds=0)
    assert _sync(config, state)[1].status == "success"
    # 429s past the deadline: a failed run.
    amplitude.client().set_faults(rate_limit_next=1000, retry_after_seconds=1)
    _failed(_sync(config, state, RunSwitches(download_deadline_minutes=0.02))[1], inbox, "answered 429")

    # A download that never completes: the deadline ends it.
    amplitude.client().set_faults(never_complete=True)
    _failed(_sync(config, state, RunSwitches(download_deadline_minutes=0.01))[1], inbox,
            "download job was still running")
    amplitude.client().clear_faults()

    # A cohort over the size limit: refused before the budget is touched.
    used = downloads_this_month(str(state))
    amplitude.client().set_cohort(COHORT, "Downloaded", MEMBERS, size=3_000_000)
    _failed(_sync(config, state)[1], inbox, "has 3,000,000 users, over the download limit of 2,000,000")
    assert downloads_this_month(str(state)) == used
    amplitude.client().set_cohort(COHORT, "Downloaded", MEMBERS)

    assert store.read_pointer(COHORT, "US")[0]["path"] != before[0]["path"]  # only the 429 run committed
    assert _members(sim, COHORT) == ["u1", "u2", "u3"]


def test_the_monthly_budget_is_counted_and_refused_before_it_runs_out(sim, amplitude, tmp_path, smtp_server):
    port, inbox = smtp_server
    # one_time: run by hand, so the schedule check (31 a month > 2) does not refuse the file
    config = _config(sim, amplitude, email_port=port, cadence="one_time", monthly_download_budget=3, budget_reserve=1)
    state = tmp_path / "state"
    assert [_sync(config, state)[1].status for _ in range(2)] == ["success", "success"]
    body = _failed(_sync(config, state)[1], inbox, "the download budget for")
    assert "2 downloads counted, the limit is 2 (Amplitude's 3 a month less the reserve of 1" in body
    assert amplitude.client().usage()["download_requests"] == 2  # the refused run asked nothing
    assert _sync(config, state, RunSwitches(use_download_reserve=True))[1].status == "success"
    assert downloads_this_month(str(state)) == 3


def test_overlapping_runs_of_one_sync(sim, amplitude, tmp_path, smtp_server):
    port, inbox = smtp_server
    config = _config(sim, amplitude, email_port=port)
    state = tmp_path / "state"
    acquire_lease(str(state), COHORT, "US", "other-run", 10, sync="dl")
    body = _failed(_sync(config, state)[1], inbox, "another run of cohort 'c_dl' to target 'US' is in progress")
    assert "run 'other-run'" in body
    assert amplitude.client().requests() == []  # nothing was downloaded


def test_an_empty_or_shrunken_membership_is_refused_unless_allowed(sim, amplitude, tmp_path, smtp_server):
    port, inbox = smtp_server
    config = _config(sim, amplitude, email_port=port)
    state = tmp_path / "state"
    assert _sync(config, state)[1].status == "success"
    since = sim.client().requests_page()["next"]
    amplitude.client().set_cohort(COHORT, "Downloaded", [])
    _failed(_sync(config, state)[1], inbox, "the membership holds no users, which would remove all 3 member(s)")
    amplitude.client().set_cohort(COHORT, "Downloaded", MEMBERS[2:3])
    _failed(_sync(config, state)[1], inbox, "would remove 2 of 3 member(s) (67%), more than the sync's "
                                            "max_removed_share of 50%")
    assert [r for r in sim.client().requests(since) if r["path"].startswith("/partners/")] == []  # nothing sent
    plan, outcome = _sync(config, state, RunSwitches(allow_mass_removal=True))
    assert outcome.status == "success" and "run with --allow_mass_removal" in outcome.report["notes"]
    assert _members(sim, COHORT) == ["u3"]
