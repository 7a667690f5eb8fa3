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

from transforms.records import (
    ATTRIBUTES, DEAD_LETTERED, EVENTS, PURCHASES, BrazeItem, DeadLetter, Outcome, ParsedEvent, utc_now_iso,
)

DEAD_LETTER_TAG = "dead_letters"
OUTCOME_TAG = "outcomes"
REPLAY_TAG = "replay"
PARSE_BRANCH = "parse"
REPLAY_BRANCH = "replay"
# A message with this attribute set to "braze" is a replayed dead letter of stage braze (see
# pipeline/replay.py): its data is the dead letter's JSON and its Braze object goes straight
# to the packer for that sync, past the identify state (which already counted it as sent).
REPLAY_ATTRIBUTE = "amplitude_braze_replay"

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
# Plausible event times: a `time` outside them is a unit mistake (seconds for milliseconds) or
# garbage, and Braze would store it as given (or as "now", if in the future).
MIN_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TIME_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
# Amplitude's own limits (amplitude.md §1.1): strings ≤ 1024 characters, 1 MB per request.
MAX_STRING_CHARS = 1024
MAX_MESSAGE_BYTES = 1024 * 1024
# A dead letter must fit in one Pub/Sub message (10 MB); a larger payload is cut and says so.
MAX_DEAD_LETTER_PAYLOAD_CHARS = 8 * 1024 * 1024
# Ids Amplitude refuses with a 400 (amplitude.md §1.1); compared case-insensitively.
PLACEHOLDER_IDS = frozenset({
    "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", "",
    "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1",
})
# Amplitude reserves these in event streaming.
RESERVED_EVENT_TYPES = frozenset({"_all", "_identify"})


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
        return _in_range(int(value), "time")
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
        return _in_range(int((parsed - _EPOCH).total_seconds() * 1000), "event_time")
    if fallback_ms is None:
        raise ParseError("missing_time", "the event has neither 'time' nor 'event_time'")
    return fallback_ms


def _in_range(time_ms: int, field: str) -> int:
    if MIN_TIME_MS <= time_ms < MAX_TIME_MS:
        return time_ms
    hint = " (it looks like seconds; Amplitude's 'time' is in milliseconds)" if 0 < time_ms < MIN_TIME_MS // 1000 * 10 else ""
    raise ParseError("time_out_of_range", f"'{field}' is {time_ms} ms since 1970, outside 2000-2100{hint}")


def _check_ids(raw: dict) -> None:
    """At least one usable id: a string, not one of Amplitude's placeholders, ≤ 1024 chars."""
    usable = False
    placeholders = []
    for field in ("user_id", "device_id"):
        value = raw.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ParseError("invalid_id_type", f"'{field}' must be a string, got {type(value).__name__}")
        if value.strip().lower() in PLACEHOLDER_IDS:
            placeholders.append(f"{field}={value!r}")
        elif len(value) > MAX_STRING_CHARS:
            raise ParseError("id_too_long", f"'{field}' has {len(value)} characters; Amplitude allows {MAX_STRING_CHARS}")
        else:
            usable = True
    if usable:
        return
    if placeholders:
        raise ParseError("placeholder_id", f"{', '.join(placeholders)}: a placeholder Amplitude rejects, not an id")
    raise ParseError("missing_user_and_device_id", "the event has neither 'user_id' nor 'device_id'")


def normalise_event(raw, source: str, publish_time_ms: Optional[int]) -> ParsedEvent:
    """Check one decoded event and return it normalised; raise ParseError if it cannot be sent."""
    if not isinstance(raw, dict):
        raise ParseError("not_an_object", f"an event must be a JSON object, got {type(raw).__name__}")
    event_type = raw.get("event_type")
    if event_type is None or event_type == "":
        raise ParseError("missing_event_type", "the event has no 'event_type' (a non-empty string)")
    if not isinstance(event_type, str) or len(event_type) > MAX_STRING_CHARS:
        raise ParseError("invalid_event_type", f"'event_type' must be a string of at most {MAX_STRING_CHARS} "
                         f"characters, got {type(event_type).__name__} {str(event_type)[:60]!r}")
    if event_type in RESERVED_EVENT_TYPES:
        raise ParseError("reserved_event_type", f"'{event_type}' is reserved by Amplitude event streaming")
    _check_ids(raw)
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
    if len(data) > MAX_MESSAGE_BYTES:
        text = data.decode("utf-8", "replace")
        yield f"{message_id}/0", ParseError(
            "message_too_large", f"the message has {len(data)} bytes; Amplitude sends at most {MAX_MESSAGE_BYTES}"
        ), text
        return
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


def parse_replay(data: bytes, message_id: str, publish_time_ms: Optional[int]):
    """A replayed Braze dead letter → the BrazeItem to resend, or ``(source, error, text)``."""
    source = f"{message_id}/0"
    text = data.decode("utf-8", "replace")
    try:
        letter = orjson.loads(data)
        obj, sync = letter["payload"], letter["sync"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return source, ParseError("invalid_replay", "a replay message must be a dead letter's JSON "
                                  "with 'payload' and 'sync'"), text
    if not isinstance(obj, dict) or not isinstance(sync, str) or not sync:
        return source, ParseError("invalid_replay", "the replayed dead letter has no Braze object or sync"), text
    if "product_id" in obj:
        kind = PURCHASES
    elif "name" in obj and "time" in obj:
        kind = EVENTS
    else:
        kind = ATTRIBUTES
    user = obj.get("external_id") or obj.get("braze_id") or orjson.dumps(obj.get("user_alias")).decode()
    return BrazeItem(sync, str(user), kind, obj, (source,), REPLAY_BRANCH, publish_time_ms)


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
            data, message_id, attributes = bytes(message), None, None
        else:  # PubsubMessage
            data, message_id, attributes = message.data or b"", message.message_id, message.attributes
        message_id = message_id or fallback_message_id(data)
        publish_time_ms = int(timestamp.micros // 1000) if timestamp is not None and timestamp.micros > 0 else None
        if attributes and attributes.get(REPLAY_ATTRIBUTE) == "braze":
            results = [parse_replay(data, message_id, publish_time_ms)]
        else:
            results = parse_message(data, message_id, publish_time_ms)
        for result in results:
            self._events.inc()
            if isinstance(result, ParsedEvent):
                yield result
                continue
            if isinstance(result, BrazeItem):
                yield pvalue.TaggedOutput(REPLAY_TAG, result)
                continue
            source, error, payload = result
            if len(payload) > MAX_DEAD_LETTER_PAYLOAD_CHARS:
                payload = payload[:MAX_DEAD_LETTER_PAYLOAD_CHARS]
                error.detail += f" (payload cut to its first {MAX_DEAD_LETTER_PAYLOAD_CHARS} characters)"
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
    """Pub/Sub messages (or raw bytes) → ParsedEvent; tags ``dead_letters``, ``outcomes`` and
    ``replay`` (BrazeItems of replayed Braze dead letters)."""

    def expand(self, messages):
        return messages | "Parse" >> beam.ParDo(_ParseDoFn()).with_outputs(
            DEAD_LETTER_TAG, OUTCOME_TAG, REPLAY_TAG, main="events"
        )
