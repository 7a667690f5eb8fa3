"""Part ``sink``: ``transforms.sink.WriteToBraze`` alone, on the FnApiRunner (one worker
process), over pre-built full batches of 75 real objects, each its own batch key, against the
simulator answering every request 100 ms late (``set_faults(latency_ms=100)``): what one worker
process can push to a Braze that is not instant. Then one key's sending and its drain after an
outage by in-flight limit (``bench.sink_drain``).

In flight is read from the simulator's request log: request *i* occupies
[received_at, received_at + latency]; the most that overlap, and the mean (busy time / span).
"""
from __future__ import annotations

import time
from typing import Sequence, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from bench import sink_drain
from bench.common import MAX_OBJECTS, Corpus, all_requests, bench_key, bench_syncs, job_default, objects_in, simulator
from bench.driver import PureJob
from transforms.packing import RequestLimits, pack
from transforms.records import Request
from transforms.sink import WriteToBraze

RUNNER = "FnApiRunner"
MORE_IN_FLIGHT = 4  # also measured, when the job's default is lower


def full_batches(corpus: Corpus, count: int, syncs):
    """Up to ``count`` requests of 75 real objects (one sync each), as PackRequests emits them:
    ``(key, Request)``, each its own batch key (so the sink's order per key does not serialise
    them, as the job's shards do not)."""
    job = PureJob(syncs)
    by_sync = {}
    needed = (count + len(syncs)) * MAX_OBJECTS
    total = 0
    for i, data in enumerate(corpus.messages):
        for _, event_items in job.message_items(data, f"m{i}"):
            for item in event_items:
                by_sync.setdefault(item.sync, []).append(item)
                total += 1
        if total >= needed:
            break
    limits = RequestLimits("combined")
    batches = [(sync, batch) for sync, items in by_sync.items() for batch in pack(items, limits)]
    batches.sort(key=lambda kb: -len(kb[1]))  # full ones first
    return [(f"{sync}#bench{i}", Request(f"{sync}#bench{i}", 0, tuple(batch)))
            for i, (sync, batch) in enumerate(batches[:count])]


def run(corpus: Corpus, log_dir: str, batches: int = 60, latency_ms: int = 100, drain_requests: int = 40,
        in_flight_limits: Sequence[int] = (1, 4, 8), log=print) -> dict:
    with simulator(log_dir, name="sim-sink") as sim, bench_key(sim.key):
        syncs = bench_syncs(sim.url)
        work = full_batches(corpus, batches, syncs)
        client = sim.client()
        client.set_faults(latency_ms=latency_ms)
        in_flight = job_default("braze_max_in_flight")
        wall, requests = _send(work, syncs, in_flight, client)
        more = None
        if in_flight < MORE_IN_FLIGHT:  # what the option buys on the same batches
            client.reset()
            client.set_faults(latency_ms=latency_ms)
            more = sink_drain.in_flight_figures(_send(work, syncs, MORE_IN_FLIGHT, client)[1], latency_ms / 1000.0)
        one_key = sink_drain.run(corpus, sim, syncs, requests=drain_requests, limits=in_flight_limits,
                                 latency_ms=latency_ms, log=log)
    latency = latency_ms / 1000.0
    figures = sink_drain.in_flight_figures(requests, latency)
    objects = figures["objects"]
    result = {
        "runner": RUNNER,
        "worker_processes": 1,
        "added_latency_ms": latency_ms,
        "batches": len(work),
        "requests": len(requests),
        "objects": objects,
        "objects_per_s": figures["objects_per_s"],
        "objects_per_s_including_runner_startup": round(objects / wall, 1),
        "max_in_flight_setting": in_flight,
        "max_in_flight": figures["max_in_flight"],
        "mean_in_flight": figures["mean_in_flight"],
        "ceiling_objects_per_s_one_in_flight": round(MAX_OBJECTS / latency, 1),
        "seconds": round(wall, 2),
    }
    if more is not None:
        result.update({f"in_flight_{MORE_IN_FLIGHT}_{k}": v for k, v in more.items() if k not in ("objects", "requests")})
    own = {k: v["objects_per_s"] for k, v in one_key["drain_own_users"].items()}
    result.update({
        "steady_objects_per_s_per_key": one_key["steady"]["objects_per_s"],
        "drain_objects_per_s": {k: v["objects_per_s"] for k, v in one_key["drain_corpus_users"].items()},
        "drain_objects_per_s_own_users": own,
        "drain_speedup_own_users": {k: round(v / own[min(own, key=int)], 2) for k, v in own.items()},
        "one_key": one_key,
    })
    log(f"  sink: {result['objects_per_s']} objects/s, max in flight {result['max_in_flight']}"
        + (f"; with --braze_max_in_flight={MORE_IN_FLIGHT}: {more['objects_per_s']} objects/s, "
           f"mean in flight {more['mean_in_flight']}" if more else ""))
    return result


def _send(work, syncs, in_flight: int, client):
    started = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(flags=[], runner=RUNNER)) as p:
        (p | "Batches" >> beam.Create(work).with_output_types(Tuple[str, Request])
         | "WriteToBraze" >> WriteToBraze(syncs, max_in_flight=in_flight))
    return time.perf_counter() - started, all_requests(client)
