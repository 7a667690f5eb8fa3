"""The inputs issue 12 found by trying the job, through the real emulator, job and simulator:
each ends as a dead letter with a reason (its bytes unchanged) or a counted fix, and the job
goes on: events published after the poison are delivered, and no key appears anywhere.
(The key with an inner newline or a non-Latin-1 character is in tests/test_key_safety_e2e.py;
9 MB inputs, which the emulator's client channel does not carry, in tests/test_fuzz_graph.py.)"""
from __future__ import annotations

import json

import orjson
import pytest

from local.stack import JobOnLocalStack
from transforms.dead_letters import sources_of

T0 = 1_796_000_000_000
SYNCS = {"syncs": [{"name": "us", "endpoint": "{url}", "api_key": "env:KEY_0",
                    "users": {"properties": ["plan", "score", "prefs"]},
                    "events": {"select": [{"event_type": "*"}], "properties": ["p"]}}]}


def nested(levels):
    value = 1
    for _ in range(levels):
        value = [value]
    return value


def event(user, n, **extra):
    return {"event_type": "Play", "user_id": user, "time": T0 + n, "insert_id": f"{user}-{n}",
            "event_properties": {"p": n}, **extra}


def identify(user, n, operations):
    return {"event_type": "$identify", "user_id": user, "time": T0 + n, "insert_id": f"{user}-i{n}",
            "user_properties": operations}


@pytest.mark.integration
def test_poison_is_dead_lettered_or_fixed_and_the_job_goes_on(pubsub_emulator):
    deep_element = json.dumps([nested(300), event("before", 1)]).encode()
    poison = [
        deep_element,  # a bad element nested 300 levels beside a good event
        json.dumps(event("unselected", 2, event_properties={"x": nested(500)})).encode(),  # unselected, ~500 deep
        json.dumps(identify("selected", 3, {"$set": {"prefs": nested(300)}})).encode(),  # selected, 300 deep
        orjson.dumps(identify("overflow", 4, {"$add": {"score": 18446744073709551615}})),  # beyond int64
        orjson.dumps(identify("overflow", 5, {"$add": {"score": 18446744073709551615}})),
        orjson.dumps(identify("total", 8, {"$add": {"score": 9223372036854775807}})),
        orjson.dumps(identify("total", 9, {"$add": {"score": 1}})),  # the total passes 64 bits
        orjson.dumps(identify("inf", 6, {"$set": {"score": 1e308}})),
        orjson.dumps(identify("inf", 7, {"$add": {"score": 1e308}})),  # total overflows a float
        b"\x01" * 1_500_000,  # 1.5 MB of control bytes
    ]
    after = [orjson.dumps(event(f"after-{i}", 100 + i)) for i in range(20)]
    with JobOnLocalStack(SYNCS, emulator=pubsub_emulator, job_args=["--max_batch_wait_seconds=0.5"]) as run:
        ids = run.publish(poison)
        run.publish(after)
        totals = run.drain(deadline_seconds=120)
        assert totals["pending"] == 0, run.log_tail()

        users = {u["external_id"]: u for u in run.client.users()}
        # The job went on: everything published after the poison reached Braze ...
        assert {f"after-{i}" for i in range(20)} <= set(users)
        # ... and so did the good event beside the deep one.
        assert [e["properties"]["p"] for e in users["before"]["events"]] == [1]
        # Braze's integers are 64-bit: an $add of 2^64-1 is not sent (nothing else was: no user),
        # and of int64's largest plus 1, the first is sent and the total past 64 bits is not.
        assert "overflow" not in users
        assert users["total"]["attributes"]["score"] == 9223372036854775807
        # A total that overflows a float is not sent (never as null, which would delete it).
        assert users["inf"]["attributes"]["score"] == 1e308

        letters = {sources_of(m.attributes)[0]: m for m in run.dead_letters}
        expected = {f"{ids[0]}/0": "too_deep", f"{ids[1]}/0": "too_deep", f"{ids[2]}/0": "too_deep",
                    f"{ids[9]}/0": "message_too_large"}
        assert {s: m.attributes["reason"] for s, m in letters.items()} == expected
        # The dead letters hold the input bytes unchanged: the whole message, or the one event.
        assert letters[f"{ids[0]}/0"].data == json.dumps(nested(300)).encode()
        assert letters[f"{ids[1]}/0"].data == poison[1] and letters[f"{ids[9]}/0"].data == poison[9]
        assert all(m.attributes["detail"] for m in run.dead_letters)
        skips = [orjson.loads(r) for r in run.outcome_records]
        assert {(o["source"], o["reason"]) for o in skips if o["branch"] == "identify" and o["status"] == "skipped"
                } >= {(f"{ids[3]}/0", "number_out_of_range"), (f"{ids[4]}/0", "number_out_of_range"),
                      (f"{ids[8]}/0", "number_out_of_range")}
        # (The +1 on int64's largest is dropped where the two increments merge into one object,
        # counted as sanitize.dropped_overflowing_increment; the score above shows it was not sent.)

        blob = b"".join(m.data + repr(m.attributes).encode() for m in run.dead_letters)
        assert run.keys_in(blob + run.log_text() + b"".join(run.outcome_records)) == []
