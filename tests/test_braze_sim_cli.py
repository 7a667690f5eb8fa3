"""The CLI as a subprocess, the request log, counters, seeding, and that keys never leak."""
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from local.braze_sim import BrazeSimulator, SimClient
from tests.sim_http import Endpoint, track

T = "2024-05-01T12:00:00Z"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_lines(process, count, deadline_seconds=15.0):
    """The first ``count`` stdout lines, waiting with a deadline rather than sleeping.

    A reader thread, because select() on a buffered pipe misses lines already buffered.
    """
    lines: queue.Queue = queue.Queue()
    def pump():
        for line in iter(process.stdout.readline, ""):
            lines.put(line)
        lines.put(None)  # end of output

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + deadline_seconds
    out = []
    while len(out) < count:
        try:
            out.append(lines.get(timeout=max(0.01, deadline - time.monotonic())).rstrip("\n"))
        except queue.Empty:
            raise AssertionError(f"simulator printed only {out}") from None
    return out, lines


def test_cli_prints_url_and_key_answers_and_stops_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "local.braze_sim", "--port", "0", "--api-key", "cli-key-123",
         "--object-limit-mode", "per-type", "--rate-limit", "50", "--rate-window-seconds", "10"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (url_line, key_line), rest_lines = read_lines(process, 2)
        assert url_line.startswith("braze-sim listening on http://127.0.0.1:")
        assert key_line == "braze-sim api key: cli-key-123"
        url = url_line.rsplit(" ", 1)[1]
        r = track(Endpoint(url, "cli-key-123"), {"events": [{"external_id": "u1", "name": "e", "time": T}]})
        assert r.status_code == 201 and r.headers["X-RateLimit-Limit"] == "50"
        client = SimClient(url)
        assert client.health()["object_limit_mode"] == "per-type"
        assert len(client.user("u1")["events"]) == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        rest = process.stderr.read()
        for line in iter(lambda: rest_lines.get(timeout=10), None):
            rest += line
        assert "braze-sim stopped" in rest and "cli-key-123" not in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_key_never_appears_in_responses_or_log(sim):
    key = sim.api_key
    client = sim.client()
    seen = []
    bodies = [{"events": [{"external_id": "u1", "name": "e", "time": T}]}, {"events": [{"name": "e"}]}, {}]
    for body in bodies:
        seen.append(track(sim, body))
    seen.append(track(sim, bodies[0], key + "x"))  # a near-miss key is not echoed either
    seen.append(requests.post(sim.url + "/users/track", data=b"{", headers={"Authorization": f"Bearer {key}"}))
    seen.append(requests.post(sim.url + "/users/alias/new", json={"user_aliases": [{"alias_name": "a", "alias_label": "b"}]},
                              headers={"Authorization": f"Bearer {key}"}))
    client.set_faults(error_rate=1.0)
    seen.append(track(sim, bodies[0]))
    client.clear_faults()
    texts = [r.text + repr(dict(r.headers)) for r in seen]
    texts += [requests.get(sim.url + p).text for p in ("/_sim/requests", "/_sim/users", "/_sim/counters", "/_sim/faults")]
    assert all(key not in text for text in texts)
    assert len(client.requests()) == 7


def test_request_log_entries_and_paging(sim):
    for i in range(5):
        track(sim, {"attributes": [{"external_id": f"u{i}", "a": 1}],
                    "events": [{"external_id": f"u{i}", "name": "e", "time": T}]})
    client = sim.client()
    first = client.requests_page(since=0, limit=2)
    assert [r["index"] for r in first["requests"]] == [0, 1] and first["next"] == 2
    rest = client.requests_page(since=first["next"])
    assert [r["index"] for r in rest["requests"]] == [2, 3, 4] and rest["next"] == 5
    entry = rest["requests"][0]
    assert entry["path"] == "/users/track" and entry["status"] == 201
    assert entry["objects"] == {"attributes": 1, "events": 1, "purchases": 0}
    assert entry["body"]["attributes"][0]["external_id"] == "u2"
    assert isinstance(entry["received_at"], float)
    assert client.requests_page(since=5) == {"requests": [], "next": 5}


def test_request_log_is_bounded():
    with BrazeSimulator(max_log_entries=3, max_log_body_bytes=200) as small:
        for i in range(5):
            track(small, {"events": [{"external_id": f"u{i}", "name": "e", "time": T}]})
        logged = small.client().requests()
        assert [r["index"] for r in logged] == [2, 3, 4]
        assert logged[0].get("body_dropped") and logged[-1]["body"] is not None


def test_counters(sim):
    track(sim, {"events": [{"external_id": "u1", "name": "e", "time": T}, {"name": "bad"}]})
    track(sim, {}, "wrong")
    counters = sim.client().counters()
    assert counters["requests_by_status"] == {"201": 1, "401": 1}
    assert (counters["requests"], counters["objects_accepted"], counters["objects_rejected"]) == (2, 1, 1)
    assert counters["data_points"] == 1


def test_seed_users_and_lookup(sim):
    client = sim.client()
    [seeded] = client.seed_users({"external_id": "s1", "device_ids": ["d1"], "attributes": {"x": 1},
                                  "user_aliases": [{"alias_name": "n", "alias_label": "l"}]})
    assert len(seeded["braze_id"]) == 24
    assert client.users(braze_id=seeded["braze_id"]) == [seeded]
    assert client.users(alias_name="n", alias_label="l") == [seeded]
    assert client.user("nobody") is None
    r = requests.post(sim.url + "/_sim/users", json={"users": [{"external_id": "s1"}]})
    assert r.status_code == 400


def test_reset_clears_everything(sim):
    client = sim.client()
    track(sim, {"events": [{"external_id": "u1", "name": "e", "time": T}]})
    client.reset()
    assert client.users() == [] and client.requests() == []
    assert client.counters()["requests"] == 0


def test_keep_alive_connection_is_reused(sim):
    session = requests.Session()
    for _ in range(3):
        r = session.post(sim.url + "/users/track", json={"events": [{"external_id": "u1", "name": "e", "time": T}]},
                         headers={"Authorization": f"Bearer {sim.api_key}"})
        assert r.status_code == 201
    assert r.raw.version == 11 and "close" not in r.headers.get("Connection", "")


def test_bad_constructor_mode_fails_fast():
    with pytest.raises(ValueError):
        BrazeSimulator(object_limit_mode="per_type")
