"""Part ``core``: our pure per-event code, in-process, against a floor on the same corpus.

Ours: parse → route (track + identify work, for both syncs) → identify (the DoFn's code, with
in-memory state and the job's reorder buffer, flushed after each chunk of messages) → pack (by
sync and shard, ≤ 75 objects, ≤ 4 MB) → encode the request bodies.
``us_per_event`` (goal ≤ 40) is its CPU time per event: no Beam runner, no HTTP, only the
project's functions and DoFns and the state cells' encoding (a driver in ``bench.driver`` stands
in for the runner, at a cost kept out of the DoFns' way). One more pass without the reorder
buffer (``lateness_seconds=0``: each update applied as it arrives) says what the buffer costs.
Floor: ``orjson.loads`` of every message and ``orjson.dumps`` of one body per 75 decoded events,
nothing else: the least any forwarder must do (its ratio is a retired goal, kept as a figure).
Both run ``repeats`` times, interleaved; the least CPU time of each counts (the least disturbed
by the other processes on a shared machine).

A separate, untimed run is profiled with pyinstrument (cProfile if it is missing): the top
functions by their own time, and the share of each source file.
"""
from __future__ import annotations

import collections
import time
from typing import List

import orjson

from bench.common import Corpus, bench_syncs
from bench.driver import Packer, PureJob, encode_requests
from pipeline.graph import DEFAULT_LATENESS_SECONDS

FLOOR_EVENTS_PER_BODY = 75


STAGES = ("parse", "route_track", "identify", "pack", "encode")
# Messages per chunk, about a bundle. A worker holds one bundle's elements at a time, not a
# run's: pushing the whole corpus through one stage at a time would keep every intermediate
# record alive, and the garbage collector's passes over that growing heap (40% of the time at
# 100,000 events) would be charged to our code.
CHUNK_MESSAGES = 50


def run_ours(messages: List[bytes], syncs, chunk: int = CHUNK_MESSAGES,
             lateness_seconds: float = DEFAULT_LATENESS_SECONDS) -> dict:
    """One pass of our code over ``chunk`` messages at a time, stage by stage; returns CPU
    seconds per stage and what came out. Each key's open request carries over to the next chunk."""
    job = PureJob(syncs, lateness_seconds=lateness_seconds)
    packer = Packer()
    stages = dict.fromkeys(STAGES, 0.0)
    counts = collections.Counter()
    wall = time.perf_counter()
    for begin in range(0, len(messages), chunk):
        t0 = time.process_time()
        parsed = []
        for i in range(begin, min(begin + chunk, len(messages))):
            parsed.extend(job.parse(messages[i], f"m{i}"))
        t1 = time.process_time()
        track, work = [], []
        for event in parsed:
            t, w = job.route_event(event)
            track.extend(t)
            work.extend(w)
        t2 = time.process_time()
        attributes = job.identify_works(work)
        t3 = time.process_time()
        batches = packer.add(attributes + track)
        if begin + chunk >= len(messages):
            batches += packer.flush()
        t4 = time.process_time()
        bodies = encode_requests(batches)
        t5 = time.process_time()
        for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            stages[stage] += seconds
        counts.update(events_parsed=len(parsed), attribute_objects=len(attributes), event_objects=len(track),
                      requests=len(batches), body_bytes=sum(len(b) for b in bodies))
    return {
        "seconds": sum(stages.values()),
        "wall_seconds": time.perf_counter() - wall,
        "stages": stages,
        "events_parsed": counts["events_parsed"],
        "objects": counts["attribute_objects"] + counts["event_objects"],
        "attribute_objects": counts["attribute_objects"],
        "event_objects": counts["event_objects"],
        "requests": counts["requests"],
        "body_bytes": counts["body_bytes"],
    }


def run_floor(messages: List[bytes]) -> float:
    t0 = time.process_time()
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
    return time.process_time() - t0


def profile(messages: List[bytes], syncs, top: int = 15) -> dict:
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
    by_file = collections.Counter()
    for name, seconds in self_time.items():
        by_file[name.rsplit("(", 1)[1].split(":", 1)[0]] += seconds
    return {
        "profiler": "pyinstrument",
        "total_seconds": round(total, 3),
        "top_self_time": [
            {"function": name, "seconds": round(s, 3), "share_pct": round(100 * s / total, 1)}
            for name, s in self_time.most_common(top)
        ],
        "by_file_pct": {name: round(100 * s / total, 1) for name, s in by_file.most_common(12)},
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
        "us_per_event_by_stage": {k: round(1e6 * v / events, 2) for k, v in best["stages"].items()},
        "wall_seconds": round(best["wall_seconds"], 3),
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
    # What identify's reorder buffer costs: the same code applying each update as it arrives.
    direct = run_ours(messages, syncs, lateness_seconds=0.0)
    result["us_per_event_without_reorder_buffer"] = round(1e6 * direct["seconds"] / events, 2)
    result["reorder_buffer_us_per_event"] = round(1e6 * (best["stages"]["identify"] - direct["stages"]["identify"])
                                                  / events, 2)
    if do_profile:
        result["profile"] = profile(messages, syncs)
    return result
