"""``make bootstrap ENV=...``: everything an environment needs, created in a working order, only
where missing.

gcloud cannot reach Google Cloud here, so the dry run is checked with a ``gcloud`` on PATH
that records any call and fails (none may happen), and the real run with one that answers
lookups from a list of resources that "exist" and records what it was asked to create.
"""
import json
import os
import shlex
import stat
import subprocess
import sys

import pytest

from templates import bootstrap, deploy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_GCLOUD = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if os.environ.get("FAKE_GCLOUD_MODE") == "refuse":
    sys.exit(97)
existing = json.loads(os.environ.get("FAKE_GCLOUD_EXISTING", "[]"))
if "describe" in args:
    sys.exit(0 if args[args.index("describe") + 1] in existing else 1)
sys.exit(0)
"""


@pytest.fixture
def fake_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "gcloud.log"
    log.touch()

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()]

    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_GCLOUD_LOG=str(log))
    return env, calls


def _commands(out):
    """The printed steps as (lookup, create) argument lists."""
    steps = []
    for line in out.splitlines():
        if not line.startswith("+ "):
            continue
        check, _, create = line[2:].rpartition(" >/dev/null 2>&1 || ")
        steps.append((shlex.split(check) if check else None, shlex.split(create)))
    return steps


def test_make_bootstrap_dry_run_prints_every_resource_in_a_working_order(fake_gcloud):
    env, calls = fake_gcloud
    done = subprocess.run(["make", "-s", "bootstrap", "ENV=dev", "DRY_RUN=1"], cwd=ROOT,
                          env=dict(env, FAKE_GCLOUD_MODE="refuse"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert calls() == [], "a dry run must not call gcloud"
    steps = _commands(done.stdout)
    creates = [" ".join(create) for _, create in steps]
    P = "--project=acme-braze-dev"
    job_sa = "amplitude-braze@acme-braze-dev.iam.gserviceaccount.com"

    def at(fragment):
        (index,) = [i for i, c in enumerate(creates) if fragment in c]
        return index

    # Every resource of templates/env/dev.json (and its syncs file's secret), each created once.
    wanted = {
        "apis": f"gcloud services enable dataflow.googleapis.com",
        "job_sa": f"gcloud iam service-accounts create amplitude-braze {P}",
        "publisher_sa": f"gcloud iam service-accounts create amplitude-publisher {P}",
        "bucket": "gcloud storage buckets create gs://acme-braze-dev-dataflow " + P + " --location=us-central1",
        "repository": f"gcloud artifacts repositories create dataflow --repository-format=docker --location=us-central1 {P}",
        "input_topic": f"gcloud pubsub topics create amplitude-events {P}",
        "dead_letter_topic": f"gcloud pubsub topics create amplitude-braze-dead-letters {P}",
        "outcome_topic": f"gcloud pubsub topics create amplitude-braze-outcomes {P}",
        "input_subscription": f"gcloud pubsub subscriptions create amplitude-events-braze {P} "
                              "--topic=projects/acme-braze-dev/topics/amplitude-events",
        "dead_letter_subscription": f"gcloud pubsub subscriptions create amplitude-braze-dead-letters-inspect {P} "
                                    "--topic=projects/acme-braze-dev/topics/amplitude-braze-dead-letters",
        "secret": f"gcloud secrets create braze-rest-api-key {P} --replication-policy=automatic",
        "worker_role": f"gcloud projects add-iam-policy-binding acme-braze-dev --member=serviceAccount:{job_sa} "
                       "--role=roles/dataflow.worker",
        "subscriber": f"gcloud pubsub subscriptions add-iam-policy-binding amplitude-events-braze {P} "
                      f"--member=serviceAccount:{job_sa} --role=roles/pubsub.subscriber",
        "dead_letter_publisher": f"gcloud pubsub topics add-iam-policy-binding amplitude-braze-dead-letters {P} "
                                 f"--member=serviceAccount:{job_sa} --role=roles/pubsub.publisher",
        "outcome_publisher": f"gcloud pubsub topics add-iam-policy-binding amplitude-braze-outcomes {P} "
                             f"--member=serviceAccount:{job_sa} --role=roles/pubsub.publisher",
        "secret_accessor": f"gcloud secrets add-iam-policy-binding braze-rest-api-key {P} "
                           f"--member=serviceAccount:{job_sa} --role=roles/secretmanager.secretAccessor",
        "bucket_access": "gcloud storage buckets add-iam-policy-binding gs://acme-braze-dev-dataflow "
                         f"--member=serviceAccount:{job_sa} --role=roles/storage.objectAdmin",
        "image_access": f"gcloud artifacts repositories add-iam-policy-binding dataflow --location=us-central1 {P} "
                        f"--member=serviceAccount:{job_sa} --role=roles/artifactregistry.reader",
        "amplitude_publishes": f"gcloud pubsub topics add-iam-policy-binding amplitude-events {P} "
                               "--member=serviceAccount:amplitude-publisher@acme-braze-dev.iam.gserviceaccount.com "
                               "--role=roles/pubsub.publisher",
    }
    order = {name: at(fragment) for name, fragment in wanted.items()}
    assert len(steps) == len(set(creates)), "no step twice"
    assert order["apis"] == 0
    for before, after in [("input_topic", "input_subscription"), ("dead_letter_topic", "dead_letter_subscription"),
                          ("job_sa", "worker_role"), ("input_subscription", "subscriber"),
                          ("dead_letter_topic", "dead_letter_publisher"), ("outcome_topic", "outcome_publisher"),
                          ("secret", "secret_accessor"), ("bucket", "bucket_access"), ("repository", "image_access"),
                          ("publisher_sa", "amplitude_publishes"), ("input_topic", "amplitude_publishes")]:
        assert order[before] < order[after], f"{before} must come before {after}"
    # Creations are guarded by a lookup of the same resource; grants are idempotent themselves.
    for check, create in steps:
        if create[2] in ("create",) or create[3:4] == ["create"]:
            assert check and check[:check.index("describe")] == create[:create.index("create")], (check, create)
        else:
            assert check is None, create
    # No key material: the key versions are left to a person, with the commands to do it.
    assert not any("versions add" in c or "keys create" in c for c in creates)
    assert "gcloud secrets versions add braze-rest-api-key --project=acme-braze-dev --data-file=-" in done.stdout
    assert "gcloud iam service-accounts keys create amplitude-publisher.json" in done.stdout


def test_bootstrap_creates_only_what_is_missing(fake_gcloud, capsys, monkeypatch):
    env, calls = fake_gcloud
    existing = ["acme-braze-dev-dataflow", "gs://acme-braze-dev-dataflow", "amplitude-events",
                "amplitude-braze@acme-braze-dev.iam.gserviceaccount.com"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FAKE_GCLOUD_EXISTING", json.dumps(existing))
    assert deploy.main(["bootstrap", "--env", "dev"]) == 0
    out = capsys.readouterr().out
    created = [c for c in calls() if "create" in c]
    assert "= exists: topic projects/acme-braze-dev/topics/amplitude-events" in out
    assert "= exists: bucket gs://acme-braze-dev-dataflow" in out
    assert not any(c[:3] == ["pubsub", "topics", "create"] and c[3] == "amplitude-events" for c in created)
    assert not any(c[:3] == ["storage", "buckets", "create"] for c in created)
    assert not any(c[:3] == ["iam", "service-accounts", "create"] and c[3] == "amplitude-braze" for c in created)
    assert ["pubsub", "topics", "create", "amplitude-braze-dead-letters", "--project=acme-braze-dev"] in created
    assert any(c[:4] == ["iam", "service-accounts", "create", "amplitude-publisher"] for c in created)


def test_bootstrap_stops_at_the_first_failure_and_says_so(fake_gcloud, capsys, monkeypatch):
    env, calls = fake_gcloud
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FAKE_GCLOUD_MODE", "refuse")
    assert deploy.main(["bootstrap", "--env", "dev"]) == 97
    out = capsys.readouterr().out
    assert "bootstrap: failed (97) creating APIs; fix the cause and run it again" in out
    assert len(calls()) == 1 and "left to do by hand" not in out


def test_resources_in_other_projects_keep_their_project():
    document = deploy.load_env("dev")
    document["resources"]["input_topic"] = "projects/amplitude-side/topics/events"
    steps = bootstrap.bootstrap_steps(document, ["projects/keys-project/secrets/braze/versions/3"])
    lines = [s.shell() for s in steps]
    assert any("gcloud pubsub topics create events --project=amplitude-side" in line for line in lines)
    assert any("--topic=projects/amplitude-side/topics/events" in line for line in lines)
    assert any("gcloud secrets create braze --project=keys-project" in line for line in lines)
    assert any("gcloud secrets add-iam-policy-binding braze --project=keys-project" in line for line in lines)


@pytest.mark.parametrize("value, message", [
    ("gs://", "is not a gs:// path"), ("s3://b/x", "is not a gs:// path"),
])
def test_bucket_of_refuses_what_is_not_a_bucket(value, message):
    with pytest.raises(ValueError, match=message):
        bootstrap.bucket_of(value)
