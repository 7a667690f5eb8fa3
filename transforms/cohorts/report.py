"""The report every run writes: ``<report_dir>/reports/<cohort_id>/<target>/<run_id>.json|.csv``.

The JSON holds the run (id, sync, cohort, target, mode, cadence, started/finished, status,
run-level errors and notes, the email's outcome), the counts, and one row per Amplitude user.
The CSV holds the rows with the columns of Amplitude's sync-history export (docs/api-facts.md, A5:
``Amplitude_id``, ``Operation``, mapped properties, ``Skip_detected``, ``Skip_reason``), plus the
status and detail:

    amplitude_id,operation,braze_id_type,braze_id,status,skipped,skip_reason,detail

Every cell that a spreadsheet would read as a formula (starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return) gets a leading ``'`` (OWASP's "CSV injection" advice): the
ids come from Amplitude and Braze, not from us. Both files are scrubbed of every key the
process read and of the keys passed in, in any rendering (``transforms.scrub``).

``status`` is ``sent`` (Braze accepted the request), ``skipped`` (see ``skip_reason``:
``unresolved_mapping``, ``rejected_by_braze``, ``unknown_to_braze``) or ``failed``. With
``verify_users`` (the default) users are looked up before sending, so ``sent`` users exist in
Braze and unknown ones are ``skipped: unknown_to_braze``; with ``verify_users: false`` they
cannot be told apart, and a note says so. A change whose Braze id came from several Amplitude
ids gives one row per Amplitude id.
"""
from __future__ import annotations

import csv
import io
from typing import Iterable, List, Optional

import orjson
from apache_beam.io.filesystems import FileSystems

from transforms.cohorts.records import ADD, DONE, FAILED, SKIPPED, Result
from transforms.cohorts.state import quote
from transforms.scrub import scrub

__all__ = ["CSV_COLUMNS", "csv_cell", "render_csv", "UNKNOWN_USERS_NOTE", "VERIFIED_USERS_NOTE", "build_report", "count_results",
           "report_paths", "write_report", "report_rows"]

CSV_COLUMNS = ("amplitude_id", "operation", "braze_id_type", "braze_id", "status", "skipped", "skip_reason", "detail")
UNKNOWN_USERS_NOTE = (
    "Braze adds and removes existing users only and never creates users from a cohort; its answer does not "
    "say which ids it matched, so 'sent' users unknown to Braze were ignored by Braze, not added.")
VERIFIED_USERS_NOTE = (
    "Braze never creates users from a cohort: users were looked up in Braze (/users/export/ids) before "
    "sending, and those it does not know are skipped (unknown_to_braze), not sent.")
RETRIED_NOTE = " Their adds are not saved as membership, so the next run tries them again."
REAL_TIME_NOTE = " Real time keeps no membership: an unknown user is added when a later enter arrives."
BRAZE_ID_TYPES = {"user_id": "external_id", "device_id": "device_id", "user_alias": "user_alias"}
_STATUS = {DONE: "sent", SKIPPED: "skipped", FAILED: "failed"}


def count_results(results: Iterable[Result], unchanged: int = 0) -> dict:
    counts = {"added": 0, "removed": 0, "skipped": 0, "failed": 0, "unchanged": unchanged}
    for r in results:
        n = max(1, len(r.amplitude_ids))
        if r.status == DONE:
            counts["added" if r.op == ADD else "removed"] += n
        elif r.status == SKIPPED:
            counts["skipped"] += n
        else:
            counts["failed"] += n
    return counts


def report_rows(results: Iterable[Result], mapping_type: str) -> List[dict]:
    rows = []
    id_type = BRAZE_ID_TYPES.get(mapping_type, mapping_type)
    order = {FAILED: 0, SKIPPED: 1, DONE: 2}
    for r in sorted(results, key=lambda r: (order.get(r.status, 3), r.op, r.key, r.amplitude_ids)):
        for amplitude_id in r.amplitude_ids or ("",):
            rows.append({"amplitude_id": amplitude_id, "operation": r.op, "braze_id_type": id_type,
                         "braze_id": r.key, "status": _STATUS.get(r.status, r.status),
                         "skipped": r.status == SKIPPED, "skip_reason": r.reason if r.status == SKIPPED else "",
                         "detail": r.detail if r.status != DONE else (r.reason or "")})
    return rows


def _users_note(target, mode: str) -> str:
    """What ``sent`` means for this target: checked users, or (verify_users: false) unchecked."""
    if not target.verify_users:
        return UNKNOWN_USERS_NOTE
    return VERIFIED_USERS_NOTE + (REAL_TIME_NOTE if mode == "real_time" else RETRIED_NOTE)


def report_paths(report_dir: str, cohort_id: str, target: str, run_id: str):
    base = FileSystems.join(report_dir.rstrip("/"), "reports", quote(cohort_id), quote(target), run_id)
    return base + ".json", base + ".csv"


def build_report(*, run_id: str, sync, target, mode: str, started_at: str, finished_at: str, status: str,
                 results: Iterable[Result], unchanged: int = 0, errors: Iterable[str] = (),
                 notes: Iterable[str] = (), email: Optional[dict] = None) -> dict:
    results = list(results)
    return {
        "run_id": run_id,
        "sync": sync.name,
        "cohort_id": sync.cohort_id,
        "cohort_name": sync.cohort_name,
        "target": target.name,
        "delivery": target.delivery,
        "user_mapping": target.user_mapping.type,
        "cadence": sync.cadence,
        "mode": mode,  # full | incremental | real_time
        "started_at": started_at,
        "finished_at": finished_at,
        "status": status,  # success | failed
        "counts": count_results(results, unchanged),
        "errors": list(errors),
        "notes": [_users_note(target, mode), *notes],
        "email": email or {"sent": False, "error": "not configured"},
        "users": report_rows(results, target.user_mapping.type),
    }


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value) -> str:
    """A value as a CSV cell no spreadsheet runs as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def render_csv(rows: Iterable[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        row = {**row, "skipped": "true" if row["skipped"] else "false"}
        writer.writerow({k: csv_cell(row.get(k)) for k in CSV_COLUMNS})
    return text.getvalue()


def write_report(report: dict, json_path: str, csv_path: str, secrets: Iterable[str] = ()) -> None:
    """Write both files, scrubbed (each in one piece: a reader never sees half a report)."""
    secrets = tuple(secrets)
    with FileSystems.create(json_path, compression_type="uncompressed") as f:
        f.write(scrub(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode("utf-8"), secrets).encode("utf-8"))
    with FileSystems.create(csv_path, compression_type="uncompressed") as f:
        f.write(scrub(render_csv(report["users"]), secrets).encode("utf-8"))

