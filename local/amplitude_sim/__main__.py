"""``python -m local.amplitude_sim --port PORT``: run the cohort-download stand-in until SIGINT or SIGTERM.

Prints the URL, the API key and the secret key, one per line, so a parent process can read them.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from local.amplitude_sim.server import AmplitudeSimulator


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.amplitude_sim", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", help="default: generated")
    parser.add_argument("--secret-key", help="default: generated")
    parser.add_argument("--job-seconds", type=float, default=0.2, help="how long a download job runs")
    parser.add_argument("--monthly-budget", type=int, default=500)
    args = parser.parse_args(argv)
    sim = AmplitudeSimulator(args.api_key, args.secret_key, job_seconds=args.job_seconds,
                             monthly_budget=args.monthly_budget).start(args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"amplitude-sim listening on {sim.url}", flush=True)
    print(f"amplitude-sim api key: {sim.api_key}", flush=True)
    print(f"amplitude-sim secret key: {sim.secret_key}", flush=True)
    while not stop.wait(0.5):
        pass
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
