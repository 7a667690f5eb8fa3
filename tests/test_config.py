"""The syncs file: loading, validation (every problem, with its path) and the JSON Schema."""
import copy
import io
import json
import os
import pickle

import jsonschema
import pytest
import yaml

from pipeline import config
from pipeline.config_mappings import MAPPING_KEYS
from pipeline.config import (
    AnonymousIdentifier, Condition, ConfigError, EventSelector, EventSettings, FieldMapping, Identifier, Sync,
    UserSettings, enabled_syncs, load_syncs, loads_syncs, parse_syncs, shadow_syncs,
)

DATA = os.path.join(os.path.dirname(__file__), "data")
SCHEMA_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "pipeline", "syncs.schema.json")
FAKE_KEY = "sk-live-1234567890abcdef"
FIX = config._ENDPOINT_FIX  # the "how to fix it" tail of every refused-endpoint message

# Written out here, not taken from config.ALLOWED_ENDPOINTS, so a typo in the constant fails.
BRAZE_ENDPOINTS = [
    "https://rest.iad-01.braze.com", "https://rest.iad-02.braze.com", "https://rest.iad-03.braze.com",
    "https://rest.iad-04.braze.com", "https://rest.iad-05.braze.com", "https://rest.iad-06.braze.com",
    "https://rest.iad-07.braze.com", "https://rest.iad-08.braze.com", "https://rest.us-10.braze.com",
    "https://rest.fra-01.braze.eu", "https://rest.fra-02.braze.eu", "https://rest.au-01.braze.com",
    "https://rest.id-01.braze.com", "https://rest.jp-01.braze.com", "https://rest.kr-01.braze.com",
]

EXPECTED_VALID = (
    Sync(
        name="us-prod",
        endpoint="https://rest.iad-01.braze.com",  # trailing slash stripped
        api_key="env:BRAZE_API_KEY",
        enabled=True,
        app_id="00000000-0000-0000-0000-000000000000",
        identifier=Identifier(type="external_id", source="user_id", alias_label=None,
                              anonymous=AnonymousIdentifier("user_alias", "device_id", "amplitude_device_id")),
        users=UserSettings(enabled=True, properties=("plan", "country"), update_existing_only=False, mappings=(
            FieldMapping("user_properties.Email Address", "email"), FieldMapping("city", "home_city"),
            FieldMapping("language", "language"),
        )),
        events=EventSettings(
            enabled=True,
            select=(
                EventSelector(
                    event_type="Order Completed",
                    where=(
                        Condition("event_properties.total", "greater_than", 0),
                        Condition("platform", "is", ("iOS", "Android")),
                        Condition("user_properties.email", "is_set", None),
                    ),
                ),
                EventSelector(event_type="*", where=(Condition("event_properties.campaign", "starts_with", "spring"),)),
            ),
            properties=("total", "sku"),
            mappings=(FieldMapping("platform", "platform"), FieldMapping("event_properties.cart.item_count", "items")),
        ),
    ),
    Sync(
        name="eu_staging",
        endpoint="https://rest.fra-02.braze.eu",
        api_key="projects/my-project/secrets/braze-eu/versions/latest",
        enabled=False,
        app_id=None,
        identifier=Identifier(type="user_alias", source="user_properties.crm_id", alias_label="amplitude"),
        users=UserSettings(enabled=True, properties=("plan",), update_existing_only=True),
        events=EventSettings(enabled=False, select=(), properties=()),
    ),
)


def minimal(**overrides):
    sync = {"name": "s", "endpoint": "https://rest.iad-01.braze.com", "api_key": "env:K"}
    sync.update(overrides)
    return {"syncs": [sync]}


def problems(document, **kwargs):
    with pytest.raises(ConfigError) as info:
        parse_syncs(document, **kwargs)
    return info.value.problems


@pytest.fixture(scope="module")
def validator():
    with open(SCHEMA_PATH) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# ---------------------------------------------------------------------------- loading


def test_valid_yaml_loads_into_exact_dataclasses():
    assert load_syncs(os.path.join(DATA, "syncs_valid.yaml")) == EXPECTED_VALID


def test_valid_json_loads():
    (sync,) = load_syncs(os.path.join(DATA, "syncs_valid.json"))
    assert sync == Sync(
        name="us-prod", endpoint="https://rest.iad-01.braze.com", api_key="env:BRAZE_API_KEY",
        events=EventSettings(enabled=True, select=(EventSelector("*"),), properties=("total",)),
    )
    assert sync.users == UserSettings(enabled=False) and sync.identifier == Identifier()


def test_yaml_and_json_give_the_same_result(tmp_path):
    with open(os.path.join(DATA, "syncs_valid.yaml")) as f:
        document = yaml.safe_load(f)
    as_json = tmp_path / "syncs.json"
    as_json.write_text(json.dumps(document))
    assert load_syncs(str(as_json)) == EXPECTED_VALID
    assert parse_syncs(document) == EXPECTED_VALID


@pytest.mark.parametrize("text", [json.dumps(minimal()), yaml.safe_dump(minimal())])
def test_format_is_sniffed_without_an_extension(tmp_path, text):
    path = tmp_path / "syncs"
    path.write_text(text)
    assert load_syncs(str(path))[0].name == "s"


def test_loads_syncs_accepts_bytes_with_bom():
    assert loads_syncs(b"\xef\xbb\xbf" + json.dumps(minimal()).encode())[0].name == "s"


def test_gs_uri_is_read_through_beam_filesystems(monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    opened = []

    def fake_open(path, *args, **kwargs):
        opened.append(path)
        return io.BytesIO(yaml.safe_dump(minimal()).encode())

    monkeypatch.setattr(FileSystems, "open", staticmethod(fake_open))
    assert load_syncs("gs://bucket/env/syncs.yaml")[0].name == "s"
    assert opened == ["gs://bucket/env/syncs.yaml"]


def test_gs_uri_not_found(monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    class NotFound(Exception):  # the name google.api_core uses
        pass

    def fake_open(path, *args, **kwargs):
        raise NotFound("404 No such object")

    monkeypatch.setattr(FileSystems, "open", staticmethod(fake_open))
    with pytest.raises(ConfigError) as info:
        load_syncs("gs://bucket/missing.yaml")
    assert info.value.problems == ["(document): file not found: gs://bucket/missing.yaml"]


def test_missing_file_names_the_path(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_syncs(path)
    assert info.value.problems == [f"(document): file not found: {path}"]
    assert str(info.value).startswith(f"{path}: 1 problem(s):")


def test_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_syncs(str(tmp_path))
    assert info.value.problems == [f"(document): is a directory, not a file: {tmp_path}"]


@pytest.mark.parametrize("name", ["syncs_empty.yaml"])
def test_empty_file(name):
    with pytest.raises(ConfigError) as info:
        load_syncs(os.path.join(DATA, name))
    assert info.value.problems == ["(document): the file is empty (expected a mapping with a 'syncs' list)"]


@pytest.mark.parametrize("text", ["", "   \n\n", "# only a comment\n", "---\n"])
def test_empty_text(text):
    with pytest.raises(ConfigError) as info:
        loads_syncs(text, format="yaml")
    assert info.value.problems == ["(document): the file is empty (expected a mapping with a 'syncs' list)"]


def test_yaml_syntax_error_reports_line_and_column():
    with pytest.raises(ConfigError) as info:
        load_syncs(os.path.join(DATA, "syncs_syntax_error.yaml"))
    assert info.value.problems == [
        "line 4, column 12: YAML syntax error: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at line 3, column 15)"
    ]


def test_json_syntax_error_reports_line_and_column():
    with pytest.raises(ConfigError) as info:
        loads_syncs('{\n  "syncs": [1,]\n}', format="json")
    assert info.value.problems == ["line 2, column 15: JSON syntax error: Expecting value"]


def test_yaml_refuses_python_tags():
    with pytest.raises(ConfigError) as info:
        loads_syncs("syncs: !!python/object/apply:os.system ['true']\n")
    assert info.value.problems[0].startswith("line 1, column 8: YAML syntax error: could not determine a constructor")


def test_duplicate_keys_are_reported():
    text = "syncs:\n  - name: a\n    name: b\n    endpoint: https://rest.iad-01.braze.com\n    api_key: env:K\n"
    with pytest.raises(ConfigError) as info:
        loads_syncs(text)
    assert info.value.problems == ["line 3, column 5: duplicate key 'name'"]
    with pytest.raises(ConfigError) as info:
        loads_syncs('{"syncs": [], "syncs": []}')
    assert info.value.problems[0] == "(document): duplicate key 'syncs'"


def test_yaml_merge_keys_are_not_duplicates():
    text = """
syncs:
  - &base {name: a, endpoint: "https://rest.iad-01.braze.com", api_key: "env:K"}
  - <<: *base
    name: b
"""
    assert [s.name for s in loads_syncs(text)] == ["a", "b"]


# ---------------------------------------------------------------------------- validation


def test_many_errors_are_all_reported_with_their_paths():
    with pytest.raises(ConfigError) as info:
        load_syncs(os.path.join(DATA, "syncs_many_errors.yaml"))
    assert info.value.problems == [
        "syncs[0].evnts: unknown key (did you mean 'events'?)",
        "syncs[0].name: must be 1-64 letters, digits, '-' or '_'",
        "syncs[0].enabled: must be true or false, got string",
        "syncs[0].endpoint: must use https; " + FIX,
        "syncs[0].api_key: must be a reference (env:NAME or projects/P/secrets/S/versions/V), not a key",
        "syncs[0].app_id: must be a string, got number",
        "syncs[0].identifier.alias_label: required when type is user_alias",
        "syncs[0].users.properties[1]: duplicate 'plan'",
        "syncs[0].users.properties[2]: must not be empty",
        "syncs[0].users.properties[3]: 'external_id' is a Braze identifier, not an attribute: the sync's identifier "
        "sets it, and an attribute of that name would retarget the object",
        "syncs[0].users.mappings[0].from: 'tier' is not a field of an Amplitude event (did you mean "
        "'user_properties.tier'? Properties are under user_properties. or event_properties.)",
        "syncs[0].users.mappings[0].to: did you mean 'email'? Braze knows its standard attributes only by their "
        "lower-case names; another spelling would be a separate custom attribute",
        "syncs[0].users.mappings[1].to: 'plan' is already fed by syncs[0].users.properties[0] "
        "(one Braze field takes one source)",
        "syncs[0].users.mappings[2].from: required",
        "syncs[0].users.mappings[2].frm: unknown key (did you mean 'from'?)",
        "syncs[0].users.update_existing_only: must be true or false, got number",
        "syncs[0].events.select[0].where[0].op: unknown operator 'gt' (did you mean 'greater_than'?)",
        "syncs[0].events.select[0].where[1].value: must be a number with greater_than, got string",
        "syncs[0].events.select[0].where[2].value: not allowed with is_set",
        "syncs[0].events.select[0].where[3].value: required with contains",
        "syncs[0].events.select[0].where[4].property: must be a field name or dotted path with no empty part",
        "syncs[0].events.select[0].where[4].value: must be a string, number or boolean (or a list of them), got mapping",
        "syncs[0].events.select[1].event_type: required",
        "syncs[1].identifier.alias_label: only allowed when type is user_alias (type is 'braze_id')",
        "syncs[1].identifier.anonymous: only allowed when type is external_id (type is 'braze_id'): Braze's "
        "/users/identify merges an alias profile into an external_id profile",
        "syncs[1].identifier.anonymous.source: must differ from identifier.source ('user_id')",
        "syncs[1].events.select: must not be empty when events are enabled (list the events to send, or event_type '*')",
        "syncs[1].events.mappings[0].to: Braze reserves 'time' in event properties",
        "syncs[2].name: duplicate name 'dup' (also syncs[1])",
        "syncs[2].endpoint: host 'example.com' is not a Braze REST endpoint; " + FIX,
        "syncs[3]: must be a mapping, got string",
    ]
    assert FAKE_KEY not in str(info.value)
    assert str(info.value).startswith(os.path.join(DATA, "syncs_many_errors.yaml") + ": 31 problem(s):\n  syncs[0].evnts")


@pytest.mark.parametrize(
    "document, expected",
    [
        ([], ["(document): must be a mapping with a 'syncs' list, got list"]),
        ("syncs", ["(document): must be a mapping with a 'syncs' list, got string"]),
        (None, ["(document): the file is empty (expected a mapping with a 'syncs' list)"]),
        ({}, ["syncs: required"]),
        ({"syncs": []}, ["syncs: at least one sync is required"]),
        ({"syncs": {"name": "a"}}, ["syncs: must be a list of syncs, got mapping"]),
        ({"syncs": None}, ["syncs: must be a list of syncs, got null"]),
        ({"sync": []}, ["syncs: required", "sync: unknown key (did you mean 'syncs'?)"]),
        ({"$schema": 1, "syncs": [{}]}, [
            "$schema: must be a string, got number",
            "syncs[0].name: required", "syncs[0].endpoint: required", "syncs[0].api_key: required",
        ]),
        (minimal(colour="red"), [
            "syncs[0].colour: unknown key (expected one of: name, enabled, mode, endpoint, api_key, app_id, "
            "identifier, users, events)"
        ]),
        (minimal(name=""), ["syncs[0].name: must not be empty"]),
        (minimal(name="x" * 65), ["syncs[0].name: must be 1-64 letters, digits, '-' or '_'"]),
        (minimal(name=7), ["syncs[0].name: must be a string, got number"]),
        (minimal(enabled=1), ["syncs[0].enabled: must be true or false, got number"]),
        (minimal(app_id=""), ["syncs[0].app_id: must not be empty"]),
        (minimal(app_id=None), ["syncs[0].app_id: must be a string, got null"]),
        (minimal(identifier="user_id"), ["syncs[0].identifier: must be a mapping, got string"]),
        (minimal(identifier={"type": "email"}), [
            "syncs[0].identifier.type: unknown identifier type 'email' (expected one of: external_id, braze_id, user_alias)"
        ]),
        (minimal(identifier={"alias_label": "a"}), [
            "syncs[0].identifier.alias_label: only allowed when type is user_alias (type is 'external_id')"
        ]),
        (minimal(identifier={"source": "user_properties."}), [
            "syncs[0].identifier.source: must be a field name or dotted path with no empty part"
        ]),
        (minimal(identifier={"type": "user_alias", "alias_label": ""}), [
            "syncs[0].identifier.alias_label: must not be empty"
        ]),
        (minimal(users=None), ["syncs[0].users: must be a mapping, got null"]),
        (minimal(users={"properties": "plan"}), ["syncs[0].users.properties: must be a list of strings, got string"]),
        (minimal(users={"properties": [1]}), ["syncs[0].users.properties[0]: must be a string, got number"]),
        (minimal(users={"update_only": True}), [
            "syncs[0].users.update_only: unknown key (did you mean 'update_existing_only'?)"
        ]),
        (minimal(events={}), [
            "syncs[0].events.select: required when events are enabled (list the events to send, or event_type '*')"
        ]),
        (minimal(events={"select": "*"}), ["syncs[0].events.select: must be a list of event selectors, got string"]),
        (minimal(events={"select": [{"event_type": "a", "where": {}}]}), [
            "syncs[0].events.select[0].where: must be a list of conditions, got mapping"
        ]),
        (minimal(events={"select": [{"event_type": ""}]}), ["syncs[0].events.select[0].event_type: must not be empty"]),
        (minimal(events={"select": [{"event_type": "a", "where": [{"prop": "x", "op": "is_set"}]}]}), [
            "syncs[0].events.select[0].where[0].property: required",
            "syncs[0].events.select[0].where[0].prop: unknown key (did you mean 'property'?)",
        ]),
        (minimal(events={"select": [{"event_type": "a", "where": [{"property": "x", "op": ["is"]}]}]}), [
            "syncs[0].events.select[0].where[0].op: must be a string, got list"
        ]),
        (minimal(events={"select": [{"event_type": "a", "where": [{"property": "x"}]}]}), [
            "syncs[0].events.select[0].where[0].op: required"
        ]),
        (minimal(events={"select": [{"event_type": "a", "where": [{"property": "x", "op": "is", "value": []}]}]}), [
            "syncs[0].events.select[0].where[0].value: must not be an empty list"
        ]),
        (minimal(events={"select": [{"event_type": "a", "where": [
            {"property": "x", "op": "is_not", "value": ["a", None, [1]]}]}]}), [
            "syncs[0].events.select[0].where[0].value[1]: must be a string, number or boolean, got null; "
            "use is_set / is_not_set to test for presence",
            "syncs[0].events.select[0].where[0].value[2]: must be a string, number or boolean, got list",
        ]),
        (minimal(events={"select": [{"event_type": "a", "where": [{"property": "x", "op": "is", "value": None}]}]}), [
            "syncs[0].events.select[0].where[0].value: must be a string, number or boolean (or a list of them), "
            "got null; use is_set / is_not_set to test for presence"
        ]),
        (minimal(events={"select": [{"event_type": "a", "where": [{"property": "x", "op": "contains", "value": 1}]}]}), [
            "syncs[0].events.select[0].where[0].value: must be a string with contains, got number"
        ]),
        (minimal(events={"select": [{"event_type": "a", "where": [{"property": "x", "op": "starts_with", "value": ""}]}]}), [
            "syncs[0].events.select[0].where[0].value: must not be empty"
        ]),
        (minimal(events={"select": [{"event_type": "a", "where": [{"property": "x", "op": "less_than", "value": True}]}]}), [
            "syncs[0].events.select[0].where[0].value: must be a number with less_than, got boolean"
        ]),
        (minimal(events={"select": [{"event_type": "a", "where": [
            {"property": "x", "op": "less_than", "value": float("nan")}]}]}), [
            "syncs[0].events.select[0].where[0].value: must be a number with less_than, got a non-finite number"
        ]),
        (minimal(events={"select": [{"event_type": "a", "where": [{"property": "x", "op": "is_not_set", "value": None}]}]}), [
            "syncs[0].events.select[0].where[0].value: not allowed with is_not_set"
        ]),
        (minimal(events={"properties": ["a", "a"], "select": [{"event_type": "*"}]}), [
            "syncs[0].events.properties[1]: duplicate 'a'"
        ]),
    ],
)
def test_problems(document, expected):
    assert problems(document) == expected


def test_events_disabled_needs_no_select():
    (sync,) = parse_syncs(minimal(events={"enabled": False, "properties": ["a"]}))
    assert sync.events == EventSettings(enabled=False, select=(), properties=("a",))


def test_disabled_events_are_still_validated():
    assert problems(minimal(events={"enabled": False, "select": [{"event_type": "a", "where": [{"property": "x", "op": "gt"}]}]})) == [
        "syncs[0].events.select[0].where[0].op: unknown operator 'gt' (did you mean 'greater_than'?)"
    ]


def test_defaults():
    (sync,) = parse_syncs(minimal(users={}, events={"select": [{"event_type": "Signup"}]}))
    assert sync == Sync(
        name="s", endpoint="https://rest.iad-01.braze.com", api_key="env:K", enabled=True, app_id=None,
        identifier=Identifier("external_id", "user_id", None),
        users=UserSettings(enabled=True, properties=(), update_existing_only=False),
        events=EventSettings(enabled=True, select=(EventSelector("Signup", ()),), properties=()),
    )
    (bare,) = parse_syncs(minimal())
    assert bare.users.enabled is False and bare.events.enabled is False


def test_every_operator_is_accepted_with_its_value():
    where = [
        {"property": "event_type", "op": "is", "value": "a"},
        {"property": "user_id", "op": "is_not", "value": ["a", 1, 2.5, True]},
        {"property": "event_properties.x", "op": "contains", "value": "a"},
        {"property": "event_properties.x", "op": "does_not_contain", "value": "a"},
        {"property": "event_properties.x", "op": "starts_with", "value": "a"},
        {"property": "event_properties.n", "op": "greater_than", "value": 1},
        {"property": "event_properties.n", "op": "greater_or_equal", "value": 1.5},
        {"property": "event_properties.n", "op": "less_than", "value": -1},
        {"property": "event_properties.n", "op": "less_or_equal", "value": 0},
        {"property": "user_properties.a.b", "op": "is_set"},
        {"property": "user_properties.a", "op": "is_not_set"},
    ]
    assert sorted({w["op"] for w in where}) == sorted(config.OPERATORS)
    (sync,) = parse_syncs(minimal(events={"select": [{"event_type": "*", "where": where}]}))
    assert sync.events.select[0].where[1] == Condition("user_id", "is_not", ("a", 1, 2.5, True))
    assert sync.events.select[0].where[9] == Condition("user_properties.a.b", "is_set", None)


def test_dataclasses_are_hashable_and_picklable():
    syncs = load_syncs(os.path.join(DATA, "syncs_valid.yaml"))
    assert len({*syncs}) == 2
    assert pickle.loads(pickle.dumps(syncs)) == syncs


def test_enabled_syncs():
    syncs = load_syncs(os.path.join(DATA, "syncs_valid.yaml"))
    assert enabled_syncs(syncs) == (syncs[0],)
    assert enabled_syncs(()) == ()


def test_parse_does_not_modify_the_document():
    document = minimal(events={"select": [{"event_type": "*", "where": [{"property": "x", "op": "is", "value": [1]}]}]})
    before = copy.deepcopy(document)
    parse_syncs(document)
    assert document == before


# ---------------------------------------------------------------------------- api_key


@pytest.mark.parametrize("ref", ["env:BRAZE_API_KEY", "env:_k9", "projects/p-1/secrets/braze/versions/3",
                                 "projects/p/secrets/s/versions/latest"])
def test_api_key_references_accepted(ref):
    assert parse_syncs(minimal(api_key=ref))[0].api_key == ref


@pytest.mark.parametrize("value", [
    FAKE_KEY, "env:", "env:1ABC", "env:A-B", "ENV:KEY", " env:KEY", "env:KEY\n",
    "projects/p/secrets/s", "projects/p/secrets/s/versions/", "projects//secrets/s/versions/1",
    "projects/p/secrets/s/versions/1/extra", f"env:{FAKE_KEY}",
])
def test_api_key_must_be_a_reference_and_is_never_echoed(value):
    found = problems(minimal(api_key=value))
    assert found == ["syncs[0].api_key: must be a reference (env:NAME or projects/P/secrets/S/versions/V), not a key"]


def test_api_key_of_wrong_type():
    assert problems(minimal(api_key=12345)) == [
        "syncs[0].api_key: must be a string, got number; it must be a reference (env:NAME or "
        "projects/P/secrets/S/versions/V), not a key"
    ]


@pytest.mark.parametrize("text", [
    f"syncs:\n  - name: a\n    endpoint: https://rest.iad-01.braze.com\n    api_key: {FAKE_KEY}\n",
    f"syncs:\n  - name: a\n    api_key: {FAKE_KEY}: x\n",  # YAML syntax error on the key's line
    f"syncs:\n  - name: a\n    api_key: \"{FAKE_KEY}\n",  # unterminated string
    f'{{"syncs": [{{"name": "a", "api_key": "{FAKE_KEY}" "x"}}]}}',  # JSON syntax error
    f"syncs:\n  - name: a\n    endpoint: https://user:{FAKE_KEY}@rest.iad-01.braze.com\n    api_key: env:K\n",
    f"syncs:\n  - name: a\n    endpoint: https://rest.iad-01.braze.com?api_key={FAKE_KEY}\n    api_key: env:K\n",
    f"syncs:\n  - name: a\n    endpoint: http://x:{FAKE_KEY}@127.0.0.1:1\n    api_key: env:K\n",
])
def test_a_key_never_reaches_the_error_message(text):
    with pytest.raises(ConfigError) as info:
        loads_syncs(text, allow_insecure_endpoints="http://x" in text)
    message = str(info.value)
    assert FAKE_KEY not in message and "1234567890" not in message, message


# ---------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize("endpoint", BRAZE_ENDPOINTS)
def test_every_braze_endpoint_is_accepted_and_normalised(endpoint):
    assert parse_syncs(minimal(endpoint=endpoint))[0].endpoint == endpoint
    assert parse_syncs(minimal(endpoint=endpoint + "/"))[0].endpoint == endpoint


def test_allow_list_is_exactly_the_reference_list():
    assert sorted(config.ALLOWED_ENDPOINTS) == sorted(BRAZE_ENDPOINTS)


@pytest.mark.parametrize("endpoint, message", [
    ("http://rest.iad-01.braze.com", "must use https; " + FIX),
    ("https://rest.iad-09.braze.com", "host 'rest.iad-09.braze.com' is not a Braze REST endpoint; " + FIX),
    ("https://rest.fra-01.braze.com", "host 'rest.fra-01.braze.com' is not a Braze REST endpoint; " + FIX),
    ("https://rest.iad-01.braze.com.evil.com", "host 'rest.iad-01.braze.com.evil.com' is not a Braze REST endpoint; " + FIX),
    ("https://dashboard-01.braze.com", "host 'dashboard-01.braze.com' is not a Braze REST endpoint; " + FIX),
    ("https://127.0.0.1:8080", "must not have a port; " + FIX),
    ("https://rest.iad-01.braze.com:443", "must not have a port; " + FIX),
    ("https://rest.iad-01.braze.com/users/track", "must not have a path (the job adds /users/track); " + FIX),
    ("https://rest.iad-01.braze.com//", "must not have a path (the job adds /users/track); " + FIX),
    ("https://rest.iad-01.braze.com?x=1", "must not have a query string; " + FIX),
    ("https://rest.iad-01.braze.com/?", "must not have a query string; " + FIX),
    ("https://rest.iad-01.braze.com#top", "must not have a fragment; " + FIX),
    ("https://u:p@rest.iad-01.braze.com", "must not contain user info (credentials); " + FIX),
    ("https://REST.IAD-01.BRAZE.COM", "must be written in lower case: https://rest.iad-01.braze.com"),
    ("rest.iad-01.braze.com", "must be an https URL such as https://rest.iad-01.braze.com; " + FIX),
    ("ftp://rest.iad-01.braze.com", "must be an https URL such as https://rest.iad-01.braze.com; " + FIX),
    (" https://rest.iad-01.braze.com", "must not contain spaces or control characters"),
    ("https://[::1", "is not a valid URL; " + FIX),
    ("", "must be an https URL such as https://rest.iad-01.braze.com; " + FIX),
])
def test_refused_endpoints(endpoint, message):
    assert problems(minimal(endpoint=endpoint)) == [f"syncs[0].endpoint: {message}"]


def test_refused_endpoint_message_says_how_to_fix_compactly():
    (found,) = problems(minimal(endpoint="https://example.com"))
    assert found == (
        "syncs[0].endpoint: host 'example.com' is not a Braze REST endpoint; use https://<your cluster's REST host>, "
        "one of rest.iad-01..08.braze.com, rest.us-10.braze.com, rest.fra-01..02.braze.eu, rest.au-01.braze.com, "
        "rest.id-01.braze.com, rest.jp-01.braze.com, rest.kr-01.braze.com "
        "(or pass --allow_insecure_endpoints for local testing)"
    )


@pytest.mark.parametrize("endpoint, normalised", [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
    ("http://localhost:9", "http://localhost:9"),
    ("https://example.com/braze/", "https://example.com/braze"),
    ("http://[::1]:8000", "http://[::1]:8000"),
])
def test_insecure_endpoints_allowed_with_the_flag(endpoint, normalised):
    with pytest.raises(ConfigError):
        parse_syncs(minimal(endpoint=endpoint))
    assert parse_syncs(minimal(endpoint=endpoint), allow_insecure_endpoints=True)[0].endpoint == normalised
    assert loads_syncs(json.dumps(minimal(endpoint=endpoint)), allow_insecure_endpoints=True)[0].endpoint == normalised


def test_braze_endpoints_still_accepted_with_the_flag():
    for endpoint in BRAZE_ENDPOINTS:
        found = parse_syncs(minimal(endpoint=endpoint + "/"), allow_insecure_endpoints=True)[0].endpoint
        assert found == endpoint


@pytest.mark.parametrize("endpoint, message", [
    ("ftp://127.0.0.1", "must be an https URL such as https://rest.iad-01.braze.com; " + FIX),
    ("http://", "must be an https URL such as https://rest.iad-01.braze.com; " + FIX),
    ("http://u:p@127.0.0.1:1", "must not contain user info (credentials); " + FIX),
    ("http://127.0.0.1:1?x", "must not have a query string; " + FIX),
])
def test_flag_still_needs_an_http_url_with_a_host(endpoint, message):
    assert problems(minimal(endpoint=endpoint), allow_insecure_endpoints=True) == [f"syncs[0].endpoint: {message}"]


# ---------------------------------------------------------------------------- JSON Schema


def test_schema_accepts_the_valid_examples(validator):
    for name in ("syncs_valid.yaml", "syncs_valid.json"):
        with open(os.path.join(DATA, name)) as f:
            document = yaml.safe_load(f)
        assert list(validator.iter_errors(document)) == [], name
        parse_syncs(document)


def _undescribed_properties(schema, path="$"):
    """Paths of properties in ``schema`` (and its sub-schemas) that have no description."""
    missing = []
    if not isinstance(schema, dict):
        return missing
    for name, sub in schema.get("properties", {}).items():
        if "description" not in sub and "$ref" not in sub:  # a $ref's target carries its own
            missing.append(f"{path}.{name}")
        missing += _undescribed_properties(sub, f"{path}.{name}")
    for key in ("items", "then", "else", "if", "not"):
        missing += _undescribed_properties(schema.get(key), f"{path}/{key}")
    for key in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(schema.get(key, ())):
            missing += _undescribed_properties(sub, f"{path}/{key}[{i}]")
    for name, sub in schema.get("$defs", {}).items():
        if "description" not in sub:
            missing.append(f"$defs.{name}")
        missing += _undescribed_properties(sub, f"$defs.{name}")
    return missing


def test_schema_describes_every_property_and_matches_the_code():
    with open(SCHEMA_PATH) as f:
        schema = json.load(f)
    # Properties re-stated inside if/then/else/allOf only add constraints; the main one is described.
    missing = [p for p in _undescribed_properties(schema) if not any(k in p for k in ("/if", "/then", "/else", "/allOf"))]
    assert missing == []
    defs = schema["$defs"]
    assert defs["condition"]["properties"]["op"]["enum"] == list(config.OPERATORS)
    assert defs["identifier"]["properties"]["type"]["enum"] == list(config.IDENTIFIER_TYPES)
    assert defs["sync"]["properties"]["mode"]["enum"] == list(config.MODES)
    assert set(defs["sync"]["properties"]) == set(config._SYNC_KEYS)
    assert set(defs["identifier"]["properties"]) == set(config._IDENTIFIER_KEYS)
    assert set(defs["anonymous"]["properties"]) == set(config._ANONYMOUS_KEYS)
    assert defs["anonymous"]["properties"]["type"]["enum"] == list(config.ANONYMOUS_TYPES)
    for name in ("user_mapping", "event_mapping"):
        assert tuple(defs[name]["properties"]) == MAPPING_KEYS == tuple(defs[name]["required"])
    assert set(defs["users"]["properties"]) == set(config._USERS_KEYS)
    assert set(defs["events"]["properties"]) == set(config._EVENTS_KEYS)
    assert set(defs["selector"]["properties"]) == set(config._SELECTOR_KEYS)
    assert set(defs["condition"]["properties"]) == set(config._CONDITION_KEYS)
    assert set(schema["properties"]) == set(config._TOP_KEYS)


def _cond(**c):
    return minimal(events={"select": [{"event_type": "a", "where": [c]}]})


AGREEMENT_INVALID = [
    {},
    {"syncs": []},
    {"syncs": [], "extra": 1},
    minimal(evnts={}),
    minimal(name="bad name"),
    minimal(enabled="true"),
    minimal(endpoint="http://rest.iad-01.braze.com"),
    minimal(endpoint="https://example.com"),
    minimal(endpoint="https://rest.iad-01.braze.com/users/track"),
    minimal(endpoint="http://127.0.0.1:8080"),
    minimal(api_key=FAKE_KEY),
    minimal(api_key="env:1X"),
    minimal(app_id=1),
    minimal(mode="shadw"),
    minimal(mode=True),
    minimal(mode="Shadow"),
    minimal(identifier={"type": "user_alias"}),
    minimal(identifier={"type": "braze_id", "alias_label": "x"}),
    minimal(identifier={"alias_label": "x"}),
    minimal(identifier={"type": "email"}),
    minimal(identifier={"source": "a..b"}),
    minimal(users={"properties": ["a", "a"]}),
    minimal(users={"properties": [""]}),
    minimal(users={"update_existing_only": "no"}),
    minimal(events={}),
    minimal(events={"select": []}),
    minimal(events={"enabled": True, "select": []}),
    minimal(events={"select": [{"where": []}]}),
    minimal(events={"select": [{"event_type": ""}]}),
    _cond(property="x", op="gt", value=1),
    _cond(property="x", op="greater_than", value="1"),
    _cond(property="x", op="greater_than", value=True),
    _cond(property="x", op="greater_than"),
    _cond(property="x", op="is"),
    _cond(property="x", op="is", value=[]),
    _cond(property="x", op="is", value=None),
    _cond(property="x", op="is", value={"a": 1}),
    _cond(property="x", op="is_not", value=[1, [2]]),
    _cond(property="x", op="contains", value=["a"]),
    _cond(property="x", op="starts_with", value=""),
    _cond(property="x", op="is_set", value=True),
    _cond(property="", op="is_set"),
    _cond(property=".x", op="is_set"),
    _cond(op="is_set"),
    _cond(property="x", op="is_set", extra=1),
]

AGREEMENT_VALID = [
    minimal(),
    minimal(mode="shadow"),
    minimal(mode="live"),
    {"$schema": "./syncs.schema.json", **minimal()},
    minimal(events={"enabled": False}),
    minimal(events={"enabled": False, "select": []}),
    minimal(identifier={"type": "user_alias", "alias_label": "amp"}),
    minimal(identifier={"type": "braze_id", "source": "user_properties.braze.id"}),
    minimal(users={}),
    minimal(endpoint="https://rest.kr-01.braze.com/"),
    _cond(property="x", op="is", value=""),
    _cond(property="x", op="is_not", value=[1, "1", False]),
    _cond(property="x", op="less_or_equal", value=-2.5),
    _cond(property="event_properties.a b.c", op="is_not_set"),
]


@pytest.mark.parametrize("document", AGREEMENT_INVALID, ids=lambda d: json.dumps(d)[:80])
def test_schema_and_parser_agree_on_invalid(validator, document):
    assert list(validator.iter_errors(document)), "schema accepted it"
    with pytest.raises(ConfigError):
        parse_syncs(document)


@pytest.mark.parametrize("document", AGREEMENT_VALID, ids=lambda d: json.dumps(d)[:80])
def test_schema_and_parser_agree_on_valid(validator, document):
    assert list(validator.iter_errors(document)) == []
    parse_syncs(document)


def test_known_disagreement_duplicate_names(validator):
    """A schema cannot say 'names are unique'; only the parser refuses duplicates."""
    document = {"syncs": minimal()["syncs"] * 2}
    assert list(validator.iter_errors(document)) == []
    assert problems(document) == ["syncs[1].name: duplicate name 's' (also syncs[0])"]


# ---------------------------------------------------------------------------- mode (shadow)


def test_a_sync_is_live_unless_it_says_shadow():
    [live] = parse_syncs(minimal())
    [shadow] = parse_syncs(minimal(mode="shadow"))
    assert (live.mode, live.shadow) == ("live", False)
    assert (shadow.mode, shadow.shadow) == ("shadow", True)
    assert parse_syncs(minimal(mode="live"))[0] == live


def test_a_mistyped_mode_is_named_with_the_closest_one():
    assert problems(minimal(mode="shadw")) == ["syncs[0].mode: unknown mode 'shadw' (did you mean 'shadow'?)"]
    assert problems(minimal(mode="dry-run")) == [
        "syncs[0].mode: unknown mode 'dry-run' (expected one of: live, shadow)"]
    assert problems(minimal(mode=1)) == ["syncs[0].mode: must be a string, one of: live, shadow; got number"]


def test_shadow_syncs_are_the_enabled_ones_in_shadow_mode():
    document = {"syncs": [
        {**minimal()["syncs"][0], "name": "a", "mode": "shadow"},
        {**minimal()["syncs"][0], "name": "b"},
        {**minimal()["syncs"][0], "name": "c", "mode": "shadow", "enabled": False},
    ]}
    assert [s.name for s in shadow_syncs(parse_syncs(document))] == ["a"]
