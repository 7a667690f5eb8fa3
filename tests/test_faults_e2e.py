"""Zero loss under faults, checked from outside the job.

The job runs as a user runs it (``python -m pipeline.stream`` on the emulator) while the Braze
simulator fails requests. Afterwards every published event must be accounted for, and the
accounting is checked against what the simulator holds and what the dead-letter subscription
holds, not against the job's own counters.
"""
import collections
import time


import pytest

from local.generate import generate_messages
from local.stack import JobOnLocalStack
from transforms.dead_letters import sources_of
from transforms.parse import parse_message
from transforms.records import iso_from_ms

SYNCS = {
    "syncs": [
        {"name": "us", "endpoint": "{url}", "api_key": "env:KEY_0",
         "users": {"properties": ["plan", "country", "age"]},
         "events": {"select": [{"event_type": "*"}], "properties": ["total", "sku", "genre"]}},
        {"name": "devices", "endpoint": "{url}", "api_key": "env:KEY_1",
         "identifier": {"type": "user_alias", "source": "device_id", "alias_label": "amp_device"},
         "events": {"select": [{"event_type": "Song Played"}, {"event_type": "Order Completed"}]}},
    ]
}
JOB_ARGS = ["--max_batch_wait_seconds=1", "--braze_timeout_seconds=1", "--braze_max_attempts=10",
            "--braze_max_retry_seconds=60"]


def _identity(sync, event, time_ms):
    """How one event shows up in the simulator for one sync."""
    if sync == "us":
        who = ("external_id", event.get("user_id"))
    else:
        who = ("alias", event.get("device_id"))
    return sync, who, event["event_type"], iso_from_ms(time_ms)


def _simulator_events(users):
    held = collections.Counter()
    for user in users:
        for event in user["events"]:
            if user.get("external_id"):
                held[("us", ("external_id", user["external_id"]), event["name"], event["time"])] += 1
            else:
                alias = user["user_aliases"][0]["alias_name"]
                held[("devices", ("alias", alias), event["name"], event["time"])] += 1
    return held


def _check_accounting(run, totals):
    assert totals["pending"] == 0, run.log_tail()
    published = len(run.reconciler.sources)
    assert published == totals["delivered"] + totals["skipped"] + totals["dead_lettered"]

    events = {}
    for message_id, data in run.published:
        for result in parse_message(data, message_id, None):
            if hasattr(result, "event"):
                events[result.source] = result
    delivered, ambiguous, maybe_applied = collections.Counter(), set(), set()
    for source, parsed in events.items():
        for (sync, branch), (status, reason) in run.reconciler.parts(source).items():
            if branch != "track":
                continue
            identity = _identity(sync, parsed.event, parsed.time_ms)
            if status == "delivered":
                delivered[identity] += 1
                if reason == "after_ambiguous_retry":
                    ambiguous.add(identity)
            elif reason == "retries_exhausted":
                maybe_applied.add(identity)

    held = _simulator_events(run.client.users())
    # Everything the job says it delivered is in Braze ...
    missing = [i for i in delivered if held[i] < delivered[i]]
    assert missing == []
    # ... nothing is there twice unless the job said its request may have been applied twice ...
    duplicated = [i for i in delivered if held[i] > delivered[i] and i not in ambiguous]
    assert duplicated == []
    # ... and nothing is there that the job did not send.
    assert set(held) <= set(delivered) | maybe_applied

    letters = [m.attributes for m in run.dead_letters]
    assert all(letter["reason"] and letter["detail"] and letter["stage"] for letter in letters)
    lettered = {source for letter in letters for source in sources_of(letter)}
    assert set(run.reconciler.dead_lettered_sources()) <= lettered
    blob = b"".join(m.data + repr(m.attributes).encode() for m in run.dead_letters) + run.log_text()
    assert run.keys_in(blob) == []


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_nothing_is_lost_or_doubled_while_braze_fails_rate_limits_hangs_and_drops(pubsub_emulator):
    with JobOnLocalStack(SYNCS, emulator=pubsub_emulator, job_args=JOB_ARGS) as run:
        run.client.set_faults(error_rate=0.10, rate_limit_rate=0.05, rate_limit_burst_size=3,
                              retry_after_seconds=1, hang_rate=0.02, hang_seconds=2, drop_rate=0.02, seed=11)
        run.publish(list(generate_messages(events=5000, users=400, seed=5, malformed_share=0.01)))
        started = time.monotonic()
        totals = run.drain(deadline_seconds=840)
        print(f"drained in {time.monotonic() - started:.0f} s: {totals}")
        faults = collections.Counter(r.get("fault") for r in run.client.requests())
        assert faults["error"] and faults["burst"] and faults["hang"] and faults["drop"]  # all really happened
        _check_accounting(run, totals)
        assert totals["delivered"] > 0.8 * len(run.reconciler.sources)


@pytest.mark.integration
def test_the_job_survives_a_braze_restart_mid_stream(pubsub_emulator):
    with JobOnLocalStack(SYNCS, emulator=pubsub_emulator, job_args=JOB_ARGS) as run:
        corpus = list(generate_messages(events=1200, users=100, seed=9))
        run.publish(corpus[:600])
        port, restarted = run.sim.port, []

        def restart_when_busy(r):
            if not restarted and r.reconciler.pending() < len(r.reconciler.sources) * 0.8:
                r.sim.stop()  # Braze goes away: connections are refused ...
                restarted.append(True)
                time.sleep(3)  # ... for 3 s: the outage under test, not a synchronisation
                r.sim.start(port=port)  # and comes back on the same address, state intact
                r.publish(corpus[600:])

        totals = run.drain(deadline_seconds=240, on_poll=restart_when_busy)
        assert restarted
        assert run.job.poll() is None  # still running
        _check_accounting(run, totals)
