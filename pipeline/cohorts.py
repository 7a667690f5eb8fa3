"""Entry point of the cohort-sync job.

    python -m pipeline.cohorts --config cohorts.yaml --sync NAME --snapshot PATH|gs://... \\
        --state_dir PATH|gs://... [--report_dir ...] [--allow_insecure_endpoints] [Beam options]
    python -m pipeline.cohorts --config cohorts.yaml --sync NAME \\
        --input_subscription projects/P/subscriptions/S --state_dir ... [Beam options]   # real time
    python -m pipeline.cohorts --state_dir ... --delete_target NAME                     # rename a target

One invocation is one sync run. Scheduling is external: ``hourly`` and ``daily`` syncs are
launched by Cloud Scheduler (a flex-template launch) or cron, each launch with the cohort's
current snapshot (for example from Amplitude's Behavioral Cohorts Download API). The cadence is
recorded in the state and the report; a run sooner than its cadence after the last success
is allowed (Amplitude's first two syncs can be closer) but noted. A ``real_time`` sync runs
with ``--input_subscription``; ``--snapshot`` is accepted for it only while it has no state
(the initial population), because the stream does not keep the snapshot state current.

A snapshot run (``build_snapshot_pipeline``; bounded, FnApiRunner unless ``--runner`` says):

    #1  ReadSnapshot → ResolveMembers      lines → (Braze id, amplitude_id); unresolved → skipped
    #2  ReadLastMembership                 the last successful membership (nothing on the first run)
    #3  DiffMembership                     entered → ADD, left → REMOVE, the rest unchanged
    #4  DeliverChanges                     /users/export/ids check (verify_users; unknown → skipped,
                                           not sent), then requests of ≤ 1,000 ids (partner) / ≤ 75
                                           objects (attribute)
    #5a WriteResults                       one Result per change and skipped row (scratch file)
    #5b WriteNewMembership                 unchanged + delivered adds + removes Braze refused (scratch
                                           file); users unknown to Braze are left out, so their adds
                                           are tried again next run

then, in this process (``run_snapshot_sync``): partner mode names the cohort first (on the first
sync and after a rename); after the pipeline, a run with any FAILED change, or that raised, is
``failed`` and the last membership stays; a ``success`` moves the new membership over it and
saves the target's name. Every run then writes its report and sends its email.

Exit status: 0 success, 1 failed run, 2 refused (bad options/config, renamed target).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import sys
from typing import Callable, List, Optional

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.cohort_config import CohortConfig, CohortSync, ConfigError, Target, load_cohorts
from pipeline.cohort_options import CohortOptions, check_cohort_options, cohort_settings
from pipeline.local_runner import without_fnapi_state_cache
from transforms.cohorts import members
from transforms.cohorts.delivery import CohortDeliverer, DeliverChanges, RetryPolicy, attribute_value
from transforms.cohorts.diff import UNCHANGED_TAG, DiffMembership, ReadLastMembership, member_line
from transforms.cohorts.notify import send_run_email
from transforms.cohorts.realtime import FlushAndDeliver, FlushReporter, ParseCohortChanges
from transforms.cohorts.records import ADD, DONE, FAILED, REMOVE, SKIPPED, UNKNOWN_TO_BRAZE, Result
from transforms.cohorts.report import build_report, report_paths, write_report
from transforms.cohorts.state import META_KEY, StateError, StateStore, new_run_id
from transforms.secrets import resolve_api_key

__all__ = ["SyncPlan", "SyncOutcome", "build_snapshot_pipeline", "build_realtime_pipeline", "plan_sync",
           "run_snapshot_sync", "run"]

_LOG = logging.getLogger("pipeline.cohorts")
BATCH_RUNNER = "FnApiRunner"
STREAMING_RUNNER = "BundleBasedDirectRunner"
UNCHANGED_COUNTER = "unchanged"
_PERIOD_SECONDS = {"hourly": 3600, "daily": 86400}


@dataclasses.dataclass
class SyncPlan:
    """Everything one run needs, decided before anything is sent."""

    config: CohortConfig
    sync: CohortSync
    target: Target
    store: StateStore
    report_dir: str
    run_id: str
    started_at: str
    last_meta: Optional[dict]
    notes: List[str]

    @property
    def mode(self) -> str:
        return "full" if self.last_meta is None else "incremental"

    @property
    def run_dir(self) -> str:
        return self.store.run_dir(self.sync.cohort_id, self.target.name, self.run_id)

    @property
    def results_path(self) -> str:
        return FileSystems.join(self.run_dir, "results.jsonl")

    @property
    def pending_membership_path(self) -> str:
        return FileSystems.join(self.run_dir, "membership.jsonl")

    @property
    def last_membership_path(self) -> Optional[str]:
        return None if self.last_meta is None else self.store.membership_path(self.sync.cohort_id, self.target.name)

    def meta(self) -> dict:
        created = (self.last_meta or {}).get("created_at") or self.started_at
        return {"run_id": self.run_id, "synced_at": self.started_at, "cohort_id": self.sync.cohort_id,
                "cohort_name": self.sync.cohort_name, "target": self.target.name, "cadence": self.sync.cadence,
                "sync": self.sync.name, "created_at": created}


@dataclasses.dataclass
class SyncOutcome:
    status: str  # success | failed
    report: dict
    json_path: str
    csv_path: str


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(dt: datetime.datetime) -> str:
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


def plan_sync(config: CohortConfig, sync_name: str, state_dir: str, *, report_dir: str = "",
              realtime: bool = False, now: Optional[datetime.datetime] = None) -> SyncPlan:
    """Check the run against the state; raises StateError (refused) or KeyError (unknown sync)."""
    try:
        sync = config.sync(sync_name)
    except KeyError:
        known = ", ".join(repr(s.name) for s in config.syncs)
        raise StateError(f"no cohort sync named {sync_name!r} in the config (syncs: {known})") from None
    target = config.target(sync.target)
    store = StateStore(state_dir)
    problems = store.check_target_names(config)
    if problems:
        raise StateError("refused: " + "; ".join(problems))
    last = store.read_meta(sync.cohort_id, target.name)
    notes = []
    if realtime and sync.cadence != "real_time":
        raise StateError(f"sync {sync.name!r} has cadence {sync.cadence!r}: run it with --snapshot, not "
                         "--input_subscription (only real_time syncs read a stream)")
    if not realtime and sync.cadence == "real_time" and last is not None:
        raise StateError(f"sync {sync.name!r} is real_time and already has its initial population; its "
                         "changes come from --input_subscription (a snapshot run would diff against a stale "
                         "membership)")
    if (last is not None and target.delivery == "attribute" and target.attribute_value == "label"
            and last.get("cohort_name") != sync.cohort_name):
        raise StateError(
            f"cohort {sync.cohort_id!r} was renamed from {last.get('cohort_name')!r} to {sync.cohort_name!r}; with "
            f"attribute delivery and attribute_value 'label' its members carry the old label in "
            f"{target.attribute!r}. Put the old name back, or delete the target's state "
            f"(--delete_target {target.name!r}) and remove the old label in Braze")
    now = now or _now()
    if last is not None and sync.cadence in _PERIOD_SECONDS:
        try:
            previous = datetime.datetime.fromisoformat(str(last.get("synced_at")).replace("Z", "+00:00"))
            elapsed = (now - previous).total_seconds()
            if elapsed < 0.9 * _PERIOD_SECONDS[sync.cadence]:
                notes.append(f"ran {elapsed / 60:.0f} min after the last successful sync; the cadence is "
                             f"{sync.cadence} (scheduling is external: check the scheduler)")
        except ValueError:
            pass
    return SyncPlan(config, sync, target, store, report_dir or state_dir, new_run_id(now), _iso(now), last, notes)


# --------------------------------------------------------------------------------------------
# Graphs


def _membership_after(result: Result):
    """The Braze ids that are members after a successful run, from one delivery result.

    Delivered adds join; a remove Braze refused for that user stays. Users unknown to Braze
    never join, whatever the operation: an add skipped as unknown is left out so the next run
    sees it as entering again and adds it once Braze knows the user; a remove skipped as
    unknown has nothing left to remove.
    """
    if result.op == ADD and result.status == DONE:
        yield member_line(result.key, result.amplitude_ids)
    elif result.op == REMOVE and result.status == SKIPPED and result.reason != UNKNOWN_TO_BRAZE:
        yield member_line(result.key, result.amplitude_ids)


def build_snapshot_pipeline(options: PipelineOptions, plan: SyncPlan, snapshot: str, *,
                            policy: RetryPolicy = RetryPolicy(), shards: int = 4,
                            resolve_key: Callable[[str], str] = resolve_api_key) -> beam.Pipeline:
    """The bounded graph of one snapshot run (not run here)."""
    fmt = members.snapshot_format(snapshot)
    columns = members.read_csv_header(snapshot) if fmt == "csv" else ()
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = BATCH_RUNNER
    if standard.runner == BATCH_RUNNER:
        without_fnapi_state_cache()
    p = beam.Pipeline(options=options)
    resolved = (p
                | "ReadSnapshot" >> members.ReadSnapshot(snapshot)
                | "ResolveMembers" >> members.ResolveMembers(plan.target.user_mapping, fmt, columns))
    last = p | "ReadLastMembership" >> ReadLastMembership(plan.last_membership_path)
    diff = {"new": resolved.members, "old": last} | "DiffMembership" >> DiffMembership()
    delivered = diff.changes | "DeliverChanges" >> DeliverChanges(
        plan.target, plan.sync, policy, shards=shards, resolve_key=resolve_key)
    ((delivered, resolved[members.SKIPPED_TAG])
     | "AllResults" >> beam.Flatten()
     | "ResultsToJson" >> beam.Map(lambda r: orjson.dumps(r.to_json()).decode())
     | "WriteResults" >> beam.io.WriteToText(plan.results_path, num_shards=1, shard_name_template=""))
    unchanged = diff[UNCHANGED_TAG] | "CountUnchanged" >> beam.Map(_count_unchanged)
    ((unchanged, delivered | "MembersAfterDelivery" >> beam.FlatMap(_membership_after))
     | "NewMembership" >> beam.Flatten()
     | "WriteNewMembership" >> beam.io.WriteToText(
         plan.pending_membership_path, num_shards=1, shard_name_template="",
         header=orjson.dumps({META_KEY: plan.meta()}).decode()))
    return p


def _count_unchanged(member):
    beam.metrics.Metrics.counter("cohorts", UNCHANGED_COUNTER).inc()
    return member_line(*member)


def build_realtime_pipeline(options: PipelineOptions, plan: SyncPlan, subscription: str, *,
                            policy: RetryPolicy = RetryPolicy(), flush_seconds: float = 60.0, shards: int = 1,
                            resolve_key: Callable[[str], str] = resolve_api_key) -> beam.Pipeline:
    """The streaming graph of a real-time sync (not run here)."""
    standard = options.view_as(StandardOptions)
    standard.streaming = True
    if not standard.runner:
        standard.runner = STREAMING_RUNNER
    p = beam.Pipeline(options=options)
    reporter = FlushReporter(plan.sync, plan.target, plan.report_dir, plan.config.email)
    changes = (p
               | "ReadFromPubSub" >> beam.io.ReadFromPubSub(subscription=subscription, with_attributes=True)
               | "ParseCohortChanges" >> ParseCohortChanges(plan.sync.cohort_id, plan.target.user_mapping))
    _ = changes.changes | "FlushAndDeliver" >> FlushAndDeliver(
        plan.target, plan.sync, policy, flush_seconds=flush_seconds, shards=shards, on_flush=reporter,
        resolve_key=resolve_key)
    return p


# --------------------------------------------------------------------------------------------
# Running


def _read_results(path: str) -> List[Result]:
    if not FileSystems.exists(path):
        return []
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return [Result.from_json(orjson.loads(line)) for line in f.read().splitlines() if line.strip()]


def _unchanged_count(pipeline_result) -> int:
    try:
        counters = pipeline_result.metrics().query(MetricsFilter().with_name(UNCHANGED_COUNTER))["counters"]
        return int(sum(c.committed or 0 for c in counters))
    except Exception:  # noqa: BLE001 - a count in the report is not worth failing the run
        return 0


def name_cohort_first(plan: SyncPlan, policy: RetryPolicy, resolve_key) -> Optional[str]:
    """Partner mode: the name call, on the first sync and after a rename. None when done or not needed."""
    if plan.target.delivery != "partner":
        return None
    if plan.last_meta is not None and plan.last_meta.get("cohort_name") == plan.sync.cohort_name:
        return None
    with CohortDeliverer(plan.target, plan.sync, policy, resolve_key=resolve_key) as deliverer:
        return deliverer.name_cohort(plan.meta()["created_at"])


def run_snapshot_sync(plan: SyncPlan, snapshot: str, *, pipeline_options: Optional[PipelineOptions] = None,
                      policy: RetryPolicy = RetryPolicy(), shards: int = 4,
                      resolve_key: Callable[[str], str] = resolve_api_key) -> SyncOutcome:
    """One snapshot run, start to finish: name call, pipeline, state, report, email."""
    errors: List[str] = []
    results: List[Result] = []
    unchanged = 0
    if not FileSystems.exists(snapshot):
        errors.append(f"snapshot not found: {snapshot}")
    else:
        problem = name_cohort_first(plan, policy, resolve_key)
        if problem:
            errors.append(f"naming the cohort in Braze failed: {problem}")
    if not errors:
        try:
            pipeline = build_snapshot_pipeline(pipeline_options or PipelineOptions([]), plan, snapshot,
                                               policy=policy, shards=shards, resolve_key=resolve_key)
            pipeline_result = pipeline.run()
            pipeline_result.wait_until_finish()
            results = _read_results(plan.results_path)
            unchanged = _unchanged_count(pipeline_result)
        except Exception as e:  # noqa: BLE001 - any failure of the run is reported, not raised
            _LOG.exception("sync %s: the pipeline failed", plan.sync.name)
            errors.append(f"the pipeline failed: {type(e).__name__}: {e}")
    failed = [r for r in results if r.status == FAILED]
    if failed:
        reasons = sorted({r.reason for r in failed})
        errors.append(f"{len(failed)} change(s) failed after retries ({', '.join(reasons)}); the last successful "
                      "membership is kept, so the next run sends them again")
    status = "failed" if errors else "success"
    if status == "success":
        try:
            plan.store.commit_membership(plan.pending_membership_path, plan.sync.cohort_id, plan.target.name)
            plan.store.save_target(plan.target)
        except Exception as e:  # noqa: BLE001
            _LOG.exception("sync %s: could not save the new membership", plan.sync.name)
            errors.append(f"could not save the new membership: {type(e).__name__}: {e}")
            status = "failed"
    return _finish(plan, status, results, unchanged, errors)


def _finish(plan: SyncPlan, status: str, results: List[Result], unchanged: int, errors: List[str]) -> SyncOutcome:
    json_path, csv_path = report_paths(plan.report_dir, plan.sync.cohort_id, plan.target.name, plan.run_id)
    notes = list(plan.notes)
    if plan.target.delivery == "attribute":
        notes.append(f"membership is the array attribute {plan.target.attribute!r} holding "
                     f"{attribute_value(plan.target, plan.sync)!r}")
    report = build_report(run_id=plan.run_id, sync=plan.sync, target=plan.target, mode=plan.mode,
                          started_at=plan.started_at, finished_at=_iso(_now()), status=status, results=results,
                          unchanged=unchanged, errors=errors, notes=notes)
    report["email"] = send_run_email(plan.config.email, report, (json_path, csv_path))
    try:
        write_report(report, json_path, csv_path)
    except Exception:  # noqa: BLE001 - the email already went; say so in the log
        _LOG.exception("sync %s: could not write the report to %s", plan.sync.name, json_path)
    plan.store.delete_run_dir(plan.sync.cohort_id, plan.target.name, plan.run_id)
    c = report["counts"]
    _LOG.info("sync %s %s: added %d, removed %d, skipped %d, failed %d, unchanged %d; report %s",
              plan.sync.name, status, c["added"], c["removed"], c["skipped"], c["failed"], c["unchanged"], json_path)
    return SyncOutcome(status, report, json_path, csv_path)


def _print_help() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.cohorts",
        description="Sync an Amplitude cohort to Braze (partner cohort import or a custom attribute). "
        "Beam's own options (--runner, --project, --region, ...) are accepted as well.")
    CohortOptions._add_argparse_args(parser)
    shared = parser.add_argument_group("shared with the streaming job")
    shared.add_argument("--input_subscription", help="Real-time syncs: Pub/Sub subscription "
                        "projects/P/subscriptions/S of enter/leave changes (see transforms/cohorts/realtime.py).")
    shared.add_argument("--allow_insecure_endpoints", action="store_true",
                        help="Allow endpoints that are not Braze REST hosts or not https (the local simulator).")
    shared.add_argument("--braze_timeout_seconds", type=float, default=10.0, help="Timeout of one call.")
    shared.add_argument("--braze_max_attempts", type=int, default=6,
                        help="Attempts per request on 5xx, 429, 423, timeouts and connection errors.")
    shared.add_argument("--braze_max_retry_seconds", type=float, default=120.0,
                        help="Longest total time spent retrying one request.")
    parser.print_help()


def run(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = PipelineOptions(argv)
    o = cohort_settings(options)
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
        plan = plan_sync(config, o.sync, o.state_dir, report_dir=o.report_dir, realtime=bool(o.input_subscription))
    except (ConfigError, StateError, ValueError) as e:
        print(f"pipeline.cohorts: {e}", file=sys.stderr)
        return 2
    if o.input_subscription:
        problem = name_cohort_first(plan, policy, resolve_api_key)
        if problem:
            print(f"pipeline.cohorts: naming the cohort in Braze failed: {problem}", file=sys.stderr)
            return 1
        pipeline = build_realtime_pipeline(options, plan, o.input_subscription, policy=policy,
                                           flush_seconds=o.flush_seconds, shards=o.delivery_shards)
        result = pipeline.run()
        if options.view_as(StandardOptions).runner == STREAMING_RUNNER:
            result.wait_until_finish()
        return 0
    outcome = run_snapshot_sync(plan, o.snapshot, pipeline_options=options, policy=policy, shards=o.delivery_shards)
    c = outcome.report["counts"]
    print(f"{plan.sync.name}: {outcome.status} ({plan.mode}): added {c['added']}, removed {c['removed']}, "
          f"skipped {c['skipped']}, failed {c['failed']}, unchanged {c['unchanged']}\n"
          f"report: {outcome.json_path}\n        {outcome.csv_path}")
    return 0 if outcome.status == "success" else 1


if __name__ == "__main__":
    sys.exit(run())
