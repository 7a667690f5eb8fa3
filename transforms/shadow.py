"""Shadow mode: a sync's requests built as the sink would send them, published instead of sent.

A sync with ``mode: shadow`` runs through every step a live sync runs: parse, dedup, route,
filters, identify, track, packing, and the sink's ordering per batch key. Where the sink would
post a request, it calls ``shadow_outputs`` instead: the body is made by the same function the
sender uses (``transforms.braze_client.build_track_body``), and leaves on the sink's
``SHADOW_TAG`` output as a ``ShadowRequest``; nothing reaches Braze and no key is read.
``WriteShadowRequests`` publishes each to ``--shadow_topic``: the body as the message data, and
as attributes the sync, the batch key and the request's number in it (``shadow_message``).
``pipeline.preview`` collects them instead.

Accounting: every source of every object in a shadow request ends ``skipped`` with reason
``shadow`` (``SHADOW``) in its branch, where a live sync would say ``delivered``; what a live sync
would skip or dead-letter before sending is skipped or dead-lettered the same way. Counters
(namespace ``braze``): ``<sync>.shadow_requests`` and ``<sync>.shadow_objects``.
"""
from __future__ import annotations

from typing import Dict, Iterator

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.gcp.pubsub import PubsubMessage, WriteToPubSub
from apache_beam.metrics import Metrics

from transforms.braze_client import build_track_body
from transforms.records import SKIPPED, Outcome, Request, ShadowRequest
from transforms.sink_state import METRICS_NAMESPACE  # the sink's, so a sync's counters sit together

__all__ = ["SHADOW", "SHADOW_TAG", "SHADOW_FORMAT", "ShadowCounters", "shadow_request", "shadow_outputs",
           "shadow_message", "WriteShadowRequests"]

SHADOW = "shadow"  # the reason on the outcome of an object a shadow sync would have sent
SHADOW_TAG = "shadow"  # the sink's output of ShadowRequest records
SHADOW_FORMAT = "1"  # the "format" attribute of a shadow message


class ShadowCounters:
    """One DoFn instance's shadow counters, created per sync on first use."""

    def __init__(self):
        self._counters: Dict[str, tuple] = {}

    def count(self, sync: str, objects: int) -> None:
        counters = self._counters.get(sync)
        if counters is None:
            counters = self._counters[sync] = (
                Metrics.counter(METRICS_NAMESPACE, f"{sync}.shadow_requests"),
                Metrics.counter(METRICS_NAMESPACE, f"{sync}.shadow_objects"))
        counters[0].inc()
        counters[1].inc(objects)


def shadow_request(request: Request) -> ShadowRequest:
    """The request as the sink would have sent it (pure). Its objects belong to one sync."""
    body, _ = build_track_body(request.items)
    return ShadowRequest(request.items[0].sync, request.key, request.seq, body.decode("utf-8"), len(request.items))


def shadow_outputs(request: Request, counters: ShadowCounters) -> Iterator:
    """The sink's outputs for one request of a shadow sync: the ``ShadowRequest`` on
    ``SHADOW_TAG``, then a ``skipped``/``shadow`` outcome per source of each object."""
    if not request.items:
        return
    shadow = shadow_request(request)
    counters.count(shadow.sync, shadow.objects)
    yield pvalue.TaggedOutput(SHADOW_TAG, shadow)
    for item in request.items:
        for source in item.sources:
            yield Outcome(source, item.sync, item.branch, SKIPPED, SHADOW)


def shadow_message(shadow: ShadowRequest) -> PubsubMessage:
    """A shadow request as a Pub/Sub message: the body as data; never a key (the body has none)."""
    return PubsubMessage(shadow.body.encode("utf-8"), {
        "format": SHADOW_FORMAT,
        "sync": shadow.sync,
        "batch_key": shadow.key,
        "seq": str(int(shadow.seq)),
        "objects": str(int(shadow.objects)),
    })


class WriteShadowRequests(beam.PTransform):
    """ShadowRequest records → the shadow topic (``projects/P/topics/T``). A body is at most
    4 MB (the packer's cap), well under Pub/Sub's 10 MB per message."""

    def __init__(self, topic: str):
        super().__init__()
        self._topic = topic

    def expand(self, shadows):
        return (
            shadows
            | "ToPubsubMessage" >> beam.Map(shadow_message)
            | "Publish" >> WriteToPubSub(self._topic, with_attributes=True)
        )
