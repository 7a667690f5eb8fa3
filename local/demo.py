"""`make demo`: the streaming job on the local default, end to end, bounded in time.

Starts the Pub/Sub emulator and the Braze simulator, runs ``python -m pipeline.stream`` on the
BundleBasedDirectRunner with two syncs (one by external_id, one by user alias), publishes a
generated sample with some malformed messages, waits until every event is accounted for,
prints what reached Braze and what went to the dead letters, and stops all it started.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time

import orjson
import yaml

from local.accounting import Reconciler, event_sources
from local.braze_sim import BrazeSimulator, SimClient
from local.generate import generate_messages
from local.pubsub_emulator import PubSubEmulator

DEMO_SYNCS = {
    "syncs": [
        {
            "name": "us-app",
            "endpoint": "{url}",
            "api_key": "env:DEMO_BRAZE_KEY_US",
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
            "api_key": "env:DEMO_BRAZE_KEY_EU",
            "identifier": {"type": "user_alias", "source": "device_id", "alias_label": "amplitude_device"},
            "users": {"properties": ["plan"]},
            # "query" is sometimes longer than Braze's 255 characters: those events come back
            # in Braze's errors[] and show up as braze_rejected dead letters.
            "events": {"select": [{"event_type": "*"}], "properties": ["query"]},
        },
    ]
}


def _write_syncs(directory: str, url: str) -> str:
    document = orjson.loads(orjson.dumps(DEMO_SYNCS).replace(b"{url}", url.encode()))
    path = os.path.join(directory, "demo-syncs.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(document, f, sort_keys=False)
    return path


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_demo(events: int, users: int, seed: int, deadline_seconds: float, out=sys.stdout,
             emulator: PubSubEmulator = None, inspect=None) -> dict:
    """Run the demo; ``emulator`` reuses a running one, ``inspect(sim_client, reconciler,
    dead_letters)`` is called before anything stops (the end-to-end test asserts there)."""
    say = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    keys = {"DEMO_BRAZE_KEY_US": secrets.token_hex(16), "DEMO_BRAZE_KEY_EU": secrets.token_hex(16)}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="amplitude-braze-demo-"))
        if emulator is None:
            emulator = stack.enter_context(PubSubEmulator())
        sim = stack.enter_context(BrazeSimulator(api_keys=list(keys.values())))
        say(f"demo: Pub/Sub emulator at {emulator.host}, Braze simulator at {sim.url}")
        run = secrets.token_hex(3)  # topic names of their own, so a shared emulator is fine
        topic = {name: f"{name}-{run}" for name in ("events", "dead-letters", "outcomes")}
        emulator.create_topic(topic["events"])
        emulator.create_subscription(f"events-job-{run}", topic["events"])
        for name in ("dead-letters", "outcomes"):
            emulator.create_topic(topic[name])
            emulator.create_subscription(f"{name}-demo-{run}", topic[name])
        syncs_path = _write_syncs(tmp, sim.url)
        log_path = os.path.join(tmp, "job.log")
        command = [
            sys.executable, "-m", "pipeline.stream",
            f"--input_subscription={emulator.subscription_path(f'events-job-{run}')}",
            f"--dead_letter_topic={emulator.topic_path(topic['dead-letters'])}",
            f"--outcome_topic={emulator.topic_path(topic['outcomes'])}",
            f"--sync_config={syncs_path}",
            "--allow_insecure_endpoints",
            "--runner=BundleBasedDirectRunner",
            "--max_batch_wait_seconds=1",
        ]
        with open(log_path, "wb") as log:
            job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **keys},
                                   start_new_session=True)
        try:
            datas = list(generate_messages(events=events, users=users, seed=seed, malformed_share=0.02))
            message_ids = emulator.publish(topic["events"], datas)
            sources = [s for mid, data in zip(message_ids, datas) for s in event_sources(mid, data)]
            say(f"demo: published {len(sources)} events in {len(datas)} messages; job log: {log_path}")
            reconciler = Reconciler(sources, [s["name"] for s in DEMO_SYNCS["syncs"]])
            dead_letters = []
            deadline = time.monotonic() + deadline_seconds
            while reconciler.pending() and time.monotonic() < deadline:
                if job.poll() is not None:
                    raise RuntimeError(f"the job exited with code {job.returncode}; see {log_path}:\n" + _tail(log_path))
                for message in emulator.pull(f"outcomes-demo-{run}", max_messages=1000, timeout=2):
                    reconciler.add_json(message.data)
                dead_letters.extend(emulator.pull(f"dead-letters-demo-{run}", max_messages=1000, timeout=0.5))
            dead_letters.extend(emulator.pull(f"dead-letters-demo-{run}", max_messages=1000, timeout=1))
            totals = reconciler.totals()
            _report(say, SimClient(sim.url), dead_letters, reconciler)
            if totals["pending"]:
                say(f"demo: {totals['pending']} events were not accounted for within {deadline_seconds:.0f} s")
            say(
                f"demo: published={len(sources)} delivered={totals['delivered']} skipped={totals['skipped']} "
                f"dead_lettered={totals['dead_lettered']}"
            )
            with open(log_path, "rb") as f:
                log_text = f.read()
            if any(key.encode() in log_text for key in keys.values()):
                raise RuntimeError("an API key appeared in the job's log")
            if inspect is not None:
                inspect(SimClient(sim.url), reconciler, dead_letters, keys)
            return {"published": len(sources), **totals}
        finally:
            _stop(job)


def _tail(path: str, lines: int = 30) -> str:
    with open(path, "rb") as f:
        return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")


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
