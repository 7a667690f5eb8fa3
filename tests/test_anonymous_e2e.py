"""Anonymous users, then identified, as a user runs the job: ``python -m pipeline.stream`` on the
real Pub/Sub emulator, into the Braze simulator over HTTP, checked from outside the job.

A device is used anonymously, its user signs in, and later the device is anonymous again: the
user ends as one Braze profile holding every event, after exactly one /users/identify call.
Every published event is accounted for once per sync and branch (from the outcome topic), and
no key appears in the job's log or the dead letters.
"""
import time

import orjson
import pytest

from local.stack import JobOnLocalStack

LABEL = "amp_device"
SYNCS = {"syncs": [{
    "name": "us", "endpoint": "{url}", "api_key": "env:KEY_0",
    "identifier": {"type": "external_id", "source": "user_id",
                   "anonymous": {"type": "user_alias", "source": "device_id", "alias_label": LABEL}},
    "users": {"properties": ["plan"], "mappings": [{"from": "country", "to": "country"}]},
    "events": {"select": [{"event_type": "*"}]},
}]}
SETTLE_SECONDS = 3
JOB_ARGS = ["--max_batch_wait_seconds=1", "--reorder_lateness_seconds=1",
            f"--anonymous_settle_seconds={SETTLE_SECONDS}"]


def event(n, event_type, device, user=None, **fields):
    body = {"event_type": event_type, "device_id": device, "time": int(time.time() * 1000), "insert_id": f"e-{n}",
            **fields}
    if user:
        body["user_id"] = user
    return orjson.dumps(body)


def identify_calls(run):
    return [r for r in run.client.requests() if r["path"] == "/users/identify"]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_an_anonymous_user_who_signs_in_ends_as_one_profile_through_pubsub(pubsub_emulator):
    with JobOnLocalStack(SYNCS, emulator=pubsub_emulator, job_args=JOB_ARGS) as run:
        run.publish([event(1, "App Opened", "d1", user_properties={"plan": "free"}, country="Norway"),
                     event(2, "Viewed Item", "d1"),
                     event(3, "App Opened", "d2"),  # never signs in: stays an alias profile
                     event(4, "App Opened", "d9", user="u9")])  # never anonymous: no call
        assert run.drain(deadline_seconds=120)["pending"] == 0, run.log_tail()

        run.publish([event(5, "Signed In", "d1", user="u1", user_properties={"plan": "pro"}),
                     event(6, "Purchased", "d1", user="u1")])
        assert run.drain(deadline_seconds=60)["pending"] == 0, run.log_tail()
        run.client.wait_for(lambda c: identify_calls(run), timeout_seconds=60)

        run.publish([event(7, "App Opened", "d1"),  # anonymous again: the alias names u1 now
                     event(8, "Signed Out", "d1", user="u1")])
        totals = run.drain(deadline_seconds=60)
        assert totals["pending"] == 0, run.log_tail()
        time.sleep(SETTLE_SECONDS + 2)  # any second call would come settle seconds after event 7

        [call] = identify_calls(run)
        assert call["status"] == 201 and call["body"] == {"aliases_to_identify": [
            {"external_id": "u1", "user_alias": {"alias_name": "d1", "alias_label": LABEL}}]}
        profiles = {u.get("external_id") or u["user_aliases"][0]["alias_name"]: u for u in run.client.users()}
        assert sorted(profiles) == ["d2", "u1", "u9"]
        u1 = profiles["u1"]
        assert sorted(e["name"] for e in u1["events"]) == [
            "App Opened", "App Opened", "Purchased", "Signed In", "Signed Out", "Viewed Item"]
        # The anonymous country (a name, sent as a code) moved over; u1's own plan won the merge.
        assert u1["attributes"] == {"plan": "pro", "country": "NO"}
        assert profiles["d2"].get("external_id") is None

        assert totals == {"delivered": 8, "skipped": 0, "dead_lettered": 0, "pending": 0}
        for source in run.reconciler.sources:  # once per branch of the one sync, nothing missing
            assert set(run.reconciler.parts(source)) == {("us", "track"), ("us", "identify")}
        assert run.dead_letters == []
        assert run.keys_in(run.log_text()) == []


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_merge_is_held_through_a_braze_outage_and_sent_when_braze_answers(pubsub_emulator):
    settle = 20  # time to start the outage after the alias profile is delivered, before the merge
    args = ["--max_batch_wait_seconds=1", "--reorder_lateness_seconds=1", f"--anonymous_settle_seconds={settle}"]
    with JobOnLocalStack(SYNCS, emulator=pubsub_emulator, job_args=args) as run:
        run.publish([event(1, "App Opened", "d1"), event(2, "Signed In", "d1", user="u1")])
        assert run.drain(deadline_seconds=120)["pending"] == 0, run.log_tail()
        assert identify_calls(run) == []  # not due yet
        run.client.set_faults(error_rate=1.0, error_statuses=[503])  # Braze fails every request
        run.client.wait_for(lambda c: len(identify_calls(run)) >= 3, timeout_seconds=settle + 60)
        run.client.clear_faults()  # Braze answers again: the held merge goes on its next retry
        run.client.wait_for(lambda c: any(r["status"] == 201 for r in identify_calls(run)), timeout_seconds=60)

        statuses = [r["status"] for r in identify_calls(run)]
        assert statuses[-1] == 201 and set(statuses[:-1]) == {503} and len(statuses) >= 4
        [profile] = run.client.users()
        assert profile["external_id"] == "u1" and sorted(e["name"] for e in profile["events"]) == [
            "App Opened", "Signed In"]
        assert run.dead_letters == [] and run.keys_in(run.log_text()) == []
        assert b"holding 1 merge requests" in run.log_text()
