"""`make cohort-demo`: the cohort-sync job against the Braze simulator, bounded in time.

Starts the simulator in this process, seeds some Braze users (and leaves some cohort members
unknown to Braze), writes a cohorts file with two targets (partner cohort import, and the
array custom attribute), then for each target runs a first sync (the full cohort) and a second,
incremental one from a changed snapshot, printing who was added, removed and skipped, what
Braze holds afterwards, and where the reports are. Both targets check users exist first
(``verify_users``): unknown users are skipped (``unknown_to_braze``), and ghost-1, which Braze
learns about between the partner target's two runs, is added by its second run. Everything runs on the FnApiRunner; the
simulator stops at the end.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time

import yaml

from local.braze_sim import BrazeSimulator, SimClient

COHORT_ID = "demo_power_users"
COHORT_NAME = "Power users"
KNOWN = ["u1", "u2", "u3", "u4", "u5"]  # in Braze before the sync
FIRST = [  # amplitude_id, user_id (None: never identified → unresolved mapping)
    (101, "u1"), (102, "u2"), (103, "u3"), (104, "ghost-1"), (105, None),
]
SECOND = [(102, "u2"), (103, "u3"), (104, "ghost-1"), (106, "u4"), (107, "u5"), (108, "ghost-2")]
LEARNED = "ghost-1"  # Braze learns about this user between the first target's two runs


def _write_snapshot(directory: str, name: str, rows) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("amplitude_id,user_id,device_id\n")
        for amplitude_id, user_id in rows:
            f.write(f"{amplitude_id},{user_id or ''},device-{amplitude_id}\n")
    return path


def _config(url: str) -> dict:
    return {
        "targets": [
            {"name": "US Production", "endpoint": url, "delivery": "partner", "partner": "amplitude",
             "api_key": "env:DEMO_BRAZE_DATA_IMPORT_KEY", "partner_api_key": "env:DEMO_BRAZE_PARTNER_KEY",
             "lookup_api_key": "env:DEMO_BRAZE_REST_KEY",  # users.export.ids: check users exist first
             "user_mapping": {"type": "user_id"}},
            {"name": "No Partner Key", "endpoint": url, "delivery": "attribute", "api_key": "env:DEMO_BRAZE_REST_KEY",
             "attribute": "amplitude_cohorts", "user_mapping": {"type": "user_id"}},
        ],
        "cohort_syncs": [
            {"name": "power-users-partner", "cohort_id": COHORT_ID, "cohort_name": COHORT_NAME,
             "target": "US Production", "cadence": "daily"},
            {"name": "power-users-attribute", "cohort_id": COHORT_ID, "cohort_name": COHORT_NAME,
             "target": "No Partner Key", "cadence": "one_time"},
        ],
    }


def _braze_view(client: SimClient) -> str:
    parts = []
    for user in sorted(client.users(), key=lambda u: u["external_id"] or ""):
        cohorts = "in cohort" if COHORT_ID in user["cohorts"] else "-"
        attribute = user["attributes"].get("amplitude_cohorts") or []
        parts.append(f"{user['external_id']}: partner {cohorts}, attribute {attribute or '-'}")
    return "\n      ".join(parts)


def run_demo(state_dir: str, out=sys.stdout) -> int:
    from pipeline.cohort_config import loads_cohorts
    from pipeline.cohorts import plan_sync, run_snapshot_sync
    from transforms.cohorts.delivery import RetryPolicy

    def say(text=""):
        print(text, file=out, flush=True)

    keys = {"DEMO_BRAZE_DATA_IMPORT_KEY": secrets.token_hex(16), "DEMO_BRAZE_PARTNER_KEY": secrets.token_hex(16),
            "DEMO_BRAZE_REST_KEY": secrets.token_hex(16)}
    os.environ.update(keys)
    sim = BrazeSimulator(api_keys=[keys["DEMO_BRAZE_REST_KEY"]], partner_api_keys=[keys["DEMO_BRAZE_PARTNER_KEY"]],
                         client_secrets=[keys["DEMO_BRAZE_DATA_IMPORT_KEY"]]).start(port=0)
    client = SimClient(sim.url)
    failures = 0
    try:
        client.seed_users(*({"external_id": u} for u in KNOWN))
        say(f"Braze simulator on {sim.url}; Braze knows {', '.join(KNOWN)} (ghost-1, ghost-2 are unknown)")
        config = loads_cohorts(yaml.safe_dump(_config(sim.url)), allow_insecure_endpoints=True)
        first = _write_snapshot(state_dir, "snapshot-1.csv", FIRST)
        second = _write_snapshot(state_dir, "snapshot-2.csv", SECOND)
        policy = RetryPolicy(max_attempts=3, max_retry_seconds=10)
        for sync in config.syncs:
            say()
            say(f"== {sync.name}: cohort {COHORT_NAME!r} → target {sync.target!r} "
                f"({config.target(sync.target).delivery} delivery)")
            for label, snapshot in (("run 1", first), ("run 2", second)):
                if label == "run 2" and client.user(LEARNED) is None:
                    client.seed_users({"external_id": LEARNED})
                    say(f"  (Braze now knows {LEARNED}: skipped as unknown in run 1, so run 2 adds it)")
                plan = plan_sync(config, sync.name, state_dir)
                outcome = run_snapshot_sync(plan, snapshot, policy=policy, shards=2)
                users = outcome.report["users"]
                added = sorted(r["braze_id"] for r in users if r["operation"] == "add" and r["status"] == "sent")
                removed = sorted(r["braze_id"] for r in users if r["operation"] == "remove" and r["status"] == "sent")
                skipped = sorted(f"{r['braze_id'] or 'amplitude_id ' + r['amplitude_id']} ({r['skip_reason']})"
                                 for r in users if r["skipped"])
                c = outcome.report["counts"]
                say(f"  {label} ({plan.mode}): {outcome.status}; added {added or '-'}, removed {removed or '-'}, "
                    f"skipped {skipped or '-'}, unchanged {c['unchanged']}")
                say(f"    report: {outcome.json_path}")
                say(f"    Braze now:\n      {_braze_view(client)}")
                failures += outcome.status != "success"
        created = [u["external_id"] for u in client.users() if u["external_id"] not in KNOWN + [LEARNED]]
        say()
        say(f"users Braze created from the cohort: {created or 'none'} (Braze never creates users from a cohort)")
    finally:
        sim.stop()
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.cohort_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--state_dir", default="", help="Keep state and reports here (default: a temporary directory).")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.state_dir:
        code = run_demo(args.state_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="cohort-demo-") as directory:
            code = run_demo(directory)
    print(f"\ncohort demo finished in {time.monotonic() - started:.1f}s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
