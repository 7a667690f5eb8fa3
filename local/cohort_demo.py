"""`make cohort-demo`: both paths of the cohort job against the local stand-ins, bounded in time.

Starts the Braze simulator, the Amplitude stand-in and the Pub/Sub emulator, seeds Braze users
(leaving a cohort member unknown to Braze), writes a cohorts file with two targets (partner
cohort import; the array custom attribute) and three syncs, then:

1. **The feed** (the streaming mode, ``python -m pipeline.cohorts --input_subscription``, as a
   process on the BundleBasedDirectRunner): feed messages for two cohorts through the emulator,
   a repeated message, an exit followed by an older (out-of-order) entry, and a cohort the file
   does not know (a dead letter). Per cohort: who was added, removed, skipped.
2. **Downloads** (batch runs): a full sync of a third cohort from the Amplitude stand-in, then a
   delta after its membership changed there. Per run: added, removed, skipped, unchanged.

Every figure is checked against the Braze simulator's state (members = added − removed, nobody
created); the demo exits 1 if one does not add up. Everything it started stops at the end.
"""
from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time

import yaml

from local.amplitude_sim import AmplitudeSimulator
from local.amplitude_sim.feed import FeedPublisher
from local.braze_sim import BrazeSimulator, SimClient
from local.pubsub_emulator import PubSubEmulator
from local.stack import stop_process_group

KNOWN = [f"u{i}" for i in range(1, 11)]  # in Braze before any sync; "ghost" is not
T = 1767225600  # computed_time of the first feed batch (2026-01-01T00:00:00Z)
LABEL = "[Amplitude] Churn risk: c_churn"


def _config(braze_url: str, amplitude_url: str) -> dict:
    return {
        "targets": [
            {"name": "US Production", "endpoint": braze_url, "delivery": "partner",
             "api_key": "env:DEMO_DATA_IMPORT_KEY", "partner_api_key": "env:DEMO_PARTNER_KEY",
             "lookup_api_key": "env:DEMO_REST_KEY"},
            {"name": "No Partner Key", "endpoint": braze_url, "delivery": "attribute", "api_key": "env:DEMO_REST_KEY"},
        ],
        "cohort_syncs": [
            {"name": "power-feed", "cohort_id": "c_power", "cohort_name": "Power users", "target": "US Production",
             "cadence": "real_time", "source": "feed"},
            {"name": "churn-feed", "cohort_id": "c_churn", "cohort_name": "Churn risk", "target": "No Partner Key",
             "cadence": "hourly", "source": "feed"},
            {"name": "vip-download", "cohort_id": "c_vip", "cohort_name": "VIP", "target": "US Production",
             "cadence": "daily", "source": "download"},
        ],
        "amplitude": {"api_key": "env:DEMO_AMPLITUDE_KEY", "secret_key": "env:DEMO_AMPLITUDE_SECRET",
                      "endpoint": amplitude_url},
    }


def _members(client: SimClient, cohort: str):
    return sorted(u["external_id"] for u in client.users() if cohort in u["cohorts"])


def _attribute_members(client: SimClient):
    return sorted(u["external_id"] for u in client.users() if LABEL in (u["attributes"].get("amplitude_cohorts") or []))


def _sent(client: SimClient):
    """What the job sent, from the simulator's request log: {cohort: (added ids, removed ids, looked up ids)}."""
    sent = {"c_power": ([], [], []), "c_churn": ([], [], [])}
    for r in client.requests():
        body = r.get("body") or {}
        if r["path"].endswith("/cohorts/users") and r["status"] < 300 and body.get("cohort_id") in sent:
            for change in body["cohort_changes"]:
                sent[body["cohort_id"]][1 if change.get("should_remove") else 0].extend(change.get("user_ids", []))
        elif r["path"] == "/users/track" and r["status"] < 300:
            for o in body.get("attributes", []):
                op = o.get("amplitude_cohorts") or {}
                sent["c_churn"][1 if "remove" in op else 0].append(o["external_id"])
        elif r["path"] == "/users/export/ids" and r["status"] < 300:
            for cohort in sent:  # both targets look users up; the demo's user ids tell them apart
                sent[cohort][2].extend(i for i in body.get("external_ids", []) if i in FEED_USERS[cohort])
    return sent


FEED_USERS = {"c_power": {"u1", "u2", "u3"}, "c_churn": {"u4", "u5", "ghost"}}


def _feed(emulator, state_dir, config_path, env, say) -> int:
    """Part 1; returns the number of figures that did not add up."""
    run = secrets.token_hex(3)
    topic, dead_topic = f"cohort-feed-{run}", f"cohort-dead-{run}"
    emulator.create_topic(topic)
    emulator.create_topic(dead_topic)
    subscription = emulator.create_subscription(f"cohort-feed-sub-{run}", topic)
    emulator.create_subscription(f"cohort-dead-sub-{run}", dead_topic)
    log_path = os.path.join(state_dir, "feed-job.log")
    command = [sys.executable, "-m", "pipeline.cohorts", f"--config={config_path}", f"--state_dir={state_dir}",
               f"--input_subscription={subscription}", f"--dead_letter_topic={emulator.topic_path(dead_topic)}",
               "--allow_insecure_endpoints", "--flush_seconds=2", "--runner=BundleBasedDirectRunner"]
    with open(log_path, "wb") as log:
        job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    client = SimClient(env["DEMO_BRAZE_URL"])
    failures = 0
    try:
        publisher = FeedPublisher(emulator, topic)
        first = publisher.enter("c_power", "Power users", ["u1", "u2", "u3"], at=T)
        publisher.enter("c_churn", "Churn risk", ["u4", "u5", "ghost"], at=T)
        publisher.repeat(first)
        publisher.leave("c_power", "Power users", ["u3"], at=T + 120)
        publisher.enter("c_power", "Power users", ["u3"], at=T + 60)  # older than the exit: dropped
        publisher.enter("c_other", "Not in the file", ["u9"], at=T)  # no feed sync: a dead letter
        say(f"published {len(publisher.published)} feed messages (one repeated, one out of order, one unknown cohort)")
        deadline = time.monotonic() + 120
        letters = []
        while time.monotonic() < deadline:
            if job.poll() is not None:
                raise RuntimeError(f"the feed job exited with code {job.returncode}; see {log_path}")
            letters += emulator.pull(f"cohort-dead-sub-{run}", timeout=1)
            if _members(client, "c_power") == ["u1", "u2"] and _attribute_members(client) == ["u4", "u5"] \
                    and letters:
                break
            time.sleep(0.5)
        sent = _sent(client)
        held = {"c_power": _members(client, "c_power"), "c_churn": _attribute_members(client)}
        for cohort, braze_members in held.items():
            added, removed, looked_up = sent[cohort]
            skipped = sorted(set(looked_up) - set(added) - set(removed))
            say(f"  {cohort}: added {sorted(set(added)) or '-'}, removed {sorted(set(removed)) or '-'}, "
                f"skipped {skipped or '-'} (unknown to Braze); Braze holds {braze_members}")
            expected = sorted(set(added) - set(removed))
            if braze_members != expected:
                say(f"  !! {cohort}: Braze holds {braze_members}, but added − removed is {expected}")
                failures += 1
        for letter in letters:
            say(f"  dead letter: {letter.attributes.get('reason')}: {letter.attributes.get('detail')[:100]}")
        if [letter.attributes.get("reason") for letter in letters] != ["unknown_cohort"]:
            say("  !! expected exactly one dead letter, for the unknown cohort")
            failures += 1
    finally:
        stop_process_group(job)
    return failures


def _downloads(config, amplitude, state_dir, braze: SimClient, say) -> int:
    """Part 2; returns the number of figures that did not add up."""
    from pipeline.cohort_batch import plan_sync, run_batch_sync
    from transforms.cohorts.delivery import RetryPolicy

    failures = 0
    membership = [{"amplitude_id": 100 + i, "user_id": f"u{i}"} for i in (6, 7, 8)] + [
        {"amplitude_id": 99, "user_id": ""}]
    policy = RetryPolicy(max_attempts=3, max_retry_seconds=10)
    expected_members = set()
    changed = membership[1:3] + [{"amplitude_id": 109, "user_id": "u9"}]  # u6 and the anonymous one left, u9 came
    for label, members in (("run 1", membership), ("run 2", changed)):
        amplitude.client().set_cohort("c_vip", "VIP", members)
        plan = plan_sync(config, "vip-download", state_dir)
        outcome = run_batch_sync(plan, policy=policy, shards=2)
        c = outcome.report["counts"]
        say(f"  {label} ({plan.mode}): {outcome.status}; added {c['added']}, removed {c['removed']}, "
            f"skipped {c['skipped']}, unchanged {c['unchanged']}; report {outcome.json_path}")
        for row in outcome.report["users"]:
            if row["status"] == "sent":
                (expected_members.add if row["operation"] == "add" else expected_members.discard)(row["braze_id"])
        held = _members(braze, "c_vip")
        if outcome.status != "success" or held != sorted(expected_members):
            say(f"  !! Braze holds {held}, the reports say {sorted(expected_members)}")
            failures += 1
    say(f"  downloads counted this month: {amplitude.client().usage()['download_requests']} (of the budget of 500)")
    return failures


def run_demo(state_dir: str, out=sys.stdout) -> int:
    from pipeline.cohort_config import load_cohorts

    def say(text=""):
        print(text, file=out, flush=True)

    keys = {"DEMO_DATA_IMPORT_KEY": secrets.token_hex(16), "DEMO_PARTNER_KEY": secrets.token_hex(16),
            "DEMO_REST_KEY": secrets.token_hex(16), "DEMO_AMPLITUDE_KEY": secrets.token_hex(16),
            "DEMO_AMPLITUDE_SECRET": secrets.token_hex(16)}
    os.environ.update(keys)
    with BrazeSimulator(api_keys=[keys["DEMO_REST_KEY"]], partner_api_keys=[keys["DEMO_PARTNER_KEY"]],
                        client_secrets=[keys["DEMO_DATA_IMPORT_KEY"]]) as braze, \
            AmplitudeSimulator(keys["DEMO_AMPLITUDE_KEY"], keys["DEMO_AMPLITUDE_SECRET"]) as amplitude, \
            PubSubEmulator() as emulator:
        client = SimClient(braze.url)
        client.seed_users(*({"external_id": u} for u in KNOWN))
        say(f"Braze simulator {braze.url} (knows u1..u10; 'ghost' is unknown), Amplitude stand-in {amplitude.url}, "
            f"Pub/Sub emulator {emulator.host}")
        config_path = os.path.join(state_dir, "cohorts.yaml")
        with open(config_path, "w") as f:
            yaml.safe_dump(_config(braze.url, amplitude.url), f, sort_keys=False)
        config = load_cohorts(config_path, allow_insecure_endpoints=True)
        env = {**os.environ, "DEMO_BRAZE_URL": braze.url}
        say("\n== 1. Amplitude's Pub/Sub cohort feed → the streaming mode")
        failures = _feed(emulator, state_dir, config_path, env, say)
        say("\n== 2. Downloads from Amplitude's cohort API → batch runs (sync vip-download)")
        failures += _downloads(config, amplitude, state_dir, client, say)
        created = [u["external_id"] for u in client.users() if u["external_id"] not in KNOWN]
        say(f"\nusers Braze created from cohorts: {created or 'none'} (Braze never creates users from a cohort)")
        failures += bool(created)
    say("every figure adds up against the Braze simulator" if not failures else f"{failures} figure(s) did not add up")
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.cohort_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--state_dir", default="", help="Keep state and reports here (default: a temporary directory).")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.state_dir:
        os.makedirs(args.state_dir, exist_ok=True)
        code = run_demo(args.state_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="cohort-demo-") as directory:
            code = run_demo(directory)
    print(f"\ncohort demo finished in {time.monotonic() - started:.1f}s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
