"""The streaming job's model: what a sync is, as the transforms read it.

A leaf module (it imports nothing of the project), so that ``transforms/`` never imports
``pipeline/``: ``pipeline.config`` loads and validates the syncs file into these frozen
dataclasses, and every transform takes them as they are. The meaning of each field for a user
is the README's "The syncs file"; how the job uses it, ``docs/architecture.md``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

__all__ = [
    "ANONYMOUS_TYPES", "AnonymousIdentifier", "Condition", "EventSelector", "EventSettings", "FieldMapping",
    "IDENTIFIER_TYPES", "Identifier", "LIVE", "MODES", "OPERATORS", "SHADOW", "Sync", "UserSettings",
    "enabled_syncs", "shadow_syncs",
]

IDENTIFIER_TYPES = ("external_id", "braze_id", "user_alias")
# How a sync delivers: live sends to Braze; shadow builds the same requests and publishes their
# bodies to --shadow_topic instead (README, "Shadow mode"), so a new sync can be watched on live
# traffic before it is turned on.
LIVE = "live"
SHADOW = "shadow"
MODES = (LIVE, SHADOW)
ANONYMOUS_TYPES = ("user_alias",)  # an anonymous device's profile: an alias, later merged by /users/identify

# The operators of an ``events.select[].where`` condition; what each means is ``transforms.filters``.
OPERATORS = (
    "is", "is_not", "contains", "does_not_contain", "starts_with",
    "greater_than", "greater_or_equal", "less_than", "less_or_equal", "is_set", "is_not_set",
)


@dataclasses.dataclass(frozen=True)
class Condition:
    property: str  # event field, event_properties.X or user_properties.X (dotted path)
    op: str  # one of OPERATORS
    value: Any = None  # absent for is_set / is_not_set; a list allowed for is / is_not


@dataclasses.dataclass(frozen=True)
class EventSelector:
    event_type: str  # an Amplitude event_type, or "*" for every event
    where: Tuple[Condition, ...] = ()  # all must hold


@dataclasses.dataclass(frozen=True)
class FieldMapping:
    """One ``{from, to}`` entry of ``users.mappings`` or ``events.mappings``."""

    source: str  # ``from``: an Amplitude event field, dotted path (``user_properties.Email Address``)
    target: str  # ``to``: the Braze attribute or event property name


@dataclasses.dataclass(frozen=True)
class AnonymousIdentifier:
    """Where events without the main identifier's value go: an alias profile per device, merged
    into the external_id profile by /users/identify when the device first shows a user_id."""

    type: str = "user_alias"  # one of ANONYMOUS_TYPES
    source: str = "device_id"  # Amplitude field, dotted path allowed; the alias name
    alias_label: str = ""  # the alias label (required in the file)


@dataclasses.dataclass(frozen=True)
class Identifier:
    type: str = "external_id"  # one of IDENTIFIER_TYPES
    source: str = "user_id"  # Amplitude field, dotted path allowed
    alias_label: Optional[str] = None  # required when type is user_alias
    anonymous: Optional[AnonymousIdentifier] = None  # only with type external_id


@dataclasses.dataclass(frozen=True)
class UserSettings:
    enabled: bool = False
    properties: Tuple[str, ...] = ()  # sent under their own names (identity mappings)
    update_existing_only: bool = False
    mappings: Tuple[FieldMapping, ...] = ()  # Amplitude field → Braze attribute


@dataclasses.dataclass(frozen=True)
class EventSettings:
    enabled: bool = False
    select: Tuple[EventSelector, ...] = ()
    properties: Tuple[str, ...] = ()  # sent under their own names (identity mappings)
    purchases: bool = False  # revenue events → Braze purchase objects (transforms/purchases.py)
    mappings: Tuple[FieldMapping, ...] = ()  # Amplitude field → Braze event property


@dataclasses.dataclass(frozen=True)
class Sync:
    name: str
    endpoint: str
    api_key: str  # a reference: env:NAME or projects/P/secrets/S/versions/V, never a key
    enabled: bool = True
    app_id: Optional[str] = None
    identifier: Identifier = Identifier()
    users: UserSettings = UserSettings()
    events: EventSettings = EventSettings()
    mode: str = LIVE  # one of MODES

    @property
    def shadow(self) -> bool:
        return self.mode == SHADOW


def enabled_syncs(syncs) -> Tuple[Sync, ...]:
    """The syncs whose status is enabled, in file order."""
    return tuple(s for s in syncs if s.enabled)


def shadow_syncs(syncs) -> Tuple[Sync, ...]:
    """The enabled syncs in shadow mode, in file order: the job needs --shadow_topic for them."""
    return tuple(s for s in syncs if s.enabled and s.shadow)
