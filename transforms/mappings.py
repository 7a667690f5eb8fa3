"""A sync's mappings: which Amplitude field is sent under which Braze name (pure).

``users.properties: [plan]`` is the identity mapping ``{from: user_properties.plan, to:
plan}``; ``users.mappings`` add any other field under any Braze name, standard attributes
included. Compiled once per worker, then called per event:

- ``UserMappings.updates(event) -> MappedUpdates(updates, skipped)``: the ``(op, braze_name,
  value)`` triples ``transforms.identify.apply_updates`` takes, with ``targets`` as its
  ``selected``. It replaces ``selected_updates(event["user_properties"], selected)`` and gives
  the same triples for plain properties (``tests/test_mappings.py`` compares the two on
  generated events), so existing syncs behave as before.
- ``EventMappings.properties(event) -> MappedProperties(properties, changes)``: the event or
  purchase ``properties``, replacing ``transforms.track.selected_properties`` (which also
  counts the ``sanitize`` changes; here they are returned for the caller to count).

Rules for users, as in ``selected_updates``:

- ``user_properties`` holds a snapshot (plain keys: ``$set`` each; a null is ignored) or
  operations (``$set``, ``$setOnce``, ``$add``, ``$append``, ...). A Braze name is updated once
  per event, by the first operation that names its source; ``$clearAll`` stands alone.
- A source outside ``user_properties`` (``country``, ``city``, ``platform``,
  ``event_properties.X``) is a snapshot of that field: ``$set`` when the event carries a
  non-null value. ``$clearAll`` does not touch it, since Amplitude's ``$clearAll`` removes
  user properties only: then the user-property names are each ``$unset`` (the same effect as
  ``$clearAll`` on them) and the other fields are set from the event as usual.
- Plain property names are read literally (``a.b`` is the property named ``a.b``), as today.
  A mapping's ``user_properties.a.b`` is the property ``a.b`` if there is one, else ``b``
  inside the object ``a``.
- A standard attribute's value (``transforms.standard_attributes``) is formatted for every
  absolute operation (``$set``, ``$setOnce``, ``$unset``); one that cannot be made valid is
  skipped and listed in ``skipped`` with the reason, never sent. Incremental operations
  (``$add``, ``$append``, ...) on a standard attribute are skipped as
  ``unsupported_operation``: Braze's profile fields are neither counters nor arrays. This
  holds for a plain property named like a standard attribute (``country``) too: Braze reads
  that key as its standard field whichever way it was selected.
"""
from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

from pipeline.config import EventSettings, FieldMapping, UserSettings
from transforms.filters import MISSING, compile_path
from transforms.identify import OPERATIONS
from transforms.sanitize import clean_properties
from transforms.standard_attributes import formatter_for

__all__ = ["UNSUPPORTED_OPERATION", "MappedUpdates", "MappedProperties", "UserMappings", "EventMappings"]

UNSUPPORTED_OPERATION = "unsupported_operation"
_ABSOLUTE = frozenset(("$set", "$setOnce", "$unset"))
_OPERATION_NAMES = frozenset(OPERATIONS)
_USER_PROPERTIES = "user_properties."

Update = Tuple[str, str, object]


class MappedUpdates(NamedTuple):
    updates: List[Update]  # (op, braze_name, value), for transforms.identify.apply_updates
    skipped: List[Tuple[str, str]]  # (braze_name, reason): standard values that cannot be made valid


class MappedProperties(NamedTuple):
    properties: dict  # the event's properties as Braze will take them
    changes: List[str]  # what transforms.sanitize changed, one name per change (count as sanitize.<name>)


class UserMappings:
    """A sync's user properties and ``users.mappings``, compiled. ``targets``: every Braze name
    it can update, for ``apply_updates(..., selected=targets)``."""

    def __init__(self, properties: Sequence[str] = (), mappings: Sequence[FieldMapping] = ()):
        by_property: Dict[str, List[str]] = {}  # a user property's literal name → its Braze names
        nested: List[Tuple[Callable, str]] = []  # (getter of a path inside user_properties, Braze name)
        fields: List[Tuple[Callable, str]] = []  # (getter of a field outside user_properties, Braze name)
        for name in properties:
            by_property.setdefault(name, []).append(name)
        for mapping in mappings:
            if mapping.source.startswith(_USER_PROPERTIES):
                name = mapping.source[len(_USER_PROPERTIES):]
                by_property.setdefault(name, []).append(mapping.target)
                if "." in name and not name.startswith("$"):
                    nested.append((compile_path(name), mapping.target))
            else:
                fields.append((compile_path(mapping.source), mapping.target))
        self._by_property = {name: tuple(targets) for name, targets in by_property.items()}
        self._nested = tuple(nested)
        self._fields = tuple(fields)
        from_user_properties = [t for targets in self._by_property.values() for t in targets]
        self.targets = frozenset(from_user_properties) | frozenset(t for _, t in fields)
        self._formatters = {t: f for t in self.targets for f in (formatter_for(t),) if f is not None}
        # $clearAll goes through as one operation only where it means the same as in
        # selected_updates: every name is a user property's, and each one can be nulled.
        self._clear_all_names = tuple(sorted(from_user_properties))
        self._compact_clear_all = not fields and not any(
            self._formatters[t](None).reason for t in self._clear_all_names if t in self._formatters)

    @classmethod
    def from_settings(cls, users: UserSettings) -> "UserMappings":
        return cls(users.properties, users.mappings)

    def updates(self, event: dict) -> MappedUpdates:
        """The updates one parsed Amplitude event makes, in the order to apply them."""
        user_properties = event.get("user_properties")
        if not isinstance(user_properties, dict):
            user_properties = {}
        raw: List[Update] = []
        if "$clearAll" in user_properties:
            if self._compact_clear_all:
                raw = [("$clearAll", "", None)] if self._clear_all_names else []
                return MappedUpdates(raw, [])
            raw = [("$unset", name, None) for name in self._clear_all_names]
            seen = set(self._clear_all_names)
        else:
            seen = set()
            self._from_user_properties(user_properties, raw, seen)
        for get, target in self._fields:
            if target not in seen:
                value = get(event)
                if value is not MISSING and value is not None:
                    seen.add(target)
                    raw.append(("$set", target, value))
        return self._formatted(raw) if self._formatters else MappedUpdates(raw, [])

    def _from_user_properties(self, user_properties: dict, out: List[Update], seen: set) -> None:
        # Per event and per sync: kept to dict look-ups, as selected_updates is.
        by_property = self._by_property
        nested = self._nested
        for key, operands in user_properties.items():
            if key[:1] == "$":
                if key in _OPERATION_NAMES and isinstance(operands, dict):
                    for name, value in operands.items():
                        targets = by_property.get(name)
                        if targets is not None:
                            for target in targets:
                                if target not in seen:
                                    seen.add(target)
                                    out.append((key, target, value))
                    for get, target in nested:
                        if target not in seen:
                            value = get(operands)
                            if value is not MISSING:
                                seen.add(target)
                                out.append((key, target, value))
            elif operands is not None:
                targets = by_property.get(key)
                if targets is not None:
                    for target in targets:
                        if target not in seen:
                            seen.add(target)
                            out.append(("$set", target, operands))
        for get, target in nested:  # a snapshot's nested objects
            if target not in seen:
                value = get(user_properties)
                if value is not MISSING and value is not None:
                    seen.add(target)
                    out.append(("$set", target, value))

    def _formatted(self, raw: List[Update]) -> MappedUpdates:
        updates, skipped = [], []
        for op, target, value in raw:
            formatter = self._formatters.get(target)
            if formatter is None:
                updates.append((op, target, value))
            elif op not in _ABSOLUTE:
                skipped.append((target, UNSUPPORTED_OPERATION))
            else:
                formatted = formatter(None if op == "$unset" else value)
                if formatted.reason:
                    skipped.append((target, formatted.reason))
                else:
                    updates.append((op, target, formatted.value))
        return MappedUpdates(updates, skipped)


class EventMappings:
    """A sync's event properties and ``events.mappings``, compiled."""

    def __init__(self, properties: Sequence[str] = (), mappings: Sequence[FieldMapping] = ()):
        getters: List[Tuple[Callable, str]] = [(_event_property(name), name) for name in properties]
        getters += [(compile_path(m.source), m.target) for m in mappings]
        self._getters = tuple(getters)

    @classmethod
    def from_settings(cls, events: EventSettings) -> "EventMappings":
        return cls(events.properties, events.mappings)

    def properties(self, event: dict) -> MappedProperties:
        """The mapped properties the event carries, made acceptable to Braze
        (``transforms.sanitize.clean_properties``). A null or absent field is left out."""
        if not self._getters:
            return MappedProperties({}, [])
        found = {}
        for get, target in self._getters:
            value = get(event)
            if value is not MISSING and value is not None:
                found[target] = value
        cleaned, changes = clean_properties(found)
        return MappedProperties(cleaned, changes)


def _event_property(name: str) -> Callable[[dict], object]:
    """A plain event property, read literally, as ``selected_properties`` reads it."""
    def get(event: dict, _name=name):
        source = event.get("event_properties")
        return source.get(_name, MISSING) if isinstance(source, dict) else MISSING
    return get

