"""API-key references → keys.

A sync names its Braze REST API key by reference, never by value (DESIGN.md, "The
configuration"):

* ``env:NAME``: the environment variable NAME (local runs, tests);
* ``projects/P/secrets/S/versions/V``: a Google Secret Manager secret version.

Errors name the reference, never the value, and a string that is neither form is not echoed
back (it may be a key pasted where the reference belongs).

Local testing only: when ``SECRET_MANAGER_EMULATOR_HOST=host:port`` is set (like
``PUBSUB_EMULATOR_HOST``), the process-wide client talks plain-text gRPC to that address,
anonymously: the local server in ``local/secret_manager.py``. Never set it on Dataflow.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Optional

__all__ = ["SecretError", "resolve_api_key", "is_reference", "make_client", "reset_client", "ENV_PREFIX",
           "EMULATOR_HOST_ENV"]

_LOG = logging.getLogger(__name__)

ENV_PREFIX = "env:"
# Local testing only (see the module docstring).
EMULATOR_HOST_ENV = "SECRET_MANAGER_EMULATOR_HOST"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_VERSION = re.compile(r"projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+")

# One Secret Manager read: each attempt's timeout, and the total time spent retrying.
ACCESS_TIMEOUT_SECONDS = 10.0
ACCESS_RETRY_SECONDS = 20.0

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

    from google.api_core import retry as gretry

    if client is None:
        client = _default_client()
    # The client's default policy retries UNAVAILABLE for up to 60 s; the sink has its own
    # retry budget, so one read gives up sooner and says so as a temporary SecretError.
    retry = gretry.Retry(initial=0.5, maximum=4.0, multiplier=2.0, timeout=ACCESS_RETRY_SECONDS,
                         predicate=gretry.if_exception_type(gexc.ServiceUnavailable, gexc.TooManyRequests))
    try:
        response = client.access_secret_version(name=name, retry=retry, timeout=ACCESS_TIMEOUT_SECONDS)
    except gexc.RetryError as e:
        cause = type(e.cause).__name__ if e.cause is not None else "retries exhausted"
        raise SecretError(f"Secret Manager unavailable reading {name}: {cause}", permanent=False) from None
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
    payload = response.payload
    expected_crc = getattr(payload, "data_crc32c", None)
    actual_crc = _crc32c(payload.data) if expected_crc else None
    if actual_crc is not None and actual_crc != expected_crc:
        # Google's access samples check this; a mismatch is corruption in transit.
        raise SecretError(f"secret version {name}: payload checksum mismatch", permanent=False)
    try:
        value = payload.data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretError(f"secret version {name} is not UTF-8 text") from None
    if not value:
        raise SecretError(f"secret version {name} is empty")
    return value


def _crc32c(data: bytes) -> Optional[int]:
    """CRC32C of ``data``, or None when google-crc32c is missing (it comes with
    apache-beam[gcp], through google-cloud-storage; the check is then skipped)."""
    try:
        import google_crc32c
    except ImportError:
        return None
    return int(google_crc32c.value(bytes(data)))


def make_client(emulator_host: Optional[str] = None) -> Any:
    """A real ``SecretManagerServiceClient``: Google's (default credentials), or, given
    ``host:port``, one speaking plain-text gRPC to a local stand-in without credentials."""
    from google.cloud import secretmanager

    if not emulator_host:
        return secretmanager.SecretManagerServiceClient()
    import grpc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
        SecretManagerServiceGrpcTransport,
    )

    transport = SecretManagerServiceGrpcTransport(
        host=emulator_host, credentials=AnonymousCredentials(), channel=grpc.insecure_channel(emulator_host))
    return secretmanager.SecretManagerServiceClient(transport=transport)


def _default_client() -> Any:
    global _client
    with _client_lock:
        if _client is None:
            host = os.environ.get(EMULATOR_HOST_ENV, "").strip()
            if host:
                _LOG.warning("%s=%s: reading secrets from a local Secret Manager stand-in "
                             "(local testing only)", EMULATOR_HOST_ENV, host)
            _client = make_client(host or None)
        return _client


def reset_client(client: Optional[Any] = None) -> None:
    """Replace (or drop) the process-wide Secret Manager client; for tests and stand-ins."""
    global _client
    with _client_lock:
        _client = client
