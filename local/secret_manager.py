"""A local Secret Manager: a gRPC server speaking ``google.cloud.secretmanager.v1``.

The real client (google-cloud-secret-manager) talks to it over a plain-text channel, so tests
and local runs exercise the same client, request and response types and error mapping as
production; only the server is ours. It answers as the real API does where our code cares:

* ``AccessSecretVersion``: the payload (with ``data_crc32c``); ``NOT_FOUND`` for an unknown
  secret or version; ``PERMISSION_DENIED`` for a secret marked denied (as for a service
  account without ``roles/secretmanager.secretAccessor``); ``FAILED_PRECONDITION`` for a
  DISABLED or DESTROYED version. ``versions/latest`` is the most recently added version.
* ``CreateSecret``, ``AddSecretVersion``, ``GetSecretVersion``, ``DisableSecretVersion``,
  ``EnableSecretVersion``, ``DestroySecretVersion``: enough to rotate a key the way an
  operator does. Other methods answer ``UNIMPLEMENTED``. No IAM, no replication, no etags.

Use from Python::

    with LocalSecretManager() as sm:
        version = sm.add_version("projects/p/secrets/braze-key", "the-key")   # .../versions/1
        os.environ["SECRET_MANAGER_EMULATOR_HOST"] = sm.address              # for workers
        client = sm.client()                                                  # the real client

or by hand (values come from environment variables, so they stay out of ``ps``)::

    BRAZE_KEY=... python -m local.secret_manager --port 8086 \\
        --secret projects/local/secrets/braze-key=env:BRAZE_KEY
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import sys
import threading
import time
from concurrent import futures
from typing import Callable, Dict, List, Optional, Union

import grpc
from google.cloud.secretmanager_v1 import types as sm_types
from google.protobuf import timestamp_pb2

__all__ = ["LocalSecretManager", "SERVICE", "ENABLED", "DISABLED", "DESTROYED"]

SERVICE = "google.cloud.secretmanager.v1.SecretManagerService"

State = sm_types.SecretVersion.State
ENABLED, DISABLED, DESTROYED = State.ENABLED, State.DISABLED, State.DESTROYED

_SECRET_RE = re.compile(r"projects/([^/\s]+)/secrets/([A-Za-z0-9_-]{1,255})")
_VERSION_RE = re.compile(r"(projects/[^/\s]+/secrets/[A-Za-z0-9_-]{1,255})/versions/([^/\s]+)")


class _RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass
class _Version:
    number: int
    data: bytes
    state: int
    create_time: float
    destroy_time: Optional[float] = None


@dataclasses.dataclass
class _Secret:
    name: str
    create_time: float
    versions: Dict[int, _Version] = dataclasses.field(default_factory=dict)
    denied: bool = False


def _timestamp(seconds: Optional[float]):
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class LocalSecretManager:
    """Secrets and their versions in a dict, served over gRPC on 127.0.0.1.

    ``accesses`` lists every version name asked for by ``AccessSecretVersion`` (as asked,
    e.g. ``.../versions/latest``), so a test can count reads. ``on_access``, if set, is called
    with that name after each answer has been decided (a test uses it to rotate a key between
    two reads).
    """

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self._port: Optional[int] = None
        self._server: Optional[grpc.Server] = None
        self._lock = threading.Lock()
        self._secrets: Dict[str, _Secret] = {}
        self.accesses: List[str] = []
        self.on_access: Optional[Callable[[str], None]] = None

    # ----------------------------------------------------------------------------------------
    # Lifecycle

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the local Secret Manager is not started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port``, the value for SECRET_MANAGER_EMULATOR_HOST."""
        return f"{self.host}:{self.port}"

    def start(self, port: int = 0) -> "LocalSecretManager":
        if self._server is not None:
            return self
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="local-secret-manager"))
        server.add_generic_rpc_handlers((self._handler(),))
        bound = server.add_insecure_port(f"{self.host}:{port}")
        if not bound:
            raise OSError(f"could not bind {self.host}:{port}")
        server.start()
        self._server, self._port = server, bound
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0).wait(5)
            self._server = None

    def __enter__(self) -> "LocalSecretManager":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self):
        """A real ``SecretManagerServiceClient`` connected to this server."""
        from transforms.secrets import make_client

        return make_client(self.address)

    # ----------------------------------------------------------------------------------------
    # Direct control (no gRPC), for tests and the CLI

    def create_secret(self, secret: str, *, denied: bool = False) -> str:
        """Create ``projects/P/secrets/S`` (no versions yet); an existing one is kept."""
        _check_secret_name(secret)
        with self._lock:
            entry = self._secrets.setdefault(secret, _Secret(secret, time.time()))
            entry.denied = entry.denied or denied
        return secret

    def add_version(self, secret: str, data: Union[str, bytes], state: int = ENABLED) -> str:
        """Add a version (creating the secret if needed); returns ``.../versions/N``."""
        self.create_secret(secret)
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        with self._lock:
            return self._add_version_locked(secret, raw, State(state))

    def set_state(self, version: str, state: int) -> None:
        """Set a version's state (ENABLED, DISABLED or DESTROYED; a destroyed one stays so)."""
        with self._lock:
            entry = self._version_locked(version)
            self._set_state_locked(entry, State(state))

    def deny(self, secret: str, denied: bool = True) -> None:
        """Answer PERMISSION_DENIED for every read of this secret (or stop doing so)."""
        self.create_secret(secret)
        with self._lock:
            self._secrets[secret].denied = denied

    def reset(self) -> None:
        with self._lock:
            self._secrets.clear()
            self.accesses.clear()
        self.on_access = None

    # ----------------------------------------------------------------------------------------
    # The model (callers hold the lock)

    def _add_version_locked(self, secret: str, raw: bytes, state: State) -> str:
        entry = self._secrets[secret]
        number = max(entry.versions, default=0) + 1
        now = time.time()
        entry.versions[number] = _Version(number, b"" if state == DESTROYED else raw, state, now,
                                          now if state == DESTROYED else None)
        return f"{secret}/versions/{number}"

    def _secret_locked(self, secret: str) -> _Secret:
        entry = self._secrets.get(secret)
        if entry is None:
            raise _RpcError(grpc.StatusCode.NOT_FOUND, f"Secret [{secret}] not found.")
        return entry

    def _version_locked(self, version: str, *, check_access: bool = False) -> _Version:
        match = _VERSION_RE.fullmatch(version or "")
        if not match:
            raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"Invalid resource field value in the request: name {version!r}")
        secret, wanted = match.groups()
        entry = self._secrets.get(secret)
        if check_access and entry is not None and entry.denied:
            # An unknown secret is NOT_FOUND below: the caller is taken to hold the accessor
            # role on the project (without it, the real API answers this for both).
            raise _RpcError(grpc.StatusCode.PERMISSION_DENIED,
                            f"Permission 'secretmanager.versions.access' denied for resource "
                            f"'{version}' (or it may not exist).")
        if entry is None:
            raise _RpcError(grpc.StatusCode.NOT_FOUND, f"Secret [{secret}] not found or has no versions.")
        if wanted == "latest":
            if not entry.versions:
                raise _RpcError(grpc.StatusCode.NOT_FOUND, f"Secret [{secret}] not found or has no versions.")
            return entry.versions[max(entry.versions)]
        if not wanted.isdigit() or int(wanted) not in entry.versions:
            raise _RpcError(grpc.StatusCode.NOT_FOUND, f"Secret Version [{version}] not found.")
        return entry.versions[int(wanted)]

    @staticmethod
    def _set_state_locked(entry: _Version, state: State) -> None:
        if entry.state == DESTROYED and state != DESTROYED:
            raise _RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                            f"Secret Version [{entry.number}] is in DESTROYED state.")
        if state == DESTROYED and entry.state != DESTROYED:
            entry.data, entry.destroy_time = b"", time.time()
        entry.state = state

    def _version_message(self, secret: str, entry: _Version) -> sm_types.SecretVersion:
        return sm_types.SecretVersion(
            name=f"{secret}/versions/{entry.number}", state=entry.state,
            create_time=_timestamp(entry.create_time), destroy_time=_timestamp(entry.destroy_time))

    # ----------------------------------------------------------------------------------------
    # RPCs

    def _access(self, request: sm_types.AccessSecretVersionRequest) -> sm_types.AccessSecretVersionResponse:
        name = request.name
        try:
            with self._lock:
                self.accesses.append(name)
                entry = self._version_locked(name, check_access=True)
                secret = _VERSION_RE.fullmatch(name).group(1)
                if entry.state != ENABLED:
                    raise _RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"Secret Version [{secret}/versions/{entry.number}] is in "
                                    f"{State(entry.state).name} state.")
                data = entry.data
                resolved = f"{secret}/versions/{entry.number}"
        finally:
            hook = self.on_access
            if hook is not None:
                hook(name)
        import google_crc32c

        return sm_types.AccessSecretVersionResponse(
            name=resolved, payload=sm_types.SecretPayload(data=data, data_crc32c=int(google_crc32c.value(data))))

    def _create_secret(self, request: sm_types.CreateSecretRequest) -> sm_types.Secret:
        if not re.fullmatch(r"projects/[^/\s]+", request.parent or "") or not re.fullmatch(
                r"[A-Za-z0-9_-]{1,255}", request.secret_id or ""):
            raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "parent and secret_id are required")
        name = f"{request.parent}/secrets/{request.secret_id}"
        with self._lock:
            if name in self._secrets:
                raise _RpcError(grpc.StatusCode.ALREADY_EXISTS, f"Secret [{name}] already exists.")
            entry = self._secrets[name] = _Secret(name, time.time())
        return sm_types.Secret(name=name, create_time=_timestamp(entry.create_time))

    def _add_secret_version(self, request: sm_types.AddSecretVersionRequest) -> sm_types.SecretVersion:
        with self._lock:
            self._secret_locked(request.parent)
            version = self._add_version_locked(request.parent, bytes(request.payload.data), ENABLED)
            entry = self._version_locked(version)
            return self._version_message(request.parent, entry)

    def _get_version(self, request: sm_types.GetSecretVersionRequest) -> sm_types.SecretVersion:
        with self._lock:
            entry = self._version_locked(request.name)
            return self._version_message(_VERSION_RE.fullmatch(request.name).group(1), entry)

    def _state_change(self, state: State):
        def change(request) -> sm_types.SecretVersion:
            with self._lock:
                entry = self._version_locked(request.name)
                self._set_state_locked(entry, state)
                return self._version_message(_VERSION_RE.fullmatch(request.name).group(1), entry)
        return change

    def _handler(self) -> grpc.GenericRpcHandler:
        def unary(fn, request_type, response_type):
            def behaviour(request, context: grpc.ServicerContext):
                try:
                    return fn(request)
                except _RpcError as e:
                    context.abort(e.code, e.message)
            return grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=request_type.deserialize,
                response_serializer=response_type.serialize)

        t = sm_types
        return grpc.method_handlers_generic_handler(SERVICE, {
            "AccessSecretVersion": unary(self._access, t.AccessSecretVersionRequest, t.AccessSecretVersionResponse),
            "CreateSecret": unary(self._create_secret, t.CreateSecretRequest, t.Secret),
            "AddSecretVersion": unary(self._add_secret_version, t.AddSecretVersionRequest, t.SecretVersion),
            "GetSecretVersion": unary(self._get_version, t.GetSecretVersionRequest, t.SecretVersion),
            "DisableSecretVersion": unary(self._state_change(DISABLED), t.DisableSecretVersionRequest, t.SecretVersion),
            "EnableSecretVersion": unary(self._state_change(ENABLED), t.EnableSecretVersionRequest, t.SecretVersion),
            "DestroySecretVersion": unary(self._state_change(DESTROYED), t.DestroySecretVersionRequest, t.SecretVersion),
        })


def _check_secret_name(secret: str) -> None:
    if not isinstance(secret, str) or not _SECRET_RE.fullmatch(secret):
        raise ValueError(f"a secret name looks like projects/P/secrets/S, got {secret!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.secret_manager",
                                     description="A local Secret Manager (gRPC, plain text) for local runs.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--secret", action="append", default=[], metavar="projects/P/secrets/S=env:VAR",
                        help="add a version of secret S holding the value of environment variable VAR "
                        "(repeatable; repeat a secret to add more versions)")
    args = parser.parse_args(argv)
    server = LocalSecretManager()
    for spec in args.secret:
        secret, sep, source = spec.partition("=")
        if not sep or not source.startswith("env:") or source[4:] not in os.environ:
            parser.error(f"--secret {secret}=env:VAR with VAR set in the environment")
        try:
            version = server.add_version(secret, os.environ[source[4:]])
        except ValueError as e:
            parser.error(str(e))
        print(f"added {version}", flush=True)
    server.start(args.port)
    print(f"export SECRET_MANAGER_EMULATOR_HOST={server.address}", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
