"""Fault injection: each knob over real HTTP, and what the simulator holds afterwards."""
import time

import pytest
import requests

from local.braze_sim import BrazeSimulator
from tests import sim_http

T = "2024-05-01T12:00:00Z"


def track(sim, external_id="u1", timeout=10):
    """/users/track with one valid event for ``external_id``."""
    body = {"events": [{"external_id": external_id, "name": "played", "time": T}]}
    return sim_http.track(sim, body, timeout=timeout)


def test_error_rate_one_fails_everything_and_applies_nothing(sim):
    client = sim.client()
    client.set_faults(error_rate=1.0, error_statuses=[502, 503])
    statuses = {track(sim, f"u{i}").status_code for i in range(10)}
    assert statuses <= {502, 503} and statuses
    assert client.users() == []  # /_sim/ is never faulted
    assert {r["fault"] for r in client.requests()} == {"error"}
    assert client.counters()["objects_accepted"] == 0


def test_seeded_errors_repeat(sim):
    client = sim.client()
    runs = []
    for _ in range(2):
        client.set_faults(error_rate=0.5, seed=42)
        runs.append([track(sim).status_code for _ in range(12)])
    assert runs[0] == runs[1] and 201 in runs[0] and 500 in runs[0]


def test_burst_answers_429_with_retry_after_then_recovers(sim):
    client = sim.client()
    client.set_faults(rate_limit_burst=2, retry_after_seconds=3)
    answers = [track(sim) for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 201]
    assert [a.headers.get("Retry-After") for a in answers[:2]] == ["3", "3"]
    assert answers[0].headers["X-RateLimit-Remaining"] == "0"
    assert len(client.user("u1")["events"]) == 1


def test_random_rate_limit_bursts_come_in_runs_of_the_burst_size(sim):
    client = sim.client()
    client.set_faults(rate_limit_rate=0.2, rate_limit_burst_size=3, seed=7)
    statuses = [track(sim, f"u{i}").status_code for i in range(60)]
    while statuses[-1] == 429:  # a burst cut short by the end of the test
        statuses.pop()
    runs, run = [], 0
    for status in statuses + [201]:
        if status == 429:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert runs and all(r % 3 == 0 for r in runs)  # back-to-back bursts join up
    assert len(client.users()) == statuses.count(201)


def test_latency_delays_answers(sim):
    sim.client().set_faults(latency_ms=200)
    started = time.monotonic()
    assert track(sim).status_code == 201
    assert time.monotonic() - started >= 0.2


def test_hang_makes_the_client_time_out_and_applies_nothing(sim):
    client = sim.client()
    client.set_faults(hang_rate=1.0, hang_seconds=3)
    with pytest.raises(requests.Timeout):
        track(sim, timeout=0.3)
    client.clear_faults()
    assert client.users() == []
    assert client.requests()[0]["fault"] == "hang"
    assert track(sim, "u2").status_code == 201


def test_drop_closes_the_connection_and_applies_nothing(sim):
    client = sim.client()
    client.set_faults(drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        track(sim)
    assert client.users() == []
    [logged] = client.requests()
    assert (logged["status"], logged["fault"]) == (None, "drop")


def test_apply_then_error_applies_and_answers_500(sim):
    client = sim.client()
    client.set_faults(apply_then_error_rate=1.0)
    r = track(sim)
    assert r.status_code == 500
    assert len(client.user("u1")["events"]) == 1
    assert client.requests()[0]["fault"] == "apply_then_error"


def test_apply_then_error_leaves_rejections_alone(sim):
    sim.client().set_faults(apply_then_error_rate=1.0)
    r = requests.post(sim.url + "/users/track", json={"events": [{"name": "x"}]},
                      headers={"Authorization": f"Bearer {sim.api_key}"})
    assert r.status_code == 400


def test_faults_are_cleared_by_delete_and_reset(sim):
    client = sim.client()
    client.set_faults(error_rate=1.0)
    client.clear_faults()
    assert track(sim).status_code == 201
    client.set_faults(error_rate=1.0)
    client.reset()
    assert track(sim).status_code == 201


@pytest.mark.parametrize("spec", [{"error_rate": 2}, {"error_statuses": [404]}, {"error_statuses": [599]}, {"rate_limit_burst": -1},
                                  {"latency_ms": "x"}, {"explode": True}])
def test_bad_fault_specs_are_400(sim, spec):
    r = requests.post(sim.url + "/_sim/faults", json=spec)
    assert r.status_code == 400


def test_stop_wakes_hung_requests():
    simulator = BrazeSimulator().start()
    simulator.client().set_faults(hang_rate=1.0, hang_seconds=60)
    started = time.monotonic()
    with pytest.raises(requests.RequestException):
        track(simulator, timeout=0.2)
    simulator.stop()
    assert time.monotonic() - started < 5
