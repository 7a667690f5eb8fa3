"""``AmplitudeSimClient``: the stand-in's /_sim/ control and inspection API over HTTP."""
from __future__ import annotations

from typing import Iterable, List, Optional

import requests


class AmplitudeSimClient:
    def __init__(self, url: str, timeout_seconds: float = 10.0):
        self.url = url.rstrip("/")
        self._session = requests.Session()
        self._timeout = timeout_seconds

    def _call(self, method: str, path: str, **kwargs):
        r = self._session.request(method, self.url + path, timeout=self._timeout, **kwargs)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r.json()

    def set_cohort(self, cohort_id: str, name: str, members: Iterable[dict], size: Optional[int] = None) -> dict:
        """Replace a cohort's members: ``[{"amplitude_id": 1, "user_id": "u1", "device_id": "d1"}]``."""
        body = {"name": name, "members": list(members)}
        if size is not None:
            body["size"] = size
        return self._call("PUT", f"/_sim/cohorts/{cohort_id}", json=body)

    def set_faults(self, **faults) -> dict:
        return self._call("POST", "/_sim/faults", json=faults)

    def clear_faults(self) -> dict:
        return self._call("POST", "/_sim/faults", json={})

    def reset(self) -> dict:
        return self._call("POST", "/_sim/reset")

    def requests(self) -> List[dict]:
        return self._call("GET", "/_sim/requests")["requests"]

    def usage(self) -> dict:
        return self._call("GET", "/_sim/usage")

    def close(self) -> None:
        self._session.close()
