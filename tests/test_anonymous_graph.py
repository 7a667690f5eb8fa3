"""Anonymous users, then identified, through the whole graph (TestStream → the Braze simulator
over HTTP): events before sign-in go to the device's alias profile, one /users/identify call
merges it into the user's profile, later anonymous events land there too, a user's second
device is not merged (Braze's rule), and every event is accounted for once per branch.

Outputs are collected through a side-effect sink, as in ``test_graph``. Element timestamps are
Pub/Sub publish times in seconds; the merge waits ``SETTLE`` seconds of them.
"""
import collections

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue

from local.braze_sim import SimClient
from pipeline.config import parse_syncs
from pipeline.graph import EventsToBraze
from transforms.device_merge import DecideMerges
from transforms.records import DeviceSighting
from tests.conftest import run_and_collect

COLLECTED = collections.defaultdict(list)  # what the last run collected (tests/conftest.py)
LABEL = "amp_device"
SETTLE = 5.0
T0 = 1_795_168_800_000


def _zero_clock():
    return 0.0


def _syncs(url, **identifier):
    return parse_syncs({"syncs": [{
        "name": "ext", "endpoint": url, "api_key": "env:TEST_BRAZE_KEY",
        "identifier": {"anonymous": {"source": "device_id", "alias_label": LABEL}, **identifier},
        "users": {"properties": ["plan"]},
        "events": {"select": [{"event_type": "*"}]},
    }]}, allow_insecure_endpoints=True)


def run(syncs, stream, key, **kwargs):
    options = PipelineOptions([], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True

    def build(p):
        out = p | stream | EventsToBraze(syncs, max_batch_wait_seconds=1, resolve_key=lambda ref: key,
                                        sleep=lambda s: None, clock=_zero_clock,
                                        anonymous_settle_seconds=SETTLE, **kwargs)
        return {"outcomes": out["outcomes"], "dead_letters": out["dead_letters"]}

    COLLECTED.clear()
    COLLECTED.update(run_and_collect(build, options))


class Published:
    """Amplitude events published at given times (seconds), as a TestStream in which processing
    time moves with the watermark, as on a running job (the packer flushes on processing time)."""

    def __init__(self):
        self.stream = test_stream.TestStream()
        self.count = 0
        self.now = 0.0

    def _to(self, seconds):
        if seconds > self.now:
            self.stream = self.stream.advance_processing_time(seconds - self.now).advance_watermark_to(seconds)
            self.now = seconds

    def at(self, seconds, *events):
        self._to(seconds)
        messages = []
        for event in events:
            self.count += 1
            messages.append(TimestampedValue(orjson.dumps({
                "time": T0 + self.count, "insert_id": f"ins-{self.count}", **event}), seconds))
        self.stream = self.stream.add_elements(messages)
        for step in range(1, 4):  # a few seconds pass: identify's lateness, the packer's wait
            self._to(seconds + step)
        return self

    def idle(self, seconds):
        self._to(seconds)
        return self

    def done(self):
        return self.stream.advance_watermark_to_infinity()


def anonymous(device, event_type, **user_properties):
    return {"device_id": device, "event_type": event_type, "user_properties": user_properties}


def identified(user, device, event_type, **user_properties):
    return {"user_id": user, "device_id": device, "event_type": event_type, "user_properties": user_properties}


def identify_calls(sim):
    return [r for r in SimClient(sim.url).requests() if r["path"] == "/users/identify"]


def entries(calls):
    return [entry for call in calls for entry in call["body"]["aliases_to_identify"]]


def profiles(sim):
    """external_id or alias name → profile."""
    return {u.get("external_id") or u["user_aliases"][0]["alias_name"]: u for u in SimClient(sim.url).users()}


def assert_every_event_accounted_once(published):
    parts = collections.Counter((o.source, o.sync, o.branch) for o in COLLECTED["outcomes"])
    assert all(n == 1 for n in parts.values()), [p for p, n in parts.items() if n > 1]
    per_event = collections.Counter(source for source, _, _ in parts)
    assert len(per_event) == published and set(per_event.values()) == {2}  # track and identify, once each


@pytest.mark.integration
def test_an_anonymous_user_who_signs_in_ends_as_one_profile_with_one_identify_call(braze_sim):
    published = (Published()
                 .at(100, anonymous("d1", "App Opened", plan="free"), anonymous("d1", "Viewed Item"))
                 .at(110, identified("u1", "d1", "Signed In", plan="pro"), identified("u1", "d1", "Purchased"))
                 .at(111, identified("u9", "d9", "App Opened"))  # never anonymous: no call
                 .idle(200)
                 .at(300, anonymous("d1", "App Opened"))  # after the merge: lands on u1 too
                 .at(310, identified("u1", "d1", "Signed Out"))
                 .idle(400))
    run(_syncs(braze_sim.url), published.done(), braze_sim.api_key)

    calls = identify_calls(braze_sim)
    assert entries(calls) == [{"external_id": "u1", "user_alias": {"alias_name": "d1", "alias_label": LABEL}}]
    assert len(calls) == 1 and calls[0]["status"] == 201
    users = profiles(braze_sim)
    assert sorted(users) == ["u1", "u9"]  # the alias profile was merged away
    u1 = users["u1"]
    assert u1["user_aliases"] == [{"alias_name": "d1", "alias_label": LABEL}]
    assert sorted(e["name"] for e in u1["events"]) == [
        "App Opened", "App Opened", "Purchased", "Signed In", "Signed Out", "Viewed Item"]
    assert u1["attributes"] == {"plan": "pro"}  # the identified profile's value wins a merge
    # Braze merged the alias profile into u1's, or (u1's own objects not there yet) made it u1's.
    counters = SimClient(braze_sim.url).counters()
    assert (counters["aliases_merged"] + counters["aliases_identified"], counters["aliases_not_merged"]) == (1, 0)
    assert COLLECTED["dead_letters"] == []
    assert_every_event_accounted_once(published.count)
    statuses = collections.Counter((o.branch, o.status) for o in COLLECTED["outcomes"])
    assert statuses[("track", "delivered")] == 7  # nothing skipped as missing_identifier any more


@pytest.mark.integration
def test_a_users_second_device_is_not_merged_as_braze_does_not(braze_sim):
    published = (Published()
                 .at(100, anonymous("d1", "App Opened"))
                 .at(110, identified("u1", "d1", "Signed In"))
                 .idle(200)
                 .at(1000, anonymous("d2", "App Opened"), anonymous("d2", "Viewed Item"))
                 .at(1010, identified("u1", "d2", "Signed In"))
                 .idle(1100))
    run(_syncs(braze_sim.url), published.done(), braze_sim.api_key)

    # One call per device: Braze declines the second (u1 already has an alias with that label).
    assert entries(identify_calls(braze_sim)) == [
        {"external_id": "u1", "user_alias": {"alias_name": d, "alias_label": LABEL}} for d in ("d1", "d2")]
    users = profiles(braze_sim)
    assert sorted(users) == ["d2", "u1"]
    assert sorted(e["name"] for e in users["u1"]["events"]) == ["App Opened", "Signed In", "Signed In"]
    assert sorted(e["name"] for e in users["d2"]["events"]) == ["App Opened", "Viewed Item"]
    assert "external_id" not in users["d2"] or users["d2"]["external_id"] is None
    counters = SimClient(braze_sim.url).counters()
    assert (counters["aliases_merged"] + counters["aliases_identified"], counters["aliases_not_merged"]) == (1, 1)
    assert COLLECTED["dead_letters"] == []
    assert_every_event_accounted_once(published.count)


@pytest.mark.integration
def test_sign_in_before_the_anonymous_events_arrive_merges_all_the_same(braze_sim):
    """Pub/Sub keeps no order: the identified event is read first, the anonymous ones later."""
    published = (Published()
                 .at(100, identified("u1", "d1", "Signed In"))
                 .at(101, anonymous("d1", "App Opened"), anonymous("d1", "Viewed Item"))
                 .idle(300))
    run(_syncs(braze_sim.url), published.done(), braze_sim.api_key)

    assert len(identify_calls(braze_sim)) == 1
    users = profiles(braze_sim)
    assert sorted(users) == ["u1"]
    assert sorted(e["name"] for e in users["u1"]["events"]) == ["App Opened", "Signed In", "Viewed Item"]
    assert_every_event_accounted_once(published.count)


def run_bounded(syncs, timed_events, key):
    """The graph on the FnApiRunner over a bounded input of ``(publish seconds, event)``: the
    watermark ends the input at once, as a drain does, and every pending merge is flushed."""
    messages = [(t, orjson.dumps({"time": T0 + i, "insert_id": f"ins-{i}", **e})) for i, (t, e) in
                enumerate(timed_events)]

    def build(p):
        out = (p | beam.Create(messages, reshuffle=False)
               | "Stamp" >> beam.Map(lambda m: TimestampedValue(m[1], m[0]))
               | EventsToBraze(syncs, max_batch_wait_seconds=1, resolve_key=lambda ref: key, sleep=lambda s: None,
                               anonymous_settle_seconds=SETTLE))
        return {"outcomes": out["outcomes"], "dead_letters": out["dead_letters"]}

    COLLECTED.clear()
    COLLECTED.update(run_and_collect(build, runner="FnApiRunner"))


@pytest.mark.integration
def test_a_bounded_run_that_ends_right_after_sign_in_merges_after_the_alias_profile_is_sent(braze_sim):
    """The input ends (a test, a drain) right after sign-in, before the merge is due: it is sent
    at the end, once the /users/track sink has sent the alias profiles' objects (the identify
    sink's watermark trails the track sink's, which its pending objects hold back)."""
    timed = [(100, anonymous("d1", "App Opened", plan="free")), (100, identified("u1", "d1", "Signed In", plan="pro")),
             (100, anonymous("d2", "App Opened")), (101, identified("u2", "d2", "Signed In")),
             (101, anonymous("d3", "App Opened"))]  # never signs in: stays an alias profile
    run_bounded(_syncs(braze_sim.url), timed, braze_sim.api_key)

    requests = SimClient(braze_sim.url).requests()
    identify_at = [i for i, r in enumerate(requests) if r["path"] == "/users/identify"]
    alias_at = [i for i, r in enumerate(requests) if r["path"] == "/users/track" and "user_alias" in str(r["body"])]
    assert len(identify_at) == 1 and max(alias_at) < identify_at[0]
    assert sorted(entry["external_id"] for entry in entries(identify_calls(braze_sim))) == ["u1", "u2"]
    users = profiles(braze_sim)
    assert sorted(users) == ["d3", "u1", "u2"]
    assert users["u1"]["attributes"] == {"plan": "pro"}
    assert sorted(e["name"] for e in users["u1"]["events"]) == ["App Opened", "Signed In"]
    assert COLLECTED["dead_letters"] == []
    assert_every_event_accounted_once(len(timed))


@pytest.mark.integration
def test_without_the_option_anonymous_events_are_still_skipped_and_nothing_is_merged(braze_sim):
    syncs = parse_syncs({"syncs": [{
        "name": "ext", "endpoint": braze_sim.url, "api_key": "env:TEST_BRAZE_KEY",
        "users": {"properties": ["plan"]}, "events": {"select": [{"event_type": "*"}]}}]},
        allow_insecure_endpoints=True)
    published = (Published().at(100, anonymous("d1", "App Opened", plan="free"))
                 .at(110, identified("u1", "d1", "Signed In")).idle(300))
    run(syncs, published.done(), braze_sim.api_key)

    assert identify_calls(braze_sim) == []
    assert sorted(profiles(braze_sim)) == ["u1"]
    skipped = {(o.branch, o.reason) for o in COLLECTED["outcomes"] if o.status == "skipped"}
    assert skipped == {("track", "missing_identifier"), ("identify", "missing_identifier"),
                       ("identify", "no_selected_property")}  # the sign-in carries no plan
    assert_every_event_accounted_once(published.count)


# --- the merge step alone: its state is bounded by the TTL


def _decide(stream, ttl_seconds):
    options = PipelineOptions([], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True

    def build(p):
        out = p | stream | DecideMerges(_syncs("http://127.0.0.1:1"), settle_seconds=SETTLE,
                                        ttl_seconds=ttl_seconds)
        return {"requests": out.requests}

    COLLECTED.clear()
    COLLECTED.update(run_and_collect(build, options))


def _sightings(at, user):
    return [TimestampedValue(("ext|d1", DeviceSighting(f"m{at}/0", None)), at),
            TimestampedValue(("ext|d1", DeviceSighting(f"m{at + 1}/0", user)), at + 1)]


@pytest.mark.parametrize("ttl_seconds, requests", [(1000, 1), (100, 2)])
def test_a_devices_state_expires_after_the_ttl_and_then_it_may_be_merged_again(ttl_seconds, requests):
    # Seen at 100-101 s, merged at 106 s, seen again at 300-301 s (by publish time).
    stream = (test_stream.TestStream().add_elements(_sightings(100, "u1")).advance_watermark_to(250)
              .add_elements(_sightings(300, "u1")).advance_watermark_to(400).advance_watermark_to_infinity())
    _decide(stream, ttl_seconds=ttl_seconds)
    merges = [(sync, r.external_id, r.alias_name) for sync, r in COLLECTED["requests"]]
    assert merges == [("ext", "u1", "d1")] * requests
    assert COLLECTED["requests"][0][1].sources == ("m101/0",)  # the event that named the user
