"""The streaming part's arithmetic: which objects each run should deliver, when each one did,
and the figures and plot drawn from that (``bench.streaming`` runs the jobs).

Latency is the simulator's receive time minus the publish time of the event. Our job's Braze
objects carry no insert id, so an event object is matched back to its published event by
(identifier, name, time); only event objects can be matched (attribute objects cannot), and
they are most of what is timed. Repeats (the same key twice) match the earliest publish first.
The same-shape floor's objects carry their event's source (``bench_source``), so each is timed.
"""
from __future__ import annotations

import collections
import math
import os
from typing import Dict, List, Optional

import orjson

from bench.common import MAX_OBJECTS, bench_syncs, object_key, objects_in, percentile, request_sync
from bench.driver import PureJob
from bench.floor import SOURCE_ATTRIBUTE
from transforms.identifiers import IdentifierMapper


class Published:
    __slots__ = ("data", "events", "at", "window", "message_id")

    def __init__(self, data: bytes, events: int, at: float, window: bool, message_id: Optional[str] = None):
        self.data, self.events, self.at, self.window, self.message_id = data, events, at, window, message_id


# --------------------------------------------------------------------------------------------
# Our job: event objects matched by (identifier, name, time)


def expected_event_objects(published: List[Published], sim_url: str) -> Dict[tuple, collections.deque]:
    """The event objects our job should send (its own route code over what was published), each
    as ``(Published, whether it rides with its user's update through identify)``."""
    pure = PureJob(bench_syncs(sim_url))
    expected: Dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
    for i, p in enumerate(published):
        for parsed in pure.parse(p.data, f"p{i}"):
            track, work = pure.route_event(parsed)
            for item in track:
                expected[object_key(item.obj)].append((p, False))
            for _, identify_work in work:
                for item in identify_work.track:
                    expected[object_key(item.obj)].append((p, True))
    return expected


def arrived_event_keys(requests) -> set:
    return {object_key(obj) for r in requests for obj in ((r.get("body") or {}).get("events") or ())}


def analyse_ours(published, expected, requests, counters, duration, rate, max_wait, drained) -> dict:
    latencies, arrivals = [], []  # of window event objects
    via_identify = []  # the latencies of those that rode with their user's update
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
            p, identified = queue.popleft()
            if p.window:
                latencies.append(r["received_at"] - p.at)
                arrivals.append(r["received_at"])
                if identified:
                    via_identify.append(latencies[-1])
    expected_window = sum(1 for q in expected.values() for p, _ in q if p.window) + len(latencies)
    events_published = sum(p.events for p in published)
    n_requests = len(requests)
    ideal = sum(math.ceil(n / MAX_OBJECTS) for n in objects_by_sync.values())
    return {
        "max_batch_wait_seconds": max_wait,
        "offered_events_per_s": rate,
        **_throughput(published, latencies, arrivals, expected_window, duration),
        "window_event_objects_matched": len(latencies),
        "window_event_objects_expected": expected_window,
        "window_event_objects_via_identify": len(via_identify),
        "latency_p95_via_identify_s": round(percentile(sorted(via_identify), 95), 3),
        "all_expected_arrived": drained,
        "events_published_total": events_published,
        "requests": n_requests,
        "objects": objects_total,
        "requests_per_1000_events": round(1000 * n_requests / events_published, 2) if events_published else None,
        "objects_per_request": round(objects_total / n_requests, 2) if n_requests else None,
        "ideal_requests": ideal,
        "fill_ratio": round(ideal / n_requests, 3) if n_requests else None,
        "requests_by_status": {str(k): v for k, v in
                               sorted(collections.Counter(r["status"] for r in requests).items())},
        "simulator_data_points": counters.get("data_points", 0),
        "_latencies": latencies,
        "_arrivals": arrivals,
    }


# --------------------------------------------------------------------------------------------
# The same-shape floor: one attribute object per (event, sync), carrying its source


def expected_floor_objects(published: List[Published], sim_url: str):
    """``(expected {(event identity, sync)}, {source: (identity, Published)})``: the floor drops
    repeats by insert id as the job does, so an event's identity is its dedup key."""
    mappers = [(s.name, IdentifierMapper(s.identifier, s.users.update_existing_only)) for s in bench_syncs(sim_url)]
    expected, sources = set(), {}
    for p in published:
        try:
            decoded = orjson.loads(p.data)
        except orjson.JSONDecodeError:
            continue
        for index, raw in enumerate(decoded if isinstance(decoded, list) else [decoded]):
            if not isinstance(raw, dict):
                continue
            source = f"{p.message_id}/{index}"
            insert_id = raw.get("insert_id") or raw.get("$insert_id") or raw.get("uuid")
            identity = f"{insert_id}|{raw.get('device_id') or raw.get('user_id') or ''}" if insert_id else source
            sources[source] = (identity, p)
            for name, mapper in mappers:
                if mapper.user_key(raw) is not None:
                    expected.add((identity, name))
    return expected, sources


def _floor_sync(obj: dict) -> str:
    return "eu-devices" if "user_alias" in obj else "us-app"  # the two syncs of bench.common.BENCH_SYNCS


def arrived_floor_objects(requests, sources) -> set:
    seen = set()
    for r in requests:
        for obj in (r.get("body") or {}).get("attributes") or ():
            known = sources.get(obj.get(SOURCE_ATTRIBUTE))
            if known is not None:
                seen.add((known[0], _floor_sync(obj)))
    return seen


def analyse_floor(published, expected, sources, requests, duration, drained) -> dict:
    latencies, arrivals, seen = [], [], set()
    for r in requests:
        for obj in (r.get("body") or {}).get("attributes") or ():
            known = sources.get(obj.get(SOURCE_ATTRIBUTE))
            if known is None or (known[0], _floor_sync(obj)) in seen:
                continue
            seen.add((known[0], _floor_sync(obj)))
            if known[1].window:
                latencies.append(r["received_at"] - known[1].at)
                arrivals.append(r["received_at"])
    window_identities = {identity for identity, p in sources.values() if p.window}
    expected_window = sum(1 for identity, _ in expected if identity in window_identities)
    n_requests = len(requests)
    objects = sum(objects_in(r.get("body")) for r in requests)
    return {
        **_throughput(published, latencies, arrivals, expected_window, duration),
        "window_objects_matched": len(latencies),
        "window_objects_expected": expected_window,
        "all_expected_arrived": drained,
        "requests": n_requests,
        "objects_per_request": round(objects / n_requests, 2) if n_requests else None,
        "_latencies": latencies,
    }


def _throughput(published, latencies, arrivals, expected_window: int, duration: float) -> dict:
    """Delivered events/s: the window's events times the share of its objects delivered, over
    the time those deliveries took; and the latency percentiles."""
    window_events = sum(p.events for p in published if p.window)
    delivered_share = len(latencies) / expected_window if expected_window else float("nan")
    span = (max(arrivals) - min(arrivals)) if len(arrivals) > 1 else float("nan")
    lat = sorted(latencies)
    return {
        "duration_s": duration,
        "window_events_published": window_events,
        "window_publish_rate_events_per_s": round(window_events / duration, 1),
        "events_per_s": round(window_events * delivered_share / span, 1) if span == span and span > 0 else None,
        "delivered_share": round(delivered_share, 3) if delivered_share == delivered_share else None,
        "latency_p50_s": round(percentile(lat, 50), 3),
        "latency_p95_s": round(percentile(lat, 95), 3),
        "latency_p99_s": round(percentile(lat, 99), 3),
        "latency_max_s": round(lat[-1], 3) if lat else None,
    }


# --------------------------------------------------------------------------------------------


def plot(path, published, requests, latencies, arrivals, t0, duration, rate, result, floor_latencies=()):
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
    ax1.set_title(f"Our job: throughput at an offered {rate:g} events/s (BundleBasedDirectRunner)")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.scatter([a - t0 for a in arrivals], latencies, s=2, alpha=0.3)
    ax2.set_xlabel("receive time, seconds since the window started")
    ax2.set_ylabel("latency (s)")
    ax2.set_title("Publish → Braze latency of each event object over time")
    if latencies:
        ax3.hist(latencies, bins=60, alpha=0.6, label="our job")
        if floor_latencies:
            ax3.hist(floor_latencies, bins=60, alpha=0.4, label="same-shape floor")
        for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            value = result[f"latency_{q}_s"]
            ax3.axvline(value, color="k", linestyle=style, label=f"ours {q} {value:.2f} s")
        ax3.legend(fontsize=8)
    ax3.set_xlabel("latency (s)")
    ax3.set_ylabel("objects")
    ax3.set_title("Latency distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.path.relpath(path, os.getcwd())
