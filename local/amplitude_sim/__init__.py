"""A local stand-in for Amplitude: the Behavioral Cohorts download API (``server``), and a
publisher of cohort-feed messages to the Pub/Sub emulator (``feed``)."""
from local.amplitude_sim.client import AmplitudeSimClient
from local.amplitude_sim.server import AmplitudeSimulator

__all__ = ["AmplitudeSimulator", "AmplitudeSimClient"]
