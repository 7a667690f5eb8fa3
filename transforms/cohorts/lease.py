"""Two things runs share through the state directory, each a small compare-and-swap object
(``transforms.cohorts.objects``):

* **The lease** of a sync (``<state_dir>/leases/<cohort_id>/<target>.json``): two runs of one
  cohort and target never overlap. A run takes the lease before anything else and gives it back
  at the end; a second run finds it held and exits with who holds it and until when. A lease
  that was not given back (the process died) expires after its duration.
* **The month's download count** (``<state_dir>/amplitude/downloads-<YYYY-MM>.json``):
  Amplitude allows a fixed number of cohort downloads a month (500 on Growth/Enterprise,
  docs/api-facts.md, A7; every "request a download" call counts). Each run reserves one *before*
  the call, so a call that fails still counts, and refuses when the month's count has reached
  the budget less the reserve (``--use_download_reserve`` lets a hand run use the reserve, never
  the budget). Whether the budget is per project or per organisation is unconfirmed: every
  deployment downloading from one Amplitude project (or organisation) should share one
  ``--state_dir``. The month is the UTC calendar month (when Amplitude's count resets is
  unconfirmed; its usage endpoint's path is too, so this count is our own).
"""
from __future__ import annotations

import datetime
import socket
from typing import Callable, NamedTuple, Optional

import orjson
from apache_beam.io.filesystems import FileSystems

from transforms.cohorts.objects import objects_for
from transforms.cohorts.records import iso_seconds, utc_now
from transforms.cohorts.state import StateError, quote

__all__ = ["BudgetExhausted", "Lease", "LeaseHeld", "acquire_lease", "release_lease", "reserve_download",
           "downloads_this_month"]

_ATTEMPTS = 20  # compare-and-swap retries when another run writes at the same moment


class LeaseHeld(StateError):
    """Another run of the same sync holds the lease."""


class BudgetExhausted(StateError):
    """This month's download budget (less the reserve) is used up."""


class Lease(NamedTuple):
    path: str
    version: str
    run_id: str
    expires_at: str


_now = utc_now
_iso = iso_seconds


def _parse(text) -> Optional[datetime.datetime]:
    try:
        return datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def lease_path(state_dir: str, cohort_id: str, target: str) -> str:
    return FileSystems.join(state_dir.rstrip("/"), "leases", quote(cohort_id), quote(target) + ".json")


def acquire_lease(state_dir: str, cohort_id: str, target: str, run_id: str, minutes: float, *,
                  sync: str = "", now: Callable[[], datetime.datetime] = _now) -> Lease:
    """Take the sync's lease for ``minutes``; LeaseHeld when another run holds it."""
    path = lease_path(state_dir, cohort_id, target)
    store = objects_for(path)
    for _ in range(_ATTEMPTS):
        data, version = store.read(path)
        current = _load(data)
        moment = now()
        if current is not None:
            expires = _parse(current.get("expires_at"))
            if expires is not None and expires > moment:
                raise LeaseHeld(
                    f"another run of cohort {cohort_id!r} to target {target!r} is in progress (run "
                    f"{current.get('run_id')!r} of sync {current.get('sync')!r} on {current.get('host')!r}, started "
                    f"{current.get('started_at')}); it holds the lease until {current.get('expires_at')}. This run "
                    "exits without doing anything; if that run died, its lease expires then (or delete "
                    f"{path} once you are sure it is not running)")
        expires_at = _iso(moment + datetime.timedelta(minutes=minutes))
        record = {"run_id": run_id, "sync": sync, "host": socket.gethostname(), "started_at": _iso(moment),
                  "expires_at": expires_at}
        if store.write(path, orjson.dumps(record), version):
            return Lease(path, store.read(path).version, run_id, expires_at)
    raise StateError(f"could not take the lease {path}: other runs kept writing it")


def release_lease(lease: Optional[Lease]) -> bool:
    """Give the lease back; False when it is no longer ours (expired and taken)."""
    if lease is None:
        return True
    store = objects_for(lease.path)
    data, version = store.read(lease.path)
    current = _load(data)
    if current is None or current.get("run_id") != lease.run_id:
        return False
    return store.delete(lease.path, version)


def still_holds(lease: Optional[Lease]) -> bool:
    if lease is None:
        return True
    current = _load(objects_for(lease.path).read(lease.path).data)
    return current is not None and current.get("run_id") == lease.run_id


def _load(data: Optional[bytes]) -> Optional[dict]:
    if data is None:
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------------------------
# The download budget


def ledger_path(state_dir: str, moment: datetime.datetime) -> str:
    return FileSystems.join(state_dir.rstrip("/"), "amplitude", f"downloads-{moment:%Y-%m}.json")


def downloads_this_month(state_dir: str, now: Callable[[], datetime.datetime] = _now) -> int:
    path = ledger_path(state_dir, now())
    ledger = _load(objects_for(path).read(path).data) or {}
    return int(ledger.get("count", 0))


def reserve_download(state_dir: str, budget: int, reserve: int, *, sync: str, run_id: str,
                     use_reserve: bool = False, now: Callable[[], datetime.datetime] = _now) -> int:
    """Count one download against this month's budget; returns the month's count after it.

    BudgetExhausted (with the arithmetic) when the count has reached ``budget - reserve`` (or
    ``budget`` with ``use_reserve``)."""
    moment = now()
    path = ledger_path(state_dir, moment)
    store = objects_for(path)
    limit = budget if use_reserve else budget - reserve
    for _ in range(_ATTEMPTS):
        data, version = store.read(path)
        ledger = _load(data) or {"month": f"{moment:%Y-%m}", "count": 0, "recent": []}
        count = int(ledger.get("count", 0))
        if count >= limit:
            kept = "" if use_reserve else f" less the reserve of {reserve} kept for bootstraps and hand runs"
            raise BudgetExhausted(
                f"the download budget for {moment:%Y-%m} is used up: {count} downloads counted, the limit is "
                f"{limit} (Amplitude's {budget} a month{kept}). No download was requested. The count resets with "
                "the month; a hand run may pass --use_download_reserve to use the reserve")
        ledger["count"] = count + 1
        ledger["recent"] = (list(ledger.get("recent") or []) + [
            {"at": _iso(moment), "sync": sync, "run_id": run_id}])[-100:]
        if store.write(path, orjson.dumps(ledger, option=orjson.OPT_INDENT_2), version):
            return count + 1
    raise StateError(f"could not count the download in {path}: other runs kept writing it")
