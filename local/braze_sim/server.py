"""The HTTP side: a threaded HTTP/1.1 keep-alive server and the ``BrazeSimulator`` handle.

A Braze request goes through, in order: faults, API key (401), the key's permission for the
endpoint (403, only for keys given ``key_permissions``), rate limit (429),
Content-Type (415), size (413), JSON (400), then the endpoint in ``endpoints.py``. It is
logged and counted before the answer is written, so a client that has its answer can read
the outcome from /_sim/ at once.
"""
from __future__ import annotations

import http
import re
import secrets
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable, Optional

import orjson

from local.braze_sim import endpoints, sim_api
from local.braze_sim.faults import Faults
from local.braze_sim.ratelimit import RateLimiter
from local.braze_sim.requestlog import RequestLog
from local.braze_sim.state import Store

MAX_BODY_BYTES = 4 * 1024 * 1024
_DRAIN_LIMIT_BYTES = 64 * 1024 * 1024  # larger bodies are refused unread, and the connection closed
_PARTNER_PATH = re.compile(r"/partners/([^/]+)/cohorts(/users)?")
_USER_ENDPOINTS = {"/users/track": "track", "/users/alias/new": "alias", "/users/identify": "identify",
                   "/users/export/ids": "export"}
# The REST key permission each endpoint needs (docs/api-facts.md, B1, B13; users.export.ids
# as the README's cohort lookups name it).
PERMISSIONS = {"track": "users.track", "alias": "users.alias.new", "identify": "users.identify",
               "export": "users.export.ids"}
PARSE_ERROR = "Error while parsing request body. Please check your syntax."
LIMIT_MODES = ("combined", "per-type")


class BrazeSimulator:
    """A strict Braze REST simulator on 127.0.0.1, run in a background thread.

    ``rate_limit`` requests per ``rate_window_seconds`` apply to /users/track per API key;
    the alias and identify endpoints share ``alias_rate_limit`` per ``alias_rate_window_seconds``
    (Braze: 20,000 a minute, apart from /users/track's limit); /users/export/ids has
    ``export_rate_limit`` per ``export_rate_window_seconds`` (Braze: 250 a minute for accounts
    onboarded on or after 2024-08-22). Keys, partner keys and client secrets default to one
    generated value each. ``key_permissions``: key → the permissions it has (``users.track``,
    ``users.identify``, ...); such a key gets Braze's 403 "Access Denied" from an endpoint it
    lacks the permission for (docs/api-facts.md, B10). Other keys may call every endpoint.
    """

    def __init__(self, api_keys: Optional[Iterable[str]] = None, object_limit_mode: str = "combined",
                 rate_limit: int = 3000, rate_window_seconds: float = 3.0,
                 partner_api_keys: Optional[Iterable[str]] = None,
                 client_secrets: Optional[Iterable[str]] = None,
                 export_rate_limit: int = 250, export_rate_window_seconds: float = 60.0,
                 alias_rate_limit: int = 20_000, alias_rate_window_seconds: float = 60.0,
                 max_log_entries: int = 200_000, max_log_body_bytes: int = 256 * 1024 * 1024,
                 key_permissions: Optional[dict] = None):
        if object_limit_mode not in LIMIT_MODES:
            raise ValueError(f"object_limit_mode must be one of {LIMIT_MODES}, got {object_limit_mode!r}")
        self.api_keys = list(api_keys) if api_keys else [secrets.token_hex(16)]
        self.partner_api_keys = list(partner_api_keys) if partner_api_keys else [secrets.token_hex(16)]
        self.client_secrets = list(client_secrets) if client_secrets else [secrets.token_hex(16)]
        self.object_limit_mode = object_limit_mode
        self.rate_limit = rate_limit
        self.rate_window_seconds = rate_window_seconds
        self.store = Store()
        self.request_log = RequestLog(max_log_entries, max_log_body_bytes)
        self.faults = Faults()
        self.track_limiter = RateLimiter(rate_limit, rate_window_seconds)
        self.alias_limiter = RateLimiter(alias_rate_limit, alias_rate_window_seconds)
        self.export_limiter = RateLimiter(export_rate_limit, export_rate_window_seconds)
        self._key_set = frozenset(self.api_keys)
        self.key_permissions = {k: frozenset(v) for k, v in (key_permissions or {}).items()}
        self._stopping = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def api_key(self) -> str:
        return self.api_keys[0]

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> "BrazeSimulator":
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", port), self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="braze-sim",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close open keep-alive connections; wakes hung requests."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> "BrazeSimulator":
        return self if self._server is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self):
        from local.braze_sim.client import SimClient
        return SimClient(self.url)

    def reset(self) -> None:
        with self.store.lock:
            self.store.reset()
            self.request_log.clear()
        self.faults.clear()
        self.track_limiter.reset()
        self.alias_limiter.reset()
        self.export_limiter.reset()

    def limiter(self, endpoint: Optional[str]) -> RateLimiter:
        """The rate limiter of a /users/... endpoint ("track", "export", or the alias group)."""
        if endpoint == "track":
            return self.track_limiter
        return self.export_limiter if endpoint == "export" else self.alias_limiter

    def record(self, path, status, received_at, objects=None, body=None, fault=None) -> None:
        with self.store.lock:
            self.store.count_request(status)
            self.request_log.add(path, status, received_at, objects, body, fault)

    def wait(self, seconds: float) -> None:
        """Sleep that ends early when the simulator stops (latency and hang faults)."""
        self._stopping.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256

    def __init__(self, address, sim: BrazeSimulator):
        self.sim = sim
        self._connections: set = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "braze-sim"

    def setup(self):
        super().setup()
        self.server.track(self.connection, True)

    def finish(self):
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format, *args):
        pass  # quiet, and no header can ever reach a log line

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")

    # -- plumbing -------------------------------------------------------------------------------

    def _send(self, status: int, payload, headers: Optional[dict] = None, close: bool = False) -> None:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
                 "Content-Type: application/json", f"Content-Length: {len(body)}"]
        if headers:
            lines.extend(f"{name}: {value}" for name, value in headers.items())
        if close:
            lines.append("Connection: close")
            self.close_connection = True
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _read_body(self):
        """(bytes, None) or (None, (status, message)) for a body that cannot be read."""
        if self.headers.get("Transfer-Encoding"):
            return None, (411, "send the body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None, (400, "bad Content-Length")
        if length < 0:
            return None, (400, "bad Content-Length")
        if length > _DRAIN_LIMIT_BYTES:
            return None, (413, "Request Entity Too Large")
        return self.rfile.read(length) if length else b"", None

    def _dispatch(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        raw, problem = self._read_body()
        if problem:
            self._send(problem[0], {"message": problem[1]}, close=True)
            return
        if path.startswith("/_sim/"):
            self._sim_route(method, path, query, raw)
        else:
            self._braze(method, path, raw)

    def _sim_route(self, method: str, path: str, query: str, raw: bytes) -> None:
        route = sim_api.ROUTES.get((method, path))
        if route is None:
            known = any(p == path for _, p in sim_api.ROUTES)
            self._send(405 if known else 404, {"message": "Method Not Allowed" if known else "Not Found"})
            return
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            self._send(400, {"message": PARSE_ERROR})
            return
        status, payload = route(self.server.sim, urllib.parse.parse_qs(query), body)
        self._send(status, payload)

    # -- Braze endpoints ---------------------------------------------------------------------

    def _braze(self, method: str, path: str, raw: bytes) -> None:
        sim: BrazeSimulator = self.server.sim
        received_at = time.time()
        endpoint = _USER_ENDPOINTS.get(path)
        partner = _PARTNER_PATH.fullmatch(path)
        headers = sim.limiter(endpoint).peek(received_at) if partner is None else {}
        if endpoint is None and partner is None:
            sim.record(path, 404, received_at)
            self._send(404, {"message": "Not Found"}, headers)
            return
        if method != "POST":
            sim.record(path, 405, received_at)
            self._send(405, {"message": "Method Not Allowed"}, headers)
            return
        latency = sim.faults.latency_seconds()
        if latency:
            sim.wait(latency)
        fault = sim.faults.decide(raw)
        if fault and fault[0] != "apply_then_error":
            self._fault(sim, path, received_at, raw, fault, headers)
            return
        if endpoint:
            status, payload, headers, objects, log_body = self._users(sim, endpoint, raw, received_at)
        else:
            status, payload, objects, log_body = self._partner(sim, partner.group(1),
                                                               bool(partner.group(2)), raw)
        fault_name = None
        if fault and status < 300:  # applied; now answer as if it failed
            status, payload, fault_name = 500, {"message": "Internal Server Error"}, "apply_then_error"
        sim.record(path, status, received_at, objects, log_body, fault_name)
        self._send(status, payload, headers)

    def _fault(self, sim, path, received_at, raw, fault, headers) -> None:
        kind, detail = fault
        body = _loggable(raw, path)
        if kind == "drop":
            sim.record(path, None, received_at, None, body, "drop")
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if kind == "hang":
            status, payload = 504, {"message": "Gateway Timeout"}
        elif kind == "burst":
            status, payload = 429, {"message": "Rate limit exceeded"}
            headers = {**headers, "X-RateLimit-Remaining": "0", "Retry-After": str(detail)}
        else:
            status, payload = detail, {"message": http.HTTPStatus(detail).phrase}
        sim.record(path, status, received_at, None, body, kind)  # before a hang, so tests see it at once
        if kind == "hang":
            sim.wait(detail)
        try:
            self._send(status, payload, headers)
        except OSError:
            self.close_connection = True  # the client gave up waiting (hang)

    def _users(self, sim: BrazeSimulator, endpoint: str, raw: bytes, received_at: float):
        limiter = sim.limiter(endpoint)
        auth = self.headers.get("Authorization") or ""
        key = auth[7:] if auth.startswith("Bearer ") else None
        if key not in sim._key_set:
            return 401, {"message": "Invalid API Key"}, limiter.peek(received_at), None, _loggable(raw)
        permissions = sim.key_permissions.get(key)
        if permissions is not None and PERMISSIONS[endpoint] not in permissions:
            return 403, {"message": "Access Denied"}, limiter.peek(received_at), None, _loggable(raw)
        allowed, headers = limiter.hit(key, received_at)
        if not allowed:
            return 429, {"message": "Rate limit exceeded"}, headers, None, _loggable(raw)
        body, error = self._parse_body(raw)
        if error:
            return error[0], {"message": error[1]}, headers, None, _loggable(raw)
        objects = None
        if endpoint == "track":
            objects = _object_counts(body)
            status, payload = endpoints.users_track(sim.store, body, sim.object_limit_mode, received_at)
        elif endpoint == "alias":
            status, payload = endpoints.alias_new(sim.store, body)
        elif endpoint == "export":
            status, payload = endpoints.export_ids(sim.store, body)
        else:
            status, payload = endpoints.identify(sim.store, body)
        return status, payload, headers, objects, raw

    def _partner(self, sim: BrazeSimulator, partner: str, is_users: bool, raw: bytes):
        body, error = self._parse_body(raw)
        if error:
            return error[0], {"message": error[1]}, None, _loggable(raw, "/partners")
        log_body = orjson.dumps(endpoints.redact_partner_body(body))
        refused = endpoints.partner_auth(body, sim.partner_api_keys, sim.client_secrets)
        if refused:
            return refused[0], refused[1], None, log_body
        if is_users:
            status, payload = endpoints.cohort_users(sim.store, body)
        else:
            status, payload = endpoints.cohort_name(sim.store, partner, body)
        return status, payload, None, log_body

    def _parse_body(self, raw: bytes):
        """(body, None), or (None, (status, message)) for a wrong Content-Type, a body over
        4 MB or bad JSON."""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return None, (415, "Content-Type must be application/json")
        if len(raw) > MAX_BODY_BYTES:
            return None, (413, "Request Entity Too Large")
        try:
            return orjson.loads(raw), None
        except orjson.JSONDecodeError:
            return None, (400, PARSE_ERROR)


def _loggable(raw: bytes, path: str = "") -> Optional[bytes]:
    """The body to keep in the log: valid JSON only, partner secrets redacted, ≤ 4 MB."""
    if not raw or len(raw) > MAX_BODY_BYTES:
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if path.startswith("/partners"):
        return orjson.dumps(endpoints.redact_partner_body(body))
    return raw


def _object_counts(body) -> Optional[dict]:
    if not isinstance(body, dict):
        return None
    return {name: len(body[name]) if isinstance(body.get(name), list) else 0
            for name in endpoints.ARRAYS}
