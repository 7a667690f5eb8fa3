"""Requests to the Braze simulator over real HTTP, as the simulator tests send them.

``sim`` is a started ``BrazeSimulator`` or anything else with ``url`` and ``api_key``, such as an
``Endpoint`` for a simulator run as a subprocess. The fixtures are in ``tests/conftest.py``.
"""
from typing import NamedTuple

import orjson
import requests

TRACK = "/users/track"
EXPORT_IDS = "/users/export/ids"


class Endpoint(NamedTuple):
    """A simulator known only by its address and REST key (one started by the CLI)."""
    url: str
    api_key: str


def post(sim, path, body, key=None, *, auth=True, headers=None, timeout=10, **kwargs) -> requests.Response:
    """POST ``body`` to ``sim.url + path`` as JSON, authorized with ``Bearer <key or sim.api_key>``.

    ``body`` is a JSON value (sent as orjson writes it) or bytes (sent as they are). ``auth=False``
    sends no Authorization header. ``headers`` are applied last, so they can replace either default
    header. Other keyword arguments go to ``requests.post``.
    """
    sent = {"Content-Type": "application/json"}
    if auth:
        sent["Authorization"] = f"Bearer {key or sim.api_key}"
    sent.update(headers or {})
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(sim.url + path, data=data, headers=sent, timeout=timeout, **kwargs)


def track(sim, body, key=None, **kwargs) -> requests.Response:
    """POST /users/track; the keyword arguments are those of ``post``."""
    return post(sim, TRACK, body, key, **kwargs)


def export(sim, body, key=None, **kwargs) -> requests.Response:
    """POST /users/export/ids; the keyword arguments are those of ``post``."""
    return post(sim, EXPORT_IDS, body, key, **kwargs)
