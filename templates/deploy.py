"""Build and launch the flex template for one environment, from ``templates/env/<env>.json``.

    python -m templates.deploy check     --env prod             # validate the env file (no gcloud)
    python -m templates.deploy bootstrap --env prod [--dry-run] # create what the project lacks
    python -m templates.deploy template  --env prod [--dry-run] # image (Cloud Build) + template spec
    python -m templates.deploy launch    --env prod [--dry-run] [--update] [--mapping OLD=NEW ...]

``make bootstrap|template|launch ENV=prod`` call these. ``--dry-run`` prints the gcloud
commands instead of running them. Every command validates the env file first, the same way
``tests/test_templates.py`` does, so a bad parameter fails here, not in Dataflow.

The image (``templates/Dockerfile``) is the launcher and, passed as ``sdk_container_image``,
the workers' container: workers install nothing at start-up. Cloud Build pushes two tags of
it: ``gcloud.image`` (the streaming job's entry point) and the same name with ``-cohorts``
(``cohorts_image``; the cohort job's entry point, same layers).

An env file (JSON) has five keys:

* ``description``: one line for humans;
* ``gcloud``: where and how the job runs: ``project``, ``region``, ``image`` (Artifact
  Registry path of the launcher image), ``template_file`` (gs:// path of the template spec),
  ``job_name``; optional ``service_account_email``, ``temp_location``, ``staging_location``,
  ``worker_machine_type``, ``num_workers``, ``max_workers``, ``network``, ``subnetwork``,
  ``disable_public_ips``, ``enable_streaming_engine``, ``additional_experiments``;
* ``resources``: what ``bootstrap`` creates beyond the names above: ``input_topic`` (where
  Amplitude publishes), ``dead_letter_subscription`` (to inspect and replay dead letters) and
  ``amplitude_publisher`` (the service account Amplitude publishes as);
* ``syncs_file``: the syncs file in this repository (``templates/env/syncs.<env>.yaml``),
  uploaded to the ``sync_config`` gs:// URI by ``launch``;
* ``parameters``: the template parameters, exactly the names in ``templates/metadata.json``,
  every value a string (as ``gcloud dataflow flex-template run --parameters`` passes them);
  ``sdk_container_image`` is not set here: launch sets it to ``gcloud.image``.

A syncs file meant for Dataflow must read its keys from Secret Manager: an ``env:NAME``
reference names a variable that Dataflow workers do not have, so every object of that sync
would be dead-lettered as ``api_key_unavailable``. ``check`` (and every other command)
reports it as a warning, and refuses it for the prod and staging environments.
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

from templates import bootstrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(ROOT, "templates")
ENV_DIR = os.path.join(TEMPLATES, "env")
METADATA = os.path.join(TEMPLATES, "metadata.json")

ENV_KEYS = ("description", "gcloud", "resources", "syncs_file", "parameters")
# Environments where an env: key reference is an error, not only a warning.
STRICT_ENV_RE = re.compile(r"^(prod|production|staging|stage)([-_].*)?$")
WORKER_IMAGE_PARAMETER = "sdk_container_image"
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
    problems += bootstrap.problems(dict(document, gcloud=gcloud))

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
    if WORKER_IMAGE_PARAMETER in parameters:
        problems.append(f"parameters.{WORKER_IMAGE_PARAMETER}: leave it out; launch sets it to gcloud.image, "
                        "so the workers always run the image the launcher runs")
    sync_config = parameters.get("sync_config")
    if isinstance(sync_config, str) and not sync_config.startswith("gs://"):
        problems.append("parameters.sync_config: must be a gs:// URI (the launcher and workers cannot see local files)")
    if not problems:
        argv = [f"--{k}={v}" for k, v in parameters.items() if k != WORKER_IMAGE_PARAMETER]
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


def _syncs(document: dict):
    from pipeline.config import load_syncs

    parameters = document.get("parameters") or {}
    insecure = parameters.get("allow_insecure_endpoints", "false") == "true"
    return load_syncs(os.path.join(ROOT, document["syncs_file"]), allow_insecure_endpoints=insecure)


def env_key_references(document: dict) -> List[str]:
    """A warning for every sync whose API key is an ``env:`` reference (the document must be valid)."""
    from transforms.secrets import ENV_PREFIX

    return [
        f"syncs_file: {document['syncs_file']}: sync {s.name!r} reads its API key from {s.api_key}, an environment "
        "variable that Dataflow workers do not have: every object of this sync would be dead-lettered as "
        "api_key_unavailable. Store the key in Secret Manager and use projects/P/secrets/S/versions/V "
        "(README, Deploy to Dataflow)"
        for s in _syncs(document) if s.api_key.startswith(ENV_PREFIX)
    ]


def secret_references(document: dict) -> List[str]:
    """The Secret Manager references of every sync in the env's syncs file (enabled or not)."""
    return sorted({s.api_key for s in _syncs(document) if s.api_key.startswith("projects/")})


def is_strict(env: str) -> bool:
    return bool(STRICT_ENV_RE.match(env))


def checked_env(env: str) -> Tuple[dict, List[str]]:
    """The env document and its warnings; raises EnvError with every problem. In a strict
    environment (prod, staging) the warnings are problems."""
    document = load_env(env)
    problems = validate(document)
    if problems:
        raise EnvError(env, problems)
    warnings = env_key_references(document)
    if warnings and is_strict(env):
        raise EnvError(env, warnings)
    return document, warnings


def cohorts_image(image: str) -> str:
    """The cohort job's launcher tag of the image: ``.../amplitude-braze:1`` → ``.../amplitude-braze-cohorts:1``."""
    name, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:  # no tag
        return image + "-cohorts"
    return f"{name}-cohorts:{tag}"


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
    """Build and push the image (both tags, one build), then write the streaming job's spec."""
    g = document["gcloud"]
    return [
        ["gcloud", "builds", "submit", f"--project={g['project']}", f"--region={g['region']}",
         "--config=templates/cloudbuild.yaml",
         f"--substitutions=_IMAGE={g['image']},_COHORTS_IMAGE={cohorts_image(g['image'])}", "."],
        ["gcloud", "dataflow", "flex-template", "build", g["template_file"], f"--project={g['project']}",
         f"--image={g['image']}", "--sdk-language=PYTHON", "--metadata-file=templates/metadata.json"],
    ]


def launch_commands(document: dict, update: bool = False, mappings: Optional[Dict[str, str]] = None) -> List[List[str]]:
    """Upload the syncs file, then run the template with the workers on the launcher's image.
    ``update`` replaces the running job of the same name; ``mappings`` (old → new step name
    prefix) carry state across renamed stateful steps (README, "Updating a running job")."""
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
    run.append(parameters_flag({**document["parameters"], WORKER_IMAGE_PARAMETER: g["image"]}))
    if update:
        run.append("--update")
    if mappings:
        if not update:
            raise ValueError("transform name mappings only apply to --update")
        run.append("--transform-name-mappings=" + ",".join(f"{old}={new}" for old, new in mappings.items()))
    commands.append(run)
    return commands


def _metadata_is_current() -> Tuple[bool, str]:
    from templates.build_metadata import render

    with open(METADATA, encoding="utf-8") as f:
        return f.read() == render(), "templates/metadata.json is out of date: run python -m templates.build_metadata"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m templates.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("check", "bootstrap", "template", "launch"))
    parser.add_argument("--env", required=True, help="an env file's name: " + ", ".join(env_names()))
    parser.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")
    parser.add_argument("--update", action="store_true", help="launch: update the running job in place "
                        "(same job_name; stateful step names and coders unchanged, or mapped)")
    parser.add_argument("--mapping", action="append", default=[], metavar="OLD=NEW",
                        help="launch --update: a renamed step (prefix) whose state moves to the new name; repeatable")
    args = parser.parse_args(argv)
    try:
        mappings = dict(_mapping(m) for m in args.mapping)
        if mappings and not args.update:
            raise ValueError("--mapping only applies with --update")
    except ValueError as e:
        parser.error(str(e))
    try:
        document, warnings = checked_env(args.env)
    except EnvError as e:
        print(e, file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: templates/env/{args.env}.json: {warning}", file=sys.stderr)
    current, message = _metadata_is_current()
    if not current:
        print(message, file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"templates/env/{args.env}.json: ok" + (f" ({len(warnings)} warning(s))" if warnings else ""))
        return 0
    if args.command == "bootstrap":
        return _bootstrap(document, args.dry_run)
    commands = (template_commands(document) if args.command == "template"
                else launch_commands(document, args.update, mappings))
    for command in commands:
        print("+ " + shlex.join(command), flush=True)
        if not args.dry_run:
            done = subprocess.run(command, cwd=ROOT)
            if done.returncode != 0:
                return done.returncode
    return 0


def _mapping(text: str) -> Tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old or not new:
        raise ValueError(f"--mapping wants OLD=NEW (step name prefixes), got {text!r}")
    return old, new


def _bootstrap(document: dict, dry_run: bool) -> int:
    references = secret_references(document)
    status = bootstrap.run_steps(bootstrap.bootstrap_steps(document, references), dry_run=dry_run,
                                 out=lambda line: print(line, flush=True))
    if status == 0:
        print("\nleft to do by hand:")
        for note in bootstrap.closing_notes(document, references):
            print("- " + note)
    return status


if __name__ == "__main__":
    sys.exit(main())
