"""The /users/identify sink (``SendMerges``) on the FnApiRunner against the Braze simulator over
HTTP: 50 entries a body, Braze's rate limit honoured, a key without the users.identify
permission, a wrong key, an entry Braze would refuse, and an outage that outlasts the retries.
Every merge request ends once: sent, or a dead letter a person can act on, without the key."""

import apache_beam as beam
import orjson
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.transforms.window import TimestampedValue

from local.braze_sim import BrazeSimulator, SimClient
from pipeline.config import parse_syncs
from transforms.identify_sink import DEAD_LETTER_TAG, SENT_TAG, SendMerges
from transforms.records import MergeRequest
from tests.conftest import run_and_collect

LABEL = "amp_device"
def _syncs(url):
    return parse_syncs({"syncs": [{"name": "ext", "endpoint": url, "api_key": "env:K",
                                   "identifier": {"anonymous": {"alias_label": LABEL}},
                                   "events": {"select": [{"event_type": "*"}]}}]}, allow_insecure_endpoints=True)


def request(i, external_id=None):
    return MergeRequest("ext", external_id or f"u{i}", f"d{i}", LABEL, (f"m{i}/0",))


def run(url, key, requests, sleep=lambda s: None, **kwargs):
    """``requests``: [(due seconds, MergeRequest)]. Returns (outputs by tag, counters)."""
    def build(p):
        out = (p | beam.Create(requests, reshuffle=False)
               | "Stamp" >> beam.Map(lambda e: TimestampedValue((e[1].sync, e[1]), e[0]))
               | SendMerges(_syncs(url), resolve_key=lambda ref: key, sleep=sleep, **kwargs))
        return {"sent": out[SENT_TAG], "dead": out[DEAD_LETTER_TAG]}

    collected = run_and_collect(build, runner="FnApiRunner")
    counters = {c.key.metric.name: c.committed for c in collected.result.metrics().query(MetricsFilter())["counters"]
                if c.key.metric.namespace == "merge"}
    return {tag: list(values) for tag, values in collected.items() if values}, counters


def identify_bodies_received(sim):
    return [r["body"] for r in SimClient(sim.url).requests() if r["path"] == "/users/identify"]


def seed_aliases(sim, n):
    SimClient(sim.url).seed_users(*({"user_aliases": [{"alias_name": f"d{i}", "alias_label": LABEL}]}
                                    for i in range(n)))


@pytest.mark.integration
def test_requests_due_together_leave_50_to_a_body_and_each_alias_becomes_its_user(braze_sim):
    seed_aliases(braze_sim, 120)
    # Due within the same 5 s (1001-1003 s): one flush. A repeat rides with its first copy.
    due = [(1001 + (i % 3), request(i)) for i in range(120)] + [(1002, request(7))]
    out, counters = run(braze_sim.url, braze_sim.api_key, due)

    bodies = identify_bodies_received(braze_sim)
    assert sorted(len(b["aliases_to_identify"]) for b in bodies) == [20, 50, 50]
    assert len(out["sent"]) == 121 and "dead" not in out
    assert counters["ext.sent"] == 121 and counters["ext.requests"] == 3
    assert SimClient(braze_sim.url).counters()["aliases_identified"] == 120
    assert SimClient(braze_sim.url).users(external_id="u7")[0]["user_aliases"] == [
        {"alias_name": "d7", "alias_label": LABEL}]


@pytest.mark.integration
def test_braze_rate_limit_on_the_alias_endpoints_is_waited_out():
    # One request a second for /users/identify and /users/alias/new together; Retry-After says when.
    with BrazeSimulator(alias_rate_limit=1, alias_rate_window_seconds=1.0) as sim:
        seed_aliases(sim, 150)
        # Due 10 s apart: three flushes, three calls within about two seconds.
        due = [(1000 + 10 * (i // 50), request(i)) for i in range(150)]
        out, counters = run(sim.url, sim.api_key, due, sleep=__import__("time").sleep)
        statuses = [r["status"] for r in SimClient(sim.url).requests() if r["path"] == "/users/identify"]
        # Three calls within a second or so: at least two share a window, so one is refused first.
        assert statuses.count(201) == 3 and 429 in statuses and set(statuses) <= {201, 429}
        assert counters.get("ext.rate_limited", 0) == statuses.count(429) and len(out["sent"]) == 150
        assert SimClient(sim.url).counters()["aliases_identified"] == 150


@pytest.mark.integration
def test_a_key_without_the_identify_permission_dead_letters_each_request_with_what_to_do():
    with BrazeSimulator(key_permissions={"track-only-key": ["users.track"]}, api_keys=["track-only-key"]) as sim:
        out, counters = run(sim.url, "track-only-key", [(1000, request(1)), (1000, request(2))])
    letters = out["dead"]
    assert "sent" not in out and counters["ext.dead_lettered"] == 2
    assert {(d.stage, d.reason, d.http_status, d.sync, d.kind) for d in letters} == {
        ("identify", "braze_forbidden", 403, "ext", "aliases_to_identify")}
    assert all("users.identify permission" in d.detail and "/users/identify" in d.detail for d in letters)
    # The data is a body to POST once the key is fixed; the event that named the user is linked.
    assert sorted(orjson.loads(d.data)["aliases_to_identify"][0]["external_id"] for d in letters) == ["u1", "u2"]
    assert sorted(d.sources for d in letters) == [("m1/0",), ("m2/0",)]
    assert not any("track-only-key" in repr(d) for d in letters)


@pytest.mark.integration
def test_a_wrong_key_and_an_external_id_braze_cannot_hold_are_dead_lettered_not_retried(braze_sim):
    out, _ = run(braze_sim.url, "not-the-key", [(1000, request(1))])
    [letter] = out["dead"]
    assert (letter.reason, letter.http_status, letter.attempts) == ("braze_auth", 401, 1)
    assert "not-the-key" not in repr(letter)

    braze_sim.client().reset()
    out, _ = run(braze_sim.url, braze_sim.api_key, [(1000, request(1, "u" * 988)), (1000, request(2))])
    [letter] = out["dead"]
    assert (letter.reason, letter.sources) == ("external_id_too_large", ("m1/0",))
    assert [b["aliases_to_identify"][0]["external_id"] for b in identify_bodies_received(braze_sim)] == ["u2"]


@pytest.mark.integration
def test_an_outage_that_outlasts_the_retries_ends_in_dead_letters_at_the_end_of_the_input(braze_sim):
    SimClient(braze_sim.url).set_faults(error_rate=1.0, error_statuses=[503])
    out, counters = run(braze_sim.url, braze_sim.api_key, [(1000, request(1)), (1000, request(2))],
                        max_attempts=4, max_retry_seconds=60)
    letters = out["dead"]
    assert "sent" not in out and len(letters) == 2
    assert {(d.reason, d.http_status) for d in letters} == {("retries_exhausted", 503)}
    assert all("POST this dead letter's data" in d.detail for d in letters)
    calls = [r for r in SimClient(braze_sim.url).requests() if r["path"] == "/users/identify"]
    assert len(calls) >= 4 and counters["ext.retries"] >= 2
    assert counters["ext.held"] == 0  # nothing left held
