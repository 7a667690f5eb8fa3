"""A batch cohort run on Dataflow: the launcher checks, submits a one-step job and returns; the
job's step does the whole run on a worker (``pipeline/cohort_launch.py``).

The launch goes through the real ``DataflowRunner`` with only its Dataflow API calls replaced
(``templates/job_request.py``; they need Google Cloud) and every socket refused, so the test
also proves the launcher neither waits for the job nor calls out. The worker's side runs the
launched job's graph on the in-process runner against the Braze simulator over HTTP, as a
Dataflow worker would run its one element.
"""
import json
import os

import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from google.cloud import dataflow

from pipeline import cohorts as job
from pipeline.cohort_launch import build_batch_launch
from templates.job_request import kept_submissions, offline_argv, read_job_request
from transforms.cohorts.state import StateStore

COHORT = "c_power"
IMAGE = "us-central1-docker.pkg.dev/p/r/amplitude-braze:1"


@pytest.fixture
def sim(braze_sim, monkeypatch):
    monkeypatch.setenv("TEST_LAUNCH_REST_KEY", braze_sim.api_key)
    client = braze_sim.client()
    client.seed_users(*({"external_id": u} for u in ("u1", "u2", "u3")))
    yield braze_sim
    client.close()


def _run_argv(tmp_path, endpoint):
    """A snapshot run of an attribute-mode sync, as a person or Cloud Scheduler would start it."""
    config = {"targets": [{"name": "US", "endpoint": endpoint, "delivery": "attribute",
                           "api_key": "env:TEST_LAUNCH_REST_KEY", "user_mapping": {"type": "user_id"}}],
              "cohort_syncs": [{"name": "power", "cohort_id": COHORT, "cohort_name": "Power users", "target": "US",
                                "cadence": "daily"}]}
    config_path, snapshot = tmp_path / "cohorts.json", tmp_path / "members.csv"
    config_path.write_text(json.dumps(config))
    snapshot.write_text("amplitude_id,user_id\n1,u1\n2,u2\n3,u3\n")
    return ["--config", str(config_path), "--sync", "power", "--state_dir", str(tmp_path / "state"),
            "--snapshot", str(snapshot), "--allow_insecure_endpoints"]


@pytest.mark.timeout(180)
def test_on_dataflow_the_launcher_submits_one_step_that_runs_the_sync_and_returns(tmp_path, no_network, capsys):
    run_argv = _run_argv(tmp_path, "http://127.0.0.1:1")
    staging = str(tmp_path / "staging")
    os.makedirs(staging)
    dataflow_argv = ["--project=p", "--region=us-central1", "--job_name=cohort-sync-power",
                     f"--sdk_container_image={IMAGE}"]
    with kept_submissions() as submitted:
        status = job.run(offline_argv([*run_argv, *dataflow_argv], staging))
    assert status == 0, capsys.readouterr().err
    request = read_job_request(submitted, staging)
    assert request.job.proto.type_ == dataflow.JobType.JOB_TYPE_BATCH
    assert request.sdk_container_images == [IMAGE]  # the worker has the package; it installs nothing
    names = {t.unique_name for t in request.pipeline.components.transforms.values()}
    assert "RunCohortSync" in names
    assert "launched the run as job offline-job-id" in capsys.readouterr().out
    # Nothing of the run happened in the launcher: no lease, no state, no report.
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*"))


@pytest.mark.timeout(180)
def test_the_launched_step_runs_the_whole_sync_on_its_worker(tmp_path, sim):
    run_argv = _run_argv(tmp_path, sim.url)
    pipeline = build_batch_launch(PipelineOptions(["--runner=FnApiRunner"]), run_argv)
    result = pipeline.run()
    result.wait_until_finish()
    members = sorted(u["external_id"] for u in sim.client().users()
                     if "[Amplitude] Power users: c_power" in (u["attributes"].get("amplitude_cohorts") or []))
    assert members == ["u1", "u2", "u3"]
    assert sorted(StateStore(str(tmp_path / "state")).read_membership(COHORT, "US")) == ["u1", "u2", "u3"]
    reports = list((tmp_path / "state" / "reports" / COHORT / "US").glob("*.json"))
    assert [json.loads(p.read_text())["status"] for p in reports] == ["success"]
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(MetricsFilter())["counters"]}
    assert counters.get("runs_succeeded") == 1 and not counters.get("runs_failed")


def test_a_failed_run_on_the_worker_is_counted_not_raised(tmp_path, braze_sim, monkeypatch):
    """A Braze that refuses the key: the run fails (and reports it); the step does not raise,
    since Dataflow would retry it and run the sync (and its download) again."""
    monkeypatch.setenv("TEST_LAUNCH_REST_KEY", "not-the-key")
    run_argv = _run_argv(tmp_path, braze_sim.url)
    result = build_batch_launch(PipelineOptions(["--runner=FnApiRunner"]), run_argv).run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(MetricsFilter())["counters"]}
    assert counters.get("runs_failed") == 1 and not counters.get("runs_succeeded")
    assert not StateStore(str(tmp_path / "state")).read_membership(COHORT, "US")  # nothing saved
    reports = list((tmp_path / "state" / "reports" / COHORT / "US").glob("*.json"))
    assert [json.loads(p.read_text())["status"] for p in reports] == ["failed"]  # and reported
