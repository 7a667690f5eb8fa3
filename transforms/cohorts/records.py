"""Records that flow between the cohort job's steps (NamedTuples: Beam encodes them cheaply).

``key`` is always the user's identifier *on the Braze side* for the target's mapping: the
external_id (``user_id`` mapping), the device id (``device_id``) or the alias name
(``user_alias``; the label is the target's). Membership is compared on that key, because that
is what Braze sees: two Amplitude ids with one user_id are one Braze user.
"""
from __future__ import annotations

import datetime
from typing import NamedTuple, Tuple

ADD = "add"
REMOVE = "remove"
OPERATIONS = (ADD, REMOVE)

# Result statuses.
DONE = "done"  # Braze accepted the request that carried this change
SKIPPED = "skipped"  # not sent, or refused for this user alone; see the reason
FAILED = "failed"  # the request failed for good (after retries): the run fails

# Skip reasons (Amplitude's sync history says "Unresolved mapping" / "Rejected by partner").
UNRESOLVED_MAPPING = "unresolved_mapping"
REJECTED_BY_BRAZE = "rejected_by_braze"
INVALID_ROW = "invalid_row"
UNKNOWN_TO_BRAZE = "unknown_to_braze"  # /users/export/ids did not return the user: not sent
LOOKUP_FAILED = "lookup_failed"  # FAILED: the /users/export/ids check itself failed


class Change(NamedTuple):
    """One user who entered (ADD) or left (REMOVE) the cohort."""

    op: str
    key: str
    amplitude_ids: Tuple[str, ...]


class Result(NamedTuple):
    """What became of one change (or of one snapshot row that could not be mapped)."""

    op: str
    key: str  # "" when the mapping did not resolve
    amplitude_ids: Tuple[str, ...]
    status: str  # DONE | SKIPPED | FAILED
    reason: str = ""
    detail: str = ""

    def to_json(self) -> dict:
        return {"op": self.op, "key": self.key, "amplitude_ids": list(self.amplitude_ids),
                "status": self.status, "reason": self.reason, "detail": self.detail}

    @classmethod
    def from_json(cls, d: dict) -> "Result":
        return cls(d["op"], d["key"], tuple(d["amplitude_ids"]), d["status"], d.get("reason", ""),
                   d.get("detail", ""))


def utc_now() -> datetime.datetime:
    """Now, in UTC: the cohort job's runs, leases and reports are all stamped in UTC."""
    return datetime.datetime.now(datetime.timezone.utc)


def iso_seconds(moment: datetime.datetime) -> str:
    """A UTC moment as ISO 8601 to the second with a ``Z`` (``2026-01-15T10:00:00Z``)."""
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
