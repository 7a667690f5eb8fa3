"""Mappings through the whole graph (FnApiRunner, bounded) into the Braze simulator over HTTP:
every standard-attribute format rule (valid, fixable, refused, null), Amplitude's top-level
country and language names as codes, event-property mappings, and renamed attributes under the
identify operations. A refused value never reaches Braze, leaves the profile as it was, and is
the identify branch's skip reason, counted."""

import apache_beam as beam
import orjson
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.transforms.window import TimestampedValue

from local.braze_sim import SimClient
from pipeline.config import parse_syncs
from pipeline.graph import EventsToBraze
from tests.conftest import run_and_collect
from tests.test_anonymous_graph import COLLECTED, Published, run as run_streaming_graph
from tests.test_mappings_sim import PREVIOUS
from tests.test_standard_attributes import FIXABLE, REFUSED, VALID
from transforms.parse import fallback_message_id
from transforms.standard_attributes import FORMATTED_ATTRIBUTES, NOT_NULLABLE

T0 = 1_795_168_800_000
NULLS = [(name, None, None) for name in sorted(FORMATTED_ATTRIBUTES - NOT_NULLABLE)]  # null removes
# Attribute strings are also cut to Braze's 479 UTF-8 bytes (transforms.sanitize): 255 "é" are 510.
BYTES_CUT = {"é" * 255: "é" * 239}


def run(syncs, timed_events, key):
    """``(publish seconds, event)`` through the graph. Returns (outputs by tag, route counters,
    the source of each event in order)."""
    messages = [(t, orjson.dumps({"time": T0 + i, **e})) for i, (t, e) in enumerate(timed_events)]

    def build(p):
        out = (p | beam.Create(messages, reshuffle=False)
               | "Stamp" >> beam.Map(lambda m: TimestampedValue(m[1], m[0]))
               | EventsToBraze(syncs, max_batch_wait_seconds=1, resolve_key=lambda ref: key, sleep=lambda s: None))
        return {"outcomes": out["outcomes"], "dead": out["dead_letters"]}

    collected = run_and_collect(build, runner="FnApiRunner")
    counters = {c.key.metric.name: c.committed for c in collected.result.metrics().query(MetricsFilter())["counters"]
                if c.key.metric.namespace == "route"}
    outputs = {tag: list(values) for tag, values in collected.items() if values}
    return outputs, counters, [f"{fallback_message_id(m)}/0" for _, m in messages]


def run_streaming(syncs, stream, key):
    """The graph on the streaming runner, fed by a TestStream; returns the outputs by tag."""
    run_streaming_graph(syncs, stream, key)
    return {"outcomes": list(COLLECTED["outcomes"]), "dead": list(COLLECTED["dead_letters"])}


def _sync(url, **settings):
    return parse_syncs({"syncs": [{"name": "ext", "endpoint": url, "api_key": "env:K", **settings}]},
                       allow_insecure_endpoints=True)


@pytest.mark.integration
def test_every_standard_attribute_rule_through_the_graph(braze_sim):
    """One user per case, each seeded with valid values; the case's value is $set on an
    Amplitude property mapped to the standard attribute."""
    cases = [(n, v, BYTES_CUT.get(sent, sent), None) for n, v, sent in VALID + FIXABLE + NULLS] + \
            [(n, v, None, reason) for n, v, reason in REFUSED]
    mappings = [{"from": f"user_properties.amp {name}", "to": name} for name in sorted(FORMATTED_ATTRIBUTES)]
    users = [f"u{i}" for i in range(len(cases))]
    SimClient(braze_sim.url).seed_users(*({"external_id": u, "attributes": dict(PREVIOUS)} for u in users))
    events = [(100, {"event_type": "$identify", "user_id": user, "user_properties": {"$set": {f"amp {name}": value}}})
              for user, (name, value, _, _) in zip(users, cases)]
    out, counters, sources = run(_sync(braze_sim.url, users={"mappings": mappings}), events, braze_sim.api_key)

    assert "dead" not in out
    identify = {o.source: o for o in out["outcomes"] if o.branch == "identify"}
    sim = SimClient(braze_sim.url)
    profiles = {u["external_id"]: u["attributes"] for u in sim.users()}
    for user, source, (name, value, sent, reason) in zip(users, sources, cases):
        case = f"{name}={value!r}"
        if reason is None:
            expected = {**PREVIOUS, name: sent} if sent is not None else \
                {k: v for k, v in PREVIOUS.items() if k != name}
            assert (profiles[user], identify[source].status) == (expected, "delivered"), case
        else:
            assert (profiles[user], identify[source].status, identify[source].reason) == (
                PREVIOUS, "skipped", reason), case
    assert sim.counters()["objects_rejected"] == 0  # nothing was sent to be refused
    refused = {}
    for _, _, reason in REFUSED:
        refused[reason] = refused.get(reason, 0) + 1
    assert {k.split(".")[-1]: v for k, v in counters.items() if ".value_skipped." in k} == refused
    assert {k.split(".")[-1]: v for k, v in counters.items() if ".identify.skipped." in k} == refused


@pytest.mark.integration
def test_amplitude_top_level_fields_as_standard_attributes_and_event_properties(braze_sim):
    syncs = _sync(braze_sim.url,
                  users={"mappings": [{"from": "country", "to": "country"}, {"from": "language", "to": "language"},
                                      {"from": "city", "to": "home_city"}]},
                  events={"select": [{"event_type": "*"}], "properties": ["total"],
                          "mappings": [{"from": "platform", "to": "platform"},
                                       {"from": "event_properties.Order Total", "to": "order_total"}]})
    countries = [("United States", "US"), ("United Kingdom", "GB"), ("Germany", "DE"), ("Japan", "JP"),
                 ("Brazil", "BR"), ("South Korea", "KR"), ("Czechia", "CZ"), ("Russia", "RU")]
    events = [(100, {"event_type": "Order", "user_id": f"g{i}", "country": country, "language": "English",
                     "city": "Oslo", "platform": "iOS", "event_properties": {"total": i, "Order Total": 9.5}})
              for i, (country, _) in enumerate(countries)]
    events.append((100, {"event_type": "Order", "user_id": "narnia", "country": "Narnia", "language": "Klingon"}))
    out, counters, _ = run(syncs, events, braze_sim.api_key)

    profiles = {u["external_id"]: u for u in SimClient(braze_sim.url).users()}
    for i, (_, code) in enumerate(countries):
        assert profiles[f"g{i}"]["attributes"] == {"country": code, "language": "en", "home_city": "Oslo"}
        [event] = profiles[f"g{i}"]["events"]
        assert event["properties"] == {"total": i, "platform": "iOS", "order_total": 9.5}
    assert profiles["narnia"]["attributes"] == {}  # neither value is sent; the event still is
    assert [e["name"] for e in profiles["narnia"]["events"]] == ["Order"]
    assert counters["ext.identify.value_skipped.unknown_country"] == 1
    assert counters["ext.identify.value_skipped.unknown_language"] == 1
    assert "dead" not in out


@pytest.mark.integration
def test_renamed_attributes_follow_the_identify_operations_to_the_profile(braze_sim):
    syncs = _sync(braze_sim.url, users={"properties": ["plan"], "mappings": [
        {"from": "user_properties.Email Address", "to": "email"},
        {"from": "user_properties.Visits", "to": "visit_count"},
        {"from": "user_properties.Interests", "to": "interests"}, {"from": "city", "to": "home_city"}]})
    steps = [  # published a minute apart, each applied in its own flush
        {"user_properties": {"plan": "free", "Email Address": "  Ada@Example.com", "Visits": 1}, "city": "München"},
        {"user_properties": {"$set": {"plan": "pro"}, "$add": {"Visits": 2},
                             "$append": {"Interests": ["jazz", "rock"]}}},
        {"user_properties": {"$setOnce": {"Email Address": "other@example.com"}, "$remove": {"Interests": "rock"}}},
        {"user_properties": {"$unset": {"Email Address": "-"}, "$prepend": {"Interests": "folk"}}, "city": "Berlin"},
    ]
    # On the streaming runner: on the FnApiRunner's bounded run identify's state expiry (a
    # processing-time timer) fires at once when the input ends and forgets the user between
    # these flushes (reported; transforms/identify.py is not changed here).
    published = Published()
    for i, step in enumerate(steps):
        published.at(100 + 60 * i, {"event_type": "$identify", "user_id": "u1", **step})
    out = run_streaming(syncs, published.done(), braze_sim.api_key)

    [profile] = SimClient(braze_sim.url).users()
    # $prepend on an array the job only added to is an add (Braze appends); $unset removed the email.
    assert profile["attributes"] == {"plan": "pro", "visit_count": 3, "home_city": "Berlin",
                                     "interests": ["jazz", "folk"]}
    sent = [r["body"]["attributes"][0] for r in SimClient(braze_sim.url).requests() if r["path"] == "/users/track"]
    assert sent[0]["email"] == "ada@example.com" and "email" not in sent[2]  # $setOnce: it had a value
    assert sent[1]["visit_count"] == 3  # the job knew 1: it sends the total, not an increment
    assert [o.status for o in out["outcomes"] if o.branch == "identify"] == ["delivered"] * 4
