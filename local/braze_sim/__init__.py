"""A strict Braze REST simulator: "our Braze" for tests, the demo and the benchmark.

It answers /users/track, /users/alias/new, /users/identify, /users/export/ids and the partner
cohort endpoints as Braze's docs say (summarised in docs/api-facts.md) Braze
does, keeps the resulting users, and exposes them, the request log, counters and fault injection under /_sim/.
"""
from local.braze_sim.client import SimClient
from local.braze_sim.server import BrazeSimulator

__all__ = ["BrazeSimulator", "SimClient"]
