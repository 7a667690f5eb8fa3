"""Generate the cohort job's two flex-template metadata files from its options, so they cannot drift.

    python -m templates.cohorts_metadata           # rewrite both files
    python -m templates.cohorts_metadata --check   # exit 1 if a committed file is stale

* ``templates/cohorts-batch-metadata.json``: one batch run of one sync (Cloud Scheduler launches
  it for scheduled download syncs; a person for bootstraps, reconciles and one-time syncs);
* ``templates/cohorts-feed-metadata.json``: the streaming mode over Amplitude's Pub/Sub cohort feed.

Both templates launch from the image's ``-cohorts`` tag (its entry point is the cohort job,
``templates/entrypoints/cohorts.py``) and declare ``sdk_container_image``, which
``templates.cohorts_deploy`` sets so the workers run the same image. Each parameter's help,
default and regex come from the option (``pipeline.cohort_options``), rendered by the streaming
template's own helpers (``templates.build_metadata``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List

from pipeline.cohort_options import REQUIRED_BATCH, REQUIRED_FEED, option_actions
from templates.build_metadata import BEAM_PARAMETERS, _default_value, _help, _param_type, _regexes

TEMPLATES = os.path.dirname(os.path.abspath(__file__))
BATCH_PATH = os.path.join(TEMPLATES, "cohorts-batch-metadata.json")
FEED_PATH = os.path.join(TEMPLATES, "cohorts-feed-metadata.json")

FEED_ONLY = ("input_subscription", "dead_letter_topic", "flush_seconds", "feed_dedup_hours", "feed_state_ttl_days")
BATCH_ONLY = ("snapshot", "reconcile", "allow_empty", "allow_mass_removal", "use_download_reserve", "lease_minutes",
              "download_deadline_minutes")
NEVER = ("delete_target",)  # a one-off by hand, not a template parameter

LABELS: Dict[str, str] = {
    "config": "Cohorts file", "sync": "Cohort sync", "snapshot": "Snapshot file", "reconcile": "Reconcile a feed sync",
    "allow_empty": "Allow an empty membership", "allow_mass_removal": "Allow mass removal",
    "use_download_reserve": "Use the download reserve", "state_dir": "State directory",
    "report_dir": "Report directory", "lease_minutes": "Lease (minutes)",
    "download_deadline_minutes": "Download deadline (minutes)", "flush_seconds": "Flush interval (seconds)",
    "feed_dedup_hours": "Repeat window (hours)", "feed_state_ttl_days": "User state lifetime (days)",
    "delivery_shards": "Requests in flight", "input_subscription": "Cohort feed subscription",
    "dead_letter_topic": "Dead-letter Pub/Sub topic",
    "allow_insecure_endpoints": "Allow non-Braze endpoints (local testing only)",
    "braze_timeout_seconds": "Braze request timeout (seconds)", "braze_max_attempts": "Attempts per Braze request",
    "braze_max_retry_seconds": "Retry time per Braze request (seconds)",
}
REGEXES = {"config": [r"^gs://.+$"], "state_dir": [r"^gs://.+$"], "report_dir": [r"^(gs://.+)?$"],
           "snapshot": [r"^(gs://.+)?$"], "input_subscription": [r"^projects/[^/]+/subscriptions/[^/]+$"],
           "dead_letter_topic": [r"^projects/[^/]+/topics/[^/]+$"]}
PARAM_TYPES = {"input_subscription": "PUBSUB_SUBSCRIPTION", "dead_letter_topic": "PUBSUB_TOPIC"}


def parameters(kind: str) -> List[dict]:
    required = REQUIRED_BATCH if kind == "batch" else REQUIRED_FEED
    skip = NEVER + (FEED_ONLY if kind == "batch" else BATCH_ONLY)
    out = []
    for action, group in option_actions():
        name = action.dest
        if name in skip:
            continue
        parameter = {"name": name, "label": LABELS.get(name) or name.replace("_", " ").capitalize(),
                     "helpText": _help(action), "isOptional": name not in required}
        if group:
            parameter["groupName"] = group
        param_type = PARAM_TYPES.get(name) or _param_type(action)
        if param_type:
            parameter["paramType"] = param_type
        default = _default_value(action)
        if default is not None:
            parameter["defaultValue"] = default
        regexes = REGEXES.get(name) or _regexes(action)
        if regexes:
            parameter["regexes"] = regexes
        out.append(parameter)
    return out + [dict(p) for p in BEAM_PARAMETERS]


def build(kind: str) -> dict:
    if kind == "batch":
        return {"name": "Amplitude cohort to Braze (one run)",
                "description": "One run of one cohort sync: downloads the cohort from Amplitude's cohort API (or "
                               "reads a snapshot), sends who entered or left since the last successful run to Braze, "
                               "and writes a report and an email. Launched by Cloud Scheduler for scheduled syncs.",
                "streaming": False, "parameters": parameters("batch")}
    return {"name": "Amplitude cohort feed to Braze (streaming)",
            "description": "Reads Amplitude's Pub/Sub cohort feed (Google Pub/Sub Cohort Sync destination) and sends "
                           "each membership change to the cohort's Braze target: repeats dropped, the newest "
                           "computed_time wins, hourly and daily reports, dead letters with a reason.",
            "streaming": True, "supportsAtLeastOnce": True, "parameters": parameters("feed")}


def render(kind: str) -> str:
    return json.dumps(build(kind), indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m templates.cohorts_metadata", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = parser.parse_args(argv)
    stale = []
    for kind, path in (("batch", BATCH_PATH), ("feed", FEED_PATH)):
        text = render(kind)
        if args.check:
            current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
            if current != text:
                stale.append(path)
            continue
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {path} ({len(build(kind)['parameters'])} parameters)")
    for path in stale:
        print(f"{path} is out of date: run python -m templates.cohorts_metadata", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
