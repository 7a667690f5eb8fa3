"""Part ``data_points``: billable attribute writes, as the simulator counts them, for our job and
for a forwarder without state, on the same corpus and syncs.

* Ours: the whole graph over the corpus (the ``beam_batch`` run when it ran in the same
  invocation; else the graph with the events branches off). Attribute data points = the
  simulator's ``data_points`` minus those of the events it stored (1 + properties each).
  The simulator's request log is also replayed per (user, attribute) to count *redundant*
  writes: a value sent again while the job knew Braze already held it.
* Naive: the same identify code with a state that never remembers, so every selected property
  an event carries is sent (``$set`` values, ``$unset`` as null, ``inc``/``add``/``remove``),
  75 objects per request, to a fresh simulator.
"""
from __future__ import annotations

from typing import Optional

import orjson

from bench.common import Corpus, all_requests, bench_key, bench_syncs, simulator
from bench.driver import PureJob, encode_requests, pack_requests
from transforms.braze_client import BrazeClient


def attribute_points(client) -> dict:
    """Split the simulator's data points into attributes and events (no purchases here)."""
    counters = client.counters()
    users = client.users()
    event_points = sum(1 + len(e.get("properties") or ()) for u in users for e in u.get("events") or ())
    total = counters.get("data_points", 0)
    return {"total": total, "events": event_points, "attributes": total - event_points}


def _who(obj: dict):
    if "external_id" in obj:
        return ("external_id", obj["external_id"])
    if "user_alias" in obj:
        return ("alias", obj["user_alias"].get("alias_name"))
    return ("braze_id", obj.get("braze_id"))


_IDENTIFIER_KEYS = frozenset({"external_id", "user_alias", "braze_id", "_update_existing_only", "email", "phone"})
_UNKNOWN = object()


def redundant_writes(requests) -> dict:
    """Attribute values sent again unchanged, replaying the log in receive order.

    A plain value equal (same JSON) to the last plain value sent for that user and attribute
    is redundant; an operation (``inc``, ``add``, ``remove``) makes the value unknown."""
    last = {}
    redundant = written = 0
    examples = []
    for r in requests:
        if r.get("status") is None or r["status"] >= 300:
            continue
        for obj in (r.get("body") or {}).get("attributes") or ():
            who = _who(obj)
            for name, value in obj.items():
                if name in _IDENTIFIER_KEYS:
                    continue
                written += 1
                slot = (who, name)
                if isinstance(value, dict) and ({"inc", "add", "remove"} & value.keys()):
                    last[slot] = _UNKNOWN
                    continue
                encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
                if last.get(slot) == encoded:
                    redundant += 1
                    if len(examples) < 3:
                        examples.append({"user": list(who), "attribute": name, "value": value})
                last[slot] = encoded
    return {"attribute_writes": written, "redundant": redundant, "examples": examples}


def pure_points(corpus: Corpus, log_dir: str, stateless: bool, log=print) -> dict:
    """Attribute objects from the job's identify code driven without Beam (``stateless``: the
    naive forwarder), 75 per request, into a fresh simulator."""
    with simulator(log_dir, name="sim-naive-points" if stateless else "sim-pure-points") as sim:
        syncs = bench_syncs(sim.url)
        job = PureJob(syncs, stateless_identify=stateless)
        items = []
        for i, data in enumerate(corpus.messages):
            for parsed in job.parse(data, f"m{i}"):
                _, work = job.route_event(parsed)
                for w in work:
                    items.extend(job.identify_work(w))
        if stateless:  # sent as they come: no merging of a user's updates within a request
            items = [item._replace(before=None) for item in items]
        bodies = encode_requests(pack_requests(items))
        with BrazeClient(sim.url, sim.key, timeout_seconds=30) as braze:
            for body in bodies:
                braze.post_track(body)
        client = sim.client()
        points = attribute_points(client)
        replay = redundant_writes(all_requests(client))
    log(f"  data_points: {'naive' if stateless else 'ours (pure)'}: {points['attributes']} attribute data points "
        f"in {len(bodies)} requests")
    return {"objects": len(items), "requests": len(bodies), **points, "replay": replay}


def ours_from_graph(corpus: Corpus, log_dir: str) -> dict:
    """Our job alone (events branches off, so every data point is an attribute one)."""
    from bench.beam_batch import run_graph

    with simulator(log_dir, name="sim-ours-points") as sim, bench_key(sim.key):
        run_graph(corpus.path, sim.url, events=False)
        client = sim.client()
        return {**attribute_points(client), "replay": redundant_writes(all_requests(client))}


def run(corpus: Corpus, log_dir: str, ours: Optional[dict] = None, events: int = 0,
        graph_error: Optional[str] = None, log=print) -> dict:
    """``ours``: what ``beam_batch`` measured in its simulator (attribute_points + replay), if it
    ran; ``events``: the same prefix beam_batch used (0: the whole corpus)."""
    corpus = corpus.subset(events, log_dir)
    source = "beam_batch run (FnApiRunner, whole graph)"
    if ours is None:
        source = "own run of the graph, events branches off (FnApiRunner)"
        try:
            if graph_error:  # beam_batch just failed on the same graph: do not wait for it again
                raise RuntimeError(graph_error)
            ours = ours_from_graph(corpus, log_dir)
        except Exception as error:  # noqa: BLE001 - fall back to the same code without a runner
            graph_error = graph_error or f"{type(error).__name__}: {str(error)[:300]}"
            log(f"  data_points: the graph failed on the FnApiRunner ({graph_error}); "
                "measuring the identify code without Beam instead")
            source = "the job's route + IdentifyDoFn code driven without a runner (the graph failed)"
            ours = pure_points(corpus, log_dir, stateless=False, log=log)
    naive = pure_points(corpus, log_dir, stateless=True, log=log)
    saving = 100.0 * (1 - ours["attributes"] / naive["attributes"]) if naive["attributes"] else None
    return {
        "events": corpus.events,
        "ours": ours["attributes"],
        "naive": naive["attributes"],
        "saving_pct": round(saving, 1) if saving is not None else None,
        "ours_source": source,
        "ours_total_including_events": ours.get("total"),
        "ours_attribute_writes": ours["replay"]["attribute_writes"],
        "ours_redundant_writes": ours["replay"]["redundant"],
        "ours_redundant_examples": ours["replay"]["examples"],
        "naive_attribute_objects": naive["objects"],
        "naive_requests": naive["requests"],
        "naive_redundant_writes": naive["replay"]["redundant"],
        **({"graph_error": graph_error} if graph_error else {}),
    }
