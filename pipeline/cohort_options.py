"""Every option of the cohort-sync job (``python -m pipeline.cohorts``), declared once, with help.

Two options are shared with the streaming job and declared once, in ``pipeline.options.StreamOptions``
(Beam registers every options class in one parser, so a second declaration would conflict):
``--input_subscription`` (here: real-time enter/leave changes), ``--allow_insecure_endpoints``,
``--braze_timeout_seconds``, ``--braze_max_attempts`` and ``--braze_max_retry_seconds`` (the same
retry policy as the streaming sink).
``cohort_settings(options)`` returns all of them in one view.
"""
from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

import dataclasses

from pipeline.options import SUBSCRIPTION_RE, StreamOptions
from transforms.cohorts.realtime import MAX_FLUSH_SECONDS


class CohortOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        what = parser.add_argument_group("what to sync")
        what.add_argument("--config", help="The cohorts file (YAML or JSON), a local path or gs:// URI.")
        what.add_argument("--sync", help="The name of the cohort sync to run (cohort_syncs[].name).")
        io = parser.add_argument_group("membership input")
        io.add_argument(
            "--snapshot",
            help="One-time and scheduled syncs (and a real-time sync's initial population): the cohort's "
            "members now, a .csv (header row with amplitude_id, user_id, device_id, ...) or .jsonl file, "
            "local or gs://.")
        io.add_argument(
            "--flush_seconds", type=float, default=MAX_FLUSH_SECONDS,
            help=f"Real time: longest wait before a change is sent (0 < s <= {MAX_FLUSH_SECONDS:g}).")
        state = parser.add_argument_group("state and reports")
        state.add_argument(
            "--state_dir",
            help="Local path or gs:// URI keeping the last successful membership per cohort and target and "
            "the saved target names. Required.")
        state.add_argument(
            "--report_dir", default="",
            help="Where reports/<cohort>/<target>/<run_id>.json|.csv go; defaults to --state_dir.")
        state.add_argument(
            "--delete_target", default="",
            help="Forget a saved target and its memberships (to rename a target), then exit.")
        braze = parser.add_argument_group("braze delivery")
        braze.add_argument("--delivery_shards", type=int, default=4,
                           help="Requests in flight at once per operation (adds, removes).")


@dataclasses.dataclass(frozen=True)
class CohortSettings:
    config: str
    sync: str
    snapshot: str
    input_subscription: str
    allow_insecure_endpoints: bool
    flush_seconds: float
    state_dir: str
    report_dir: str
    delete_target: str
    delivery_shards: int
    braze_timeout_seconds: float
    braze_max_attempts: int
    braze_max_retry_seconds: float


def cohort_settings(options: PipelineOptions) -> CohortSettings:
    o = options.view_as(CohortOptions)
    shared = options.view_as(StreamOptions)
    return CohortSettings(
        config=o.config or "", sync=o.sync or "", snapshot=o.snapshot or "",
        input_subscription=shared.input_subscription or "",
        allow_insecure_endpoints=bool(shared.allow_insecure_endpoints), flush_seconds=o.flush_seconds,
        state_dir=o.state_dir or "", report_dir=o.report_dir or "", delete_target=o.delete_target or "",
        delivery_shards=o.delivery_shards, braze_timeout_seconds=shared.braze_timeout_seconds,
        braze_max_attempts=shared.braze_max_attempts, braze_max_retry_seconds=shared.braze_max_retry_seconds)


def check_cohort_options(o: CohortSettings) -> list:
    """Problems with the options, each saying what to pass."""
    problems = []
    if not o.state_dir:
        problems.append("--state_dir is required (a local path or gs:// URI)")
    if o.delete_target:
        return problems
    if not o.config:
        problems.append("--config is required (the cohorts file)")
    if not o.sync:
        problems.append("--sync is required (the name of a cohort sync in the config)")
    if bool(o.snapshot) == bool(o.input_subscription):
        problems.append("pass exactly one of --snapshot (one-time / scheduled runs) and --input_subscription (real time)")
    if o.input_subscription and not SUBSCRIPTION_RE.match(o.input_subscription):
        problems.append(f"--input_subscription must look like projects/P/subscriptions/S, got {o.input_subscription!r}")
    if not 0 < o.flush_seconds <= MAX_FLUSH_SECONDS:
        problems.append(f"--flush_seconds must be > 0 and <= {MAX_FLUSH_SECONDS:g}")
    if o.delivery_shards < 1:
        problems.append("--delivery_shards must be >= 1")
    if o.braze_timeout_seconds <= 0:
        problems.append("--braze_timeout_seconds must be > 0")
    if o.braze_max_attempts < 1:
        problems.append("--braze_max_attempts must be >= 1")
    if o.braze_max_retry_seconds < 0:
        problems.append("--braze_max_retry_seconds must be >= 0")
    return problems
