"""Which URLs a config file may give as a Braze endpoint.

The job sends API keys to this URL, so a typo or a look-alike host must fail the launch, not
leak a key: only the Braze REST hosts are accepted, unless ``allow_insecure`` (the local Braze
simulator). Used by every config file that names an endpoint (syncs and cohorts), so the rule
and its messages are the same in both. No message quotes the URL, which could carry
credentials; only its host is quoted.
"""
from __future__ import annotations

import urllib.parse
from typing import Optional, Tuple

__all__ = ["ALLOWED_ENDPOINTS", "ENDPOINT_FIX", "check_endpoint", "compact_hosts"]

from transforms.braze_facts import REST_HOSTS

# Braze's REST hosts (docs/api-facts.md, B12), the only endpoints accepted by default.
ALLOWED_ENDPOINTS = REST_HOSTS
_ALLOWED_ENDPOINT_SET = frozenset(ALLOWED_ENDPOINTS)


def compact_hosts(endpoints) -> str:
    """The endpoints' hosts, runs of numbered clusters folded: ``rest.iad-01..08.braze.com``."""
    groups: dict = {}  # (cluster letters, domain) -> cluster numbers, in first-seen order
    for endpoint in endpoints:
        host = urllib.parse.urlsplit(endpoint).hostname
        _, cluster, domain = host.split(".", 2)
        letters, _, number = cluster.rpartition("-")
        groups.setdefault((letters, domain), []).append(number)
    parts = []
    for (letters, domain), numbers in groups.items():
        values = [int(n) for n in numbers]
        consecutive = values == list(range(values[0], values[0] + len(values)))
        if len(numbers) > 1 and consecutive:
            parts.append(f"rest.{letters}-{numbers[0]}..{numbers[-1]}.{domain}")
        else:
            parts.extend(f"rest.{letters}-{n}.{domain}" for n in numbers)
    return ", ".join(parts)


# The "how to fix it" tail of every refused-endpoint message.
ENDPOINT_FIX = (
    "use https://<your cluster's REST host>, one of " + compact_hosts(ALLOWED_ENDPOINTS)
    + " (or pass --allow_insecure_endpoints for local testing)"
)


def check_endpoint(value: str, allow_insecure: bool) -> Tuple[Optional[str], Optional[str]]:
    """Returns ``(problem, normalised)``; only the host is ever quoted (the URL may hold credentials)."""
    bare = value[:-1] if value.endswith("/") else value
    if not allow_insecure and bare in _ALLOWED_ENDPOINT_SET:
        return None, bare
    if not allow_insecure and bare.lower() in _ALLOWED_ENDPOINT_SET:
        return f"must be written in lower case: {bare.lower()}", None
    if any(c.isspace() or ord(c) < 32 for c in value):
        return "must not contain spaces or control characters", None
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:
        return "is not a valid URL; " + ENDPOINT_FIX, None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an https URL such as https://rest.iad-01.braze.com; " + ENDPOINT_FIX, None
    if parts.username is not None or parts.password is not None:
        return "must not contain user info (credentials); " + ENDPOINT_FIX, None
    if parts.query or "?" in value:
        return "must not have a query string; " + ENDPOINT_FIX, None
    if parts.fragment or "#" in value:
        return "must not have a fragment; " + ENDPOINT_FIX, None
    if allow_insecure:
        return None, bare
    host = parts.hostname
    if parts.scheme != "https":
        return "must use https; " + ENDPOINT_FIX, None
    if port is not None:
        return "must not have a port; " + ENDPOINT_FIX, None
    if parts.path not in ("", "/"):
        return "must not have a path (the job adds /users/track); " + ENDPOINT_FIX, None
    return f"host {host!r} is not a Braze REST endpoint; " + ENDPOINT_FIX, None
