"""Generate ``templates/metadata.json`` from the job's options, so the two cannot drift.

    python -m templates.build_metadata           # rewrite templates/metadata.json
    python -m templates.build_metadata --check   # exit 1 if the committed file is stale

Every option that ``pipeline.options.StreamOptions`` declares becomes one flex-template
parameter: its help text comes from the option, its label and regexes from the tables below
(an option missing from them still gets a label from its name and a regex from its type, and
``tests/test_templates.py`` asks for the file to be regenerated).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

from pipeline.options import StreamOptions, _bool

METADATA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metadata.json")

NAME = "Amplitude to Braze (event streaming)"
DESCRIPTION = (
    "Streams Amplitude events and user-property updates from a Pub/Sub subscription to Braze "
    "/users/track, one or more syncs per job as the syncs file says: selected and filtered "
    "events, changed user attributes only, Braze-sized batches. Everything that cannot be "
    "delivered goes to a dead-letter topic with a reason. API keys are read from Secret Manager "
    "on the workers."
)

REQUIRED = ("input_subscription", "dead_letter_topic", "sync_config")

LABELS: Dict[str, str] = {
    "input_subscription": "Input Pub/Sub subscription",
    "dead_letter_topic": "Dead-letter Pub/Sub topic",
    "outcome_topic": "Outcome Pub/Sub topic",
    "shadow_topic": "Shadow Pub/Sub topic (request bodies of syncs in shadow mode)",
    "sync_config": "Syncs file",
    "allow_insecure_endpoints": "Allow non-Braze endpoints (local testing only)",
    "dedup_window_minutes": "Deduplication window (minutes)",
    "user_state_ttl_days": "User state lifetime (days)",
    "braze_batch_limit_mode": "Braze batch limit mode",
    "max_batch_wait_seconds": "Longest batch wait (seconds)",
    "batch_shards_per_sync": "Request streams per sync",
    "braze_timeout_seconds": "Braze request timeout (seconds)",
    "braze_max_attempts": "Attempts per Braze request",
    "braze_max_retry_seconds": "Retry time per Braze request (seconds)",
    "braze_max_in_flight": "Braze requests in flight per batch key",
    "replay_subscription": "Replay Pub/Sub subscription (operators only)",
    "reorder_lateness_seconds": "Reorder wait for user updates (seconds)",
    "braze_outage_budget": "Braze outage budget (e.g. 4h)",
    "braze_max_backoff_seconds": "Longest wait between retries in an outage (seconds)",
    "braze_max_array_length": "Values kept per array attribute",
    "anonymous_settle_seconds": "Wait before merging an anonymous device (seconds)",
}

SUBSCRIPTION_REGEX = r"^projects/[^/]+/subscriptions/[^/]+$"
TOPIC_REGEX = r"^projects/[^/]+/topics/[^/]+$"
BOOLEAN_REGEX = r"^(true|false)$"
INTEGER_REGEX = r"^[0-9]+$"
NUMBER_REGEX = r"^[0-9]+(\.[0-9]+)?$"

REGEXES: Dict[str, List[str]] = {
    "input_subscription": [SUBSCRIPTION_REGEX],
    "dead_letter_topic": [TOPIC_REGEX],
    "outcome_topic": [TOPIC_REGEX],
    "shadow_topic": [TOPIC_REGEX],
    "replay_subscription": [SUBSCRIPTION_REGEX],
    "sync_config": [r"^(gs://.+|/.+)$"],
    "braze_outage_budget": [r"^([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?[hms])+)$"],
}

# Dataflow's console offers a picker for these.
PARAM_TYPES: Dict[str, str] = {
    "input_subscription": "PUBSUB_SUBSCRIPTION",
    "dead_letter_topic": "PUBSUB_TOPIC",
    "outcome_topic": "PUBSUB_TOPIC",
    "shadow_topic": "PUBSUB_TOPIC",
    "replay_subscription": "PUBSUB_SUBSCRIPTION",
}


def option_actions() -> List[argparse.Action]:
    """The argparse actions StreamOptions declares, in declaration order."""
    return [action for action, _ in _actions_with_groups()]


def _actions_with_groups() -> List[Tuple[argparse.Action, str]]:
    parser = argparse.ArgumentParser(add_help=False)
    StreamOptions._add_argparse_args(parser)
    group_of = {}
    for group in parser._action_groups:
        for action in group._group_actions:
            group_of[id(action)] = group.title
    return [(a, group_of.get(id(a)) or "") for a in parser._actions if a.option_strings]


def _is_boolean(action: argparse.Action) -> bool:
    return action.type is _bool or isinstance(action.default, bool)


def _regexes(action: argparse.Action) -> List[str]:
    name = action.dest
    if name in REGEXES:
        return list(REGEXES[name])
    if action.choices:
        return ["^(" + "|".join(str(c) for c in action.choices) + ")$"]
    if _is_boolean(action):
        return [BOOLEAN_REGEX]
    if action.type is int:
        return [INTEGER_REGEX]
    if action.type is float:
        return [NUMBER_REGEX]
    return []


def _default_value(action: argparse.Action) -> Optional[str]:
    """The default as the text a template parameter would carry, or None."""
    default = action.default
    if default is None or default == "" or default is argparse.SUPPRESS:
        return None
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return str(default)


def _default_text(action: argparse.Action) -> str:
    value = _default_value(action)
    return f" Default: {value}." if value is not None else ""


def _param_type(action: argparse.Action) -> Optional[str]:
    if action.dest in PARAM_TYPES:
        return PARAM_TYPES[action.dest]
    if action.choices:
        return "ENUM"
    if _is_boolean(action):
        return "BOOLEAN"
    if action.type in (int, float):
        return "NUMBER"
    return None


def _help(action: argparse.Action) -> str:
    text = " ".join((action.help or "").split())
    if action.choices and not any(str(c) in text for c in action.choices):
        text += " One of: " + ", ".join(str(c) for c in action.choices) + "."
    return text + _default_text(action)


def build_parameters() -> List[dict]:
    parameters = []
    for action, group in _actions_with_groups():
        name = action.dest
        parameter = {
            "name": name,
            "label": LABELS.get(name) or name.replace("_", " ").capitalize(),
            "helpText": _help(action),
            "isOptional": name not in REQUIRED,
        }
        if group:
            parameter["groupName"] = group
        param_type = _param_type(action)
        if param_type:
            parameter["paramType"] = param_type
        if action.choices:
            parameter["enumOptions"] = [{"value": str(c)} for c in action.choices]
        default = _default_value(action)
        if default is not None:
            parameter["defaultValue"] = default
        regexes = _regexes(action)
        if regexes:
            parameter["regexes"] = regexes
        parameters.append(parameter)
    return parameters


# Beam's own options that the template declares as parameters too. `make launch` passes the
# image it built as sdk_container_image, so the workers run the launcher's image and install
# nothing at start-up (Google's pipeline_with_dependencies sample passes it the same way).
# Declared because Dataflow checks launch parameters against this file; whether it would also
# accept an undeclared Beam option is UNCONFIRMED, so we do not rely on it.
BEAM_PARAMETERS: List[dict] = [
    {
        "name": "sdk_container_image",
        "label": "Worker container image",
        "helpText": "The container image the workers run: the same image as the template's launcher "
        "(templates/Dockerfile), so workers install nothing at start-up. make launch sets it.",
        "isOptional": True,
        "regexes": [r"^[^\s]+$"],
    },
]


def build_metadata() -> dict:
    return {
        "name": NAME,
        "description": DESCRIPTION,
        "streaming": True,
        "supportsAtLeastOnce": True,
        "supportsExactlyOnce": True,
        "parameters": build_parameters() + [dict(p) for p in BEAM_PARAMETERS],
    }


def render() -> str:
    return json.dumps(build_metadata(), indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m templates.build_metadata", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    parser.add_argument("--out", default=METADATA_PATH, help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        try:
            with open(args.out, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != text:
            print(f"{args.out} is out of date: run python -m templates.build_metadata", file=sys.stderr)
            return 1
        return 0
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.out} ({len(build_metadata()['parameters'])} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
