"""Amplitude's Pub/Sub cohort feed: message bytes → membership batches (pure), and the Beam step.

Amplitude's "Google Pub/Sub (Cohort Sync)" destination publishes one JSON batch per message
(docs/api-facts.md, A6)::

    {"cohort_name": "...", "cohort_id": "...", "in_cohort": true, "computed_time": "1767225600",
     "message_id": "...", "users": [{"user_id": "...", "user_properties": {...}}]}

``in_cohort`` true: every user enters; false: every user leaves. Tolerated where Amplitude's documentation
says unconfirmed: ``compute_time`` for ``computed_time`` (the field lists' spelling); a
``computed_time`` as epoch seconds in a string (documented), a number, epoch milliseconds (a
value over 10^11) or ISO 8601; ``user_properties`` on the user or absent (Pub/Sub dropped
them); a missing ``message_id`` is replaced by the Pub/Sub message id and the batch's index; a
JSON array of batches. The job's earlier change format, ``{"cohort_id", "change":
"enter"|"leave", "user_id", "time"}``, is a second accepted shape.

A message that cannot be read, or a batch in it that is not a feed batch or names a cohort no
feed sync has (``unknown_cohort``), sends the message to the dead letters with a reason, its
bytes unchanged (``transforms.dead_letters``); the readable batches of the same message still
go on (a replay of the message is safe: their ``message_id`` repeats are dropped).
"""
from __future__ import annotations

import datetime
from typing import Iterable, List, NamedTuple, Optional, Tuple

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms.guard import guarded
from transforms.records import INPUT_EVENT, DeadLetter, utc_now_iso

__all__ = ["DEAD_LETTER_TAG", "FeedBatch", "ParseFeed", "parse_feed_message", "computed_ms"]

DEAD_LETTER_TAG = "dead_letters"
STAGE = "cohort_feed.parse"
METRICS_NAMESPACE = "cohort_feed"
MAX_USERS_PER_BATCH = 1_000_000  # Amplitude's real-time cohort limit: more is not a real batch
_ENTER = ("enter", "entered", "add", "join")
_LEAVE = ("leave", "left", "exit", "remove")
_MIN_MS, _MAX_MS = 946_684_800_000, 4_102_444_800_000  # 2000-01-01 .. 2100-01-01


class FeedBatch(NamedTuple):
    """One membership batch: every user in it entered (``in_cohort``) or left, at ``computed_ms``."""

    message_id: str
    cohort_id: str
    cohort_name: str
    in_cohort: bool
    computed_ms: int
    users: Tuple[Tuple[str, str], ...]  # (user_id or "", user_properties as JSON of its scalars, or "")


class _Bad(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def computed_ms(value) -> Optional[int]:
    """``computed_time`` → epoch milliseconds, or None when it is not a time (see the docstring)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=datetime.timezone.utc)
            value = dt.timestamp()
    if not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
        return None
    ms = int(value) if abs(value) > 1e11 else int(value * 1000)
    return ms if _MIN_MS <= ms <= _MAX_MS else None


def _text(value, name: str, required: bool = True, limit: int = 1024) -> str:
    if value is None and not required:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad(f"invalid_{name}", f"'{name}' must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if (required and not text) or len(text) > limit:
        raise _Bad(f"invalid_{name}", f"'{name}' must be 1-{limit} characters")
    return text


def _user(user) -> Tuple[str, str]:
    if not isinstance(user, dict):
        return "", ""
    raw = user.get("user_id")
    user_id = str(raw).strip() if isinstance(raw, (str, int)) and not isinstance(raw, bool) else ""
    props = user.get("user_properties")
    scalars = {}
    if isinstance(props, dict):
        scalars = {str(k): v for k, v in props.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)
                   and len(str(v)) <= 1024}
    if user_id and len(user_id) > 1024:
        user_id = ""
    return user_id, orjson.dumps(scalars).decode() if scalars else ""


def _batch(record, index: int, pubsub_id: str) -> FeedBatch:
    if not isinstance(record, dict):
        raise _Bad("not_an_object", f"element {index} is not a JSON object")
    cohort_id = _text(record.get("cohort_id"), "cohort_id", limit=128)
    message_id = record.get("message_id")
    message_id = _text(message_id, "message_id") if message_id is not None else f"pubsub:{pubsub_id}:{index}"
    name = record.get("cohort_name")
    cohort_name = name if isinstance(name, str) and len(name) <= 1024 else ""
    if "in_cohort" in record:
        if not isinstance(record["in_cohort"], bool):
            raise _Bad("invalid_in_cohort", "'in_cohort' must be true or false")
        time_value = record.get("computed_time", record.get("compute_time"))
        when = computed_ms(time_value)
        if when is None:
            raise _Bad("invalid_computed_time", "'computed_time' must be epoch seconds (a string or number) or "
                                                "ISO 8601, from 2000 to 2100")
        users = record.get("users")
        if not isinstance(users, list):
            raise _Bad("invalid_users", "'users' must be a list of {user_id, ...}")
        if len(users) > MAX_USERS_PER_BATCH:
            raise _Bad("invalid_users", f"more than {MAX_USERS_PER_BATCH} users in one batch")
        return FeedBatch(message_id, cohort_id, cohort_name, record["in_cohort"], when,
                         tuple(_user(u) for u in users))
    if "change" in record:
        change = str(record.get("change", "")).lower()
        if change not in _ENTER + _LEAVE:
            raise _Bad("invalid_change", "'change' must be 'enter' or 'leave'")
        when = computed_ms(record.get("time"))
        if when is None:
            raise _Bad("invalid_computed_time", "'time' must be epoch milliseconds or ISO 8601, from 2000 to 2100")
        return FeedBatch(message_id, cohort_id, cohort_name, change in _ENTER, when, (_user(record),))
    raise _Bad("unknown_shape", "neither a feed batch (in_cohort, users) nor a change (change: enter|leave)")


def parse_feed_message(data: bytes, pubsub_id: str = "", known_cohorts: Optional[Iterable[str]] = None
                       ) -> Tuple[List[FeedBatch], List[Tuple[str, str]]]:
    """``(batches, problems)``: the readable batches, and ``(reason, detail)`` for the rest.

    Never raises for any input. ``known_cohorts`` (when given) turns a batch for another cohort
    into the problem ``unknown_cohort``.
    """
    if not isinstance(data, (bytes, bytearray)) or not data.strip():
        return [], [("empty_message", "the message has no data")]
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        reason = "invalid_encoding" if "utf-8" in str(e).lower() else "invalid_json"
        return [], [(reason, f"not UTF-8 JSON: {str(e)[:200]}")]
    records = document if isinstance(document, list) else [document]
    if not records:
        return [], [("empty_message", "an empty JSON array")]
    known = None if known_cohorts is None else set(known_cohorts)
    batches, problems = [], []
    for index, record in enumerate(records):
        try:
            batch = _batch(record, index, pubsub_id)
        except _Bad as bad:
            where = f"element {index}: " if len(records) > 1 else ""
            problems.append((bad.reason, where + bad.detail))
            continue
        if known is not None and batch.cohort_id not in known:
            problems.append(("unknown_cohort", f"cohort {batch.cohort_id!r} ({batch.cohort_name or 'no name'}) has "
                                               "no feed sync in the cohorts file: add one (source: feed), then replay "
                                               "this dead letter"))
            continue
        batches.append(batch)
    return batches, problems


def feed_dead_letter(data: bytes, reason: str, detail: str, stage: str = STAGE, sync: str = "",
                     error_class: str = "") -> DeadLetter:
    return DeadLetter(stage=stage, reason=reason, detail=detail, sync=sync, data=bytes(data or b""),
                      payload_type=INPUT_EVENT, failed_at=utc_now_iso(), error_class=error_class)


def _message_parts(message) -> Tuple[bytes, str]:
    data = getattr(message, "data", message)
    pubsub_id = getattr(message, "message_id", None) or ""
    return (data if isinstance(data, (bytes, bytearray)) else b""), str(pubsub_id)


def _on_parse_error(dofn, message, failure):
    data, _ = _message_parts(message)
    yield pvalue.TaggedOutput(DEAD_LETTER_TAG, feed_dead_letter(data, "internal_error", failure.detail,
                                                                error_class=failure.error_class))


class _ParseFeedDoFn(beam.DoFn):
    def __init__(self, known_cohorts: Tuple[str, ...]):
        self._known = known_cohorts
        self._messages = Metrics.counter(METRICS_NAMESPACE, "messages_in")
        self._batches = Metrics.counter(METRICS_NAMESPACE, "batches_in")
        self._bad = Metrics.counter(METRICS_NAMESPACE, "messages_dead_lettered")

    @guarded(STAGE, _on_parse_error)
    def process(self, message):
        self._messages.inc()
        data, pubsub_id = _message_parts(message)
        batches, problems = parse_feed_message(data, pubsub_id, self._known)
        for batch in batches:
            self._batches.inc()
            yield batch
        if problems:
            self._bad.inc()
            reasons = sorted({r for r, _ in problems})
            detail = "; ".join(d for _, d in problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5
                                                               else "")
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, feed_dead_letter(data, ",".join(reasons), detail))


class ParseFeed(beam.PTransform):
    """Pub/Sub messages (bytes or PubsubMessage) → ``FeedBatch``; dead letters on ``DEAD_LETTER_TAG``."""

    def __init__(self, known_cohorts: Iterable[str]):
        super().__init__()
        self._known = tuple(sorted(set(known_cohorts)))

    def expand(self, messages):
        return messages | "ParseFeedMessages" >> beam.ParDo(_ParseFeedDoFn(self._known)).with_outputs(
            DEAD_LETTER_TAG, main="batches")
