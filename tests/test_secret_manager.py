"""API keys from Secret Manager through the real client, against the local gRPC server.

``local/secret_manager.py`` speaks google.cloud.secretmanager.v1 with the client library's own
request and response types, so these tests exercise google-cloud-secret-manager, its error
mapping and ours (transforms/secrets.py), and the sink's per-instance cache and 401 re-read
(transforms/sink.py), with only the server replaced.
"""
import logging
import os
import subprocess
import sys
from typing import Tuple

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from google.api_core import exceptions as gexc

from local.braze_sim import BrazeSimulator, SimClient
from local.secret_manager import DESTROYED, DISABLED, ENABLED, LocalSecretManager
from pipeline.config import Sync
from transforms import secrets
from transforms.dead_letters import to_pubsub_message
from transforms.records import DEAD_LETTERED, DELIVERED, EVENTS, TRACK, BrazeItem, Request
from transforms.secrets import EMULATOR_HOST_ENV, SecretError, resolve_api_key
from transforms.sink import DEAD_LETTER_TAG, OUTCOMES_TAG, WriteToBraze
from tests.conftest import run_and_collect

SECRET = "projects/p/secrets/braze-key"
OLD_KEY = "old-key-5f0c2a9e41d7b3c8"
NEW_KEY = "new-key-a81d3e77c0f24b19"
TIME = "2026-01-15T10:00:00.000Z"


@pytest.fixture(scope="module")
def server():
    with LocalSecretManager() as sm:
        yield sm


@pytest.fixture
def sm(server):
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def client(sm):
    return sm.client()


@pytest.fixture
def emulator_env(sm, monkeypatch):
    """The process-wide client, pointed at the local server as a worker's would be."""
    monkeypatch.setenv(EMULATOR_HOST_ENV, sm.address)
    secrets.reset_client(None)
    yield sm
    secrets.reset_client(None)


def _error(reference, client):
    with pytest.raises(SecretError) as e:
        resolve_api_key(reference, client=client)
    return e.value


# --- resolve_api_key through the real client


def test_reads_a_version_and_latest(sm, client):
    v1 = sm.add_version(SECRET, f"{OLD_KEY}\n")
    assert v1 == f"{SECRET}/versions/1"
    assert resolve_api_key(v1, client=client) == OLD_KEY
    sm.add_version(SECRET, NEW_KEY)
    assert resolve_api_key(f"{SECRET}/versions/latest", client=client) == NEW_KEY
    assert resolve_api_key(v1, client=client) == OLD_KEY  # a pinned version does not move
    assert sm.accesses == [v1, f"{SECRET}/versions/latest", v1]


@pytest.mark.parametrize("reference", [f"{SECRET}/versions/7", "projects/p/secrets/other/versions/1",
                                       "projects/p/secrets/other/versions/latest"])
def test_not_found(sm, client, reference):
    sm.add_version(SECRET, OLD_KEY)
    error = _error(reference, client)
    assert str(error) == f"secret version {reference} does not exist"
    assert error.permanent and error.__cause__ is None


def test_permission_denied_names_the_role(sm, client):
    version = sm.add_version(SECRET, OLD_KEY)
    sm.deny(SECRET)
    error = _error(version, client)
    assert version in str(error) and "roles/secretmanager.secretAccessor" in str(error)
    assert OLD_KEY not in str(error) and error.permanent


@pytest.mark.parametrize("state", [DISABLED, DESTROYED])
def test_disabled_or_destroyed_version(sm, client, state):
    version = sm.add_version(SECRET, OLD_KEY)
    sm.set_state(version, state)
    error = _error(version, client)
    assert str(error) == f"secret version {version} is disabled or destroyed"
    assert OLD_KEY not in str(error) and error.permanent


def test_latest_is_the_newest_version_even_when_disabled(sm, client):
    # As the real API: "latest" is the most recently added version, whatever its state.
    sm.add_version(SECRET, OLD_KEY)
    newest = sm.add_version(SECRET, NEW_KEY, state=DISABLED)
    assert "disabled" in str(_error(f"{SECRET}/versions/latest", client))
    sm.set_state(newest, ENABLED)
    assert resolve_api_key(f"{SECRET}/versions/latest", client=client) == NEW_KEY


def test_empty_payload(sm, client):
    version = sm.add_version(SECRET, "  \n")
    assert str(_error(version, client)) == f"secret version {version} is empty"


def test_server_down_is_temporary(sm, monkeypatch):
    # A client pointed at a port nobody listens on: UNAVAILABLE, retried within our bound,
    # then a temporary SecretError (the sink retries later; nothing is dead-lettered for it).
    with LocalSecretManager() as gone:
        address = gone.address
    monkeypatch.setattr(secrets, "ACCESS_RETRY_SECONDS", 1.0)
    error = _error(f"{SECRET}/versions/1", secrets.make_client(address))
    assert str(error) == f"Secret Manager unavailable reading {SECRET}/versions/1: ServiceUnavailable"
    assert not error.permanent


# --- The server's admin RPCs, through the real client (how an operator rotates a key)


def test_rotation_by_the_api(sm, client):
    assert client.create_secret(parent="projects/p", secret_id="braze-key", secret={}).name == SECRET
    with pytest.raises(gexc.AlreadyExists):
        client.create_secret(parent="projects/p", secret_id="braze-key", secret={})
    v1 = client.add_secret_version(parent=SECRET, payload={"data": OLD_KEY.encode()})
    v2 = client.add_secret_version(parent=SECRET, payload={"data": NEW_KEY.encode()})
    assert (v1.name, v2.name) == (f"{SECRET}/versions/1", f"{SECRET}/versions/2")
    assert client.disable_secret_version(name=v1.name).state == DISABLED
    assert client.get_secret_version(name=v1.name).state == DISABLED
    assert client.enable_secret_version(name=v1.name).state == ENABLED
    destroyed = client.destroy_secret_version(name=v1.name)
    assert destroyed.state == DESTROYED and destroyed.destroy_time
    with pytest.raises(gexc.FailedPrecondition):
        client.enable_secret_version(name=v1.name)
    response = client.access_secret_version(name=f"{SECRET}/versions/latest")
    assert response.name == v2.name and response.payload.data == NEW_KEY.encode()
    assert response.payload.data_crc32c  # the client can check integrity, as Google's samples do


def test_bad_names_and_unknown_methods(sm, client):
    with pytest.raises(gexc.InvalidArgument):
        client.access_secret_version(name="projects/p/secrets/s")
    with pytest.raises(gexc.NotFound):
        client.add_secret_version(parent="projects/p/secrets/nope", payload={"data": b"x"})
    with pytest.raises(gexc.MethodNotImplemented):
        client.list_secrets(parent="projects/p")


# --- The worker path: SECRET_MANAGER_EMULATOR_HOST


def test_process_client_honours_the_emulator_host(emulator_env):
    version = emulator_env.add_version(SECRET, OLD_KEY)
    assert resolve_api_key(version) == OLD_KEY
    assert emulator_env.accesses == [version]


def test_a_fresh_process_reads_through_the_emulator_host(sm):
    # As a worker (or `python -m pipeline.stream` under the demo) would: nothing but the env.
    version = sm.add_version(SECRET, OLD_KEY)
    code = ("import sys; from transforms.secrets import resolve_api_key; "
            "sys.stdout.write(str(len(resolve_api_key(sys.argv[1]))))")
    env = dict(os.environ, **{EMULATOR_HOST_ENV: sm.address})
    done = subprocess.run([sys.executable, "-c", code, version], env=env, capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    assert done.stdout == str(len(OLD_KEY))
    assert "local testing only" in done.stderr
    assert OLD_KEY not in done.stderr
    assert sm.accesses == [version]


# --- The sink (WriteToBraze in a bounded FnApiRunner pipeline) with keys from Secret Manager

def _no_sleep(seconds):
    pass


def _event(user, n):
    obj = {"external_id": user, "name": "played", "time": TIME, "properties": {"n": n}}
    return BrazeItem("s1", user, EVENTS, obj, (f"m{user}-{n}/0",), TRACK, None)


def _run(batches, syncs):
    requests = [(f"k{i}", Request(f"k{i}", 0, tuple(b))) for i, b in enumerate(batches)]

    def build(p):
        results = (p | beam.Create(requests, reshuffle=False).with_output_types(Tuple[str, Request])
                   | WriteToBraze(syncs, sleep=_no_sleep, backoff_base_seconds=0.001))
        return {"outcomes": results[OUTCOMES_TAG], "dead": results[DEAD_LETTER_TAG]}

    collected = run_and_collect(build, runner="FnApiRunner")
    metrics = {}
    for c in collected.result.metrics().query(MetricsFilter())["counters"]:
        metrics[c.key.metric.name] = metrics.get(c.key.metric.name, 0) + c.committed
    return collected["outcomes"], collected["dead"], metrics


@pytest.fixture
def braze_new_key_only():
    """A Braze simulator that accepts only NEW_KEY: the workspace after the key was rotated."""
    with BrazeSimulator(api_keys=[NEW_KEY]).start(port=0) as sim:
        yield sim


def _track_statuses(sim):
    return [r.get("status") for r in SimClient(sim.url).requests() if r.get("path") == "/users/track"]


def _rendered(letter) -> str:
    """A dead letter as it is published: its data and its attributes."""
    message = to_pubsub_message(letter)
    return message.data.decode("utf-8", "replace") + repr(message.attributes)


def _assert_no_key(text_sources, *keys):
    for text in text_sources:
        for key in keys:
            assert key not in text


def test_key_is_read_once_per_instance_and_reread_after_a_401(emulator_env, braze_new_key_only, caplog):
    caplog.set_level(logging.DEBUG)
    sim, sm = braze_new_key_only, emulator_env
    latest = f"{SECRET}/versions/latest"
    sm.add_version(SECRET, OLD_KEY)

    def rotate_after_first_read(name):
        # The operator rotates the key right after the worker read it: a new version, the old
        # one disabled; Braze already accepts only the new key.
        sm.on_access = None
        sm.set_state(sm.add_version(SECRET, NEW_KEY), ENABLED)
        sm.set_state(f"{SECRET}/versions/1", DISABLED)

    sm.on_access = rotate_after_first_read
    batches = [[_event("u1", 1)], [_event("u2", 2)], [_event("u3", 3)]]
    outcomes, dead, metrics = _run(batches, [Sync(name="s1", endpoint=sim.url, api_key=latest)])

    assert dead == []
    assert sorted((o.source, o.status) for o in outcomes) == [
        ("mu1-1/0", DELIVERED), ("mu2-2/0", DELIVERED), ("mu3-3/0", DELIVERED)]
    # One read when the instance first needed the key, one more after Braze's 401; the
    # other batches used the cached key.
    assert sm.accesses == [latest, latest]
    assert _track_statuses(sim) == [401, 201, 201, 201]
    assert metrics["s1.auth_failures"] == 1
    _assert_no_key([caplog.text, repr(outcomes), repr(metrics)], OLD_KEY, NEW_KEY)


def test_a_pinned_version_is_not_reread_in_a_loop(emulator_env, braze_new_key_only):
    # A pinned version still holds the old key after a rotation: the 401 re-read finds the
    # same key, so the batch is dead-lettered braze_auth (rotate pinned keys by updating the
    # syncs file and the job; see the README).
    sim, sm = braze_new_key_only, emulator_env
    version = sm.add_version(SECRET, OLD_KEY)
    sm.add_version(SECRET, NEW_KEY)
    outcomes, dead, metrics = _run([[_event("u1", 1)]], [Sync(name="s1", endpoint=sim.url, api_key=version)])
    assert [(d.reason, d.http_status) for d in dead] == [("braze_auth", 401)]
    assert sm.accesses == [version, version]
    assert _track_statuses(sim) == [401]
    _assert_no_key([_rendered(d) for d in dead], OLD_KEY, NEW_KEY)


@pytest.mark.parametrize("make_unreadable, text", [
    (lambda sm, v: sm.set_state(v, DISABLED), "is disabled or destroyed"),
    (lambda sm, v: sm.set_state(v, DESTROYED), "is disabled or destroyed"),
    (lambda sm, v: sm.deny(SECRET), "permission denied"),
    (lambda sm, v: sm.reset(), "does not exist"),
], ids=["disabled", "destroyed", "permission_denied", "not_found"])
def test_unreadable_key_dead_letters_as_api_key_unavailable(emulator_env, braze_new_key_only, caplog,
                                                            make_unreadable, text):
    caplog.set_level(logging.DEBUG)
    sim, sm = braze_new_key_only, emulator_env
    version = sm.add_version(SECRET, NEW_KEY)
    make_unreadable(sm, version)
    outcomes, dead, _ = _run([[_event("u1", 1), _event("u2", 2)], [_event("u3", 3)]],
                             [Sync(name="s1", endpoint=sim.url, api_key=version)])
    assert {(d.reason, d.stage, d.attempts) for d in dead} == {("api_key_unavailable", "braze", 0)}
    assert len(dead) == 3 and {o.status for o in outcomes} == {DEAD_LETTERED}
    for letter in dead:
        assert version in letter.detail and text in letter.detail
    assert _track_statuses(sim) == []  # nothing was sent without a key
    # A permanent error is not re-read for every batch (KEY_ERROR_RETRY_SECONDS).
    assert sm.accesses == [version]
    _assert_no_key([caplog.text, repr(outcomes)] + [_rendered(d) for d in dead], NEW_KEY)
