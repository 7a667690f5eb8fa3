"""Mapped attributes through the Braze simulator over real HTTP: every standard-attribute rule
(valid, fixable, refused) as the profile ends up, and renames under identify operations."""
import pytest

from pipeline.config import FieldMapping
from transforms.identify import apply_updates
from transforms.mappings import UserMappings
from tests.sim_http import track
from tests.test_standard_attributes import FIXABLE, REFUSED, VALID

# A valid value each profile holds before the test, so a refused value can be seen not to touch it.
PREVIOUS = {
    "email": "old@example.com", "phone": "+14155550100", "dob": "1980-01-01", "gender": "O", "country": "FR",
    "language": "fr", "time_zone": "Europe/Paris", "email_subscribe": "subscribed", "push_subscribe": "subscribed",
    "first_name": "Old", "last_name": "Old", "home_city": "Old",
}


def send(sim, external_id, mappings, user_properties, state=None, time_ms=1, **fields):
    """One Amplitude event through the mappings and the identify rules to the simulator.
    Returns (the new state, what was skipped, the simulator's answer or None if nothing was sent)."""
    result = mappings.updates({"event_type": "e", "user_properties": user_properties, "event_properties": {}, **fields})
    applied = apply_updates(result.updates, state, mappings.targets, time_ms)
    answer = None
    if applied.attributes:
        answer = track(sim, {"attributes": [{"external_id": external_id, **applied.attributes}]})
        assert answer.status_code == 201 and "errors" not in answer.json(), answer.text
    return applied.state, result.skipped, answer


@pytest.mark.parametrize("target, value, expected", VALID + FIXABLE, ids=lambda v: repr(v)[:40])
def test_a_valid_or_fixable_value_reaches_the_profile_in_braze_format(sim, target, value, expected):
    sim.client().seed_users({"external_id": "u1", "attributes": dict(PREVIOUS)})
    mappings = UserMappings((), [FieldMapping("user_properties.Amplitude Name", target)])
    _, skipped, _ = send(sim, "u1", mappings, {"Amplitude Name": value})
    assert skipped == []
    assert sim.client().user("u1")["attributes"][target] == expected


@pytest.mark.parametrize("target, value, reason", REFUSED, ids=lambda v: repr(v)[:40])
def test_a_refused_value_is_never_sent_and_the_profile_keeps_its_value(sim, target, value, reason):
    sim.client().seed_users({"external_id": "u1", "attributes": dict(PREVIOUS)})
    mappings = UserMappings((), [FieldMapping("user_properties.Amplitude Name", target)])
    _, skipped, answer = send(sim, "u1", mappings, {"$set": {"Amplitude Name": value}})
    assert (skipped, answer) == ([(target, reason)], None)
    assert sim.client().user("u1")["attributes"] == PREVIOUS
    assert sim.client().counters()["requests"] == 0


@pytest.mark.parametrize("amplitude_country, braze", [
    ("United States", "US"), ("United Kingdom", "GB"), ("Germany", "DE"), ("Japan", "JP"), ("Brazil", "BR"),
    ("India", "IN"), ("South Korea", "KR"), ("Czechia", "CZ"), ("Russia", "RU"), ("Egypt", "EG"),
])
def test_amplitude_country_names_reach_braze_as_codes(sim, amplitude_country, braze):
    mappings = UserMappings((), [FieldMapping("country", "country")])
    send(sim, "u1", mappings, {}, country=amplitude_country)
    assert sim.client().user("u1")["attributes"] == {"country": braze}


def test_renames_follow_the_identify_operations_to_the_profile(sim):
    mappings = UserMappings(["plan"], [
        FieldMapping("user_properties.Email Address", "email"), FieldMapping("user_properties.Visits", "visit_count"),
        FieldMapping("user_properties.Interests", "interests"), FieldMapping("city", "home_city"),
        FieldMapping("language", "language"),
    ])
    state, profile = None, []
    steps = [
        ({"plan": "free", "Email Address": "  Ada@Example.com", "Visits": 1}, {"city": "München", "language": "German"}),
        ({"$set": {"plan": "pro"}, "$add": {"Visits": 2}, "$append": {"Interests": ["jazz", "rock"]}}, {}),
        ({"$setOnce": {"Email Address": "other@example.com"}, "$remove": {"Interests": "rock"}}, {}),
        ({"$unset": {"Email Address": "-"}, "$prepend": {"Interests": "folk"}}, {"city": "Berlin"}),
    ]
    for time_ms, (user_properties, fields) in enumerate(steps, 1):
        state, skipped, _ = send(sim, "u1", mappings, user_properties, state, time_ms, **fields)
        assert skipped == []
        profile.append(sim.client().user("u1")["attributes"])
    assert profile == [
        {"plan": "free", "email": "ada@example.com", "visit_count": 1, "home_city": "München", "language": "de"},
        {"plan": "pro", "email": "ada@example.com", "visit_count": 3, "home_city": "München", "language": "de",
         "interests": ["jazz", "rock"]},
        {"plan": "pro", "email": "ada@example.com", "visit_count": 3, "home_city": "München", "language": "de",
         "interests": ["jazz"]},
        # the job never knew the whole array (it only added to it), so $prepend is an add: Braze appends
        {"plan": "pro", "visit_count": 3, "home_city": "Berlin", "language": "de", "interests": ["jazz", "folk"]},
    ]
