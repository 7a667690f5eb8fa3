"""Shared fixtures: the Pub/Sub emulator (once per session), the Braze simulator (fresh, or one a
module shares and resets), unique names; the one run-and-collect helper for pipeline tests
(``run_and_collect``); and the markers, applied by rule (``pytest_collection_modifyitems``)."""
import collections
import pathlib
import socket
import uuid
from typing import Callable, Dict, Optional

import apache_beam as beam
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


class NetworkUsed(AssertionError):
    """A socket connection in a test that must stay off the network."""


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection fails the test: for builds that must neither reach nor hang on
    Google's APIs (the offline Dataflow job request, a template's launcher)."""
    def refuse(sock, address, *args, **kwargs):
        raise NetworkUsed(f"the test tried to connect to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def make_unique_name(prefix: str) -> str:
    """A topic or subscription name no other test uses (the emulator lives for the whole session)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique_name():
    """``unique_name("events")`` → ``"events-1f2e3d4c5b6a"``."""
    return make_unique_name


# --------------------------------------------------------------------------------------------
# Markers, by rule, so `make test-fast` (-m "not integration and not slow") never needs the
# emulator: every test that uses the Pub/Sub emulator is `integration`; every test of an
# end-to-end module (*_e2e.py: the job as a process on the emulator and simulator) is also `slow`.


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "pubsub_emulator" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
        if pathlib.Path(str(item.fspath)).name.endswith("_e2e.py"):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)


# --------------------------------------------------------------------------------------------
# Running a pipeline and collecting its outputs

_RUNS: Dict[str, Dict[str, list]] = {}


class Collected(collections.defaultdict):
    """``{name: [elements]}`` of one run (a name that got nothing reads as ``[]``), and the run's
    ``result`` (its metrics: ``result.metrics()``)."""

    def __init__(self):
        super().__init__(list)
        self.result = None


def _collect(element, run_id: str, name: str) -> None:
    # Module-level, so Beam pickles it by reference: the local runners run it in this process.
    _RUNS[run_id][name].append(element)


def run_and_collect(build: Callable[[beam.Pipeline], Dict[str, beam.PCollection]], options=None, *,
                    runner: Optional[str] = "FnApiRunner") -> Collected:
    """Build a pipeline with ``build(p)``, which returns the PCollections to collect by name, run
    it to the end on a local runner (``options``, else ``runner``) and return what each collected
    (``Collected``: ``{name: [elements]}``, and the run's ``result``).

    Collected through a side effect rather than ``assert_that``, which misses output emitted when
    the final window closes on the BundleBasedDirectRunner (docs/api-facts.md, D5); the local
    runners run the collecting step in this process. Each run has its own id, so runs never mix.
    """
    run_id = uuid.uuid4().hex
    collected = _RUNS[run_id] = Collected()
    try:
        p = beam.Pipeline(options=options) if options is not None else beam.Pipeline(runner=runner)
        for name, pcoll in build(p).items():
            pcoll | f"Collect[{name}]" >> beam.Map(_collect, run_id, name)
        collected.result = p.run()
        collected.result.wait_until_finish()
        return collected
    finally:
        _RUNS.pop(run_id, None)
