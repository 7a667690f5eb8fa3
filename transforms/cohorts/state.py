"""Where the cohort job keeps what must survive between runs: ``--state_dir`` (local or gs://).

Layout (names URL-quoted, so a target called "US Production" is ``US%20Production``)::

    <state_dir>/targets.json                                 saved target names (see below)
    <state_dir>/membership/<cohort_id>/<target>.json         pointer to the last successful membership
    <state_dir>/membership/<cohort_id>/<target>/<run>.jsonl  a run's membership (written once, by Beam)
    <state_dir>/runs/<cohort_id>/<target>/<run_id>/          a run's scratch files (deleted after)
    <state_dir>/leases/..., <state_dir>/amplitude/...        see ``transforms.cohorts.lease``

A membership file's first line is ``{"_meta": {...}}`` (run id, time, cohort name); every other
line is one member, ``{"key": <Braze id>, "amplitude_ids": [...]}``. A run writes its new
membership to a file of its own while it runs; only once the run has succeeded does the
*pointer* switch to it, in one compare-and-swap write (``transforms.cohorts.objects``: a GCS
generation precondition, or ``os.replace`` locally). There is no moment without a membership
(no delete-then-rename window), and a commit fails if another run committed since this one
read the pointer. A failed run leaves the pointer, so its changes are sent again by the next
run. Files of older runs are deleted after the switch (the previous one is kept).

Before pointers, the membership lived in ``<target>.jsonl``; it is still read when no pointer
exists, and the first commit moves on from it.

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
from typing import Dict, Iterable, List, Optional, Tuple

import orjson
from apache_beam.io.filesystems import FileSystems

from transforms.cohorts.model import CohortConfig, Target
from transforms.cohorts.objects import ABSENT, objects_for

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
    objects_for(path).write(path, data)


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

    def pointer_path(self, cohort_id: str, target: str) -> str:
        return _join(self.state_dir, "membership", quote(cohort_id), quote(target) + ".json")

    def legacy_membership_path(self, cohort_id: str, target: str) -> str:
        return _join(self.state_dir, "membership", quote(cohort_id), quote(target) + ".jsonl")

    def run_membership_path(self, cohort_id: str, target: str, run_id: str) -> str:
        return _join(self.state_dir, "membership", quote(cohort_id), quote(target), run_id + ".jsonl")

    def run_dir(self, cohort_id: str, target: str, run_id: str) -> str:
        return _join(self.state_dir, "runs", quote(cohort_id), quote(target), run_id)

    def read_pointer(self, cohort_id: str, target: str) -> Tuple[Optional[dict], str]:
        """``(pointer or None, its version)``; the version is what ``commit_membership`` checks."""
        path = self.pointer_path(cohort_id, target)
        data, version = objects_for(path).read(path)
        if data is None:
            legacy = self.legacy_membership_path(cohort_id, target)
            if FileSystems.exists(legacy):
                return {"path": legacy, "meta": self._legacy_meta(legacy)}, ABSENT
            return None, ABSENT
        try:
            pointer = orjson.loads(data)
        except orjson.JSONDecodeError:
            pointer = None
        if not isinstance(pointer, dict) or not isinstance(pointer.get("path"), str) \
                or not isinstance(pointer.get("meta"), dict):
            raise StateError(f"{path} is not a membership pointer; the file is damaged (restore it from the "
                             "bucket's object versions, or delete it for a full sync)")
        return pointer, version

    def membership_path(self, cohort_id: str, target: str) -> Optional[str]:
        """The file holding the last successful membership, or None before the first success."""
        pointer, _ = self.read_pointer(cohort_id, target)
        return None if pointer is None else pointer["path"]

    @staticmethod
    def _legacy_meta(path: str) -> dict:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            first = f.readline()
        try:
            meta = orjson.loads(first).get(META_KEY)
        except (orjson.JSONDecodeError, AttributeError):
            meta = None
        if not isinstance(meta, dict):
            raise StateError(f"{path}: the first line is not the membership header; the file is damaged")
        return meta

    def read_meta(self, cohort_id: str, target: str) -> Optional[dict]:
        """The header of the last successful membership, or None before the first success."""
        pointer, _ = self.read_pointer(cohort_id, target)
        return None if pointer is None else pointer["meta"]

    def read_membership(self, cohort_id: str, target: str) -> Dict[str, List[str]]:
        """The whole last membership in memory (tests, the demo)."""
        path = self.membership_path(cohort_id, target)
        data = _read(path) if path else None
        members = {}
        for line in (data or b"").splitlines():
            record = orjson.loads(line)
            if META_KEY not in record:
                members[record["key"]] = record["amplitude_ids"]
        return members

    def commit_membership(self, cohort_id: str, target: str, run_path: str, meta: dict,
                          expected_version: str) -> str:
        """Point at a finished run's membership; StateError if another run committed since
        ``expected_version`` was read. Returns the membership file's path."""
        path = self.pointer_path(cohort_id, target)
        previous, _ = self.read_pointer(cohort_id, target)
        pointer = {"path": run_path, "meta": meta, "previous": (previous or {}).get("path")}
        if not objects_for(path).write(path, orjson.dumps(pointer, option=orjson.OPT_INDENT_2), expected_version):
            raise StateError(f"another run committed a membership for cohort {cohort_id!r} and target {target!r} "
                             "while this one ran; this run's changes will be diffed again by the next run")
        self._forget_old_memberships(cohort_id, target, keep={run_path, (previous or {}).get("path")})
        return run_path

    def discard_membership(self, run_path: str) -> None:
        """Delete a failed run's membership file (never pointed at)."""
        try:
            if FileSystems.exists(run_path):
                FileSystems.delete([run_path])
        except Exception as e:  # noqa: BLE001 - a leftover file is harmless
            _LOG.warning("could not delete %s: %s", run_path, e)

    def _forget_old_memberships(self, cohort_id: str, target: str, keep) -> None:
        pattern = _join(self.state_dir, "membership", quote(cohort_id), quote(target), "*.jsonl")
        try:
            old = [m.path for m in FileSystems.match([pattern])[0].metadata_list if m.path not in keep]
            legacy = self.legacy_membership_path(cohort_id, target)
            if legacy not in keep and FileSystems.exists(legacy):
                old.append(legacy)
            if old:
                FileSystems.delete(old)
        except Exception as e:  # noqa: BLE001 - old files are only clutter
            _LOG.warning("could not delete older memberships of %s/%s: %s", cohort_id, target, e)

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
        """Forget a saved target and its memberships; returns the memberships (pointers, or the
        files of before pointers) deleted, one per cohort."""
        saved = self.saved_targets()
        memberships = [m.path for m in FileSystems.match(
            [_join(self.state_dir, "membership", "*", quote(name) + ".json*")])[0].metadata_list]
        files = [m.path for m in FileSystems.match(
            [_join(self.state_dir, "membership", "*", quote(name), "*.jsonl")])[0].metadata_list]
        files = [f for f in memberships + files if not f.endswith(".lock")]
        if files:
            FileSystems.delete(files)
        files = [f for f in memberships if not f.endswith(".lock")]
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
