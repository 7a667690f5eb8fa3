"""Reconcile what was published with how each event ended, from the job's outcome topic.

An event is published once and ends once per (sync, branch): delivered, skipped by a rule, or
dead-lettered; or once for all (an outcome with no sync) if it could not be parsed, failed
before the fan-out to syncs (dead-lettered), or repeated an event seen just before (skipped as
a duplicate). Its overall status is
``dead_lettered`` if any part of it was, else ``delivered`` if any part reached Braze, else
``skipped``. A sync in shadow mode (``transforms.shadow``) sends nothing: what it would have
sent ends ``skipped`` with reason ``shadow``, so it adds up the same way. The demo, the
integration tests and the benchmark share this so "the numbers add up" means the same everywhere.
"""
from __future__ import annotations

import collections
from typing import Dict, Iterable, List, Tuple

import orjson

BRANCHES = ("track", "identify")


def event_sources(message_id: str, data: bytes) -> List[str]:
    """The sources the job will report for one published message (see transforms.parse)."""
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return [f"{message_id}/0"]
    if isinstance(decoded, list) and decoded:
        return [f"{message_id}/{i}" for i in range(len(decoded))]
    return [f"{message_id}/0"]


class Reconciler:
    def __init__(self, sources: Iterable[str], sync_names: Iterable[str]):
        self.sources = list(sources)
        self._parts = {(sync, branch) for sync in sync_names for branch in BRANCHES}
        self._seen: Dict[str, Dict[Tuple[str, str], Tuple[str, str]]] = collections.defaultdict(dict)
        self._parse_failed: Dict[str, str] = {}  # every event-wide dead letter, whatever the stage
        self._duplicates = set()

    def add(self, outcome: dict) -> None:
        source = outcome["source"]
        if not outcome["sync"] and outcome["status"] == "dead_lettered":
            self._parse_failed[source] = outcome["reason"]
        elif not outcome["sync"]:
            self._duplicates.add(source)
        else:
            self._seen[source][(outcome["sync"], outcome["branch"])] = (outcome["status"], outcome["reason"])

    def add_json(self, data: bytes) -> None:
        self.add(orjson.loads(data))

    def status(self, source: str):
        if source in self._parse_failed:
            return "dead_lettered"
        if source in self._duplicates:
            return "skipped"
        parts = self._seen.get(source, {})
        if set(parts) != self._parts:
            return None  # not accounted for yet
        statuses = {status for status, _ in parts.values()}
        for status in ("dead_lettered", "delivered"):
            if status in statuses:
                return status
        return "skipped"

    def pending(self) -> int:
        return sum(1 for s in self.sources if self.status(s) is None)

    def totals(self) -> Dict[str, int]:
        counts = collections.Counter(self.status(s) or "pending" for s in self.sources)
        return {k: counts.get(k, 0) for k in ("delivered", "skipped", "dead_lettered", "pending")}

    def dead_lettered_sources(self) -> List[str]:
        """Sources that at least one dead letter must name."""
        found = list(self._parse_failed)
        for source, parts in self._seen.items():
            if any(status == "dead_lettered" for status, _ in parts.values()):
                found.append(source)
        return found

    def parts(self, source: str) -> Dict[Tuple[str, str], Tuple[str, str]]:
        """``(sync, branch) → (status, reason)`` reported so far for one source."""
        return dict(self._seen.get(source, {}))

    def skip_reasons(self) -> Dict[str, int]:
        reasons = collections.Counter({"duplicate (same insert id)": len(self._duplicates)} if self._duplicates else {})
        for parts in self._seen.values():
            for (sync, branch), (status, reason) in parts.items():
                if status == "skipped":
                    reasons[f"{sync}/{branch}: {reason}"] += 1
        return dict(reasons.most_common())
