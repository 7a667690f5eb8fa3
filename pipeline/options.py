"""Every option of the streaming job, declared once, with help text.

``templates/metadata.json`` publishes the same set for the Dataflow flex template.
"""
from __future__ import annotations

import re

from apache_beam.options.pipeline_options import PipelineOptions

SUBSCRIPTION_RE = re.compile(r"^projects/[^/\s]+/subscriptions/[^/\s]+$")
TOPIC_RE = re.compile(r"^projects/[^/\s]+/topics/[^/\s]+$")

# The job cannot start without these (``check_stream_options`` says so); ``--help`` marks them.
REQUIRED_OPTIONS = ("input_subscription", "dead_letter_topic", "sync_config")


def _bool(value) -> bool:
    """Flex templates pass every parameter as text: accept true/false as well as the bare flag."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


class StreamOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        io = parser.add_argument_group("input and output")
        io.add_argument(
            "--input_subscription",
            help="Pub/Sub subscription with Amplitude events, projects/P/subscriptions/S. Each message "
            "holds one event or a JSON array of events (HTTP V2 or Export shape).",
        )
        io.add_argument(
            "--dead_letter_topic",
            help="Pub/Sub topic, projects/P/topics/T, for everything that could not be delivered, "
            "with the stage, a reason code and the original payload.",
        )
        io.add_argument(
            "--outcome_topic",
            default="",
            help="Optional Pub/Sub topic, projects/P/topics/T, receiving one JSON record per event, "
            "sync and branch (delivered, skipped with the rule, or dead-lettered), for audits and "
            "reconciliation. Off when empty.",
        )
        syncs = parser.add_argument_group("syncs")
        syncs.add_argument(
            "--sync_config",
            help="The syncs file (YAML or JSON), a local path or gs:// URI. Validated when the job is built.",
        )
        syncs.add_argument(
            "--allow_insecure_endpoints",
            type=_bool,
            nargs="?",
            const=True,
            default=False,
            help="Allow endpoints that are not Braze REST hosts or not https, such as the local "
            "simulator. Off by default; never needed in production.",
        )
        state = parser.add_argument_group("state")
        state.add_argument(
            "--dedup_window_minutes",
            type=float,
            default=10.0,
            help="Repeats of an insert id (insert_id, $insert_id, else uuid) within this many minutes "
            "are dropped per sync and counted; Pub/Sub redelivers and publishers retry. 0 turns it off.",
        )
        state.add_argument(
            "--user_state_ttl_days",
            type=float,
            default=30.0,
            help="Days after a user's last update that the job forgets the attribute values it last "
            "sent them; bounds the state. A forgotten user's next update is sent in full.",
        )
        braze = parser.add_argument_group("braze delivery")
        braze.add_argument(
            "--braze_batch_limit_mode",
            choices=("combined", "per_type"),
            default="combined",
            help="combined: at most 75 objects per request in all (current Braze accounts); "
            "per_type: 75 of each of attributes, events and purchases (legacy rate limits).",
        )
        braze.add_argument(
            "--max_batch_wait_seconds",
            type=float,
            default=2.0,
            help="Longest time an object waits for its request to fill before it is sent anyway.",
        )
        braze.add_argument(
            "--batch_shards_per_sync",
            type=int,
            default=4,
            help="Parallel request streams per sync; users are spread over them by a hash of their id.",
        )
        braze.add_argument(
            "--braze_timeout_seconds",
            type=float,
            default=10.0,
            help="Timeout of one /users/track call.",
        )
        braze.add_argument(
            "--braze_max_attempts",
            type=int,
            default=6,
            help="Attempts per request on 5xx, 429, timeouts and connection errors before the objects "
            "are dead-lettered as retries_exhausted.",
        )
        braze.add_argument(
            "--braze_max_retry_seconds",
            type=float,
            default=120.0,
            help="Longest total time spent retrying one request.",
        )
        braze.add_argument(
            "--braze_max_in_flight",
            type=int,
            default=1,
            help="Requests in flight at once per sink instance (1 to 64). 1: one request at a time per "
            "batch key. More: requests of one batch key may overlap, but never two with a user in "
            "common, which keep their order.",
        )


def check_stream_options(options: StreamOptions) -> list:
    """Problems with the required options, each saying what to pass."""
    problems = []
    if not options.input_subscription:
        problems.append("--input_subscription is required (projects/P/subscriptions/S)")
    elif not SUBSCRIPTION_RE.match(options.input_subscription):
        problems.append(f"--input_subscription must look like projects/P/subscriptions/S, got {options.input_subscription!r}")
    if not options.dead_letter_topic:
        problems.append("--dead_letter_topic is required (projects/P/topics/T)")
    elif not TOPIC_RE.match(options.dead_letter_topic):
        problems.append(f"--dead_letter_topic must look like projects/P/topics/T, got {options.dead_letter_topic!r}")
    if options.outcome_topic and not TOPIC_RE.match(options.outcome_topic):
        problems.append(f"--outcome_topic must look like projects/P/topics/T, got {options.outcome_topic!r}")
    if not options.sync_config:
        problems.append("--sync_config is required (a path or gs:// URI of the syncs file)")
    if options.max_batch_wait_seconds <= 0:
        problems.append("--max_batch_wait_seconds must be > 0")
    if options.batch_shards_per_sync < 1:
        problems.append("--batch_shards_per_sync must be >= 1")
    if options.braze_timeout_seconds <= 0:
        problems.append("--braze_timeout_seconds must be > 0")
    if options.dedup_window_minutes < 0:
        problems.append("--dedup_window_minutes must be >= 0")
    if options.user_state_ttl_days <= 0:
        problems.append("--user_state_ttl_days must be > 0")
    if options.braze_max_attempts < 1:
        problems.append("--braze_max_attempts must be >= 1")
    if not 1 <= options.braze_max_in_flight <= 64:
        problems.append("--braze_max_in_flight must be from 1 to 64")
    return problems
