"""One batch run of a cohort sync: a whole membership (a download from Amplitude, or a snapshot
file) against the last successful one, the differences sent to Braze.

``plan_sync`` checks the run against the config and the state; ``run_batch_sync`` does it:

1. take the sync's lease (``transforms.cohorts.lease``): a second run of the same cohort and
   target exits at once, with a report and an email saying who holds it;
2. fetch the membership: ``download`` asks Amplitude (``transforms.cohorts.amplitude_api``),
   after counting the download against the month's budget; ``snapshot`` reads a file;
3. the *diff* pipeline (``pipeline.cohort_batch_graph``): read → map to Braze ids
   (unresolved → skipped) → against the last successful membership → entered / left /
   unchanged, written to the run's scratch directory;
4. the safety check: an empty membership, or one that would remove more than the sync's
   ``max_removed_share`` of the members, is refused unless the run says ``--allow_empty`` /
   ``--allow_mass_removal``; nothing is sent;
5. partner mode names the cohort (first sync, rename), then the *deliver* pipeline sends the
   changes (``/users/export/ids`` check, requests of ≤ 1,000 ids / ≤ 75 objects) and writes the
   results and the run's new membership (unchanged + delivered adds + removes Braze refused;
   users unknown to Braze left out, so their adds are tried again);
6. a run with any FAILED change, a refusal, or an error is ``failed`` and the last membership
   stays; a ``success`` switches the membership pointer to the new file (one compare-and-swap
   write, ``transforms.cohorts.state``) and saves the target's name;
7. every run writes its report and sends its email, then gives the lease back.

On Dataflow the flex template's launcher runs this module's steps (the download and the
state work are small) and each pipeline on the runner the template names.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
from typing import Callable, List, Optional

import orjson
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.cohort_batch_graph import build_deliver_pipeline, build_diff_pipeline
from pipeline.cohort_config import CohortConfig, CohortSync, Target
from transforms.cohorts.amplitude_api import AmplitudeError, CohortDownloader
from transforms.cohorts.delivery import CohortDeliverer, RetryPolicy, attribute_value
from transforms.cohorts.lease import LeaseHeld, acquire_lease, release_lease, reserve_download
from transforms.cohorts.notify import send_run_email
from transforms.cohorts.records import ADD, FAILED, REMOVE, Result, iso_seconds, utc_now
from transforms.cohorts.report import build_report, report_paths, write_report
from transforms.cohorts.state import StateError, StateStore, new_run_id
from transforms.secrets import SecretError, resolve_api_key

__all__ = ["RunSwitches", "SyncPlan", "SyncOutcome", "plan_sync", "run_batch_sync", "safety_problem"]

_LOG = logging.getLogger("pipeline.cohorts")
_PERIOD_SECONDS = {"hourly": 3600, "daily": 86400}


@dataclasses.dataclass(frozen=True)
class RunSwitches:
    """What a person running the sync can say explicitly (each one is in the report)."""

    allow_empty: bool = False
    allow_mass_removal: bool = False
    use_download_reserve: bool = False
    reconcile: bool = False  # a download run of a feed sync after its initial population
    lease_minutes: float = 360.0
    download_deadline_minutes: float = 60.0


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
    last_path: Optional[str]
    pointer_version: str
    notes: List[str]

    @property
    def mode(self) -> str:
        return "full" if self.last_meta is None else "incremental"

    @property
    def run_dir(self) -> str:
        return self.store.run_dir(self.sync.cohort_id, self.target.name, self.run_id)

    def scratch(self, name: str) -> str:
        return FileSystems.join(self.run_dir, name)

    @property
    def new_membership_path(self) -> str:
        return self.store.run_membership_path(self.sync.cohort_id, self.target.name, self.run_id)

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


_now = utc_now
_iso = iso_seconds


def plan_sync(config: CohortConfig, sync_name: str, state_dir: str, *, report_dir: str = "",
              reconcile: bool = False, now: Optional[datetime.datetime] = None) -> SyncPlan:
    """Check the run against the config and the state; raises StateError (refused)."""
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
    pointer, version = store.read_pointer(sync.cohort_id, target.name)
    last = None if pointer is None else pointer["meta"]
    notes = []
    if sync.source == "feed" and last is not None and not reconcile:
        raise StateError(f"sync {sync.name!r} reads Amplitude's Pub/Sub cohort feed and already has its initial "
                         "population; its changes come from the streaming mode (--input_subscription). A download "
                         "run now needs --reconcile (it diffs against the last download, and resends what changed)")
    if (last is not None and target.delivery == "attribute" and target.attribute_value == "label"
            and last.get("cohort_name") != sync.cohort_name):
        raise StateError(
            f"cohort {sync.cohort_id!r} was renamed from {last.get('cohort_name')!r} to {sync.cohort_name!r}; with "
            f"attribute delivery and attribute_value 'label' its members carry the old label in "
            f"{target.attribute!r}. Put the old name back, or delete the target's state "
            f"(--delete_target {target.name!r}) and remove the old label in Braze")
    now = now or _now()
    if last is not None and sync.cadence in _PERIOD_SECONDS and sync.source != "feed":
        try:
            previous = datetime.datetime.fromisoformat(str(last.get("synced_at")).replace("Z", "+00:00"))
            elapsed = (now - previous).total_seconds()
            if elapsed < 0.9 * _PERIOD_SECONDS[sync.cadence]:
                notes.append(f"ran {elapsed / 60:.0f} min after the last successful sync; the cadence is "
                             f"{sync.cadence} (check the scheduler)")
        except ValueError:
            pass
    return SyncPlan(config, sync, target, store, report_dir or state_dir, new_run_id(now), _iso(now), last,
                    None if pointer is None else pointer["path"], version, notes)


# --------------------------------------------------------------------------------------------
# Running


def _lines(path: str):
    if not FileSystems.exists(path):
        return
    with FileSystems.open(path, compression_type="uncompressed") as f:
        for line in f:
            if line.strip():
                yield line


def _read_results(path: str) -> List[Result]:
    return [Result.from_json(orjson.loads(line)) for line in _lines(path)]


def safety_problem(sync: CohortSync, adds: int, removes: int, unchanged: int, switches: RunSwitches) -> Optional[str]:
    """Why the run must not send its changes, or None. Pure."""
    new, old = adds + unchanged, removes + unchanged
    if new == 0 and not switches.allow_empty:
        return (f"refused: the membership holds no users, which would remove all {old} member(s) from the cohort "
                "in Braze; nothing was sent. If the cohort really is empty, run again with --allow_empty")
    if old and removes / old > sync.max_removed_share and not switches.allow_mass_removal:
        return (f"refused: the run would remove {removes} of {old} member(s) ({removes / old:.0%}), more than the "
                f"sync's max_removed_share of {sync.max_removed_share:.0%}; nothing was sent. Check the cohort in "
                "Amplitude; if the removals are right, run again with --allow_mass_removal")
    return None


def name_cohort_first(plan: SyncPlan, policy: RetryPolicy, resolve_key) -> Optional[str]:
    """Partner mode: the name call, on the first sync and after a rename. None when done or not needed."""
    if plan.target.delivery != "partner":
        return None
    if plan.last_meta is not None and plan.last_meta.get("cohort_name") == plan.sync.cohort_name:
        return None
    with CohortDeliverer(plan.target, plan.sync, policy, resolve_key=resolve_key) as deliverer:
        return deliverer.name_cohort(plan.meta()["created_at"])


def _download(plan: SyncPlan, switches: RunSwitches, resolve_key, downloader_factory) -> str:
    """Fetch the cohort from Amplitude into the run's scratch directory; returns the file."""
    amplitude = plan.config.amplitude
    if amplitude is None:
        raise AmplitudeError("no_amplitude_settings", "the cohorts file has no 'amplitude' section (api_key, "
                                                      "secret_key, region): add it, or pass --snapshot")
    try:
        api_key, secret_key = resolve_key(amplitude.api_key), resolve_key(amplitude.secret_key)
    except SecretError as e:
        raise AmplitudeError("api_key_unavailable", f"cannot read the Amplitude keys: {e}") from None
    destination = plan.scratch("download.csv")
    downloader = downloader_factory(amplitude.base_url, api_key, secret_key,
                                    deadline_seconds=switches.download_deadline_minutes * 60)
    try:
        downloader.fetch(plan.sync.cohort_id, destination, max_size=amplitude.max_cohort_size,
                         before_request=lambda: reserve_download(
                             plan.store.state_dir, amplitude.monthly_download_budget, amplitude.budget_reserve,
                             sync=plan.sync.name, run_id=plan.run_id, use_reserve=switches.use_download_reserve))
    finally:
        downloader.close()
    return destination


def run_batch_sync(plan: SyncPlan, *, snapshot: Optional[str] = None, switches: RunSwitches = RunSwitches(),
                   pipeline_options: Optional[PipelineOptions] = None, policy: RetryPolicy = RetryPolicy(),
                   shards: int = 4, resolve_key: Callable[[str], str] = resolve_api_key,
                   downloader_factory=CohortDownloader) -> SyncOutcome:
    """One run, start to finish (see the module docstring). Never raises for a failed run."""
    errors: List[str] = []
    results: List[Result] = []
    unchanged = 0
    lease = None
    try:
        lease = acquire_lease(plan.store.state_dir, plan.sync.cohort_id, plan.target.name, plan.run_id,
                              switches.lease_minutes, sync=plan.sync.name)
    except LeaseHeld as e:
        return _finish(plan, "failed", [], 0, [str(e)], switches, delete_scratch=False)
    try:
        unchanged = _run(plan, snapshot, switches, pipeline_options, policy, shards, resolve_key,
                         downloader_factory, errors, results)
    except (AmplitudeError, StateError) as e:
        errors.append(str(e))
    except Exception as e:  # noqa: BLE001 - any failure of the run is reported, not raised
        _LOG.exception("sync %s: the run failed", plan.sync.name)
        errors.append(f"the run failed: {type(e).__name__}: {e}")
    status = "failed" if errors else "success"
    if status == "success":
        try:
            plan.store.commit_membership(plan.sync.cohort_id, plan.target.name, plan.new_membership_path,
                                         plan.meta(), plan.pointer_version)
            plan.store.save_target(plan.target)
        except Exception as e:  # noqa: BLE001
            _LOG.exception("sync %s: could not save the new membership", plan.sync.name)
            errors.append(f"could not save the new membership: {type(e).__name__}: {e}")
            status = "failed"
    if status != "success":
        plan.store.discard_membership(plan.new_membership_path)
    try:
        return _finish(plan, status, results, unchanged, errors, switches)
    finally:
        if not release_lease(lease):
            _LOG.warning("sync %s: the lease had expired and was taken by another run", plan.sync.name)


def _run(plan, snapshot, switches, pipeline_options, policy, shards, resolve_key, downloader_factory,
         errors, results) -> int:
    """Steps 2-5; appends to ``errors`` and ``results``; returns the unchanged count."""
    if snapshot:
        if not FileSystems.exists(snapshot):
            errors.append(f"snapshot not found: {snapshot}")
            return 0
        membership_file = snapshot
    else:
        membership_file = _download(plan, switches, resolve_key, downloader_factory)
    options = pipeline_options or PipelineOptions([])
    build_diff_pipeline(options, plan, membership_file).run().wait_until_finish()
    results.extend(_read_results(plan.scratch("skipped.jsonl")))
    changes = [orjson.loads(line)["op"] for line in _lines(plan.scratch("changes.jsonl"))]
    unchanged = sum(1 for _ in _lines(plan.scratch("unchanged.jsonl")))
    adds, removes = changes.count(ADD), changes.count(REMOVE)
    problem = safety_problem(plan.sync, adds, removes, unchanged, switches)
    if problem:
        errors.append(problem)
        return unchanged
    problem = name_cohort_first(plan, policy, resolve_key)
    if problem:
        errors.append(f"naming the cohort in Braze failed: {problem}")
        return unchanged
    build_deliver_pipeline(options, plan, policy=policy, shards=shards,
                           resolve_key=resolve_key).run().wait_until_finish()
    delivered = _read_results(plan.scratch("results.jsonl"))
    results.extend(delivered)
    failed = [r for r in delivered if r.status == FAILED]
    if failed:
        reasons = sorted({r.reason for r in failed})
        errors.append(f"{len(failed)} change(s) failed after retries ({', '.join(reasons)}); the last successful "
                      "membership is kept, so the next run sends them again")
    return unchanged


def _finish(plan: SyncPlan, status: str, results: List[Result], unchanged: int, errors: List[str],
            switches: RunSwitches, delete_scratch: bool = True) -> SyncOutcome:
    json_path, csv_path = report_paths(plan.report_dir, plan.sync.cohort_id, plan.target.name, plan.run_id)
    notes = list(plan.notes)
    if plan.target.delivery == "attribute":
        notes.append(f"membership is the array attribute {plan.target.attribute!r} holding "
                     f"{attribute_value(plan.target, plan.sync)!r}")
    for name in ("allow_empty", "allow_mass_removal", "use_download_reserve", "reconcile"):
        if getattr(switches, name):
            notes.append(f"run with --{name}")
    report = build_report(run_id=plan.run_id, sync=plan.sync, target=plan.target, mode=plan.mode,
                          started_at=plan.started_at, finished_at=_iso(_now()), status=status, results=results,
                          unchanged=unchanged, errors=errors, notes=notes)
    secrets = _known_keys(plan)
    report["email"] = send_run_email(plan.config.email, report, (json_path, csv_path), secrets=secrets)
    try:
        write_report(report, json_path, csv_path, secrets=secrets)
    except Exception:  # noqa: BLE001 - the email already went; say so in the log
        _LOG.exception("sync %s: could not write the report to %s", plan.sync.name, json_path)
    if delete_scratch:
        plan.store.delete_run_dir(plan.sync.cohort_id, plan.target.name, plan.run_id)
    c = report["counts"]
    _LOG.info("sync %s %s: added %d, removed %d, skipped %d, failed %d, unchanged %d; report %s",
              plan.sync.name, status, c["added"], c["removed"], c["skipped"], c["failed"], c["unchanged"], json_path)
    return SyncOutcome(status, report, json_path, csv_path)


def _known_keys(plan: SyncPlan) -> tuple:
    """Key values to scrub from the report and the email, besides those this process read
    (``transforms.scrub`` remembers them): the ``env:`` ones, cheap to read here, which a
    worker process may have read instead of this one."""
    values = []
    for reference in plan.config.key_references():
        if reference.startswith("env:"):
            try:
                values.append(resolve_api_key(reference))
            except SecretError:
                continue
    return tuple(values)
