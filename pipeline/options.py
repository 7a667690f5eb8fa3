"""Every option of the streaming job, declared once, with help text.

``templates/metadata.json`` publishes the same set for the Dataflow flex template.
"""
from __future__ import annotations

import re

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.outage import parse_duration

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
        io.add_argument(
            "--shadow_topic",
            default="",
            help="Pub/Sub topic, projects/P/topics/T, receiving the request bodies of syncs in shadow "
            "mode (mode: shadow in the syncs file) instead of Braze: one message per request, the "
            "/users/track body as data, the sync, batch_key and seq as attributes. Required when an "
            "enabled sync is in shadow mode; off when empty.",
        )
        io.add_argument(
            "--replay_subscription",
            default="",
            help="Optional Pub/Sub subscription, projects/P/subscriptions/S, of the replay topic that "
            "only operators publish to: Braze objects from dead letters, republished by `make replay` "
            "once their cause is fixed. Each passes the same checks as a fresh object. Off when empty.",
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
        state.add_argument(
            "--reorder_lateness_seconds",
            type=float,
            default=2.0,
            help="How long each user's attribute updates wait so that updates arriving out of order "
            "(Pub/Sub keeps none) are applied in event-time order. Adds this much latency to "
            "attribute updates; 0 applies each as it arrives.",
        )
        state.add_argument(
            "--anonymous_settle_seconds",
            type=float,
            default=60.0,
            help="For syncs with identifier.anonymous: how long after a device's last anonymous event "
            "(by publish time) the job asks Braze's /users/identify to merge the device's alias "
            "profile into its user's profile, so the alias profile exists in Braze by then.",
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
            "--braze_outage_budget",
            default="4h",
            help="How long objects are held and retried while Braze fails or throttles across the "
            "board (5xx, 429, timeouts) before they are dead-lettered as outage_budget_exhausted: "
            "e.g. 4h, 30m, 90s. Amplitude's own destination retries for 4 hours.",
        )
        braze.add_argument(
            "--braze_max_backoff_seconds",
            type=float,
            default=300.0,
            help="Longest wait between two retries while holding through an outage (a 429 waits as "
            "long as its headers ask, whatever this says).",
        )
        braze.add_argument(
            "--braze_max_attempts",
            type=int,
            default=6,
            help="Attempts of one request that fails while Braze takes the sync's other requests "
            "(then retries_exhausted: the request, not Braze, is the problem), and at the end of a "
            "bounded input or a drain.",
        )
        braze.add_argument(
            "--braze_max_retry_seconds",
            type=float,
            default=120.0,
            help="Longest time spent retrying one request at the end of a bounded input or a drain.",
        )
        braze.add_argument(
            "--braze_max_in_flight",
            type=int,
            default=4,
            help="Requests of one batch key in flight at once when several are ready, as when the "
            "key drains after an outage (1 to 64). Two requests with a user in common never overlap "
            "and keep their order.",
        )
        braze.add_argument(
            "--braze_max_array_length",
            type=int,
            default=25,
            help="Values an array attribute keeps, newest first out as Braze does (Braze's default is "
            "25; raise it to your workspace's setting).",
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
    if options.shadow_topic and not TOPIC_RE.match(options.shadow_topic):
        problems.append(f"--shadow_topic must look like projects/P/topics/T, got {options.shadow_topic!r}")
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
    if options.replay_subscription and not SUBSCRIPTION_RE.match(options.replay_subscription):
        problems.append(f"--replay_subscription must look like projects/P/subscriptions/S, got "
                        f"{options.replay_subscription!r}")
    if options.reorder_lateness_seconds < 0:
        problems.append("--reorder_lateness_seconds must be >= 0")
    if not options.anonymous_settle_seconds >= 0:
        problems.append("--anonymous_settle_seconds must be >= 0")
    try:
        parse_duration(options.braze_outage_budget)
    except ValueError as e:
        problems.append(f"--braze_outage_budget: {e}")
    if options.braze_max_backoff_seconds <= 0:
        problems.append("--braze_max_backoff_seconds must be > 0")
    if options.braze_max_array_length < 1:
        problems.append("--braze_max_array_length must be >= 1")
    return problems
