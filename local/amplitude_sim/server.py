"""A local stand-in for Amplitude's Behavioral Cohorts download API (docs/api-facts.md, A7).

A real HTTP server on 127.0.0.1, like the Braze simulator, answering:

* ``GET /api/3/cohorts``: the cohorts it holds, with ``id``, ``name`` and ``size``;
* ``GET /api/5/cohorts/request/<cohort_id>``: 202 ``{request_id, cohort_id}``; the membership is
  taken at this moment, and the call counts against the monthly budget;
* ``GET /api/5/cohorts/request-status/<request_id>``: 202 ``JOB INPROGRESS`` until the job has
  run ``job_seconds``, then 200 ``JOB COMPLETED``;
* ``GET /api/5/cohorts/request/<request_id>/file``: the CSV in the body, or (``redirect``) a 302
  to ``/_s3/<token>``, a link that works for ``link_seconds`` like the pre-signed S3 one.

The file is what Amplitude's own artifacts show: a quoted CSV with a header,
``"amplitude_id","user_id"`` (plus ``"device_id"`` with ``device_id_column``), an empty
``user_id`` for users who have none, and (``tab_prefix``) each value behind a tab character.

Limits, as docs/api-facts.md (A7) gives them: HTTP Basic auth (401 otherwise); ``max_concurrent``
requests at once (429 "concurrent"); ``requests_per_10_minutes`` download requests (429
"10 minutes"); ``monthly_budget`` download requests (429 "monthly"; Amplitude's answer for an
exhausted budget is unconfirmed); a cohort over ``max_cohort_size`` (400 "too large";
unconfirmed too). Faults (``/_sim/faults``): ``rate_limit_next`` (the next n requests answer
429 with ``Retry-After``), ``server_error_next`` (503), ``never_complete`` (jobs stay in
progress), ``expire_links`` (the S3 link answers 403).

Control and inspection under ``/_sim/`` (no auth): ``PUT /_sim/cohorts/<id>`` with
``{"name", "members": [{"amplitude_id", "user_id", "device_id"}], "size"}`` (``size`` overrides
what the list reports), ``POST /_sim/faults``, ``POST /_sim/reset``, ``GET /_sim/requests``,
``GET /_sim/usage``.
"""
from __future__ import annotations

import base64
import csv
import io
import re
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import orjson

__all__ = ["AmplitudeSimulator"]

_REQUEST = re.compile(r"/api/5/cohorts/request/([^/]+)")
_STATUS = re.compile(r"/api/5/cohorts/request-status/([^/]+)")
_FILE = re.compile(r"/api/5/cohorts/request/([^/]+)/file")
_S3 = re.compile(r"/_s3/([^/]+)")
_COHORT = re.compile(r"/_sim/cohorts/([^/]+)")
FAULT_KEYS = ("rate_limit_next", "server_error_next", "never_complete", "expire_links", "retry_after_seconds")


class AmplitudeSimulator:
    def __init__(self, api_key: Optional[str] = None, secret_key: Optional[str] = None, *,
                 job_seconds: float = 0.2, link_seconds: float = 60.0, redirect: bool = True,
                 tab_prefix: bool = True, device_id_column: bool = False, max_concurrent: int = 5,
                 requests_per_10_minutes: int = 60, monthly_budget: int = 500, max_cohort_size: int = 2_000_000):
        self.api_key = api_key or secrets.token_hex(16)
        self.secret_key = secret_key or secrets.token_hex(16)
        self.job_seconds = job_seconds
        self.link_seconds = link_seconds
        self.redirect = redirect
        self.tab_prefix = tab_prefix
        self.device_id_column = device_id_column
        self.max_concurrent = max_concurrent
        self.requests_per_10_minutes = requests_per_10_minutes
        self.monthly_budget = monthly_budget
        self.max_cohort_size = max_cohort_size
        self.lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.cohorts: dict = {}
            self.jobs: dict = {}
            self.links: dict = {}
            self.log: list = []
            self.faults: dict = {}
            self.download_requests: list = []  # times of step-1 calls (the budget and the 10-minute limit)
            self.in_flight = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, port: int = 0) -> "AmplitudeSimulator":
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.sim = self
        threading.Thread(target=self._server.serve_forever, name="amplitude-sim", daemon=True,
                         kwargs={"poll_interval": 0.1}).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "AmplitudeSimulator":
        return self if self._server is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def client(self):
        from local.amplitude_sim.client import AmplitudeSimClient
        return AmplitudeSimClient(self.url)

    # -- the API ----------------------------------------------------------------------------

    def answer(self, path: str, authorization: str) -> tuple:
        """``(status, body, headers)`` for one API request (the handler writes it)."""
        with self.lock:
            if self.faults.get("rate_limit_next", 0) > 0:
                self.faults["rate_limit_next"] -= 1
                return 429, {"error": "Too many concurrent requests (simulated)"}, self._retry_after()
            if self.faults.get("server_error_next", 0) > 0:
                self.faults["server_error_next"] -= 1
                return 503, {"error": "Service Unavailable"}, {}
        if authorization != self._expected_auth():
            return 401, {"error": "Invalid API key or secret key"}, {}
        if path == "/api/3/cohorts":
            with self.lock:
                listed = [{"id": cid, "name": c["name"], "size": c.get("size", len(c["members"])),
                           "archived": False, "type": "redshift"} for cid, c in self.cohorts.items()]
            return 200, {"cohorts": listed}, {}
        m = _FILE.fullmatch(path)
        if m:
            return self._file(m.group(1))
        m = _STATUS.fullmatch(path)
        if m:
            return self._status(m.group(1))
        m = _REQUEST.fullmatch(path)
        if m:
            return self._request(m.group(1))
        return 404, {"error": "Not Found"}, {}

    def _expected_auth(self) -> str:
        return "Basic " + base64.b64encode(f"{self.api_key}:{self.secret_key}".encode()).decode()

    def _retry_after(self) -> dict:
        return {"Retry-After": str(self.faults.get("retry_after_seconds", 1))}

    def _request(self, cohort_id: str) -> tuple:
        now = time.time()
        with self.lock:
            cohort = self.cohorts.get(cohort_id)
            if cohort is None:
                return 404, {"error": f"cohort {cohort_id} not found"}, {}
            month = time.strftime("%Y-%m", time.gmtime(now))
            this_month = [t for t in self.download_requests if time.strftime("%Y-%m", time.gmtime(t)) == month]
            if len(this_month) >= self.monthly_budget:
                return 429, {"error": "Monthly cohort download limit reached"}, {}
            recent = [t for t in self.download_requests if t > now - 600]
            if len(recent) >= self.requests_per_10_minutes:
                return 429, {"error": "Exceeded the limit of requests per 10 minutes"}, {"Retry-After": "600"}
            self.download_requests.append(now)
            if cohort.get("size", len(cohort["members"])) > self.max_cohort_size:
                return 400, {"error": f"Cohort is too large to download (limit {self.max_cohort_size})"}, {}
            request_id = secrets.token_hex(8)
            self.jobs[request_id] = {"cohort_id": cohort_id, "started": now,
                                     "members": [dict(m) for m in cohort["members"]]}
        return 202, {"request_id": request_id, "cohort_id": cohort_id}, {}

    def _status(self, request_id: str) -> tuple:
        with self.lock:
            job = self.jobs.get(request_id)
            if job is None:
                return 404, {"error": "unknown request_id"}, {}
            done = not self.faults.get("never_complete") and time.time() - job["started"] >= self.job_seconds
        body = {"request_id": request_id, "cohort_id": job["cohort_id"],
                "async_status": "JOB COMPLETED" if done else "JOB INPROGRESS"}
        return (200 if done else 202), body, {}

    def _file(self, request_id: str) -> tuple:
        with self.lock:
            job = self.jobs.get(request_id)
        if job is None:
            return 404, {"error": "unknown request_id"}, {}
        data = self.render_csv(job["members"])
        if not self.redirect:
            return 200, data, {"Content-Type": "text/csv"}
        token = secrets.token_hex(12)
        with self.lock:
            self.links[token] = (time.time() + self.link_seconds, data)
        return 302, b"", {"Location": f"{self.url}/_s3/{token}"}

    def s3(self, token: str) -> tuple:
        with self.lock:
            link = self.links.get(token)
            expired = link is None or link[0] < time.time() or self.faults.get("expire_links")
        if expired:
            return 403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", \
                {"Content-Type": "application/xml"}
        return 200, link[1], {"Content-Type": "text/csv"}

    def render_csv(self, members) -> bytes:
        columns = ["amplitude_id", "user_id"] + (["device_id"] if self.device_id_column else [])
        prefix = "\t" if self.tab_prefix else ""
        out = io.StringIO()
        writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(columns)
        for m in members:
            writer.writerow([prefix + str(m.get(c) or "") for c in columns])
        return out.getvalue().encode("utf-8")

    # -- control ------------------------------------------------------------------------------

    def control(self, method: str, path: str, body) -> tuple:
        m = _COHORT.fullmatch(path)
        with self.lock:
            if m and method == "PUT":
                if not isinstance(body, dict) or not isinstance(body.get("members"), list):
                    return 400, {"error": "send {name, members: [{amplitude_id, user_id, device_id}], size?}"}, {}
                cohort = {"name": body.get("name") or m.group(1), "members": body["members"]}
                if "size" in body:
                    cohort["size"] = int(body["size"])
                self.cohorts[urllib.parse.unquote(m.group(1))] = cohort
                return 200, {"cohort_id": m.group(1), "members": len(body["members"])}, {}
            if path == "/_sim/faults" and method == "POST":
                unknown = set(body or {}) - set(FAULT_KEYS)
                if unknown or not isinstance(body, dict):
                    return 400, {"error": f"unknown fault keys {sorted(unknown)}; known: {list(FAULT_KEYS)}"}, {}
                self.faults = dict(body)
                return 200, self.faults, {}
            if path == "/_sim/requests" and method == "GET":
                return 200, {"requests": list(self.log)}, {}
            if path == "/_sim/usage" and method == "GET":
                return 200, {"download_requests": len(self.download_requests),
                             "monthly_budget": self.monthly_budget}, {}
        if path == "/_sim/reset" and method == "POST":
            self.reset()
            return 200, {"message": "reset"}, {}
        return 404, {"error": "Not Found"}, {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "amplitude-sim"

    def log_message(self, format, *args):
        pass  # quiet; no credential can reach a log

    def _write(self, status: int, body, headers: dict) -> None:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        self.send_response(status)
        headers = {"Content-Type": "application/json", **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        sim: AmplitudeSimulator = self.server.sim
        path = self.path.partition("?")[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path.startswith("/_sim/"):
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                self._write(400, {"error": "not JSON"}, {})
                return
            self._write(*sim.control(method, path, body))
            return
        m = _S3.fullmatch(path)
        if m and method == "GET":
            self._write(*sim.s3(m.group(1)))
            return
        with sim.lock:
            sim.in_flight += 1
            too_many = sim.in_flight > sim.max_concurrent
        status, body, headers = 500, {"error": "Internal Server Error"}, {}
        try:
            if too_many:
                status, body, headers = 429, {"error": "Too many concurrent requests"}, {"Retry-After": "1"}
            elif method != "GET":
                status, body, headers = 405, {"error": "Method Not Allowed"}, {}
            else:
                status, body, headers = sim.answer(path, self.headers.get("Authorization") or "")
        finally:
            with sim.lock:
                sim.in_flight -= 1
                sim.log.append({"path": path, "status": status, "at": time.time()})
        self._write(status, body, headers)

    def do_GET(self):
        self._dispatch("GET")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_POST(self):
        self._dispatch("POST")
