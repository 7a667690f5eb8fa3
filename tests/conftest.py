"""Shared fixtures: the Pub/Sub emulator (once per session), the Braze simulator (fresh, or one a
module shares and resets), unique names."""
import uuid

import pytest

from local.pubsub_emulator import EmulatorUnavailable, PubSubEmulator
from pipeline.local_runner import faster_bundle_based_direct_runner, without_fnapi_state_cache

# The bounded tests run on the in-process FnApiRunner; run its user state as Dataflow's SDK
# harness does (no cache), which is also 4x faster here (pipeline/local_runner.py). The
# streaming ones run on the BundleBasedDirectRunner, without two of its per-bundle costs.
without_fnapi_state_cache()
faster_bundle_based_direct_runner()


@pytest.fixture(scope="session")
def pubsub_emulator():
    """The real Pub/Sub emulator with PUBSUB_EMULATOR_HOST set; started once, it takes seconds.

    A missing emulator fails the test instead of skipping it: CI must install what it needs.
    """
    emulator = PubSubEmulator(project="local-project", port=0)
    try:
        emulator.start()
    except EmulatorUnavailable as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def braze_sim():
    """A fresh Braze simulator on a free port, stopped after the test."""
    from local.braze_sim import BrazeSimulator  # imported here so other tests don't need it

    simulator = BrazeSimulator().start(port=0)
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture(scope="module")
def module_braze_sim():
    """One Braze simulator for a whole test module (each start and stop takes about 0.1 s).

    Take ``sim`` instead, which resets it before the test.
    """
    from local.braze_sim import BrazeSimulator

    with BrazeSimulator() as simulator:
        yield simulator


@pytest.fixture
def sim(module_braze_sim):
    """The module's shared Braze simulator, reset before the test: no users, log, counters, faults
    or rate-limit use. Send it requests with ``tests/sim_http.py``."""
    module_braze_sim.client().reset()
    return module_braze_sim


def make_unique_name(prefix: str) -> str:
    """A topic or subscription name no other test uses (the emulator lives for the whole session)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique_name():
    """``unique_name("events")`` → ``"events-1f2e3d4c5b6a"``."""
    return make_unique_name
