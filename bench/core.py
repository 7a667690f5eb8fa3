"""Part ``core``: our pure per-event code, in-process, against a floor on the same corpus.

Ours: parse → route (track + identify work, for both syncs) → identify (the DoFn's code, with
in-memory state) → pack (by sync and shard, ≤ 75 objects, ≤ 4 MB) → encode the request bodies.
Floor: ``orjson.loads`` of every message and ``orjson.dumps`` of one body per 75 decoded events,
nothing else: the least any forwarder must do. Both run ``repeats`` times, interleaved; the best
time of each counts (the least disturbed by the other processes on a shared machine).

A separate, untimed run is profiled with pyinstrument (cProfile if it is missing): the top
functions by their own time.
"""
from __future__ import annotations

import collections
import time
from typing import List

import orjson

from bench.common import Corpus, PureJob, bench_syncs, encode_requests, pack_requests

FLOOR_EVENTS_PER_BODY = 75


def run_ours(messages: List[bytes], syncs) -> dict:
    """One pass of our code, stage by stage; returns seconds per stage and what came out."""
    job = PureJob(syncs)
    t0 = time.perf_counter()
    parsed = []
    for i, data in enumerate(messages):
        parsed.extend(job.parse(data, f"m{i}"))
    t1 = time.perf_counter()
    track, work = [], []
    for event in parsed:
        t, w = job.route_event(event)
        track.extend(t)
        work.extend(w)
    t2 = time.perf_counter()
    attributes = []
    for w in work:
        attributes.extend(job.identify_work(w))
    t3 = time.perf_counter()
    batches = pack_requests(attributes + track)
    t4 = time.perf_counter()
    bodies = encode_requests(batches)
    t5 = time.perf_counter()
    return {
        "seconds": t5 - t0,
        "stages": {"parse": t1 - t0, "route_track": t2 - t1, "identify": t3 - t2, "pack": t4 - t3,
                   "encode": t5 - t4},
        "events_parsed": len(parsed),
        "objects": len(attributes) + len(track),
        "attribute_objects": len(attributes),
        "event_objects": len(track),
        "requests": len(batches),
        "body_bytes": sum(len(b) for b in bodies),
    }


def run_floor(messages: List[bytes]) -> float:
    t0 = time.perf_counter()
    pending = []
    bodies = 0
    for data in messages:
        try:
            decoded = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(decoded, list):
            pending.extend(decoded)
        else:
            pending.append(decoded)
        if len(pending) >= FLOOR_EVENTS_PER_BODY:
            orjson.dumps({"events": pending[:FLOOR_EVENTS_PER_BODY]})
            del pending[:FLOOR_EVENTS_PER_BODY]
            bodies += 1
    if pending:
        orjson.dumps({"events": pending})
    return time.perf_counter() - t0


def profile(messages: List[bytes], syncs, top: int = 8) -> dict:
    """Top functions by self time over one run of ours (not timed)."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return _profile_cprofile(messages, syncs, top)
    profiler = Profiler(interval=0.0005)
    profiler.start()
    run_ours(messages, syncs)
    profiler.stop()
    session = profiler.last_session
    root = session.root_frame()
    self_time = collections.Counter()
    total = 0.0

    def walk(frame):
        nonlocal total
        children = [c for c in frame.children if not c.is_synthetic]
        own = frame.time - sum(c.time for c in children)
        if own > 0 and not frame.file_path_short.startswith("bench"):  # not the harness's own frames
            name = f"{frame.function} ({frame.file_path_short}:{frame.line_no})"
            self_time[name] += own
            total += own
        for child in children:
            walk(child)

    walk(root)
    return {
        "profiler": "pyinstrument",
        "total_seconds": round(total, 3),
        "top_self_time": [
            {"function": name, "seconds": round(s, 3), "share_pct": round(100 * s / total, 1)}
            for name, s in self_time.most_common(top)
        ],
    }


def _profile_cprofile(messages, syncs, top):
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    run_ours(messages, syncs)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # tottime
    total = sum(v[2] for _, v in rows)
    return {
        "profiler": "cProfile",
        "total_seconds": round(total, 3),
        "top_self_time": [
            {"function": f"{fn} ({file.rsplit('/', 1)[-1]}:{line})", "seconds": round(v[2], 3),
             "share_pct": round(100 * v[2] / total, 1)}
            for (file, line, fn), v in rows[:top]
        ],
    }


def run(corpus: Corpus, repeats: int = 3, do_profile: bool = True, log=print) -> dict:
    syncs = bench_syncs()
    messages = corpus.messages
    ours, floors = [], []
    for i in range(repeats):
        floors.append(run_floor(messages))
        ours.append(run_ours(messages, syncs))
        log(f"  core: pass {i + 1}/{repeats}: ours {ours[-1]['seconds']:.2f} s, floor {floors[-1]:.2f} s")
    best = min(ours, key=lambda r: r["seconds"])
    floor = min(floors)
    events = corpus.events
    result = {
        "events": events,
        "messages": len(messages),
        "repeats": repeats,
        "events_per_s": round(events / best["seconds"]),
        "floor_events_per_s": round(events / floor),
        "ratio_to_floor": round(floor / best["seconds"], 3),
        "us_per_event": round(1e6 * best["seconds"] / events, 2),
        "floor_us_per_event": round(1e6 * floor / events, 2),
        "stage_share_pct": {k: round(100 * v / best["seconds"], 1) for k, v in best["stages"].items()},
        "objects": best["objects"],
        "attribute_objects": best["attribute_objects"],
        "event_objects": best["event_objects"],
        "requests": best["requests"],
        "objects_per_request": round(best["objects"] / max(1, best["requests"]), 2),
        "body_bytes": best["body_bytes"],
        "all_seconds": [round(r["seconds"], 3) for r in ours],
        "all_floor_seconds": [round(f, 3) for f in floors],
    }
    if do_profile:
        result["profile"] = profile(messages, syncs)
    return result
