"""Mappings: plain properties behave exactly as before, renames and top-level fields go
through the identify rules, standard attributes are formatted or skipped with a reason."""
import random

import pytest

from pipeline.config import FieldMapping, parse_syncs
from transforms.identify import apply_updates, selected_updates
from transforms.mappings import EventMappings, MappedProperties, MappedUpdates, UserMappings
from transforms.track import selected_properties

M = FieldMapping


def event(user_properties=None, event_properties=None, **fields):
    return {"event_type": "e", "user_properties": user_properties or {}, "event_properties": event_properties or {},
            **fields}


# ---------------------------------------------------------------------------- same as before


NAMES = ["plan", "age", "tags", "a.b", "score", "Plan", "x y", "n"]
OPS = ["$set", "$setOnce", "$add", "$append", "$prepend", "$preInsert", "$postInsert", "$remove", "$unset",
       "$clearAll", "$unknown", "$set"]


def _value(rng):
    return rng.choice([None, 0, 1, 2.5, True, False, "", "x", "United States", [1, "a"], {"k": [1]}, [], {}, "-"])


def _user_properties(rng):
    """What Amplitude events carry: a snapshot, operations, a mix, or junk around them."""
    shape = rng.random()
    if shape < 0.35:
        return {rng.choice(NAMES + ["other"]): _value(rng) for _ in range(rng.randint(0, 6))}
    props = {}
    for _ in range(rng.randint(0, 4)):
        op = rng.choice(OPS)
        props[op] = ({rng.choice(NAMES + ["other"]): _value(rng) for _ in range(rng.randint(0, 4))}
                     if rng.random() < 0.9 else _value(rng))
    if rng.random() < 0.15:
        props[rng.choice(NAMES)] = _value(rng)  # Amplitude forbids the mix; the job must not care
    return props


def test_plain_properties_give_exactly_what_selected_updates_gives():
    """The lead can replace ``selected_updates(user_properties, selected)`` by
    ``UserMappings(properties).updates(event)``: 20,000 generated events, many selections."""
    rng = random.Random(17)
    for _ in range(400):
        selected = tuple(rng.sample(NAMES, rng.randint(0, len(NAMES))))
        mappings = UserMappings(selected)
        assert mappings.targets == frozenset(selected)
        for _ in range(50):
            props = _user_properties(rng)
            expected = selected_updates(props, frozenset(selected))
            assert mappings.updates(event(props)) == MappedUpdates(expected, []), props


def test_plain_event_properties_give_exactly_what_selected_properties_gives():
    rng = random.Random(18)
    for _ in range(300):
        selected = tuple(rng.sample(NAMES + ["time", "$x", "long"], rng.randint(0, 6)))
        mappings = EventMappings(selected)
        for _ in range(30):
            props = {rng.choice(NAMES + ["time", "$x", "long"]): rng.choice([_value(rng), "z" * 300, [None, 1]])
                     for _ in range(rng.randint(0, 8))}
            e = event(event_properties=props)
            assert mappings.properties(e).properties == selected_properties(e, selected), props


def test_settings_from_the_syncs_file():
    (sync,) = parse_syncs({"syncs": [{
        "name": "s", "endpoint": "https://rest.iad-01.braze.com", "api_key": "env:K",
        "users": {"properties": ["plan"], "mappings": [{"from": "country", "to": "country"}]},
        "events": {"select": [{"event_type": "*"}], "properties": ["sku"], "mappings": [{"from": "platform", "to": "os"}]},
    }]})
    users = UserMappings.from_settings(sync.users)
    assert users.targets == {"plan", "country"}
    assert users.updates(event({"plan": "pro"}, country="Germany")) == MappedUpdates(
        [("$set", "plan", "pro"), ("$set", "country", "DE")], [])
    assert EventMappings.from_settings(sync.events).properties(event(event_properties={"sku": "a"}, platform="iOS")) \
        == MappedProperties({"sku": "a", "os": "iOS"}, [])


# ---------------------------------------------------------------------------- users


def updates(mappings, user_properties=None, properties=(), **fields):
    return UserMappings(properties, mappings).updates(event(user_properties, **fields))


def test_a_renamed_property_follows_every_identify_operation():
    rename = [M("user_properties.Email Address", "email"), M("user_properties.Plan Name", "plan")]
    assert updates(rename, {"Email Address": " Ada@Example.com ", "Plan Name": "pro"}).updates == [
        ("$set", "email", "ada@example.com"), ("$set", "plan", "pro")]
    assert updates(rename, {"$setOnce": {"Email Address": "ADA@x.io"}, "$unset": {"Plan Name": "-"}}).updates == [
        ("$setOnce", "email", "ada@x.io"), ("$unset", "plan", "-")]
    assert updates(rename, {"$append": {"Plan Name": "x"}}).updates == [("$append", "plan", "x")]
    assert updates(rename, {"$set": {"Plan Name": "a"}, "$append": {"Plan Name": "b"}}).updates == [
        ("$set", "plan", "a")]  # first operation per property wins
    assert updates(rename, {"Email Address": None}).updates == []  # a null in a snapshot is ignored
    assert updates(rename, {"$set": {"Email Address": None}}).updates == [("$set", "email", None)]  # removes


def test_renames_end_to_end_through_apply_updates():
    mappings = UserMappings(["plan"], [M("user_properties.Email Address", "email"), M("country", "country"),
                                       M("user_properties.visits", "visit_count")])
    state, sent = None, []
    for time_ms, e in enumerate([
        event({"plan": "free", "Email Address": "ADA@example.com"}, country="United States"),
        event({"plan": "free", "Email Address": "ada@example.com"}, country="US"),  # nothing changed
        event({"$set": {"plan": "pro"}, "$add": {"visits": 2}}, country="United States"),
        event({"$unset": {"Email Address": "-"}}, country="Narnia"),  # Narnia: skipped, US kept
    ], 1):
        result = mappings.updates(e)
        applied = apply_updates(result.updates, state, mappings.targets, time_ms)
        state = applied.state
        sent.append((applied.attributes, result.skipped))
    assert sent == [
        ({"plan": "free", "email": "ada@example.com", "country": "US"}, []),
        ({}, []),
        ({"plan": "pro", "visit_count": {"inc": 2}}, []),
        ({"email": None}, [("country", "unknown_country")]),
    ]


@pytest.mark.parametrize("field, value, target, sent", [
    ("country", "United Kingdom", "country", "GB"),
    ("city", "Zürich", "home_city", "Zürich"),
    ("language", "English", "language", "en"),
    ("platform", "iOS", "platform", "iOS"),
    ("os_name", "android", "os", "android"),
    ("device_model", "iPhone15,2", "device", "iPhone15,2"),
    ("carrier", "T-Mobile", "carrier", "T-Mobile"),
])
def test_top_level_fields_are_a_snapshot_of_that_field(field, value, target, sent):
    assert updates([M(field, target)], {"$set": {"plan": "x"}}, **{field: value}) == MappedUpdates(
        [("$set", target, sent)], [])
    assert updates([M(field, target)], **{field: None}) == MappedUpdates([], [])
    assert updates([M(field, target)]) == MappedUpdates([], [])


def test_other_event_fields_and_nested_paths():
    mappings = [M("event_properties.cart.total", "last_cart_total"), M("user_properties.address.city", "home_city"),
                M("data.first_event", "first_event")]
    e = {"cart": {"total": 12.5}}
    assert updates(mappings, {"address": {"city": "Oslo"}}, event_properties=e, data={"first_event": True}).updates == [
        ("$set", "home_city", "Oslo"), ("$set", "last_cart_total", 12.5), ("$set", "first_event", True)]
    # the flattened spelling Amplitude shows, and operations on nested names
    assert updates(mappings, {"address.city": "Rome"}).updates == [("$set", "home_city", "Rome")]
    assert updates(mappings, {"$set": {"address": {"city": "Bern"}}}).updates == [("$set", "home_city", "Bern")]
    assert updates(mappings, {"$unset": {"address.city": "-"}}).updates == [("$unset", "home_city", None)]


def test_one_source_can_feed_two_braze_names():
    assert updates([M("user_properties.plan", "plan_name")], {"$set": {"plan": "pro"}}, properties=["plan"]).updates \
        == [("$set", "plan", "pro"), ("$set", "plan_name", "pro")]


def test_standard_values_that_cannot_be_made_valid_are_skipped_with_the_reason():
    mappings = [M("user_properties.mail", "email"), M("user_properties.sex", "gender"), M("user_properties.tz", "time_zone"),
                M("user_properties.born", "dob"), M("user_properties.tel", "phone"), M("language", "language")]
    result = updates(mappings, {"mail": "nope", "sex": "female", "tz": "Mars/Base", "born": "05/17/1990", "tel": "555"},
                     language="Klingon")
    assert result == MappedUpdates(
        [("$set", "gender", "F"), ("$set", "dob", "1990-05-17")],
        [("email", "invalid_email"), ("time_zone", "unknown_time_zone"), ("phone", "invalid_phone"),
         ("language", "unknown_language")])


def test_incremental_operations_on_standard_attributes_are_skipped():
    mappings = [M("user_properties.mail", "email"), M("user_properties.n", "first_name")]
    assert updates(mappings, {"$add": {"n": 1}, "$append": {"mail": "x@y.io"}}) == MappedUpdates(
        [], [("first_name", "unsupported_operation"), ("email", "unsupported_operation")])


def test_a_plain_property_named_like_a_standard_attribute_is_formatted_too():
    """Braze reads the key ``country`` as its standard field, whichever way it was selected:
    the one intended change for existing syncs (a value Braze would refuse or that would erase
    the stored country is no longer sent)."""
    assert updates([], {"country": "United States"}, properties=["country"]).updates == [("$set", "country", "US")]
    assert updates([], {"country": "Narnia"}, properties=["country"]) == MappedUpdates([], [("country", "unknown_country")])
    assert updates([], {"country": "US"}, properties=["country"]).updates == selected_updates({"country": "US"},
                                                                                               frozenset({"country"}))


def test_subscription_states_have_no_unset():
    mappings = [M("user_properties.news", "email_subscribe")]
    assert updates(mappings, {"$set": {"news": "Opted In"}}).updates == [("$set", "email_subscribe", "opted_in")]
    assert updates(mappings, {"$unset": {"news": "-"}}) == MappedUpdates([], [("email_subscribe", "invalid_subscription_state")])


class TestClearAll:
    def test_only_user_properties_it_stands_alone_as_before(self):
        assert updates([M("user_properties.Email Address", "email")], {"$clearAll": "-", "$set": {"plan": "x"}},
                       properties=["plan"]).updates == [("$clearAll", "", None)]

    def test_it_leaves_fields_outside_user_properties_to_the_event(self):
        result = updates([M("user_properties.mail", "email"), M("country", "country")], {"$clearAll": "-"},
                         properties=["plan"], country="Germany")
        assert result.updates == [("$unset", "email", None), ("$unset", "plan", None), ("$set", "country", "DE")]
        applied = apply_updates(result.updates, {"p": {"country": [0, 0, "DE"], "plan": [0, 0, "pro"]}},
                                frozenset({"email", "plan", "country"}), 5)
        assert applied.attributes == {"email": None, "plan": None}  # country unchanged: nothing sent for it

    def test_a_subscription_state_is_not_nulled(self):
        result = updates([M("user_properties.news", "push_subscribe")], {"$clearAll": "-"}, properties=["plan"])
        assert result == MappedUpdates([("$unset", "plan", None)], [("push_subscribe", "invalid_subscription_state")])

    def test_no_user_property_names(self):
        assert updates([M("country", "country")], {"$clearAll": "-"}, country="FR").updates == [("$set", "country", "FR")]
        assert UserMappings().updates(event({"$clearAll": "-"})) == MappedUpdates([], [])


def test_junk_around_user_properties_does_not_break_it():
    mappings = UserMappings(["plan"], [M("user_properties.a.b", "ab"), M("country", "country")])
    for props in ({"$set": "plan"}, {"$set": None}, {"$weird": {"plan": 1}}, {"plan": {"$set": 1}}, {"a": "str"},
                  {"a": None}, {"$set": {"a": 5}}):
        mappings.updates(event(props, country=5))  # never raises
    assert mappings.updates({"event_type": "e", "user_properties": None}).updates == []
    assert mappings.updates(event({}, country=5)).skipped == [("country", "unknown_country")]


# ---------------------------------------------------------------------------- events


def test_event_mappings_rename_and_add_fields():
    mappings = EventMappings(["sku"], [M("event_properties.Product Name", "product"), M("platform", "platform"),
                                       M("user_properties.plan", "plan"), M("event_properties.cart.n", "items")])
    e = event({"plan": "pro"}, {"sku": "A1", "Product Name": "Lamp", "cart": {"n": 3}}, platform="Android")
    assert mappings.properties(e) == MappedProperties(
        {"sku": "A1", "product": "Lamp", "platform": "Android", "plan": "pro", "items": 3}, [])


def test_event_mappings_are_sanitized_and_say_what_changed():
    mappings = EventMappings([], [M("event_properties.note", "note"), M("event_properties.missing", "gone"),
                                  M("city", "city")])
    assert mappings.properties(event(event_properties={"note": "n" * 300}, city=None)) == MappedProperties(
        {"note": "n" * 255}, ["truncated_string"])
    assert EventMappings().properties(event(event_properties={"x": 1})) == MappedProperties({}, [])
