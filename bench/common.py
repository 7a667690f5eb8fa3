"""What every part shares: the corpus, the two syncs, the simulator subprocess, and a driver
that runs the project's own DoFns and pure functions without Beam (for ``core`` and the
naive baselines), so the benchmark follows the code as the team changes it."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import inspect
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.window import TimestampedValue
from apache_beam.transforms import core as beam_core
from apache_beam.transforms import userstate
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from local.generate import generate_messages, read_messages, write_jsonl
from pipeline.config import Sync, parse_syncs
from transforms.batching import EMPTY_FILL, RequestLimits, collapse, pack_more, shard_key
from transforms.braze_client import build_track_body
from transforms.identify import IdentifyDoFn
from transforms.parse import parse_message
from transforms.records import BrazeItem, ParsedEvent
from transforms.route import IDENTIFY_TAG, _RouteDoFn
from transforms.sanitize import DEFAULT_MAX_ARRAY_LENGTH

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
# Running the project's DoFns in plain Python (the same code the runner calls)


class _Value:
    """ReadModifyWriteState over a dict slot; ``stateless`` forgets every write."""

    __slots__ = ("_store", "_slot", "_stateless")

    def __init__(self, store: dict, slot, stateless: bool):
        self._store, self._slot, self._stateless = store, slot, stateless

    def read(self):
        return self._store.get(self._slot)

    def write(self, value):
        if not self._stateless:
            self._store[self._slot] = value

    def clear(self):
        self._store.pop(self._slot, None)


class _Bag(_Value):
    def read(self):
        return list(self._store.get(self._slot, ()))

    def add(self, value):
        if not self._stateless:
            self._store.setdefault(self._slot, []).append(value)


class _Combining(_Value):
    def __init__(self, store, slot, stateless, combine_fn):
        super().__init__(store, slot, stateless)
        self._fn = combine_fn

    def read(self):
        return self._fn.extract_output(self._store.get(self._slot, self._fn.create_accumulator()))

    def add(self, value):
        if not self._stateless:
            acc = self._store.get(self._slot, self._fn.create_accumulator())
            self._store[self._slot] = self._fn.add_input(acc, value)


class _NoTimer:
    def set(self, *args, **kwargs):
        pass

    def clear(self, *args, **kwargs):
        pass


_NO_TIMER = _NoTimer()


def _plan_of(method) -> list:
    """``(parameter, kind, state spec)`` of a DoFn method's state, timer, key, window and
    timestamp parameters."""
    plan = []
    for name, param in list(inspect.signature(method).parameters.items())[1:]:
        default = param.default
        if isinstance(default, beam_core._StateDoFnParam):
            plan.append((name, "state", default.state_spec))
        elif isinstance(default, beam_core._TimerDoFnParam):
            plan.append((name, "timer", None))
        elif default is beam.DoFn.KeyParam:
            plan.append((name, "key", None))
        elif default is beam.DoFn.WindowParam:
            plan.append((name, "window", None))
        elif default is beam.DoFn.TimestampParam:
            plan.append((name, "timestamp", None))
    return plan


class KeyedDoFnDriver:
    """Calls a stateful DoFn's ``process`` for ``(key, value)`` elements with in-memory state.

    The parameters are read from the DoFn's signature (state, timers, key, window), so a new
    state cell or timer in the DoFn needs no change here. Timers set by the DoFn never fire by
    themselves (the benchmark measures per-element work); ``fire`` calls a timer callback when
    the caller decides."""

    def __init__(self, dofn: beam.DoFn, stateless: bool = False):
        self.dofn = dofn
        self.stateless = stateless
        self.store: dict = {}
        self._kwargs: dict = {}  # key (process) or (callback, key) → keyword arguments
        if hasattr(dofn, "setup"):
            dofn.setup()
        self._plan = _plan_of(dofn.process)

    def fire(self, callback: str, key, timestamp: Timestamp) -> list:
        """The outputs of the timer callback ``callback`` (a method name) for ``key``."""
        prepared = self._kwargs.get((callback, key))
        if prepared is None:
            plan = _plan_of(getattr(type(self.dofn), callback))
            stamp = next((name for name, kind, _ in plan if kind == "timestamp"), None)
            prepared = self._kwargs[(callback, key)] = (getattr(self.dofn, callback), self._build(plan, key), stamp)
        method, kwargs, stamp = prepared
        if stamp is not None:
            kwargs[stamp] = timestamp
        return list(method(**kwargs) or ())

    def _state(self, key, spec):
        slot = (key, spec.name)
        if isinstance(spec, userstate.BagStateSpec):
            return _Bag(self.store, slot, self.stateless)
        if isinstance(spec, userstate.CombiningValueStateSpec):
            return _Combining(self.store, slot, self.stateless, spec.combine_fn)
        return _Value(self.store, slot, self.stateless)

    def _arguments(self, key) -> dict:
        """The keyword arguments of ``process`` for ``key``, built once per key (the harness's
        own cost is not the DoFn's)."""
        kwargs = self._kwargs.get(key)
        if kwargs is None:
            kwargs = self._kwargs[key] = self._build(self._plan, key)
        return kwargs

    def _build(self, plan, key) -> dict:
        kwargs = {}
        for name, kind, spec in plan:
            if kind == "state":
                kwargs[name] = self._state(key, spec)
            elif kind == "timer":
                kwargs[name] = _NO_TIMER
            elif kind == "key":
                kwargs[name] = key
            elif kind == "window":
                kwargs[name] = _WINDOW
            else:
                kwargs[name] = _TIME_ZERO
        return kwargs

    def process(self, element):
        return self.dofn.process(element, **self._arguments(element[0])) or ()


_WINDOW = GlobalWindow()
_TIME_ZERO = Timestamp(0)


class PureJob:
    """parse → route → identify (+ track) with the job's own functions and DoFns, no Beam runner.

    ``stateless_identify=True`` runs the same identify code with a state that never remembers:
    every selected property an event carries is sent, as a forwarder without state would."""

    def __init__(self, syncs: Sequence[Sync], stateless_identify: bool = False, lateness_seconds: float = 0.0):
        self.syncs = tuple(syncs)
        self.route = _RouteDoFn(self.syncs)
        self.route.setup()
        self.lateness = lateness_seconds
        self.identify = KeyedDoFnDriver(
            IdentifyDoFn({s.name: s.users.properties for s in self.syncs}, lateness_seconds=lateness_seconds,
                         max_array_length=DEFAULT_MAX_ARRAY_LENGTH),
            stateless=stateless_identify)

    def parse(self, data: bytes, message_id: str, publish_time_ms: Optional[int] = None) -> List[ParsedEvent]:
        return [r for r in parse_message(data, message_id, publish_time_ms) if isinstance(r, ParsedEvent)]

    def route_event(self, parsed: ParsedEvent) -> Tuple[List[BrazeItem], list]:
        """(track items, identify work)"""
        track, work = [], []
        for out in self.route.process(parsed):
            if isinstance(out, pvalue.TaggedOutput):
                if out.tag == IDENTIFY_TAG:
                    work.append(out.value)
            else:
                track.extend(out.items)
        return track, work

    def identify_work(self, work) -> List[BrazeItem]:
        """The objects of the user's batch: the attribute update, then the event's own objects
        (``lateness_seconds=0``: identify applies each update as it arrives)."""
        items: List[BrazeItem] = []
        for out in self.identify.process(work):
            if isinstance(out, TimestampedValue):
                items.extend(out.value.items)
        return items

    def identify_works(self, works) -> List[BrazeItem]:
        """The objects of a bundle's identify work as the job makes them: with a reorder buffer
        (``lateness_seconds > 0``) each update waits in its user's buffer, and every buffer the
        bundle touched is flushed once the bundle is in (as the watermark timer does)."""
        if self.lateness <= 0:
            return [item for w in works for item in self.identify_work(w)]
        touched = dict.fromkeys(w[0] for w in works if not self.identify.process(w))
        flush_at = Timestamp.of(self.lateness)  # the driver gives every element timestamp 0
        items: List[BrazeItem] = []
        for key in touched:
            for out in self.identify.fire("on_flush", key, flush_at):
                if isinstance(out, TimestampedValue):
                    items.extend(out.value.items)
        return items

    def event_items(self, parsed: ParsedEvent) -> List[BrazeItem]:
        """Every Braze object one event gives, attributes first (as Braze applies them)."""
        track, work = self.route_event(parsed)
        attributes = [item for w in work for item in self.identify_work(w)]
        return attributes + track

    def message_items(self, data: bytes, message_id: str, publish_time_ms: Optional[int] = None):
        """[(parsed event, [items])] for one message."""
        return [(p, self.event_items(p)) for p in self.parse(data, message_id, publish_time_ms)]


def pack_requests(items: Sequence[BrazeItem], shards: int = 4) -> List[List[BrazeItem]]:
    """Items → requests as the job packs them: by (sync, shard of user), in order, within
    Braze's limits (without the time bound, which only ever makes requests smaller)."""
    packer = Packer(shards)
    return packer.add(items) + packer.flush()


class Packer:
    """``pack_requests`` fed in chunks: each key's open request waits for the next chunk, as the
    packer's state does between bundles."""

    def __init__(self, shards: int = 4):
        self.shards = shards
        self.limits = RequestLimits("combined")
        self._open: Dict[str, tuple] = {}

    def add(self, items: Sequence[BrazeItem]) -> List[List[BrazeItem]]:
        """The requests that close with ``items``."""
        by_key: Dict[str, List[BrazeItem]] = collections.defaultdict(list)
        for item in items:
            by_key[shard_key(item.sync, item.user_key, self.shards)].append(item)
        requests: List[List[BrazeItem]] = []
        for key in sorted(by_key):
            batch, fill = self._open.get(key, ([], EMPTY_FILL))
            self._open[key] = pack_more(batch, fill, by_key[key], self.limits, requests)
        return requests

    def flush(self) -> List[List[BrazeItem]]:
        """Every open request, as the packer's timers send them."""
        requests = [collapse(batch) for key, (batch, _) in sorted(self._open.items()) if batch]
        self._open.clear()
        return requests


def encode_requests(batches: Sequence[Sequence[BrazeItem]]) -> List[bytes]:
    return [build_track_body(batch)[0] for batch in batches]


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
