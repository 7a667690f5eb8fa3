"""Anonymous users, then identified: the pure core of ``identifier.anonymous`` (issue 17).

An Amplitude user is often anonymous (only ``device_id``) before signing in. With
``identifier: {type: external_id, anonymous: {type: user_alias, source: device_id,
alias_label: L}}`` a sync sends such events to the alias profile ``{alias_name: <device_id>,
alias_label: L}`` (created, ``_update_existing_only: false``), and asks Braze's
``/users/identify`` to merge that profile into the user's external_id profile once the
device shows a ``user_id``. This module decides when, builds the request bodies and reads
the answers; ``transforms.device_merge`` (keyed by ``anonymous_key(sync, device)``) calls it, and
``transforms.identify_sink`` sends the requests.

What Braze does (``docs/api-facts.md``, B13, which this follows):

- The alias-only profile is merged into the profile with that external_id and then removed;
  the merge copies what exists only on the anonymous profile (standard fields, custom
  attributes, custom event and purchase data, ...). If no profile has the external_id, the
  alias profile simply becomes that user. Either way the alias now names the identified
  profile, so later anonymous events of the device land on it.
- No merge happens if the identified profile already has an alias with the same label: a
  user's *second* anonymous device is not merged (its history stays on its alias profile).
- An alias that matches nothing is silently dropped (success means "received"), so the
  alias profile must exist before the call: Braze processes requests asynchronously and
  advises waiting before a dependent call (usually 10-100 ms, "up to 5 minutes", B13).
- At most 50 aliases per request; the endpoint shares 20,000 requests a minute with the
  other alias endpoints, apart from /users/track's limit. Braze bills external ids and
  aliases as non-billable (B17); whether the fields a merge copies count again is
  UNCONFIRMED.
- ``merge_behavior`` appears only in old copies of the page (RudderStack still sends
  ``"merge"``); it is not sent here (UNCONFIRMED whether current Braze reads it).

The decision, per (sync, device), with state ``{"u": first user, "a": last anonymous time,
"s": 1 once requested}`` (plus any keys the caller keeps, such as its expiry):

- The device's profile is merged into the *first* user seen on it, once: afterwards Braze's
  alias names that user, so there is nothing left to merge, and another user signing in on
  the same device could not be merged anyway (the alias is no longer anonymous). So one
  identify per device and user at most; in fact one per device (until the state expires).
- Only a device with anonymous activity is merged: without it there is no alias profile.
- Events arrive out of order (Pub/Sub): the request waits until both are known, whichever
  comes first, and until ``settle_seconds`` after the device's last anonymous event, so the
  objects that create the alias profile have reached Braze. ``on_event`` says when to wake
  (``wake_at``); ``on_timer`` then returns the request, or a later wake-up if anonymous
  events kept coming. Meanwhile the user's identified objects go to their external_id as
  usual: Braze merges the alias profile into that existing profile just the same.

State size: one external id, one float, one flag per device. ``on_event`` and ``on_timer``
never raise on data; the state may be None or anything a previous version wrote.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import orjson

from transforms.model import AnonymousIdentifier, Identifier
from transforms.braze_facts import IDENTIFY_PATH, MAX_ALIASES_PER_IDENTIFY, MAX_EXTERNAL_ID_BYTES
from transforms.braze_client import OK, Response, TransportError, Verdict, classify
from transforms.identifiers import IdentifierMapper

__all__ = [
    "IDENTIFY_PATH", "MAX_ALIASES_PER_IDENTIFY", "MAX_EXTERNAL_ID_BYTES", "DEFAULT_SETTLE_SECONDS",
    "EXTERNAL_ID_TOO_LARGE", "INVALID_IDENTIFY_REQUEST",
    "ANONYMOUS_PREFIX", "IdentifyRequest", "Step", "AnonymousRouting", "anonymous_key", "anonymous_user_key",
    "on_event", "on_timer",
    "identify_request_problem", "identify_bodies", "classify_identify",
]

# Time from the device's last anonymous event to the identify call: the packer holds objects
# up to a few seconds, the sink may retry for minutes, and Braze applies them asynchronously.
DEFAULT_SETTLE_SECONDS = 60.0

# Reasons an identify request is never sent (dead letters, stage "identify").
EXTERNAL_ID_TOO_LARGE = "external_id_too_large"
INVALID_IDENTIFY_REQUEST = "invalid_identify_request"


class IdentifyRequest(NamedTuple):
    """Merge the alias profile ``(alias_name, alias_label)`` into ``external_id``."""

    external_id: str
    alias_name: str
    alias_label: str

    def item(self) -> dict:
        """One entry of ``aliases_to_identify``."""
        return {"external_id": self.external_id,
                "user_alias": {"alias_name": self.alias_name, "alias_label": self.alias_label}}


class Step(NamedTuple):
    state: dict  # the device's new state (write it back)
    wake_at: Optional[float] = None  # set the device's timer to this time (seconds); None: leave it


def anonymous_key(sync: str, device: str) -> str:
    """State key of one device in one sync (sync names cannot contain ``|``)."""
    return f"{sync}|{device}"


# The user key (``BrazeItem.user_key``, and so the identify state and the packer's shard) of
# a device's alias profile. It is also the identify-state key, so it must never be some
# user's external id: external ids are Amplitude ids, and none begins with a NUL character
# in practice (an id that did would share its state with the device of the same name).
ANONYMOUS_PREFIX = "\x00device:"


def anonymous_user_key(device: str) -> str:
    """The user key of a device's alias profile (see ``ANONYMOUS_PREFIX``)."""
    return ANONYMOUS_PREFIX + device


class AnonymousRouting:
    """Where an event without the main identifier's value goes: the device's alias profile.

    ``device(event)`` is the alias name (the anonymous source's value) or None; ``fields(device)``
    the identifier part of its Braze objects, ``_update_existing_only: false`` included, which
    Braze needs to create an alias-only profile (docs/api-facts.md, B4)."""

    def __init__(self, anonymous: AnonymousIdentifier):
        self.alias_label = anonymous.alias_label
        self._mapper = IdentifierMapper(
            Identifier(type="user_alias", source=anonymous.source, alias_label=anonymous.alias_label),
            update_existing_only=False)

    @classmethod
    def of(cls, identifier: Identifier) -> Optional["AnonymousRouting"]:
        return cls(identifier.anonymous) if identifier.anonymous is not None else None

    def device(self, event: dict) -> Optional[str]:
        return self._mapper.user_key(event)

    def fields(self, device: str) -> dict:
        return self._mapper.fields(device)


# --------------------------------------------------------------------------------------------
# The decision, per (sync, device)


def _clean(state) -> dict:
    return dict(state) if isinstance(state, dict) else {}


def _time(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def on_event(state, external_id: Optional[str], now_s: float,
             settle_seconds: float = DEFAULT_SETTLE_SECONDS) -> Step:
    """One event of the device: anonymous (``external_id`` None) or identified.

    Returns the new state and, when a merge has become due, when to wake (``on_timer``)."""
    state = _clean(state)
    if state.get("s"):
        return Step(state)  # requested already: the alias names the user now
    user = state.get("u") if isinstance(state.get("u"), str) else None
    last_anonymous = _time(state.get("a"))
    if external_id is None:
        last_anonymous = now_s if last_anonymous is None else max(last_anonymous, now_s)
        state["a"] = last_anonymous
    elif user is None:
        user = state["u"] = external_id
    else:
        return Step(state)  # a later user of the device: Braze could not merge into them
    if user is None or last_anonymous is None:
        return Step(state)
    return Step(state, max(now_s, last_anonymous + settle_seconds))


def on_timer(state, now_s: float, alias_name: str, alias_label: str,
             settle_seconds: float = DEFAULT_SETTLE_SECONDS) -> Tuple[Optional[IdentifyRequest], Step]:
    """The device's timer fired: the request if it is due, else when to wake again."""
    state = _clean(state)
    user = state.get("u") if isinstance(state.get("u"), str) else None
    last_anonymous = _time(state.get("a"))
    if state.get("s") or user is None or last_anonymous is None:
        return None, Step(state)
    due = last_anonymous + settle_seconds
    if now_s < due:
        return None, Step(state, due)  # anonymous events kept coming
    state["s"] = 1
    state.pop("a", None)
    return IdentifyRequest(user, alias_name, alias_label), Step(state)


# --------------------------------------------------------------------------------------------
# Requests


def identify_request_problem(request: IdentifyRequest) -> Optional[str]:
    """Why Braze would refuse this entry, or None. One bad entry fails a whole request (the
    simulator's strict reading; Braze documents no per-entry errors), so it is kept out."""
    if not all(isinstance(v, str) and v for v in request):
        return INVALID_IDENTIFY_REQUEST
    if len(request.external_id.encode("utf-8")) > MAX_EXTERNAL_ID_BYTES:
        return EXTERNAL_ID_TOO_LARGE
    return None


def identify_bodies(requests: Sequence[IdentifyRequest]) -> List[Tuple[bytes, Tuple[int, ...]]]:
    """``/users/identify`` bodies of at most 50 entries, each with the positions in
    ``requests`` it carries (a repeated request rides with its first copy, so every input
    is accounted for). Entries ``identify_request_problem`` refuses are the caller's to
    dead-letter first; they are not sent."""
    chunks: List[Tuple[List[dict], List[int]]] = []
    where = {}
    for position, request in enumerate(requests):
        if identify_request_problem(request):
            raise ValueError(f"request {position} is not valid: {identify_request_problem(request)}")
        if request in where:
            chunks[where[request]][1].append(position)
            continue
        if not chunks or len(chunks[-1][0]) == MAX_ALIASES_PER_IDENTIFY:
            chunks.append(([], []))
        where[request] = len(chunks) - 1
        chunks[-1][0].append(request.item())
        chunks[-1][1].append(position)
    return [(orjson.dumps({"aliases_to_identify": items}), tuple(positions)) for items, positions in chunks]


def classify_identify(response: Union[Response, TransportError]) -> Verdict:
    """Braze's answer to one ``/users/identify`` request → what to do, as for /users/track
    (``transforms.braze_client.classify``: retry 429/5xx/timeouts, split 413, fail 401/403/404,
    reject 400), except that ``errors[]`` entries cannot be traced to entries: their shape is
    undocumented for this endpoint (Braze's pages mention a non-fatal error for unknown
    external ids, docs/api-facts.md, B13). A 2xx success with errors stays OK; the errors are in ``detail``."""
    verdict = classify(response)
    if isinstance(response, TransportError) or not isinstance(response.body, dict):
        return verdict._replace(item_errors=())
    errors = response.body.get("errors")
    if verdict.action == OK and isinstance(errors, list) and errors:
        shown = orjson.dumps(errors[:5]).decode()[:500]
        return verdict._replace(item_errors=(), detail=f"{len(errors)} error(s): {shown}")
    return verdict._replace(item_errors=())
