"""Count how every event ended, per sync and branch; optionally publish each outcome.

The counters are what an operator watches (``<sync>.<branch>.<status>``). The outcome topic,
when configured, gets one small JSON record per (event, sync, branch): an audit trail that
lets anyone reconcile what was published with what reached Braze, which the demo and the
integration tests do.
"""
from __future__ import annotations

import apache_beam as beam
import orjson
from apache_beam.io.gcp.pubsub import WriteToPubSub
from apache_beam.metrics import Metrics

from transforms.coders import typed
from transforms.records import Outcome


class _CountOutcomes(beam.DoFn):
    def __init__(self):
        self._counters = {}

    def process(self, outcome):
        key = (outcome.sync, outcome.branch, outcome.status)
        counter = self._counters.get(key)
        if counter is None:
            name = f"{outcome.sync or 'all'}.{outcome.branch}.{outcome.status}"
            counter = self._counters[key] = Metrics.counter("outcomes", name)
        counter.inc()
        yield outcome


def outcome_json(outcome) -> bytes:
    return orjson.dumps(outcome._asdict())


class RecordOutcomes(beam.PTransform):
    def __init__(self, topic: str = ""):
        super().__init__()
        self._topic = topic

    def expand(self, outcomes):
        counted = typed(outcomes | "CountOutcomes" >> beam.ParDo(_CountOutcomes()), Outcome)
        if self._topic:
            (
                counted
                | "EncodeJson" >> beam.Map(outcome_json).with_output_types(bytes)
                | "Publish" >> WriteToPubSub(self._topic)
            )
        return counted
