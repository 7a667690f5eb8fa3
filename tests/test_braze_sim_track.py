"""POST /users/track over real HTTP: each rule gets a violating request and Braze's answer."""
import datetime as dt

import orjson
import pytest
import requests

from local.braze_sim import BrazeSimulator
from tests.sim_http import track

VALID_DATA = "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."
MISSING_ID = "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required"
T = "2024-05-01T12:00:00Z"


def event(**fields):
    return {"external_id": "u1", "name": "played", "time": T, **fields}


def purchase(**fields):
    return {"external_id": "u1", "product_id": "p1", "currency": "USD", "price": 9.99, "time": T, **fields}


def user(sim, external_id="u1"):
    return sim.client().user(external_id)


# -- request level -------------------------------------------------------------------------

@pytest.mark.parametrize("auth", [None, "Bearer wrong", "bearer {key}", "Bearer \"{key}\"", "{key}", "Basic {key}"])
def test_bad_authorization_is_401_and_nothing_applied(sim, auth):
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth.format(key=sim.api_key)
    r = requests.post(sim.url + "/users/track", data=orjson.dumps({"events": [event()]}), headers=headers)
    assert r.status_code == 401
    assert r.json() == {"message": "Invalid API Key"}
    assert "X-RateLimit-Limit" in r.headers
    assert sim.client().users() == []


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(sim, content_type):
    headers = {"Content-Type": content_type} if content_type else {"Content-Type": ""}
    r = track(sim, {"events": [event()]}, headers=headers)
    assert r.status_code == 415
    assert sim.client().users() == []


def test_content_type_with_charset_is_accepted(sim):
    r = track(sim, {"events": [event()]}, headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 201


def test_body_over_4_mb_is_413(sim):
    padding = "x" * 200
    events = [event(properties={"p": [padding] * 300}) for _ in range(75)]
    body = orjson.dumps({"events": events})
    assert len(body) > 4 * 1024 * 1024
    r = track(sim, body)
    assert r.status_code == 413
    assert sim.client().users() == []
    # The connection stays usable: the body was drained.
    assert track(sim, {"events": [event()]}).status_code == 201


def test_invalid_json_is_400(sim):
    r = track(sim, b'{"events": [')
    assert r.status_code == 400
    assert r.json() == {"message": "Error while parsing request body. Please check your syntax."}
    assert sim.client().requests()[-1]["body"] is None


@pytest.mark.parametrize("body", [{}, [], {"events": []}, {"partner": "x"}])
def test_no_data_is_400(sim, body):
    r = track(sim, body)
    assert r.status_code == 400
    assert r.json() == {"message": VALID_DATA}


def test_array_field_must_be_a_list(sim):
    r = track(sim, {"events": {"external_id": "u1"}})
    assert r.status_code == 400


def test_combined_limit_is_75_objects_in_all(sim):
    body = {"attributes": [{"external_id": f"a{i}", "x": 1} for i in range(40)],
            "events": [event(external_id=f"e{i}") for i in range(36)]}
    r = track(sim, body)
    assert (r.status_code, r.json()) == (400, {"message": "Max Input Length Exceeded"})
    assert sim.client().users() == []
    body["events"].pop()
    assert track(sim, body).status_code == 201


def test_per_type_limit_is_75_per_array():
    with BrazeSimulator(object_limit_mode="per-type") as per_type:
        ok = {"attributes": [{"external_id": f"a{i}", "x": 1} for i in range(75)],
              "events": [event(external_id=f"e{i}") for i in range(75)]}
        assert track(per_type, ok).status_code == 201
        ok["events"].append(event())
        r = track(per_type, ok)
        assert (r.status_code, r.json()["message"]) == (400, "Max Input Length Exceeded")


def test_unknown_path_and_trailing_slash_are_404(sim):
    r = requests.post(sim.url + "/users/track/", json={}, headers={"Authorization": f"Bearer {sim.api_key}"})
    assert r.status_code == 404


def test_get_on_track_is_405(sim):
    assert requests.get(sim.url + "/users/track").status_code == 405


# -- identifiers --------------------------------------------------------------------------

@pytest.mark.parametrize("ids, error", [
    ({}, MISSING_ID),
    ({"external_id": "u1", "braze_id": "b1"}, "only one of 'external_id', 'braze_id' or 'user_alias' may be provided"),
    ({"external_id": "u1", "user_alias": {"alias_name": "n", "alias_label": "l"}},
     "only one of 'external_id', 'braze_id' or 'user_alias' may be provided"),
    ({"user_alias": {"alias_name": "n"}}, "'user_alias' must have 'alias_name' and 'alias_label'"),
    ({"external_id": ""}, "'external_id' is not valid"),
    ({"external_id": 12}, "'external_id' is not valid"),
    ({"external_id": "é" * 494}, "EXTERNAL_USER_ID_TOO_LARGE"),  # 988 bytes
])
def test_identifier_rules(sim, ids, error):
    obj = {"name": "played", "time": T, **ids}
    r = track(sim, {"events": [obj, event()]})
    assert r.status_code == 201
    assert r.json() == {"message": "success", "events_processed": 1,
                        "errors": [{"type": error, "input_array": "events", "index": 0}]}
    assert [u["external_id"] for u in sim.client().users()] == ["u1"]


def test_external_id_of_987_bytes_is_accepted(sim):
    assert track(sim, {"events": [event(external_id="é" * 493 + "a")]}).status_code == 201


def test_all_invalid_is_400_with_errors(sim):
    r = track(sim, {"events": [{"name": "x", "time": T}], "purchases": [purchase(currency="usd")]})
    assert r.status_code == 400
    assert r.json() == {"message": VALID_DATA, "errors": [
        {"type": MISSING_ID, "input_array": "events", "index": 0},
        {"type": "'currency' is not valid", "input_array": "purchases", "index": 0}]}
    assert sim.client().users() == []
    assert sim.client().counters()["objects_rejected"] == 2


def test_email_identifies_most_recent_identified_profile(sim):
    track(sim, {"attributes": [{"external_id": "a", "email": "x@example.com"},
                               {"external_id": "b", "email": "x@example.com"}]})
    track(sim, {"events": [{"email": "x@example.com", "name": "e", "time": T}]})
    assert len(user(sim, "b")["events"]) == 1 and user(sim, "a")["events"] == []


def test_unknown_email_creates_email_only_profile(sim):
    assert track(sim, {"attributes": [{"email": "new@example.com", "plan": "pro"}]}).status_code == 201
    [profile] = sim.client().users()
    assert profile["external_id"] is None and profile["attributes"] == {"email": "new@example.com", "plan": "pro"}


def test_bad_email_is_rejected(sim):
    r = track(sim, {"attributes": [{"external_id": "u1", "email": "not-an-email"}]})
    assert r.status_code == 400
    assert r.json()["errors"][0]["type"] == "The value provided for the 'email' field is not a valid email."


# -- _update_existing_only and creation -----------------------------------------------------

def test_external_id_creates_unless_update_existing_only(sim):
    r = track(sim, {"events": [event(external_id="new", _update_existing_only=True), event(external_id="made")]})
    assert r.json() == {"message": "success", "events_processed": 2}  # Braze counts the miss as processed
    assert [u["external_id"] for u in sim.client().users()] == ["made"]
    counters = sim.client().counters()
    assert (counters["objects_accepted"], counters["objects_unmatched"]) == (1, 1)


def test_alias_only_user_created_only_with_explicit_false(sim):
    alias = {"alias_name": "anon-1", "alias_label": "amplitude_id"}
    track(sim, {"attributes": [{"user_alias": alias, "a": 1}, {"user_alias": alias, "a": 2, "_update_existing_only": True}]})
    assert sim.client().users() == []
    track(sim, {"attributes": [{"user_alias": alias, "a": 3, "_update_existing_only": False}]})
    [profile] = sim.client().users()
    assert profile["user_aliases"] == [alias] and profile["attributes"] == {"a": 3}
    track(sim, {"events": [{"user_alias": alias, "name": "e", "time": T}]})  # existing alias user: applied
    assert len(sim.client().users()[0]["events"]) == 1


def test_unknown_braze_id_never_creates(sim):
    r = track(sim, {"attributes": [{"braze_id": "ffffffffffffffffffffffff", "a": 1, "_update_existing_only": False}]})
    assert r.status_code == 201
    assert sim.client().users() == []
    assert sim.client().counters()["objects_unmatched"] == 1
    [seeded] = sim.client().seed_users({"external_id": "s"})
    track(sim, {"attributes": [{"braze_id": seeded["braze_id"], "a": 1}]})
    assert user(sim, "s")["attributes"] == {"a": 1}


# -- events ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, error", [
    ({"name": None}, "'name' is required"),
    ({"name": ""}, "'name' is not valid"),
    ({"name": 5}, "'name' is not valid"),
    ({"time": ""}, "'time' is not valid"),
    ({"time": "yesterday"}, "'time' is not valid"),
    ({"time": 1714564800}, "'time' is not valid"),
    ({"app_id": 3}, "'app_id' is not valid"),
    ({"properties": []}, "'properties' is not valid"),
    ({"properties": {"$x": 1}}, "property name '$x' is not valid"),
    ({"properties": {"": 1}}, "property name '' is not valid"),
    ({"properties": {"k" * 256: 1}}, "property name '" + "k" * 40 + "' is not valid"),
    ({"properties": {"time": 1}}, "'time' is a reserved property name"),
    ({"properties": {"event_name": "x"}}, "'event_name' is a reserved property name"),
    ({"properties": {"s": "v" * 256}}, "property 's' is longer than 255 characters"),
    ({"properties": {"n": None}}, "property 'n' is null"),
    ({"properties": {"big": ["x" * 200] * 520}}, "array and object properties exceed 100 KB"),
    ({"_update_existing_only": "yes"}, "'_update_existing_only' is not valid"),
])
def test_event_rules(sim, fields, error):
    obj = {k: v for k, v in event(**fields).items() if v is not None or k == "properties"}
    r = track(sim, {"events": [obj]})
    assert r.status_code == 400
    assert r.json()["errors"] == [{"type": error, "input_array": "events", "index": 0}]
    assert sim.client().users() == []


def test_missing_time_is_required(sim):
    obj = event()
    del obj["time"]
    assert track(sim, {"events": [obj]}).json()["errors"][0]["type"] == "'time' is required"


@pytest.mark.parametrize("time", ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00.123+02:00", "2024-05-01T12:00:00",
                                  "2024-05-01T12:00:00:123Z", "2024-05-01T12:00:00:123-0800", "2024-05-01"])
def test_event_time_formats_accepted(sim, time):
    assert track(sim, {"events": [event(time=time)]}).status_code == 201
    assert user(sim)["events"][0]["time"] == time


def test_future_time_becomes_now(sim):
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)).isoformat()
    track(sim, {"events": [event(time=future)]})
    stored = dt.datetime.fromisoformat(user(sim)["events"][0]["time"].replace("Z", "+00:00"))
    assert abs((stored - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 60


def test_event_is_stored_with_properties(sim):
    props = {"song": "x", "n": 1.5, "ok": True, "tags": ["a"], "obj": {"k": {"j": 1}}}
    track(sim, {"events": [event(app_id="app", properties=props)]})
    [stored] = user(sim)["events"]
    assert {k: stored[k] for k in ("name", "time", "app_id", "properties")} == \
        {"name": "played", "time": T, "app_id": "app", "properties": props}
    assert isinstance(stored["received_at"], float)


# -- purchases -------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, error", [
    ({"product_id": None}, "'product_id' is not valid"),
    ({"product_id": "p" * 256}, "'product_id' is not valid"),
    ({"currency": "usd"}, "'currency' is not valid"),
    ({"currency": "ABC"}, "'currency' is not valid"),
    ({"currency": "US"}, "'currency' is not valid"),
    ({"price": "9.99"}, "'price' is not valid"),
    ({"price": True}, "'price' is not valid"),
    ({"quantity": 0}, "'quantity' is not valid"),
    ({"quantity": 101}, "'quantity' is not valid"),
    ({"quantity": 1.5}, "'quantity' is not valid"),
    ({"time": "soon"}, "'time' is not valid"),
    ({"properties": {"time": 1}}, "'time' is a reserved property name"),
])
def test_purchase_rules(sim, fields, error):
    obj = {k: v for k, v in purchase(**fields).items() if v is not None}
    r = track(sim, {"purchases": [obj]})
    assert r.status_code == 400
    assert r.json()["errors"] == [{"type": error, "input_array": "purchases", "index": 0}]


def test_purchase_stored_with_default_quantity(sim):
    r = track(sim, {"purchases": [purchase(), purchase(currency="EUR", price=3, quantity=100)]})
    assert r.json() == {"message": "success", "purchases_processed": 2}
    stored = user(sim)["purchases"]
    assert [(p["currency"], p["price"], p["quantity"]) for p in stored] == [("USD", 9.99, 1), ("EUR", 3, 100)]


# -- attributes ------------------------------------------------------------------------------

def test_attribute_operations(sim):
    track(sim, {"attributes": [{"external_id": "u1", "first_name": "Ada", "gone": 1, "tags": ["a", "b", "a"],
                                "logins": {"inc": 2}, "country": "DE"}]})
    track(sim, {"attributes": [{"external_id": "u1", "gone": None, "logins": {"inc": -1},
                                "tags": {"add": ["a", "c"], "remove": ["b"]}, "fresh": {"inc": 5}}]})
    assert user(sim)["attributes"] == {"first_name": "Ada", "tags": ["a", "c"], "logins": 1,
                                       "country": "DE", "fresh": 5}


def test_inc_on_non_integer_is_an_error_and_changes_nothing(sim):
    track(sim, {"attributes": [{"external_id": "u1", "name": "x"}]})
    r = track(sim, {"attributes": [{"external_id": "u1", "name": {"inc": 1}, "other": 1},
                                   {"external_id": "u1", "ok": True}]})
    assert r.json() == {"message": "success", "attributes_processed": 1,
                        "errors": [{"type": "'name' is not an integer attribute", "input_array": "attributes", "index": 0}]}
    assert user(sim)["attributes"] == {"name": "x", "ok": True}


@pytest.mark.parametrize("value, error", [
    ({"inc": 1.5}, "'a' increment is not an integer"),
    ({"inc": True}, "'a' increment is not an integer"),
    ({"add": "x"}, "'a' add must be an array"),
    ({"remove": [{"x": 1}]}, "'a' remove values must be strings, numbers or booleans"),
])
def test_operator_shapes(sim, value, error):
    r = track(sim, {"attributes": [{"external_id": "u1", "a": value}]})
    assert r.status_code == 400 and r.json()["errors"][0]["type"] == error


def test_nested_object_replaced_or_merged(sim):
    track(sim, {"attributes": [{"external_id": "u1", "car": {"make": "VW", "spec": {"hp": 90}}}]})
    track(sim, {"attributes": [{"external_id": "u1", "car": {"spec": {"kw": 66}}, "_merge_objects": True}]})
    assert user(sim)["attributes"]["car"] == {"make": "VW", "spec": {"hp": 90, "kw": 66}}
    track(sim, {"attributes": [{"external_id": "u1", "car": {"make": "BMW"}}]})
    assert user(sim)["attributes"] == {"car": {"make": "BMW"}}


def test_control_keys_are_not_attributes(sim):
    track(sim, {"attributes": [{"external_id": "u1", "_update_existing_only": False, "_merge_objects": False, "a": 1}]})
    assert user(sim)["attributes"] == {"a": 1}


def test_processing_order_is_attributes_events_purchases(sim):
    # The event only applies if the attributes object (listed later in the body) created the user first.
    body = {"events": [event(_update_existing_only=True)], "attributes": [{"external_id": "u1", "a": 1}]}
    track(sim, body)
    assert len(user(sim)["events"]) == 1


# -- data points ------------------------------------------------------------------------------

def test_data_points(sim):
    track(sim, {
        "attributes": [{"external_id": "u1", "first_name": "A", "country": "DE", "language": "de",
                        "email_subscribe": "opted_in", "plan": None, "tags": ["a", "b"],
                        "more": {"add": ["x", "y", "z"]}, "n": {"inc": 1},
                        "car": {"make": "VW", "spec": {"hp": 1}}, "_update_existing_only": False}],
        "events": [event(properties={"a": 1, "b": 2})],
        "purchases": [purchase(properties={"c": 1}), purchase(external_id="nobody", _update_existing_only=True)],
    })
    # attributes: first_name 1 + plan 1 + tags 1 + add 3 + inc 1 + car 3 = 10; event 3; purchase 2
    assert sim.client().counters()["data_points"] == 15


# -- rate limit ------------------------------------------------------------------------------

def test_rate_limit_headers_and_429():
    with BrazeSimulator(rate_limit=3, rate_window_seconds=60) as limited:
        answers = [track(limited, {"events": [event()]}) for _ in range(4)]
        assert [a.status_code for a in answers] == [201, 201, 201, 429]
        assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert all(a.headers["X-RateLimit-Limit"] == "3" for a in answers)
        reset = int(answers[0].headers["X-RateLimit-Reset"])
        assert 0 < reset - answers[0].elapsed.total_seconds() - dt.datetime.now().timestamp() <= 61
        assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
        assert len(limited.client().user("u1")["events"]) == 3
        # Limits are per key.
        other = BrazeSimulator(api_keys=["k1", "k2"], rate_limit=1, rate_window_seconds=60).start()
        try:
            assert [track(other, {"events": [event()]}, key=k).status_code for k in ("k1", "k2", "k1")] == [201, 201, 429]
        finally:
            other.stop()
