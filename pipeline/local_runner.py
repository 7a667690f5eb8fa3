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

__all__ = ["without_fnapi_state_cache", "faster_bundle_based_direct_runner"]


def without_fnapi_state_cache() -> None:
    """Start later in-process FnApiRunner workers without a state cache (idempotent)."""
    worker_handlers.STATE_CACHE_SIZE_MB = 0


_DIRECT_RUNNER_PATCHED = False


def faster_bundle_based_direct_runner() -> None:
    """Take two costs out of the BundleBasedDirectRunner that Dataflow does not have (idempotent).

    The runner runs a bundle per key of a stateful step, and at the start of each it inspects
    the DoFn's signature again (``userstate.get_dofn_specs``): that was 58% of the job's time
    locally. The specs belong to the DoFn's class, so they are kept per class here. And its
    Pub/Sub pulls block the only worker thread for up to 30 s on an idle subscription
    (``_ShortPulls``), and it holds its watermark at the wall clock while a backlog waits
    (``_backlog_aware_watermark``). Dataflow's workers inspect a DoFn once, when they set it up,
    read Pub/Sub beside the work, and hold the watermark at the oldest unacknowledged message. (Its monitor also scans every key's timers after every bundle, a
    cost that grows with the keys a run has seen; left as it is, since TestStream relies on it.)
    """
    global _DIRECT_RUNNER_PATCHED
    if _DIRECT_RUNNER_PATCHED:
        return
    from apache_beam.runners.direct import direct_runner, direct_userstate, transform_evaluator
    from apache_beam.transforms import userstate

    from apache_beam.transforms.core import CallableWrapperDoFn

    specs_by_class = {}
    original_specs = userstate.get_dofn_specs
    no_specs = (set(), set())

    def get_dofn_specs(dofn):
        cls = type(dofn)
        if cls is CallableWrapperDoFn:  # Map, FlatMap, Filter: never stateful
            return no_specs
        if "__getattribute__" in vars(cls) or "process" in vars(dofn):
            return original_specs(dofn)  # a wrapper, or a per-instance method: not cacheable
        specs = specs_by_class.get(cls)
        if specs is None:
            specs = specs_by_class[cls] = original_specs(dofn)
        return specs

    def is_stateful_dofn(dofn):
        state_specs, timer_specs = get_dofn_specs(dofn)
        return bool(state_specs or timer_specs)

    for module in (userstate, transform_evaluator, direct_userstate, direct_runner):
        if hasattr(module, "get_dofn_specs"):
            module.get_dofn_specs = get_dofn_specs
        if hasattr(module, "is_stateful_dofn"):
            module.is_stateful_dofn = is_stateful_dofn

    _short_pubsub_pulls(transform_evaluator)
    _DIRECT_RUNNER_PATCHED = True


# The runner's Pub/Sub read pulls at most 10 messages and waits up to 30 s for them, on the
# runner's only worker thread: an idle subscription stalls every timer for that long (a
# request held through an outage, a user's reorder wait, a batch's wait), and each stage that
# waits on a timer adds up to 30 s locally. Here a pull waits at most this long, for more.
PUBSUB_PULL_WAIT_SECONDS = 0.5
PUBSUB_PULL_MAX_MESSAGES = 100


class _EmptyPull:
    received_messages = ()


class _ShortPulls:
    """A subscriber client whose pulls wait briefly and take more messages at once, and which
    remembers whether the last pull left a backlog (it came back full) and the newest publish
    time it saw, for the read's watermark (``_backlog_aware_watermark``)."""

    def __init__(self, client):
        self._client = client
        self.backlog_until = None  # Timestamp of the newest message of a full pull, else None

    def __getattr__(self, name):
        return getattr(self._client, name)

    def pull(self, subscription, max_messages=10, timeout=None, **kwargs):
        from apache_beam.utils.timestamp import Timestamp
        from google.api_core import exceptions

        try:
            response = self._client.pull(subscription=subscription, max_messages=PUBSUB_PULL_MAX_MESSAGES,
                                         timeout=PUBSUB_PULL_WAIT_SECONDS, **kwargs)
        except (exceptions.DeadlineExceeded, exceptions.RetryError):
            self.backlog_until = None
            return _EmptyPull()
        received = response.received_messages
        if len(received) >= PUBSUB_PULL_MAX_MESSAGES:
            self.backlog_until = max(Timestamp.from_utc_datetime(m.message.publish_time) for m in received)
        else:
            self.backlog_until = None
        return response


def _short_pubsub_pulls(transform_evaluator) -> None:
    reader = transform_evaluator._PubSubReadEvaluator
    original = reader._get_subscriber_client.__func__

    def _get_subscriber_client(cls, transform):
        client = original(cls, transform)
        return client if isinstance(client, _ShortPulls) else _ShortPulls(client)

    reader._get_subscriber_client = classmethod(_get_subscriber_client)
    _backlog_aware_watermark(reader)


def _backlog_aware_watermark(reader) -> None:
    """The runner's Pub/Sub read holds its watermark at the wall clock after every pull, even
    when messages published earlier are still waiting in the subscription (a full pull): those
    then arrive late, behind event-time timers that already fired. Dataflow holds it at the
    oldest unacknowledged message instead. Here, after a full pull the watermark stays at the
    newest publish time that pull saw (Pub/Sub hands out roughly the oldest first)."""
    original = reader.finish_bundle

    def finish_bundle(self):
        result = original(self)
        client = self._get_subscriber_client(self._applied_ptransform)
        backlog_until = getattr(client, "backlog_until", None)
        holds = getattr(result, "keyed_watermark_holds", None)
        if backlog_until is not None and holds and None in holds:
            holds[None] = min(holds[None], backlog_until)
        return result

    reader.finish_bundle = finish_bundle
