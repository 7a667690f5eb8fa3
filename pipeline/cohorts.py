"""Entry point of the cohort-sync job: a batch run of one sync, or the streaming mode.

    python -m pipeline.cohorts --config cohorts.yaml --sync NAME --state_dir PATH|gs://... \\
        [--snapshot PATH|gs://...] [--allow_empty] [--allow_mass_removal] [Beam options]     # batch
    python -m pipeline.cohorts --config cohorts.yaml --state_dir ... \\
        --input_subscription projects/P/subscriptions/S --dead_letter_topic projects/P/topics/T   # streaming
    python -m pipeline.cohorts --state_dir ... --delete_target NAME                             # rename a target

Batch (``pipeline.cohort_batch``): one run of one sync. Its membership is ``--snapshot`` when
given, else a download from Amplitude's cohort API (``source: download``, and the bootstrap or
``--reconcile`` of a ``source: feed`` sync). Cloud Scheduler launches scheduled syncs
(``make schedule``). Exit status: 0 success, 1 failed run, 2 refused (bad options or config,
a renamed target). With a local runner the run's steps run here; with Dataflow the options and
the sync are checked here, then the run goes to a worker as a one-step job
(``pipeline.cohort_launch``) and this returns 0 once it is submitted, as a flex template's
launcher must. An option that neither this job nor Beam declares is refused before anything
starts, with the closest known name (``pipeline.cli``), as the streaming job does.

Streaming (``pipeline.cohort_feed``): every ``source: feed`` sync of the cohorts file (or only
``--sync``), from one subscription to Amplitude's "Google Pub/Sub (Cohort Sync)" topic.
"""
from __future__ import annotations

import logging
import sys
from typing import List, Optional

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.cohort_batch import RunSwitches, SyncOutcome, plan_sync, run_batch_sync
from pipeline.cohort_launch import build_batch_launch, runs_in_place
from pipeline.cohort_config import ConfigError, load_cohorts
from pipeline.cli import usable_argv
from pipeline.cohort_options import SHARED_OPTIONS, CohortOptions, check_cohort_options, cohort_settings, help_text
from pipeline.options import StreamOptions
from transforms.cohorts.delivery import RetryPolicy
from transforms.cohorts.state import StateError, StateStore

__all__ = ["run", "SyncOutcome"]

STREAMING_RUNNER = "BundleBasedDirectRunner"
PROG = "python -m pipeline.cohorts"
# What this job declares: its own options and the part of the streaming job's it shares. Any
# other option (a typo, the streaming job's --sync_config) is refused, with the closest name.
OPTION_SETS = [CohortOptions, (StreamOptions, SHARED_OPTIONS)]


def run(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return 0
    if not usable_argv(argv, OPTION_SETS, PROG):
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = PipelineOptions(argv)
    try:
        o = cohort_settings(options)
    except SystemExit:  # argparse already said what is wrong
        return 2
    problems = check_cohort_options(o)
    if problems:
        print("pipeline.cohorts: invalid options:\n" + "\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 2
    if o.delete_target:
        try:
            deleted = StateStore(o.state_dir).delete_target(o.delete_target)
        except StateError as e:
            print(f"pipeline.cohorts: {e}", file=sys.stderr)
            return 2
        print(f"deleted target {o.delete_target!r} and {len(deleted)} membership file(s)")
        return 0
    policy = RetryPolicy(timeout_seconds=o.braze_timeout_seconds, max_attempts=o.braze_max_attempts,
                         max_retry_seconds=o.braze_max_retry_seconds)
    try:
        config = load_cohorts(o.config, allow_insecure_endpoints=o.allow_insecure_endpoints)
    except (ConfigError, ValueError) as e:
        print(f"pipeline.cohorts: {e}", file=sys.stderr)
        return 2
    if o.streaming:
        return _run_feed(options, o, config, policy)
    try:
        plan = plan_sync(config, o.sync, o.state_dir, report_dir=o.report_dir, reconcile=o.reconcile)
    except (StateError, ValueError) as e:
        print(f"pipeline.cohorts: {e}", file=sys.stderr)
        return 2
    if not o.snapshot and plan.sync.source == "snapshot":
        print(f"pipeline.cohorts: sync {plan.sync.name!r} has source: snapshot; pass --snapshot FILE (or set "
              "source: download in the cohorts file to fetch it from Amplitude)", file=sys.stderr)
        return 2
    if not runs_in_place(options):
        result = build_batch_launch(options, argv).run()  # not waited for: the launcher must return
        print(f"{plan.sync.name}: launched the run as job {getattr(result, 'job_id', lambda: '?')()}; its report "
              f"goes to {plan.report_dir}")
        return 0
    switches = RunSwitches(allow_empty=o.allow_empty, allow_mass_removal=o.allow_mass_removal,
                           use_download_reserve=o.use_download_reserve, reconcile=o.reconcile,
                           lease_minutes=o.lease_minutes, download_deadline_minutes=o.download_deadline_minutes)
    outcome = run_batch_sync(plan, snapshot=o.snapshot or None, switches=switches, pipeline_options=options,
                             policy=policy, shards=o.delivery_shards)
    c = outcome.report["counts"]
    print(f"{plan.sync.name}: {outcome.status} ({plan.mode}): added {c['added']}, removed {c['removed']}, "
          f"skipped {c['skipped']}, failed {c['failed']}, unchanged {c['unchanged']}\n"
          + "".join(f"  error: {e}\n" for e in outcome.report["errors"])
          + f"report: {outcome.json_path}\n        {outcome.csv_path}")
    return 0 if outcome.status == "success" else 1


def _run_feed(options, o, config, policy) -> int:
    from pipeline.cohort_feed import FeedSettings, build_feed_pipeline, feed_syncs, name_feed_cohorts

    try:
        syncs = feed_syncs(config, o.sync)
    except ValueError as e:
        print(f"pipeline.cohorts: {e}", file=sys.stderr)
        return 2
    problems = name_feed_cohorts(config, syncs, policy)
    if problems:
        print("pipeline.cohorts: naming the cohorts in Braze failed:\n" + "\n".join(f"  {p}" for p in problems),
              file=sys.stderr)
        return 1
    settings = FeedSettings(subscription=o.input_subscription, dead_letter_topic=o.dead_letter_topic,
                            report_dir=o.report_dir or o.state_dir, flush_seconds=o.flush_seconds,
                            dedup_seconds=o.feed_dedup_hours * 3600, state_ttl_seconds=o.feed_state_ttl_days * 86400,
                            shards=o.delivery_shards)
    pipeline = build_feed_pipeline(options, config, syncs, settings, policy=policy)
    result = pipeline.run()
    if options.view_as(StandardOptions).runner == STREAMING_RUNNER:
        result.wait_until_finish()
    return 0


if __name__ == "__main__":
    sys.exit(run())
