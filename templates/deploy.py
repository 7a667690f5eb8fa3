"""Build and launch the flex template for one environment, from ``templates/env/<env>.json``.

    python -m templates.deploy check    --env prod             # validate the env file (no gcloud)
    python -m templates.deploy template --env prod [--dry-run] # image (Cloud Build) + template spec
    python -m templates.deploy launch   --env prod [--dry-run] [--update]   # upload syncs file, run

``make template ENV=prod`` and ``make launch ENV=prod`` call these. ``--dry-run`` prints the
gcloud commands instead of running them. Every command validates the env file first, the
same way ``tests/test_templates.py`` does, so a bad parameter fails here, not in Dataflow.

An env file (JSON) has four keys:

* ``description``: one line for humans;
* ``gcloud``: where and how the job runs: ``project``, ``region``, ``image`` (Artifact
  Registry path of the launcher image), ``template_file`` (gs:// path of the template spec),
  ``job_name``; optional ``service_account_email``, ``temp_location``, ``staging_location``,
  ``worker_machine_type``, ``num_workers``, ``max_workers``, ``network``, ``subnetwork``,
  ``disable_public_ips``, ``enable_streaming_engine``, ``additional_experiments``;
* ``syncs_file``: the syncs file in this repository (``templates/env/syncs.<env>.yaml``),
  uploaded to the ``sync_config`` gs:// URI by ``launch``;
* ``parameters``: the template parameters, exactly the names in ``templates/metadata.json``,
  every value a string (as ``gcloud dataflow flex-template run --parameters`` passes them).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(ROOT, "templates")
ENV_DIR = os.path.join(TEMPLATES, "env")
METADATA = os.path.join(TEMPLATES, "metadata.json")

ENV_KEYS = ("description", "gcloud", "syncs_file", "parameters")
GCLOUD_REQUIRED = ("project", "region", "image", "template_file", "job_name")
# Optional gcloud settings → `gcloud dataflow flex-template run` flags.
GCLOUD_RUN_FLAGS = (
    "service_account_email", "temp_location", "staging_location", "worker_machine_type", "num_workers",
    "max_workers", "network", "subnetwork", "disable_public_ips", "enable_streaming_engine",
    "additional_experiments",
)
_DELIMITERS = ",~|;#@%"


class EnvError(ValueError):
    def __init__(self, env: str, problems: List[str]):
        self.problems = list(problems)
        super().__init__(f"templates/env/{env}.json: {len(problems)} problem(s):\n"
                         + "\n".join(f"  {p}" for p in problems))


def env_names() -> List[str]:
    return sorted(f[:-5] for f in os.listdir(ENV_DIR) if f.endswith(".json"))


def env_path(env: str) -> str:
    return os.path.join(ENV_DIR, f"{env}.json")


def load_metadata() -> dict:
    with open(METADATA, encoding="utf-8") as f:
        return json.load(f)


def load_env(env: str) -> dict:
    if not re.fullmatch(r"[a-z0-9_-]+", env or ""):
        raise EnvError(env, [f"environment name must be lowercase letters, digits, '-' or '_', got {env!r}"])
    try:
        with open(env_path(env), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise EnvError(env, [f"no such file; environments: {', '.join(env_names())}"]) from None
    except json.JSONDecodeError as e:
        raise EnvError(env, [f"not valid JSON: {e}"]) from None


def validate(document: dict, metadata: Optional[dict] = None) -> List[str]:
    """Every problem with an env document: unknown keys, parameters the template does not
    declare or whose values fail its regexes or the job's own checks, and the syncs file."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.config import ConfigError, enabled_syncs, load_syncs
    from pipeline.options import StreamOptions, check_stream_options

    metadata = metadata if metadata is not None else load_metadata()
    problems: List[str] = []
    if not isinstance(document, dict):
        return ["the file must hold a JSON object"]
    for key in document:
        if key not in ENV_KEYS:
            problems.append(f"{key}: unknown key (expected {', '.join(ENV_KEYS)})")

    gcloud = document.get("gcloud")
    if not isinstance(gcloud, dict):
        problems.append("gcloud: required, an object")
        gcloud = {}
    for key in GCLOUD_REQUIRED:
        if not isinstance(gcloud.get(key), str) or not gcloud[key]:
            problems.append(f"gcloud.{key}: required, a non-empty string")
    for key in gcloud:
        if key not in GCLOUD_REQUIRED and key not in GCLOUD_RUN_FLAGS:
            problems.append(f"gcloud.{key}: unknown setting (known: {', '.join(GCLOUD_REQUIRED + GCLOUD_RUN_FLAGS)})")
    for key in ("template_file", "temp_location", "staging_location"):
        if key in gcloud and not str(gcloud[key]).startswith("gs://"):
            problems.append(f"gcloud.{key}: must be a gs:// path")

    declared = {p["name"]: p for p in metadata["parameters"]}
    parameters = document.get("parameters")
    if not isinstance(parameters, dict):
        problems.append("parameters: required, an object of name → string")
        parameters = {}
    for name, value in parameters.items():
        spec = declared.get(name)
        if spec is None:
            problems.append(f"parameters.{name}: not a parameter of the template")
            continue
        if not isinstance(value, str):
            problems.append(f"parameters.{name}: must be a string (flex templates pass text), got {value!r}")
            continue
        for regex in spec.get("regexes", []):
            if not re.fullmatch(regex, value):
                problems.append(f"parameters.{name}: {value!r} does not match {regex}")
    for name, spec in declared.items():
        if not spec.get("isOptional") and name not in parameters:
            problems.append(f"parameters.{name}: required by the template")
    sync_config = parameters.get("sync_config")
    if isinstance(sync_config, str) and not sync_config.startswith("gs://"):
        problems.append("parameters.sync_config: must be a gs:// URI (the launcher and workers cannot see local files)")
    if not problems:
        argv = [f"--{k}={v}" for k, v in parameters.items()]
        try:
            options = PipelineOptions(argv).view_as(StreamOptions)
            problems += [f"parameters: {p}" for p in check_stream_options(options)]
        except (SystemExit, ValueError) as e:  # argparse rejects a value
            problems.append(f"parameters: rejected by the job's options ({e})")

    syncs_file = document.get("syncs_file")
    if not isinstance(syncs_file, str) or not syncs_file:
        problems.append("syncs_file: required, the syncs file's path in this repository")
    else:
        path = os.path.join(ROOT, syncs_file)
        if not os.path.isfile(path):
            problems.append(f"syncs_file: {syncs_file} does not exist")
        else:
            insecure = parameters.get("allow_insecure_endpoints", "false") == "true"
            try:
                if not enabled_syncs(load_syncs(path, allow_insecure_endpoints=insecure)):
                    problems.append(f"syncs_file: {syncs_file} enables no sync")
            except ConfigError as e:
                problems += [f"syncs_file: {p}" for p in e.problems]
    return problems


def checked_env(env: str) -> dict:
    document = load_env(env)
    problems = validate(document)
    if problems:
        raise EnvError(env, problems)
    return document


def parameters_flag(parameters: Dict[str, str]) -> str:
    """``--parameters=k=v,k=v``; when a value holds a comma, gcloud's ``^D^`` form with a
    delimiter D that no value holds (``gcloud topic escaping``)."""
    pairs = [f"{k}={v}" for k, v in parameters.items()]
    for delimiter in _DELIMITERS:
        if not any(delimiter in p for p in pairs):
            prefix = "" if delimiter == "," else f"^{delimiter}^"
            return "--parameters=" + prefix + delimiter.join(pairs)
    raise ValueError("every delimiter gcloud could use appears in a parameter value")


def template_commands(document: dict) -> List[List[str]]:
    g = document["gcloud"]
    return [
        ["gcloud", "builds", "submit", f"--project={g['project']}", "--config=templates/cloudbuild.yaml",
         f"--substitutions=_IMAGE={g['image']}", "."],
        ["gcloud", "dataflow", "flex-template", "build", g["template_file"], f"--project={g['project']}",
         f"--image={g['image']}", "--sdk-language=PYTHON", "--metadata-file=templates/metadata.json"],
    ]


def launch_commands(document: dict, update: bool = False) -> List[List[str]]:
    g = document["gcloud"]
    commands = []
    sync_config = document["parameters"]["sync_config"]
    commands.append(["gcloud", "storage", "cp", document["syncs_file"], sync_config, f"--project={g['project']}"])
    run = ["gcloud", "dataflow", "flex-template", "run", g["job_name"], f"--project={g['project']}",
           f"--region={g['region']}", f"--template-file-gcs-location={g['template_file']}"]
    for key in GCLOUD_RUN_FLAGS:
        if key not in g:
            continue
        flag = "--" + key.replace("_", "-")
        value = g[key]
        if isinstance(value, bool):
            if value:
                run.append(flag)
        elif isinstance(value, list):
            run.append(f"{flag}={','.join(str(v) for v in value)}")
        else:
            run.append(f"{flag}={value}")
    run.append(parameters_flag(document["parameters"]))
    if update:
        run.append("--update")
    commands.append(run)
    return commands


def _metadata_is_current() -> Tuple[bool, str]:
    from templates.build_metadata import render

    with open(METADATA, encoding="utf-8") as f:
        return f.read() == render(), "templates/metadata.json is out of date: run python -m templates.build_metadata"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m templates.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("check", "template", "launch"))
    parser.add_argument("--env", required=True, help="an env file's name: " + ", ".join(env_names()))
    parser.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")
    parser.add_argument("--update", action="store_true", help="launch: update the running job in place "
                        "(same job_name; step names must be unchanged)")
    args = parser.parse_args(argv)
    try:
        document = checked_env(args.env)
    except EnvError as e:
        print(e, file=sys.stderr)
        return 2
    current, message = _metadata_is_current()
    if not current:
        print(message, file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"templates/env/{args.env}.json: ok")
        return 0
    commands = template_commands(document) if args.command == "template" else launch_commands(document, args.update)
    for command in commands:
        print("+ " + shlex.join(command), flush=True)
        if not args.dry_run:
            done = subprocess.run(command, cwd=ROOT)
            if done.returncode != 0:
                return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
