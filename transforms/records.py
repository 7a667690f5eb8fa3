"""The records that flow between the job's steps.

Every step passes small NamedTuples (Beam encodes them without pickling) and every record
carries ``sources``: the ids of the input events it came from, ``<message_id>/<index>``.
Sources are how each published event is accounted for at the end (delivered, skipped by a
rule, or dead-lettered), and how a dead letter leads back to what was published.
"""
from __future__ import annotations

import datetime
from typing import Any, NamedTuple, Optional, Tuple

import orjson

# Braze's three arrays in a /users/track body, in the order Braze applies them.
ATTRIBUTES = "attributes"
EVENTS = "events"
PURCHASES = "purchases"
KINDS = (ATTRIBUTES, EVENTS, PURCHASES)

# Branches of the job; each accounts for every event it sees, per sync.
IDENTIFY = "identify"
TRACK = "track"

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

    ``payload`` is the original message text (stage ``parse``) or the Braze object that
    failed (stage ``braze``). It never holds an API key.
    """

    stage: str
    reason: str  # short stable code: invalid_json, missing_event_type, braze_rejected, ...
    detail: str  # human-readable explanation
    sync: str  # "" when the failure happened before the fan-out to syncs
    payload: Any
    http_status: Optional[int] = None
    attempts: int = 0
    failed_at: str = ""
    sources: Tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "stage": self.stage,
                "reason": self.reason,
                "detail": self.detail,
                "sync": self.sync,
                "http_status": self.http_status,
                "attempts": self.attempts,
                "failed_at": self.failed_at or utc_now_iso(),
                "payload": self.payload,
                "sources": list(self.sources),
            },
            default=str,
        )

    def attributes(self) -> dict:
        return {"stage": self.stage, "reason": self.reason, "sync": self.sync}


def utc_now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def iso_from_ms(time_ms: int) -> str:
    """Epoch milliseconds → ISO 8601 UTC with milliseconds, the form Braze documents."""
    dt = datetime.datetime.fromtimestamp(time_ms / 1000.0, tz=datetime.timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
