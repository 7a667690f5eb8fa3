"""New membership against the last successful one → who entered and who left.

Compared on the Braze key (see ``records``). With no last membership (the first sync, or
after ``--delete_target``) everyone is an ADD: the full cohort. Later runs send only the
difference. Members present in both are passed on unchanged (``UNCHANGED_TAG``) so the new
membership file can be written without sending them.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import apache_beam as beam
import orjson
from apache_beam import pvalue

from transforms.cohorts.records import ADD, REMOVE, Change
from transforms.cohorts.state import META_KEY

__all__ = ["ReadLastMembership", "DiffMembership", "UNCHANGED_TAG", "diff_one", "member_line"]

UNCHANGED_TAG = "unchanged"


def diff_one(key: str, new_ids: Iterable[str], old_id_lists: Iterable[Iterable[str]]) -> Tuple[Optional[Change], Optional[tuple]]:
    """``(change or None, unchanged member or None)`` for one Braze key."""
    new = tuple(sorted(set(new_ids)))
    old = tuple(sorted({a for ids in old_id_lists for a in ids}))
    if new and not old:
        return Change(ADD, key, new), None
    if old and not new:
        return Change(REMOVE, key, old), None
    if new:
        return None, (key, new)
    return None, None


def member_line(key: str, amplitude_ids: Iterable[str]) -> str:
    return orjson.dumps({"key": key, "amplitude_ids": list(amplitude_ids)}).decode()


class ReadLastMembership(beam.PTransform):
    """The last successful membership file → ``(key, [amplitude_id, ...])``; empty if ``path`` is None."""

    def __init__(self, path: Optional[str]):
        super().__init__()
        self._path = path

    def expand(self, pbegin):
        if self._path is None:
            return pbegin | "CreateEmptyMembership" >> beam.Create([])
        return (pbegin
                | "ReadLines" >> beam.io.ReadFromText(self._path)
                | "ParseMembers" >> beam.FlatMap(_parse_member))


def _parse_member(line: str):
    record = orjson.loads(line)
    if META_KEY in record:
        return
    yield record["key"], list(record["amplitude_ids"])


class DiffMembership(beam.PTransform):
    """``new``: (key, amplitude_id) and ``old``: (key, [amplitude_id]) → Change; unchanged on a tag."""

    def expand(self, pcolls):
        return (
            {"new": pcolls["new"], "old": pcolls["old"]}
            | "JoinByBrazeId" >> beam.CoGroupByKey()
            | "Compare" >> beam.ParDo(_DiffDoFn()).with_outputs(UNCHANGED_TAG, main="changes")
        )


class _DiffDoFn(beam.DoFn):
    def process(self, element):
        key, groups = element
        change, unchanged = diff_one(key, groups["new"], groups["old"])
        if change is not None:
            yield change
        if unchanged is not None:
            yield pvalue.TaggedOutput(UNCHANGED_TAG, unchanged)
