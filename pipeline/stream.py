"""Entry point of the event-streaming job.

    python -m pipeline.stream --input_subscription=projects/P/subscriptions/S \\
        --dead_letter_topic=projects/P/topics/T --sync_config=syncs.yaml [Beam options]

Locally it runs on the BundleBasedDirectRunner unless ``--runner`` says otherwise (the plain
DirectRunner would first try to download Prism, and only the bundle-based runner reads
Pub/Sub). On Dataflow the flex template launches the same module.
"""
from __future__ import annotations

import logging
import sys
from typing import List, Optional

import apache_beam as beam
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.config import ConfigError, load_syncs, require_enabled_syncs, shadow_syncs
from pipeline.graph import EventsToBraze
from pipeline.cli import help_text, usable_argv
from pipeline.local_runner import faster_bundle_based_direct_runner
from pipeline.options import REQUIRED_OPTIONS, StreamOptions, check_stream_options
from transforms.outage import parse_duration
from transforms.scrub import install_log_scrubbing
from transforms.dead_letters import WriteDeadLetters
from transforms.outcomes import RecordOutcomes
from transforms.shadow import WriteShadowRequests

LOCAL_RUNNER = "BundleBasedDirectRunner"


def build_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """The job's graph, checked and ready to run; raises ConfigError/ValueError on bad input."""
    opts = options.view_as(StreamOptions)
    problems = check_stream_options(opts)
    if problems:
        raise ValueError("invalid options:\n" + "\n".join(f"  {p}" for p in problems))
    all_syncs = load_syncs(opts.sync_config, allow_insecure_endpoints=opts.allow_insecure_endpoints)
    syncs = require_enabled_syncs(all_syncs, opts.sync_config)
    shadows = shadow_syncs(syncs)
    if shadows and not opts.shadow_topic:
        names = ", ".join(f"sync {s.name!r}" for s in shadows)
        raise ValueError(f"invalid options:\n  --shadow_topic is required (projects/P/topics/T): {names} has "
                         "mode: shadow, and its request bodies are published there instead of sent to Braze")
    standard = options.view_as(StandardOptions)
    standard.streaming = True
    if not standard.runner:
        standard.runner = LOCAL_RUNNER

    pipeline = beam.Pipeline(options=options)
    replayed = None
    if opts.replay_subscription:
        replayed = pipeline | "ReadReplaySubscription" >> ReadFromPubSub(
            subscription=opts.replay_subscription, with_attributes=True)
    results = (
        pipeline
        | "ReadFromPubSub" >> ReadFromPubSub(subscription=opts.input_subscription, with_attributes=True)
        | "EventsToBraze" >> EventsToBraze(
            syncs,
            replayed_messages=replayed,
            all_syncs=all_syncs,
            limit_mode=opts.braze_batch_limit_mode,
            max_batch_wait_seconds=opts.max_batch_wait_seconds,
            shards=opts.batch_shards_per_sync,
            timeout_seconds=opts.braze_timeout_seconds,
            max_attempts=opts.braze_max_attempts,
            max_retry_seconds=opts.braze_max_retry_seconds,
            outage_budget_seconds=parse_duration(opts.braze_outage_budget),
            hold_backoff_cap_seconds=opts.braze_max_backoff_seconds,
            max_in_flight=opts.braze_max_in_flight,
            dedup_window_seconds=opts.dedup_window_minutes * 60.0,
            user_state_ttl_days=opts.user_state_ttl_days,
            lateness_seconds=opts.reorder_lateness_seconds,
            anonymous_settle_seconds=opts.anonymous_settle_seconds,
            max_array_length=opts.braze_max_array_length,
        )
    )
    results["dead_letters"] | "WriteDeadLetters" >> WriteDeadLetters(opts.dead_letter_topic)
    results["outcomes"] | "RecordOutcomes" >> RecordOutcomes(opts.outcome_topic)
    if opts.shadow_topic:  # kept while no sync is in shadow, so an update that turns one live keeps the steps
        results["shadow"] | "WriteShadowRequests" >> WriteShadowRequests(opts.shadow_topic)
    return pipeline


PROG = "python -m pipeline.stream"
DESCRIPTION = "Stream Amplitude events from Pub/Sub to Braze /users/track, as the syncs file says."


def _print_help() -> None:
    print(help_text(PROG, DESCRIPTION, [StreamOptions], required=REQUIRED_OPTIONS), end="")


def run(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _print_help()
        return 0
    if not usable_argv(argv, [StreamOptions], PROG):
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_scrubbing()
    try:
        pipeline = build_pipeline(PipelineOptions(argv))
    except (ConfigError, ValueError) as e:
        print(f"pipeline.stream: {e}", file=sys.stderr)
        return 2
    local = pipeline.options.view_as(StandardOptions).runner == LOCAL_RUNNER
    if local:
        faster_bundle_based_direct_runner()
    result = pipeline.run()
    if local:
        result.wait_until_finish()
    return 0


if __name__ == "__main__":
    sys.exit(run())
