"""API-key references: env:, Secret Manager versions, and errors that never show a key."""
from types import SimpleNamespace

import pytest
from google.api_core import exceptions as gexc

from transforms import secrets
from transforms.secrets import SecretError, is_reference, resolve_api_key

VERSION = "projects/p1/secrets/braze-key/versions/3"
KEY = "sk-live-0123456789abcdef"


class FakeSecretManager:
    def __init__(self, payload=None, error=None, crc32c=None):
        self.payload = payload
        self.crc32c = crc32c
        self.error = error
        self.names = []
        self.timeouts = []

    def access_secret_version(self, name, retry=None, timeout=None):
        self.names.append(name)
        self.timeouts.append(timeout)
        if self.error is not None:
            raise self.error
        payload = SimpleNamespace(data=self.payload)
        if self.crc32c is not None:
            payload.data_crc32c = self.crc32c
        return SimpleNamespace(payload=payload)


def test_env_reference(monkeypatch):
    monkeypatch.setenv("BRAZE_KEY_T", f"  {KEY}\n")
    assert resolve_api_key("env:BRAZE_KEY_T") == KEY


def test_env_missing(monkeypatch):
    monkeypatch.delenv("BRAZE_KEY_MISSING", raising=False)
    with pytest.raises(SecretError) as e:
        resolve_api_key("env:BRAZE_KEY_MISSING")
    assert str(e.value) == "environment variable BRAZE_KEY_MISSING named by the api_key reference is not set"
    assert e.value.permanent


def test_env_empty(monkeypatch):
    monkeypatch.setenv("BRAZE_KEY_EMPTY", "  ")
    with pytest.raises(SecretError, match="BRAZE_KEY_EMPTY.*empty"):
        resolve_api_key("env:BRAZE_KEY_EMPTY")


@pytest.mark.parametrize("reference", ["env:", "env:1BAD", "env:A-B"])
def test_env_bad_name(reference):
    with pytest.raises(SecretError, match="not an environment variable name"):
        resolve_api_key(reference)


@pytest.mark.parametrize("reference", [
    KEY, "", "projects/p/secrets/s", "projects/p/secrets/s/versions/", "projects//secrets/s/versions/1",
    "secret:foo", "projects/p/secrets/s/versions/1/extra",
])
def test_unknown_form_is_not_echoed(reference):
    with pytest.raises(SecretError) as e:
        resolve_api_key(reference)
    assert "neither" in str(e.value)
    if reference:
        assert reference not in str(e.value)
    assert not is_reference(reference)


def test_not_a_string():
    with pytest.raises(SecretError, match="must be a string"):
        resolve_api_key(None)


def test_secret_manager_version():
    client = FakeSecretManager(payload=f"{KEY}\n".encode())
    assert resolve_api_key(VERSION, client=client) == KEY
    assert client.names == [VERSION]


def test_secret_manager_read_is_bounded_in_time():
    client = FakeSecretManager(payload=KEY.encode())
    resolve_api_key(VERSION, client=client)
    assert client.timeouts == [secrets.ACCESS_TIMEOUT_SECONDS]


def test_secret_manager_retries_exhausted_is_temporary():
    error = gexc.RetryError("Timeout of 20.0s exceeded", gexc.ServiceUnavailable("down"))
    with pytest.raises(SecretError) as e:
        resolve_api_key(VERSION, client=FakeSecretManager(error=error))
    assert str(e.value) == f"Secret Manager unavailable reading {VERSION}: ServiceUnavailable"
    assert not e.value.permanent and e.value.__cause__ is None


def test_secret_manager_checksum():
    import google_crc32c

    good = int(google_crc32c.value(KEY.encode()))
    assert resolve_api_key(VERSION, client=FakeSecretManager(payload=KEY.encode(), crc32c=good)) == KEY
    with pytest.raises(SecretError) as e:
        resolve_api_key(VERSION, client=FakeSecretManager(payload=KEY.encode(), crc32c=good ^ 1))
    assert str(e.value) == f"secret version {VERSION}: payload checksum mismatch"
    assert not e.value.permanent


def test_secret_manager_uses_process_client():
    client = FakeSecretManager(payload=KEY.encode())
    secrets.reset_client(client)
    try:
        assert resolve_api_key(VERSION) == KEY
    finally:
        secrets.reset_client(None)


@pytest.mark.parametrize("error, text, permanent", [
    (gexc.NotFound("no such secret"), "does not exist", True),
    (gexc.PermissionDenied("denied"), "permission denied", True),
    (gexc.FailedPrecondition("version is disabled"), "disabled or destroyed", True),
    (gexc.InvalidArgument("bad"), "could not read", True),
    (gexc.ServiceUnavailable("down"), "unavailable", False),
    (gexc.DeadlineExceeded("slow"), "unavailable", False),
])
def test_secret_manager_errors(error, text, permanent):
    with pytest.raises(SecretError) as e:
        resolve_api_key(VERSION, client=FakeSecretManager(error=error))
    assert text in str(e.value)
    assert VERSION in str(e.value)
    assert e.value.permanent is permanent
    assert e.value.__cause__ is None  # the Google error (and its metadata) is not chained


@pytest.mark.parametrize("payload, text", [(b"", "empty"), (b" \n", "empty"), (b"\xff\xfe", "UTF-8")])
def test_secret_manager_bad_payload(payload, text):
    with pytest.raises(SecretError, match=text) as e:
        resolve_api_key(VERSION, client=FakeSecretManager(payload=payload))
    assert VERSION in str(e.value)


@pytest.mark.parametrize("reference, ok", [
    ("env:BRAZE_KEY", True), (VERSION, True), ("projects/p/secrets/s/versions/latest", True),
    ("env:", False), (KEY, False), (42, False),
])
def test_is_reference(reference, ok):
    assert is_reference(reference) is ok


# --- Keys are checked once, at read: what a key may contain


BAD_KEYS = [  # (the stored value, what the error must say)
    ("sk-live-0123\n456789abcdef", "contains a line break at position 13"),
    ("sk-live-0123\r\n456789abcdef", "contains a line break at position 13"),
    ("sk-live-0123 456789abcdef", "contains a space at position 13"),
    ("sk-live-0123\t456789abcdef", "contains a tab at position 13"),
    ("sk-live-0123\x07456789abcdef", "contains a control character at position 13"),
    ("sk-live-0123\x7f456789abcdef", "contains a control character at position 13"),
    ("sk-live-0123\u00a0456789abcdef", "contains a whitespace character at position 13"),
    ("sk-live-0123\u0151456789abcdef", "contains a non-ASCII character at position 13"),
    ("sk-live-0123\u00e9456789abcdef", "contains a non-ASCII character at position 13"),
    ("sk-live-0123\U0001f511456789abcdef", "contains a non-ASCII character at position 13"),
]


def _assert_names_no_part_of(message: str, key: str):
    """Not the key, and not any run of 4 of its characters (a fragment is a leak too)."""
    for start in range(len(key) - 3):
        assert key[start:start + 4] not in message, (key[start:start + 4], message)


@pytest.mark.parametrize("value, problem", BAD_KEYS)
def test_env_key_with_a_bad_character_inside_is_refused_naming_the_reference(monkeypatch, value, problem):
    monkeypatch.setenv("BRAZE_KEY_BAD", f"{value}\n")  # the trailing newline alone is fine
    with pytest.raises(SecretError) as e:
        resolve_api_key("env:BRAZE_KEY_BAD")
    message = str(e.value)
    assert message.startswith("environment variable BRAZE_KEY_BAD named by the api_key reference: the key ")
    assert problem in message and "Nothing was sent" in message
    assert e.value.permanent
    _assert_names_no_part_of(message, value)


@pytest.mark.parametrize("value, problem", BAD_KEYS)
def test_secret_manager_key_with_a_bad_character_inside_is_refused_naming_the_version(value, problem):
    from local.secret_manager import LocalSecretManager  # the real client, against the local server

    with LocalSecretManager() as sm:
        version = sm.add_version("projects/p1/secrets/braze-key", value + "\n")
        with pytest.raises(SecretError) as e:
            resolve_api_key(version, client=sm.client())
    message = str(e.value)
    assert message.startswith(f"secret version {version}: the key ") and problem in message
    assert e.value.permanent
    _assert_names_no_part_of(message, value)


def test_surrounding_whitespace_is_stripped_from_both_sources(monkeypatch):
    from local.secret_manager import LocalSecretManager

    monkeypatch.setenv("BRAZE_KEY_PADDED", f" \t{KEY}\r\n")
    assert resolve_api_key("env:BRAZE_KEY_PADDED") == KEY
    with LocalSecretManager() as sm:
        version = sm.add_version("projects/p1/secrets/braze-key", f"{KEY}\n")
        assert resolve_api_key(version, client=sm.client()) == KEY


def test_every_key_read_good_or_refused_is_scrubbed_from_text_and_logs_afterwards(monkeypatch, caplog):
    import logging

    from transforms.scrub import scrub

    good, bad = "sk-good-7c1d2e3f4a5b", "sk-bad-7c1d\n2e3f4a5b"
    monkeypatch.setenv("BRAZE_KEY_GOOD", good)
    monkeypatch.setenv("BRAZE_KEY_REFUSED", bad)
    assert resolve_api_key("env:BRAZE_KEY_GOOD") == good
    with pytest.raises(SecretError):
        resolve_api_key("env:BRAZE_KEY_REFUSED")
    assert scrub(f"a {good} b {bad!r} c") == "a *** b '***' c"
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library").info("header %r and %s", f"Bearer {bad}", good)
    assert caplog.records[-1].getMessage() == "header 'Bearer ***' and ***"


@pytest.mark.parametrize("key", ["abc-DEF_123.456~789", "0123456789abcdef0123456789abcdef",
                                 "!#$%&'()*+,-./:;<=>?@[]^`{|}~"])
def test_printable_ascii_keys_pass(key):
    assert secrets.key_problem(key) is None


def test_a_secret_that_is_not_a_key_keeps_its_inner_spaces_and_is_still_scrubbed(monkeypatch):
    from transforms.scrub import scrub
    from transforms.secrets import resolve_secret

    password = "abcd efgh ijkl mn\u00f6p"  # an app password: spaces and a non-ASCII letter are fine
    monkeypatch.setenv("SMTP_PASSWORD_T", f"{password}\n")
    assert resolve_secret("env:SMTP_PASSWORD_T") == password
    with pytest.raises(SecretError, match="contains a space at position 5"):
        resolve_api_key("env:SMTP_PASSWORD_T")
    assert scrub(f"login failed for {password!r}") == "login failed for '***'"
