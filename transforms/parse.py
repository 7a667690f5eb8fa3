"""Pub/Sub message → normalised Amplitude events, or dead letters saying why not.

A message holds one event or a JSON array of events, in the HTTP V2 shape (``time`` in epoch
ms, ``insert_id``) or the Export / Pub/Sub-destination shape (``event_time`` as a UTC string,
``$insert_id``, ``uuid``). Parsing never raises on input: whatever cannot become an event is
a dead letter with a reason code, stage ``parse``.
"""
from __future__ import annotations

import datetime
import hashlib
from typing import Iterator, List, Optional, Tuple, Union

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms.records import DEAD_LETTERED, DeadLetter, Outcome, ParsedEvent, utc_now_iso

DEAD_LETTER_TAG = "dead_letters"
OUTCOME_TAG = "outcomes"
PARSE_BRANCH = "parse"

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


class ParseError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_event_time_ms(event: dict, fallback_ms: Optional[int]) -> int:
    """The event's time in epoch ms from either shape.

    HTTP V2 sends ``time`` as an integer of milliseconds (Amplitude rejects any other form, so
    do we); the Export shape sends ``event_time`` as ``2022-02-28 20:07:01.795`` in UTC. With
    neither, Amplitude uses the upload time; the nearest thing here is the publish time.
    """
    if "time" in event:
        value = event["time"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParseError("invalid_time", f"'time' must be epoch milliseconds as a number, got {value!r:.60}")
        return int(value)
    value = event.get("event_time")
    if value is not None:
        if not isinstance(value, str):
            raise ParseError("invalid_time", f"'event_time' must be a UTC time string, got {value!r:.60}")
        try:
            parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ParseError("invalid_time", f"'event_time' is not a time: {value!r:.60}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)
        return int((parsed - _EPOCH).total_seconds() * 1000)
    if fallback_ms is None:
        raise ParseError("missing_time", "the event has neither 'time' nor 'event_time'")
    return fallback_ms


def _non_empty_string(value) -> bool:
    return isinstance(value, str) and value != ""


def normalise_event(raw, source: str, publish_time_ms: Optional[int]) -> ParsedEvent:
    """Check one decoded event and return it normalised; raise ParseError if it cannot be sent."""
    if not isinstance(raw, dict):
        raise ParseError("not_an_object", f"an event must be a JSON object, got {type(raw).__name__}")
    if not _non_empty_string(raw.get("event_type")):
        raise ParseError("missing_event_type", "the event has no 'event_type' (a non-empty string)")
    if not (_non_empty_string(raw.get("user_id")) or _non_empty_string(raw.get("device_id"))):
        raise ParseError("missing_user_and_device_id", "the event has neither 'user_id' nor 'device_id'")
    for key in ("event_properties", "user_properties"):
        value = raw.get(key)
        if value is None:
            raw[key] = {}
        elif not isinstance(value, dict):
            raise ParseError("invalid_properties", f"'{key}' must be a JSON object, got {type(value).__name__}")
    time_ms = parse_event_time_ms(raw, publish_time_ms)
    insert_id = raw.get("insert_id") or raw.get("$insert_id") or raw.get("uuid")
    return ParsedEvent(source, publish_time_ms, None if insert_id is None else str(insert_id), time_ms, raw)


def parse_message(
    data: bytes, message_id: str, publish_time_ms: Optional[int]
) -> Iterator[Union[ParsedEvent, Tuple[str, ParseError, str]]]:
    """Yield a ParsedEvent per good event and ``(source, error, payload_text)`` per bad one.

    Sources are ``<message_id>/<index>``; a message that is not even a JSON value counts as one
    event, ``<message_id>/0``, so every published event has exactly one source.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield f"{message_id}/0", ParseError("invalid_encoding", f"the message is not UTF-8: {e}"), data.decode(
            "utf-8", "replace"
        )
        return
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        yield f"{message_id}/0", ParseError("invalid_json", f"the message is not JSON: {e}"), text
        return
    if isinstance(decoded, list):
        if not decoded:
            yield f"{message_id}/0", ParseError("empty_message", "the message is an empty JSON array"), text
            return
        events: List = decoded
        whole_message = len(events) == 1
    else:
        events = [decoded]
        whole_message = True
    for index, raw in enumerate(events):
        source = f"{message_id}/{index}"
        try:
            yield normalise_event(raw, source, publish_time_ms)
        except ParseError as e:
            # The payload is what a person would replay: the whole message, or the one bad event.
            yield source, e, text if whole_message else orjson.dumps(raw).decode()


def fallback_message_id(data: bytes) -> str:
    """For messages without a Pub/Sub id (files, tests): stable, from the content."""
    return "sha1-" + hashlib.sha1(data).hexdigest()[:16]


class _ParseDoFn(beam.DoFn):
    def __init__(self):
        self._messages = Metrics.counter("parse", "messages_in")
        self._events = Metrics.counter("parse", "events_in")
        self._dead = Metrics.counter("parse", "dead_lettered")

    def process(self, message, timestamp=beam.DoFn.TimestampParam):
        self._messages.inc()
        if isinstance(message, (bytes, bytearray)):
            data, message_id = bytes(message), None
        else:  # PubsubMessage
            data, message_id = message.data or b"", message.message_id
        message_id = message_id or fallback_message_id(data)
        publish_time_ms = int(timestamp.micros // 1000) if timestamp is not None and timestamp.micros > 0 else None
        for result in parse_message(data, message_id, publish_time_ms):
            self._events.inc()
            if isinstance(result, ParsedEvent):
                yield result
                continue
            source, error, payload = result
            self._dead.inc()
            yield pvalue.TaggedOutput(
                DEAD_LETTER_TAG,
                DeadLetter(
                    stage="parse", reason=error.reason, detail=error.detail, sync="", payload=payload,
                    failed_at=utc_now_iso(), sources=(source,),
                ),
            )
            yield pvalue.TaggedOutput(OUTCOME_TAG, Outcome(source, "", PARSE_BRANCH, DEAD_LETTERED, error.reason))


class ParseEvents(beam.PTransform):
    """Pub/Sub messages (or raw bytes) → ParsedEvent; tags ``dead_letters`` and ``outcomes``."""

    def expand(self, messages):
        return messages | "Parse" >> beam.ParDo(_ParseDoFn()).with_outputs(
            DEAD_LETTER_TAG, OUTCOME_TAG, main="events"
        )
