"""The two bounded pipelines of a batch run (``pipeline.cohort_batch`` runs them, in order, with
the safety check between them): *diff* (membership file → changes, unchanged members, skipped
rows) and *deliver* (changes → Braze; the results and the run's new membership). Both run on
the FnApiRunner unless ``--runner`` says otherwise, and write the run's scratch files.
"""
from __future__ import annotations

from typing import Callable, Optional

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.local_runner import without_fnapi_state_cache
from transforms.cohorts import members
from transforms.cohorts.delivery import DeliverChanges, RetryPolicy
from transforms.cohorts.diff import UNCHANGED_TAG, DiffMembership, ReadLastMembership, member_line
from transforms.cohorts.records import ADD, DONE, REMOVE, SKIPPED, UNKNOWN_TO_BRAZE, Change, Result
from transforms.cohorts.state import META_KEY

__all__ = ["BATCH_RUNNER", "build_diff_pipeline", "build_deliver_pipeline"]

BATCH_RUNNER = "FnApiRunner"


def _runner(options: PipelineOptions) -> PipelineOptions:
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = BATCH_RUNNER
    if standard.runner == BATCH_RUNNER:
        without_fnapi_state_cache()
    return options


def _write_lines(pcoll, label: str, path: str, header: Optional[str] = None):
    return pcoll | label >> beam.io.WriteToText(path, num_shards=1, shard_name_template="", header=header)


def build_diff_pipeline(options: PipelineOptions, plan, membership_file: str) -> beam.Pipeline:
    """Membership file → changes, unchanged members and skipped rows, in the scratch files of ``plan``
    (a ``pipeline.cohort_batch.SyncPlan``)."""
    fmt = members.snapshot_format(membership_file)
    columns = members.read_csv_header(membership_file) if fmt == "csv" else ()
    p = beam.Pipeline(options=_runner(options))
    resolved = (p
                | "ReadMembership" >> members.ReadSnapshot(membership_file)
                | "ResolveMembers" >> members.ResolveMembers(plan.target.user_mapping, fmt, columns))
    last = p | "ReadLastMembership" >> ReadLastMembership(plan.last_path)
    diff = {"new": resolved.members, "old": last} | "DiffMembership" >> DiffMembership()
    _write_lines(diff.changes | "ChangesToJson" >> beam.Map(lambda c: orjson.dumps(c._asdict()).decode()),
                 "WriteChanges", plan.scratch("changes.jsonl"))
    _write_lines(diff[UNCHANGED_TAG] | "UnchangedToJson" >> beam.Map(lambda m: member_line(*m)),
                 "WriteUnchanged", plan.scratch("unchanged.jsonl"))
    _write_lines(resolved[members.SKIPPED_TAG] | "SkippedToJson" >> beam.Map(
        lambda r: orjson.dumps(r.to_json()).decode()), "WriteSkipped", plan.scratch("skipped.jsonl"))
    return p


def _membership_after(result: Result):
    """The Braze ids that are members after a successful run, from one delivery result.

    Delivered adds join; a remove Braze refused for that user stays. Users unknown to Braze
    never join: an add skipped as unknown is left out so the next run adds it once Braze knows
    the user; a remove skipped as unknown has nothing left to remove.
    """
    if result.op == ADD and result.status == DONE:
        yield member_line(result.key, result.amplitude_ids)
    elif result.op == REMOVE and result.status == SKIPPED and result.reason != UNKNOWN_TO_BRAZE:
        yield member_line(result.key, result.amplitude_ids)


def _change_of(line: str) -> Change:
    d = orjson.loads(line)
    return Change(d["op"], d["key"], tuple(d["amplitude_ids"]))


def build_deliver_pipeline(options: PipelineOptions, plan, *, policy: RetryPolicy, shards: int,
                           resolve_key: Callable[[str], str]) -> beam.Pipeline:
    """The run's changes → Braze; the results and the run's new membership as files."""
    p = beam.Pipeline(options=_runner(options))
    delivered = (p
                 | "ReadChanges" >> beam.io.ReadFromText(plan.scratch("changes.jsonl"))
                 | "ParseChanges" >> beam.Map(_change_of).with_output_types(Change)
                 | "DeliverChanges" >> DeliverChanges(plan.target, plan.sync, policy, shards=shards,
                                                      resolve_key=resolve_key))
    _write_lines(delivered | "ResultsToJson" >> beam.Map(lambda r: orjson.dumps(r.to_json()).decode()),
                 "WriteResults", plan.scratch("results.jsonl"))
    unchanged = p | "ReadUnchanged" >> beam.io.ReadFromText(plan.scratch("unchanged.jsonl"))
    _write_lines((unchanged, delivered | "MembersAfterDelivery" >> beam.FlatMap(_membership_after))
                 | "NewMembership" >> beam.Flatten(),
                 "WriteNewMembership", plan.new_membership_path, header=orjson.dumps({META_KEY: plan.meta()}).decode())
    return p
