"""The syncs file: what each sync sends to which Braze workspace.

Loaded and validated once, when the pipeline is built, so a mistake fails the launch with
every problem listed, not a worker at 3 a.m. The JSON Schema for editors is
``pipeline/syncs.schema.json``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

IDENTIFIER_TYPES = ("external_id", "braze_id", "user_alias")
OPERATORS = (
    "is", "is_not", "contains", "does_not_contain", "starts_with",
    "greater_than", "greater_or_equal", "less_than", "less_or_equal", "is_set", "is_not_set",
)


class ConfigError(ValueError):
    """The syncs file has problems; ``problems`` lists each as ``path: what is wrong``."""

    def __init__(self, source: str, problems: list):
        self.problems = list(problems)
        super().__init__(
            f"{source}: {len(self.problems)} problem(s):\n" + "\n".join(f"  {p}" for p in self.problems)
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
class Identifier:
    type: str = "external_id"  # one of IDENTIFIER_TYPES
    source: str = "user_id"  # Amplitude field, dotted path allowed
    alias_label: Optional[str] = None  # required when type is user_alias


@dataclasses.dataclass(frozen=True)
class UserSettings:
    enabled: bool = False
    properties: Tuple[str, ...] = ()
    update_existing_only: bool = False


@dataclasses.dataclass(frozen=True)
class EventSettings:
    enabled: bool = False
    select: Tuple[EventSelector, ...] = ()
    properties: Tuple[str, ...] = ()


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
