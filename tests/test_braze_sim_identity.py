"""/users/alias/new, /users/identify and the partner cohort endpoints over real HTTP."""
import pytest
import requests

from tests.sim_http import post

T = "2024-05-01T12:00:00Z"
ALIAS = {"alias_name": "anon-1", "alias_label": "amplitude_id"}


def users(sim, **query):
    return sim.client().users(**query)


# -- /users/alias/new ----------------------------------------------------------------------------

def test_alias_new_without_external_id_creates_alias_only_user(sim):
    r = post(sim, "/users/alias/new", {"user_aliases": [ALIAS]})
    assert (r.status_code, r.json()) == (201, {"aliases_processed": 1, "message": "success"})
    [profile] = users(sim)
    assert profile["external_id"] is None and profile["user_aliases"] == [ALIAS] and profile["braze_id"]


def test_alias_new_with_external_id_adds_to_existing_user_or_nobody(sim):
    sim.client().seed_users({"external_id": "u1"})
    r = post(sim, "/users/alias/new", {"user_aliases": [{**ALIAS, "external_id": "u1"},
                                                        {"alias_name": "z", "alias_label": "l", "external_id": "ghost"}]})
    assert r.json() == {"aliases_processed": 2, "message": "success"}
    assert [(u["external_id"], u["user_aliases"]) for u in users(sim)] == [("u1", [ALIAS])]


def test_one_alias_name_per_label(sim):
    sim.client().seed_users({"external_id": "u1", "user_aliases": [ALIAS]})
    post(sim, "/users/alias/new", {"user_aliases": [{"alias_name": "other", "alias_label": "amplitude_id", "external_id": "u1"}]})
    assert sim.client().user("u1")["user_aliases"] == [ALIAS]


@pytest.mark.parametrize("body", [{}, {"user_aliases": []}, {"user_aliases": [{"alias_name": "x"}]},
                                  {"user_aliases": [ALIAS] * 51}, {"user_aliases": [{**ALIAS, "external_id": 5}]}])
def test_alias_new_bad_bodies_are_400(sim, body):
    assert post(sim, "/users/alias/new", body).status_code == 400
    assert users(sim) == []


def test_alias_new_needs_the_api_key(sim):
    r = post(sim, "/users/alias/new", {"user_aliases": [ALIAS]}, auth=False)
    assert (r.status_code, r.json()) == (401, {"message": "Invalid API Key"})


# -- /users/identify -----------------------------------------------------------------------------

def identify(sim, external_id="u1", alias=ALIAS):
    return post(sim, "/users/identify", {"aliases_to_identify": [{"external_id": external_id, "user_alias": alias}]})


def test_identify_merges_alias_profile_into_known_user(sim):
    client = sim.client()
    client.seed_users({"external_id": "u1", "attributes": {"plan": "pro"}},
                      {"user_aliases": [ALIAS], "device_ids": ["dev-1"], "attributes": {"plan": "free", "city": "Rome"}})
    post(sim, "/users/track", {"events": [{"user_alias": ALIAS, "name": "anon_event", "time": T}]})
    r = identify(sim)
    assert (r.status_code, r.json()) == (201, {"aliases_processed": 1, "message": "success"})
    [merged] = users(sim)
    assert merged["external_id"] == "u1"
    assert merged["attributes"] == {"plan": "pro", "city": "Rome"}  # only fields missing on u1 are copied
    assert [e["name"] for e in merged["events"]] == ["anon_event"]
    assert merged["user_aliases"] == [ALIAS] and merged["device_ids"] == ["dev-1"]


def test_identify_unknown_external_id_names_the_alias_profile(sim):
    [anon] = sim.client().seed_users({"user_aliases": [ALIAS]})
    identify(sim, external_id="new")
    [profile] = users(sim)
    assert (profile["braze_id"], profile["external_id"]) == (anon["braze_id"], "new")


def test_identify_no_merge_when_label_already_used(sim):
    sim.client().seed_users({"external_id": "u1", "user_aliases": [{"alias_name": "other", "alias_label": "amplitude_id"}]},
                            {"user_aliases": [ALIAS]})
    assert identify(sim).status_code == 201
    assert len(users(sim)) == 2 and users(sim, alias_name="anon-1", alias_label="amplitude_id")[0]["external_id"] is None


def test_identify_unknown_alias_is_silently_dropped(sim):
    sim.client().seed_users({"external_id": "u1"})
    assert identify(sim).json() == {"aliases_processed": 1, "message": "success"}
    assert [u["user_aliases"] for u in users(sim)] == [[]]


@pytest.mark.parametrize("body", [{}, {"aliases_to_identify": []}, {"aliases_to_identify": [{"user_alias": ALIAS}]},
                                  {"aliases_to_identify": [{"external_id": "u", "user_alias": {"alias_name": "x"}}]},
                                  {"aliases_to_identify": [{"external_id": "u", "user_alias": ALIAS}] * 51},
                                  {"emails_to_identify": [{"external_id": "u", "email": "a@b.co"}]}])
def test_identify_bad_bodies_are_400(sim, body):
    assert post(sim, "/users/identify", body).status_code == 400


def test_identify_merge_keeps_the_known_values_and_sums_the_histories(sim):
    """What moves (docs/api-facts.md, B13): fields only the anonymous profile has, its events and purchases, its
    aliases and devices; the anonymous profile is gone; nothing is billed."""
    sim.client().seed_users({"external_id": "u1", "attributes": {"email": "u1@x.io", "plan": "pro"}})
    post(sim, "/users/track", {
        "attributes": [{"user_alias": ALIAS, "_update_existing_only": False, "plan": "free", "first_name": "Ada"}],
        "events": [{"user_alias": ALIAS, "name": "viewed", "time": T, "_update_existing_only": False}],
        "purchases": [{"user_alias": ALIAS, "product_id": "p", "currency": "USD", "price": 1.5, "time": T}]})
    post(sim, "/users/track", {"events": [{"external_id": "u1", "name": "signed_in", "time": T}]})
    points = sim.client().counters()["data_points"]
    assert identify(sim).status_code == 201
    [merged] = users(sim)
    assert merged["attributes"] == {"email": "u1@x.io", "plan": "pro", "first_name": "Ada"}
    assert sorted(e["name"] for e in merged["events"]) == ["signed_in", "viewed"]
    assert [p["product_id"] for p in merged["purchases"]] == ["p"]
    assert users(sim, alias_name="anon-1", alias_label="amplitude_id")[0]["external_id"] == "u1"
    counters = sim.client().counters()
    assert (counters["aliases_merged"], counters["data_points"]) == (1, points)


def test_identify_twice_is_harmless(sim):
    sim.client().seed_users({"external_id": "u1"}, {"user_aliases": [ALIAS], "attributes": {"city": "Rome"}})
    identify(sim)
    after_first = users(sim)
    assert identify(sim).json() == {"aliases_processed": 1, "message": "success"}
    assert users(sim) == after_first
    counters = sim.client().counters()
    assert (counters["aliases_merged"], counters["aliases_not_merged"]) == (1, 1)


def test_identify_after_the_alias_profile_took_the_external_id_is_harmless(sim):
    sim.client().seed_users({"user_aliases": [ALIAS]})
    identify(sim, external_id="new")
    identify(sim, external_id="other")  # the alias names an identified profile now: nothing happens
    [profile] = users(sim)
    assert profile["external_id"] == "new"
    assert sim.client().counters()["aliases_identified"] == 1


def test_identify_second_device_of_a_user_is_not_merged(sim):
    """A user's first anonymous device merges and its alias moves to the user; the second
    device's profile has the same label, so Braze does not merge it (docs/api-facts.md, B13)."""
    second = {"alias_name": "anon-2", "alias_label": "amplitude_id"}
    sim.client().seed_users({"external_id": "u1"}, {"user_aliases": [ALIAS]}, {"user_aliases": [second]})
    identify(sim)
    identify(sim, alias=second)
    assert len(users(sim)) == 2
    assert users(sim, alias_name="anon-2", alias_label="amplitude_id")[0]["external_id"] is None


def test_identify_many_entries_in_one_request(sim):
    aliases = [{"alias_name": f"d{i}", "alias_label": "dev"} for i in range(50)]
    sim.client().seed_users(*({"user_aliases": [a]} for a in aliases))
    r = post(sim, "/users/identify", {"aliases_to_identify": [{"external_id": f"u{i}", "user_alias": a}
                                                              for i, a in enumerate(aliases)]})
    assert r.json() == {"aliases_processed": 50, "message": "success"}
    assert sorted(u["external_id"] for u in users(sim)) == sorted(f"u{i}" for i in range(50))


def test_identify_refuses_an_external_id_braze_would_refuse(sim):
    r = identify(sim, external_id="x" * 988)
    assert (r.status_code, r.json()) == (400, {"message": "aliases_to_identify[0].external_id: EXTERNAL_USER_ID_TOO_LARGE"})


@pytest.mark.parametrize("kwargs, status", [({"auth": False}, 401), ({"key": "wrong"}, 401),
                                            ({"headers": {"Content-Type": "text/plain"}}, 415)])
def test_identify_needs_the_key_and_json(sim, kwargs, status):
    sim.client().seed_users({"external_id": "u1"}, {"user_aliases": [ALIAS]})
    body = {"aliases_to_identify": [{"external_id": "u1", "user_alias": ALIAS}]}
    assert post(sim, "/users/identify", body, **kwargs).status_code == status
    assert len(users(sim)) == 2 and sim.client().counters()["aliases_merged"] == 0


def test_identify_has_its_own_rate_limit_shared_with_alias_new():
    from local.braze_sim import BrazeSimulator

    with BrazeSimulator(alias_rate_limit=2, alias_rate_window_seconds=60) as small:
        body = {"aliases_to_identify": [{"external_id": "u1", "user_alias": ALIAS}]}
        assert post(small, "/users/alias/new", {"user_aliases": [ALIAS]}).status_code == 201
        assert post(small, "/users/identify", body).status_code == 201
        limited = post(small, "/users/identify", body)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        track = post(small, "/users/track", {"events": [{"external_id": "u1", "name": "e", "time": T}]})
        assert track.status_code == 201  # /users/track keeps its own limit


# -- partner cohorts -----------------------------------------------------------------------------

def keys(sim, **extra):
    return {"partner_api_key": sim.partner_api_keys[0], "client_secret": sim.client_secrets[0], **extra}


def name_cohort(sim, cohort_id="c1", **overrides):
    body = keys(sim, cohort_id=cohort_id, name="Power users", created_at=T)
    body.update(overrides)
    return requests.post(sim.url + "/partners/amplitude/cohorts", json=body, timeout=10)


def change(sim, changes, cohort_id="c1", **overrides):
    body = keys(sim, cohort_id=cohort_id, cohort_changes=changes)
    body.update(overrides)
    return requests.post(sim.url + "/partners/amplitude/cohorts/users", json=body, timeout=10)


def test_cohort_membership_adds_and_removes_existing_users_only(sim):
    sim.client().seed_users({"external_id": "u1"}, {"external_id": "u2", "device_ids": ["dev-2"]},
                            {"user_aliases": [ALIAS]}, {"device_ids": ["dev-3"]})
    r = name_cohort(sim)
    assert (r.status_code, r.json()) == (201, {})
    r = change(sim, [{"user_ids": ["u1", "u2", "ghost"], "aliases": [ALIAS], "device_ids": ["dev-2", "dev-3", "dev-x"]}])
    assert (r.status_code, r.json()) == (201, {})
    in_cohort = sorted(str(u["external_id"]) + "/" + ",".join(u["device_ids"]) for u in users(sim) if "c1" in u["cohorts"])
    assert in_cohort == ["None/", "None/dev-3", "u1/", "u2/dev-2"]  # dev-2 belongs to an identified user: ignored
    assert len(users(sim)) == 4  # never creates
    counters = sim.client().counters()
    assert counters["data_points"] == 4 and counters["cohort_ids_unmatched"] == 3
    change(sim, [{"user_ids": ["u1"], "should_remove": True}])
    assert sim.client().user("u1")["cohorts"] == []


@pytest.mark.parametrize("overrides", [{"partner_api_key": "bad"}, {"client_secret": "bad"}, {"client_secret": None}])
def test_cohort_bad_keys_are_401(sim, overrides):
    assert name_cohort(sim, **overrides).status_code == 401
    sim.client().seed_users({"external_id": "u1"})
    assert change(sim, [{"user_ids": ["u1"]}], **overrides).status_code == 401


@pytest.mark.parametrize("overrides", [{"name": ""}, {"created_at": "tuesday"}, {"cohort_id": ""}, {"name": None}])
def test_cohort_name_bad_bodies_are_400(sim, overrides):
    assert name_cohort(sim, **overrides).status_code == 400


@pytest.mark.parametrize("changes", [
    [], "x", [{}], [{"user_ids": "u1"}], [{"user_ids": [1]}], [{"aliases": [{"alias_name": "x"}]}],
    [{"user_ids": ["u1"], "should_remove": "yes"}], [{"user_ids": ["u1"], "extra": 1}],
    [{"user_ids": [f"u{i}" for i in range(600)]}, {"device_ids": [f"d{i}" for i in range(401)]}],
])
def test_cohort_changes_bad_bodies_are_400(sim, changes):
    name_cohort(sim)
    assert change(sim, changes).status_code == 400


def test_cohort_of_1000_ids_is_accepted(sim):
    name_cohort(sim)
    assert change(sim, [{"user_ids": [f"u{i}" for i in range(1000)]}]).status_code == 201


def test_unknown_cohort_id_is_400(sim):
    sim.client().seed_users({"external_id": "u1"})
    assert change(sim, [{"user_ids": ["u1"]}], cohort_id="never-named").status_code == 400
    assert sim.client().user("u1")["cohorts"] == []


def test_partner_secrets_are_redacted_in_the_log(sim):
    name_cohort(sim)
    [logged] = sim.client().requests()
    assert logged["body"]["partner_api_key"] == "[redacted]" and logged["body"]["client_secret"] == "[redacted]"
    text = requests.get(sim.url + "/_sim/requests").text
    assert sim.partner_api_keys[0] not in text and sim.client_secrets[0] not in text
