"""The emulator helper: publish and pull through the real client, stop for real, fail clearly."""
import os
import select
import signal
import stat
import subprocess
import sys
import time

import pytest

from local.pubsub_emulator import EmulatorUnavailable, PubSubEmulator, _answers, _group_running

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _poll(condition, deadline_secs=15.0, interval_secs=0.05):
    deadline = time.monotonic() + deadline_secs
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_secs)
    return condition()


def _pid_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_publish_and_pull_round_trip(pubsub_emulator, unique_name):
    topic, subscription = unique_name("topic"), unique_name("sub")
    assert pubsub_emulator.create_topic(topic) == f"projects/local-project/topics/{topic}"
    pubsub_emulator.create_subscription(subscription, topic)
    bodies = [f'{{"n": {i}, "city": "東京"}}'.encode() for i in range(120)]

    ids = pubsub_emulator.publish(topic, bodies, attributes={"origin": "test", "stage": "parse"})
    received = pubsub_emulator.pull_until(subscription, len(bodies), deadline_seconds=30)

    assert len(set(ids)) == len(bodies)
    assert sorted(message.data for message in received) == sorted(bodies)
    assert all(dict(message.attributes) == {"origin": "test", "stage": "parse"} for message in received)
    assert sorted(message.message_id for message in received) == sorted(ids)
    assert pubsub_emulator.pull(subscription, timeout=2) == []  # everything was acked


def test_an_empty_body_is_published_with_a_marker_attribute(pubsub_emulator, unique_name):
    topic, subscription = unique_name("topic"), unique_name("sub")
    pubsub_emulator.create_topic(topic)
    pubsub_emulator.create_subscription(subscription, topic)

    pubsub_emulator.publish(topic, [b"", b"x"])
    received = pubsub_emulator.pull_until(subscription, 2, deadline_seconds=30)

    by_data = {message.data: dict(message.attributes) for message in received}
    assert by_data == {b"": {"empty_body": "true"}, b"x": {}}


def test_environment_points_clients_at_the_emulator(pubsub_emulator, unique_name):
    from google.cloud import pubsub_v1

    topic = unique_name("topic")
    pubsub_emulator.create_topic(topic)
    assert os.environ["PUBSUB_EMULATOR_HOST"] == pubsub_emulator.host
    client = pubsub_v1.PublisherClient()  # a client made by someone else finds it too
    names = [t.name for t in client.list_topics(request={"project": "projects/local-project"})]
    assert pubsub_emulator.topic_path(topic) in names


def test_pull_until_predicate_returns_what_arrived_at_the_deadline(pubsub_emulator, unique_name):
    topic, subscription = unique_name("topic"), unique_name("sub")
    pubsub_emulator.create_topic(topic)
    pubsub_emulator.create_subscription(subscription, topic)
    pubsub_emulator.publish(topic, [b"one", b"two"])

    got = pubsub_emulator.pull_until(subscription, lambda messages: len(messages) > 5, deadline_seconds=0.5)

    assert sorted(message.data for message in got) == [b"one", b"two"]


def test_stop_ends_the_process_group_and_restores_the_environment(pubsub_emulator):
    outer_host = os.environ["PUBSUB_EMULATOR_HOST"]
    second = PubSubEmulator(project="other-project").start()
    pid, host = second.pid, second.host
    assert host != outer_host and os.environ["PUBSUB_EMULATOR_HOST"] == host
    assert _answers(host)

    second.stop()
    second.stop()  # idempotent

    assert _poll(lambda: _pid_gone(pid)), f"gcloud wrapper {pid} still running"
    assert _poll(lambda: not _answers(host)), f"something still answers on {host}"
    assert not _group_running(pid)  # Java, in the same group, no longer runs either
    assert os.environ["PUBSUB_EMULATOR_HOST"] == outer_host


def test_missing_gcloud_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)

    with pytest.raises(EmulatorUnavailable, match="gcloud") as raised:
        PubSubEmulator().start()

    assert "apt-get install google-cloud-cli google-cloud-cli-pubsub-emulator" in str(raised.value)
    assert "openjdk" in str(raised.value)
    assert "PUBSUB_EMULATOR_HOST" not in os.environ


def _script(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_missing_emulator_component_is_named(tmp_path, monkeypatch):
    sdk = tmp_path / "google-cloud-sdk"
    _script(sdk / "bin" / "gcloud", "exit 1\n")
    (sdk / "lib").mkdir()
    (sdk / "lib" / "gcloud.py").write_text("")
    _script(tmp_path / "jre" / "java", "exit 0\n")
    monkeypatch.setenv("PATH", f"{sdk / 'bin'}:{tmp_path / 'jre'}")

    with pytest.raises(EmulatorUnavailable, match="emulator component is missing"):
        PubSubEmulator().start()


def test_early_exit_reports_the_output_tail(tmp_path, monkeypatch):
    _script(tmp_path / "bin" / "gcloud", "echo 'ERROR: Java 11+ JRE must be installed' >&2\nexit 1\n")
    _script(tmp_path / "bin" / "java", "exit 0\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)

    with pytest.raises(EmulatorUnavailable, match="Java 11\\+ JRE must be installed") as raised:
        PubSubEmulator().start()

    assert "exited with code 1" in str(raised.value)
    assert "PUBSUB_EMULATOR_HOST" not in os.environ


def test_cli_runs_until_sigterm_then_stops_the_emulator():
    process = subprocess.Popen(
        [sys.executable, "-m", "local.pubsub_emulator", "--port", "0",
         "--topic", "events", "--subscription", "events-sub:events"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        output, deadline = b"", time.monotonic() + 60
        # Raw os.read: a buffered readline would hide data from select().
        while b"export " not in output and time.monotonic() < deadline and process.poll() is None:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                output += os.read(process.stdout.fileno(), 65536)
        exports = [line for line in output.splitlines() if line.startswith(b"export PUBSUB_EMULATOR_HOST=")]
        assert exports, f"no export line; stdout: {output!r}; exit code: {process.poll()}"
        host = exports[0].split(b"=", 1)[1].decode()
        assert b"subscription projects/local-project/subscriptions/events-sub" in output
        assert _answers(host)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert _poll(lambda: not _answers(host)), f"the emulator on {host} outlived the CLI"
    finally:
        # SIGTERM first: only the CLI can stop the emulator it started (in its own group).
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        process.stdout.close()
        process.stderr.close()
