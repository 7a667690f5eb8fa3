"""The cohort job's deployment: generated template metadata, the env file, and the gcloud commands
`make template-cohorts`, `make launch-cohorts` and `make schedule` print with DRY_RUN=1."""
import json
import os
import shlex
import subprocess
import sys

from pipeline.cohort_config import load_cohorts
from pipeline.cohort_options import option_actions
from templates import cohorts_deploy, cohorts_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry_run(command, env="dev"):
    done = subprocess.run([sys.executable, "-m", "templates.cohorts_deploy", command, "--env", env, "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")], done.stderr


def test_committed_metadata_is_the_generated_one():
    for kind, path in (("batch", cohorts_metadata.BATCH_PATH), ("feed", cohorts_metadata.FEED_PATH)):
        assert open(path, encoding="utf-8").read() == cohorts_metadata.render(kind), \
            f"{path} is stale: run python -m templates.cohorts_metadata"


def test_every_option_is_a_parameter_of_a_template_with_a_label():
    batch = {p["name"]: p for p in cohorts_metadata.build("batch")["parameters"]}
    feed = {p["name"]: p for p in cohorts_metadata.build("feed")["parameters"]}
    options = {a.dest for a, _ in option_actions()} - set(cohorts_metadata.NEVER)
    assert options | {"sdk_container_image"} == set(batch) | set(feed)
    assert "sdk_container_image" in batch and "sdk_container_image" in feed  # the workers' image
    assert options <= set(cohorts_metadata.LABELS)
    assert [n for n, p in batch.items() if not p["isOptional"]] == ["config", "sync", "state_dir"]
    assert sorted(n for n, p in feed.items() if not p["isOptional"]) == [
        "config", "dead_letter_topic", "input_subscription", "state_dir"]
    assert batch["allow_mass_removal"]["defaultValue"] == "false" and "input_subscription" not in batch


def test_the_dev_env_is_valid_and_templates_pick_the_cohort_entry_point():
    assert cohorts_deploy.validate(cohorts_deploy.load_env("dev")) == []
    commands, _ = _dry_run("template")
    assert [c[4] for c in commands] == ["gs://acme-braze-dev-dataflow/templates/amplitude-braze-cohorts-batch.json",
                                        "gs://acme-braze-dev-dataflow/templates/amplitude-braze-cohorts-feed.json"]
    # gcloud takes --image or --env, never both: the image's -cohorts tag carries the entry point
    # (templates/Dockerfile, stage `cohorts`), pushed by the same build as the streaming job's.
    assert not any(flag.startswith("--env") for c in commands for flag in c[5:])
    assert all("--image=us-central1-docker.pkg.dev/acme-braze-dev/dataflow/amplitude-braze-cohorts:0.1.0" in c
               for c in commands)
    with open(os.path.join(ROOT, "templates/Dockerfile"), encoding="utf-8") as f:
        dockerfile = f.read()
    cohorts_stage = dockerfile.split(" AS cohorts", 1)[1].split("\nFROM ", 1)[0]
    assert "ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/entrypoints/cohorts.py" in cohorts_stage


def test_launch_starts_the_streaming_mode_from_the_feed_template():
    commands, _ = _dry_run("launch")
    upload, run = commands
    assert upload[:3] == ["gcloud", "storage", "cp"] and upload[4] == "gs://acme-braze-dev-dataflow/config/cohorts.yaml"
    assert run[:5] == ["gcloud", "dataflow", "flex-template", "run", "amplitude-braze-cohort-feed"]
    parameters = dict(p.split("=", 1) for p in run[-1][len("--parameters="):].split(","))
    assert parameters["input_subscription"] == "projects/acme-braze-dev/subscriptions/amplitude-cohort-feed-braze"
    assert set(parameters) == {"config", "state_dir", "input_subscription", "dead_letter_topic", "sdk_container_image"}
    assert parameters["sdk_container_image"] == cohorts_deploy.load_env("dev")["gcloud"]["image"]  # workers install nothing


def test_schedule_prints_one_scheduler_job_per_scheduled_sync():
    commands, stderr = _dry_run("schedule")
    config = load_cohorts(os.path.join(ROOT, "templates/env/cohorts/cohorts.dev.yaml"))
    scheduled = {s.name: s for s in config.syncs if s.schedule}
    assert set(scheduled) == {"power-users", "power-users-devices"}  # churn-risk: feed only, no download
    creates = [c for c in commands if c[:5] == ["gcloud", "scheduler", "jobs", "create", "http"]]
    describes = [c for c in commands if c[:4] == ["gcloud", "scheduler", "jobs", "describe"]]
    assert [c[5] for c in creates] == [c[4] for c in describes] == ["cohort-sync-power-users",
                                                                     "cohort-sync-power-users-devices"]
    flags = {c[5]: dict(f[2:].split("=", 1) for f in c[6:]) for c in creates}
    for name, sync in (("cohort-sync-power-users", "power-users"), ("cohort-sync-power-users-devices",
                                                                    "power-users-devices")):
        f = flags[name]
        assert f["schedule"] == cohorts_deploy.cron_for(sync, scheduled[sync].schedule)
        assert f["uri"] == ("https://dataflow.googleapis.com/v1b3/projects/acme-braze-dev/locations/us-central1/"
                            "flexTemplates:launch")
        assert f["oauth-service-account-email"] == "amplitude-braze@acme-braze-dev.iam.gserviceaccount.com"
        body = json.loads(f["message-body"])["launchParameter"]
        assert body["containerSpecGcsPath"].endswith("amplitude-braze-cohorts-batch.json")
        assert body["parameters"]["sync"] == sync and body["parameters"]["config"].startswith("gs://")
        assert body["parameters"]["sdk_container_image"] == cohorts_deploy.load_env("dev")["gcloud"]["image"]
    weekly, daily = flags["cohort-sync-power-users"]["schedule"], flags["cohort-sync-power-users-devices"]["schedule"]
    assert weekly.endswith(" * * 1") and daily.endswith(" * * *") and len(daily.split()) == 5
    assert json.loads(flags["cohort-sync-power-users"]["message-body"])["launchParameter"]["parameters"][
        "reconcile"] == "true"  # a feed sync's download is a reconcile
    assert "scheduled downloads: 36 a month (1 daily × 31 + 1 weekly × 5)" in stderr


def test_a_bad_env_file_is_refused_with_every_problem(tmp_path, monkeypatch):
    document = cohorts_deploy.load_env("dev")
    document["gcloud"].pop("project")
    document["parameters"]["state_dir"] = "/local/path"
    document["feed_parameters"]["nope"] = "x"
    problems = cohorts_deploy.validate(document)
    assert "gcloud.project: required, a non-empty string" in problems
    assert "parameters.state_dir: '/local/path' does not match ['^gs://.+$']" in problems
    assert "feed_parameters.nope: not a parameter of the feed template" in problems
