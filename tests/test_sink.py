"""WriteToBraze in bounded pipelines (FnApiRunner) against the real Braze simulator over HTTP.

What reached Braze is read from the simulator (``SimClient.users()`` / ``.requests()``), not
from our own counters. Sleeps are injected (recorded, not slept) so retries are fast.
"""
import logging
import threading
from typing import Tuple

import apache_beam as beam
import orjson
import pytest
from apache_beam.metrics.metric import MetricsFilter

from pipeline.config import Sync
from tests.conftest import run_and_collect
from transforms import sending
from transforms import sink as sink_mod
from transforms.records import Request
from transforms.records import ATTRIBUTES, DEAD_LETTERED, DELIVERED, EVENTS, IDENTIFY, PURCHASES, TRACK, \
    BrazeItem, DeadLetter, Outcome
from transforms.dead_letters import to_pubsub_message
from transforms.sink import DEAD_LETTER_TAG, WriteToBraze

sim_pkg = pytest.importorskip("local.braze_sim", reason="the Braze simulator (local/braze_sim) is not there yet")
BrazeSimulator, SimClient = sim_pkg.BrazeSimulator, sim_pkg.SimClient
from local.braze_sim.rules import MISSING_ID  # noqa: E402

KEY_ENV = "AMPLITUDE_BRAZE_TEST_SINK_KEY"
BAD_KEY_ENV = "AMPLITUDE_BRAZE_TEST_SINK_BAD_KEY"
BAD_KEY = "bad-key-3a7e1c0d9b2f-not-the-sim-one"
TIME = "2026-01-15T10:00:00.000Z"

# --- Recorded sleeps and rotating keys. Module-level so the pickled DoFn's functions (pickled
# by reference) write to the same objects as the test reads; outputs are collected by
# tests/conftest.py's run_and_collect.
_LOCK = threading.Lock()
_SLEEPS = []
_ROTATING_KEYS = []


def _record_sleep(seconds):
    with _LOCK:
        _SLEEPS.append(seconds)


def _rotating_resolver(reference):
    """First call: a stale key; later calls: the current one (a rotated key)."""
    with _LOCK:
        return _ROTATING_KEYS.pop(0) if len(_ROTATING_KEYS) > 1 else _ROTATING_KEYS[0]


# --- Fixtures


@pytest.fixture(scope="module")
def sim():
    with BrazeSimulator(api_keys=None, object_limit_mode="combined", rate_limit=3000,
                        rate_window_seconds=3.0).start(port=0) as s:
        yield s


_IN_FLIGHT = [1]  # the max_in_flight run() uses unless a test names one


@pytest.fixture(params=[1, 4], ids=["sequential", "in_flight_4"], autouse=True)
def in_flight(request):
    """Every sink test runs twice: sending on the bundle's thread, and with 4 requests in flight."""
    _IN_FLIGHT[0] = request.param
    yield request.param
    _IN_FLIGHT[0] = 1


@pytest.fixture
def braze(sim, monkeypatch):
    client = SimClient(sim.url)
    client.reset()
    client.clear_faults()
    monkeypatch.setenv(KEY_ENV, sim.api_key)
    monkeypatch.setenv(BAD_KEY_ENV, BAD_KEY)
    with _LOCK:
        _SLEEPS.clear()
    yield client
    client.clear_faults()


def sync(sim, name="s1", key_env=KEY_ENV):
    return Sync(name=name, endpoint=sim.url, api_key=f"env:{key_env}")


def event(user, n, sync_name="s1", **extra):
    obj = {"external_id": user, "name": "played", "time": TIME, "properties": {"n": n}, **extra}
    return BrazeItem(sync_name, user, EVENTS, obj, (f"m{user}-{n}/0",), TRACK, 1_700_000_000_000)


def attrs(user, sync_name="s1", sources=None, **values):
    obj = {"external_id": user, **values}
    return BrazeItem(sync_name, user, ATTRIBUTES, obj, sources or (f"a{user}/0",), IDENTIFY, None)


def run(batches, syncs, **kwargs):
    """Run WriteToBraze over the batches, each its own batch key; return (outcomes, dead
    letters, metrics by name)."""
    return run_requests([(f"k{i}", Request(f"k{i}", 0, tuple(b))) for i, b in enumerate(batches)], syncs, **kwargs)


def run_requests(requests, syncs, **kwargs):
    """Run WriteToBraze over ``(key, Request)`` elements, in this order."""
    kwargs.setdefault("sleep", _record_sleep)
    kwargs.setdefault("backoff_base_seconds", 0.001)
    kwargs.setdefault("max_in_flight", _IN_FLIGHT[0])

    def build(p):
        results = (p | beam.Create(requests, reshuffle=False).with_output_types(Tuple[str, Request])
                   | WriteToBraze(syncs, **kwargs))
        return {"outcomes": results[sink_mod.OUTCOMES_TAG], "dead": results[DEAD_LETTER_TAG]}

    collected = run_and_collect(build, runner="FnApiRunner")
    metrics = {}
    query = collected.result.metrics().query(MetricsFilter())
    for c in query["counters"]:
        metrics[c.key.metric.name] = metrics.get(c.key.metric.name, 0) + c.committed
    for d in query["distributions"]:
        metrics[d.key.metric.name] = d.committed
    return collected["outcomes"], collected["dead"], metrics


def all_users(braze):
    users = braze.users()
    return users["users"] if isinstance(users, dict) else users  # the brief said a dict; it is a list


def users_by_id(braze):
    return {u["external_id"]: u for u in all_users(braze)}


def track_requests(braze):
    return [r for r in braze.requests() if r.get("path") == "/users/track"]


# --- Delivery


def test_valid_batch_reaches_braze(sim, braze):
    batch = [attrs("u1", plan="pro"), event("u1", 1), event("u2", 2)]
    outcomes, dead, metrics = run([batch], [sync(sim)])
    assert dead == []
    assert sorted(outcomes) == sorted(
        [Outcome("au1/0", "s1", IDENTIFY, DELIVERED), Outcome("mu1-1/0", "s1", TRACK, DELIVERED),
         Outcome("mu2-2/0", "s1", TRACK, DELIVERED)])
    users = users_by_id(braze)
    assert users["u1"]["attributes"]["plan"] == "pro"
    assert [e["name"] for e in users["u1"]["events"]] == ["played"]
    assert [e["name"] for e in users["u2"]["events"]] == ["played"]
    assert metrics["s1.requests"] == 1
    assert metrics["s1.objects_delivered"] == 3
    assert metrics["s1.objects_per_request"].max == 3
    assert metrics["s1.delivery_latency_ms"].count == 2  # only the events have a publish time


def test_one_invalid_object_is_dead_lettered_with_brazes_reason(sim, braze):
    bad = event("u2", 2)._replace(obj={"name": "played", "time": TIME})  # no identifier
    batch = [event("u1", 1), bad, event("u3", 3)]
    outcomes, dead, metrics = run([batch], [sync(sim)])
    assert len(dead) == 1
    letter = dead[0]
    assert isinstance(letter, DeadLetter)
    assert (letter.stage, letter.reason, letter.sync, letter.http_status, letter.attempts) == (
        "braze", "braze_rejected", "s1", 201, 1)
    assert letter.detail == MISSING_ID  # Braze's own text for this error
    assert orjson.loads(letter.data) == bad.obj and letter.sources == bad.sources and letter.failed_at
    assert Outcome("mu2-2/0", "s1", TRACK, DEAD_LETTERED, "braze_rejected") in outcomes
    assert sum(o.status == DELIVERED for o in outcomes) == 2
    assert set(users_by_id(braze)) == {"u1", "u3"}


def test_all_invalid_batch_dead_letters_each_object(sim, braze):
    batch = [event("u1", 1)._replace(obj={"external_id": "u1", "time": TIME}),
             BrazeItem("s1", "u2", PURCHASES, {"external_id": "u2", "product_id": "p", "currency": "USD",
                                              "price": 1.0, "quantity": 1000, "time": TIME},
                       ("p/0",), TRACK, None)]
    outcomes, dead, _ = run([batch], [sync(sim)])
    assert {(d.reason, d.http_status) for d in dead} == {("braze_rejected", 400)}
    assert sorted(d.detail for d in dead) == ["'name' is required", "'quantity' is not valid"]
    assert {o.status for o in outcomes} == {DEAD_LETTERED}
    assert all_users(braze) == []


def test_too_many_objects_are_split_in_halves(sim, braze):
    batch = [event(f"u{i}", i) for i in range(80)]  # over the combined limit of 75
    outcomes, dead, metrics = run([batch], [sync(sim)])
    assert dead == []
    assert len(outcomes) == 80 and {o.status for o in outcomes} == {DELIVERED}
    assert len(users_by_id(braze)) == 80
    statuses = [r.get("status") for r in track_requests(braze)]
    assert statuses[0] == 400 and statuses[1:] == [201, 201]


def test_413_splits_and_a_single_oversized_object_is_dead_lettered(sim, braze):
    big = "x" * (1536 * 1024)  # three of these (4.5 MB) are over Braze's 4 MB
    batch = [attrs(f"u{i}", note=big) for i in range(3)] + [attrs("huge", note="y" * (4 * 1024 * 1024 + 10))]
    outcomes, dead, _ = run([batch], [sync(sim)])
    assert [(d.reason, d.http_status, orjson.loads(d.data)["external_id"]) for d in dead] == [("payload_too_large", 413, "huge")]
    assert sorted(o.source for o in outcomes if o.status == DELIVERED) == ["au0/0", "au1/0", "au2/0"]
    assert set(users_by_id(braze)) == {"u0", "u1", "u2"}
    assert 413 in [r.get("status") for r in track_requests(braze)]


# --- Permanent failures


def test_bad_key_dead_letters_everything_as_braze_auth(sim, braze, caplog):
    caplog.set_level(logging.DEBUG)
    batch = [event("u1", 1), attrs("u2", plan="x")]
    outcomes, dead, metrics = run([batch], [sync(sim, key_env=BAD_KEY_ENV)])
    assert {(d.reason, d.http_status) for d in dead} == {("braze_auth", 401)}
    assert {(o.status, o.reason) for o in outcomes} == {(DEAD_LETTERED, "braze_auth")}
    assert metrics["s1.auth_failures"] >= 1
    assert all_users(braze) == []
    assert "braze_auth" in caplog.text  # the operator-facing error was logged (and captured here)
    _assert_key_absent(BAD_KEY, outcomes, dead, caplog, metrics)


def test_rotated_key_is_reread_once_after_401(sim, braze):
    with _LOCK:
        _ROTATING_KEYS[:] = [BAD_KEY, sim.api_key]
    outcomes, dead, metrics = run([[event("u1", 1)]], [sync(sim)], resolve_key=_rotating_resolver)
    assert dead == [] and [o.status for o in outcomes] == [DELIVERED]
    assert metrics["s1.auth_failures"] == 1
    assert [r.get("status") for r in track_requests(braze)] == [401, 201]


def test_unreadable_key_reference_dead_letters_with_reason(sim, braze, monkeypatch):
    monkeypatch.delenv("AMPLITUDE_BRAZE_TEST_SINK_MISSING", raising=False)
    outcomes, dead, _ = run([[event("u1", 1)]], [sync(sim, key_env="AMPLITUDE_BRAZE_TEST_SINK_MISSING")])
    assert [(d.reason, d.attempts) for d in dead] == [("api_key_unavailable", 0)]
    assert "AMPLITUDE_BRAZE_TEST_SINK_MISSING" in dead[0].detail
    assert [o.reason for o in outcomes] == ["api_key_unavailable"]
    assert track_requests(braze) == []


def test_unknown_sync_is_dead_lettered_not_dropped(sim, braze):
    outcomes, dead, _ = run([[event("u1", 1, sync_name="other")]], [sync(sim)])
    assert [(d.reason, d.sync) for d in dead] == [("unknown_sync", "other")]
    assert [o.status for o in outcomes] == [DEAD_LETTERED]


# --- Transient failures


def test_server_errors_retry_then_exhaust(sim, braze):
    braze.set_faults(error_rate=1.0, error_statuses=[503], seed=1)
    batch = [event("u1", 1), event("u2", 2)]
    outcomes, dead, metrics = run([batch], [sync(sim)], max_attempts=4)
    assert {(d.reason, d.http_status, d.attempts) for d in dead} == {("retries_exhausted", 503, 4)}
    assert "HTTP 503" in dead[0].detail and "4 attempt" in dead[0].detail
    assert {(o.status, o.reason) for o in outcomes} == {(DEAD_LETTERED, "retries_exhausted")}
    assert len(track_requests(braze)) == 4
    assert metrics["s1.retries"] == 3
    # The first try, then three more at the end of the bounded input (or one by the hold's timer):
    # backoff waits only between tries made in one go, none of them long.
    assert len(_SLEEPS) <= 3 and all(0 <= s <= 0.001 * 8 for s in _SLEEPS)


def test_retry_budget_in_seconds_ends_retries_first(sim, braze):
    braze.set_faults(error_rate=1.0, error_statuses=[500], seed=1)
    outcomes, dead, _ = run([[event("u1", 1)]], [sync(sim)], max_attempts=50, max_retry_seconds=3.0,
                            backoff_base_seconds=1.0, backoff_cap_seconds=1.0)
    # Injected sleeps do not move the clock; their sum is the budget that runs out.
    assert dead[0].reason == "retries_exhausted" and dead[0].attempts < 50
    assert sum(_SLEEPS) <= 3.0 + 1e-9


def test_rate_limited_burst_waits_as_retry_after_says(sim, braze):
    braze.set_faults(rate_limit_burst=2, retry_after_seconds=2)
    outcomes, dead, metrics = run([[event("u1", 1), event("u2", 2)]], [sync(sim)])
    assert dead == [] and {o.status for o in outcomes} == {DELIVERED}
    # The first 429 holds the request (its wait is the hold's, not a sleep); the second is waited
    # out at the end of the bounded input, as the header says.
    assert _SLEEPS in ([2.0], [])
    assert metrics["s1.rate_limited"] == 2 and metrics["s1.retries"] == 2
    assert metrics["cumulativeThrottlingSeconds"] >= 2
    assert [r.get("status") for r in track_requests(braze)] == [429, 429, 201]
    assert set(users_by_id(braze)) == {"u1", "u2"}


def test_rate_limit_wait_beyond_budget_gives_up_at_the_end_of_the_input(sim, braze):
    # A bounded input: the request is held after the first 429 (its wait is beyond the quick
    # retries), and at the end of the input it gets one more try within the budget, then gives up.
    braze.set_faults(rate_limit_burst=5, retry_after_seconds=30)
    _, dead, _ = run([[event("u1", 1)]], [sync(sim)], max_retry_seconds=5.0)
    assert [(d.reason, d.http_status, d.attempts) for d in dead] == [("retries_exhausted", 429, 2)]
    assert _SLEEPS == []


def test_hang_times_out_and_counts_ambiguous_retries(sim, braze):
    braze.set_faults(hang_rate=1.0, hang_seconds=1.0, seed=3)
    outcomes, dead, metrics = run([[event("u1", 1)]], [sync(sim)], timeout_seconds=0.2, max_attempts=2)
    assert [(d.reason, d.http_status, d.attempts) for d in dead] == [("retries_exhausted", None, 2)]
    assert "timeout" in dead[0].detail
    assert metrics["s1.ambiguous_retries"] == 1
    assert metrics["s1.retries"] == 1


def test_dropped_connection_is_retried_and_delivered(sim, braze):
    braze.set_faults(drop_rate=0.5, seed=11)
    batches = [[event(f"u{i}", i)] for i in range(6)]
    outcomes, dead, metrics = run(batches, [sync(sim)], max_attempts=10, adaptive_throttling=False)
    assert dead == [] and len(outcomes) == 6 and {o.status for o in outcomes} == {DELIVERED}
    assert len(users_by_id(braze)) == 6
    assert metrics["s1.retries"] >= 1


def test_applied_then_500_is_an_ambiguous_retry(sim, braze):
    # Braze can apply a request and still answer 5xx; with no idempotency key a retry
    # duplicates the event. The sink cannot prevent that, but it counts it.
    braze.set_faults(apply_then_error_rate=1.0, seed=5)
    _, dead, metrics = run([[event("u1", 1)]], [sync(sim)], max_attempts=2)
    assert [(d.reason, d.http_status) for d in dead] == [("retries_exhausted", 500)]
    assert metrics["s1.ambiguous_retries"] == 1
    assert len(users_by_id(braze)["u1"]["events"]) == 2  # applied twice


def test_client_side_throttling_holds_new_requests_while_braze_keeps_failing(sim, braze):
    """While most recent requests were pushed back, a new request is held (by timer, never by a
    sleeping thread) instead of sent; it is retried later and never dropped."""
    braze.set_faults(error_rate=1.0, error_statuses=[503], seed=2)
    batches = [[event(f"u{i}", i)] for i in range(8)]
    outcomes, dead, metrics = run(batches, [sync(sim)], max_attempts=2, backoff_base_seconds=0.0)
    assert len(dead) == 8 and {d.reason for d in dead} == {"retries_exhausted"}
    assert not [s for s in _SLEEPS if s >= 1.0], "no thread sleeps to throttle"
    assert metrics["cumulativeThrottlingSeconds"] >= 1  # held back, and reported where Dataflow looks
    assert len(track_requests(braze)) == 16  # throttling delays requests, it never drops them


# --- The key never leaks


def _assert_key_absent(key, outcomes, dead, caplog, metrics):
    for letter in dead:
        assert key not in repr(to_pubsub_message(letter))
        assert key not in repr(letter)
    for outcome in outcomes:
        assert key not in repr(outcome)
    assert key not in caplog.text
    for record in caplog.records:
        assert key not in record.getMessage()
    assert not any(key in name for name in metrics)


def test_key_never_appears_in_outputs_or_logs(sim, braze, caplog):
    caplog.set_level(logging.DEBUG)
    braze.set_faults(rate_limit_burst=1, retry_after_seconds=0)
    bad = event("u2", 2)._replace(obj={"external_id": "u2", "time": TIME})
    outcomes, dead, metrics = run([[event("u1", 1), bad]], [sync(sim)])
    assert [d.reason for d in dead] == ["braze_rejected"]
    _assert_key_absent(sim.api_key, outcomes, dead, caplog, metrics)


# --- Arguments


@pytest.mark.parametrize("kwargs, message", [
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"timeout_seconds": float("inf")}, "timeout_seconds"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": 2.5}, "max_attempts"),
    ({"max_retry_seconds": -1}, "max_retry_seconds"),
    ({"sleep": None}, "sleep"),
])
def test_bad_arguments(kwargs, message):
    good = Sync(name="s1", endpoint="https://rest.iad-01.braze.com", api_key="env:X")
    with pytest.raises(ValueError, match=message):
        WriteToBraze([good], **kwargs)


@pytest.mark.parametrize("syncs, message", [
    ([], "at least one"),
    (None, "iterable"),
    (["s1"], "Sync"),
    ([Sync(name="", endpoint="https://x", api_key="env:X")], "name"),
    ([Sync(name="a", endpoint="https://x", api_key="env:X")] * 2, "more than once"),
    ([Sync(name="a", endpoint="rest.iad-01.braze.com", api_key="env:X")], "endpoint"),
    ([Sync(name="a", endpoint="https://x/?q=1", api_key="env:X")], "endpoint"),
])
def test_bad_syncs(syncs, message):
    with pytest.raises(ValueError, match=message):
        WriteToBraze(syncs)


def test_key_pasted_as_reference_is_refused_without_echo():
    key = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    with pytest.raises(ValueError) as e:
        WriteToBraze([Sync(name="a", endpoint="https://rest.iad-01.braze.com", api_key=key)])
    assert key not in str(e.value) and "reference" in str(e.value)


# --- Requests in flight (transforms.inflight)


def _overlaps(intervals):
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = current = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


def test_a_keys_ready_requests_overlap_up_to_the_limit_but_never_for_one_user(sim, braze):
    """Requests 1..9 of one key arrive before request 0 (Beam reorders across the shuffle), so
    they wait; request 0 releases all ten at once, and up to four go together."""
    latency = 0.3
    braze.set_faults(latency_ms=int(latency * 1000))
    batches = [[event(f"u{i}a", i), event(f"u{i}b", i)] for i in range(8)]
    batches.insert(1, [event("shared", 1), event("x1", 1)])
    batches.insert(6, [event("shared", 2), event("x2", 2)])
    requests = [("k", Request("k", seq, tuple(b))) for seq, b in enumerate(batches)]
    requests = requests[1:] + requests[:1]
    outcomes, dead, metrics = run_requests(requests, [sync(sim)], max_in_flight=4)

    assert not dead and len(outcomes) == 20 and {o.status for o in outcomes} == {DELIVERED}
    sent = [r for r in braze.requests() if r["path"] == "/users/track"]
    assert len(sent) == 10 == metrics["s1.requests"]  # metrics from the pool's threads counted
    assert metrics["s1.objects_delivered"] == 20 and metrics["requests_out_of_order"] == 9
    starts = [(r["received_at"], r["received_at"] + latency) for r in sent]
    assert 2 <= _overlaps(starts) <= 4  # several at once, never more than the limit
    assert not _SLEEPS  # no pushback from Braze: nothing held back (requests in flight are not pushback)

    def sent_at(n):
        [r] = [r for r in sent if {"external_id": "shared", "n": n} in
               [{"external_id": e["external_id"], "n": e["properties"]["n"]} for e in r["body"]["events"]]]
        return r["received_at"]
    # The user's second request left only after the first was answered, in packing order.
    assert sent_at(2) >= sent_at(1) + latency - 0.01


def test_requests_of_one_key_are_sent_in_packing_order_whatever_order_they_arrive_in(sim, braze):
    batches = [[attrs("u1", plan=f"p{seq}")] for seq in range(6)]
    requests = [("k", Request("k", seq, tuple(b))) for seq, b in enumerate(batches)]
    arrival = [requests[i] for i in (3, 1, 5, 0, 4, 2)]
    outcomes, dead, _ = run_requests(arrival, [sync(sim)])
    assert not dead and len(outcomes) == 6
    sent = [r["body"]["attributes"][0]["plan"] for r in braze.requests() if r["path"] == "/users/track"]
    assert sent == [f"p{seq}" for seq in range(6)]
    assert users_by_id(braze)["u1"]["attributes"]["plan"] == "p5"


def test_one_in_flight_sends_one_request_at_a_time(sim, braze):
    braze.set_faults(latency_ms=100)
    outcomes, dead, _ = run([[event(f"u{i}", i)] for i in range(5)], [sync(sim)], max_in_flight=1)
    assert len(outcomes) == 5 and not dead
    starts = [(r["received_at"], r["received_at"] + 0.1) for r in braze.requests() if r["path"] == "/users/track"]
    assert _overlaps([(s + 0.005, e) for s, e in starts]) == 1


def test_max_in_flight_is_checked():
    syncs = [Sync(name="a", endpoint="https://rest.iad-01.braze.com", api_key="env:X")]
    for bad in (0, 65, True, 2.0):
        with pytest.raises(ValueError, match="max_in_flight"):
            WriteToBraze(syncs, max_in_flight=bad)
