"""The /_sim/ inspection and control routes (no auth, never faulted, never logged).

Each function takes the simulator, the parsed query and body, and returns (status, payload).
Payloads are built and serialized while the store lock is held, because profiles are
mutated in place by concurrent requests.
"""
from __future__ import annotations

from typing import Any, Tuple

import orjson

from local.braze_sim import faults as faults_mod


def _first(query: dict, key: str):
    values = query.get(key)
    return values[0] if values else None


def get_users(sim, query: dict, body: Any) -> Tuple[int, bytes]:
    alias = None
    if _first(query, "alias_label") is not None:
        alias = (_first(query, "alias_label"), _first(query, "alias_name"))
    with sim.store.lock:
        users = sim.store.find(external_id=_first(query, "external_id"),
                               braze_id=_first(query, "braze_id"), alias=alias)
        return 200, orjson.dumps({"users": [u.to_json() for u in users]})


def seed_users(sim, query: dict, body: Any) -> Tuple[int, Any]:
    specs = body.get("users") if isinstance(body, dict) and "users" in body else [body]
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        return 400, {"message": "send {\"users\": [{external_id?, braze_id?, user_aliases?, device_ids?, attributes?}]}"}
    with sim.store.lock:
        try:
            created = [sim.store.seed(spec) for spec in specs]
        except (ValueError, KeyError, TypeError) as exc:
            return 400, {"message": f"cannot seed: {exc}"}
        return 201, orjson.dumps({"users": [u.to_json() for u in created]})


def get_requests(sim, query: dict, body: Any) -> Tuple[int, Any]:
    try:
        since = int(_first(query, "since") or 0)
        limit = _first(query, "limit")
        limit = None if limit is None else int(limit)
    except ValueError:
        return 400, {"message": "'since' and 'limit' must be integers"}
    with sim.store.lock:
        return 200, orjson.dumps(sim.request_log.read(since, limit))


def get_counters(sim, query: dict, body: Any) -> Tuple[int, Any]:
    with sim.store.lock:
        return 200, sim.store.counters_json()


def reset(sim, query: dict, body: Any) -> Tuple[int, Any]:
    sim.reset()
    return 200, {"message": "reset"}


def set_faults(sim, query: dict, body: Any) -> Tuple[int, Any]:
    error = faults_mod.check(body)
    if error:
        return 400, {"message": error}
    sim.faults.configure(body)
    return 200, sim.faults.to_json()


def get_faults(sim, query: dict, body: Any) -> Tuple[int, Any]:
    return 200, sim.faults.to_json()


def clear_faults(sim, query: dict, body: Any) -> Tuple[int, Any]:
    sim.faults.clear()
    return 200, sim.faults.to_json()


def health(sim, query: dict, body: Any) -> Tuple[int, Any]:
    return 200, {"status": "ok", "object_limit_mode": sim.object_limit_mode,
                 "rate_limit": sim.rate_limit, "rate_window_seconds": sim.rate_window_seconds}


ROUTES = {
    ("GET", "/_sim/users"): get_users,
    ("POST", "/_sim/users"): seed_users,
    ("GET", "/_sim/requests"): get_requests,
    ("GET", "/_sim/counters"): get_counters,
    ("POST", "/_sim/reset"): reset,
    ("POST", "/_sim/faults"): set_faults,
    ("GET", "/_sim/faults"): get_faults,
    ("DELETE", "/_sim/faults"): clear_faults,
    ("GET", "/_sim/health"): health,
}
