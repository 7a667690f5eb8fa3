"""What every part shares: the corpus, the two syncs, the simulator subprocess, and small
reporting helpers. Running the project's DoFns without a runner is ``bench.driver``."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam

from local.generate import generate_messages, read_messages, write_jsonl
from pipeline.config import Sync, parse_syncs

KEY_ENV = "BENCH_BRAZE_KEY"
MAX_OBJECTS = 75  # Braze's objects per /users/track request (combined mode)


# --------------------------------------------------------------------------------------------
# Corpus


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    events: int = 100_000
    users: int = 5_000
    seed: int = 42
    malformed_share: float = 0.01

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Corpus:
    """The generated messages, written once to a JSONL file and read back in binary (bodies
    may be empty or not UTF-8), with the number of events each message holds."""

    def __init__(self, spec: CorpusSpec, directory: str):
        self.spec = spec
        self.path = os.path.join(directory, f"corpus-{spec.events}-{spec.users}-{spec.seed}.jsonl")
        started = time.perf_counter()
        write_jsonl(self.path, generate_messages(events=spec.events, users=spec.users, seed=spec.seed,
                                                 malformed_share=spec.malformed_share))
        self.messages: List[bytes] = read_messages(self.path)
        self.generate_seconds = time.perf_counter() - started
        self.events_per_message = [events_in(m) for m in self.messages]
        self.events = sum(self.events_per_message)

    def subset(self, events: int, directory: str) -> "Corpus":
        """This corpus cut to its first ``events`` events (0 or more than it holds: itself)."""
        if not events or events >= self.events:
            return self
        part = object.__new__(Corpus)
        part.spec = dataclasses.replace(self.spec)
        part.messages = self.prefix(events)
        part.events_per_message = self.events_per_message[:len(part.messages)]
        part.events = sum(part.events_per_message)
        part.generate_seconds = 0.0
        part.path = os.path.join(directory, f"prefix-{part.events}.jsonl")
        write_jsonl(part.path, part.messages)
        return part

    def prefix(self, events: int) -> List[bytes]:
        """The first messages holding at least ``events`` events."""
        total, out = 0, []
        for message, n in zip(self.messages, self.events_per_message):
            if total >= events:
                break
            out.append(message)
            total += n
        return out


def events_in(message: bytes) -> int:
    """Events in one message, counted as the generator and the job count them (an array is
    its length, anything else one)."""
    import orjson

    try:
        decoded = orjson.loads(message)
    except orjson.JSONDecodeError:
        return 1
    return len(decoded) if isinstance(decoded, list) and decoded else 1


# --------------------------------------------------------------------------------------------
# Syncs: the demo's two shapes (external_id with events and user properties; user alias from
# device_id with every event), fixed here so a change to the demo does not move the figures.

BENCH_SYNCS = {
    "syncs": [
        {
            "name": "us-app",
            "endpoint": "{url}",
            "api_key": f"env:{KEY_ENV}",
            "app_id": "00000000-0000-0000-0000-000000000001",
            "identifier": {"type": "external_id", "source": "user_id"},
            "users": {"properties": ["plan", "country", "city", "age", "is_subscriber", "favorite_genres"]},
            "events": {
                "select": [
                    {"event_type": "Order Completed",
                     "where": [{"property": "event_properties.total", "op": "greater_than", "value": 0}]},
                    {"event_type": "Sign Up"},
                    {"event_type": "Song Played",
                     "where": [{"property": "platform", "op": "is", "value": ["iOS", "Android"]}]},
                ],
                "properties": ["total", "sku", "coupon", "genre"],
            },
        },
        {
            "name": "eu-devices",
            "endpoint": "{url}",
            "api_key": f"env:{KEY_ENV}",
            "identifier": {"type": "user_alias", "source": "device_id", "alias_label": "amplitude_device"},
            "users": {"properties": ["plan"]},
            "events": {"select": [{"event_type": "*"}], "properties": ["query"]},
        },
    ]
}


def sync_document(url: str, events: bool = True) -> dict:
    """The syncs document pointing at ``url``; ``events=False`` turns every events branch off."""
    import copy

    document = copy.deepcopy(BENCH_SYNCS)
    for sync in document["syncs"]:
        sync["endpoint"] = url
        if not events:
            sync["events"] = {"enabled": False}
    return document


def job_default(option: str):
    """The streaming job's default for ``--<option>`` (``pipeline/options.py``), so the Beam
    parts run the sink as the job does."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import StreamOptions

    return getattr(PipelineOptions([]).view_as(StreamOptions), option)


def bench_syncs(url: str = "http://127.0.0.1:9", events: bool = True) -> Tuple[Sync, ...]:
    return parse_syncs(sync_document(url, events), source="bench", allow_insecure_endpoints=True)


# --------------------------------------------------------------------------------------------
# The Braze simulator as a subprocess (its own GIL), as local/braze_sim/measure.py runs it


class SimProcess:
    def __init__(self, url: str, key: str, process: subprocess.Popen):
        self.url = url
        self.key = key
        self.process = process

    def client(self):
        from local.braze_sim import SimClient

        return SimClient(self.url, timeout_seconds=120)


@contextlib.contextmanager
def simulator(log_dir: str, rate_limit: int = 1_000_000, name: str = "sim") -> Iterator[SimProcess]:
    key = secrets.token_hex(16)
    log = open(os.path.join(log_dir, f"{name}.log"), "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "local.braze_sim", "--port", "0", "--rate-limit", str(rate_limit), "--api-key", key],
        stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None:
            line = process.stdout.readline().decode()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"the Braze simulator did not start; see {log.name}")
            if line.startswith("braze-sim listening on "):
                url = line.split()[-1]
        yield SimProcess(url, key, process)
    finally:
        stop_process(process)
        log.close()


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process group we started (start_new_session=True), then SIGKILL."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass


@contextlib.contextmanager
def bench_key(key: str):
    """The key where ``env:BENCH_BRAZE_KEY`` finds it (in-process runners and subprocesses)."""
    previous = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = key
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = previous


# --------------------------------------------------------------------------------------------
# Machine and reporting helpers


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "beam_version": beam.__version__,
        "platform": platform.platform(),
        "loadavg_1m_at_start": round(load[0], 2),
    }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-q * len(sorted_values) // 100)))  # ceil(q/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def tempdir(prefix: str = "amplitude-braze-bench-") -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)


def all_requests(client, page: int = 2000) -> List[dict]:
    """The simulator's whole /users/track request log, paged."""
    out, since = [], 0
    while True:
        got = client.requests_page(since=since, limit=page)
        out.extend(r for r in got["requests"] if r.get("path") == "/users/track")
        if not got["requests"]:
            return out
        since = got["next"]


def object_key(obj: dict) -> Optional[tuple]:
    """(identifier, name, time) of an event object: unique enough in a generated corpus to lead
    a Braze event back to the published event (Braze objects carry no insert id)."""
    if "name" not in obj or "time" not in obj:
        return None
    if "external_id" in obj:
        who = ("external_id", obj["external_id"])
    elif "user_alias" in obj:
        who = ("alias", obj["user_alias"].get("alias_name"))
    else:
        who = ("braze_id", obj.get("braze_id"))
    return who + (obj["name"], obj["time"])


def request_sync(body: dict) -> str:
    """Which identifier family a request's objects use (one per sync in BENCH_SYNCS)."""
    for array in ("attributes", "events", "purchases"):
        for obj in body.get(array) or ():
            return "user_alias" if "user_alias" in obj else "external_id"
    return "?"


def objects_in(body: Optional[dict]) -> int:
    if not body:
        return 0
    return sum(len(body.get(a) or ()) for a in ("attributes", "events", "purchases"))
