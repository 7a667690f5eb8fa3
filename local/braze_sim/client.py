"""``SimClient``: the /_sim/ inspection and control API over HTTP.

Works the same for an in-process ``BrazeSimulator`` and for one started as a subprocess
(``python -m local.braze_sim``), so tests, the demo and the benchmark share one way to
read what reached "Braze".
"""
from __future__ import annotations

import time
from typing import Callable, List, Optional

import requests


class SimClient:
    def __init__(self, url: str, timeout_seconds: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self._session = requests.Session()

    def _call(self, method: str, path: str, **kwargs):
        response = self._session.request(method, self.url + path, timeout=self.timeout_seconds, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def users(self, external_id: Optional[str] = None, braze_id: Optional[str] = None,
              alias_name: Optional[str] = None, alias_label: Optional[str] = None) -> List[dict]:
        """Every profile, or the one matching the given identifier (as a list of 0 or 1)."""
        params = {k: v for k, v in dict(external_id=external_id, braze_id=braze_id,
                                        alias_name=alias_name, alias_label=alias_label).items()
                  if v is not None}
        return self._call("GET", "/_sim/users", params=params)["users"]

    def user(self, external_id: str) -> Optional[dict]:
        found = self.users(external_id=external_id)
        return found[0] if found else None

    def seed_users(self, *users: dict) -> List[dict]:
        """Create profiles directly (device ids, aliases...), as the SDKs would have."""
        return self._call("POST", "/_sim/users", json={"users": list(users)})["users"]

    def requests(self, since: int = 0, limit: Optional[int] = None) -> List[dict]:
        return self.requests_page(since, limit)["requests"]

    def requests_page(self, since: int = 0, limit: Optional[int] = None) -> dict:
        """``{"requests": [...], "next": index}``; pass ``next`` as ``since`` to page on."""
        params = {"since": since} if limit is None else {"since": since, "limit": limit}
        return self._call("GET", "/_sim/requests", params=params)

    def counters(self) -> dict:
        return self._call("GET", "/_sim/counters")

    def reset(self) -> None:
        self._call("POST", "/_sim/reset")

    def set_faults(self, **faults) -> dict:
        return self._call("POST", "/_sim/faults", json=faults)

    def clear_faults(self) -> dict:
        return self._call("DELETE", "/_sim/faults")

    def health(self) -> dict:
        return self._call("GET", "/_sim/health")

    def wait_for(self, predicate: Callable[["SimClient"], bool], timeout_seconds: float = 10.0,
                 interval_seconds: float = 0.05) -> None:
        """Poll ``predicate(self)`` until true; TimeoutError after the deadline."""
        deadline = time.monotonic() + timeout_seconds
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout_seconds}s")
            time.sleep(interval_seconds)

    def close(self) -> None:
        self._session.close()
