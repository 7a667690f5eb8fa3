"""A user's writes land in the order they happened, and a Braze outage loses nothing.

Through the real Pub/Sub emulator, ``python -m pipeline.stream`` and the Braze simulator, as a
user runs the job. What Amplitude holds is computed independently (``tests/amplitude_model.py``)
from each user's operations in event-time order, and compared with what the simulator holds.
"""
from __future__ import annotations

import collections
import time

import pytest

from local.stack import JobOnLocalStack
from tests.amplitude_model import PROPERTIES, braze_view, stream

SYNCS = {"syncs": [{"name": "users", "endpoint": "{url}", "api_key": "env:KEY_0",
                    "users": {"properties": list(PROPERTIES)}}]}
PUBLISH_EVERY_SECONDS = 0.02  # ~50 messages/s: a user's operations arrive over several seconds


def _publish_paced(run, messages, chunk=10):
    for start in range(0, len(messages), chunk):
        run.publish(messages[start:start + chunk])
        time.sleep(PUBLISH_EVERY_SECONDS * chunk)  # pacing the publisher, not synchronising


def _braze_attributes(run):
    return {u["external_id"]: {k: v for k, v in u.get("attributes", {}).items() if v != []}
            for u in run.client.users()}


def _stale(expected, held):
    return {user: (braze_view(want), held.get(user, {})) for user, want in expected.items()
            if braze_view(want) != held.get(user, {})}


@pytest.mark.integration
@pytest.mark.parametrize("in_flight", [1, 4])
def test_every_users_final_attributes_equal_amplitudes_whatever_the_arrival_order(pubsub_emulator, in_flight):
    """Three shuffled streams of interleaved operations through one job per in-flight setting."""
    args = ["--max_batch_wait_seconds=0.5", f"--braze_max_in_flight={in_flight}"]
    with JobOnLocalStack(SYNCS, emulator=pubsub_emulator, job_args=args) as run:
        expected = {}
        for seed in (1, 2, 3):
            messages, users = stream(seed, users=40, ops_per_user=12, prefix=f"s{seed}i{in_flight}")
            expected.update(users)
            _publish_paced(run, messages)
        totals = run.drain(deadline_seconds=180)
        assert totals["pending"] == 0, run.log_tail()
        assert totals["dead_lettered"] == 0, run.log_tail()
        assert _stale(expected, _braze_attributes(run)) == {}


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_an_outage_and_a_long_429_are_held_through_and_nothing_is_dead_lettered(pubsub_emulator):
    """Braze answers 503 to everything for longer than the old 120 s-style budget (shortened here
    with options to 5 s of retries per request), then 429 with Retry-After 61 s, then recovers."""
    args = ["--max_batch_wait_seconds=0.5", "--braze_max_attempts=3", "--braze_max_retry_seconds=5",
            "--braze_max_backoff_seconds=4"]
    with JobOnLocalStack(SYNCS, emulator=pubsub_emulator, job_args=args) as run:
        messages, expected = stream(7, users=30, ops_per_user=10, prefix="outage")
        half = len(messages) // 2
        _publish_paced(run, messages[:half])
        run.client.wait_for(lambda c: c.counters().get("requests", 0) > 0, timeout_seconds=60)
        run.client.set_faults(error_rate=1.0, error_statuses=[503])
        _publish_paced(run, messages[half:])
        time.sleep(25)  # the outage's length: a stretch of time is what is tested here
        run.client.set_faults(rate_limit_rate=1.0, retry_after_seconds=61)
        time.sleep(5)
        run.client.clear_faults()
        totals = run.drain(deadline_seconds=240)
        assert totals["pending"] == 0, run.log_tail()
        assert totals["dead_lettered"] == 0 and run.dead_letters == [], run.log_tail()
        held = _braze_attributes(run)
        assert _stale(expected, held) == {}  # an $add written twice would show here
        log = run.log_text().decode()
        assert "holding this key's requests" in log and "Braze answers again" in log
        statuses = collections.Counter(r.get("status") for r in run.client.requests())
        assert statuses[503] > 0 and statuses[429] > 0


@pytest.mark.integration
def test_past_the_outage_budget_held_objects_are_dead_lettered_with_the_reason(pubsub_emulator):
    args = ["--max_batch_wait_seconds=0.5", "--braze_outage_budget=12s", "--braze_max_backoff_seconds=3"]
    with JobOnLocalStack(SYNCS, emulator=pubsub_emulator, job_args=args) as run:
        run.client.set_faults(error_rate=1.0, error_statuses=[503])
        messages, _ = stream(11, users=5, ops_per_user=4, prefix="budget")
        run.publish(messages)
        totals = run.drain(deadline_seconds=120)
        assert totals["pending"] == 0, run.log_tail()
        assert totals["delivered"] == 0 and totals["dead_lettered"] > 0
        reasons = {m.attributes["reason"] for m in run.dead_letters}
        assert reasons == {"outage_budget_exhausted"}
        assert all("outage budget" in m.attributes["detail"] for m in run.dead_letters)
