"""Beam's in-process FnApiRunner, run as Dataflow's SDK harness runs user state: without a cache.

The SDK harness keeps no state cache unless ``--max_cache_memory_usage_mb`` asks for one
(its default is 0). The FnApiRunner's in-process worker instead hard-codes a 100 MB cache
(``worker_handlers.STATE_CACHE_SIZE_MB``), and that cache weighs every value it stores with
``objsize``, which first walks the globals of every loaded module. On our graph that weighing
was three quarters of a bounded run (``make bench``'s ``beam_batch``: 20,000 events in 26.7 s
with the cache, 6.5 s without). The runner's state lives in the same process's memory, so the
cache saves nothing there.

The setting is the module's: it applies to every in-process FnApiRunner started afterwards in
this process. The cohort job, the benchmark and the tests call it; the streaming job's local
runner (the BundleBasedDirectRunner) has no such cache.
"""
from __future__ import annotations

from apache_beam.runners.portability.fn_api_runner import worker_handlers

__all__ = ["without_fnapi_state_cache"]


def without_fnapi_state_cache() -> None:
    """Start later in-process FnApiRunner workers without a state cache (idempotent)."""
    worker_handlers.STATE_CACHE_SIZE_MB = 0
