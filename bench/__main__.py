"""``python -m bench [PART ...]``: run the benchmark parts (all by default), merge their figures
into bench/results.json and print a short table. See bench/__init__.py for the parts."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback

from bench import PARTS
from bench.common import Corpus, CorpusSpec, machine, tempdir
from pipeline.local_runner import without_fnapi_state_cache

HERE = os.path.dirname(os.path.abspath(__file__))
LARGE_SCALE = 1_000_000

# (part, key, goal text, test): issue 14's goals; a figure that misses one is reported, not hidden.
GOALS = (
    ("beam_batch", "ratio_to_same_shape_floor", ">= 0.5", lambda v: v >= 0.5),
    ("scale", "cost_ratio_largest_to_smallest", "<= 1.2", lambda v: v <= 1.2),
    ("scale", "state_bytes_per_event", "<= 2048 bytes", lambda v: v <= 2048),
    ("core", "us_per_event", "<= 40 us", lambda v: v <= 40),
    ("streaming", "ratio_to_same_shape_floor", ">= 0.8 (delivered events/s)", lambda v: v >= 0.8),
    ("streaming", "p95_ratio_to_same_shape_floor", "<= 1.25", lambda v: v <= 1.25),
    ("data_points", "ours_redundant_writes", "== 0", lambda v: v == 0),
    ("beam_batch", "objects_per_request", ">= 74", lambda v: v >= 74),
)
# Retired goals (issue 14): their figures stay in the output, marked, with no verdict.
RETIRED = {
    "core.ratio_to_floor": ">= 0.5 against a C decode/encode floor",
    "beam_batch.ratio_to_passthrough": ">= 0.5",
    "streaming.latency_p95_s": "<= 5 s at 300 events/s on the local runner",
    "streaming.fill_ratio": ">= 0.95",
}

TABLE = (
    ("core", "us_per_event", "us per event, our code, 2 syncs"),
    ("core", "events_per_s", "events/s"),
    ("core", "floor_events_per_s", "events/s (decode+encode floor)"),
    ("core", "ratio_to_floor", ""),
    ("beam_batch", "events_per_cpu_s", "events per CPU-second"),
    ("beam_batch", "floor_events_per_cpu_s", "events per CPU-second (same-shape floor)"),
    ("beam_batch", "ratio_to_same_shape_floor", ""),
    ("beam_batch", "events_per_s", "events/s wall"),
    ("beam_batch", "passthrough_events_per_s", "events/s wall (passthrough)"),
    ("beam_batch", "ratio_to_passthrough", ""),
    ("beam_batch", "requests_per_1000_events", ""),
    ("beam_batch", "objects_per_request", ""),
    ("beam_batch", "data_points_per_1000_events", ""),
    ("scale", "sizes", "events"),
    ("scale", "cost_ratio_largest_to_smallest", ""),
    ("scale", "state_bytes_per_event", "bytes per event, per operation (largest over sizes)"),
    ("scale", "state_channel_bytes_per_event", "bytes per event on the FnApiRunner's state channel"),
    ("scale_large", "sizes", "events (make bench-scale)"),
    ("scale_large", "cost_ratio_largest_to_smallest", ""),
    ("scale_large", "state_bytes_per_event", "bytes per event, per operation"),
    ("streaming", "events_per_s", "events/s delivered"),
    ("streaming", "floor_events_per_s", "events/s delivered (same-shape floor)"),
    ("streaming", "ratio_to_same_shape_floor", ""),
    ("streaming", "latency_p95_s", "s"),
    ("streaming", "floor_latency_p95_s", "s (same-shape floor)"),
    ("streaming", "p95_ratio_to_same_shape_floor", ""),
    ("streaming", "latency_p50_s", "s"),
    ("streaming", "latency_p99_s", "s"),
    ("streaming", "requests_per_1000_events", ""),
    ("streaming", "objects_per_request", ""),
    ("streaming", "fill_ratio", ""),
    ("sink", "objects_per_s", "objects/s, one process, each request its own key, 100 ms Braze"),
    ("sink", "steady_objects_per_s_per_key", "objects/s, one key, 100 ms Braze"),
    ("sink", "drain_objects_per_s", "objects/s draining one key by in-flight limit (corpus users)"),
    ("sink", "drain_objects_per_s_own_users", "the same, requests without shared users"),
    ("data_points", "ours", "attribute data points"),
    ("data_points", "naive", "attribute data points"),
    ("data_points", "saving_pct", "%"),
    ("data_points", "ours_redundant_writes", ""),
    ("naive_forwarder", "requests_per_1000_events", ""),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"any of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--events", type=int, default=100_000, help="corpus size in events")
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--malformed-share", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=3, help="core: timed passes of ours and of the floor")
    parser.add_argument("--no-profile", action="store_true", help="core: skip the profile")
    parser.add_argument("--rate", type=float, default=300.0, help="streaming: offered events/s")
    parser.add_argument("--duration", type=float, default=45.0, help="streaming: measured seconds")
    parser.add_argument("--tail", type=float, default=5.0, help="streaming: seconds published after the window")
    parser.add_argument("--max-batch-wait", type=float, default=2.0,
                        help="streaming: the job's --max_batch_wait_seconds (its default)")
    parser.add_argument("--beam-events", type=int, default=0,
                        help="beam_batch/data_points: the graph runs on this prefix of the corpus (0: all of it, "
                             "about 25 s on 2 cores)")
    parser.add_argument("--scale-sizes", default="10000,100000",
                        help="scale: corpus sizes in events, comma-separated (make bench-scale adds 1000000)")
    parser.add_argument("--sink-batches", type=int, default=60)
    parser.add_argument("--drain-requests", type=int, default=40, help="sink: requests held, then drained")
    parser.add_argument("--in-flight", default="1,4,8", help="sink: in-flight limits compared on the drain")
    parser.add_argument("--naive-events", type=int, default=2000)
    parser.add_argument("--out", default=os.path.join(HERE, "results.json"))
    parser.add_argument("--plot", default=os.path.join(HERE, "latency.png"))
    args = parser.parse_args(argv)
    try:
        args.scale_sizes = tuple(sorted(int(n) for n in args.scale_sizes.split(",")))
        args.in_flight = tuple(int(n) for n in args.in_flight.split(","))
    except ValueError:
        parser.error("--scale-sizes and --in-flight take comma-separated integers, e.g. 10000,100000")
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return args


def run(args, log=print) -> dict:
    parts = [p for p in PARTS if p in args.parts] or list(PARTS)  # beam_batch before data_points
    machine_info = machine()  # the load average before we add to it
    without_fnapi_state_cache()  # as the SDK harness runs state (pipeline/local_runner.py)
    spec = CorpusSpec(events=args.events, users=args.users, seed=args.seed, malformed_share=args.malformed_share)
    began = time.monotonic()
    results = {}
    shared = {}
    with tempdir() as work:
        corpus = Corpus(spec, work)
        log(f"bench: corpus of {corpus.events} events in {len(corpus.messages)} messages "
            f"({corpus.generate_seconds:.1f} s); work files in {work}")
        for part in parts:
            t = time.monotonic()
            log(f"bench: {part} ...")
            try:
                figures = _run_part(part, args, corpus, work, parts, shared, log)
            except Exception as error:  # noqa: BLE001 - one broken part must not hide the others
                traceback.print_exc()
                figures = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
                log(f"bench: {part} FAILED: {figures['error']}")
            figures["corpus"] = spec.as_dict()
            figures["part_seconds"] = round(time.monotonic() - t, 1)
            figures["measured_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            results[part] = figures
            if part == "scale" and max(args.scale_sizes) >= LARGE_SCALE:
                results["scale_large"] = figures  # make bench-scale's curve, kept when make bench runs
    results["machine"] = machine_info
    results["run"] = {"parts": parts, "seconds": round(time.monotonic() - began, 1),
                      "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                      "command": "python -m bench " + " ".join(sys.argv[1:])}
    return results


def _run_part(part, args, corpus, work, parts, shared, log) -> dict:
    if part == "core":
        from bench import core

        return core.run(corpus, repeats=args.repeats, do_profile=not args.no_profile, log=log)
    if part == "beam_batch":
        from bench import beam_batch

        try:
            return beam_batch.run(corpus, work, shared=shared, events=args.beam_events, log=log)
        except Exception as error:
            shared["graph_error"] = f"{type(error).__name__}: {str(error)[:300]}"  # data_points: skip the graph
            raise
    if part == "scale":
        from bench import scale

        return scale.run(corpus.spec, work, sizes=args.scale_sizes, main_corpus=corpus, log=log)
    if part == "streaming":
        from bench import streaming

        return streaming.run(corpus, work, rate=args.rate, duration=args.duration, tail=args.tail,
                             max_batch_wait_seconds=args.max_batch_wait, plot_path=args.plot, log=log)
    if part == "sink":
        from bench import sink

        return sink.run(corpus, work, batches=args.sink_batches, drain_requests=args.drain_requests,
                        in_flight_limits=args.in_flight, log=log)
    if part == "data_points":
        from bench import data_points

        return data_points.run(corpus, work, ours=shared.get("data_points"), events=args.beam_events,
                               graph_error=shared.get("graph_error"), log=log)
    from bench import naive_forwarder

    return naive_forwarder.run(corpus, work, events=args.naive_events, log=log)


def merge(path: str, new: dict) -> dict:
    """Keep the figures of parts not run this time (each part says when it was measured)."""
    merged = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                merged = json.load(f)
        except (OSError, ValueError):
            merged = {}
    merged.update(new)
    merged["goals"] = goals(merged)
    return merged


def goals(results: dict) -> list:
    """Each goal, met or not; the scale goals are judged on make bench-scale's curve (up to
    1,000,000 events) when there is one, as the issue states them."""
    out = []
    for part, key, text, test in GOALS:
        source = "scale_large" if part == "scale" and key in results.get("scale_large", {}) else part
        value = results.get(source, {}).get(key)
        out.append({"figure": f"{part}.{key}", "goal": text, "value": value, "from": source,
                    "met": None if value is None else bool(test(value))})
    return out


def table(results: dict) -> str:
    lines = [f"{'figure':<44} {'value':>14}  unit"]
    for part, key, unit in TABLE:
        value = results.get(part, {}).get(key)
        if value is None:
            continue
        figure = f"{part}.{key}"
        if figure in RETIRED:
            unit = f"{unit} (retired goal {RETIRED[figure]})".strip()
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, separators=(",", ":"))
        lines.append(f"{figure:<44} {value:>14}  {unit}")
    lines.append("")
    for g in results.get("goals", ()):
        verdict = "not measured" if g["met"] is None else "met" if g["met"] else "NOT MET"
        origin = " from make bench-scale" if g.get("from") == "scale_large" else ""
        lines.append(f"goal {g['figure']} {g['goal']}: {verdict} ({g['value']}{origin})")
    m = results.get("machine", {})
    lines.append(f"machine: {m.get('cores')} cores {m.get('cpu_model', '')}, Python {m.get('python')}, "
                 f"Beam {m.get('beam_version')}, load {m.get('loadavg_1m_at_start')} at start")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    new = run(args, log=lambda *a: print(*a, flush=True))
    results = merge(args.out, new)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print()
    print(table(results))
    print(f"\nbench: wrote {os.path.relpath(args.out)} in {new['run']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
