"""``python -m local.braze_sim.measure``: how many 75-object requests per second the simulator takes.

Starts the simulator as a subprocess (as the benchmark runs it), then sends prebuilt
75-object /users/track bodies from a few keep-alive client threads for a few seconds. The
rate limit is lifted so the figure is the simulator's own ceiling.
"""
from __future__ import annotations

import argparse
import collections
import http.client
import subprocess
import sys
import threading
import time
import urllib.parse

import orjson


def make_body(worker: int, request: int) -> bytes:
    """25 attribute objects and 50 events with properties, spread over 25 users."""
    users = [f"user-{worker}-{(request * 25 + i) % 5000}" for i in range(25)]
    attributes = [{"external_id": u, "first_name": "Ada", "plan": "pro", "logins": {"inc": 1}} for u in users]
    events = [{"external_id": users[i % 25], "name": "song_played", "time": "2024-05-01T12:00:00Z",
               "properties": {"song": "x" * 20, "duration": 183, "tags": ["a", "b"]}}
              for i in range(50)]
    return orjson.dumps({"attributes": attributes, "events": events})


def start_simulator() -> tuple:
    process = subprocess.Popen(
        [sys.executable, "-m", "local.braze_sim", "--rate-limit", "100000000"],
        stdout=subprocess.PIPE, text=True)
    url = key = None
    while url is None or key is None:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the simulator exited before printing its address")
        if line.startswith("braze-sim listening on "):
            url = line.split()[-1]
        elif line.startswith("braze-sim api key: "):
            key = line.split()[-1]
    return process, url, key


def worker(url: str, key: str, index: int, deadline: float, statuses: collections.Counter,
           lock: threading.Lock) -> None:
    parsed = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    bodies = [make_body(index, n) for n in range(50)]
    local = collections.Counter()
    n = 0
    while time.monotonic() < deadline:
        connection.request("POST", "/users/track", body=bodies[n % len(bodies)], headers=headers)
        response = connection.getresponse()
        response.read()
        local[response.status] += 1
        n += 1
    connection.close()
    with lock:
        statuses.update(local)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    process, url, key = start_simulator()
    try:
        statuses: collections.Counter = collections.Counter()
        lock = threading.Lock()
        started = time.monotonic()
        deadline = started + args.seconds
        threads = [threading.Thread(target=worker, args=(url, key, i, deadline, statuses, lock))
                   for i in range(args.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    finally:
        process.terminate()
        process.wait(timeout=10)
    total = sum(statuses.values())
    print(f"{total} requests of 75 objects in {elapsed:.1f}s from {args.threads} keep-alive threads: "
          f"{total / elapsed:.0f} requests/s ({75 * total / elapsed:.0f} objects/s); "
          f"statuses {dict(statuses)}")
    return 0 if set(statuses) == {201} else 1


if __name__ == "__main__":
    sys.exit(main())
