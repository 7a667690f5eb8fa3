"""A batch run of the cohort job on Dataflow: the whole run as the one step of a job.

A flex template's launcher must return once ``run()`` has submitted the job, without waiting
for it (docs/api-facts.md, D6). A batch run is a sequence (lease, download, diff, safety check,
deliver, commit, report, email) whose diff and deliver parts are Beam pipelines, and each step
needs the one before it to have finished. So on a runner that runs the job elsewhere
(Dataflow), the launcher submits a one-element job whose only step, ``RunCohortSync``, does the
whole run on one worker, exactly as ``python -m pipeline.cohorts`` does in place: the same
``pipeline.cohorts.run`` with the same options, its two pipelines on the worker's in-process
runner (``IN_PROCESS_RUNNER``). The work is one cohort's membership (at most Amplitude's size
limit of rows), which one worker holds.

The step never raises: a failed run is reported and emailed by the run itself, and a retry of
the bundle would run the sync again (a second download from the month's budget). It counts
``cohorts.runs_succeeded`` / ``runs_failed`` / ``runs_refused`` (the exit status 0, 1, 2) and
logs an unexpected error as ``runs_crashed``.
"""
from __future__ import annotations

import logging
from typing import Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.worker import statesampler

__all__ = ["IN_PROCESS_RUNNER", "LOCAL_RUNNERS", "runs_in_place", "build_batch_launch"]

_LOG = logging.getLogger("pipeline.cohorts")

IN_PROCESS_RUNNER = "FnApiRunner"
# Runners that run a pipeline in this process (or its children) and return when it is done: with
# them a batch run's steps run here, one after the other. Any other runner gets the launch job.
LOCAL_RUNNERS = frozenset({None, "DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner",
                           "PrismRunner"})
_OUTCOMES = {0: "runs_succeeded", 1: "runs_failed", 2: "runs_refused"}


def runs_in_place(options: PipelineOptions) -> bool:
    """Whether the batch run's steps run in this process (a local runner), not as a launched job."""
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    return name in LOCAL_RUNNERS


class _RunSyncDoFn(beam.DoFn):
    """The whole batch run, on the worker that gets the job's one element."""

    def __init__(self, argv: Sequence[str]):
        self._argv = tuple(argv)

    def process(self, _element):
        from pipeline.cohorts import run  # the job's own entry point (it imports this module)

        # The in-process runner installs its own state sampler on this thread and clears it when
        # done, which would leave this step's metrics with no container: it is put back.
        tracker = statesampler.get_current_tracker()
        try:
            status = run([*self._argv, f"--runner={IN_PROCESS_RUNNER}"])
        except Exception as error:  # noqa: BLE001 - a retry would run the sync again; see the module docstring
            status = None
            # The class only: a message could hold what the run read (its report is scrubbed).
            _LOG.error("the cohort sync run ended with an unexpected %s; its report, if written, says how far "
                       "it got", type(error).__name__)
        finally:
            statesampler.set_current_tracker(tracker)
        Metrics.counter("cohorts", "runs_crashed" if status is None else _OUTCOMES.get(status, "runs_failed")).inc()
        if status is not None:
            yield status


def build_batch_launch(options: PipelineOptions, argv: Sequence[str]) -> beam.Pipeline:
    """The job a flex-template launch submits for one batch run: ``argv`` is the run's own
    command line, run again on the worker with the in-process runner."""
    pipeline = beam.Pipeline(options=options)
    _ = (pipeline
         | "OneRun" >> beam.Create([None])
         | "RunCohortSync" >> beam.ParDo(_RunSyncDoFn(argv)))
    return pipeline
