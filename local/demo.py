"""`make demo`: the streaming job on the local default, end to end, bounded in time.

Starts the Pub/Sub emulator and the Braze simulator, runs ``python -m pipeline.stream`` on the
BundleBasedDirectRunner with two syncs (one by external_id, one by user alias), publishes a
generated sample with some malformed messages, waits until every event is accounted for
(printing how many are, every few seconds), prints what reached Braze and what went to the
dead letters, and stops all it started. When it ends any other way (the job exits, the
deadline passes, Ctrl-C) it keeps the job's log and says where.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time
from typing import Sequence

from local.accounting import Reconciler
from local.braze_sim import SimClient
from local.generate import generate_messages
from local.pubsub_emulator import PubSubEmulator
from local.stack import JobOnLocalStack

DEADLINE_SECONDS = 400.0  # a run takes 2-3 minutes on a busy 2-core machine (README)
PROGRESS_SECONDS = 5.0

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
             emulator: PubSubEmulator = None, inspect=None, job_args: Sequence[str] = (),
             progress_seconds: float = PROGRESS_SECONDS) -> dict:
    """Run the demo; ``emulator`` reuses a running one; ``inspect(run)`` gets the
    JobOnLocalStack before anything stops (the end-to-end test asserts there); ``job_args`` go to
    the job after the demo's own.

    The job's log is written outside the stack's temporary directory: it is deleted after a
    run that accounted for every event, and kept (and its place printed) after any other end.
    """
    started = time.monotonic()
    say = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    log_dir = tempfile.mkdtemp(prefix="amplitude-braze-demo-")
    log_path = os.path.join(log_dir, "job.log")
    say("demo: starting the Pub/Sub emulator, the Braze simulator and the job (python -m pipeline.stream)")
    finished = False
    try:
        with JobOnLocalStack(DEMO_SYNCS, emulator=emulator, log_path=log_path,
                             job_args=["--max_batch_wait_seconds=1", *job_args]) as run:
            say(f"demo: Pub/Sub emulator at {run.emulator.host}, Braze simulator at {run.sim.url}")
            datas = list(generate_messages(events=events, users=users, seed=seed, malformed_share=0.02))
            run.publish(datas)
            published = len(run.reconciler.sources)
            say(f"demo: published {published} events in {len(datas)} messages; waiting until each is "
                f"accounted for (at most {deadline_seconds:.0f} s); job log: {log_path}")
            totals = run.drain(deadline_seconds, on_poll=_Progress(say, started, progress_seconds))
            _report(say, run.client, run.dead_letters, run.reconciler)
            if totals["pending"]:
                say(f"demo: {totals['pending']} events were not accounted for within {deadline_seconds:.0f} s; "
                    f"the job's last lines:\n{run.log_tail(15)}")
            say(f"demo: published={published} delivered={totals['delivered']} skipped={totals['skipped']} "
                f"dead_lettered={totals['dead_lettered']} in {time.monotonic() - started:.0f} s")
            if run.keys_in(run.log_text()):
                raise RuntimeError("an API key appeared in the job's log")
            if inspect is not None:
                inspect(run)
            finished = totals["pending"] == 0
            return {"published": published, **totals}
    finally:
        if finished:
            shutil.rmtree(log_dir, ignore_errors=True)
        elif os.path.exists(log_path):
            say(f"demo: the job's log is kept at {log_path}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)  # the job never started: nothing to keep


class _Progress:
    """Prints where the demo stands while it waits: at the first poll, then every ``every`` seconds."""

    def __init__(self, say, started: float, every: float):
        self._say, self._started, self._every = say, started, every
        self._last_print = None
        self._seen = None  # (accounted, requests) at the last change, and when it changed
        self._changed_at = started

    def __call__(self, run) -> None:
        now = time.monotonic()
        if self._last_print is not None and now - self._last_print < self._every:
            return
        self._last_print = now
        t = run.reconciler.totals()
        total = len(run.reconciler.sources)
        accounted = total - t["pending"]
        requests = run.client.counters().get("requests", 0)
        if (accounted, requests) != self._seen:
            self._seen, self._changed_at = (accounted, requests), now
        if not accounted and not requests:
            state = "the job is starting"
        elif now - self._changed_at >= 2 * self._every:
            state = (f"nothing new for {now - self._changed_at:.0f} s: the job may be holding requests "
                     "(Braze failing?) or stuck; its log is at the path above")
        else:
            state = f"{requests} requests to Braze"
        self._say(f"demo: {now - self._started:4.0f} s  accounted for {accounted}/{total} "
                  f"(delivered {t['delivered']}, skipped {t['skipped']}, dead-lettered {t['dead_lettered']}), "
                  f"pending {t['pending']}; {state}")


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
    parser.add_argument("--deadline-seconds", type=float, default=DEADLINE_SECONDS,
                        help="give up waiting after this long (the job's log is then kept)")
    parser.add_argument("job_args", nargs=argparse.REMAINDER,
                        help="after --: more options for the job, e.g. -- --braze_max_in_flight=4")
    args = parser.parse_args(argv)
    job_args = args.job_args[1:] if args.job_args[:1] == ["--"] else args.job_args
    try:
        result = run_demo(args.events, args.users, args.seed, args.deadline_seconds, job_args=job_args)
    except KeyboardInterrupt:
        print("demo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - say what failed in one place, not a traceback
        print(f"demo: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0 if result["pending"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
