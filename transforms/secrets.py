"""API-key references → keys.

A sync names its Braze REST API key by reference, never by value (``docs/architecture.md``,
"Keys"):

* ``env:NAME``: the environment variable NAME (local runs, tests);
* ``projects/P/secrets/S/versions/V``: a Google Secret Manager secret version.

Errors name the reference, never the value, and a string that is neither form is not echoed
back (it may be a key pasted where the reference belongs).

A key is checked once, when it is read (``resolve_api_key``, ``key_problem``; other secrets,
such as an SMTP password, are read by ``resolve_secret`` without that check): leading and
trailing whitespace is stripped (``echo`` into a secret adds a newline), and a key with
whitespace, a control character or a non-ASCII character inside is refused with a permanent
``SecretError`` that names the reference, the problem and its position, never the key or any
part of it. Such a key cannot be a Braze REST API key (printable ASCII), and sending it would
make ``requests`` quote it in an error (``InvalidHeader``) or fail to encode it at all. Every
secret read, good or refused, is remembered (``transforms.scrub.remember_secret``) so that
every error text, log line and dead letter of the process is scrubbed of it, and reading one
installs the log scrubbing (``transforms.scrub.install_log_scrubbing``).

Local testing only: when ``SECRET_MANAGER_EMULATOR_HOST=host:port`` is set (like
``PUBSUB_EMULATOR_HOST``), the process-wide client talks plain-text gRPC to that address,
anonymously: the local server in ``local/secret_manager.py``. Never set it on Dataflow.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import unicodedata
from typing import Any, Optional

from transforms.scrub import install_log_scrubbing, remember_secret

__all__ = ["SecretError", "resolve_api_key", "resolve_secret", "key_problem", "is_reference", "make_client",
           "reset_client", "ENV_PREFIX", "EMULATOR_HOST_ENV"]

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
    """Read the API key a reference names, checked to be usable as one (``key_problem``).

    ``client`` is a Secret Manager client to use instead of the process-wide one (tests).
    Raises ``SecretError`` with a message that names the reference and never the key.
    """
    return _resolve(reference, client, check_key=True)


def resolve_secret(reference: str, *, client: Any = None) -> str:
    """Read a secret that is not an API key (an SMTP password may hold spaces or non-ASCII
    characters): stripped and remembered for scrubbing like a key, but its characters are not
    checked. Raises ``SecretError`` as ``resolve_api_key`` does."""
    return _resolve(reference, client, check_key=False)


def _resolve(reference: str, client: Any, check_key: bool) -> str:
    if not isinstance(reference, str):
        raise SecretError(f"api_key reference must be a string, got {type(reference).__name__}")
    if reference.startswith(ENV_PREFIX):
        name = reference[len(ENV_PREFIX):]
        if not _ENV_NAME.fullmatch(name):
            raise SecretError(f"api_key reference {reference!r}: {name!r} is not an environment variable name")
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"environment variable {name} named by the api_key reference is not set")
        return _checked(value, f"environment variable {name} named by the api_key reference", check_key)
    if _SECRET_VERSION.fullmatch(reference):
        return _checked(_access_secret_version(reference, client), f"secret version {reference}", check_key)
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
        return payload.data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"secret version {name} is not UTF-8 text") from None


def key_problem(key: str) -> Optional[str]:
    """What makes ``key`` (already stripped) unusable as an API key, or None.

    The answer names the kind of character and its position (from 1), never the character:
    "contains a line break at position 17". Used where keys are read (here) and again by
    ``transforms.braze_client.BrazeClient`` for keys that come from elsewhere."""
    if not isinstance(key, str):
        return f"is not text ({type(key).__name__})"
    if not key:
        return "is empty"
    for position, char in enumerate(key, start=1):
        if " " < char < "\x7f":
            continue  # printable ASCII: the common case
        if char in "\r\n\u2028\u2029\x85":
            kind = "a line break"
        elif char == "\t":
            kind = "a tab"
        elif char == " ":
            kind = "a space"
        elif unicodedata.category(char) == "Cc":
            kind = "a control character"
        elif char.isspace():
            kind = "a whitespace character"
        else:
            kind = "a non-ASCII character"
        return f"contains {kind} at position {position}"
    return None


def _checked(raw: str, where: str, check_key: bool = True) -> str:
    """``raw`` without surrounding whitespace, if it is usable as a key; remembered for scrubbing
    either way (a refused key is still a secret someone meant to keep)."""
    remember_secret(raw)
    value = raw.strip()
    remember_secret(value)
    install_log_scrubbing()
    if not value:
        raise SecretError(f"{where} is empty")
    problem = key_problem(value) if check_key else None
    if problem is not None:
        raise SecretError(
            f"{where}: the key {problem} (after removing leading and trailing whitespace); a Braze "
            "REST API key is printable ASCII without spaces, so store it again without that "
            "character. Nothing was sent with it")
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
