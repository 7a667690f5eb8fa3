"""Shadow mode end to end: `python -m pipeline.stream` on the real Pub/Sub emulator, a shadow sync
beside a live one with the same settings. The live one reaches the Braze simulator over HTTP;
the shadow one reaches only the shadow topic, with the objects the live one sent, in the same
order per user, and its events are accounted for as skipped/shadow.

Which objects share a request depends on timing in a streaming run (each batch key waits up to
--max_batch_wait_seconds on its own), so this compares objects and their order per user; the
bounded comparison in tests/test_preview.py shows whole bodies equal.
"""
import collections

import orjson
import pytest

from local.generate import generate_messages
from local.stack import JobOnLocalStack

SETTINGS = {"endpoint": "{url}", "api_key": "env:UNUSED",  # local.stack sets the references
            "users": {"properties": ["plan", "country", "city", "login_count"]},
            "events": {"select": [{"event_type": "*"}], "properties": ["total", "sku", "song_id"]}}
SYNCS = {"syncs": [{"name": "live", **SETTINGS}, {"name": "new", "mode": "shadow", **SETTINGS}]}
# The shadow sync's key could never be sent (a line break inside): had the job read it, every
# object of that sync would be dead-lettered as api_key_unavailable.
UNSENDABLE_KEY = "5f0c2a9e41d7b3c8\n41d7b3c85f0c2a9e"


def _objects_per_user(bodies):
    per_user = collections.defaultdict(list)
    for body in bodies:
        for kind in ("attributes", "events", "purchases"):
            for obj in body.get(kind, ()):
                per_user[obj["external_id"]].append((kind, orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)))
    return per_user


@pytest.mark.integration
def test_a_shadow_sync_publishes_what_the_live_one_sends_and_sends_nothing(pubsub_emulator):
    shadow_topic = pubsub_emulator.create_topic("shadow-e2e")
    pubsub_emulator.create_subscription("shadow-e2e-sub", "shadow-e2e")
    messages = list(generate_messages(events=80, users=8, seed=5, malformed_share=0.0, duplicate_share=0.0,
                                      array_share=0.0))
    job_args = [f"--shadow_topic={shadow_topic}", "--max_batch_wait_seconds=1"]
    with JobOnLocalStack(SYNCS, emulator=pubsub_emulator, job_args=job_args, key_values={1: UNSENDABLE_KEY}) as run:
        run.publish(messages)
        totals = run.drain(deadline_seconds=300)
        assert totals["pending"] == 0, run.log_tail()
        sent = [r["body"] for r in run.client.requests() if r["path"] == "/users/track"]
        live_objects = sum(len(b.get(k, ())) for b in sent for k in ("attributes", "events", "purchases"))

        def all_objects_arrived(got):
            return sum(int(m.attributes["objects"]) for m in got) >= live_objects

        shadows = pubsub_emulator.pull_until("shadow-e2e-sub", all_objects_arrived, deadline_seconds=120)
        log = run.log_text()

    assert sent and live_objects > 0
    # Every object the live sync sent, and only those, in the shadow topic, in the same order per user.
    shown = [orjson.loads(m.data) for m in shadows]
    assert _objects_per_user(shown) == _objects_per_user(sent)
    assert sorted(m.attributes["sync"] for m in shadows) == ["new"] * len(shadows)
    assert all(m.attributes["batch_key"].startswith("new#") and m.attributes["seq"].isdigit() for m in shadows)
    per_key = collections.defaultdict(list)
    for m in shadows:
        per_key[m.attributes["batch_key"]].append(int(m.attributes["seq"]))
    assert all(sorted(seqs) == list(range(len(seqs))) for seqs in per_key.values())  # none lost, none twice
    assert all(int(m.attributes["objects"]) == sum(len(v) for v in orjson.loads(m.data).values()) for m in shadows)

    # Each event ends as it would live, with skipped/shadow where live says delivered.
    for source in run.reconciler.sources:
        parts = run.reconciler.parts(source)
        for branch in ("track", "identify"):
            live_status = parts[("live", branch)]
            expected = ("skipped", "shadow") if live_status == ("delivered", "") else live_status
            assert parts[("new", branch)] == expected, (source, branch, parts)
    assert totals["dead_lettered"] == 0 and not run.dead_letters  # the unsendable key was never read
    assert run.keys_in(log) == [] and run.keys_in(b"".join(m.data for m in shadows)) == []
