"""Anonymous users, then identified: the decision per device, the /users/identify bodies and
answers, and the whole flow against the Braze simulator over real HTTP."""
import orjson
import pytest

from pipeline.config import AnonymousIdentifier, Identifier
from transforms.anonymous import (
    DEFAULT_SETTLE_SECONDS, EXTERNAL_ID_TOO_LARGE, INVALID_IDENTIFY_REQUEST, AnonymousRouting, IdentifyRequest, Step,
    anonymous_key, classify_identify, identify_bodies, identify_request_problem, on_event, on_timer,
)
from transforms.braze_client import FAIL, OK, REJECT, RETRY, SPLIT, BrazeClient, Response, TransportError
from tests.sim_http import post

LABEL = "amplitude_device_id"
S = DEFAULT_SETTLE_SECONDS


class Device:
    """Drives on_event / on_timer as the stateful DoFn will: one state, one timer."""

    def __init__(self, name="dev-1", settle=S):
        self.name, self.settle = name, settle
        self.state, self.timer, self.sent = None, None, []

    def event(self, user_id, now):
        step = on_event(self.state, user_id, now, self.settle)
        self._apply(step)

    def fire_due_timer(self, now):
        """Fire the timer if it is due by ``now``, at its own time, as a runner fires it."""
        while self.timer is not None and self.timer <= now:
            fired_at, self.timer = self.timer, None
            request, step = on_timer(self.state, fired_at, self.name, LABEL, self.settle)
            self._apply(step)
            if request:
                self.sent.append((fired_at, request))

    def _apply(self, step: Step):
        self.state = step.state
        if step.wake_at is not None:
            self.timer = step.wake_at

    def run(self, timeline):
        """``[(now, user_id or None), ...]``, firing the timer whenever it is due."""
        for now, user_id in timeline:
            self.fire_due_timer(now)
            self.event(user_id, now)
        self.fire_due_timer(float("inf"))
        return [(when, r.external_id) for when, r in self.sent]


# ---------------------------------------------------------------------------- the decision


@pytest.mark.parametrize("timeline, sent", [
    # anonymous, then signs in: one merge, settle seconds after the last anonymous event
    ([(0, None), (10, None), (20, "u1"), (30, "u1"), (40, "u1")], [(S + 10, "u1")]),
    # signed in, then late anonymous events (Pub/Sub keeps no order): merged once they are in
    ([(0, "u1"), (5, None), (7, None)], [(S + 7, "u1")]),
    # anonymous events keep coming after sign-in (the identified app also logs anonymously): waits
    ([(0, None), (1, "u1"), (S - 1, None), (S + 5, "u1")], [(2 * S - 1, "u1")]),
    # never anonymous: there is no alias profile, no call
    ([(0, "u1"), (100, "u1")], []),
    # only anonymous: nobody to merge into
    ([(0, None), (100, None)], []),
    # a second user on the device: the alias already names u1, Braze could not merge into u2
    ([(0, None), (1, "u1"), (S + 100, "u2"), (S + 101, None), (3 * S, "u2")], [(S, "u1")]),
    # anonymous again after the merge (logged out): the alias names u1 already, no second call
    ([(0, None), (1, "u1"), (S + 100, None), (S + 200, "u1")], [(S, "u1")]),
])
def test_one_identify_per_device_when_it_is_due(timeline, sent):
    assert Device().run(timeline) == sent


def test_the_request_names_the_device_alias_and_the_first_user():
    device = Device("dev-42")
    device.run([(0, None), (1, "user-7")])
    assert [r for _, r in device.sent] == [IdentifyRequest("user-7", "dev-42", LABEL)]
    assert device.sent[0][1].item() == {"external_id": "user-7",
                                        "user_alias": {"alias_name": "dev-42", "alias_label": LABEL}}


def test_settle_zero_calls_at_sign_in():
    assert Device(settle=0).run([(0, None), (3, "u1")]) == [(3, "u1")]


def test_state_is_small_and_keeps_the_callers_keys():
    step = on_event({"e": 123.0}, None, 5.0)
    step = on_event(step.state, "u1", 6.0)
    assert step == Step({"e": 123.0, "a": 5.0, "u": "u1"}, 5.0 + S)
    request, after = on_timer(step.state, 5.0 + S, "d", LABEL)
    assert request == IdentifyRequest("u1", "d", LABEL) and after == Step({"e": 123.0, "u": "u1", "s": 1})


@pytest.mark.parametrize("state", [None, "junk", 7, {"u": 5, "a": "x"}, {"a": float("nan")}, {"s": "yes"}, {}])
def test_any_stored_state_is_read_without_raising(state):
    on_event(state, None, 1.0)
    on_event(state, "u1", 1.0)
    on_timer(state, 1e12, "d", LABEL)


def test_a_timer_with_nothing_due_does_nothing():
    assert on_timer(None, 10.0, "d", LABEL) == (None, Step({}))
    early = on_event(on_event(None, None, 0.0).state, "u1", 1.0).state
    assert on_timer(early, 5.0, "d", LABEL) == (None, Step(early, S))  # not yet: wake again at the due time


def test_state_key():
    assert anonymous_key("us-prod", "dev|1") == "us-prod|dev|1"


# ---------------------------------------------------------------------------- routing


def test_anonymous_events_go_to_the_device_alias_profile_created_if_needed():
    routing = AnonymousRouting.of(Identifier(anonymous=AnonymousIdentifier(source="device_id", alias_label=LABEL)))
    assert routing.device({"device_id": "D1", "user_id": None}) == "D1"
    assert routing.device({"user_id": "u1"}) is None
    assert routing.fields("D1") == {"user_alias": {"alias_name": "D1", "alias_label": LABEL},
                                    "_update_existing_only": False}
    assert AnonymousRouting.of(Identifier()) is None


# ---------------------------------------------------------------------------- requests


def req(i, external_id=None):
    return IdentifyRequest(external_id or f"u{i}", f"d{i}", LABEL)


def test_bodies_hold_at_most_50_entries_and_say_which_requests_they_carry():
    requests = [req(i) for i in range(120)] + [req(3)]  # a repeat rides with its first copy
    bodies = identify_bodies(requests)
    assert [len(orjson.loads(b)["aliases_to_identify"]) for b, _ in bodies] == [50, 50, 20]
    assert bodies[0][1] == tuple(range(50)) + (120,)
    assert sorted(p for _, positions in bodies for p in positions) == list(range(121))
    assert orjson.loads(bodies[0][0])["aliases_to_identify"][3] == req(3).item()
    assert identify_bodies([]) == []


@pytest.mark.parametrize("request_, problem", [
    (IdentifyRequest("u" * 987, "d", LABEL), None),
    (IdentifyRequest("u" * 988, "d", LABEL), EXTERNAL_ID_TOO_LARGE),
    (IdentifyRequest("é" * 494, "d", LABEL), EXTERNAL_ID_TOO_LARGE),  # 988 bytes in UTF-8
    (IdentifyRequest("", "d", LABEL), INVALID_IDENTIFY_REQUEST),
    (IdentifyRequest("u", None, LABEL), INVALID_IDENTIFY_REQUEST),
])
def test_entries_braze_would_refuse_are_found_before_sending(request_, problem):
    assert identify_request_problem(request_) == problem
    if problem:
        with pytest.raises(ValueError):
            identify_bodies([request_])


@pytest.mark.parametrize("response, action, reason", [
    (Response(201, {"aliases_processed": 2, "message": "success"}, {}), OK, ""),
    (Response(400, {"message": "'aliases_to_identify' must be a non-empty array"}, {}), REJECT, "braze_rejected"),
    (Response(401, {"message": "Invalid API Key"}, {}), FAIL, "braze_auth"),
    (Response(403, {"message": "Access Denied"}, {}), FAIL, "braze_forbidden"),
    (Response(413, None, {}), SPLIT, "payload_too_large"),
    (Response(429, {"message": "Rate limit exceeded"}, {"retry-after": "7"}), RETRY, "http_429"),
    (Response(503, None, {}), RETRY, "http_503"),
    (TransportError("timeout", "read timeout", True), RETRY, "timeout"),
])
def test_answers_are_classified_as_for_users_track(response, action, reason):
    verdict = classify_identify(response)
    assert (verdict.action, verdict.reason, verdict.item_errors) == (action, reason, ())


def test_success_with_errors_stays_ok_and_shows_them():
    body = {"message": "success", "aliases_processed": 1,
            "errors": [{"type": "'external_id' is unknown", "index": 0, "input_array": "aliases_to_identify"}]}
    verdict = classify_identify(Response(201, body, {}))
    assert verdict.action == OK and verdict.item_errors == ()
    assert verdict.detail.startswith("1 error(s): [") and "'external_id' is unknown" in verdict.detail


# ---------------------------------------------------------------------------- through the simulator


def track(sim, objects, kind="events"):
    assert post(sim, "/users/track", {kind: objects}).status_code == 201


def event_object(fields, name, time):
    return {**fields, "name": name, "time": time}


def test_an_anonymous_user_who_signs_in_ends_as_one_profile_with_all_events(sim):
    """The issue's scenario, with real HTTP: events before sign-in go to the device's alias
    profile, after sign-in to the external_id; one identify call merges them; the events that
    follow land on the one profile; no second call for this device."""
    routing = AnonymousRouting(AnonymousIdentifier(source="device_id", alias_label=LABEL))
    device = Device("dev-1")
    amplitude = [  # (processing time s, Amplitude event)
        (0, {"device_id": "dev-1", "event_type": "App Opened"}),
        (5, {"device_id": "dev-1", "event_type": "Viewed Item"}),
        (9, {"device_id": "dev-1", "user_id": "u1", "event_type": "Signed In"}),
        (12, {"device_id": "dev-1", "user_id": "u1", "event_type": "Purchased"}),
    ]
    for now, e in amplitude:
        device.fire_due_timer(now)
        user_id = e.get("user_id")
        fields = {"external_id": user_id} if user_id else routing.fields(routing.device(e))
        track(sim, [event_object(fields, e["event_type"], "2026-01-01T00:00:%02dZ" % now)])
        device.event(user_id, now)
    assert len(sim.client().users()) == 2  # split in two until Braze merges them

    device.fire_due_timer(5 + S)  # settle seconds after the last anonymous event
    [(_, request)] = device.sent
    client = BrazeClient(sim.url, sim.api_key, timeout_seconds=10)
    for body, positions in identify_bodies([request]):
        assert classify_identify(client.post_identify(body)).action == OK and positions == (0,)

    # after the merge the device's later anonymous events land on the user too
    device.event(None, 100)
    track(sim, [event_object(routing.fields("dev-1"), "App Opened", "2026-01-01T00:01:40Z")])
    device.fire_due_timer(1e9)
    assert len(device.sent) == 1  # no second merge call

    [profile] = sim.client().users()
    assert profile["external_id"] == "u1"
    assert profile["user_aliases"] == [{"alias_name": "dev-1", "alias_label": LABEL}]
    assert sorted(e["name"] for e in profile["events"]) == ["App Opened", "App Opened", "Purchased", "Signed In",
                                                            "Viewed Item"]
    identify_calls = [r for r in sim.client().requests() if r["path"] == "/users/identify"]
    assert len(identify_calls) == 1 and sim.client().counters()["aliases_merged"] == 1


def test_identify_answers_from_the_simulator_are_classified(sim):
    client = BrazeClient(sim.url, sim.api_key, timeout_seconds=10)
    [(body, _)] = identify_bodies([req(1)])
    assert classify_identify(client.post_identify(body)).action == OK  # an unknown alias: dropped, "received"
    assert classify_identify(client.post_identify(b'{"aliases_to_identify": []}')).action == REJECT
    wrong_key = BrazeClient(sim.url, "not-the-key", timeout_seconds=10)
    verdict = classify_identify(wrong_key.post_identify(body))
    assert (verdict.action, verdict.reason) == (FAIL, "braze_auth") and "not-the-key" not in verdict.detail
