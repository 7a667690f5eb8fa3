"""Where the cohort job keeps what must survive between runs: ``--state_dir`` (local or gs://).

Layout (names URL-quoted, so a target called "US Production" is ``US%20Production``)::

    <state_dir>/targets.json                               saved target names (see below)
    <state_dir>/membership/<cohort_id>/<target>.jsonl      last successful membership
    <state_dir>/runs/<cohort_id>/<target>/<run_id>/        a run's scratch files (deleted after)

The membership file's first line is ``{"_meta": {...}}`` (run id, time, cohort name, counts);
every other line is one member, ``{"key": <Braze id>, "amplitude_ids": [...]}``. The job writes
the new membership to the run's scratch directory while it runs and, only once the run has
succeeded, moves it over the old file with one rename (``FileSystems.rename``: an atomic
``os.rename`` locally; on GCS a copy, itself atomic per object, then a delete). A failed run
leaves the old file, so its changes are sent again by the next run.

Saved target names ("You can't modify the target name after Amplitude saves it", seed): a
target is saved in ``targets.json`` with its identity (endpoint, delivery, key *references*,
partner) when a sync to it first succeeds. The rule: a configured target whose identity is
saved under another name is a rename, and the job refuses to run. To rename, delete the old
target (``python -m pipeline.cohorts --delete_target NAME``, which also forgets its
memberships, so the next sync to the new name is a full one) or put the old name back.
Changing a saved target's endpoint or key reference under the same name is allowed (key
rotation, moving cluster).
"""
from __future__ import annotations

import datetime
import logging
import secrets
import urllib.parse
from typing import Dict, Iterable, List, Optional

import orjson
from apache_beam.io.filesystems import FileSystems

from pipeline.cohort_config import CohortConfig, Target

__all__ = ["StateError", "StateStore", "new_run_id", "quote"]

_LOG = logging.getLogger(__name__)
META_KEY = "_meta"


class StateError(RuntimeError):
    """The state directory refuses this run (a renamed target) or cannot be read/written."""


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def new_run_id(now: Optional[datetime.datetime] = None) -> str:
    """Sortable and unique: ``20260102T030405Z-1a2b3c``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _join(*parts: str) -> str:
    return FileSystems.join(*parts)


def _read(path: str) -> Optional[bytes]:
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read()


def _write_atomically(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    with FileSystems.create(tmp, compression_type="uncompressed") as f:
        f.write(data)
    _replace(tmp, path)


def _replace(source: str, destination: str) -> None:
    if "://" not in destination:
        import os
        os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
    if "://" in destination and FileSystems.exists(destination):
        # Object stores: rename is copy + delete and may refuse an existing destination.
        FileSystems.delete([destination])
    FileSystems.rename([source], [destination])


class StateStore:
    """The state directory of one deployment."""

    def __init__(self, state_dir: str):
        if not state_dir:
            raise ValueError("state_dir is required")
        self.state_dir = state_dir.rstrip("/") if state_dir not in ("/",) else state_dir
        if "://" not in self.state_dir:
            import os
            os.makedirs(self.state_dir, exist_ok=True)

    # -- membership -------------------------------------------------------------------------

    def membership_path(self, cohort_id: str, target: str) -> str:
        return _join(self.state_dir, "membership", quote(cohort_id), quote(target) + ".jsonl")

    def run_dir(self, cohort_id: str, target: str, run_id: str) -> str:
        return _join(self.state_dir, "runs", quote(cohort_id), quote(target), run_id)

    def read_meta(self, cohort_id: str, target: str) -> Optional[dict]:
        """The header of the last successful membership, or None before the first success."""
        path = self.membership_path(cohort_id, target)
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path, compression_type="uncompressed") as f:
            first = f.readline()
        try:
            meta = orjson.loads(first).get(META_KEY)
        except (orjson.JSONDecodeError, AttributeError):
            meta = None
        if not isinstance(meta, dict):
            raise StateError(f"{path}: the first line is not the membership header; the file is damaged")
        return meta

    def read_membership(self, cohort_id: str, target: str) -> Dict[str, List[str]]:
        """The whole last membership in memory (tests, the demo, the real-time job's start)."""
        data = _read(self.membership_path(cohort_id, target))
        members = {}
        for line in (data or b"").splitlines():
            record = orjson.loads(line)
            if META_KEY not in record:
                members[record["key"]] = record["amplitude_ids"]
        return members

    def commit_membership(self, pending_path: str, cohort_id: str, target: str) -> str:
        """Move a finished run's membership over the last one; returns the final path."""
        final = self.membership_path(cohort_id, target)
        _replace(pending_path, final)
        return final

    def delete_run_dir(self, cohort_id: str, target: str, run_id: str) -> None:
        path = self.run_dir(cohort_id, target, run_id)
        try:
            matches = FileSystems.match([_join(path, "*")])[0].metadata_list
            if matches:
                FileSystems.delete([m.path for m in matches])
            if "://" not in path:
                import shutil
                shutil.rmtree(path, ignore_errors=True)
        except Exception as e:  # noqa: BLE001 - scratch files; never fail a finished run
            _LOG.warning("could not delete the run's scratch files in %s: %s", path, e)

    # -- saved target names -----------------------------------------------------------------

    @property
    def registry_path(self) -> str:
        return _join(self.state_dir, "targets.json")

    def saved_targets(self) -> Dict[str, dict]:
        data = _read(self.registry_path)
        if not data:
            return {}
        try:
            targets = orjson.loads(data).get("targets", {})
        except (orjson.JSONDecodeError, AttributeError):
            raise StateError(f"{self.registry_path} is not valid JSON; fix or remove it") from None
        return targets if isinstance(targets, dict) else {}

    def check_target_names(self, config: CohortConfig) -> List[str]:
        """Problems: configured targets that rename a saved one (see the module docstring)."""
        saved = self.saved_targets()
        problems = []
        for target in config.targets:
            if target.name in saved:
                continue
            identity = target.identity()
            for name, record in saved.items():
                if {k: record.get(k) for k in identity} == identity:
                    problems.append(
                        f"target {target.name!r} is the saved target {name!r} (same endpoint, delivery and keys) "
                        f"under a new name; a target's name cannot be changed once saved. Put the name {name!r} "
                        f"back, or delete the saved target (python -m pipeline.cohorts --state_dir ... "
                        f"--delete_target {name!r}), which forgets its memberships so the next sync is a full one")
        return problems

    def save_target(self, target: Target) -> None:
        saved = self.saved_targets()
        record = dict(target.identity())
        record["saved_at"] = saved.get(target.name, {}).get("saved_at") or _now_iso()
        if saved.get(target.name) == record:
            return
        saved[target.name] = record
        _write_atomically(self.registry_path, orjson.dumps({"targets": saved}, option=orjson.OPT_INDENT_2))

    def delete_target(self, name: str) -> List[str]:
        """Forget a saved target and its memberships; returns the files deleted."""
        saved = self.saved_targets()
        pattern = _join(self.state_dir, "membership", "*", quote(name) + ".jsonl")
        files = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        if files:
            FileSystems.delete(files)
        if name in saved:
            del saved[name]
            _write_atomically(self.registry_path, orjson.dumps({"targets": saved}, option=orjson.OPT_INDENT_2))
        elif not files:
            raise StateError(f"no saved target named {name!r} in {self.state_dir}")
        return files


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def membership_lines(records: Iterable[dict]) -> List[bytes]:
    return [orjson.dumps(r) for r in records]
