"""The records that flow between the job's steps.

Every step passes small NamedTuples (Beam encodes them without pickling) and every record
carries ``sources``: the ids of the input events it came from, ``<message_id>/<index>``.
Sources are how each published event is accounted for at the end (delivered, skipped by a
rule, or dead-lettered), and how a dead letter leads back to what was published.
"""
from __future__ import annotations

import datetime
from typing import Any, NamedTuple, Optional, Tuple


# Braze's three arrays in a /users/track body, in the order Braze applies them.
ATTRIBUTES = "attributes"
EVENTS = "events"
PURCHASES = "purchases"
KINDS = (ATTRIBUTES, EVENTS, PURCHASES)

# Branches of the job; each accounts for every event it sees, per sync.
IDENTIFY = "identify"
TRACK = "track"

# What a dead letter's data is, and so where a replay sends it.
INPUT_EVENT = "input_event"  # bytes as they came in: back to the input topic
BRAZE_OBJECT = "braze_object"  # a Braze object as JSON: to the operator's replay topic

# Outcome statuses.
DELIVERED = "delivered"
SKIPPED = "skipped"
DEAD_LETTERED = "dead_lettered"


class ParsedEvent(NamedTuple):
    """One Amplitude event, normalised by ``transforms.parse``."""

    source: str  # "<pubsub message id>/<index in the message>", unique per published event
    publish_time_ms: Optional[int]  # Pub/Sub publish time, for delivery latency
    insert_id: Optional[str]  # insert_id, else $insert_id, else uuid
    time_ms: int  # event time, epoch milliseconds UTC
    event: dict  # the Amplitude event as sent; event_properties/user_properties always dicts


class BrazeItem(NamedTuple):
    """One Braze object bound for one sync's /users/track."""

    sync: str
    user_key: str  # the identifier value; keeps one user's objects in one shard
    kind: str  # ATTRIBUTES | EVENTS | PURCHASES
    obj: dict  # the Braze object, exactly as it will be sent
    sources: Tuple[str, ...]
    branch: str  # IDENTIFY | TRACK
    publish_time_ms: Optional[int]  # earliest publish time of the sources


class Outcome(NamedTuple):
    """The end of one event in one branch of one sync."""

    source: str
    sync: str
    branch: str
    status: str  # DELIVERED | SKIPPED | DEAD_LETTERED
    reason: str = ""  # why it was skipped or dead-lettered; "" when delivered


class DeadLetter(NamedTuple):
    """Something the job could not deliver, with what a person needs to act on it.

    ``data`` is exactly what a replay republishes: the input bytes of the event that failed
    (the whole message, or the event's own bytes inside a JSON array message), or the Braze
    object that failed, as JSON. ``transforms.dead_letters`` turns it into one Pub/Sub message:
    ``data`` unchanged as the message data, everything else as attributes. It never holds an
    API key: producers scrub ``detail`` (``transforms.scrub``).
    """

    stage: str  # parse, dedup, route, identify, pack, braze, replay, ...
    reason: str  # short stable code: invalid_json, too_deep, braze_rejected, internal_error, ...
    detail: str  # human-readable explanation
    sync: str  # "" when the failure happened before the fan-out to syncs
    data: bytes
    payload_type: str = INPUT_EVENT  # INPUT_EVENT | BRAZE_OBJECT: where a replay sends ``data``
    http_status: Optional[int] = None
    attempts: int = 0
    failed_at: str = ""
    sources: Tuple[str, ...] = ()
    kind: str = ""  # ATTRIBUTES | EVENTS | PURCHASES for a Braze object
    error_class: str = ""  # the exception's class, for reason internal_error


def utc_now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def iso_from_ms(time_ms: int) -> str:
    """Epoch milliseconds → ISO 8601 UTC with milliseconds, the form Braze documents."""
    dt = datetime.datetime.fromtimestamp(time_ms / 1000.0, tz=datetime.timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
