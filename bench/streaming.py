"""Part ``streaming``: the real job (``python -m pipeline.stream`` on the BundleBasedDirectRunner,
``--streaming``) reading the Pub/Sub emulator and writing the Braze simulator, at a fixed
offered load for a fixed time; then the same-shape floor (``python -m bench.floor_job``: the job's
keyed stages, state and timers with trivial bodies) on the same runner, input and load.

For each of the two:
1. Start the job as a subprocess on its own topic, as ``local/demo.py`` does, against a fresh
   simulator (a subprocess); warm it up with a few messages until its first request arrives.
2. A paced publisher publishes a prefix of the corpus at ``rate`` events/s, a batch every
   100 ms, for ``duration`` s (the measured window) plus ``tail`` s more, so the window's last
   objects leave under load.
3. Wait until every expected object has reached the simulator (or a deadline).

The goals compare the two (``ratio_to_same_shape_floor``: delivered events/s, ours / floor;
``p95_ratio_to_same_shape_floor``): this runner's own ceiling (it scans every key's timers after
every bundle) is the floor's as much as ours, so the ratio is the job's own share. How each
object is timed: ``bench.streaming_analysis``.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from typing import List, Optional

import yaml

from bench.common import KEY_ENV, Corpus, all_requests, events_in, simulator, stop_process, sync_document
from bench.streaming_analysis import Published, analyse_floor, analyse_ours, arrived_event_keys, \
    arrived_floor_objects, expected_event_objects, expected_floor_objects, plot
from local.pubsub_emulator import PubSubEmulator

RUNNER = "BundleBasedDirectRunner"
TICK_SECONDS = 0.1
WARMUP_EVENTS = 30


def _publish_paced(emulator, topic: str, messages: List[bytes], rate: float, duration: float, tail: float,
                   out: List[Published], log) -> None:
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
            out.append(Published(data, n, at, at < end_window))
            published_events += n
            index += 1
        next_tick += TICK_SECONDS
        time.sleep(max(0.0, next_tick - time.time()))
    if index >= len(messages):
        log(f"  streaming: the corpus ran out after {index} messages")
    for p, future in zip(out[len(out) - len(futures):], futures):
        p.message_id = future.result(timeout=60)


def run(corpus: Corpus, log_dir: str, rate: float = 300.0, duration: float = 60.0, tail: float = 5.0,
        max_batch_wait_seconds: float = 2.0, drain_seconds: float = 30.0, plot_path: Optional[str] = None,
        emulator: Optional[PubSubEmulator] = None, floor: bool = True, log=print) -> dict:
    needed = int(rate * (duration + tail + 5)) + WARMUP_EVENTS
    messages = corpus.prefix(needed)
    own_emulator = emulator is None
    if own_emulator:
        emulator = PubSubEmulator()
        emulator.start()
    try:
        with simulator(log_dir, rate_limit=3000, name="sim-streaming") as sim:
            ours = _run_job(emulator, sim, messages, log_dir, "job", rate, duration, tail, max_batch_wait_seconds,
                            drain_seconds, log)
        result = analyse_ours(ours["published"], ours["expected"], ours["requests"], ours["counters"], duration,
                              rate, max_batch_wait_seconds, ours["drained"])
        result.update(runner=RUNNER, job_startup_s=ours["startup"], loadavg_1m_during_window=ours["load"])
        floor_result = None
        if floor:
            with simulator(log_dir, rate_limit=3000, name="sim-streaming-floor") as sim:
                run_floor = _run_job(emulator, sim, messages, log_dir, "floor", rate, duration, tail,
                                     max_batch_wait_seconds, drain_seconds, log)
            floor_result = analyse_floor(run_floor["published"], run_floor["expected"][0], run_floor["expected"][1],
                                         run_floor["requests"], duration, run_floor["drained"])
            floor_result.update(job_startup_s=run_floor["startup"], loadavg_1m_during_window=run_floor["load"])
    finally:
        if own_emulator:
            emulator.stop()
    latencies, arrivals = result.pop("_latencies"), result.pop("_arrivals")
    if floor_result is not None:
        floor_latencies = floor_result.pop("_latencies", None) or []
        result["floor"] = floor_result
        result["floor_events_per_s"] = floor_result["events_per_s"]
        result["floor_latency_p95_s"] = floor_result["latency_p95_s"]
        if result["events_per_s"] and floor_result["events_per_s"]:
            result["ratio_to_same_shape_floor"] = round(result["events_per_s"] / floor_result["events_per_s"], 3)
        # Like for like: every floor object waits in identify's reorder buffer, as only those of
        # our objects that ride with their user's update do (the others skip it).
        ours_p95 = result["latency_p95_via_identify_s"]
        if ours_p95 == ours_p95 and floor_result["latency_p95_s"]:
            result["p95_ratio_to_same_shape_floor"] = round(ours_p95 / floor_result["latency_p95_s"], 3)
            result["p95_all_objects_ratio_to_same_shape_floor"] = round(
                result["latency_p95_s"] / floor_result["latency_p95_s"], 3)
    else:
        floor_latencies = []
    if plot_path:
        try:
            result["plot"] = plot(plot_path, ours["published"], ours["requests"], latencies, arrivals, ours["t0"],
                                  duration, rate, result, floor_latencies)
        except ImportError:
            result["plot"] = None  # matplotlib is in the [bench] extra
    return result


def _run_job(emulator, sim, messages, log_dir, which, rate, duration, tail, max_wait, drain_seconds, log) -> dict:
    """Run our job (``which="job"``) or the floor (``"floor"``) at the offered load; what the
    simulator received, and what was published when."""
    run_id = secrets.token_hex(3)
    topic, dead, subscription = f"bench-{which}-{run_id}", f"bench-dead-{run_id}", f"bench-{which}-sub-{run_id}"
    emulator.create_topic(topic)
    emulator.create_topic(dead)
    emulator.create_subscription(subscription, topic)
    syncs_path = os.path.join(log_dir, f"bench-syncs-{which}.yaml")
    with open(syncs_path, "w") as f:
        yaml.safe_dump(sync_document(sim.url), f, sort_keys=False)
    job_log = os.path.join(log_dir, f"streaming-{which}.log")
    module = "pipeline.stream" if which == "job" else "bench.floor_job"
    command = [
        sys.executable, "-m", module,
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
    published: List[Published] = []
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
        ids = emulator.publish(topic, warm)
        published.extend(Published(d, events_in(d), now, False, i) for d, i in zip(warm, ids))
        while client.counters().get("requests", 0) == 0:
            if job.poll() is not None:
                raise RuntimeError(f"the {which} exited with code {job.returncode}; see {job_log}")
            if time.monotonic() - started > 180:
                raise RuntimeError(f"the {which} sent nothing within 180 s; see {job_log}")
            time.sleep(0.25)
        startup = time.monotonic() - started
        log(f"  streaming ({which}): ready after {startup:.1f} s; "
            f"publishing {rate:g} events/s for {duration:g} s (+{tail:g} s tail)")
        time.sleep(max_wait + 1.0)  # let the warm-up's last partial batches leave

        load = _LoadSampler()
        t0 = time.time()
        _publish_paced(emulator, topic, messages[len(warm):], rate, duration, tail, published, log)
        t_last = time.time()
        load.stop()
        if job.poll() is not None:
            raise RuntimeError(f"the {which} exited with code {job.returncode}; see {job_log}")
        if which == "job":
            expected = expected_event_objects(published, sim.url)
            wanted, arrived = set(expected), arrived_event_keys
        else:
            expected = expected_floor_objects(published, sim.url)
            wanted, arrived = expected[0], (lambda rs: arrived_floor_objects(rs, expected[1]))
        drained = _wait_for(client, wanted, arrived, t_last + drain_seconds)
        if not drained:
            log(f"  streaming ({which}): not every expected object had arrived {drain_seconds:g} s "
                "after the last publish")
    finally:
        stop_process(job)
    return {"published": published, "expected": expected, "requests": all_requests(client),
            "counters": client.counters(), "drained": drained, "startup": round(startup, 1),
            "load": load.summary(), "t0": t0}


def _wait_for(client, wanted: set, arrived, deadline: float) -> bool:
    while True:
        if wanted <= arrived(all_requests(client)):
            return True
        if time.time() >= deadline:
            return False
        time.sleep(2.0)


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
