"""Part ``beam_batch``: the whole graph (``pipeline.graph.EventsToBraze``) on the FnApiRunner
over the corpus file, into the Braze simulator (a subprocess, so it does not share our GIL),
against a passthrough pipeline on the same runner and source: read → decode → count.

Both read the corpus with the same small source (the file's path → its messages, binary safe;
``ReadFromText`` would choke on the non-UTF-8 bodies), and both include the runner's own
start-up, which is part of what a batch replay costs.
"""
from __future__ import annotations

import sys
import time
from typing import Optional

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions

from bench.common import Corpus, all_requests, bench_key, bench_syncs, job_default, simulator
from local.generate import read_messages
from pipeline.graph import EventsToBraze

RUNNER = "FnApiRunner"


def read_corpus(pipeline: beam.Pipeline, path: str):
    return pipeline | "CorpusPath" >> beam.Create([path]) | "ReadMessages" >> beam.FlatMap(read_messages)


def _decode(data: bytes):
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def run_passthrough(path: str) -> float:
    started = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(flags=[], runner=RUNNER)) as p:
        (read_corpus(p, path) | "Decode" >> beam.Map(_decode) | "Count" >> beam.combiners.Count.Globally())
    return time.perf_counter() - started


def run_graph(path: str, sim_url: str, events: bool = True) -> float:
    syncs = bench_syncs(sim_url, events=events)
    started = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(flags=[], runner=RUNNER)) as p:
        results = read_corpus(p, path) | "EventsToBraze" >> EventsToBraze(
            syncs, max_in_flight=job_default("braze_max_in_flight"))
        results["outcomes"] | "CountOutcomes" >> beam.combiners.Count.Globally()
    return time.perf_counter() - started


def run(corpus: Corpus, log_dir: str, shared: Optional[dict] = None, events: int = 0, log=print) -> dict:
    """``shared["data_points"]`` receives what the data_points part needs from this run;
    ``events`` cuts the corpus to a prefix (0: all of it)."""
    corpus = corpus.subset(events, log_dir)
    passthrough = run_passthrough(corpus.path)
    log(f"  beam_batch: passthrough {passthrough:.1f} s")
    with simulator(log_dir, name="sim-beam-batch") as sim, bench_key(sim.key):
        seconds = run_graph(corpus.path, sim.url)
        client = sim.client()
        counters = client.counters()
        if shared is not None:
            from bench.data_points import attribute_points, redundant_writes

            shared["data_points"] = {**attribute_points(client), "replay": redundant_writes(all_requests(client)),
                                     "events": corpus.events}
    log(f"  beam_batch: EventsToBraze {seconds:.1f} s")
    events = corpus.events
    requests = counters.get("requests", 0)
    objects = counters.get("objects_accepted", 0) + counters.get("objects_rejected", 0)
    return {
        "runner": RUNNER,
        "events": events,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds),
        "passthrough_seconds": round(passthrough, 2),
        "passthrough_events_per_s": round(events / passthrough),
        "ratio_to_passthrough": round(passthrough / seconds, 3),
        "simulator_requests": requests,
        "simulator_objects_accepted": counters.get("objects_accepted", 0),
        "simulator_objects_rejected": counters.get("objects_rejected", 0),
        "objects_per_request": round(objects / max(1, requests), 2),
        "simulator_data_points": counters.get("data_points", 0),
        "sys_modules_loaded": len(sys.modules),
    }
