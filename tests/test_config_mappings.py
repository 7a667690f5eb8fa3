"""The syncs file's mappings, anonymous identifier and Braze-name rules (issues 12, 16, 17):
what is accepted, what is refused with which message, and the JSON Schema's agreement."""
import json

import pytest

from pipeline.config import AnonymousIdentifier, ConfigError, FieldMapping, Identifier, parse_syncs
from tests.test_config import minimal, problems, validator  # noqa: F401  (validator: the schema fixture)


def users(**section):
    return minimal(users=section)


def events(**section):
    return minimal(events={"select": [{"event_type": "*"}], **section})


def anonymous(anon, **identifier):
    return minimal(identifier={**identifier, "anonymous": anon})


# ---------------------------------------------------------------------------- accepted


def test_mappings_parse_in_file_order_beside_plain_properties():
    (sync,) = parse_syncs(minimal(
        users={"properties": ["plan"], "mappings": [
            {"from": "user_properties.Email Address", "to": "email"},
            {"from": "country", "to": "country"},
            {"from": "user_properties.plan", "to": "plan_name"},  # one source, two Braze names
            {"from": "event_properties.cart.total", "to": "last_cart_total"},
        ]},
        events={"select": [{"event_type": "*"}], "properties": ["sku"], "mappings": [
            {"from": "platform", "to": "platform"}, {"from": "user_properties.plan", "to": "plan"},
        ]},
    ))
    assert sync.users.properties == ("plan",)
    assert sync.users.mappings == (
        FieldMapping("user_properties.Email Address", "email"), FieldMapping("country", "country"),
        FieldMapping("user_properties.plan", "plan_name"), FieldMapping("event_properties.cart.total", "last_cart_total"),
    )
    assert sync.events.mappings == (FieldMapping("platform", "platform"), FieldMapping("user_properties.plan", "plan"))


def test_existing_files_keep_their_meaning_no_mappings_no_anonymous():
    (sync,) = parse_syncs(minimal(users={"properties": ["plan"]}, events={"select": [{"event_type": "*"}]}))
    assert sync.users.mappings == () and sync.events.mappings == () and sync.identifier.anonymous is None


@pytest.mark.parametrize("anon, expected", [
    ({"alias_label": "amp_device"}, AnonymousIdentifier("user_alias", "device_id", "amp_device")),
    ({"type": "user_alias", "source": "user_properties.anon_id", "alias_label": "anon"},
     AnonymousIdentifier("user_alias", "user_properties.anon_id", "anon")),
])
def test_anonymous_identifier_defaults(anon, expected):
    (sync,) = parse_syncs(anonymous(anon))
    assert sync.identifier == Identifier("external_id", "user_id", None, expected)


@pytest.mark.parametrize("to", ["first_name", "last_name", "email", "phone", "gender", "dob", "country", "language",
                                "home_city", "time_zone", "email_subscribe", "push_subscribe", "Email Address",
                                "name", "time", "app_id", "properties", "x" * 255])
def test_attribute_names_braze_takes(to):
    """Standard attributes in lower case and any custom name; an attribute object has no
    name/time/app_id/properties fields, so those are ordinary custom attributes."""
    assert parse_syncs(users(mappings=[{"from": "user_properties.a", "to": to}]))[0].users.mappings[0].target == to


def test_purchase_keys_are_plain_property_names_while_purchases_is_off():
    (sync,) = parse_syncs(events(mappings=[{"from": "event_properties.p", "to": "price"}]))
    assert sync.events.mappings == (FieldMapping("event_properties.p", "price"),)


# ---------------------------------------------------------------------------- refused


U = "syncs[0].users"
E = "syncs[0].events"
I = "syncs[0].identifier"  # noqa: E741


@pytest.mark.parametrize("document, expected", [
    # users.properties: never a Braze identifier or control field (issue 12)
    (users(properties=["plan", "external_id", "braze_id", "user_alias", "_update_existing_only", "_merge_objects",
                       "push_token_import", "push_tokens", "$amplitude_braze"]), [
        f"{U}.properties[1]: 'external_id' is a Braze identifier, not an attribute: the sync's identifier sets it, "
        "and an attribute of that name would retarget the object",
        f"{U}.properties[2]: 'braze_id' is a Braze identifier, not an attribute: the sync's identifier sets it, "
        "and an attribute of that name would retarget the object",
        f"{U}.properties[3]: 'user_alias' is a Braze identifier, not an attribute: the sync's identifier sets it, "
        "and an attribute of that name would retarget the object",
        f"{U}.properties[4]: '_update_existing_only' is a Braze control field, not an attribute",
        f"{U}.properties[5]: '_merge_objects' is a Braze control field, not an attribute",
        f"{U}.properties[6]: 'push_token_import' is a Braze control field, not an attribute",
        f"{U}.properties[7]: 'push_tokens' needs a structure this job does not build; it cannot be sent from an "
        "Amplitude field",
        f"{U}.properties[8]: Braze refuses names that start with '$'",
    ]),
    # mapping entries
    (users(mappings="email"), [f"{U}.mappings: must be a list of {{from, to}} entries, got string"]),
    (users(mappings=[{"from": "country"}]), [f"{U}.mappings[0].to: required"]),
    (users(mappings=[{"form": "country", "to": "country"}]), [
        f"{U}.mappings[0].from: required", f"{U}.mappings[0].form: unknown key (did you mean 'from'?)"]),
    (users(mappings=[{"from": "country", "to": "country", "format": "iso"}]), [
        f"{U}.mappings[0].format: unknown key (did you mean 'from'?)"]),
    (users(mappings=["country"]), [f"{U}.mappings[0]: must be a mapping, got string"]),
    (users(mappings=[{"from": "", "to": "x"}]), [f"{U}.mappings[0].from: must not be empty"]),
    (users(mappings=[{"from": "user_properties..x", "to": "x"}]), [
        f"{U}.mappings[0].from: must be a field name or dotted path with no empty part"]),
    (users(mappings=[{"from": 3, "to": "x"}]), [f"{U}.mappings[0].from: must be a string, got number"]),
    (users(mappings=[{"from": "user_properties", "to": "x"}]), [
        f"{U}.mappings[0].from: names the whole user_properties object; name one property, e.g. user_properties.plan"]),
    (users(mappings=[{"from": "event_properties", "to": "x"}]), [
        f"{U}.mappings[0].from: names the whole event_properties object; name one property, e.g. event_properties.plan"]),
    (users(mappings=[{"from": "plan", "to": "plan"}]), [
        f"{U}.mappings[0].from: 'plan' is Amplitude's tracking-plan object (plan.branch, plan.source, plan.version); "
        "for a user property write 'user_properties.plan'"]),
    (users(mappings=[{"from": "Email Address", "to": "email"}]), [
        f"{U}.mappings[0].from: 'Email Address' is not a field of an Amplitude event (did you mean "
        "'user_properties.Email Address'? Properties are under user_properties. or event_properties.)"]),
    (users(mappings=[{"from": "contry", "to": "country"}]), [
        f"{U}.mappings[0].from: 'contry' is not a field of an Amplitude event (did you mean 'country'? "
        "Properties are under user_properties. or event_properties.)"]),
    (users(mappings=[{"from": "user_propertes.email", "to": "email"}]), [
        f"{U}.mappings[0].from: 'user_propertes' is not a field of an Amplitude event (did you mean "
        "'user_properties.email'? Properties are under user_properties. or event_properties.)"]),
    # attribute targets
    (users(mappings=[{"from": "country", "to": t} for t in ("external_id", "_update_existing_only", "subscription_groups")]), [
        f"{U}.mappings[0].to: 'external_id' is a Braze identifier, not an attribute: the sync's identifier sets it, "
        "and an attribute of that name would retarget the object",
        f"{U}.mappings[1].to: '_update_existing_only' is a Braze control field, not an attribute",
        f"{U}.mappings[2].to: 'subscription_groups' needs a structure this job does not build; it cannot be sent "
        "from an Amplitude field",
    ]),
    (users(mappings=[{"from": "user_properties.a", "to": t} for t in ("Email", "First Name", "firstName", "TIME_ZONE")]), [
        f"{U}.mappings[{i}].to: did you mean '{std}'? Braze knows its standard attributes only by their lower-case "
        "names; another spelling would be a separate custom attribute"
        for i, std in enumerate(("email", "first_name", "first_name", "time_zone"))
    ]),
    (users(mappings=[{"from": "city", "to": "$city"}, {"from": "city", "to": "c" * 256}]), [
        f"{U}.mappings[0].to: Braze refuses names that start with '$'",
        f"{U}.mappings[1].to: is 256 characters long; Braze takes at most 255",
    ]),
    # one source per Braze field
    (users(properties=["email"], mappings=[{"from": "user_properties.Email Address", "to": "email"}]), [
        f"{U}.mappings[0].to: 'email' is already fed by {U}.properties[0] (one Braze field takes one source)"]),
    (users(mappings=[{"from": "city", "to": "home_city"}, {"from": "user_properties.city", "to": "home_city"}]), [
        f"{U}.mappings[1].to: 'home_city' is already fed by {U}.mappings[0] (one Braze field takes one source)"]),
    # event property targets
    (events(mappings=[{"from": "platform", "to": t} for t in ("time", "event_name", "name", "app_id", "properties",
                                                             "external_id", "_update_existing_only")]), [
        f"{E}.mappings[0].to: Braze reserves 'time' in event properties",
        f"{E}.mappings[1].to: Braze reserves 'event_name' in event properties",
        *[f"{E}.mappings[{i}].to: '{t}' is a field of the Braze event object itself; a mapping only names a property "
          "inside 'properties' (choose another name)"
          for i, t in enumerate(("name", "app_id", "properties", "external_id", "_update_existing_only"), 2)],
    ]),
    (events(purchases=True, mappings=[{"from": "event_properties.p", "to": t}
                                      for t in ("product_id", "currency", "price", "quantity")]), [
        f"{E}.mappings[{i}].to: Braze reserves '{t}' in purchase properties (events.purchases is true)"
        for i, t in enumerate(("product_id", "currency", "price", "quantity"))
    ]),
    (events(properties=["sku"], mappings=[{"from": "event_properties.product", "to": "sku"}]), [
        f"{E}.mappings[0].to: 'sku' is already fed by {E}.properties[0] (one Braze field takes one source)"]),
    (events(mappings=[{"from": "event_properties.x", "to": "$x"}]), [f"{E}.mappings[0].to: Braze refuses names that start with '$'"]),
    # anonymous users
    (anonymous({}), [f"{I}.anonymous.alias_label: required"]),
    (anonymous({"alias_label": ""}), [f"{I}.anonymous.alias_label: must not be empty"]),
    (anonymous({"alias_label": "a", "type": "external_id"}), [
        f"{I}.anonymous.type: unknown anonymous identifier type 'external_id' (expected one of: user_alias)"]),
    (anonymous({"alias_label": "a", "type": "alias"}), [
        f"{I}.anonymous.type: unknown anonymous identifier type 'alias' (did you mean 'user_alias'?)"]),
    (anonymous({"alias_label": "a", "source": "user_id"}), [
        f"{I}.anonymous.source: must differ from identifier.source ('user_id')"]),
    (anonymous({"alias_label": "a", "source": "a..b"}), [
        f"{I}.anonymous.source: must be a field name or dotted path with no empty part"]),
    (anonymous({"alias_label": "a", "alias_lable": "x"}), [
        f"{I}.anonymous.alias_lable: unknown key (did you mean 'alias_label'?)"]),
    (anonymous("device_id"), [f"{I}.anonymous: must be a mapping, got string"]),
    (anonymous({"alias_label": "a"}, type="user_alias", alias_label="amp"), [
        f"{I}.anonymous: only allowed when type is external_id (type is 'user_alias'): Braze's /users/identify "
        "merges an alias profile into an external_id profile"]),
    ({"syncs": [{**minimal()["syncs"][0], "identifier": {"anonymous": {"alias_label": "a"}},
                 "users": {"update_existing_only": True}}]}, [
        f"{I}.anonymous: not allowed with users.update_existing_only: true (Braze would never create the alias "
        "profiles anonymous events go to)"]),
    # "did you mean" for identifier types and operators (issue 16)
    (minimal(identifier={"type": "externalid"}), [
        f"{I}.type: unknown identifier type 'externalid' (did you mean 'external_id'?)"]),
    (minimal(identifier={"type": "email"}), [
        f"{I}.type: unknown identifier type 'email' (expected one of: external_id, braze_id, user_alias)"]),
])
def test_problems(document, expected):
    assert problems(document) == expected


@pytest.mark.parametrize("op, hint", [
    ("gt", "greater_than"), (">=", "greater_or_equal"), ("lte", "less_or_equal"), ("eq", "is"), ("!=", "is_not"),
    ("exists", "is_set"), ("greaterthan", "greater_than"), ("startswith", "starts_with"), ("is_null", "is_not_set"),
    ("not_null", "is_set"),
    ("not_contains", "does_not_contain"),
])
def test_unknown_operator_says_what_was_meant(op, hint):
    document = minimal(events={"select": [{"event_type": "a", "where": [{"property": "x", "op": op, "value": 1}]}]})
    assert problems(document) == [f"syncs[0].events.select[0].where[0].op: unknown operator {op!r} (did you mean {hint!r}?)"]


def test_unknown_operator_without_a_close_one_lists_them_all():
    document = minimal(events={"select": [{"event_type": "a", "where": [{"property": "x", "op": "zzz", "value": 1}]}]})
    (found,) = problems(document)
    assert found.endswith("unknown operator 'zzz' (expected one of: is, is_not, contains, does_not_contain, "
                          "starts_with, greater_than, greater_or_equal, less_than, less_or_equal, is_set, is_not_set)")


# ---------------------------------------------------------------------------- JSON Schema


AGREEMENT_INVALID = [
    users(properties=["external_id"]),
    users(properties=["$x"]),
    users(mappings=[{"from": "country"}]),
    users(mappings=[{"from": "country", "to": "country", "x": 1}]),
    users(mappings=[{"from": "a..b", "to": "x"}]),
    users(mappings=[{"from": "country", "to": ""}]),
    users(mappings=[{"from": "country", "to": "braze_id"}]),
    users(mappings=[{"from": "country", "to": "$c"}]),
    users(mappings=[{"from": "country", "to": "c" * 256}]),
    users(mappings={"from": "country", "to": "country"}),
    events(mappings=[{"from": "platform", "to": "time"}]),
    events(mappings=[{"from": "platform", "to": "name"}]),
    events(purchases=True, mappings=[{"from": "event_properties.p", "to": "price"}]),
    anonymous({}),
    anonymous({"alias_label": "a", "type": "braze_id"}),
    anonymous({"alias_label": "a", "extra": 1}),
    anonymous({"alias_label": "a"}, type="braze_id"),
    anonymous({"alias_label": "a"}, type="user_alias", alias_label="l"),
    {"syncs": [{**minimal()["syncs"][0], "identifier": {"anonymous": {"alias_label": "a"}},
                "users": {"update_existing_only": True}}]},
]

AGREEMENT_VALID = [
    users(properties=["plan"], mappings=[{"from": "user_properties.Email Address", "to": "email"}]),
    users(mappings=[{"from": "event_properties.a b.c", "to": "time"}]),
    events(mappings=[{"from": "event_properties.p", "to": "price"}]),
    events(purchases=True, mappings=[{"from": "event_properties.p", "to": "unit_price"}]),
    anonymous({"alias_label": "a"}),
    anonymous({"alias_label": "a", "source": "user_properties.anon"}, type="external_id", source="user_id"),
]

# What a schema cannot say; only the loader refuses these.
KNOWN_DISAGREEMENTS = [
    users(mappings=[{"from": "tier", "to": "tier"}]),  # 'tier' is not an Amplitude event field
    users(mappings=[{"from": "country", "to": "Country"}]),  # a near miss of a standard attribute
    users(properties=["email"], mappings=[{"from": "user_properties.e", "to": "email"}]),  # two sources, one field
    anonymous({"alias_label": "a", "source": "user_id"}),  # the same field as the identifier
]


@pytest.mark.parametrize("document", AGREEMENT_INVALID, ids=lambda d: json.dumps(d)[60:140])
def test_schema_and_parser_agree_on_invalid(validator, document):
    assert list(validator.iter_errors(document)), "schema accepted it"
    with pytest.raises(ConfigError):
        parse_syncs(document)


@pytest.mark.parametrize("document", AGREEMENT_VALID, ids=lambda d: json.dumps(d)[60:140])
def test_schema_and_parser_agree_on_valid(validator, document):
    assert list(validator.iter_errors(document)) == []
    parse_syncs(document)


@pytest.mark.parametrize("document", KNOWN_DISAGREEMENTS, ids=lambda d: json.dumps(d)[60:140])
def test_known_disagreements(validator, document):
    assert list(validator.iter_errors(document)) == []
    with pytest.raises(ConfigError):
        parse_syncs(document)
