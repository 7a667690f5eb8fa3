"""The feed's reports: per sync, one for every hour and one for every day that saw changes.

Each result of the streaming mode (sent, skipped or failed, ``(sync name, Result)``) is kept in
the state of its sync and period (the UTC hour and the UTC day in which it was flushed) until
the period ends; then the period's report is written like a scheduled run's
(``reports/<cohort>/<target>/feed-hourly-<YYYYMMDDTHH>.json|.csv`` and ``feed-daily-<YYYYMMDD>``,
under the report directory, ``mode`` ``feed_hourly`` / ``feed_daily``) and the email goes out:
every daily report, and an hourly one when something failed in that hour (so a failure is
known within the hour, without 24 emails a day). A drain (the end of the input) writes what
the open periods hold.

A period with failed changes is ``failed``: a change retried successfully later appears once
as failed and once as added (the report notes it). Reports and emails are scrubbed of keys
(``transforms.cohorts.report``, ``notify``). Writing a report never raises: a failure is
logged and counted (``internal_errors/cohort_feed.reports``).
"""
from __future__ import annotations

import datetime
import time
import typing
from typing import Callable, Dict, Optional, Tuple

import apache_beam as beam
import orjson
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.cohorts.model import CohortSync, EmailSettings, Target
from transforms.cohorts.records import FAILED, Result, iso_seconds
from transforms.guard import count_internal_error, failure_of

__all__ = ["PERIODS", "FeedReports", "period_of", "write_period_report"]

PERIODS = {"hourly": 3600, "daily": 86400}
STAGE = "cohort_feed.reports"
RETRIED_NOTE = ("Failed changes are kept and sent again at the next flush (at the latest, the drain dead-letters "
                "them): a change that succeeded later is counted once as failed and once as added or removed.")


def period_of(kind: str, epoch_seconds: float) -> Tuple[int, str]:
    """``(period start, its label)``: the UTC hour or day holding ``epoch_seconds``."""
    length = PERIODS[kind]
    start = int(epoch_seconds // length * length)
    dt = datetime.datetime.fromtimestamp(start, tz=datetime.timezone.utc)
    return start, dt.strftime("%Y%m%dT%H" if kind == "hourly" else "%Y%m%d")


def _iso(seconds: float) -> str:
    return iso_seconds(datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc))


def write_period_report(sync: CohortSync, target: Target, kind: str, start: int, label: str, results,
                        report_dir: str, email: Optional[EmailSettings]) -> dict:
    """Write one period's report and send its email (daily: always; hourly: when it failed)."""
    from transforms.cohorts.notify import send_run_email
    from transforms.cohorts.report import build_report, report_paths, write_report

    results = list(results)
    failed = [r for r in results if r.status == FAILED]
    errors = []
    if failed:
        errors.append(f"{len(failed)} change(s) failed ({', '.join(sorted({r.reason for r in failed}))}); they were "
                      "kept and sent again at the next flush, or dead-lettered at a drain")
    status = "failed" if failed else "success"
    run_id = f"feed-{kind}-{label}"
    report = build_report(run_id=run_id, sync=sync, target=target, mode=f"feed_{kind}", started_at=_iso(start),
                          finished_at=_iso(start + PERIODS[kind]), status=status, results=results, errors=errors,
                          notes=[RETRIED_NOTE] if failed else [])
    paths = report_paths(report_dir, sync.cohort_id, target.name, run_id)
    if kind == "daily" or failed:
        report["email"] = send_run_email(email, report, paths)
    else:
        report["email"] = {"sent": False, "error": "hourly reports are emailed only when something failed"}
    write_report(report, *paths)
    return report


class _ReportDoFn(beam.DoFn):
    ROWS = BagStateSpec("rows", FastPrimitivesCoder())
    TIMER_SET = ReadModifyWriteStateSpec("timer_set", FastPrimitivesCoder())
    PERIOD_END = TimerSpec("period_end", TimeDomain.REAL_TIME)
    END = TimerSpec("end", TimeDomain.WATERMARK)

    def __init__(self, routes: Dict[str, Tuple[CohortSync, Target]], report_dir: str,
                 email: Optional[EmailSettings], clock: Callable[[], float]):
        self._routes = routes
        self._report_dir = report_dir
        self._email = email
        self._clock = clock
        self._written = Metrics.counter("cohort_feed", "reports_written")

    def process(self, element, window=beam.DoFn.WindowParam, rows=beam.DoFn.StateParam(ROWS),
                timer_set=beam.DoFn.StateParam(TIMER_SET), period_end=beam.DoFn.TimerParam(PERIOD_END),
                end=beam.DoFn.TimerParam(END)):
        key, row = element
        end.set(window.max_timestamp())
        if not timer_set.read():
            _, kind, start = key.split("|")
            period_end.set(Timestamp(int(start) + PERIODS[kind]))
            timer_set.write(True)
        rows.add(row)

    @on_timer(PERIOD_END)
    def on_period_end(self, key=beam.DoFn.KeyParam, rows=beam.DoFn.StateParam(ROWS),
                      timer_set=beam.DoFn.StateParam(TIMER_SET)):
        self._write(key, rows, timer_set)

    @on_timer(END)
    def on_end(self, key=beam.DoFn.KeyParam, rows=beam.DoFn.StateParam(ROWS),
               timer_set=beam.DoFn.StateParam(TIMER_SET)):
        self._write(key, rows, timer_set)

    def _write(self, key, rows, timer_set):
        stored = list(rows.read())
        rows.clear()
        timer_set.clear()
        if not stored:
            return
        try:
            sync_name, kind, start = key.split("|")
            sync, target = self._routes[sync_name]
            start = int(start)
            _, label = period_of(kind, start)
            results = [Result.from_json(orjson.loads(r)) for r in stored]
            write_period_report(sync, target, kind, start, label, results, self._report_dir, self._email)
            self._written.inc()
        except Exception as error:  # noqa: BLE001 - a report must never stop delivery
            count_internal_error(STAGE, failure_of(STAGE, error))


def _keyed(clock: Callable[[], float]):
    def keyed(element):
        try:
            sync_name, result = element
            now = clock()
            row = orjson.dumps(result.to_json()).decode()
            keys = [f"{sync_name}|{kind}|{period_of(kind, now)[0]}" for kind in PERIODS]
        except Exception as error:  # noqa: BLE001 - a report row must never stop delivery
            count_internal_error(STAGE, failure_of(STAGE, error))
            return
        for key in keys:
            yield key, row
    return keyed


class FeedReports(beam.PTransform):
    """``(sync name, Result)`` → the hourly and daily reports and emails (nothing downstream)."""

    def __init__(self, syncs, report_dir: str, email: Optional[EmailSettings] = None,
                 clock: Callable[[], float] = time.time):
        super().__init__()
        self._routes = {sync.name: (sync, target) for sync, target in syncs}
        self._report_dir = report_dir
        self._email = email
        self._clock = clock

    def expand(self, results):
        return (results
                | "KeyBySyncAndPeriod" >> beam.FlatMap(_keyed(self._clock)).with_output_types(
                    typing.Tuple[str, str])
                | "WritePeriodReports" >> beam.ParDo(
                    _ReportDoFn(self._routes, self._report_dir, self._email, self._clock)))
