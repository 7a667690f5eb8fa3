"""Part ``naive_forwarder``: what a hand-written Pub/Sub push handler would send, one event per
request: for a prefix of the corpus, every (event, sync) that gives any Braze object (the same
selection, and attributes without state) becomes its own ``/users/track`` request to a
simulator, and the simulator counts them."""
from __future__ import annotations

from bench.common import Corpus, bench_syncs, events_in, simulator
from bench.driver import PureJob, encode_requests
from transforms.braze_client import BrazeClient


def run(corpus: Corpus, log_dir: str, events: int = 2000, log=print) -> dict:
    messages = corpus.prefix(events)
    with simulator(log_dir, name="sim-naive-forwarder") as sim:
        syncs = bench_syncs(sim.url)
        job = PureJob(syncs, stateless_identify=True)
        bodies = []
        for i, data in enumerate(messages):
            for _, items in job.message_items(data, f"m{i}"):
                by_sync = {}
                for item in items:
                    by_sync.setdefault(item.sync, []).append(item)
                bodies.extend(encode_requests(list(by_sync.values())))
        sent_events = sum(events_in(m) for m in messages)
        with BrazeClient(sim.url, sim.key, timeout_seconds=30) as braze:
            for body in bodies:
                braze.post_track(body)
        counters = sim.client().counters()
    requests = counters.get("requests", 0)
    objects = counters.get("objects_accepted", 0) + counters.get("objects_rejected", 0)
    log(f"  naive_forwarder: {requests} requests for {sent_events} events")
    return {
        "events": sent_events,
        "requests": requests,
        "requests_per_1000_events": round(1000 * requests / sent_events, 1) if sent_events else None,
        "objects_per_request": round(objects / requests, 2) if requests else None,
    }
