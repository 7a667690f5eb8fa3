"""Broken keys, end to end: the job goes on, the broken syncs' objects are dead-lettered with a
reason a person can act on, and no key appears anywhere, in any rendering.

The job runs as a user runs it (``python -m pipeline.stream`` on the Pub/Sub emulator, the Braze
simulator over HTTP, keys from the environment and from the local Secret Manager through the
real client). Beside a sync with a good key, three syncs have keys a copy-paste accident makes:
an inner newline (in an environment variable, and in Secret Manager) and a character outside
Latin-1. Before the keys were checked at read, the first made ``requests`` raise
``InvalidHeader`` with the key ``repr``-escaped in its message (into the log and the dead
letter's detail), and the second an uncaught ``UnicodeEncodeError``.
"""
import time

import orjson
import pytest

from local.stack import JobOnLocalStack
from transforms.dead_letters import sources_of

SYNC_NAMES = ("good", "newline-env", "non-latin1-env", "newline-secret-manager")
SYNCS = {"syncs": [
    {"name": name, "endpoint": "{url}", "api_key": "env:UNUSED",  # local.stack sets the references
     "users": {"properties": ["plan"]},
     "events": {"select": [{"event_type": "*"}], "properties": ["total"]}}
    for name in SYNC_NAMES
]}
BAD_KEYS = {
    1: "a81d3e77c0f24b19\n5f0c2a9e41d7b3c8",
    2: "a81d3e77c0f24b19\u01515f0c2a9e41d7b3c8",  # ő: not in Latin-1, so http.client cannot encode it
    3: "7c0f24b19a81d3e7\r\n41d7b3c85f0c2a9e\n",  # the trailing newline alone would be stripped
}
PROBLEMS = {1: "contains a line break at position 17", 2: "contains a non-ASCII character at position 17",
            3: "contains a line break at position 17"}
JOB_ARGS = ["--max_batch_wait_seconds=1", "--braze_timeout_seconds=2", "--braze_max_attempts=3",
            "--braze_max_retry_seconds=10"]


def _events(first, count):
    now_ms = int(time.time() * 1000)
    return [orjson.dumps({"event_type": "Order Completed", "user_id": f"user-{n:03d}", "time": now_ms + n,
                          "insert_id": f"key-safety-{n}", "event_properties": {"total": n},
                          "user_properties": {"plan": f"plan-{n % 3}"}})
            for n in range(first, first + count)]


def _good_sync_events(run):
    """user id → event totals the simulator holds (only the good sync's key is accepted)."""
    return {user["external_id"]: sorted(e["properties"]["total"] for e in user["events"])
            for user in run.client.users()}


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_broken_keys_never_leak_and_never_stop_the_job(pubsub_emulator):
    with JobOnLocalStack(SYNCS, emulator=pubsub_emulator, job_args=JOB_ARGS, key_values=BAD_KEYS,
                         from_secret_manager={3}) as run:
        first = run.publish(_events(0, 12))
        totals = run.drain(deadline_seconds=400)
        assert totals["pending"] == 0, run.log_tail()
        # Published after the broken syncs failed: the job went on.
        second = run.publish(_events(100, 6))
        totals = run.drain(deadline_seconds=400)
        assert totals["pending"] == 0, run.log_tail()
        assert run.job.poll() is None, run.log_tail()

        # The good sync delivered every event, before and after.
        held = _good_sync_events(run)
        assert sorted(held) == sorted({f"user-{n:03d}" for n in [*range(12), *range(100, 106)]})
        assert sum(len(totals_) for totals_ in held.values()) == 18
        for message_id in first + second:
            parts = run.reconciler.parts(f"{message_id}/0")
            assert parts[("good", "track")] == ("delivered", "")
            assert parts[("good", "identify")][0] in ("delivered", "skipped")
            for name in SYNC_NAMES[1:]:
                assert parts[(name, "track")] == ("dead_lettered", "api_key_unavailable")

        # Each broken sync's objects are dead letters whose reason and detail say what to fix:
        # the reference and the problem, never the value.
        letters = [m.attributes for m in run.dead_letters]
        for index, name in enumerate(SYNC_NAMES[1:], start=1):
            mine = [a for a in letters if a["sync"] == name]
            assert mine and {a["reason"] for a in mine} == {"api_key_unavailable"}
            lettered = {s for a in mine for s in sources_of(a)}
            assert {f"{m}/0" for m in first + second} <= lettered
            for attributes in mine:
                assert run.references[index].split(":")[-1] in attributes["detail"]
                assert PROBLEMS[index] in attributes["detail"], attributes["detail"]
        assert not [a for a in letters if a["sync"] == "good"]

        # The keys appear nowhere: the job's log, every dead letter's data and attributes, every
        # outcome record, in any rendering (raw, repr, JSON, URL-encoded).
        log = run.log_text()
        assert b"api_key_unavailable" in log or b"cannot read the Braze API key" in log  # the operator sees it
        assert run.keys_in(log) == []
        assert run.keys_in(b"".join(m.data + repr(dict(m.attributes)).encode() for m in run.dead_letters)) == []
        assert run.keys_in(b"".join(run.outcome_records)) == []
        # Nothing was ever sent with a broken key: every request the simulator saw was authorised.
        statuses = {r.get("status") for r in run.client.requests() if r.get("path") == "/users/track"}
        assert statuses and statuses <= {200, 201}
