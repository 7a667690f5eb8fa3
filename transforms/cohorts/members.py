"""Membership input: a snapshot of the cohort's users → Braze ids.

A snapshot is one file (local path or any Beam filesystem URI such as ``gs://``) listing the
Amplitude users in the cohort now, one per line:

* ``.jsonl`` / ``.json``: one JSON object per line, e.g.
  ``{"amplitude_id": 123, "user_id": "u1", "device_id": "d1"}``;
* ``.csv``: a header row naming the columns (``amplitude_id,user_id,device_id,...``), then one
  row per user. Quoted fields work; a field holding a line break does not (lines are read
  one at a time so the file can be split across workers).

Files from Amplitude's cohort download API are CSVs of this kind (quoted, header
``"amplitude_id","user_id"``); Amplitude's own client notes that every value starts with a tab
character, so a leading tab is stripped from every header name and value (harmless when absent).

``amplitude_id`` is required; the other columns are whatever the targets' mappings read
(``user_id``, ``device_id``, the alias source). A user whose mapped value is missing or empty
is skipped with ``unresolved_mapping`` (Amplitude's "Unresolved mapping"), reported, and not
remembered, so they are added once the value appears. A line that is not a user is skipped
as ``invalid_row``.
"""
from __future__ import annotations

import csv
import io
from typing import Optional, Sequence

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.cohorts.model import UserMapping
from transforms.cohorts.records import ADD, INVALID_ROW, SKIPPED, UNRESOLVED_MAPPING, Result

__all__ = ["ReadSnapshot", "ResolveMembers", "SKIPPED_TAG", "snapshot_format", "read_csv_header",
           "parse_line", "mapped_value"]

SKIPPED_TAG = "skipped"
METRICS_NAMESPACE = "cohorts"
_DETAIL_CHARS = 200


def snapshot_format(path: str) -> str:
    """``"csv"`` or ``"jsonl"`` from the file name; ValueError for anything else."""
    lower = path.lower()
    for suffix in (".gz", ".bz2"):
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    raise ValueError(f"snapshot {path!r}: name it .csv or .jsonl so its format is known")


def read_csv_header(path: str) -> tuple:
    """The column names of a CSV snapshot (its first line)."""
    with FileSystems.open(path) as f:
        first = f.readline().decode("utf-8-sig")
    columns = next(csv.reader([first]), [])
    columns = tuple(c.strip().lstrip("\t") for c in columns)
    if "amplitude_id" not in columns:
        raise ValueError(f"snapshot {path!r}: the header row has no 'amplitude_id' column (got {list(columns)})")
    return columns


def parse_line(line: str, fmt: str, columns: Sequence[str] = ()) -> Optional[dict]:
    """One snapshot line → a dict of fields, or None if it is not a user record."""
    if not line.strip():
        return {}
    if fmt == "jsonl":
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        return row if isinstance(row, dict) else None
    values = next(csv.reader(io.StringIO(line)), None)
    if values is None or len(values) != len(columns):
        return None
    values = [v[1:] if v.startswith("\t") else v for v in values]
    return {c: (v if v != "" else None) for c, v in zip(columns, values)}


def mapped_value(row: dict, field: str) -> Optional[str]:
    """The row's value for ``field`` as a Braze id, or None when missing/empty/not a scalar."""
    value = row.get(field)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


class ReadSnapshot(beam.PTransform):
    """A snapshot file → its raw lines (CSV without the header)."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path
        self._fmt = snapshot_format(path)

    def expand(self, pbegin):
        return pbegin | "ReadLines" >> beam.io.ReadFromText(
            self._path, skip_header_lines=1 if self._fmt == "csv" else 0)


class ResolveMembers(beam.PTransform):
    """Snapshot lines → ``(braze key, amplitude_id)``; skipped rows as ``Result`` on ``SKIPPED_TAG``."""

    def __init__(self, mapping: UserMapping, fmt: str, columns: Sequence[str] = ()):
        super().__init__()
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"fmt must be 'csv' or 'jsonl', got {fmt!r}")
        if fmt == "csv" and "amplitude_id" not in columns:
            raise ValueError("a CSV snapshot needs the header's columns, with amplitude_id")
        self._mapping = mapping
        self._fmt = fmt
        self._columns = tuple(columns)

    def expand(self, lines):
        return lines | "MapToBrazeIds" >> beam.ParDo(
            _ResolveDoFn(self._mapping.source, self._fmt, self._columns)).with_outputs(SKIPPED_TAG, main="members")


class _ResolveDoFn(beam.DoFn):
    def __init__(self, field: str, fmt: str, columns: tuple):
        self._field = field
        self._fmt = fmt
        self._columns = columns
        self._rows = Metrics.counter(METRICS_NAMESPACE, "snapshot_rows")
        self._unresolved = Metrics.counter(METRICS_NAMESPACE, "unresolved_mapping")

    def process(self, line):
        row = parse_line(line, self._fmt, self._columns)
        if row == {}:
            return []  # blank line
        amplitude_id = mapped_value(row, "amplitude_id") if row is not None else None
        if amplitude_id is None:
            return [pvalue.TaggedOutput(SKIPPED_TAG, Result(
                ADD, "", (), SKIPPED, INVALID_ROW, f"not a user record with an amplitude_id: {line[:_DETAIL_CHARS]}"))]
        self._rows.inc()
        key = mapped_value(row, self._field)
        if key is None:
            self._unresolved.inc()
            return [pvalue.TaggedOutput(SKIPPED_TAG, Result(
                ADD, "", (amplitude_id,), SKIPPED, UNRESOLVED_MAPPING, f"no value for {self._field!r}"))]
        return [(key, amplitude_id)]
