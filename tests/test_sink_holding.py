"""A held key drains through a Braze that fails now and then: the backoff grows only while
Braze takes nothing.

The sink's DoFn runs without a runner (``bench.driver.KeyedDoFnDriver``, the state in memory,
its retry timer recorded) against the real simulator over HTTP. The clock is the sink's
injectable one, moved on to each timer's time before it is fired, so hours of backoff would
cost no wall time; what the test reads is how long the key was held on that clock.
"""
import time

import pytest
from apache_beam.utils.timestamp import Timestamp

from bench.driver import KeyedDoFnDriver
from pipeline.config import Sync
from transforms import sink
from transforms.records import EVENTS, TRACK, BrazeItem, Request

KEY = "s1#0"
KEY_ENV = "AMPLITUDE_BRAZE_TEST_HOLDING_KEY"
REQUESTS = 40
USERS_PER_REQUEST = 5


class _Clock:
    """Wall time plus ``offset`` seconds."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _requests():
    def item(seq, n):
        user = f"u{seq}-{n}"
        obj = {"external_id": user, "name": "played", "time": "2026-01-15T10:00:00.000Z", "properties": {"seq": seq}}
        return BrazeItem("s1", user, EVENTS, obj, (f"m{seq}-{n}/0",), TRACK, 1_700_000_000_000)

    return [Request(KEY, seq, tuple(item(seq, n) for n in range(USERS_PER_REQUEST))) for seq in range(REQUESTS)]


def _delivered_users(client):
    return {u["external_id"] for u in client.users()}


@pytest.mark.parametrize("in_flight", [1, 4])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_drain_through_intermittent_failures_backs_off_only_while_nothing_gets_through(sim, monkeypatch,
                                                                                        in_flight, seed):
    monkeypatch.setenv(KEY_ENV, sim.api_key)
    client = sim.client()
    clock = _Clock()
    write = sink.WriteToBraze([Sync(name="s1", endpoint=sim.url, api_key=f"env:{KEY_ENV}")],
                              max_in_flight=in_flight, backoff_base_seconds=0.001, backoff_cap_seconds=0.002,
                              clock=clock)
    driver = KeyedDoFnDriver(sink._BrazeSinkDoFn(write._syncs, write._params, write._resolve_key, write._sleep,
                                                 write._clock), record_timers=True)
    outputs = []
    client.set_faults(error_rate=1.0, error_statuses=[503])  # an outage: the key holds everything
    for request in _requests():
        outputs.extend(driver.process((KEY, request)))
    assert driver.store.get((KEY, "hold")) is not None
    held_since = clock()

    # Braze is back, but one answer in three is a 503: every round sends part of the queue.
    client.set_faults(error_rate=0.33, error_statuses=[503], seed=seed)
    delays_after_progress = []
    firings = 0
    while driver.store.get((KEY, "hold")) is not None:
        assert firings < 500, "the key never finished draining"
        due = driver.timers[(KEY, "retry")].seconds()
        clock.offset += max(0.0, due - clock())
        delivered_before = len(_delivered_users(client))
        outputs.extend(driver.fire("on_retry", KEY, Timestamp.of(due)))
        firings += 1
        if driver.store.get((KEY, "hold")) is not None and len(_delivered_users(client)) > delivered_before:
            delays_after_progress.append(driver.timers[(KEY, "retry")].seconds() - clock())

    expected = {f"u{seq}-{n}" for seq in range(REQUESTS) for n in range(USERS_PER_REQUEST)}
    assert _delivered_users(client) == expected
    assert not [o for o in outputs if getattr(o, "tag", None) == sink.DEAD_LETTER_TAG]
    # After a round that got something through, the next comes after the shortest backoff
    # (between 1 and 2 s), not after a delay that doubled with every partial round.
    assert delays_after_progress and max(delays_after_progress) <= 2.0 + 0.5, delays_after_progress
    # Forty requests, a third of the answers failing: about a minute, not the ten-plus it took
    # when every partial round doubled the delay up to the five-minute cap.
    assert clock() - held_since < 180, (clock() - held_since, firings)


def _event_request(key, seq, users, sync="s1"):
    items = tuple(BrazeItem(sync, u, EVENTS, {"external_id": u, "name": "played", "time": "2026-01-15T10:00:00.000Z"},
                            (f"{key}-{seq}-{u}/0",), TRACK, 1_700_000_000_000) for u in users)
    return Request(key, seq, items)


def test_a_request_braze_keeps_failing_while_it_takes_the_syncs_others_is_dead_lettered_and_its_key_goes_on(
        sim, monkeypatch):
    """The poison rule: one request fails (500) every time, while Braze takes the same sync's
    other requests. After ``max_attempts`` such rounds it is dead-lettered (retries_exhausted)
    and the requests queued behind it on its key are delivered, instead of the key waiting for
    the whole outage budget."""
    monkeypatch.setenv(KEY_ENV, sim.api_key)
    client = sim.client()
    clock = _Clock()
    write = sink.WriteToBraze([Sync(name="s1", endpoint=sim.url, api_key=f"env:{KEY_ENV}")], max_attempts=3,
                              backoff_base_seconds=0.001, backoff_cap_seconds=0.002, clock=clock)
    driver = KeyedDoFnDriver(sink._BrazeSinkDoFn(write._syncs, write._params, write._resolve_key, write._sleep,
                                                 write._clock), record_timers=True)
    client.set_faults(poison_marker="poisoned-user", error_statuses=[500])
    outputs = list(driver.process(("s1#0", _event_request("s1#0", 0, ["poisoned-user", "a1"]))))
    outputs += driver.process(("s1#0", _event_request("s1#0", 1, ["a2"])))  # queued behind it
    assert driver.store.get(("s1#0", "hold")) is not None
    other = 0
    for _ in range(30):
        if driver.store.get(("s1#0", "hold")) is None:
            break
        other += 1  # Braze takes another request of the sync, on another key
        outputs += driver.process((f"s1#{other}", _event_request(f"s1#{other}", 0, [f"b{other}"])))
        due = driver.timers[("s1#0", "retry")].seconds()
        clock.offset += max(0.0, due - clock()) + 0.01
        outputs += driver.fire("on_retry", "s1#0", Timestamp.of(due))
    assert driver.store.get(("s1#0", "hold")) is None, "the key still waits behind the failing request"
    dead = [o.value for o in outputs if getattr(o, "tag", None) == sink.DEAD_LETTER_TAG]
    assert sorted(d.sources[0] for d in dead) == ["s1#0-0-a1/0", "s1#0-0-poisoned-user/0"]
    assert {d.reason for d in dead} == {"retries_exhausted"}
    assert all("while Braze took other requests of this sync" in d.detail for d in dead)
    # A strike per round in which Braze had taken another request since the last failure (the
    # client-side throttle may hold one of those back, and that round is no strike): three
    # (max_attempts) dead-letter it, and the next round sends what was queued behind it.
    assert other >= 3 + 1
    # The throttle held some of the other requests back on their own keys: their timers send them.
    for n in range(1, other + 1):
        for _ in range(30):
            if driver.store.get((f"s1#{n}", "hold")) is None:
                break
            due = driver.timers[(f"s1#{n}", "retry")].seconds()
            clock.offset += max(0.0, due - clock()) + 0.01
            outputs += driver.fire("on_retry", f"s1#{n}", Timestamp.of(due))
    delivered = {u["external_id"] for u in client.users()}
    assert "a2" in delivered and {f"b{i}" for i in range(1, other + 1)} <= delivered
    assert not delivered & {"poisoned-user", "a1"}
