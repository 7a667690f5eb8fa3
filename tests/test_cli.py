"""The jobs' command line (pipeline/cli.py): unknown options refused with a suggestion, Beam's
own options and the flex template's --name=value text accepted, --help generated from the
options. The streaming job is run as a user runs it (a subprocess) where the exit code and the
printed words are the point."""
import io
import json
import os
import subprocess
import sys

import pytest
from apache_beam.options import pipeline_options as beam_options

from pipeline import cli
from pipeline.cli import check_argv, help_text, usable_argv
from pipeline.cohort_options import CohortOptions
from pipeline.options import REQUIRED_OPTIONS, StreamOptions
from templates.build_metadata import option_actions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED_ARGS = ["--input_subscription=projects/p/subscriptions/s", "--dead_letter_topic=projects/p/topics/t"]
# The part of StreamOptions the cohort job shares (pipeline/cohort_options.py).
COHORT_SETS = [CohortOptions, (StreamOptions, ("input_subscription", "allow_insecure_endpoints",
                                               "braze_timeout_seconds", "braze_max_attempts",
                                               "braze_max_retry_seconds"))]


def stream(*args, env=None):
    done = subprocess.run([sys.executable, "-m", "pipeline.stream", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, **(env or {})})
    return done.returncode, done.stdout, done.stderr


# --- unknown options


def test_a_misspelt_option_stops_the_job_with_a_suggestion_and_exit_2(tmp_path):
    code, out, err = stream(*REQUIRED_ARGS, f"--sync_config={tmp_path / 'absent.yaml'}", "--braze_max_attemps=3")
    assert code == 2
    assert "python -m pipeline.stream: unknown option --braze_max_attemps (did you mean --braze_max_attempts?)" in err
    assert "`python -m pipeline.stream --help` lists its options" in err
    assert "file not found" not in err  # refused before anything else was looked at


@pytest.mark.parametrize("argv, problem", [
    (["--braze-max-attempts=3"], "unknown option --braze-max-attempts (did you mean --braze_max_attempts? "
                                 "options are written with '_')"),
    (["--sync", "syncs.yaml"], "unknown option --sync (did you mean --sync_config?)"),  # no abbreviations, as Beam
    (["--regoin=us-central1"], "unknown option --regoin (did you mean --region?)"),
    (["--frobnicate=1"], "unknown option --frobnicate"),
    (["syncs.yaml"], "unexpected argument 'syncs.yaml'; options are written --name=value"),
    (["--braze_max_attempts=six"], "argument --braze_max_attempts: invalid int value: 'six'"),
    (["--braze_batch_limit_mode=both"], "argument --braze_batch_limit_mode: invalid choice: 'both' "
                                        "(choose from 'combined', 'per_type')"),
    (["--allow_insecure_endpoints=maybe"], "argument --allow_insecure_endpoints: invalid _bool value: 'maybe'"),
])
def test_each_mistake_is_named(argv, problem):
    assert check_argv(argv, [StreamOptions]) == [problem]


def test_a_value_that_makes_a_beam_option_raise_is_a_problem_not_a_crash():
    problems = check_argv(["--gcs_custom_audit_entries=1"], [StreamOptions])  # Beam's action expects JSON object
    assert len(problems) == 1 and problems[0].startswith("the options could not be read (AttributeError")


def test_every_unknown_option_is_reported_at_once_and_values_of_unknown_options_are_not_strays():
    assert check_argv(["--a=1", "--bee", "value", "--sync_config=x", "stray"], [StreamOptions]) == [
        "unknown option --a", "unknown option --bee", "unexpected argument 'stray'; options are written --name=value"]


# --- what must still be accepted


def test_beam_options_and_the_flex_templates_text_are_accepted():
    with open(os.path.join(ROOT, "templates", "env", "prod.json")) as f:
        parameters = json.load(f)["parameters"]
    flex = [f"--{name}={value}" for name, value in parameters.items()]  # as the template passes them
    beam = ["--runner=DataflowRunner", "--project=p", "--region=us-central1", "--temp_location=gs://b/tmp",
            "--staging_location=gs://b/staging", "--sdk_container_image=us-docker.pkg.dev/p/r/i:1",
            "--streaming", "--experiments=use_runner_v2", "--experiments", "enable_streaming_engine",
            "--job_name=j", "--service_account_email=sa@p.iam.gserviceaccount.com", "--num_workers=1",
            "--max_num_workers=3", "--template_location=gs://b/t", "--labels=a=b", "--no_use_public_ips",
            "--dataflow_service_options=enable_hot_key_logging", "--save_main_session", "--update",
            "--direct_num_workers=1", "--allow_insecure_endpoints=false", "--allow_insecure_endpoints",
            "--braze_max_attempts", "6"]
    assert check_argv(flex + beam, [StreamOptions]) == []


def test_every_option_any_beam_options_class_declares_is_known():
    # Beam's classes, found independently of pipeline.cli: every direct subclass Beam defines.
    classes = [c for c in beam_options.PipelineOptions.__subclasses__() if c.__module__.startswith("apache_beam.")]
    actions = []
    for cls in classes:
        parser = cli._CheckingParser(add_help=False)
        cls._add_argparse_args(parser)
        actions += [(s, a.nargs == 0) for a in parser._actions for s in a.option_strings if s.startswith("--")]
    assert len(actions) > 100 and ("--sdk_container_image", False) in actions and ("--streaming", True) in actions
    for name, is_flag in actions:
        # One at a time, so a value one option rejects cannot hide whether another is known.
        problems = check_argv([name if is_flag else f"{name}=1"], [StreamOptions])
        assert not [p for p in problems if p.startswith("unknown option")], name


def test_options_of_another_job_are_unknown_to_this_one():
    # CohortOptions is imported in this process, and Beam would accept --config; this job does not.
    assert issubclass(CohortOptions, beam_options.PipelineOptions)
    assert check_argv(["--config=c.yaml"], [StreamOptions]) == ["unknown option --config (did you mean --sync_config?)"]
    assert check_argv(["--config=c.yaml", "--braze_max_attempts=2"], COHORT_SETS) == []
    assert check_argv(["--sync_config=s.yaml"], COHORT_SETS) == ["unknown option --sync_config (did you mean --config?)"]


def test_the_warn_setting_lets_unknown_options_through_as_warnings(monkeypatch):
    err = io.StringIO()
    monkeypatch.setenv(cli.UNKNOWN_OPTIONS_ENV, "warn")
    assert usable_argv(["--launcher_extra=1"], [StreamOptions], "prog", err=err)
    assert "prog: warning: unknown option --launcher_extra; ignored because" in err.getvalue()
    # A bad value is still an error: the job could not run with it.
    assert not usable_argv(["--braze_max_attempts=six"], [StreamOptions], "prog", err=io.StringIO())
    monkeypatch.delenv(cli.UNKNOWN_OPTIONS_ENV)
    assert not usable_argv(["--launcher_extra=1"], [StreamOptions], "prog", err=io.StringIO())


# --- --help


def test_help_shows_every_option_with_its_default_or_required():
    code, out, _ = stream("--help")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("usage: python -m pipeline.stream --input_subscription=... --dead_letter_topic=... "
                        "--sync_config=... [options] [Beam options]")
    for action in option_actions():
        at = next(i for i, line in enumerate(lines) if line.startswith(f"  --{action.dest}"))
        mark = lines[at + 1].strip()
        if action.dest in REQUIRED_OPTIONS:
            assert mark.startswith("[required] "), mark
        else:
            assert mark.startswith("[default: "), mark
    assert "  --braze_max_attempts=INT" in lines and "      [default: 6] Attempts of one request" in out
    assert "  --allow_insecure_endpoints[=true|false]" in lines
    assert "  --braze_batch_limit_mode={combined|per_type}" in lines
    assert "--runner, --project, --region" in out


def test_help_for_part_of_a_class_and_custom_marks():
    text = help_text("python -m pipeline.cohorts", "Sync a cohort.", COHORT_SETS,
                     required={"state_dir": "required", "snapshot": "required unless --input_subscription"})
    assert "usage: python -m pipeline.cohorts --state_dir=... [options] [Beam options]" in text
    assert "[required unless --input_subscription] The cohort's members now" in text
    assert "  --braze_max_attempts=INT" in text and "--sync_config" not in text and "--report_dir" in text
    assert "      [default: empty] Where reports" in text
