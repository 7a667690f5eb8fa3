"""Part of ``sink``: how fast one batch key sends, as requests arrive and when it drains what it
held through a Braze outage, by ``--braze_max_in_flight`` (issue 13 asks for its default to be
chosen from a measurement).

The sink sends a key's requests in the order they were packed, each as it arrives: with Braze
answering in L seconds a key delivers about 75 / L objects/s, whatever the in-flight limit.
More than one request is in flight only when several are ready at once, which is when a key
drains the requests it held through an outage (``transforms.sink``: chunks of 4 × the limit,
and never two requests that share a user together, ``transforms.inflight``).

Each figure drives the job's own sink DoFn on one key without a runner
(``bench.common.KeyedDoFnDriver``), against the simulator: hold (every answer 503), then Braze
answers again with the added latency, and the retry timer is fired again as soon as it returns
(the job's timer waits a backoff first; the drain itself is what is timed). The outage is
dated two minutes back, so the adaptive throttler no longer holds requests back (a pushback
within its last minute would slow the drain further, whatever the limit). Two sets of
requests: one key's requests as the job packs the corpus (5,000 users, so two requests of a
key nearly always share someone), and the same with every request's users made its own (a
large user base, where they almost never do).
"""
from __future__ import annotations

import time
from typing import List, Sequence

from apache_beam.utils.timestamp import Timestamp

from bench.common import all_requests, bench_key, objects_in
from bench.driver import KeyedDoFnDriver, PureJob
from transforms import sink
from transforms.packing import RequestLimits, pack, shard_key
from transforms.records import Request

KEY = "us-app#0"


def key_requests(corpus, syncs, count: int, own_users: bool = False) -> List[Request]:
    """The first ``count`` requests the job packs for batch key ``KEY`` (external ids), in order;
    ``own_users``: each request's users renamed to be its own."""
    job = PureJob(syncs)
    items = []
    for i, data in enumerate(corpus.messages):
        for _, event_items in job.message_items(data, f"m{i}"):
            items.extend(it for it in event_items if shard_key(it.sync, it.user_key, 4) == KEY)
        if len(items) > (count + 2) * 80:
            break
    batches = [b for b in pack(items, RequestLimits("combined"))][:count]
    if own_users:
        batches = [[it._replace(user_key=f"{it.user_key}~{n}", obj={**it.obj, "external_id": f"{it.user_key}~{n}"})
                    for it in batch] for n, batch in enumerate(batches)]
    return [Request(KEY, seq, tuple(batch)) for seq, batch in enumerate(batches)]


class _Clock:
    """Wall time shifted by ``offset`` seconds (the sink's injectable clock)."""

    def __init__(self, offset: float = 0.0):
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


# The outage is dated this long before the drain: longer than the adaptive throttler's window
# (``transforms.sink_state.THROTTLE_WINDOW_MS``), as after an outage long enough to matter, so
# the drain is not also slowed by the client-side throttle that a pushback seconds ago starts.
OUTAGE_AGE_SECONDS = 120.0


def _driver(syncs, in_flight: int, clock=time.time) -> KeyedDoFnDriver:
    # The DoFn as WriteToBraze.expand builds it; quick retries shortened so holding starts at once.
    write = sink.WriteToBraze(syncs, max_in_flight=in_flight, backoff_base_seconds=0.01, backoff_cap_seconds=0.05,
                              clock=clock)
    return KeyedDoFnDriver(sink._BrazeSinkDoFn(write._syncs, write._params, write._resolve_key, write._sleep,
                                                write._clock))


def steady(sim, syncs, requests: Sequence[Request], latency_ms: int) -> dict:
    """Requests arriving one after the other, Braze healthy."""
    client = sim.client()
    client.reset()
    client.set_faults(latency_ms=latency_ms)
    with bench_key(sim.key):
        driver = _driver(syncs, 1)
        for request in requests:
            driver.process((KEY, request))
    return in_flight_figures(all_requests(client), latency_ms / 1000.0)


def drain(sim, syncs, requests: Sequence[Request], in_flight: int, latency_ms: int) -> dict:
    """Hold ``requests`` through an outage, then time the drain once Braze answers again."""
    client = sim.client()
    client.reset()
    client.set_faults(error_rate=1.0, error_statuses=[503])
    clock = _Clock(-OUTAGE_AGE_SECONDS)
    with bench_key(sim.key):
        driver = _driver(syncs, in_flight, clock)
        for request in requests:
            driver.process((KEY, request))
        if driver.store.get((KEY, "hold")) is None:
            raise RuntimeError("the sink did not hold its requests through the outage")
        clock.offset = 0.0
        client.reset()
        client.set_faults(latency_ms=latency_ms)
        started = time.perf_counter()
        firings = 0
        while driver.store.get((KEY, "hold")) is not None and firings < 1000:
            driver.fire("on_retry", KEY, Timestamp.of(time.time()))
            firings += 1
        seconds = time.perf_counter() - started
    sent = [r for r in all_requests(client) if r.get("status") and r["status"] < 300]
    objects = sum(objects_in(r.get("body")) for r in sent)
    return {**in_flight_figures(sent, latency_ms / 1000.0), "objects": objects, "seconds": round(seconds, 2),
            "objects_per_s": round(objects / seconds, 1), "timer_firings": firings}


def max_overlap(intervals) -> int:
    """The most intervals ``(start, end)`` that overlap at one moment."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    best = current = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


def in_flight_figures(requests, latency: float) -> dict:
    """Objects/s over the requests' span, and how many overlapped (each occupies
    [received_at, received_at + latency])."""
    objects = sum(objects_in(r.get("body")) for r in requests)
    starts = sorted(r["received_at"] for r in requests)
    span = (starts[-1] + latency - starts[0]) if starts else float("nan")
    return {
        "requests": len(requests),
        "objects": objects,
        "objects_per_s": round(objects / span, 1) if span > 0 else None,
        "max_in_flight": max_overlap([(s, s + latency) for s in starts]),
        "mean_in_flight": round(len(requests) * latency / span, 2) if span > 0 else None,
    }


def run(corpus, sim, syncs, requests: int = 40, limits: Sequence[int] = (1, 4, 8), latency_ms: int = 100,
        log=print) -> dict:
    corpus_requests = key_requests(corpus, syncs, requests)
    own_requests = key_requests(corpus, syncs, requests, own_users=True)
    result = {"key": KEY, "requests": len(corpus_requests), "added_latency_ms": latency_ms,
              "steady": steady(sim, syncs, corpus_requests, latency_ms), "drain_corpus_users": {},
              "drain_own_users": {}}
    for limit in limits:
        result["drain_corpus_users"][str(limit)] = drain(sim, syncs, corpus_requests, limit, latency_ms)
        result["drain_own_users"][str(limit)] = drain(sim, syncs, own_requests, limit, latency_ms)
        log(f"  sink: drain with {limit} in flight: {result['drain_corpus_users'][str(limit)]['objects_per_s']} "
            f"objects/s (corpus users), {result['drain_own_users'][str(limit)]['objects_per_s']} (own users)")
    return result
