"""API-key references → keys.

A sync names its Braze REST API key by reference, never by value (DESIGN.md, "The
configuration"):

* ``env:NAME``: the environment variable NAME (local runs, tests);
* ``projects/P/secrets/S/versions/V``: a Google Secret Manager secret version.

Errors name the reference, never the value, and a string that is neither form is not echoed
back (it may be a key pasted where the reference belongs).
"""
from __future__ import annotations

import os
import re
import threading
from typing import Any, Optional

__all__ = ["SecretError", "resolve_api_key", "is_reference", "ENV_PREFIX"]

ENV_PREFIX = "env:"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_VERSION = re.compile(r"projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+")

_client_lock = threading.Lock()
_client: Any = None


class SecretError(Exception):
    """The key could not be read. ``permanent`` is False for errors worth retrying later
    (Secret Manager unavailable, deadline exceeded)."""

    def __init__(self, message: str, permanent: bool = True):
        super().__init__(message)
        self.permanent = permanent


def is_reference(reference: Any) -> bool:
    """True for the two accepted reference forms (the value itself is not checked)."""
    if not isinstance(reference, str):
        return False
    if reference.startswith(ENV_PREFIX):
        return bool(_ENV_NAME.fullmatch(reference[len(ENV_PREFIX):]))
    return bool(_SECRET_VERSION.fullmatch(reference))


def resolve_api_key(reference: str, *, client: Any = None) -> str:
    """Read the key a reference names.

    ``client`` is a Secret Manager client to use instead of the process-wide one (tests).
    Raises ``SecretError`` with a message that names the reference and never the key.
    """
    if not isinstance(reference, str):
        raise SecretError(f"api_key reference must be a string, got {type(reference).__name__}")
    if reference.startswith(ENV_PREFIX):
        name = reference[len(ENV_PREFIX):]
        if not _ENV_NAME.fullmatch(name):
            raise SecretError(f"api_key reference {reference!r}: {name!r} is not an environment variable name")
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"environment variable {name} named by the api_key reference is not set")
        value = value.strip()
        if not value:
            raise SecretError(f"environment variable {name} named by the api_key reference is empty")
        return value
    if _SECRET_VERSION.fullmatch(reference):
        return _access_secret_version(reference, client)
    raise SecretError(
        "api_key must be a reference, env:NAME or projects/P/secrets/S/versions/V; the value given "
        "is neither (it is not shown, in case it is a key)"
    )


def _access_secret_version(name: str, client: Any) -> str:
    from google.api_core import exceptions as gexc  # lazy: only Secret Manager users pay for it

    if client is None:
        client = _default_client()
    try:
        response = client.access_secret_version(name=name)
    except gexc.NotFound:
        raise SecretError(f"secret version {name} does not exist") from None
    except gexc.PermissionDenied:
        raise SecretError(
            f"permission denied reading secret version {name}: the job's service account needs "
            "roles/secretmanager.secretAccessor on the secret"
        ) from None
    except gexc.FailedPrecondition:
        raise SecretError(f"secret version {name} is disabled or destroyed") from None
    except (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError,
            gexc.TooManyRequests, gexc.Unknown) as e:
        raise SecretError(f"Secret Manager unavailable reading {name}: {type(e).__name__}",
                          permanent=False) from None
    except gexc.GoogleAPICallError as e:
        raise SecretError(f"could not read secret version {name}: {type(e).__name__}") from None
    try:
        value = response.payload.data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretError(f"secret version {name} is not UTF-8 text") from None
    if not value:
        raise SecretError(f"secret version {name} is empty")
    return value


def _default_client() -> Any:
    global _client
    with _client_lock:
        if _client is None:
            from google.cloud import secretmanager

            _client = secretmanager.SecretManagerServiceClient()
        return _client


def reset_client(client: Optional[Any] = None) -> None:
    """Replace (or drop) the process-wide Secret Manager client; for tests and stand-ins."""
    global _client
    with _client_lock:
        _client = client
