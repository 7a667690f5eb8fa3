"""Deploy the cohort job for one environment, from ``templates/env/cohorts/<env>.json``.

    python -m templates.cohorts_deploy check    --env prod              # validate (no gcloud)
    python -m templates.cohorts_deploy template --env prod [--dry-run]  # the two template specs
    python -m templates.cohorts_deploy launch   --env prod [--dry-run] [--update]   # the streaming mode
    python -m templates.cohorts_deploy schedule --env prod [--dry-run]  # one Cloud Scheduler job per scheduled sync

``make template-cohorts``, ``make launch-cohorts`` and ``make schedule`` call these; ``DRY_RUN=1``
prints the gcloud commands instead of running them.

The templates use the image ``make template`` builds (``templates/cloudbuild.yaml``): the specs
name its ``-cohorts`` tag (``templates.deploy.cohorts_image``), whose only difference is the
launcher's entry point (``gcloud dataflow flex-template build`` takes ``--image`` or ``--env``,
never both), and every launch passes ``gcloud.image`` as ``sdk_container_image``, so the
workers run the same packages and install nothing at start-up.
``schedule`` creates (or updates, when it exists) a Cloud Scheduler job per sync that
Cloud Scheduler runs (``source: download`` with cadence hourly or daily, and ``source: feed``
with ``reconcile``): an HTTP call to Dataflow's ``flexTemplates:launch`` for the batch
template, as the environment's service account. Each job's minute (and hour, for daily and
weekly) is spread by a hash of the sync's name, so downloads do not all start at once
(Amplitude allows 5 concurrent requests per project and 4 download requests a minute).

An env file (JSON): ``description``; ``gcloud``: ``project``, ``region``, ``image``,
``batch_template_file`` and ``feed_template_file`` (gs:// paths of the specs), ``feed_job_name``,
``batch_job_prefix``, ``service_account_email``, optional ``temp_location``,
``staging_location``, ``worker_machine_type``, ``max_workers``, ``enable_streaming_engine``;
``cohorts_file``: the cohorts file in this repository, uploaded to the ``config`` URI by
``launch`` and ``schedule``; ``parameters`` (both templates), ``feed_parameters`` and
``batch_parameters``: template parameters, every value a string.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import zlib
from typing import List

from templates.deploy import WORKER_IMAGE_PARAMETER, cohorts_image, parameters_flag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV_DIR = os.path.join(ROOT, "templates", "env", "cohorts")
ENV_KEYS = ("description", "gcloud", "cohorts_file", "parameters", "feed_parameters", "batch_parameters")
GCLOUD_REQUIRED = ("project", "region", "image", "batch_template_file", "feed_template_file", "feed_job_name",
                   "batch_job_prefix", "service_account_email")
GCLOUD_OPTIONAL = ("temp_location", "staging_location", "worker_machine_type", "max_workers",
                   "enable_streaming_engine")
CRON = {"hourly": "{m} * * * *", "daily": "{m} {h} * * *", "weekly": "{m} {h} * * 1"}


def load_env(env: str) -> dict:
    if not re.fullmatch(r"[a-z0-9_-]+", env or ""):
        raise ValueError(f"environment name must be lowercase letters, digits, '-' or '_', got {env!r}")
    path = os.path.join(ENV_DIR, f"{env}.json")
    if not os.path.exists(path):
        known = sorted(f[:-5] for f in os.listdir(ENV_DIR) if f.endswith(".json"))
        raise ValueError(f"no such file {path}; environments: {', '.join(known)}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _metadata(kind: str) -> dict:
    from templates.cohorts_metadata import build
    return build(kind)


def validate(document: dict) -> List[str]:
    """Every problem with an env document, its parameters (against both templates) and its cohorts file."""
    from pipeline.cohort_config import ConfigError, load_cohorts, monthly_downloads

    problems = [f"{k}: unknown key (expected {', '.join(ENV_KEYS)})" for k in document if k not in ENV_KEYS]
    g = document.get("gcloud") or {}
    problems += [f"gcloud.{k}: required, a non-empty string" for k in GCLOUD_REQUIRED
                 if not isinstance(g.get(k), str) or not g[k]]
    problems += [f"gcloud.{k}: unknown setting" for k in g if k not in GCLOUD_REQUIRED + GCLOUD_OPTIONAL]
    for kind in ("batch", "feed"):
        declared = {p["name"]: p for p in _metadata(kind)["parameters"]}
        given = {**document.get("parameters", {}), **document.get(f"{kind}_parameters", {})}
        for name, value in given.items():
            spec = declared.get(name)
            if spec is None:
                if name not in document.get("parameters", {}):
                    problems.append(f"{kind}_parameters.{name}: not a parameter of the {kind} template")
                continue
            if not isinstance(value, str):
                problems.append(f"{kind}_parameters.{name}: must be a string, got {value!r}")
            elif any(not re.fullmatch(r, value) for r in spec.get("regexes", [])):
                problems.append(f"parameters.{name}: {value!r} does not match {spec['regexes']}")
        for name, spec in declared.items():
            if not spec["isOptional"] and name not in given and not (kind == "batch" and name == "sync"):
                problems.append(f"parameters.{name}: required by the {kind} template")
    path = os.path.join(ROOT, document.get("cohorts_file") or "")
    if not document.get("cohorts_file") or not os.path.isfile(path):
        problems.append(f"cohorts_file: {document.get('cohorts_file')!r} does not exist")
    elif not problems:
        try:
            config = load_cohorts(path)
        except ConfigError as e:
            return problems + [f"cohorts_file: {p}" for p in e.problems]
        total, arithmetic = monthly_downloads(config.syncs)
        if config.amplitude is not None and total:
            print(f"scheduled downloads: {total} a month ({arithmetic}) of Amplitude's "
                  f"{config.amplitude.monthly_download_budget} (reserve {config.amplitude.budget_reserve})",
                  file=sys.stderr)
    return problems


def template_commands(document: dict) -> List[List[str]]:
    g = document["gcloud"]
    return [["gcloud", "dataflow", "flex-template", "build", g[f"{kind}_template_file"], f"--project={g['project']}",
             f"--image={cohorts_image(g['image'])}", "--sdk-language=PYTHON",
             f"--metadata-file=templates/cohorts-{kind}-metadata.json"]
            for kind in ("batch", "feed")]


def _upload(document: dict) -> List[str]:
    g = document["gcloud"]
    return ["gcloud", "storage", "cp", document["cohorts_file"], document["parameters"]["config"],
            f"--project={g['project']}"]


def launch_commands(document: dict, update: bool = False) -> List[List[str]]:
    g = document["gcloud"]
    run = ["gcloud", "dataflow", "flex-template", "run", g["feed_job_name"], f"--project={g['project']}",
           f"--region={g['region']}", f"--template-file-gcs-location={g['feed_template_file']}",
           f"--service-account-email={g['service_account_email']}"]
    for key in GCLOUD_OPTIONAL:
        if key in g and g[key] not in (False, None, ""):
            run.append(f"--{key.replace('_', '-')}" + ("" if g[key] is True else f"={g[key]}"))
    run.append(parameters_flag({**document["parameters"], **document.get("feed_parameters", {}),
                                WORKER_IMAGE_PARAMETER: g["image"]}))
    if update:
        run.append("--update")
    return [_upload(document), run]


def cron_for(sync_name: str, schedule: str) -> str:
    spread = zlib.crc32(sync_name.encode("utf-8"))
    return CRON[schedule].format(m=spread % 60, h=(spread // 60) % 24)


def schedule_commands(document: dict) -> List[List[str]]:
    """The upload, then per scheduled sync: ``describe`` (does it exist?) and ``create http``
    (``update http`` with the same flags when it does)."""
    from pipeline.cohort_config import load_cohorts

    g = document["gcloud"]
    config = load_cohorts(os.path.join(ROOT, document["cohorts_file"]))
    commands = [_upload(document)]
    uri = (f"https://dataflow.googleapis.com/v1b3/projects/{g['project']}/locations/{g['region']}"
           "/flexTemplates:launch")
    for sync in config.syncs:
        if not sync.schedule:
            continue
        name = f"{g['batch_job_prefix']}-{sync.name}".lower()
        parameters = {**document["parameters"], **document.get("batch_parameters", {}), "sync": sync.name,
                      WORKER_IMAGE_PARAMETER: g["image"]}
        if sync.source == "feed":
            parameters["reconcile"] = "true"
        environment = {"serviceAccountEmail": g["service_account_email"]}
        for key, field in (("temp_location", "tempLocation"), ("staging_location", "stagingLocation"),
                           ("worker_machine_type", "machineType"), ("max_workers", "maxWorkers")):
            if key in g:
                environment[field] = g[key]
        body = {"launchParameter": {"jobName": name, "containerSpecGcsPath": g["batch_template_file"],
                                    "parameters": parameters, "environment": environment}}
        flags = [f"--project={g['project']}", f"--location={g['region']}",
                 f"--schedule={cron_for(sync.name, sync.schedule)}", "--time-zone=Etc/UTC", f"--uri={uri}",
                 "--http-method=POST",
                 f"--oauth-service-account-email={g['service_account_email']}",
                 "--headers=Content-Type=application/json",
                 f"--message-body={json.dumps(body, separators=(',', ':'), sort_keys=True)}",
                 f"--description=cohort sync {sync.name} ({sync.schedule}, source {sync.source})"]
        commands.append(["gcloud", "scheduler", "jobs", "describe", name, f"--project={g['project']}",
                         f"--location={g['region']}"])
        commands.append(["gcloud", "scheduler", "jobs", "create", "http", name, *flags])
    return commands


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m templates.cohorts_deploy", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("check", "template", "launch", "schedule"))
    parser.add_argument("--env", required=True)
    parser.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")
    parser.add_argument("--update", action="store_true", help="launch: update the running streaming job in place")
    args = parser.parse_args(argv)
    try:
        document = load_env(args.env)
    except (ValueError, json.JSONDecodeError) as e:
        print(f"templates/env/cohorts/{args.env}.json: {e}", file=sys.stderr)
        return 2
    problems = validate(document)
    if problems:
        print(f"templates/env/cohorts/{args.env}.json: {len(problems)} problem(s):\n"
              + "\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"templates/env/cohorts/{args.env}.json: ok")
        return 0
    commands = {"template": lambda: template_commands(document),
                "launch": lambda: launch_commands(document, args.update),
                "schedule": lambda: schedule_commands(document)}[args.command]()
    exists = False
    for command in commands:
        if command[:4] == ["gcloud", "scheduler", "jobs", "create"] and exists:
            command = ["gcloud", "scheduler", "jobs", "update", *command[4:]]
        if args.dry_run and command[:4] == ["gcloud", "scheduler", "jobs", "create"]:
            print("# (update http with the same flags when the describe above finds the job)")
        print("+ " + shlex.join(command), flush=True)
        if args.dry_run:
            continue
        if command[:4] == ["gcloud", "scheduler", "jobs", "describe"]:
            exists = subprocess.run(command, cwd=ROOT, capture_output=True).returncode == 0
            continue
        done = subprocess.run(command, cwd=ROOT)
        if done.returncode != 0:
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
