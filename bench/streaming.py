"""Part ``streaming``: the real job (``python -m pipeline.stream`` on the BundleBasedDirectRunner,
``--streaming``) reading the Pub/Sub emulator and writing the Braze simulator, at a fixed
offered load for a fixed time.

1. Start the emulator and the simulator (a subprocess), then the job as a subprocess, as
   ``local/demo.py`` does; warm it up with a few messages until its first request reaches the
   simulator.
2. A paced publisher publishes a prefix of the corpus at ``rate`` events/s, a batch every
   100 ms, for ``duration`` s (the measured window) plus ``tail`` s more, so the window's last
   objects leave under load rather than behind the DirectRunner's 30 s idle pull.
3. Wait until every expected event object has reached the simulator (or a deadline).

Latency is the simulator's receive time minus the publish time of the event. Braze objects
carry no insert id, so an event object is matched back to its published event by
(identifier, name, time); only event objects can be matched (attribute objects cannot), and
they are most of the traffic. Repeats (the same key twice) match the earliest publish first.
"""
from __future__ import annotations

import collections
import math
import os
import secrets
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

import orjson
import yaml

from bench.common import (
    KEY_ENV, MAX_OBJECTS, Corpus, PureJob, all_requests, bench_syncs, events_in, object_key, objects_in,
    percentile, request_sync, simulator, stop_process, sync_document,
)
from local.pubsub_emulator import PubSubEmulator

RUNNER = "BundleBasedDirectRunner"
TICK_SECONDS = 0.1
WARMUP_EVENTS = 30


class _Published:
    __slots__ = ("data", "events", "at", "window")

    def __init__(self, data: bytes, events: int, at: float, window: bool):
        self.data, self.events, self.at, self.window = data, events, at, window


def _publish_paced(emulator, topic: str, messages: List[bytes], rate: float, duration: float, tail: float,
                   out: List[_Published], log) -> None:
    """Publish at ``rate`` events/s: each tick, whatever keeps the cumulative count on schedule."""
    publisher = emulator.publisher
    path = emulator.topic_path(topic)
    futures = []
    start = time.time()
    end_window, end_all = start + duration, start + duration + tail
    published_events, index = 0, 0
    next_tick = start
    while index < len(messages):
        now = time.time()
        if now >= end_all:
            break
        target = rate * (now - start)
        while published_events < target and index < len(messages):
            data = messages[index]
            n = events_in(data)
            at = time.time()
            futures.append(publisher.publish(path, data, **({} if data else {"empty_body": "true"})))
            out.append(_Published(data, n, at, at < end_window))
            published_events += n
            index += 1
        next_tick += TICK_SECONDS
        time.sleep(max(0.0, next_tick - time.time()))
    if index >= len(messages):
        log(f"  streaming: the corpus ran out after {index} messages")
    for future in futures:
        future.result(timeout=60)


def run(corpus: Corpus, log_dir: str, rate: float = 300.0, duration: float = 60.0, tail: float = 5.0,
        max_batch_wait_seconds: float = 2.0, drain_seconds: float = 45.0, plot_path: Optional[str] = None,
        emulator: Optional[PubSubEmulator] = None, log=print) -> dict:
    needed = int(rate * (duration + tail + 5)) + WARMUP_EVENTS
    messages = corpus.prefix(needed)
    own_emulator = emulator is None
    if own_emulator:
        emulator = PubSubEmulator()
        emulator.start()
    try:
        with simulator(log_dir, rate_limit=3000, name="sim-streaming") as sim:
            return _run(emulator, sim, messages, log_dir, rate, duration, tail, max_batch_wait_seconds,
                        drain_seconds, plot_path, log)
    finally:
        if own_emulator:
            emulator.stop()


def _run(emulator, sim, messages, log_dir, rate, duration, tail, max_wait, drain_seconds, plot_path, log):
    run_id = secrets.token_hex(3)
    topic, dead, subscription = f"bench-events-{run_id}", f"bench-dead-{run_id}", f"bench-job-{run_id}"
    emulator.create_topic(topic)
    emulator.create_topic(dead)
    emulator.create_subscription(subscription, topic)
    syncs_path = os.path.join(log_dir, "bench-syncs.yaml")
    with open(syncs_path, "w") as f:
        yaml.safe_dump(sync_document(sim.url), f, sort_keys=False)
    job_log = os.path.join(log_dir, "streaming-job.log")
    command = [
        sys.executable, "-m", "pipeline.stream",
        f"--input_subscription={emulator.subscription_path(subscription)}",
        f"--dead_letter_topic={emulator.topic_path(dead)}",
        f"--sync_config={syncs_path}",
        "--allow_insecure_endpoints",
        f"--runner={RUNNER}",
        "--streaming",
        f"--max_batch_wait_seconds={max_wait:g}",
    ]
    env = {**os.environ, KEY_ENV: sim.key}
    client = sim.client()
    with open(job_log, "wb") as out:
        job = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    published: List[_Published] = []
    try:
        # Warm-up: the first messages, until the job's first request reaches the simulator.
        warm, warm_events = [], 0
        for data in messages:
            if warm_events >= WARMUP_EVENTS:
                break
            warm.append(data)
            warm_events += events_in(data)
        started = time.monotonic()
        now = time.time()
        emulator.publish(topic, warm)
        published.extend(_Published(d, events_in(d), now, False) for d in warm)
        while client.counters().get("requests", 0) == 0:
            if job.poll() is not None:
                raise RuntimeError(f"the job exited with code {job.returncode}; see {job_log}")
            if time.monotonic() - started > 180:
                raise RuntimeError(f"the job sent nothing within 180 s; see {job_log}")
            time.sleep(0.25)
        startup = time.monotonic() - started
        log(f"  streaming: job ready after {startup:.1f} s; "
            f"publishing {rate:g} events/s for {duration:g} s (+{tail:g} s tail)")
        time.sleep(max_wait + 1.0)  # let the warm-up's last partial batches leave

        rest = messages[len(warm):]
        load = _LoadSampler()
        t0 = time.time()
        _publish_paced(emulator, topic, rest, rate, duration, tail, published, log)
        t_last = time.time()
        load.stop()
        if job.poll() is not None:
            raise RuntimeError(f"the job exited with code {job.returncode}; see {job_log}")

        # Expected event objects (the job's own route code over what was published).
        pure = PureJob(bench_syncs(sim.url))
        expected: Dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
        for i, p in enumerate(published):
            for parsed in pure.parse(p.data, f"p{i}"):
                track, _ = pure.route_event(parsed)
                for item in track:
                    expected[object_key(item.obj)].append(p)
        expected_keys = set(expected)
        seen_keys, since = set(), 0
        deadline = t_last + drain_seconds
        while time.time() < deadline:
            page = client.requests_page(since=since, limit=5000)
            for r in page["requests"]:
                for obj in ((r.get("body") or {}).get("events") or ()):
                    seen_keys.add(object_key(obj))
            since = page["next"]
            if expected_keys <= seen_keys:
                break
            time.sleep(1.0)
        drained = expected_keys <= seen_keys
        if not drained:
            log(f"  streaming: {len(expected_keys - seen_keys)} expected event objects had not arrived "
                f"{drain_seconds:g} s after the last publish")
    finally:
        stop_process(job)

    requests = all_requests(client)
    counters = client.counters()
    result = _analyse(published, expected, requests, counters, t0, duration, rate, max_wait, drained, plot_path)
    result["loadavg_1m_during_window"] = load.summary()
    result["job_startup_s"] = round(startup, 1)
    return result


class _LoadSampler:
    """The machine's 1-minute load average every 2 s while publishing (it is shared)."""

    def __init__(self):
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(2.0):
            self.samples.append(os.getloadavg()[0])

    def stop(self):
        self._stop.set()
        self._thread.join()

    def summary(self):
        if not self.samples:
            return None
        return {"min": round(min(self.samples), 2), "max": round(max(self.samples), 2),
                "mean": round(sum(self.samples) / len(self.samples), 2)}


def _analyse(published, expected, requests, counters, t0, duration, rate, max_wait, drained, plot_path):
    latencies, arrivals = [], []  # (received_at, latency) of window event objects
    objects_by_sync = collections.Counter()
    objects_total = 0
    for r in requests:
        body = r.get("body") or {}
        n = objects_in(body)
        objects_total += n
        objects_by_sync[request_sync(body)] += n
        for obj in body.get("events") or ():
            queue = expected.get(object_key(obj))
            if not queue:
                continue
            p = queue.popleft()
            if p.window:
                latencies.append(r["received_at"] - p.at)
                arrivals.append(r["received_at"])
    n_requests = len(requests)
    events_published = sum(p.events for p in published)
    window = [p for p in published if p.window]
    window_events = sum(p.events for p in window)
    expected_window = sum(1 for q in expected.values() for p in q if p.window) + len(latencies)
    delivered_share = len(latencies) / expected_window if expected_window else float("nan")
    span = (max(arrivals) - min(arrivals)) if len(arrivals) > 1 else float("nan")
    ideal = sum(math.ceil(n / MAX_OBJECTS) for n in objects_by_sync.values())
    lat = sorted(latencies)
    result = {
        "runner": RUNNER,
        "max_batch_wait_seconds": max_wait,
        "offered_events_per_s": rate,
        "duration_s": duration,
        "window_events_published": window_events,
        "window_publish_rate_events_per_s": round(window_events / duration, 1),
        "events_per_s": round(window_events * delivered_share / span, 1) if span == span and span > 0 else None,
        "window_event_objects_matched": len(latencies),
        "window_event_objects_expected": expected_window,
        "all_expected_arrived": drained,
        "latency_p50_s": round(percentile(lat, 50), 3),
        "latency_p95_s": round(percentile(lat, 95), 3),
        "latency_p99_s": round(percentile(lat, 99), 3),
        "latency_max_s": round(lat[-1], 3) if lat else None,
        "events_published_total": events_published,
        "requests": n_requests,
        "objects": objects_total,
        "requests_per_1000_events": round(1000 * n_requests / events_published, 2) if events_published else None,
        "objects_per_request": round(objects_total / n_requests, 2) if n_requests else None,
        "ideal_requests": ideal,
        "fill_ratio": round(ideal / n_requests, 3) if n_requests else None,
        "requests_by_status": {str(k): v for k, v in sorted(collections.Counter(r["status"] for r in requests).items())},
        "simulator_data_points": counters.get("data_points", 0),
    }
    if plot_path:
        try:
            _plot(plot_path, published, requests, latencies, arrivals, t0, duration, rate, result)
            result["plot"] = os.path.relpath(plot_path, os.getcwd())
        except ImportError:
            result["plot"] = None  # matplotlib is in the [bench] extra
    return result


def _plot(path, published, requests, latencies, arrivals, t0, duration, rate, result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = max([r["received_at"] - t0 for r in requests] + [duration])
    horizon = int(last) + 2
    pub = [0] * horizon
    objs = [0] * horizon
    for p in published:
        s = int(p.at - t0)
        if 0 <= s < horizon:
            pub[s] += p.events
    for r in requests:
        s = int(r["received_at"] - t0)
        if 0 <= s < horizon:
            objs[s] += objects_in(r.get("body"))
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 10))
    ax1.plot(range(horizon), pub, label="events published/s", drawstyle="steps-post")
    ax1.plot(range(horizon), objs, label="objects received by Braze (simulator)/s", drawstyle="steps-post")
    ax1.axvspan(0, duration, color="0.9", label="measured window")
    ax1.set_xlabel("seconds since the window started")
    ax1.set_ylabel("per second")
    ax1.set_title(f"Throughput at an offered {rate:g} events/s")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.scatter([a - t0 for a in arrivals], latencies, s=2, alpha=0.3)
    ax2.set_xlabel("receive time, seconds since the window started")
    ax2.set_ylabel("latency (s)")
    ax2.set_title("Publish → Braze latency of each event object over time")
    if latencies:
        ax3.hist(latencies, bins=60)
        for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            value = result[f"latency_{q}_s"]
            ax3.axvline(value, color="k", linestyle=style, label=f"{q} {value:.2f} s")
        ax3.legend(fontsize=8)
    ax3.set_xlabel("latency (s)")
    ax3.set_ylabel("event objects")
    ax3.set_title("Latency distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
