"""Replayed Braze objects → the same ``BrazeItem`` records fresh ones are, or dead letters.

A Braze object that failed (stage ``braze``, ``payload_type=braze_object``) is replayed by
``pipeline.replay`` to a topic only the operator controls, never to the input topic: anyone
who may publish Amplitude events could otherwise inject any Braze object (an
``email_subscribe`` for any ``external_id``). The job reads that topic's subscription
(``--replay_subscription``) through ``ReadReplayedObjects``, and each message must pass the
checks a fresh object passes before it may reach the packer, branch ``replay``:

* its ``sync`` attribute names a configured, enabled sync, and its ``kind`` attribute is
  ``attributes``, ``events`` or ``purchases``, a branch that sync has turned on;
* its data is one JSON object, at most 1 MiB and 64 levels deep (parse's limits);
* it carries exactly one identifier, of the sync's identifier type and the value shape the
  sync's mapping produces (a non-empty string, or ``{"alias_name", "alias_label"}`` with the
  sync's label), or, for a sync with ``identifier.anonymous``, a device's alias with that
  label; and no field a fresh object of its kind never has;
* ``_update_existing_only`` and ``app_id`` are set as the sync sets them now, whatever the
  object says: a replay cannot create users an update-only sync would not;
* an event's ``name`` is selected by the sync (an entry with that ``event_type`` or ``"*"``;
  the entries' ``where`` conditions read the Amplitude event, which a Braze object no longer
  carries, so they cannot be checked again), and never ``$identify``;
* properties (events, purchases) and attribute names are among those the sync selects or
  maps to (``properties`` and ``mappings`` targets);
* values are sanitised exactly as fresh ones (``transforms.sanitize``, counted
  ``sanitize.<change>``), and standard attributes formatted as fresh ones
  (``transforms.standard_attributes``: one no format fixes is ``invalid_standard_attribute``).

Anything else becomes a ``DeadLetter`` (stage ``replay``, a reason, the data unchanged, so it
can be fixed and replayed again) and an ``Outcome`` for the message's source
(``<message id>/0``, branch ``replay``); an unexpected error is ``internal_error``
(``transforms.guard``). What passes is delivered or dead-lettered by the sink like any object.
Objects bypass the identify state, which already counted them as sent.
"""
from __future__ import annotations

import datetime
import math
from typing import Dict, Iterable, NamedTuple, Optional, Tuple, Union

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms.model import Sync
from transforms.anonymous import AnonymousRouting, anonymous_user_key
from transforms.braze_facts import MAX_PRODUCT_ID_CHARS, MAX_PURCHASE_QUANTITY
from transforms.coders import typed
from transforms.guard import INTERNAL_ERROR, Failure, guarded
from transforms.identifiers import IdentifierMapper
from transforms.mappings import UserMappings
from transforms.parse import MAX_EVENT_DEPTH, MAX_MESSAGE_BYTES, MAX_STRING_CHARS, fallback_message_id, \
    nesting_depth
from transforms.records import ATTRIBUTES, BRAZE_OBJECT, DEAD_LETTERED, EVENTS, KINDS, PURCHASES, BrazeItem, \
    DeadLetter, Outcome, utc_now_iso
from transforms.sanitize import clean_attributes, clean_properties
from transforms.standard_attributes import format_standard
from transforms.track import NOT_TRACKED_EVENT_TYPES

__all__ = ["STAGE", "REPLAY_BRANCH", "DEAD_LETTER_TAG", "OUTCOME_TAG", "Refusal", "ReplayRules", "replayed_item",
           "ReadReplayedObjects"]

STAGE = "replay"
REPLAY_BRANCH = "replay"
DEAD_LETTER_TAG = "dead_letters"
OUTCOME_TAG = "outcomes"

PRIMARY_IDENTIFIERS = ("external_id", "braze_id", "user_alias")
UPDATE_FLAG = "_update_existing_only"
# Fields a fresh object of each kind may carry besides its identifier, the update flag and
# its app_id (transforms.track, transforms.purchases); attributes: the selected properties.
EVENT_FIELDS = frozenset({"name", "time", "properties"})
PURCHASE_FIELDS = frozenset({"product_id", "currency", "price", "quantity", "time", "properties"})
MAX_QUANTITY = MAX_PURCHASE_QUANTITY


class Refusal(NamedTuple):
    """Why a replayed message cannot go to Braze: its dead letter's reason and detail."""

    reason: str
    detail: str


class ReplayRules:
    """What one sync lets through, compiled once per worker."""

    def __init__(self, sync: Sync):
        self.sync = sync
        self.mapper = IdentifierMapper(sync.identifier, sync.users.update_existing_only)
        self.all_events = any(s.event_type == "*" for s in sync.events.select)
        self.event_names = frozenset(s.event_type for s in sync.events.select)
        self.anonymous = AnonymousRouting.of(sync.identifier)
        self.event_properties = frozenset(sync.events.properties) | frozenset(m.target for m in sync.events.mappings)
        self.user_properties = UserMappings.from_settings(sync.users).targets
        self.branch_off = {
            ATTRIBUTES: None if sync.users.enabled else "users_disabled",
            EVENTS: None if sync.events.enabled else "events_disabled",
            PURCHASES: None if sync.events.enabled and sync.events.purchases else "purchases_disabled",
        }


Checked = Union[Tuple[BrazeItem, Tuple[str, ...]], Refusal]


def replayed_item(data: bytes, attributes, rules: Dict[str, ReplayRules], source: str,
                  publish_time_ms: Optional[int] = None) -> Checked:
    """One replay message → ``(BrazeItem, sanitize changes)`` or a ``Refusal``. Pure."""
    attributes = attributes if isinstance(attributes, dict) else {}
    sync_name, kind = attributes.get("sync"), attributes.get("kind")
    if not isinstance(sync_name, str) or not sync_name:
        return Refusal("invalid_replay", "the message has no 'sync' attribute naming the sync to send it to")
    if kind not in KINDS:
        return Refusal("invalid_replay", f"the 'kind' attribute must be one of {', '.join(KINDS)}")
    sync_rules = rules.get(sync_name)
    if sync_rules is None:
        return Refusal("unknown_sync", "the 'sync' attribute names no sync in the syncs file")
    if not sync_rules.sync.enabled:
        return Refusal("sync_disabled", f"sync {sync_name} is disabled in the syncs file")
    if sync_rules.branch_off[kind]:
        reason = sync_rules.branch_off[kind]
        return Refusal(reason, f"sync {sync_name} does not send {kind} ({reason.replace('_', ' ')})")
    obj = _decoded(data)
    if isinstance(obj, Refusal):
        return obj
    identity = _identifier(obj, sync_rules)
    if isinstance(identity, Refusal):
        return identity
    user_key, fields, id_field = identity
    # email and phone stay: Braze writes them as attributes beside a primary identifier, so
    # they pass only where the sync selects them as user properties.
    body = {k: v for k, v in obj.items() if k not in (id_field, UPDATE_FLAG, "app_id")}
    if kind == ATTRIBUTES:
        checked = _attributes(body, sync_rules)
    else:
        checked = _event_or_purchase(body, kind, sync_rules)
    if isinstance(checked, Refusal):
        return checked
    body, changes = checked
    out = dict(fields)
    if kind != ATTRIBUTES and sync_rules.sync.app_id:
        out["app_id"] = sync_rules.sync.app_id
    out.update(body)
    return BrazeItem(sync_name, user_key, kind, out, (source,), REPLAY_BRANCH, publish_time_ms), changes


def _decoded(data: bytes):
    if len(data) > MAX_MESSAGE_BYTES:
        return Refusal("too_large", f"the object has {len(data)} bytes; at most {MAX_MESSAGE_BYTES} are replayed")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if "depth" in str(e):
            return Refusal("too_deep", f"the object is nested deeper than {MAX_EVENT_DEPTH} levels")
        return Refusal("invalid_json", "the message data is not JSON (a Braze object is replayed as JSON)")
    if not isinstance(obj, dict):
        return Refusal("not_an_object", "the message data is JSON but not an object")
    if nesting_depth(obj, MAX_EVENT_DEPTH) > MAX_EVENT_DEPTH:
        return Refusal("too_deep", f"the object is nested deeper than {MAX_EVENT_DEPTH} levels")
    return obj


def _identifier(obj: dict, rules: ReplayRules):
    """``(user key, identifier fields, identifier name)`` if the object carries exactly the
    sync's identifier in its shape, or a device's alias where the sync has anonymous users."""
    wanted = rules.mapper.type
    if wanted not in obj and rules.anonymous is not None and "user_alias" in obj:
        return _anonymous_identifier(obj, rules)
    if wanted not in obj:
        return Refusal("invalid_identifier", f"the object has no {wanted}, the identifier of sync {rules.sync.name}")
    others = [name for name in PRIMARY_IDENTIFIERS if name in obj and name != wanted]
    if others:
        return Refusal("invalid_identifier", f"the object must carry exactly one identifier, {wanted}; it also "
                                             f"has {', '.join(others)}")
    value = obj[wanted]
    if wanted == "user_alias":
        label = rules.sync.identifier.alias_label
        if not isinstance(value, dict) or value.keys() != {"alias_name", "alias_label"} \
                or value["alias_label"] != label or not _id_string(value["alias_name"]):
            return Refusal("invalid_identifier", f"user_alias must be {{alias_name, alias_label: {label}}} "
                                                 "with a non-empty alias_name")
        value = value["alias_name"]
    elif not _id_string(value):
        return Refusal("invalid_identifier", f"{wanted} must be a non-empty string of at most "
                                             f"{MAX_STRING_CHARS} characters")
    return value, rules.mapper.fields(value), wanted


def _anonymous_identifier(obj: dict, rules: ReplayRules):
    """A device's alias profile (``identifier.anonymous``): its own user key and fields."""
    others = [name for name in PRIMARY_IDENTIFIERS if name in obj and name != "user_alias"]
    value = obj["user_alias"]
    label = rules.anonymous.alias_label
    if others or not isinstance(value, dict) or value.keys() != {"alias_name", "alias_label"} \
            or value["alias_label"] != label or not _id_string(value["alias_name"]):
        return Refusal("invalid_identifier", f"the object must carry exactly one identifier: "
                                             f"{rules.mapper.type}, or a device's user_alias "
                                             f"{{alias_name, alias_label: {label}}}")
    device = value["alias_name"]
    return anonymous_user_key(device), rules.anonymous.fields(device), "user_alias"


def _id_string(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_STRING_CHARS


def _attributes(body: dict, rules: ReplayRules):
    unselected = sorted(name for name in body if name not in rules.user_properties)
    if unselected:
        return Refusal("unselected_attribute", f"sync {rules.sync.name} does not send the user properties "
                                               f"{_names(unselected)}")
    cleaned, changes, omitted = clean_attributes(body)
    if not cleaned:
        why = "; ".join(f"{name}: {reason}" for name, reason in omitted) or "the object has no attribute"
        return Refusal("nothing_to_send", f"no attribute left to send ({why})")
    # A standard attribute in Braze's format, as a fresh one is (an email lower-cased, a country
    # as its code); one no format fixes refuses the object, so it can be corrected and replayed.
    refused = []
    for name, value in cleaned.items():
        formatted = format_standard(name, value)
        if formatted.reason:
            refused.append(f"{name}: {formatted.reason}")
        elif formatted.value != value:
            cleaned[name] = formatted.value
    if refused:
        return Refusal("invalid_standard_attribute", "Braze would not take " + "; ".join(refused))
    return cleaned, changes


def _event_or_purchase(body: dict, kind: str, rules: ReplayRules):
    allowed = EVENT_FIELDS if kind == EVENTS else PURCHASE_FIELDS
    unknown = sorted(name for name in body if name not in allowed)
    if unknown:
        return Refusal("unknown_field", f"a Braze {kind[:-1]} object from this job has no field {_names(unknown)}")
    refusal = _event_fields(body, rules) if kind == EVENTS else _purchase_fields(body)
    if refusal is not None:
        return refusal
    if not isinstance(body.get("time"), str) or not _iso_time(body["time"]):
        return Refusal("invalid_field", "'time' must be an ISO 8601 time")
    out = dict(body)
    changes: Tuple[str, ...] = ()
    if "properties" in body:
        properties = body["properties"]
        if not isinstance(properties, dict):
            return Refusal("invalid_field", "'properties' must be an object")
        unselected = sorted(name for name in properties if name not in rules.event_properties)
        if unselected:
            return Refusal("unselected_property", f"sync {rules.sync.name} does not send the event properties "
                                                  f"{_names(unselected)}")
        cleaned, fixes = clean_properties({k: v for k, v in properties.items() if v is not None})
        changes = tuple(fixes)
        if cleaned:
            out["properties"] = cleaned
        else:
            del out["properties"]
    return out, changes


def _event_fields(body: dict, rules: ReplayRules) -> Optional[Refusal]:
    name = body.get("name")
    if not isinstance(name, str) or not name:
        return Refusal("invalid_field", "'name' must be a non-empty string")
    if name in NOT_TRACKED_EVENT_TYPES or not (rules.all_events or name in rules.event_names):
        return Refusal("not_selected", f"event {name[:100]!r} is not selected by sync {rules.sync.name}")
    return None


def _purchase_fields(body: dict) -> Optional[Refusal]:
    product, currency = body.get("product_id"), body.get("currency")
    price, quantity = body.get("price"), body.get("quantity", 1)
    if not isinstance(product, str) or not 0 < len(product) <= MAX_PRODUCT_ID_CHARS:
        problem = f"'product_id' must be a string of 1 to {MAX_PRODUCT_ID_CHARS} characters"
    elif not (isinstance(currency, str) and len(currency) == 3 and currency.isascii() and currency.isalpha()
              and currency.isupper()):
        problem = "'currency' must be a 3-letter ISO 4217 code in upper case"
    elif isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price):
        problem = "'price' must be a finite number"
    elif isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= MAX_QUANTITY:
        problem = f"'quantity' must be a whole number from 1 to {MAX_QUANTITY}"
    else:
        return None
    return Refusal("invalid_field", problem)


def _iso_time(text: str) -> bool:
    try:
        datetime.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _names(names) -> str:
    shown = ", ".join(repr(n[:100]) for n in names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")


# --------------------------------------------------------------------------------------------
# Beam


def _unpack(message) -> Tuple[bytes, str, dict]:
    if isinstance(message, (bytes, bytearray)):
        return bytes(message), fallback_message_id(bytes(message)), {}
    data = bytes(message.data or b"")
    return data, message.message_id or fallback_message_id(data), dict(message.attributes or {})


def _refused(message, reason: str, detail: str, known_syncs, error_class: str = ""):
    """The dead letter (data unchanged; the named sync kept so it can be replayed once fixed)
    and the outcome (counted per sync: only a configured sync's name becomes a metric name)."""
    data, message_id, attributes = _unpack(message)
    source = f"{message_id}/0"
    sync = attributes.get("sync") if isinstance(attributes.get("sync"), str) else ""
    kind = attributes.get("kind") if attributes.get("kind") in KINDS else ""
    yield pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
        stage=STAGE, reason=reason, detail=detail, sync=sync[:256], data=data, payload_type=BRAZE_OBJECT,
        failed_at=utc_now_iso(), sources=(source,), kind=kind, error_class=error_class))
    yield pvalue.TaggedOutput(OUTCOME_TAG, Outcome(source, sync if sync in known_syncs else "", REPLAY_BRANCH,
                                                   DEAD_LETTERED, reason))


def _failed(dofn, message, failure: Failure):
    """``guarded``'s fallback: the message, unchanged, as an ``internal_error`` dead letter."""
    yield from _refused(message, INTERNAL_ERROR, failure.detail, dofn._rules, failure.error_class)


class _ReplayDoFn(beam.DoFn):
    def __init__(self, syncs: Tuple[Sync, ...]):
        self._syncs = syncs
        self._rules: Dict[str, ReplayRules] = {}
        self._counters = {}

    def setup(self):
        self._rules = {sync.name: ReplayRules(sync) for sync in self._syncs}

    def _count(self, namespace: str, name: str) -> None:
        counter = self._counters.get((namespace, name))
        if counter is None:
            counter = self._counters[(namespace, name)] = Metrics.counter(namespace, name)
        counter.inc()

    @guarded(STAGE, _failed)
    def process(self, message, timestamp=beam.DoFn.TimestampParam):
        if not self._rules:
            self.setup()
        data, message_id, attributes = _unpack(message)
        publish_time_ms = int(timestamp.micros // 1000) if timestamp is not None and timestamp.micros > 0 else None
        self._count(STAGE, "messages_in")
        checked = replayed_item(data, attributes, self._rules, f"{message_id}/0", publish_time_ms)
        if isinstance(checked, Refusal):
            self._count(STAGE, f"refused.{checked.reason}")
            yield from _refused(message, checked.reason, checked.detail, self._rules)
            return
        item, changes = checked
        for change in changes:
            self._count("sanitize", change)
        self._count(STAGE, "accepted")
        yield item


class ReadReplayedObjects(beam.PTransform):
    """Replay-subscription messages → ``BrazeItem`` (main output, branch ``replay``), with
    tags ``dead_letters`` (``DeadLetter``) and ``outcomes`` (``Outcome``) for the refused.

    Args:
      syncs: every sync of the syncs file (disabled ones too, so a replay for one is refused
        as ``sync_disabled`` rather than ``unknown_sync``).

    Metrics (namespace ``replay``): ``messages_in``, ``accepted``, ``refused.<reason>``.
    """

    def __init__(self, syncs: Iterable[Sync]):
        super().__init__()
        self._syncs = tuple(syncs)
        if not self._syncs:
            raise ValueError("ReadReplayedObjects needs the syncs of the syncs file")

    def expand(self, messages):
        checked = messages | "CheckReplayedObjects" >> beam.ParDo(_ReplayDoFn(self._syncs)).with_outputs(
            DEAD_LETTER_TAG, OUTCOME_TAG, main="objects")
        typed(checked.objects, BrazeItem)
        typed(checked[DEAD_LETTER_TAG], DeadLetter)
        typed(checked[OUTCOME_TAG], Outcome)
        return checked
