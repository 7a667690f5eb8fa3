"""The identify branch in the running graph (TestStream → simulator): a user's attributes and
events share one request, several updates collapse into one object, the state expires after
its TTL, and a generated stream makes no redundant attribute write.

Outputs are collected through a side-effect sink, as in ``test_graph`` (``assert_that``
misses output emitted when the final window closes, docs/api-facts.md, D5). Clocks are
injected (``_zero_clock``) because under TestStream processing time starts at 0, not at wall
time, so a timer set from ``time.time()`` would never fire.
"""
import collections

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue

from local.braze_sim import SimClient
from local.braze_sim.users import _REMOVE, attribute_data_points, plan_attributes
from local.generate import generate_messages
from pipeline.config import parse_syncs
from pipeline.graph import EventsToBraze
from transforms.identify import OUTCOME_TAG, IdentifyDoFn, is_operation
from transforms.records import IdentifyWork
from tests.conftest import run_and_collect

COLLECTED = collections.defaultdict(list)  # what the last run collected (tests/conftest.py)
T0 = 1_795_168_800_000
NOT_ATTRIBUTES = ("external_id", "braze_id", "user_alias", "_update_existing_only")


def _zero_clock():
    return 0.0


def _options():
    options = PipelineOptions([], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    return options


def _run(syncs, stream, key, **kwargs):
    def build(p):
        out = p | stream | EventsToBraze(syncs, max_batch_wait_seconds=1, resolve_key=lambda ref: key,
                                        sleep=lambda s: None, clock=_zero_clock, **kwargs)
        return {"outcomes": out["outcomes"], "dead_letters": out["dead_letters"]}

    COLLECTED.clear()
    COLLECTED.update(run_and_collect(build, _options()))


def _sync(url, **users_and_events):
    return parse_syncs({"syncs": [{"name": "ext", "endpoint": url, "api_key": "env:TEST_BRAZE_KEY",
                                   **users_and_events}]}, allow_insecure_endpoints=True)


def _event(n, user, event_type="Order Completed", **user_properties):
    return orjson.dumps({"event_type": event_type, "user_id": user, "time": T0 + n, "insert_id": f"ins-{n}",
                         "event_properties": {"total": n}, "user_properties": user_properties})


def _track_bodies(url):
    return [r["body"] for r in SimClient(url).requests() if r["path"] == "/users/track" and r["body"]]


@pytest.mark.integration
def test_a_users_attributes_and_events_share_one_request_and_updates_collapse(braze_sim):
    syncs = _sync(braze_sim.url, users={"properties": ["plan", "city"]},
                  events={"select": [{"event_type": "*"}], "properties": ["total"]})
    first = [_event(1, "user-00001", plan="free"), _event(2, "user-00002", plan="free")]
    second = [
        _event(10, "user-00001", plan="pro"), _event(11, "user-00001", plan="team", city="Oslo"),
        _event(12, "user-00001", plan="team"),
        # user-00002 goes free → pro → free within one request: nothing to write.
        _event(13, "user-00002", plan="pro"), _event(14, "user-00002", plan="free"),
    ]
    # Published at 100 s and 200 s; each burst's updates leave identify once the watermark is
    # past their publish time plus the reorder lateness (2 s).
    stream = (test_stream.TestStream()
              .add_elements([TimestampedValue(m, 100) for m in first]).advance_watermark_to(150)
              .advance_processing_time(10)
              .add_elements([TimestampedValue(m, 200) for m in second]).advance_watermark_to(250)
              .advance_processing_time(10).advance_watermark_to_infinity())
    _run(syncs, stream, braze_sim.api_key)

    bodies = _track_bodies(braze_sim.url)
    for user, attributes, totals in (("user-00001", {"plan": "team", "city": "Oslo"}, [10, 11, 12]),
                                     ("user-00002", {}, [13, 14])):  # free → pro → free: nothing to write
        # Every event of the user's second burst and their attributes, in one request.
        [request] = [b for b in bodies if any(e["external_id"] == user and e["properties"]["total"] >= 10
                                              for e in b.get("events", []))]
        mine = [a for a in request["attributes"] if a["external_id"] == user]
        assert mine == [{"external_id": user, **attributes}]  # one object; identifier only is 0 data points
        assert sorted(e["properties"]["total"] for e in request["events"] if e["external_id"] == user) == totals

    users = {u["external_id"]: u for u in SimClient(braze_sim.url).users()}
    assert users["user-00001"]["attributes"] == {"plan": "team", "city": "Oslo"}
    assert users["user-00002"]["attributes"] == {"plan": "free"}
    # 7 events with 1 property each, plan twice and city once for user 1, plan once for user 2.
    assert SimClient(braze_sim.url).counters()["data_points"] == 7 * 2 + 3 + 1
    # Every event is accounted for once per branch, the collapsed ones included.
    delivered = collections.Counter((o.branch, o.status) for o in COLLECTED["outcomes"])
    assert delivered[("identify", "delivered")] == 6 and delivered[("track", "delivered")] == 7
    assert delivered[("identify", "skipped")] == 1  # user 1's plan "team" a second time
    assert COLLECTED["dead_letters"] == []


def _run_identify(stream, ttl_seconds):
    def build(p):
        out = p | stream | beam.ParDo(IdentifyDoFn({"s": ("plan",)}, ttl_seconds=ttl_seconds, clock=_zero_clock)
                                      ).with_outputs(OUTCOME_TAG, main="batches")
        return {"attributes": out.batches | "Items" >> beam.FlatMap(lambda b: b.items),
                "outcomes": out[OUTCOME_TAG]}

    COLLECTED.clear()
    COLLECTED.update(run_and_collect(build, _options()))


def _work(n):
    return "s|u-1", IdentifyWork(f"m/{n}", None, T0 + n, {"external_id": "u-1"}, (("$set", "plan", "pro"),), ())


@pytest.mark.parametrize("idle_seconds, sent", [(30, 1), (90, 2)])
def test_state_expires_after_the_ttl_and_a_forgotten_user_is_sent_in_full(idle_seconds, sent):
    """The TTL runs in publish time: the second update is published ``idle_seconds`` after the
    first, and the watermark follows."""
    stream = (test_stream.TestStream().add_elements([TimestampedValue(_work(1), 1000)])
              .advance_watermark_to(1000 + idle_seconds - 1)
              .add_elements([TimestampedValue(_work(2), 1000 + idle_seconds)]).advance_watermark_to_infinity())
    _run_identify(stream, ttl_seconds=60)
    assert len(COLLECTED["attributes"]) == sent
    assert [o.reason for o in COLLECTED["outcomes"]] == ["unchanged"] * (2 - sent)


def test_the_ttl_must_be_positive():
    syncs = _sync("http://127.0.0.1:1", users={"properties": ["plan"]})
    with pytest.raises(ValueError, match="user_state_ttl_days"):
        EventsToBraze(syncs, user_state_ttl_days=0)


# --- A generated stream: no attribute write that Braze did not need ------------------------

SELECTED_USER_PROPERTIES = [
    "plan", "country", "city", "age", "is_subscriber", "favorite_genres", "preferences", "signup_date", "name",
    "login_count", "credits", "lifetime_value", "recent_searches", "recent_artists", "badges", "devices_seen",
    "coupon_code", "trial_ends_at", "initial_referrer", "first_platform",
]


def _same(a, b):
    return type(a) is type(b) and (a == b if not isinstance(a, (list, dict)) else orjson.dumps(a) == orjson.dumps(b))


def replay_attribute_writes(bodies):
    """Replay the attribute objects Braze received, in order, against a profile per user.

    A write that leaves the value as it was is *informed* when the job had sent that key a
    plain value before (it knew what Braze held), else *blind* (a null or an array edit on a
    value the job had no record of; see transforms/identify.py). A plain value sent after an
    ``inc`` or array edit is neither: the job cannot know what Braze made of those."""
    profiles = collections.defaultdict(dict)
    known = collections.defaultdict(set)
    after_operation = collections.defaultdict(set)  # the job last sent an inc or array edit
    informed, blind, points = [], [], 0
    for body in bodies:
        for obj in body.get("attributes", []):
            user = obj["external_id"]
            changes, error = plan_attributes(profiles[user], obj)
            assert error is None, (obj, error)
            points += attribute_data_points(obj, True)
            for key, value in obj.items():
                if key in NOT_ATTRIBUTES:
                    continue
                before = profiles[user].get(key, _REMOVE)
                if _same(before, changes[key]) or (before is _REMOVE and changes[key] is _REMOVE):
                    if key in known[user]:
                        informed.append((user, key, value))
                    elif key not in after_operation[user]:
                        blind.append((user, key, value))
                if is_operation(value):
                    known[user].discard(key)
                    after_operation[user].add(key)
                else:
                    known[user].add(key)
                    after_operation[user].discard(key)
            for key, value in changes.items():
                if value is _REMOVE:
                    profiles[user].pop(key, None)
                else:
                    profiles[user][key] = value
    return informed, blind, points, profiles


@pytest.mark.integration
def test_a_generated_stream_makes_no_redundant_attribute_write(braze_sim):
    syncs = _sync(braze_sim.url, users={"properties": SELECTED_USER_PROPERTIES},
                  events={"select": [{"event_type": "*"}], "properties": ["sku", "total", "song"], "purchases": True})
    messages = list(generate_messages(events=900, users=25, seed=11, malformed_share=0.0))
    stream = test_stream.TestStream()
    for start in range(0, len(messages), 150):  # bursts: some requests flush on time, some when full
        stream = stream.add_elements(messages[start:start + 150]).advance_processing_time(5)
    _run(syncs, stream.advance_watermark_to_infinity(), braze_sim.api_key)

    assert COLLECTED["dead_letters"] == []
    sim = SimClient(braze_sim.url)
    assert sim.counters()["objects_rejected"] == 0
    bodies = _track_bodies(braze_sim.url)
    informed, blind, attribute_points, profiles = replay_attribute_writes(bodies)
    assert informed == []  # zero redundant writes where the job knew what Braze held
    # The only writes that changed nothing: a null for a property the job had no record of
    # (an $unset, or a $clearAll on a user it had not seen), once per user and property.
    assert all(value is None for _, _, value in blind)
    assert len(blind) == len({(u, k) for u, k, _ in blind})
    # The simulator's billable count is exactly events + purchases + the attribute writes replayed.
    other = sum(1 + len(o.get("properties") or ()) for b in bodies for kind in ("events", "purchases")
                for o in b.get(kind, []))
    assert sim.counters()["data_points"] == other + attribute_points
    # Braze ends with what the replay says, and a purchase went through as one.
    for user in sim.users():
        assert user["attributes"] == profiles[user["external_id"]]
    assert any(b.get("purchases") for b in bodies)
    print(f"\ndata_points={sim.counters()['data_points']} attribute_points={attribute_points} "
          f"blind_no_op_writes={len(blind)} requests={len(bodies)}")
