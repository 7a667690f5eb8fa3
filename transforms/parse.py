"""Pub/Sub message → normalised Amplitude events, or dead letters saying why not.

A message holds one event or a JSON array of events, in the HTTP V2 shape (``time`` in epoch
ms, ``insert_id``) or the Export / Pub/Sub-destination shape (``event_time`` as a UTC string,
``$insert_id``, ``uuid``). Parsing never raises on input: whatever cannot become an event is
a dead letter with a reason code, stage ``parse``.
"""
from __future__ import annotations

import datetime
import hashlib
import re
from typing import Iterator, List, Optional, Tuple, Union

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms.coders import typed
from transforms.guard import INTERNAL_ERROR, Failure, guarded
from transforms.records import DEAD_LETTERED, DeadLetter, Outcome, ParsedEvent, utc_now_iso

DEAD_LETTER_TAG = "dead_letters"
OUTCOME_TAG = "outcomes"
PARSE_BRANCH = "parse"

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
# Plausible event times: a `time` outside them is a unit mistake (seconds for milliseconds) or
# garbage, and Braze would store it as given (or as "now", if in the future).
MIN_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TIME_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
# Amplitude's own limits (docs/api-facts.md, A1): strings ≤ 1024 characters, 1 MB per request.
MAX_STRING_CHARS = 1024
MAX_MESSAGE_BYTES = 1024 * 1024
# Deepest nesting of objects and arrays accepted in an event (the event object is level 1).
# Amplitude documents no limit; Braze reads nested attributes only a few levels deep, and every
# later stage (coders, the request body encoder) must handle what parse lets through, so an
# event deeper than this is refused here, with its reason, before it can hurt a later stage.
MAX_EVENT_DEPTH = 64
# Ids Amplitude refuses with a 400 (docs/api-facts.md, A1); compared case-insensitively.
PLACEHOLDER_IDS = frozenset({
    "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", "",
    "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1",
})
_LONGEST_PLACEHOLDER = max(len(i) for i in PLACEHOLDER_IDS)
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
        stripped = value.strip()
        if len(stripped) <= _LONGEST_PLACEHOLDER and stripped.lower() in PLACEHOLDER_IDS:
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
) -> Iterator[Union[ParsedEvent, Tuple[str, ParseError, bytes]]]:
    """Yield a ParsedEvent per good event and ``(source, error, event_bytes)`` per bad one.

    Sources are ``<message_id>/<index>``; a message that is not even a JSON value counts as one
    event, ``<message_id>/0``, so every published event has exactly one source. ``event_bytes``
    is what a replay republishes: the whole message, or, for one event of a JSON array, that
    event's own bytes exactly as they stand in the message (``array_element_spans``).
    """
    if len(data) > MAX_MESSAGE_BYTES:
        yield f"{message_id}/0", ParseError(
            "message_too_large", f"the message has {len(data)} bytes; Amplitude sends at most {MAX_MESSAGE_BYTES}"
        ), data
        return
    try:
        decoded = orjson.loads(data)  # refuses bytes that are not UTF-8 as well
    except orjson.JSONDecodeError as e:
        try:
            data.decode("utf-8")  # which of the two, for the reason: only on this failure path
        except UnicodeDecodeError as not_utf8:
            yield f"{message_id}/0", ParseError("invalid_encoding", f"the message is not UTF-8: {not_utf8}"), data
            return
        reason = "too_deep" if "depth" in str(e) else "invalid_json"
        yield f"{message_id}/0", ParseError(reason, f"the message is not JSON we can read: {e}"), data
        return
    if isinstance(decoded, list):
        if not decoded:
            yield f"{message_id}/0", ParseError("empty_message", "the message is an empty JSON array"), data
            return
        events: List = decoded
        whole_message = len(events) == 1
    else:
        events = [decoded]
        whole_message = True
    # Counting brackets is cheap and bounds the depth from above: only a message with more
    # brackets than the limit needs the exact check, event by event.
    deep_possible = data.count(b"{") + data.count(b"[") > MAX_EVENT_DEPTH
    spans = None
    for index, raw in enumerate(events):
        source = f"{message_id}/{index}"
        try:
            if deep_possible and nesting_depth(raw, MAX_EVENT_DEPTH) > MAX_EVENT_DEPTH:
                raise ParseError("too_deep", f"the event nests objects or arrays more than {MAX_EVENT_DEPTH} "
                                 "levels deep; Braze cannot use values that deep")
            yield normalise_event(raw, source, publish_time_ms)
        except ParseError as e:
            if whole_message:
                yield source, e, data
                continue
            if spans is None:
                spans = array_element_spans(data, len(events))
            yield source, e, data[spans[index][0]:spans[index][1]] if spans else data


def nesting_depth(value, limit: int) -> int:
    """Levels of objects and arrays in ``value`` (a scalar is 0), counting no further than
    ``limit + 1``; iterative, so no input can exhaust the stack."""
    if not isinstance(value, (dict, list)):
        return 0
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return deepest


# A JSON string (quotes and escapes inside it), or one of the structural characters.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]', re.DOTALL)
_JSON_SPACE = b" \t\n\r"


def array_element_spans(data: bytes, count: int) -> Optional[List[Tuple[int, int]]]:
    """``(start, end)`` of each element of the top-level JSON array in ``data``, whitespace
    excluded, or None if they cannot be found (never expected for JSON orjson accepted).

    Only called for a message that has a bad event beside good ones, so its cost is paid on
    the failure path alone."""
    spans: List[Tuple[int, int]] = []
    depth = 0
    start = None
    for match in _JSON_TOKEN.finditer(data):
        token = match.group()
        if token[:1] == b'"':
            continue
        if token in (b"[", b"{"):
            depth += 1
            if depth == 1:
                start = match.end()
        elif token in (b"]", b"}"):
            if depth == 1 and start is not None:
                spans.append(_strip(data, start, match.start()))
                break
            depth -= 1
        elif depth == 1 and start is not None:  # a comma between elements
            spans.append(_strip(data, start, match.start()))
            start = match.end()
    return spans if len(spans) == count else None


def _strip(data: bytes, start: int, end: int) -> Tuple[int, int]:
    while start < end and data[start] in _JSON_SPACE:
        start += 1
    while end > start and data[end - 1] in _JSON_SPACE:
        end -= 1
    return start, end


def fallback_message_id(data: bytes) -> str:
    """For messages without a Pub/Sub id (files, tests): stable, from the content."""
    return "sha1-" + hashlib.sha1(data).hexdigest()[:16]


def _failed_message(dofn, message, failure: Failure):
    """``guarded``'s fallback: the whole message, unchanged, as one dead letter."""
    data, message_id, _ = _unpack(message)
    source = f"{message_id}/0"
    yield pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
        stage="parse", reason=INTERNAL_ERROR, detail=failure.detail, sync="", data=data,
        failed_at=utc_now_iso(), sources=(source,), error_class=failure.error_class))
    yield pvalue.TaggedOutput(OUTCOME_TAG, Outcome(source, "", PARSE_BRANCH, DEAD_LETTERED, INTERNAL_ERROR))


def _unpack(message) -> Tuple[bytes, str, Optional[dict]]:
    if isinstance(message, (bytes, bytearray)):
        data, message_id, attributes = bytes(message), None, None
    else:  # PubsubMessage
        data, message_id, attributes = bytes(message.data or b""), message.message_id, message.attributes
    return data, message_id or fallback_message_id(data), attributes


class _ParseDoFn(beam.DoFn):
    def __init__(self):
        self._messages = Metrics.counter("parse", "messages_in")
        self._events = Metrics.counter("parse", "events_in")
        self._dead = Metrics.counter("parse", "dead_lettered")

    @guarded("parse", _failed_message)
    def process(self, message, timestamp=beam.DoFn.TimestampParam):
        self._messages.inc()
        data, message_id, _ = _unpack(message)
        publish_time_ms = int(timestamp.micros // 1000) if timestamp is not None and timestamp.micros > 0 else None
        for result in parse_message(data, message_id, publish_time_ms):
            self._events.inc()
            if isinstance(result, ParsedEvent):
                yield result
                continue
            source, error, event_bytes = result
            self._dead.inc()
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                stage="parse", reason=error.reason, detail=error.detail, sync="", data=event_bytes,
                failed_at=utc_now_iso(), sources=(source,)))
            yield pvalue.TaggedOutput(OUTCOME_TAG, Outcome(source, "", PARSE_BRANCH, DEAD_LETTERED, error.reason))


class ParseEvents(beam.PTransform):
    """Pub/Sub messages (or raw bytes) → ParsedEvent; tags ``dead_letters`` and ``outcomes``."""

    def expand(self, messages):
        parsed = messages | "Parse" >> beam.ParDo(_ParseDoFn()).with_outputs(DEAD_LETTER_TAG, OUTCOME_TAG, main="events")
        typed(parsed.events, ParsedEvent)
        typed(parsed[DEAD_LETTER_TAG], DeadLetter)
        typed(parsed[OUTCOME_TAG], Outcome)
        return parsed
