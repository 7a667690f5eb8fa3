"""``python -m local.braze_sim --port PORT``: run the simulator until SIGINT or SIGTERM.

Prints the URL, then every key, one per line, so a parent process can read them.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from local.braze_sim.server import LIMIT_MODES, BrazeSimulator


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local.braze_sim", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", action="append", dest="api_keys",
                        help="accepted REST API key (repeatable; default: one generated)")
    parser.add_argument("--partner-api-key", action="append", dest="partner_api_keys")
    parser.add_argument("--client-secret", action="append", dest="client_secrets")
    parser.add_argument("--object-limit-mode", choices=LIMIT_MODES, default="combined",
                        help="combined: 75 objects per request; per-type: 75 per array")
    parser.add_argument("--rate-limit", type=int, default=3000)
    parser.add_argument("--rate-window-seconds", type=float, default=3.0)
    parser.add_argument("--export-rate-limit", type=int, default=250, help="/users/export/ids requests per window")
    parser.add_argument("--export-rate-window-seconds", type=float, default=60.0)
    parser.add_argument("--alias-rate-limit", type=int, default=20_000,
                        help="/users/identify and /users/alias/new requests per window, shared")
    parser.add_argument("--alias-rate-window-seconds", type=float, default=60.0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sim = BrazeSimulator(api_keys=args.api_keys, object_limit_mode=args.object_limit_mode,
                         rate_limit=args.rate_limit, rate_window_seconds=args.rate_window_seconds,
                         partner_api_keys=args.partner_api_keys, client_secrets=args.client_secrets,
                         export_rate_limit=args.export_rate_limit,
                         export_rate_window_seconds=args.export_rate_window_seconds,
                         alias_rate_limit=args.alias_rate_limit,
                         alias_rate_window_seconds=args.alias_rate_window_seconds)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sim.start(args.port)
    print(f"braze-sim listening on {sim.url}", flush=True)
    for key in sim.api_keys:
        print(f"braze-sim api key: {key}", flush=True)
    for key in sim.partner_api_keys:
        print(f"braze-sim partner api key: {key}", flush=True)
    for secret in sim.client_secrets:
        print(f"braze-sim client secret: {secret}", flush=True)
    while not stop.wait(0.5):
        pass
    sim.stop()
    print("braze-sim stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
