"""`python -m pipeline.validate FILE`, run as a user runs it (a subprocess): what it prints and
its exit code. Keys are read through the real Secret Manager client from the local gRPC server
(local/secret_manager.py) and from the environment; no key value may appear in the output."""
import os
import subprocess
import sys

import pytest

from local.secret_manager import DISABLED, LocalSecretManager
from pipeline.cohort_config import load_cohorts
from pipeline.config import ConfigError, load_syncs
from pipeline.validate import env_reference_warnings, is_for_dataflow
from transforms.secrets import EMULATOR_HOST_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
PASTED_KEY = "sk-live-1234567890abcdef"  # the key pasted by mistake into the many-errors files

SYNC = """  - name: {name}
    endpoint: https://rest.iad-01.braze.com
    api_key: {reference}
    events: {{select: [{{event_type: "*"}}]}}
"""


def validate(*args, env=None):
    done = subprocess.run([sys.executable, "-m", "pipeline.validate", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, **(env or {})})
    return done.returncode, done.stdout, done.stderr


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def syncs_file(tmp_path, references, name="syncs.yaml"):
    return write(tmp_path, name, "syncs:\n" + "".join(
        SYNC.format(name=sync, reference=reference) for sync, reference in references))


# --- every problem at once, exit 2


@pytest.mark.parametrize("name, loader, kind", [("syncs_many_errors.yaml", load_syncs, "syncs"),
                                                 ("cohorts_many_errors.yaml", load_cohorts, "cohorts")])
def test_every_problem_is_printed_with_its_path_and_exit_code_2(name, loader, kind):
    path = os.path.join(DATA, name)
    with pytest.raises(ConfigError) as expected:
        loader(path)  # what the job would refuse; validate must print all of it
    code, out, err = validate(path)
    assert code == 2, err
    lines = out.splitlines()
    assert lines[0] == f"{path}: {len(expected.value.problems)} problem(s) in this {kind} file:"
    assert lines[1:] == [f"  {p}" for p in expected.value.problems]
    assert len(lines) > 10  # the files hold many kinds of problem, not one
    assert PASTED_KEY not in out + err


def test_a_syncs_file_that_enables_no_sync_is_refused_as_the_job_refuses_it(tmp_path):
    path = write(tmp_path, "off.yaml", "syncs:\n" + SYNC.format(name="a", reference="env:K")
                 + "    enabled: false\n")
    code, out, _ = validate(path)
    assert code == 2
    assert "syncs: no sync is enabled; set 'enabled: true' on at least one" in out


@pytest.mark.parametrize("text, problem", [
    ("", "(document): the file is empty (expected a syncs or cohorts file)"),
    ("syncs: [a\n  b: c", "YAML syntax error"),
])
def test_unreadable_documents_are_problems_too(tmp_path, text, problem):
    code, out, _ = validate(write(tmp_path, "bad.yaml", text))
    assert code == 2 and problem in out


def test_a_missing_file_is_a_problem_not_a_crash(tmp_path):
    code, out, err = validate(str(tmp_path / "nope.yaml"))
    assert code == 2 and "file not found" in out and "Traceback" not in err


# --- valid files, exit 0


@pytest.mark.parametrize("name, summary", [
    ("syncs_valid.yaml", "ok, a syncs file: 2 sync(s) (us-prod, eu_staging (disabled))"),
    ("syncs_valid.json", "ok, a syncs file"),
    ("cohorts_valid.yaml", "ok, a cohorts file: 2 target(s) (US Production, EU Staging), 3 cohort sync(s)"),
    ("cohorts_default.yaml", "ok, a cohorts file: 1 target(s) (Default)"),
])
def test_a_valid_file_exits_0(name, summary):
    code, out, err = validate(os.path.join(DATA, name))
    assert code == 0, out + err
    assert summary in out.splitlines()[0]


def test_local_simulator_endpoints_need_the_flag_the_job_needs(tmp_path):
    sync = SYNC.format(name="a", reference="env:K").replace("https://rest.iad-01.braze.com", "http://127.0.0.1:8080")
    path = write(tmp_path, "local.yaml", "syncs:\n" + sync)
    assert validate(path)[0] == 2
    assert validate(path, "--allow-insecure-endpoints")[0] == 0
    assert validate(path, "--allow_insecure_endpoints")[0] == 0


# --- the kind of file


def test_kind_is_read_from_the_top_level_keys_whatever_the_file_name(tmp_path):
    with open(os.path.join(DATA, "cohorts_valid.yaml")) as f:
        path = write(tmp_path, "config.txt", f.read())  # no telling extension
    code, out, _ = validate(path)
    assert code == 0 and "a cohorts file" in out


def test_a_misspelt_top_level_key_is_reported_by_the_right_loader(tmp_path):
    path = write(tmp_path, "x.yaml", "sycns:\n" + SYNC.format(name="a", reference="env:K"))
    code, out, _ = validate(path)
    assert code == 2
    assert "in this syncs file" in out and "sycns: unknown key (did you mean 'syncs'?)" in out


@pytest.mark.parametrize("text", ["name: x\n", "syncs: []\ncohort_syncs: []\n", "- a\n- b\n"])
def test_when_the_kind_cannot_be_told_it_asks_for_kind(tmp_path, text):
    code, out, _ = validate(write(tmp_path, "x.yaml", text))
    assert code == 2
    assert "pass --kind syncs or --kind cohorts" in out


def test_kind_flag_overrides_detection():
    code, out, _ = validate(os.path.join(DATA, "syncs_valid.yaml"), "--kind", "cohorts")
    assert code == 2
    assert "in this cohorts file" in out and "cohort_syncs: required" in out


@pytest.mark.parametrize("args", [[], ["--kind", "triggers", os.path.join(DATA, "syncs_valid.yaml")],
                                  [os.path.join(DATA, "syncs_valid.yaml"), "--resolve-key"]])
def test_usage_errors_exit_2(args):
    code, _, err = validate(*args)
    assert code == 2 and "usage: python -m pipeline.validate" in err


# --- --resolve-keys, against the local Secret Manager and the environment


@pytest.fixture(scope="module")
def secret_manager():
    with LocalSecretManager() as sm:
        yield sm


def test_resolve_keys_says_which_keys_cannot_be_read_and_why_without_printing_any(tmp_path, secret_manager):
    sm = secret_manager
    sm.reset()
    values = {name: f"{name}-value-{os.urandom(6).hex()}" for name in ("env", "sm", "denied", "disabled")}
    readable = sm.add_version("projects/p/secrets/readable", values["sm"])
    denied = sm.add_version("projects/p/secrets/denied", values["denied"])
    sm.deny("projects/p/secrets/denied")
    disabled = sm.add_version("projects/p/secrets/disabled", values["disabled"])
    sm.set_state(disabled, DISABLED)
    missing = "projects/p/secrets/missing/versions/1"
    path = syncs_file(tmp_path, [("env-ok", "env:VALIDATE_KEY"), ("env-unset", "env:VALIDATE_UNSET"),
                                 ("sm-ok", readable), ("sm-missing", missing), ("sm-denied", denied),
                                 ("sm-disabled", disabled), ("sm-again", readable)])
    assert "VALIDATE_UNSET" not in os.environ
    code, out, err = validate(path, "--resolve-keys", env={"VALIDATE_KEY": values["env"], EMULATOR_HOST_ENV: sm.address})
    assert code == 2, out + err
    assert "keys: 3 of 7 readable" in out
    assert "  syncs[0].api_key: env:VALIDATE_KEY: readable" in out
    assert ("  syncs[1].api_key: env:VALIDATE_UNSET: cannot be read: environment variable VALIDATE_UNSET "
            "named by the api_key reference is not set") in out
    assert f"  syncs[2].api_key: {readable}: readable" in out
    assert f"  syncs[3].api_key: {missing}: cannot be read: secret version {missing} does not exist" in out
    assert (f"  syncs[4].api_key: {denied}: cannot be read: permission denied reading secret version {denied}: "
            "the job's service account needs roles/secretmanager.secretAccessor on the secret") in out
    assert f"  syncs[5].api_key: {disabled}: cannot be read: secret version {disabled} is disabled or destroyed" in out
    assert f"  syncs[6].api_key: {readable}: readable" in out
    assert sm.accesses.count(readable) == 1  # each reference is read once
    for value in values.values():
        assert value not in out and value not in err


def test_resolve_keys_exits_0_when_every_key_can_be_read(tmp_path, secret_manager):
    sm = secret_manager
    sm.reset()
    value = f"cohort-key-{os.urandom(6).hex()}"
    version = sm.add_version("projects/p/secrets/import-key", value)
    path = write(tmp_path, "cohorts.yaml", f"""
endpoint: https://rest.iad-01.braze.com
api_key: {version}
partner_api_key: env:VALIDATE_PARTNER
verify_users: false
cohort_syncs:
  - {{name: s, cohort_id: c1, cohort_name: C, cadence: daily}}
""")
    code, out, err = validate(path, "--resolve-keys",
                              env={"VALIDATE_PARTNER": "partner-secret-value", EMULATOR_HOST_ENV: sm.address})
    assert code == 0, out + err
    assert "keys: 2 of 2 readable" in out
    assert f"  api_key: {version}: readable" in out and "  partner_api_key: env:VALIDATE_PARTNER: readable" in out
    assert value not in out + err and "partner-secret-value" not in out + err


def test_without_resolve_keys_nothing_is_read(tmp_path, secret_manager):
    secret_manager.reset()
    path = syncs_file(tmp_path, [("a", "projects/p/secrets/missing/versions/1")])
    code, out, _ = validate(path, env={EMULATOR_HOST_ENV: secret_manager.address})
    assert code == 0 and "keys:" not in out
    assert secret_manager.accesses == []


# --- env: references in a file meant for Dataflow


def test_for_dataflow_warns_about_each_env_reference(tmp_path):
    path = syncs_file(tmp_path, [("local", "env:BRAZE_KEY"), ("prod", "projects/p/secrets/s/versions/1")])
    code, out, _ = validate(path, "--for-dataflow")
    assert code == 0  # a warning, not a problem
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: syncs[0].api_key: env:BRAZE_KEY is read from the environment, and Dataflow's workers do not "
        "have BRAZE_KEY: every object of sync 'local' would be dead-lettered as api_key_unavailable; use a "
        "Secret Manager reference, projects/P/secrets/S/versions/V"]
    assert validate(path, "--for-dataflow", "--strict")[0] == 2
    assert "warning" not in validate(path)[1]  # a local file: env: is how local runs pass keys


def test_files_under_templates_env_are_checked_for_dataflow_by_themselves():
    code, out, _ = validate(os.path.join(ROOT, "templates", "env", "syncs.dev.yaml"))
    assert code == 0
    assert "for Dataflow: no env: reference" in out


def test_is_for_dataflow_by_place_or_by_an_env_file_naming_it(tmp_path):
    repo = tmp_path / "repo"
    env_dir = repo / "templates" / "env"
    env_dir.mkdir(parents=True)
    (env_dir / "syncs.x.yaml").write_text("syncs: []")
    (repo / "configs").mkdir()
    (repo / "configs" / "prod.yaml").write_text("syncs: []")
    (repo / "configs" / "local.yaml").write_text("syncs: []")
    (env_dir / "prod.json").write_text('{"syncs_file": "configs/prod.yaml"}')
    (env_dir / "broken.json").write_text("{not json")
    assert is_for_dataflow(str(env_dir / "syncs.x.yaml"), env_dir=str(env_dir))
    assert is_for_dataflow(str(repo / "configs" / "prod.yaml"), env_dir=str(env_dir))
    assert not is_for_dataflow(str(repo / "configs" / "local.yaml"), env_dir=str(env_dir))


def test_env_reference_warnings_for_both_kinds_of_file():
    syncs = env_reference_warnings(load_syncs(os.path.join(DATA, "syncs_valid.yaml")))
    assert [w.split(":")[0] for w in syncs] == ["syncs[0].api_key"]  # syncs[1] reads Secret Manager
    cohorts = env_reference_warnings(load_cohorts(os.path.join(DATA, "cohorts_valid.yaml")))
    assert [w.split(":")[0] for w in cohorts] == ["targets[0].api_key", "targets[1].api_key",
                                                  "notifications.email.password"]
    assert "target 'US Production' could not use it" in cohorts[0]
