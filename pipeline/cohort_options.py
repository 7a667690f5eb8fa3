"""Every option of the cohort-sync job (``python -m pipeline.cohorts``), declared once, with help.

Some options are shared with the streaming job and declared once, in
``pipeline.options.StreamOptions`` (Beam registers every options class in one parser, so a
second declaration would conflict): ``SHARED_OPTIONS`` below. ``cohort_settings(options)``
returns all of them in one view, ``check_cohort_options`` says what is wrong with them, and
``help_text()`` renders ``--help`` from the same declarations, with defaults and what each mode
requires (the flex templates' metadata is generated from them too, ``templates.cohorts_metadata``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import StreamOptions, _bool
from transforms.cohorts.realtime import MAX_FLUSH_SECONDS

__all__ = ["CohortOptions", "CohortSettings", "SHARED_OPTIONS", "check_cohort_options", "cohort_settings",
           "flag", "help_text", "REQUIRED_BATCH", "REQUIRED_FEED"]

SHARED_OPTIONS = ("input_subscription", "dead_letter_topic", "allow_insecure_endpoints", "braze_timeout_seconds",
                  "braze_max_attempts", "braze_max_retry_seconds")
# What the shared options mean in this job (their declarations speak of events).
SHARED_HELP = {
    "input_subscription": "Streaming: the subscription to the topic of Amplitude's Pub/Sub cohort feed "
                          "(Google Pub/Sub Cohort Sync destination), projects/P/subscriptions/S.",
    "dead_letter_topic": "Streaming: projects/P/topics/T for feed messages that cannot be read, unknown cohorts and "
                         "changes the final flush could not deliver (the bytes unchanged, with a reason).",
    "braze_timeout_seconds": "Timeout of one Braze call (partner cohort import, /users/track, /users/export/ids).",
    "braze_max_attempts": "Attempts per Braze request on 5xx, 423, 429, timeouts and connection errors before its "
                          "changes fail (retries_exhausted).",
}
REQUIRED_BATCH = ("config", "sync", "state_dir")
REQUIRED_FEED = ("config", "state_dir", "input_subscription", "dead_letter_topic")
_SUBSCRIPTION = r"^projects/[^/\s]+/subscriptions/[^/\s]+$"
_TOPIC = r"^projects/[^/\s]+/topics/[^/\s]+$"


def flag(value) -> bool:
    """A switch given bare (``--allow_empty``) or as text (flex templates pass ``true``/``false``):
    the streaming job's rule (``pipeline.options._bool``), its refusal shown as it is."""
    try:
        return _bool(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _switch(group, name, text):
    group.add_argument(f"--{name}", type=flag, nargs="?", const=True, default=False, help=text)


class CohortOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        what = parser.add_argument_group("what to sync")
        what.add_argument("--config", help="The cohorts file (YAML or JSON), a local path or gs:// URI.")
        what.add_argument("--sync", help="Batch: the cohort sync to run (cohort_syncs[].name). Streaming: only this "
                                         "feed sync (default: every sync with source: feed).")
        io = parser.add_argument_group("membership (batch runs)")
        io.add_argument("--snapshot", help="The cohort's members now, a .csv (header with amplitude_id, user_id, "
                                           "device_id, ...) or .jsonl file, local or gs://. Without it, download and "
                                           "feed syncs download from Amplitude.")
        _switch(io, "reconcile", "Allow a download run of a feed sync that already has its initial population "
                                 "(it diffs against the last download and resends what changed).")
        safety = parser.add_argument_group("safety (batch runs)")
        _switch(safety, "allow_empty", "Send an empty membership (removes every member); refused otherwise.")
        _switch(safety, "allow_mass_removal", "Send a run that removes more than the sync's max_removed_share of "
                                              "the members; refused otherwise.")
        _switch(safety, "use_download_reserve", "Let this run use the downloads kept in amplitude.budget_reserve.")
        state = parser.add_argument_group("state and reports")
        state.add_argument("--state_dir", help="Local path or gs:// URI keeping the last successful membership per "
                                               "cohort and target, leases, the download count and saved target names.")
        state.add_argument("--report_dir", default="", help="Where reports/<cohort>/<target>/<run_id>.json|.csv go; "
                                                            "defaults to --state_dir.")
        state.add_argument("--delete_target", default="",
                           help="Forget a saved target and its memberships (to rename a target), then exit.")
        state.add_argument("--lease_minutes", type=float, default=360.0,
                           help="How long a batch run holds its sync's lease; a run that died frees it after this.")
        state.add_argument("--download_deadline_minutes", type=float, default=60.0,
                           help="Longest time a download from Amplitude may take (request, polling, file); past it "
                                "the run fails and the last membership is kept.")
        feed = parser.add_argument_group("the Pub/Sub cohort feed (streaming)")
        feed.add_argument("--flush_seconds", type=float, default=MAX_FLUSH_SECONDS,
                          help=f"Longest wait before a change is sent (0 < s <= {MAX_FLUSH_SECONDS:g}).")
        feed.add_argument("--feed_dedup_hours", type=float, default=48.0,
                          help="Repeats of a message_id within this many hours are dropped (Amplitude retries).")
        feed.add_argument("--feed_state_ttl_days", type=float, default=30.0,
                          help="Days a user's newest computed_time is kept to put reordered messages right.")
        braze = parser.add_argument_group("braze delivery")
        braze.add_argument("--delivery_shards", type=int, default=4,
                           help="Requests in flight at once per operation (batch) or buffers per sync (streaming).")


@dataclasses.dataclass(frozen=True)
class CohortSettings:
    config: str
    sync: str
    snapshot: str
    reconcile: bool
    allow_empty: bool
    allow_mass_removal: bool
    use_download_reserve: bool
    input_subscription: str
    dead_letter_topic: str
    allow_insecure_endpoints: bool
    flush_seconds: float
    feed_dedup_hours: float
    feed_state_ttl_days: float
    state_dir: str
    report_dir: str
    delete_target: str
    lease_minutes: float
    download_deadline_minutes: float
    delivery_shards: int
    braze_timeout_seconds: float
    braze_max_attempts: int
    braze_max_retry_seconds: float

    @property
    def streaming(self) -> bool:
        return bool(self.input_subscription)


def cohort_settings(options: PipelineOptions) -> CohortSettings:
    o = options.view_as(CohortOptions)
    shared = options.view_as(StreamOptions)
    return CohortSettings(
        config=o.config or "", sync=o.sync or "", snapshot=o.snapshot or "", reconcile=bool(o.reconcile),
        allow_empty=bool(o.allow_empty), allow_mass_removal=bool(o.allow_mass_removal),
        use_download_reserve=bool(o.use_download_reserve),
        input_subscription=shared.input_subscription or "", dead_letter_topic=shared.dead_letter_topic or "",
        allow_insecure_endpoints=bool(shared.allow_insecure_endpoints), flush_seconds=o.flush_seconds,
        feed_dedup_hours=o.feed_dedup_hours, feed_state_ttl_days=o.feed_state_ttl_days,
        state_dir=o.state_dir or "", report_dir=o.report_dir or "", delete_target=o.delete_target or "",
        lease_minutes=o.lease_minutes, download_deadline_minutes=o.download_deadline_minutes,
        delivery_shards=o.delivery_shards, braze_timeout_seconds=shared.braze_timeout_seconds,
        braze_max_attempts=shared.braze_max_attempts, braze_max_retry_seconds=shared.braze_max_retry_seconds)


def check_cohort_options(o: CohortSettings) -> list:
    """Problems with the options, each saying what to pass."""
    import re

    problems = []
    if not o.state_dir:
        problems.append("--state_dir is required (a local path or gs:// URI)")
    if o.delete_target:
        return problems
    if not o.config:
        problems.append("--config is required (the cohorts file)")
    if o.streaming:
        if not re.match(_SUBSCRIPTION, o.input_subscription):
            problems.append(f"--input_subscription must look like projects/P/subscriptions/S, got "
                            f"{o.input_subscription!r}")
        if not o.dead_letter_topic:
            problems.append("--dead_letter_topic is required with --input_subscription (projects/P/topics/T): bad "
                            "feed messages and changes that could not be delivered go there")
        elif not re.match(_TOPIC, o.dead_letter_topic):
            problems.append(f"--dead_letter_topic must look like projects/P/topics/T, got {o.dead_letter_topic!r}")
        if o.snapshot:
            problems.append("--snapshot is for batch runs; the streaming mode (--input_subscription) reads the feed")
    elif not o.sync:
        problems.append("--sync is required for a batch run (the name of a cohort sync in the config); or pass "
                        "--input_subscription for the streaming mode")
    if not 0 < o.flush_seconds <= MAX_FLUSH_SECONDS:
        problems.append(f"--flush_seconds must be > 0 and <= {MAX_FLUSH_SECONDS:g}")
    for name in ("feed_dedup_hours", "feed_state_ttl_days", "lease_minutes", "download_deadline_minutes",
                 "braze_timeout_seconds"):
        if getattr(o, name) <= 0:
            problems.append(f"--{name} must be > 0")
    if o.delivery_shards < 1:
        problems.append("--delivery_shards must be >= 1")
    if o.braze_max_attempts < 1:
        problems.append("--braze_max_attempts must be >= 1")
    if o.braze_max_retry_seconds < 0:
        problems.append("--braze_max_retry_seconds must be >= 0")
    return problems


# --------------------------------------------------------------------------------------------
# --help


def option_actions():
    """``[(action, group title)]``: the cohort job's own options, then the shared ones."""
    parser = argparse.ArgumentParser(add_help=False)
    CohortOptions._add_argparse_args(parser)
    out = _with_groups(parser)
    shared = argparse.ArgumentParser(add_help=False)
    StreamOptions._add_argparse_args(shared)
    for action, _ in _with_groups(shared):
        if action.dest in SHARED_OPTIONS:
            action = copy.copy(action)
            action.help = SHARED_HELP.get(action.dest, action.help)
            out.append((action, "shared with the streaming job"))
    return out


def _with_groups(parser):
    group_of = {id(a): g.title for g in parser._action_groups for a in g._group_actions}
    return [(a, group_of.get(id(a), "")) for a in parser._actions if a.option_strings]


def _default_text(action) -> str:
    if action.default in (None, "", False) or action.default is argparse.SUPPRESS:
        return ""
    value = action.default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f" Default: {value}."


def help_text() -> str:
    """``--help``: every option with its help, default, and the modes that require it."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.cohorts", add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sync Amplitude cohorts to Braze (partner cohort import or a custom attribute).\n\n"
        "  batch:     --config C --sync NAME --state_dir D [--snapshot FILE]   (one run; downloads from Amplitude "
        "without --snapshot)\n"
        "  streaming: --config C --state_dir D --input_subscription S --dead_letter_topic T   (Amplitude's Pub/Sub "
        "cohort feed)\n"
        "  rename:    --state_dir D --delete_target NAME\n\n"
        "Beam's own options (--runner, --project, --region, ...) are accepted as well.")
    groups = {}
    for action, title in option_actions():
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        needs = [mode for mode, names in (("batch", REQUIRED_BATCH), ("streaming", REQUIRED_FEED))
                 if action.dest in names]
        required = f" Required ({' and '.join(needs)})." if needs else ""
        kwargs = {"help": " ".join((action.help or "").split()) + required + _default_text(action),
                  "metavar": None if action.nargs == "?" else action.dest.upper()}
        if action.choices:
            kwargs["choices"] = action.choices
        if action.nargs == "?":
            kwargs.update(nargs="?", metavar="true|false")
        group.add_argument(*action.option_strings, **kwargs)
    return parser.format_help()
