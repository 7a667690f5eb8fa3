"""Part ``scale``: does the whole graph's cost per event, and its state traffic per event, stay
flat as the volume grows?

The graph (``EventsToBraze``, FnApiRunner, into the simulator) runs over corpora of 10,000 and
100,000 events (``make bench``), and 1,000,000 (``make bench-scale``), each with one user per 20
events (500, 5,000, 50,000 users; seed as given), so keys and state grow with the volume while
each user's traffic looks the same. Per size: CPU µs per event net of the runner's start-up
(the same graph over a few events), and the user state read and written per event and stage
(``bench.state_meter``), on the state channel and per operation, from a second, metered run (the
meter costs about 15% more CPU, growing a little with the keys it counts).

Goals: the cost per event at the largest size within 1.2× of the smallest's
(``cost_ratio_largest_to_smallest``), and state bytes per event ≤ 2 KB at every size
(``state_bytes_per_event``, the largest, per operation: the most a streaming runner would move;
``state_channel_bytes_per_event`` beside it, what moved on the FnApiRunner's state channel).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from bench.beam_batch import fixed_costs, run_graph, simulator_figures
from bench.common import Corpus, CorpusSpec, bench_key, simulator
from bench.state_meter import metered_state

SIZES = (10_000, 100_000)
EVENTS_PER_USER = 20


def spec_for(events: int, base: CorpusSpec) -> CorpusSpec:
    return dataclasses.replace(base, events=events, users=max(1, events // EVENTS_PER_USER))


def measure(corpus: Corpus, log_dir: str, log=print) -> dict:
    """Two runs of the graph: one timed, one metered (the meter's own cost grows a little with
    the keys it counts, and would blur the cost curve)."""
    with simulator(log_dir, name=f"sim-scale-{corpus.events}") as sim, bench_key(sim.key):
        client = sim.client()
        fixed = fixed_costs(corpus, log_dir, sim)["ours"]
        client.reset()
        timing = run_graph(corpus.path, sim.url)
        figures = simulator_figures(client, corpus.events)
        client.reset()
        with metered_state() as meter:
            run_graph(corpus.path, sim.url)
    log(f"  scale: {corpus.events} events in {timing.wall:.1f} s ({timing.cpu:.1f} s CPU)")
    return {"corpus": corpus.spec.as_dict(), "events": corpus.events, "cpu": timing.cpu, "wall": timing.wall,
            "fixed_cpu": fixed, "state": meter.per_event(corpus.events), **figures}


def run(base: CorpusSpec, log_dir: str, sizes: Sequence[int] = SIZES, main_corpus: Optional[Corpus] = None,
        log=print) -> dict:
    points = []
    for size in sizes:
        spec = spec_for(size, base)
        corpus = main_corpus if main_corpus is not None and main_corpus.spec == spec else Corpus(spec, log_dir)
        points.append(measure(corpus, log_dir, log))
    curve = []
    for p in points:
        # A size too small for its cost to stand out of the fixed cost's noise has no figure
        # (None), rather than a ratio of noise.
        net = p["cpu"] - p["fixed_cpu"]
        measurable = net > 0.05 * p["fixed_cpu"]
        curve.append({
            "events": p["events"],
            "users": p["corpus"]["users"],
            "cpu_seconds": round(p["cpu"], 2),
            "wall_seconds": round(p["wall"], 2),
            "fixed_cpu_seconds": round(p["fixed_cpu"], 2),
            "us_per_event_cpu": round(1e6 * net / p["events"], 1) if measurable else None,
            "events_per_cpu_s": round(p["events"] / net) if measurable else None,
            "state_bytes_per_event": p["state"]["per_operation_bytes_per_event"],
            "state_channel_bytes_per_event": p["state"]["bytes_per_event"],
            "state_by_stage": {stage: {k: v[k] for k in ("bytes_read_per_event", "bytes_written_per_event",
                                                         "calls_per_event", "keys")}
                               for stage, v in p["state"]["per_operation"]["stages"].items()},
            "state_channel_by_stage": {stage: {k: v[k] for k in ("bytes_read_per_event", "bytes_written_per_event",
                                                                 "calls_per_event")}
                                       for stage, v in p["state"]["stages"].items()},
            "requests_per_1000_events": p["requests_per_1000_events"],
            "objects_per_request": p["objects_per_request"],
        })
    smallest, largest = curve[0], curve[-1]
    state_sizes = [c["state_bytes_per_event"] for c in curve]
    return {
        "runner": "FnApiRunner",
        "sizes": [c["events"] for c in curve],
        "events_per_user": EVENTS_PER_USER,
        "curve": curve,
        "cost_ratio_largest_to_smallest": (round(largest["us_per_event_cpu"] / smallest["us_per_event_cpu"], 3)
                                           if largest["us_per_event_cpu"] and smallest["us_per_event_cpu"] else None),
        "state_bytes_per_event": max(state_sizes),
        "state_channel_bytes_per_event": max(c["state_channel_bytes_per_event"] for c in curve),
        "state_ratio_largest_to_smallest": round(state_sizes[-1] / max(state_sizes[0], 1e-9), 3),
        "state_detail_largest": points[-1]["state"],
    }
