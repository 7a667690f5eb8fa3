"""Every failure from every stage → one Pub/Sub dead-letter topic.

One message per failed input message or failed Braze object. The data is JSON with
``stage, reason, detail, sync, http_status, attempts, failed_at, payload, sources``;
``stage``, ``reason`` and ``sync`` are also attributes, so a subscription can filter on them.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage, WriteToPubSub
from apache_beam.metrics import Metrics


def to_pubsub_message(dead_letter) -> PubsubMessage:
    return PubsubMessage(dead_letter.to_json(), dead_letter.attributes())


class _CountDeadLetters(beam.DoFn):
    def process(self, dead_letter):
        Metrics.counter("dead_letters", f"{dead_letter.stage}.{dead_letter.reason}").inc()
        yield to_pubsub_message(dead_letter)


class WriteDeadLetters(beam.PTransform):
    """DeadLetter records → the dead-letter topic (``projects/P/topics/T``)."""

    def __init__(self, topic: str):
        super().__init__()
        self._topic = topic

    def expand(self, dead_letters):
        return (
            dead_letters
            | "ToPubsubMessage" >> beam.ParDo(_CountDeadLetters())
            | "Publish" >> WriteToPubSub(self._topic, with_attributes=True)
        )
