"""Part ``beam_batch``: the whole graph (``pipeline.graph.EventsToBraze``) on the FnApiRunner
over the corpus file, into the Braze simulator (a subprocess, so it does not share our GIL),
against two baselines on the same runner and source:

* the same-shape floor (``bench.floor``): the job's keyed stages, state cells, timers, keys and
  coders with trivial bodies, POSTing its requests to the simulator too: what Beam and Braze
  cost for a job of this shape, so ours / floor is the share left to our own code;
* a passthrough pipeline: read → decode → count (a retired goal's baseline, kept as a figure).

Speeds are CPU seconds of this process (``time.process_time``: the in-process runner's threads,
our code and the HTTP client, not the simulator's process nor time spent waiting for it), with
wall-clock figures beside them: the machine is shared, and CPU time is what a Dataflow worker's
vCPU pays. Each run includes the runner's start-up (``fixed_*``: the same graph over a handful of
events). State is metered by the ``scale`` part, not here: the meter costs CPU time.
"""
from __future__ import annotations

import sys
import time
from typing import NamedTuple, Optional

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions

from bench.common import Corpus, all_requests, bench_key, bench_syncs, job_default, simulator
from bench.floor import SameShapeFloor
from local.generate import read_messages, write_jsonl
from pipeline.graph import EventsToBraze

RUNNER = "FnApiRunner"
FIXED_COST_EVENTS = 50


class Timing(NamedTuple):
    wall: float
    cpu: float


def read_corpus(pipeline: beam.Pipeline, path: str):
    return pipeline | "CorpusPath" >> beam.Create([path]) | "ReadMessages" >> beam.FlatMap(read_messages)


def _decode(data: bytes):
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _timed(build) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    with beam.Pipeline(options=PipelineOptions(flags=[], runner=RUNNER)) as p:
        build(p)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def run_passthrough(path: str) -> Timing:
    return _timed(lambda p: read_corpus(p, path) | "Decode" >> beam.Map(_decode)
                  | "Count" >> beam.combiners.Count.Globally())


def run_graph(path: str, sim_url: str, events: bool = True) -> Timing:
    syncs = bench_syncs(sim_url, events=events)

    def build(p):
        results = read_corpus(p, path) | "EventsToBraze" >> EventsToBraze(
            syncs, max_in_flight=job_default("braze_max_in_flight"))
        results["outcomes"] | "CountOutcomes" >> beam.combiners.Count.Globally()

    return _timed(build)


def run_floor(path: str, sim_url: str) -> Timing:
    syncs = bench_syncs(sim_url)
    return _timed(lambda p: read_corpus(p, path) | "SameShapeFloor" >> SameShapeFloor(syncs)
                  | "CountOutcomes" >> beam.combiners.Count.Globally())


def fixed_costs(corpus: Corpus, log_dir: str, sim) -> dict:
    """CPU seconds of each pipeline over its first few events: the runner's own start-up."""
    path = f"{log_dir}/fixed-{FIXED_COST_EVENTS}.jsonl"
    write_jsonl(path, corpus.prefix(FIXED_COST_EVENTS))
    return {"ours": run_graph(path, sim.url).cpu, "floor": run_floor(path, sim.url).cpu,
            "events": FIXED_COST_EVENTS}


def simulator_figures(client, events: int) -> dict:
    counters = client.counters()
    requests = counters.get("requests", 0)
    objects = counters.get("objects_accepted", 0) + counters.get("objects_rejected", 0)
    return {
        "requests": requests,
        "objects": objects,
        "objects_rejected": counters.get("objects_rejected", 0),
        "objects_per_request": round(objects / max(1, requests), 2),
        "requests_per_1000_events": round(1000 * requests / max(1, events), 2),
        "objects_per_1000_events": round(1000 * objects / max(1, events), 1),
        "data_points_per_1000_events": round(1000 * counters.get("data_points", 0) / max(1, events), 1),
    }


def run(corpus: Corpus, log_dir: str, shared: Optional[dict] = None, events: int = 0, log=print) -> dict:
    """``shared["data_points"]`` receives what the data_points part needs from this run;
    ``events`` cuts the corpus to a prefix (0: all of it)."""
    corpus = corpus.subset(events, log_dir)
    events = corpus.events
    passthrough = run_passthrough(corpus.path)
    log(f"  beam_batch: passthrough {passthrough.wall:.1f} s ({passthrough.cpu:.1f} s CPU)")
    with simulator(log_dir, name="sim-beam-batch") as sim, bench_key(sim.key):
        client = sim.client()
        fixed = fixed_costs(corpus, log_dir, sim)
        client.reset()
        ours = run_graph(corpus.path, sim.url)
        log(f"  beam_batch: EventsToBraze {ours.wall:.1f} s ({ours.cpu:.1f} s CPU)")
        counters = client.counters()
        figures = simulator_figures(client, events)
        if shared is not None:
            from bench.data_points import attribute_points, redundant_writes

            shared["data_points"] = {**attribute_points(client), "replay": redundant_writes(all_requests(client)),
                                     "events": events}
        client.reset()
        floor = run_floor(corpus.path, sim.url)
        floor_figures = simulator_figures(client, events)
    log(f"  beam_batch: same-shape floor {floor.wall:.1f} s ({floor.cpu:.1f} s CPU)")
    return {
        "runner": RUNNER,
        "events": events,
        "seconds": round(ours.wall, 2),
        "cpu_seconds": round(ours.cpu, 2),
        "events_per_s": round(events / ours.wall),
        "events_per_cpu_s": round(events / ours.cpu),
        "us_per_event_cpu": round(1e6 * ours.cpu / events, 1),
        "floor_seconds": round(floor.wall, 2),
        "floor_cpu_seconds": round(floor.cpu, 2),
        "floor_events_per_cpu_s": round(events / floor.cpu),
        "ratio_to_same_shape_floor": round(floor.cpu / ours.cpu, 3),
        "ratio_to_same_shape_floor_wall": round(floor.wall / ours.wall, 3),
        "passthrough_seconds": round(passthrough.wall, 2),
        "passthrough_cpu_seconds": round(passthrough.cpu, 2),
        "passthrough_events_per_s": round(events / passthrough.wall),
        "ratio_to_passthrough": round(passthrough.cpu / ours.cpu, 3),
        "fixed_cpu_seconds": {k: round(v, 2) if isinstance(v, float) else v for k, v in fixed.items()},
        **figures,
        "simulator_requests": counters.get("requests", 0),
        "simulator_objects_accepted": counters.get("objects_accepted", 0),
        "simulator_objects_rejected": counters.get("objects_rejected", 0),
        "simulator_data_points": counters.get("data_points", 0),
        "floor_simulator": floor_figures,
        "sys_modules_loaded": len(sys.modules),
    }
