"""The records that flow between the job's steps.

Every step passes small NamedTuples, each with an explicit coder (``transforms.coders``: JSON
through orjson, never pickle), and every record carries its ``sources``: the ids of the input
events it came from, ``<message_id>/<index>``. Sources are how each published event is accounted
for at the end (delivered, skipped by a rule, or dead-lettered), and how a dead letter leads
back to what was published.
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
REPLAY = "replay"

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
    branch: str  # IDENTIFY | TRACK | REPLAY
    publish_time_ms: Optional[int]  # earliest publish time of the sources
    # Identify's attribute objects only: the user's sequence number, and the value Braze held
    # before this object for each attribute where the job knows it, so the packer can merge a
    # user's objects of one request without writing a value Braze already holds.
    seq: int = 0
    before: Optional[dict] = None

    @property
    def mergeable(self) -> bool:
        """An attribute object made by identify (replays are sent as they are)."""
        return self.before is not None


class IdentifyWork(NamedTuple):
    """One event's selected user-property updates for one user of one sync (route → identify)."""

    source: str
    publish_time_ms: Optional[int]
    time_ms: int  # event time: identify applies a user's updates in this order
    fields: dict  # the identifier part of the Braze objects
    updates: Tuple[Tuple[str, str, Any], ...]  # (operation, Braze attribute, value)
    track: Tuple[BrazeItem, ...]  # the event's own track objects, sent right behind its update


class DeviceSighting(NamedTuple):
    """A device seen in one event of a sync with ``identifier.anonymous`` (route → the
    anonymous-merge step, keyed by ``transforms.anonymous.anonymous_key(sync, device)``).

    ``user`` is the event's external id, or None when the event went to the device's alias
    profile. Its time is the element's timestamp (the Pub/Sub publish time)."""

    source: str  # the event's source, kept so a failed merge leads back to an event
    user: Optional[str]


class MergeRequest(NamedTuple):
    """One ``/users/identify`` entry: merge the device's alias profile into ``external_id``
    (the merge step → the identify sink, keyed by sync)."""

    sync: str
    external_id: str
    alias_name: str
    alias_label: str
    sources: Tuple[str, ...]  # the event that named the user on the device


class UserBatch(NamedTuple):
    """A user's Braze objects from one step, in the order they must reach Braze.

    Identify emits one per user and flush, with ``tau`` (its output timestamp, in microseconds,
    strictly increasing per user) and ``after``: the ``tau`` of that user's previous batch, or
    ``NO_PREDECESSOR``. The packer releases a batch only once the watermark has passed
    ``after``, when the previous batch has surely arrived, so a user's batches keep their order
    across the shuffle (docs/architecture.md, "Ordering"). Objects that need no order (track
    objects of events that update nobody, replays) travel with ``after = NO_PREDECESSOR``.
    """

    sync: str
    user_key: str
    items: Tuple[BrazeItem, ...]
    tau: int = 0
    after: int = -1


NO_PREDECESSOR = -1


class Request(NamedTuple):
    """One /users/track request's objects for one batch key, numbered per key by the packer so
    the sink can send a key's requests in the order they were packed."""

    key: str
    seq: int
    items: Tuple[BrazeItem, ...]


class ShadowRequest(NamedTuple):
    """A request of a sync in shadow mode, built as the sink would send it and not sent:
    ``body`` is the ``/users/track`` JSON the sink would have posted (``transforms.shadow``)."""

    sync: str
    key: str  # the batch key, ``<sync>#<shard>``
    seq: int  # the request's number within its batch key, as the sink would have sent it
    body: str  # the JSON body, exactly as it would have been sent
    objects: int  # how many Braze objects it holds


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
