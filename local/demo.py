"""`make demo`: the streaming job on the local default, end to end, bounded in time.

Starts the Pub/Sub emulator and the Braze simulator, runs ``python -m pipeline.stream`` on the
BundleBasedDirectRunner with two syncs (one by external_id, one by user alias), publishes a
generated sample with some malformed messages, waits until every event is accounted for,
prints what reached Braze and what went to the dead letters, and stops all it started.
"""
from __future__ import annotations

import argparse
import collections
import sys

from local.accounting import Reconciler
from local.braze_sim import SimClient
from local.generate import generate_messages
from local.pubsub_emulator import PubSubEmulator
from local.stack import JobOnLocalStack

DEMO_SYNCS = {
    "syncs": [
        {
            "name": "us-app",
            "endpoint": "{url}",
            "api_key": "env:KEY_0",  # each sync gets a key of its own from the simulator
            "app_id": "00000000-0000-0000-0000-000000000001",
            "identifier": {"type": "external_id", "source": "user_id"},
            "users": {"properties": ["plan", "country", "city", "age", "is_subscriber", "favorite_genres"]},
            "events": {
                "select": [
                    {"event_type": "Order Completed", "where": [{"property": "event_properties.total", "op": "greater_than", "value": 0}]},
                    {"event_type": "Sign Up"},
                    {"event_type": "Song Played", "where": [{"property": "platform", "op": "is", "value": ["iOS", "Android"]}]},
                ],
                "properties": ["total", "sku", "coupon", "genre"],
            },
        },
        {
            "name": "eu-devices",
            "endpoint": "{url}",
            "api_key": "env:KEY_1",
            "identifier": {"type": "user_alias", "source": "device_id", "alias_label": "amplitude_device"},
            "users": {"properties": ["plan"]},
            # "query" is sometimes longer than Braze's 255 characters: it is cut to 255 and
            # counted (sanitize.truncated_string) rather than losing the event.
            "events": {"select": [{"event_type": "*"}], "properties": ["query"]},
        },
    ]
}


def run_demo(events: int, users: int, seed: int, deadline_seconds: float, out=sys.stdout,
             emulator: PubSubEmulator = None, inspect=None) -> dict:
    """Run the demo; ``emulator`` reuses a running one; ``inspect(run)`` gets the
    JobOnLocalStack before anything stops (the end-to-end test asserts there)."""
    say = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    with JobOnLocalStack(DEMO_SYNCS, emulator=emulator, job_args=["--max_batch_wait_seconds=1"]) as run:
        say(f"demo: Pub/Sub emulator at {run.emulator.host}, Braze simulator at {run.sim.url}")
        datas = list(generate_messages(events=events, users=users, seed=seed, malformed_share=0.02))
        run.publish(datas)
        published = len(run.reconciler.sources)
        say(f"demo: published {published} events in {len(datas)} messages; job log: {run.log_path}")
        totals = run.drain(deadline_seconds)
        _report(say, run.client, run.dead_letters, run.reconciler)
        if totals["pending"]:
            say(f"demo: {totals['pending']} events were not accounted for within {deadline_seconds:.0f} s")
        say(f"demo: published={published} delivered={totals['delivered']} skipped={totals['skipped']} "
            f"dead_lettered={totals['dead_lettered']}")
        if run.keys_in(run.log_text()):
            raise RuntimeError("an API key appeared in the job's log")
        if inspect is not None:
            inspect(run)
        return {"published": published, **totals}


def _report(say, client: SimClient, dead_letters, reconciler: Reconciler) -> None:
    users = client.users()
    attributes = sum(len(u.get("attributes", {})) for u in users)
    events = sum(len(u.get("events", [])) for u in users)
    by_kind = collections.Counter("external_id" if u.get("external_id") else "alias-only" for u in users)
    say("\nWhat reached Braze (the simulator's state)")
    say(f"  users       {len(users):>7}   ({', '.join(f'{n} {k}' for k, n in sorted(by_kind.items()))})")
    say(f"  attributes  {attributes:>7}")
    say(f"  events      {events:>7}")
    say(f"  data points {client.counters().get('data_points', 0):>7}")
    reasons = collections.Counter()
    for message in dead_letters:
        reasons[(message.attributes.get("stage", "?"), message.attributes.get("reason", "?"))] += 1
    say("\nDead letters by stage and reason")
    for (stage, reason), n in sorted(reasons.items()):
        say(f"  {stage:<6} {reason:<28} {n:>5}")
    if not reasons:
        say("  (none)")
    say("\nSkipped by rule (per sync and branch)")
    for reason, n in list(reconciler.skip_reasons().items())[:12]:
        say(f"  {reason:<52} {n:>6}")
    say("")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--deadline-seconds", type=float, default=240)
    args = parser.parse_args(argv)
    result = run_demo(args.events, args.users, args.seed, args.deadline_seconds)
    return 0 if result["pending"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
