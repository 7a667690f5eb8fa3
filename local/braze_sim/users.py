"""A Braze user profile and the attribute operations applied to it.

``plan_attributes`` computes every change an attributes object makes before any is written,
so an object that fails on the stored value (``inc`` on a string) changes nothing: Braze
reports such an object as an error and keeps the profile as it was.
"""
from __future__ import annotations

import uuid
from typing import Any, Optional, Tuple

from local.braze_sim.rules import CONTROL_KEYS, IDENTIFIER_KEYS, operator_kind

_REMOVE = object()

# Keys Braze does not bill (docs/api-facts.md, B17); everything else written to a profile is billable.
NON_BILLABLE = frozenset((
    "external_id", "user_alias", "braze_id", "country", "language", "email_subscribe",
    "push_subscribe", "subscription_groups", "push_tokens",
)) | CONTROL_KEYS


def new_braze_id() -> str:
    """Braze ids look like 24 hex digits (a Mongo ObjectId); any unique hex will do here."""
    return uuid.uuid4().hex[:24]


class User:
    """One profile. ``aliases`` maps alias_label to alias_name (one name per label)."""

    __slots__ = ("braze_id", "external_id", "aliases", "device_ids", "attributes", "events",
                 "purchases", "cohorts", "updated_seq")

    def __init__(self, braze_id: Optional[str] = None, external_id: Optional[str] = None):
        self.braze_id = braze_id or new_braze_id()
        self.external_id = external_id
        self.aliases: dict = {}
        self.device_ids: list = []
        self.attributes: dict = {}
        self.events: list = []
        self.purchases: list = []
        self.cohorts: list = []
        self.updated_seq = 0

    def to_json(self) -> dict:
        return {
            "braze_id": self.braze_id,
            "external_id": self.external_id,
            "user_aliases": [{"alias_name": n, "alias_label": l} for l, n in self.aliases.items()],
            "device_ids": list(self.device_ids),
            "attributes": self.attributes,
            "events": self.events,
            "purchases": self.purchases,
            "cohorts": list(self.cohorts),
        }


def plan_attributes(current: dict, obj: dict) -> Tuple[Optional[dict], Optional[str]]:
    """(changes, None) or (None, error). A change value of ``_REMOVE`` deletes the key."""
    changes = {}
    merge = obj.get("_merge_objects") is True
    for key, value in obj.items():
        if key in IDENTIFIER_KEYS or key in CONTROL_KEYS:
            continue
        if value is None:
            changes[key] = _REMOVE
        elif isinstance(value, dict):
            kind = operator_kind(value)
            old = current.get(key)
            if kind == "inc":
                old = 0 if old is None else old
                if isinstance(old, bool) or not isinstance(old, int):
                    return None, f"'{key}' is not an integer attribute"
                changes[key] = old + value["inc"]
            elif kind == "array":
                old = [] if old is None else old
                if not isinstance(old, list):
                    return None, f"'{key}' is not an array attribute"
                changes[key] = _edit_array(old, value.get("add", ()), value.get("remove", ()))
            elif merge and isinstance(old, dict):
                changes[key] = _deep_merge(old, value)
            else:
                changes[key] = value
        elif isinstance(value, list):
            changes[key] = _edit_array([], value, ())  # arrays hold unique values only
        else:
            changes[key] = value
    return changes, None


def commit_attributes(user: User, changes: dict) -> None:
    attributes = user.attributes
    for key, value in changes.items():
        if value is _REMOVE:
            attributes.pop(key, None)
        else:
            attributes[key] = value


def _edit_array(old: list, add, remove) -> list:
    """Remove, then add; adding a value already present moves it to the end."""
    removed = set(_hashable(v) for v in remove)
    result = [v for v in old if _hashable(v) not in removed]
    for value in add:
        key = _hashable(value)
        result = [v for v in result if _hashable(v) != key]
        result.append(value)
    return result


def _hashable(value: Any):
    # Keep 1, 1.0 and True apart, as JSON does.
    return (type(value).__name__, value) if not isinstance(value, (dict, list)) else repr(value)


def _deep_merge(old: dict, new: dict) -> dict:
    merged = dict(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def attribute_data_points(obj: dict, has_primary: bool) -> int:
    """Billable data points of one applied attributes object (docs/api-facts.md, B17).

    Every written custom attribute counts, unchanged or null. A whole array counts 1; ``add``
    and ``remove`` count 1 per value (Braze states it for ``add``; ``remove`` is
    assumed alike). A nested object counts every key at every depth. Email and phone used
    as the lookup identifier are not written, so they do not count.
    """
    points = 0
    for key, value in obj.items():
        if key in NON_BILLABLE or (not has_primary and key in ("email", "phone")):
            continue
        if isinstance(value, dict):
            kind = operator_kind(value)
            if kind == "inc":
                points += 1
            elif kind == "array":
                points += len(value.get("add", ())) + len(value.get("remove", ()))
            else:
                points += max(1, _count_keys(value))
        else:
            points += 1
    return points


def _count_keys(value: dict) -> int:
    return sum(1 + (_count_keys(v) if isinstance(v, dict) else 0) for v in value.values())
