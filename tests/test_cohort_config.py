"""The cohorts file: targets, the Default (single-key) form, every problem at once, the schema."""
import json
import os

import jsonschema
import pytest
import yaml

from pipeline.cohort_config import (
    DEFAULT_TARGET, AmplitudeSettings, ConfigError, CohortSync, EmailSettings, Target, UserMapping, load_cohorts, parse_cohorts,
)

DATA = os.path.join(os.path.dirname(__file__), "data")
SCHEMA_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "pipeline", "cohorts.schema.json")
FAKE_KEY = "sk-live-1234567890abcdef"


@pytest.fixture(scope="module")
def validator():
    with open(SCHEMA_PATH) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _problems(document, **kwargs):
    with pytest.raises(ConfigError) as e:
        parse_cohorts(document, **kwargs)
    return e.value.problems


def test_valid_file_with_named_targets():
    config = load_cohorts(os.path.join(DATA, "cohorts_valid.yaml"))
    assert not config.legacy
    assert config.target("US Production") == Target(
        name="US Production", endpoint="https://rest.iad-01.braze.com", api_key="env:BRAZE_DATA_IMPORT_KEY",
        delivery="partner", user_mapping=UserMapping("user_id"),
        partner_api_key="projects/my-project/secrets/braze-partner/versions/latest", partner="amplitude",
        verify_users=True, lookup_api_key="projects/my-project/secrets/braze-export/versions/latest")
    eu = config.target("EU Staging")
    assert (eu.delivery, eu.attribute, eu.attribute_value) == ("attribute", "amplitude_cohorts", "cohort_id")
    assert eu.user_mapping == UserMapping("user_alias", "amplitude_user", "email")
    assert eu.user_mapping.source == "email"
    assert (eu.verify_users, eu.lookup_api_key) == (True, None)  # the check uses api_key
    assert config.sync("churn-risk-live") == CohortSync("churn-risk-live", "def456", "Churn risk", "US Production",
                                                        "real_time", "feed", "weekly", 0.2)
    assert [(s.name, s.source, s.schedule) for s in config.syncs] == [
        ("power-users-us", "download", "daily"), ("power-users-eu", "snapshot", None),
        ("churn-risk-live", "feed", "weekly")]
    assert config.amplitude == AmplitudeSettings(
        api_key="projects/my-project/secrets/amplitude-api-key/versions/latest",
        secret_key="projects/my-project/secrets/amplitude-secret-key/versions/latest")
    assert config.amplitude.base_url == "https://amplitude.com"
    assert config.email == EmailSettings(
        smtp_host="smtp.example.com", sender="cohorts@example.com",
        recipients=("growth@example.com", "data@example.com"), smtp_port=587, starttls=True,
        username="cohorts-bot", password="env:SMTP_PASSWORD")


def test_single_key_file_is_the_default_target():
    config = load_cohorts(os.path.join(DATA, "cohorts_default.yaml"))
    assert config.legacy
    assert [t.name for t in config.targets] == [DEFAULT_TARGET]
    assert config.sync("power-users").target == DEFAULT_TARGET
    assert config.target("Default").partner_api_key == "env:BRAZE_PARTNER_KEY"
    assert config.target("Default").verify_users is False


def test_single_key_file_may_name_default_but_no_other_target():
    doc = yaml.safe_load(open(os.path.join(DATA, "cohorts_default.yaml")))
    doc["cohort_syncs"][0]["target"] = "Default"
    assert parse_cohorts(doc).sync("power-users").target == "Default"
    doc["cohort_syncs"][0]["target"] = "US"
    assert _problems(doc) == ["cohort_syncs[0].target: unknown target 'US' (targets: 'Default')"]


def test_every_problem_is_reported_with_its_path_and_no_key_is_quoted():
    with pytest.raises(ConfigError) as e:
        load_cohorts(os.path.join(DATA, "cohorts_many_errors.yaml"))
    problems = e.value.problems
    paths = [p.split(":")[0] for p in problems]
    assert paths == [
        "endpoint", "targets[0].endpoint", "targets[0].api_key", "targets[0].user_mapping.type",
        "targets[0].partner", "targets[0].verify_users", "targets[1].name", "targets[1].user_mapping.alias_label",
        "targets[1].lookup_api_key", "cohort_syncs[0].cohort_id", "cohort_syncs[0].target", "cohort_syncs[0].cadence",
        "cohort_syncs[1].extra", "cohort_syncs[1].name",
    ]
    assert FAKE_KEY not in str(e.value)
    assert "device_id needs delivery: partner" in problems[3]
    assert problems[8] == "targets[1].lookup_api_key: must be a reference (env:NAME or " \
                          "projects/P/secrets/S/versions/V), not a key"


def _target(**overrides):
    t = {"name": "T", "endpoint": "https://rest.iad-01.braze.com", "api_key": "env:K", "partner_api_key": "env:P",
         "lookup_api_key": "env:L"}
    t.update(overrides)
    return {k: v for k, v in t.items() if v is not None}


def _doc(*targets, syncs=None):
    return {"targets": list(targets), "cohort_syncs": syncs or [
        {"name": "s", "cohort_id": "c1", "cohort_name": "C", "target": "T", "cadence": "one_time"}]}


@pytest.mark.parametrize("target, expected", [
    (_target(partner_api_key=None), ["targets[0].partner_api_key: required"]),
    (_target(delivery="attribute", partner_api_key=None, attribute_value="x"),
     ["targets[0].attribute_value: must be one of: label, cohort_id (got 'x')"]),
    (_target(delivery="email"), ["targets[0].delivery: must be one of: partner, attribute (got 'email')"]),
    (_target(partner="Amplitude/../x"), ["targets[0].partner: must be 1-64 lower-case letters, digits, '-' or '_' "
                                         "(the <partner> in /partners/<partner>/cohorts)"]),
    (_target(user_mapping={"type": "user_id", "alias_label": "x"}),
     ["targets[0].user_mapping.alias_label: only allowed when type is user_alias (type is 'user_id')"]),
    (_target(name=" bad"), ["targets[0].name: must be 1-64 characters: letters, digits, spaces, '.', '-' or '_', "
                            "starting with a letter or digit",
                            "cohort_syncs[0].target: unknown target 'T' (targets: ' bad')"]),
    (_target(endpoint="http://127.0.0.1:9"), None),  # accepted only with allow_insecure_endpoints
])
def test_target_rules(target, expected):
    if expected is None:
        assert parse_cohorts(_doc(target), allow_insecure_endpoints=True).targets[0].endpoint == "http://127.0.0.1:9"
        assert _problems(_doc(target))[0].startswith("targets[0].endpoint: must use https")
    else:
        assert _problems(_doc(target)) == expected


NO_LOOKUP_KEY = ("targets[0].lookup_api_key: required with delivery: partner to check that users exist in Braze "
                 "before sending (a reference to a REST API key with users.export.ids); or set verify_users: false "
                 "to send without checking (users unknown to Braze are then reported as sent)")


@pytest.mark.parametrize("target, expected", [
    (_target(lookup_api_key=None), [NO_LOOKUP_KEY]),
    (_target(lookup_api_key=None, verify_users=False), (False, None)),
    (_target(), (True, "env:L")),
    (_target(verify_users=False), ["targets[0].lookup_api_key: not used with verify_users: false (remove it, or "
                                   "remove verify_users: false to check that users exist)"]),
    (_target(verify_users="yes"), ["targets[0].verify_users: must be true or false, got string"]),
    (_target(lookup_api_key=FAKE_KEY), ["targets[0].lookup_api_key: must be a reference (env:NAME or "
                                        "projects/P/secrets/S/versions/V), not a key"]),
    (_target(delivery="attribute", partner_api_key=None, lookup_api_key=None), (True, None)),  # api_key is used
    (_target(delivery="attribute", partner_api_key=None), (True, "env:L")),
])
def test_user_check_settings(target, expected, validator):
    if isinstance(expected, tuple):
        t = parse_cohorts(_doc(target)).targets[0]
        assert (t.verify_users, t.lookup_api_key) == expected
        assert list(validator.iter_errors(_doc(target))) == []
    else:
        problems = _problems(_doc(target))
        assert problems == expected and FAKE_KEY not in "\n".join(problems)
        assert list(validator.iter_errors(_doc(target)))


def test_single_key_form_needs_the_lookup_key_too():
    doc = {"endpoint": "https://rest.iad-01.braze.com", "api_key": "env:K", "partner_api_key": "env:P",
           "cohort_syncs": [{"name": "s", "cohort_id": "c1", "cohort_name": "C", "cadence": "daily"}]}
    assert _problems(doc) == [NO_LOOKUP_KEY.replace("targets[0].", "")]
    assert parse_cohorts({**doc, "lookup_api_key": "env:L"}).target("Default").lookup_api_key == "env:L"


def test_same_account_twice_and_same_cohort_twice_to_one_target_are_refused():
    doc = _doc(_target(), _target(name="T2"), syncs=[
        {"name": "a", "cohort_id": "c1", "cohort_name": "C", "target": "T", "cadence": "daily"},
        {"name": "b", "cohort_id": "c1", "cohort_name": "C", "target": "T", "cadence": "hourly"}])
    problems = _problems(doc)
    assert problems[0].startswith("targets[1]: same endpoint, delivery and keys as targets[0]")
    assert problems[1] == "cohort_syncs[1]: cohort 'c1' already goes to target 'T' in cohort_syncs[0] " \
                          "(one sync per cohort and target)"


def test_email_settings_are_checked():
    doc = _doc(_target())
    doc["notifications"] = {"email": {"smtp_host": "mail", "sender": "nobody", "recipients": [],
                                      "password": FAKE_KEY, "smtp_port": 0}}
    problems = _problems(doc)
    assert problems == [
        "notifications.email.smtp_port: must be a port number 1-65535, got number",
        "notifications.email.sender: must be an email address",
        "notifications.email.recipients: at least one recipient is required",
        "notifications.email.password: must be a reference (env:NAME or projects/P/secrets/S/versions/V), not a key",
        "notifications.email: username and password go together (SMTP login)",
        "notifications.email.password: an SMTP password is only sent over TLS: set starttls: true (port 587) or "
        "ssl: true (port 465)",
    ]
    assert FAKE_KEY not in "\n".join(problems)


def test_an_smtp_password_needs_tls():
    email = {"smtp_host": "mail", "sender": "a@x.io", "recipients": ["b@x.io"], "username": "u",
             "password": "env:SMTP_PASSWORD"}
    doc = _doc(_target())
    doc["notifications"] = {"email": email}
    assert _problems(doc) == ["notifications.email.password: an SMTP password is only sent over TLS: set starttls: "
                              "true (port 587) or ssl: true (port 465)"]
    doc["notifications"] = {"email": {**email, "ssl": True, "smtp_port": 465}}
    assert parse_cohorts(doc).email.ssl is True
    doc["notifications"] = {"email": {**email, "ssl": True, "starttls": True}}
    assert _problems(doc)[0].startswith("notifications.email.ssl: starttls and ssl exclude each other")
    doc["notifications"] = {"email": {k: v for k, v in email.items() if k not in ("username", "password")}}
    assert parse_cohorts(doc).email.password is None  # no login: plain SMTP is allowed


AMPLITUDE = {"api_key": "env:AMP_KEY", "secret_key": "env:AMP_SECRET"}


def _sync(name, **extra):
    return {"name": name, "cohort_id": name, "cohort_name": name.title(), "target": "T", **extra}


def test_sources_and_their_rules():
    device = _target(user_mapping={"type": "device_id"})
    problems = _problems(_doc(device, syncs=[
        _sync("a", cadence="real_time"),  # feed by default: no device ids in the feed
        _sync("b", cadence="daily", source="download"),  # download without the amplitude section
        _sync("c", cadence="real_time", source="snapshot"),
        _sync("d", cadence="daily", source="download", reconcile="daily"),
        _sync("e", cadence="daily", max_removed_share=0)]))
    assert problems == [
        "cohort_syncs[2].cadence: real_time needs source: feed (a snapshot is a whole membership at one time; "
        "real-time changes come from the Pub/Sub feed)",
        "cohort_syncs[3].reconcile: only for source: feed (download syncs run at their cadence)",
        "cohort_syncs[4].max_removed_share: must be a number > 0 and <= 1 (a share of the members), got number",
        "cohort_syncs[0].source: target 'T' maps users by device_id, but Amplitude's Pub/Sub cohort feed carries "
        "only user_id: use source: download for device-id targets",
        "cohort_syncs[1].source: downloads from Amplitude need the 'amplitude' section (api_key, secret_key, region)",
    ]


def test_scheduled_downloads_must_fit_the_monthly_budget():
    doc = _doc(_target(), syncs=[_sync("h", cadence="hourly", source="download"),
                                 _sync("d", cadence="daily", source="download"),
                                 _sync("f", cadence="real_time", reconcile="weekly"),
                                 _sync("o", cadence="one_time", source="download")])
    doc["amplitude"] = AMPLITUDE
    assert _problems(doc) == [
        "cohort_syncs: the scheduled downloads need 780 a month (1 daily × 31 + 1 hourly × 744 + 1 weekly × 5), "
        "over Amplitude's budget of 500 less the reserve of 50 (450): make hourly syncs daily, or move them to "
        "source: feed (its changes cost no download), or raise amplitude.monthly_download_budget if your plan "
        "allows more"]
    doc["cohort_syncs"][0]["cadence"] = "daily"
    config = parse_cohorts(doc)
    assert [s.schedule for s in config.syncs] == ["daily", "daily", "weekly", None]  # one_time: by hand
    doc["amplitude"] = {**AMPLITUDE, "region": "eu", "endpoint": "http://127.0.0.1:9"}
    assert _problems(doc) == ["amplitude.endpoint: must be one of https://amplitude.com, "
                              "https://analytics.eu.amplitude.com (set region instead); another host only with "
                              "--allow_insecure_endpoints (the local stand-in)"]
    config = parse_cohorts(doc, allow_insecure_endpoints=True)
    assert config.amplitude.base_url == "http://127.0.0.1:9"
    del doc["amplitude"]["endpoint"]
    assert parse_cohorts(doc).amplitude.base_url == "https://analytics.eu.amplitude.com"


def test_empty_and_wrong_documents():
    assert _problems(None) == ["(document): the file is empty (expected a mapping with 'cohort_syncs')"]
    assert _problems({"cohort_syncs": []}) == [
        "targets: required: a list of named targets (or the single-key form: endpoint, api_key, ... at the top, "
        "read as the target 'Default')", "cohort_syncs: at least one cohort sync is required"]


def test_schema_accepts_the_valid_examples(validator):
    for name in ("cohorts_valid.yaml", "cohorts_default.yaml"):
        document = yaml.safe_load(open(os.path.join(DATA, name)))
        assert list(validator.iter_errors(document)) == [], name


def test_schema_rejects_what_the_loader_rejects(validator):
    document = yaml.safe_load(open(os.path.join(DATA, "cohorts_many_errors.yaml")))
    assert list(validator.iter_errors(document))
    assert list(validator.iter_errors(_doc(_target(partner_api_key=None))))
    assert list(validator.iter_errors(_doc(_target(user_mapping={"type": "user_alias"}))))
