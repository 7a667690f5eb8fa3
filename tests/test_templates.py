"""The flex template: metadata.json matches the job's options, env files are valid, the
Dockerfile names files that exist and pins the Beam that setup.py pins."""
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
    options = {a.dest for a in option_actions()}
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


# --- deploy commands


def test_launch_passes_every_parameter():
    document = deploy.checked_env("prod")
    upload, run = deploy.launch_commands(document)
    assert upload[:3] == ["gcloud", "storage", "cp"] and upload[3:5] == [
        "templates/env/syncs.prod.yaml", document["parameters"]["sync_config"]]
    assert run[:5] == ["gcloud", "dataflow", "flex-template", "run", "amplitude-braze-stream"]
    flag = [a for a in run if a.startswith("--parameters=")]
    assert len(flag) == 1
    pairs = dict(kv.split("=", 1) for kv in flag[0][len("--parameters="):].split(","))
    assert pairs == document["parameters"]
    assert "--enable-streaming-engine" in run and "--update" not in run
    assert "--update" in deploy.launch_commands(document, update=True)[1]


def test_parameters_flag_escapes_commas():
    flag = deploy.parameters_flag({"a": "x,y", "b": "z"})
    assert flag == "--parameters=^~^a=x,y~b=z"


def test_template_commands_build_from_the_dockerfile():
    build, spec = deploy.template_commands(deploy.checked_env("dev"))
    assert "--config=templates/cloudbuild.yaml" in build and build[-1] == "."
    assert "--metadata-file=templates/metadata.json" in spec and "--sdk-language=PYTHON" in spec
    assert "templates/Dockerfile" in read("templates/cloudbuild.yaml")


def test_deploy_dry_run_prints_and_runs_nothing(capsys):
    assert deploy.main(["launch", "--env", "staging", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [shlex.split(line[2:])[:4] for line in lines] == [
        ["gcloud", "storage", "cp", "templates/env/syncs.staging.yaml"],
        ["gcloud", "dataflow", "flex-template", "run"]]


def test_deploy_refuses_an_unknown_env(capsys):
    assert deploy.main(["check", "--env", "nowhere"]) == 2
    assert "no such file" in capsys.readouterr().err


# --- Dockerfile


def _dockerfile():
    return read("templates/Dockerfile")


def test_dockerfile_base_image_and_entry_points():
    text = _dockerfile()
    assert re.search(r"^FROM gcr\.io/dataflow-templates-base/python311-template-launcher-base\b", text, re.M)
    env = dict(re.findall(r"^ENV (\w+)=(\S+)", text, re.M))
    assert env["FLEX_TEMPLATE_PYTHON_PY_FILE"] == "/template/pipeline/stream.py"
    assert env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"] == "/template/setup.py"
    assert "pip check" in text


def test_every_path_the_dockerfile_names_exists():
    text = _dockerfile()
    copies = re.findall(r"^COPY\s+(\S+)\s+(\S+)", text, re.M)
    assert copies
    in_image = {}
    for source, target in copies:
        assert os.path.exists(os.path.join(ROOT, source)), f"COPY {source}: not in the repository"
        in_image[target.rstrip("/")] = source
    for path in re.findall(r"(/template/[\w./-]+)", text):
        # Every /template/... path must be something a COPY put there.
        assert any(path == t or path.startswith(t + "/") for t in in_image), f"{path}: nothing copies it"
        source = next(in_image[t] + path[len(t):] for t in in_image if path == t or path.startswith(t + "/"))
        assert os.path.exists(os.path.join(ROOT, source)), f"{path} → {source}: missing"


def test_dockerfile_copies_every_package_the_job_imports():
    text = _dockerfile()
    for package in ("pipeline", "transforms"):
        assert re.search(rf"^COPY {package} /template/{package}$", text, re.M)


def test_beam_pin_matches_setup_py():
    from packaging.requirements import Requirement

    beam_arg = re.search(r"^ARG BEAM_VERSION=(\S+)$", _dockerfile(), re.M).group(1)
    requirement = Requirement(re.search(r'^BEAM = "([^"]+)"', read("setup.py"), re.M).group(1))
    assert requirement.name == "apache-beam" and "gcp" in requirement.extras
    assert requirement.specifier.contains(beam_arg), f"Dockerfile Beam {beam_arg} is outside setup.py's {requirement}"
    assert '"apache-beam[gcp]==${BEAM_VERSION}"' in _dockerfile()
    import apache_beam

    assert apache_beam.__version__ == beam_arg, "the venv's Beam should be the one the image installs"


def test_entry_point_runs_as_a_script():
    # The launcher runs FLEX_TEMPLATE_PYTHON_PY_FILE as `python /template/pipeline/stream.py`,
    # from another directory, with the package installed: the imports must resolve.
    done = subprocess.run([sys.executable, os.path.join(ROOT, "pipeline", "stream.py"), "--help"],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    for action in option_actions():
        assert f"--{action.dest}" in done.stdout
