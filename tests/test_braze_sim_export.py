"""/users/export/ids over real HTTP: auth, lookups by each identifier, validation, counters,
faults and the endpoint's own rate limit."""
import pytest
import requests

from local.braze_sim import BrazeSimulator
from tests.sim_http import export

FIELDS = ["external_id", "user_aliases", "braze_id"]
ALIAS = {"alias_name": "a@x.io", "alias_label": "email"}


@pytest.fixture
def sim(sim):
    """The shared simulator (tests/conftest.py), reset, with three users seeded."""
    sim.client().seed_users({"external_id": "u1", "user_aliases": [ALIAS], "device_ids": ["d1"],
                             "attributes": {"email": "u1@x.io", "plan": "pro"}},
                            {"external_id": "u2"}, {"device_ids": ["d-anon"]})
    return sim


def test_external_ids_return_known_users_and_list_the_others(sim):
    r = export(sim, {"external_ids": ["u1", "ghost", "u2"], "fields_to_export": FIELDS})
    assert r.status_code == 201
    body = r.json()
    assert body["message"] == "success" and body["invalid_user_ids"] == ["ghost"]
    assert [(u["external_id"], u["user_aliases"] if "user_aliases" in u else None) for u in body["users"]] == [
        ("u1", [ALIAS]), ("u2", None)]  # a field the profile lacks is left out
    assert all(set(u) <= set(FIELDS) and u["braze_id"] for u in body["users"])


def test_aliases_device_id_and_braze_id_lookups(sim):
    r = export(sim, {"user_aliases": [ALIAS, {"alias_name": "nobody", "alias_label": "email"}],
                     "fields_to_export": ["external_id"]})
    assert r.json()["users"] == [{"external_id": "u1"}]
    r = export(sim, {"device_id": "d-anon", "fields_to_export": FIELDS + ["devices"]})
    [anon] = r.json()["users"]
    assert "external_id" not in anon and anon["devices"] == [{"device_id": "d-anon"}]
    nobody = export(sim, {"device_id": "d-none", "fields_to_export": FIELDS})
    assert nobody.json() == {"users": [], "message": "success"}
    braze_id = anon["braze_id"]
    assert export(sim, {"braze_id": braze_id, "fields_to_export": ["braze_id"]}).json()["users"] == [
        {"braze_id": braze_id}]
    r = export(sim, {"external_ids": ["u1"], "fields_to_export": ["email", "custom_attributes"]})
    assert r.json()["users"] == [{"email": "u1@x.io", "custom_attributes": {"plan": "pro"}}]


@pytest.mark.parametrize("body, message", [
    ({"external_ids": ["u1"]}, "'fields_to_export' is required"),
    ({"external_ids": [f"u{i}" for i in range(51)], "fields_to_export": FIELDS}, "at most 50 'external_ids'"),
    ({"user_aliases": [ALIAS] * 51, "fields_to_export": FIELDS}, "at most 50 'user_aliases'"),
    ({"device_id": ["d1", "d-anon"], "fields_to_export": FIELDS}, "'device_id' must be one string"),
    ({"device_id": 5, "fields_to_export": FIELDS}, "'device_id' must be one string"),
    ({"fields_to_export": FIELDS}, "provide 'external_ids'"),
    ({"external_ids": ["u1"], "fields_to_export": ["external_id", "user_alias"]}, "unknown field(s): user_alias"),
    ({"external_ids": ["u1"], "fields_to_export": []}, "non-empty array"),
    ({"external_ids": "u1", "fields_to_export": FIELDS}, "'external_ids' must be an array"),
    ({"user_aliases": [{"alias_name": "x"}], "fields_to_export": FIELDS}, "'user_aliases' must be an array"),
    ({"external_id": "u1", "fields_to_export": FIELDS}, "unknown field(s): external_id"),
])
def test_bad_bodies_are_400(sim, body, message):
    r = export(sim, body)
    assert r.status_code == 400 and message in r.json()["message"]


def test_needs_a_valid_rest_key(sim):
    r = export(sim, {"external_ids": ["u1"], "fields_to_export": FIELDS}, key="wrong")
    assert (r.status_code, r.json()) == (401, {"message": "Invalid API Key"})
    r = requests.post(sim.url + "/users/export/ids", json={"external_ids": ["u1"], "fields_to_export": FIELDS},
                      timeout=10)
    assert r.status_code == 401


def test_requests_are_logged_and_counted_and_change_nothing(sim):
    client = sim.client()
    before = client.users()
    export(sim, {"external_ids": ["u1", "ghost"], "fields_to_export": FIELDS})
    export(sim, {"external_ids": ["u1"]})
    counters = client.counters()
    assert counters["requests"] == 2 and counters["requests_by_status"] == {"201": 1, "400": 1}
    assert counters["data_points"] == 0 and client.users() == before  # a lookup bills nothing, creates nobody
    logged = client.requests()
    assert [(r["path"], r["status"]) for r in logged] == [("/users/export/ids", 201), ("/users/export/ids", 400)]
    assert logged[0]["body"]["external_ids"] == ["u1", "ghost"]


def test_faults_apply(sim):
    client = sim.client()
    client.set_faults(error_rate=1.0, error_statuses=[503])
    assert export(sim, {"external_ids": ["u1"], "fields_to_export": FIELDS}).status_code == 503
    client.set_faults(rate_limit_burst=1, retry_after_seconds=2)
    r = export(sim, {"external_ids": ["u1"], "fields_to_export": FIELDS})
    assert (r.status_code, r.headers["Retry-After"]) == (429, "2")
    assert export(sim, {"external_ids": ["u1"], "fields_to_export": FIELDS}).status_code == 201
    assert [r.get("fault") for r in client.requests()] == ["error", "burst", None]


def test_its_own_rate_limit():
    with BrazeSimulator(export_rate_limit=2, export_rate_window_seconds=60) as sim:
        sim.client().seed_users({"external_id": "u1"})
        answers = [export(sim, {"external_ids": ["u1"], "fields_to_export": FIELDS}) for _ in range(3)]
        assert [a.status_code for a in answers] == [201, 201, 429]
        assert answers[0].headers["X-RateLimit-Limit"] == "2" and answers[1].headers["X-RateLimit-Remaining"] == "0"
        assert int(answers[2].headers["Retry-After"]) >= 1
        track = requests.post(sim.url + "/users/track", json={"attributes": [{"external_id": "u1", "a": 1}]},
                              headers={"Authorization": f"Bearer {sim.api_key}"}, timeout=10)
        assert track.status_code == 201  # /users/track has its own limit
