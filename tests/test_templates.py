"""The flex template: metadata.json matches the job's options, env files are valid, and the
deploy commands pass what the template and the workers need. The image and the lock are in
tests/test_image.py, bootstrap in tests/test_bootstrap.py."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from templates import build_metadata, deploy
from templates.build_metadata import REQUIRED, option_actions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(ROOT, "templates")
ENVS = ("dev", "staging", "prod")


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def metadata():
    return json.loads(read("templates/metadata.json"))


# --- metadata.json


def test_parameters_are_exactly_the_pipeline_options(metadata):
    options = {a.dest for a in option_actions()} | {p["name"] for p in build_metadata.BEAM_PARAMETERS}
    parameters = [p["name"] for p in metadata["parameters"]]
    assert len(parameters) == len(set(parameters))
    missing, extra = options - set(parameters), set(parameters) - options
    assert not missing and not extra, (
        f"metadata.json lacks {sorted(missing)} and has extra {sorted(extra)}: "
        "run python -m templates.build_metadata")


def test_committed_metadata_is_the_generated_one():
    assert read("templates/metadata.json") == build_metadata.render(), \
        "templates/metadata.json is stale: run python -m templates.build_metadata"


def test_every_option_has_a_curated_label():
    # A new option gets a label from its name; this asks for a proper one.
    assert {a.dest for a in option_actions()} <= set(build_metadata.LABELS)


def test_metadata_shape(metadata):
    assert metadata["name"] and metadata["description"]
    assert metadata["streaming"] is True and metadata["supportsAtLeastOnce"] is True
    for p in metadata["parameters"]:
        assert p["label"] and p["helpText"] and isinstance(p["isOptional"], bool), p
        assert p["isOptional"] is (p["name"] not in REQUIRED)
        for regex in p.get("regexes", []):
            assert regex.startswith("^") and regex.endswith("$")
            re.compile(regex)
        if "defaultValue" in p:
            assert all(re.fullmatch(r, p["defaultValue"]) for r in p.get("regexes", [])), p
    by_name = {p["name"]: p for p in metadata["parameters"]}
    assert by_name["input_subscription"]["regexes"] == ["^projects/[^/]+/subscriptions/[^/]+$"]
    assert by_name["dead_letter_topic"]["regexes"] == ["^projects/[^/]+/topics/[^/]+$"]
    assert by_name["sync_config"]["regexes"] == ["^(gs://.+|/.+)$"]
    assert by_name["allow_insecure_endpoints"]["regexes"] == ["^(true|false)$"]
    assert by_name["braze_batch_limit_mode"]["regexes"] == ["^(combined|per_type)$"]


def test_help_text_comes_from_the_options(metadata):
    helps = {a.dest: " ".join(a.help.split()) for a in option_actions()}
    for p in metadata["parameters"]:
        if p["name"] == "sdk_container_image":
            continue
        assert p["helpText"].startswith(helps[p["name"]])


def test_regexes_agree_with_the_option_parser(metadata):
    # Typed options: a value the regex accepts must parse, one it refuses is a typo.
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import StreamOptions

    samples = {"^(true|false)$": ["true", "false"], build_metadata.INTEGER_REGEX: ["1", "12"],
               build_metadata.NUMBER_REGEX: ["1", "2.5"]}
    for p in metadata["parameters"]:
        for regex in p.get("regexes", []):
            for value in samples.get(regex, []):
                PipelineOptions([f"--{p['name']}={value}"]).view_as(StreamOptions)


def test_the_worker_image_is_a_parameter_beam_reads(metadata):
    from apache_beam.options.pipeline_options import PipelineOptions, WorkerOptions

    (image,) = [p for p in metadata["parameters"] if p["name"] == "sdk_container_image"]
    assert image["isOptional"] is True
    value = "us-central1-docker.pkg.dev/p/r/amplitude-braze:1"
    assert all(re.fullmatch(r, value) for r in image["regexes"])
    assert PipelineOptions([f"--sdk_container_image={value}"]).view_as(WorkerOptions).sdk_container_image == value


def test_metadata_generator_check_mode(tmp_path):
    stale = tmp_path / "metadata.json"
    stale.write_text("{}\n")
    assert build_metadata.main(["--check", "--out", str(stale)]) == 1
    assert build_metadata.main(["--out", str(stale)]) == 0
    assert build_metadata.main(["--check", "--out", str(stale)]) == 0


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")
def test_gcloud_accepts_the_metadata(tmp_path):
    # --print-only builds the template spec locally (gcloud's own metadata checks), no upload.
    done = subprocess.run(
        ["gcloud", "dataflow", "flex-template", "build", "gs://bucket/template.json", "--image=gcr.io/p/i:1",
         "--sdk-language=PYTHON", f"--metadata-file={os.path.join(TEMPLATES, 'metadata.json')}", "--print-only"],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
        env=dict(os.environ, CLOUDSDK_CORE_DISABLE_PROMPTS="1"))
    assert done.returncode == 0, done.stderr
    spec = json.loads(done.stdout[done.stdout.index("{"):])
    assert [p["name"] for p in spec["metadata"]["parameters"]] == [p["name"] for p in
                                                                   json.loads(read("templates/metadata.json"))["parameters"]]


# --- env files


@pytest.mark.parametrize("env", ENVS)
def test_env_file_is_valid(env, metadata):
    document = deploy.load_env(env)
    assert deploy.validate(document, metadata) == []
    declared = {p["name"] for p in metadata["parameters"]}
    assert set(document["parameters"]) <= declared
    assert document["syncs_file"] == f"templates/env/syncs.{env}.yaml"


def test_env_files_are_the_three_environments():
    assert set(ENVS) <= set(deploy.env_names())


@pytest.mark.parametrize("env", ENVS)
def test_syncs_files_use_secret_manager_and_braze_hosts(env):
    assert deploy.env_key_references(deploy.load_env(env)) == []
    from pipeline.config import ALLOWED_ENDPOINTS, load_syncs

    syncs = load_syncs(os.path.join(ROOT, "templates", "env", f"syncs.{env}.yaml"))
    assert syncs
    for s in syncs:
        assert s.api_key.startswith("projects/"), "deployed syncs read keys from Secret Manager"
        assert s.endpoint in ALLOWED_ENDPOINTS


def _broken(**changes):
    document = deploy.load_env("dev")
    for path, value in changes.items():
        section, _, key = path.partition("__")
        if key:
            if value is None:
                document[section].pop(key, None)
            else:
                document[section][key] = value
        elif value is None:
            document.pop(section)
        else:
            document[section] = value
    return deploy.validate(document)


@pytest.mark.parametrize("changes, expected", [
    ({"parameters__nonsense": "1"}, "parameters.nonsense: not a parameter of the template"),
    ({"parameters__input_subscription": "projects/p/topics/t"}, "parameters.input_subscription: 'projects/p/topics/t' does not match"),
    ({"parameters__dead_letter_topic": None}, "parameters.dead_letter_topic: required by the template"),
    ({"parameters__allow_insecure_endpoints": "yes"}, "parameters.allow_insecure_endpoints: 'yes' does not match"),
    ({"parameters__batch_shards_per_sync": 4}, "parameters.batch_shards_per_sync: must be a string"),
    ({"parameters__batch_shards_per_sync": "0"}, "parameters: --batch_shards_per_sync must be >= 1"),
    ({"parameters__braze_max_in_flight": "65"}, "parameters: --braze_max_in_flight must be from 1 to 64"),
    ({"parameters__sync_config": "/etc/syncs.yaml"}, "parameters.sync_config: must be a gs:// URI"),
    ({"gcloud__region": None}, "gcloud.region: required"),
    ({"gcloud__max_wrokers": 3}, "gcloud.max_wrokers: unknown setting"),
    ({"syncs_file": "templates/env/nope.yaml"}, "syncs_file: templates/env/nope.yaml does not exist"),
    ({"extra": 1}, "extra: unknown key"),
    ({"parameters__sdk_container_image": "gcr.io/p/i:1"}, "parameters.sdk_container_image: leave it out"),
    ({"resources__input_topic": "projects/p/subscriptions/s"}, "resources.input_topic: required, projects/P/topics/NAME"),
    ({"resources__amplitude_publisher": None}, "resources.amplitude_publisher: required"),
    ({"resources": None}, "resources: required"),
    ({"gcloud__image": "gcr.io/p/amplitude-braze:1"}, "gcloud.image: bootstrap creates an Artifact Registry"),
    ({"gcloud__service_account_email": None}, "gcloud.service_account_email: bootstrap creates"),
])
def test_env_problems_are_reported(changes, expected):
    problems = _broken(**changes)
    assert any(p.startswith(expected) for p in problems), problems


def test_env_with_an_invalid_syncs_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "syncs.yaml"
    bad.write_text("syncs:\n  - name: x\n    endpoint: https://evil.example.com\n    api_key: env:K\n")
    monkeypatch.setattr(deploy, "ROOT", str(tmp_path))
    problems = _broken(syncs_file="syncs.yaml")
    assert any(p.startswith("syncs_file: syncs[0].endpoint") for p in problems), problems


# --- env: key references (workers have no such variable)


def _env_with_syncs(tmp_path, monkeypatch, env, api_key):
    """A copy of templates/env/<env>.json under ``env`` whose syncs file uses ``api_key``."""
    env_dir = tmp_path / "templates" / "env"
    env_dir.mkdir(parents=True)
    document = deploy.load_env("dev")
    syncs = read("templates/env/syncs.dev.yaml").replace(
        "projects/acme-braze-dev/secrets/braze-rest-api-key/versions/latest", api_key)
    (env_dir / f"syncs.{env}.yaml").write_text(syncs)
    document["syncs_file"] = f"templates/env/syncs.{env}.yaml"
    (env_dir / f"{env}.json").write_text(json.dumps(document))
    monkeypatch.setattr(deploy, "ROOT", str(tmp_path))
    monkeypatch.setattr(deploy, "ENV_DIR", str(env_dir))


@pytest.mark.parametrize("env", ["prod", "staging", "prod-eu"])
def test_check_refuses_an_env_key_reference_in_prod_and_staging(tmp_path, monkeypatch, capsys, env):
    _env_with_syncs(tmp_path, monkeypatch, env, "env:BRAZE_API_KEY")
    assert deploy.main(["check", "--env", env]) == 2
    err = capsys.readouterr().err
    assert "sync 'dev' reads its API key from env:BRAZE_API_KEY" in err
    assert "Dataflow workers do not have" in err and "api_key_unavailable" in err
    assert "projects/P/secrets/S/versions/V" in err
    # Launching is refused as well, before any gcloud command is printed.
    assert deploy.main(["launch", "--env", env, "--dry-run"]) == 2
    assert "+ gcloud" not in capsys.readouterr().out


def test_check_warns_about_an_env_key_reference_elsewhere(tmp_path, monkeypatch, capsys):
    _env_with_syncs(tmp_path, monkeypatch, "dev", "env:BRAZE_API_KEY")
    assert deploy.main(["check", "--env", "dev"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: templates/env/dev.json: syncs_file: templates/env/syncs.dev.yaml: "
                                   "sync 'dev' reads its API key from env:BRAZE_API_KEY")
    assert captured.out.strip() == "templates/env/dev.json: ok (1 warning(s))"


def test_a_secret_manager_reference_gets_no_warning(tmp_path, monkeypatch, capsys):
    _env_with_syncs(tmp_path, monkeypatch, "prod", "projects/acme/secrets/braze/versions/2")
    assert deploy.main(["check", "--env", "prod"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.strip() == "templates/env/prod.json: ok"


# --- deploy commands


def test_launch_passes_every_parameter_and_the_worker_image():
    document, warnings = deploy.checked_env("prod")
    assert warnings == []
    upload, run = deploy.launch_commands(document)
    assert upload[:3] == ["gcloud", "storage", "cp"] and upload[3:5] == [
        "templates/env/syncs.prod.yaml", document["parameters"]["sync_config"]]
    assert run[:5] == ["gcloud", "dataflow", "flex-template", "run", "amplitude-braze-stream"]
    flag = [a for a in run if a.startswith("--parameters=")]
    assert len(flag) == 1
    pairs = dict(kv.split("=", 1) for kv in flag[0][len("--parameters="):].split(","))
    # The workers run the image the launcher runs: nothing to install at start-up.
    assert pairs == {**document["parameters"], "sdk_container_image": document["gcloud"]["image"]}
    assert "--enable-streaming-engine" in run and "--update" not in run
    assert not any(a.startswith("--transform-name-mappings") for a in run)


def test_update_with_renamed_steps_passes_the_mappings(capsys):
    assert deploy.main(["launch", "--env", "prod", "--dry-run", "--update",
                        "--mapping", "EventsToBraze/Identify=EventsToBraze/IdentifyUsers",
                        "--mapping", "EventsToBraze/PackRequests/Pack=EventsToBraze/Pack"]) == 0
    run = shlex.split(capsys.readouterr().out.splitlines()[-1][2:])
    assert "--update" in run
    assert ("--transform-name-mappings=EventsToBraze/Identify=EventsToBraze/IdentifyUsers,"
            "EventsToBraze/PackRequests/Pack=EventsToBraze/Pack") in run


@pytest.mark.parametrize("argv, message", [
    (["--mapping", "A=B"], "--mapping only applies with --update"),
    (["--update", "--mapping", "A"], "--mapping wants OLD=NEW"),
])
def test_bad_mappings_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        deploy.main(["launch", "--env", "prod", "--dry-run", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_parameters_flag_escapes_commas():
    flag = deploy.parameters_flag({"a": "x,y", "b": "z"})
    assert flag == "--parameters=^~^a=x,y~b=z"


def test_template_commands_build_one_image_with_two_entry_points():
    document, _ = deploy.checked_env("dev")
    build, spec = deploy.template_commands(document)
    image = document["gcloud"]["image"]
    assert "--config=templates/cloudbuild.yaml" in build and build[-1] == "."
    assert (f"--substitutions=_IMAGE={image},"
            "_COHORTS_IMAGE=us-central1-docker.pkg.dev/acme-braze-dev/dataflow/amplitude-braze-cohorts:0.1.0") in build
    assert f"--image={image}" in spec
    assert "--metadata-file=templates/metadata.json" in spec and "--sdk-language=PYTHON" in spec
    cloudbuild = read("templates/cloudbuild.yaml")
    assert '"--target", "stream", "--tag", "${_IMAGE}"' in cloudbuild
    assert '"--target", "cohorts", "--tag", "${_COHORTS_IMAGE}"' in cloudbuild
    assert 'images: ["${_IMAGE}", "${_COHORTS_IMAGE}"]' in cloudbuild


@pytest.mark.parametrize("image, expected", [
    ("r-docker.pkg.dev/p/repo/amplitude-braze:0.1.0", "r-docker.pkg.dev/p/repo/amplitude-braze-cohorts:0.1.0"),
    ("r-docker.pkg.dev/p/repo/amplitude-braze", "r-docker.pkg.dev/p/repo/amplitude-braze-cohorts"),
    ("localhost:5000/amplitude-braze", "localhost:5000/amplitude-braze-cohorts"),
])
def test_cohorts_image_name(image, expected):
    assert deploy.cohorts_image(image) == expected


def test_deploy_dry_run_prints_and_runs_nothing(capsys):
    assert deploy.main(["launch", "--env", "staging", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [shlex.split(line[2:])[:4] for line in lines] == [
        ["gcloud", "storage", "cp", "templates/env/syncs.staging.yaml"],
        ["gcloud", "dataflow", "flex-template", "run"]]


def test_deploy_refuses_an_unknown_env(capsys):
    assert deploy.main(["check", "--env", "nowhere"]) == 2
    assert "no such file" in capsys.readouterr().err
