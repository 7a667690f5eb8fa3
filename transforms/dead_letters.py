"""Every failure from every stage → one Pub/Sub dead-letter topic, one message per failure.

The message data is the dead letter's ``data``, byte for byte: the input event as it came in,
or the Braze object that failed. Everything else travels as attributes, so ``pipeline.replay``
can republish the data unchanged, and a subscription can filter on stage, reason or sync:

=================  ================================================================================
attribute          value
=================  ================================================================================
``stage``          where it failed: parse, dedup, route, identify, pack, braze, replay, ...
``reason``         a short stable code (README, "Dead letters")
``detail``         what happened and what to fix; scrubbed of keys; at most 1,000 characters
``sync``           the sync, or empty before the fan-out to syncs
``payload_type``   ``input_event`` (replay to the input topic) or ``braze_object`` (replay topic)
``kind``           for a Braze object: attributes, events or purchases
``http_status``    Braze's answer, where there was one
``attempts``       requests made
``failed_at``      ISO 8601 UTC
``source``         the first input event it came from, ``<message id>/<index>``
``sources``        all of them, comma-separated, continued in ``sources_2``, ``sources_3``, ... as
                   needed (``sources_of`` reads them back; ``sources_count`` says how many)
``error_class``    for ``internal_error``: the exception's class
``data_truncated`` present only when the data had to be cut to fit Pub/Sub (with ``data_bytes``
                   and ``data_sha256`` of the original)
``format``         ``2``
=================  ================================================================================

Pub/Sub refuses a message over 10 MB and an attribute value over 1,024 bytes. Input messages
are at most 10 MB themselves, and the job refuses (as ``message_too_large``) any over Amplitude's
1 MB, so the data of a dead letter is kept whole up to ``MAX_DATA_BYTES`` and cut (and marked)
only beyond: no dead letter can fail to publish, whatever the input.
"""
from __future__ import annotations

import hashlib
from typing import Dict

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage, WriteToPubSub
from apache_beam.metrics import Metrics

from transforms.records import DeadLetter, utc_now_iso
from transforms.scrub import scrub

__all__ = ["MAX_DATA_BYTES", "MAX_ATTRIBUTE_BYTES", "FORMAT_VERSION", "attributes_of", "sources_of",
           "to_pubsub_message", "WriteDeadLetters"]

FORMAT_VERSION = "2"
# Pub/Sub's limits: 10 MB per message, 1,024 bytes per attribute value. The data keeps well
# under the first so the attributes (at most ~16 of ≤1 KB) always fit beside it.
MAX_DATA_BYTES = 9_000_000
MAX_ATTRIBUTE_BYTES = 1024
MAX_DETAIL_CHARS = 1000
MAX_SOURCE_ATTRIBUTES = 64


def _cut(text: str, max_bytes: int = MAX_ATTRIBUTE_BYTES) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, on a character boundary."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes - 3].decode("utf-8", "ignore") + "..."


def attributes_of(letter: DeadLetter) -> Dict[str, str]:
    """The Pub/Sub attributes of a dead letter: every value a string of at most 1,024 bytes."""
    detail = scrub(letter.detail)
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[:MAX_DETAIL_CHARS - 3] + "..."
    attributes = {
        "format": FORMAT_VERSION,
        "stage": _cut(str(letter.stage)),
        "reason": _cut(str(letter.reason)),
        "detail": _cut(detail),
        "sync": _cut(str(letter.sync or "")),
        "payload_type": _cut(str(letter.payload_type)),
        "failed_at": _cut(letter.failed_at or utc_now_iso()),
    }
    if letter.kind:
        attributes["kind"] = _cut(str(letter.kind))
    if letter.http_status is not None:
        attributes["http_status"] = str(int(letter.http_status))
    if letter.attempts:
        attributes["attempts"] = str(int(letter.attempts))
    if letter.error_class:
        attributes["error_class"] = _cut(str(letter.error_class))
    sources = [str(s) for s in letter.sources]
    if sources:
        attributes["source"] = _cut(sources[0])
        attributes["sources_count"] = str(len(sources))
        for i, chunk in enumerate(_chunks(sources)):
            attributes["sources" if i == 0 else f"sources_{i + 1}"] = chunk
    return attributes


def _chunks(sources):
    """Comma-joined sources in attribute-sized chunks, at most ``MAX_SOURCE_ATTRIBUTES`` of them
    (Pub/Sub allows 100 attributes; ``sources_count`` tells when some did not fit)."""
    chunk: list = []
    size = 0
    emitted = 0
    for source in sources:
        source = _cut(source.replace(",", "%2C"), 256)
        if chunk and size + 1 + len(source.encode()) > MAX_ATTRIBUTE_BYTES:
            yield ",".join(chunk)
            emitted += 1
            if emitted == MAX_SOURCE_ATTRIBUTES:
                return
            chunk, size = [], 0
        chunk.append(source)
        size += len(source.encode()) + 1
    if chunk:
        yield ",".join(chunk)


def sources_of(attributes) -> list:
    """The sources a dead letter's attributes name (as many as fit; see ``sources_count``)."""
    out = []
    for i in range(MAX_SOURCE_ATTRIBUTES):
        value = attributes.get("sources" if i == 0 else f"sources_{i + 1}")
        if not value:
            break
        out.extend(s.replace("%2C", ",") for s in value.split(","))
    return out


def to_pubsub_message(letter: DeadLetter) -> PubsubMessage:
    data = letter.data if isinstance(letter.data, bytes) else str(letter.data).encode("utf-8", "replace")
    attributes = attributes_of(letter)
    if len(data) > MAX_DATA_BYTES:
        attributes["data_truncated"] = "true"
        attributes["data_bytes"] = str(len(data))
        attributes["data_sha256"] = hashlib.sha256(data).hexdigest()
        data = data[:MAX_DATA_BYTES]
    return PubsubMessage(data, attributes)


class _ToPubsubMessageDoFn(beam.DoFn):
    """Counts each dead letter by stage and reason. Never raises: the dead-letter path is the
    job's last resort, so a letter that cannot be rendered becomes a minimal one instead."""

    def __init__(self):
        self._counters = {}
        self._fallbacks = Metrics.counter("dead_letters", "render_failures")

    def process(self, letter):
        try:
            message = to_pubsub_message(letter)
            key = f"{message.attributes['stage']}.{message.attributes['reason']}"
        except Exception as error:  # noqa: BLE001 - see the class docstring
            self._fallbacks.inc()
            data = getattr(letter, "data", b"")
            message = PubsubMessage(data[:MAX_DATA_BYTES] if isinstance(data, bytes) else b"", {
                "format": FORMAT_VERSION, "stage": "dead_letters", "reason": "internal_error",
                "detail": _cut(scrub(f"could not render a dead letter: {type(error).__name__}: {error}")),
                "error_class": type(error).__name__, "failed_at": utc_now_iso(),
            })
            key = "dead_letters.internal_error"
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = Metrics.counter("dead_letters", key)
        counter.inc()
        yield message


class WriteDeadLetters(beam.PTransform):
    """DeadLetter records → the dead-letter topic (``projects/P/topics/T``)."""

    def __init__(self, topic: str):
        super().__init__()
        self._topic = topic

    def expand(self, dead_letters):
        return (
            dead_letters
            | "ToPubsubMessage" >> beam.ParDo(_ToPubsubMessageDoFn())
            | "Publish" >> WriteToPubSub(self._topic, with_attributes=True)
        )
