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

from transforms.model import EventSettings, FieldMapping, UserSettings
from transforms.filters import MISSING, compile_path
from transforms.identify_ops import OPERATIONS
from transforms.sanitize import clean_properties
from transforms.standard_attributes import formatter_for

__all__ = ["UNSUPPORTED_OPERATION", "MappedUpdates", "MappedProperties", "UserMappings", "EventMappings"]

UNSUPPORTED_OPERATION = "unsupported_operation"
_ABSOLUTE = frozenset(("$set", "$setOnce", "$unset"))
_OPERATION_NAMES = frozenset(OPERATIONS)
_USER_PROPERTIES = "user_properties."
FORMAT_CACHE_SIZE = 10_000  # formatted standard-attribute texts remembered per sync and worker

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
        self._format_cache: Dict[Tuple[str, str], object] = {}
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
        out: List[Update] = []
        skipped: List[Tuple[str, str]] = []
        if "$clearAll" in user_properties:
            if self._compact_clear_all:
                return MappedUpdates([("$clearAll", "", None)] if self._clear_all_names else [], [])
            seen = set(self._clear_all_names)
            for name in self._clear_all_names:
                self._add("$unset", name, None, out, skipped)
        else:
            seen = set()
            self._from_user_properties(user_properties, out, seen, skipped)
        for get, target in self._fields:
            if target not in seen:
                value = get(event)
                if value is not MISSING and value is not None:
                    seen.add(target)
                    self._add("$set", target, value, out, skipped)
        return MappedUpdates(out, skipped)

    def _from_user_properties(self, user_properties: dict, out: List[Update], seen: set, skipped: list) -> None:
        # Per event and per sync: kept to dict look-ups, as selected_updates is; a standard
        # attribute's value is formatted on the way (``_add``), other values go as they are.
        by_property = self._by_property
        nested = self._nested
        formatted = self._formatters
        for key, operands in user_properties.items():
            if key[:1] == "$":
                if key in _OPERATION_NAMES and isinstance(operands, dict):
                    for name, value in operands.items():
                        targets = by_property.get(name)
                        if targets is not None:
                            for target in targets:
                                if target not in seen:
                                    seen.add(target)
                                    if target in formatted:
                                        self._add(key, target, value, out, skipped)
                                    else:
                                        out.append((key, target, value))
                    for get, target in nested:
                        if target not in seen:
                            value = get(operands)
                            if value is not MISSING:
                                seen.add(target)
                                self._add(key, target, value, out, skipped)
            elif operands is not None:
                targets = by_property.get(key)
                if targets is not None:
                    for target in targets:
                        if target not in seen:
                            seen.add(target)
                            if target in formatted:
                                self._add("$set", target, operands, out, skipped)
                            else:
                                out.append(("$set", target, operands))
        for get, target in nested:  # a snapshot's nested objects
            if target not in seen:
                value = get(user_properties)
                if value is not MISSING and value is not None:
                    seen.add(target)
                    self._add("$set", target, value, out, skipped)

    def _add(self, op: str, target: str, value, out: List[Update], skipped: list) -> None:
        """One update; a standard attribute's value in Braze's format, or skipped with why."""
        formatter = self._formatters.get(target)
        if formatter is None:
            out.append((op, target, value))
            return
        if op not in _ABSOLUTE:
            skipped.append((target, UNSUPPORTED_OPERATION))
            return
        if op == "$unset":
            value = None
        # The same few countries, languages and genders come again and again: their
        # formatting is remembered (text only, bounded), per worker.
        key = (target, value) if type(value) is str else None
        formatted = self._format_cache.get(key) if key is not None else None
        if formatted is None:
            formatted = formatter(value)
            if key is not None:
                if len(self._format_cache) >= FORMAT_CACHE_SIZE:
                    self._format_cache.clear()
                self._format_cache[key] = formatted
        if formatted.reason:
            skipped.append((target, formatted.reason))
        else:
            out.append((op, target, formatted.value))


class EventMappings:
    """A sync's event properties and ``events.mappings``, compiled."""

    def __init__(self, properties: Sequence[str] = (), mappings: Sequence[FieldMapping] = ()):
        self._names = tuple(properties)  # read literally from event_properties, as selected_properties does
        self._getters = tuple((compile_path(m.source), m.target) for m in mappings)

    @classmethod
    def from_settings(cls, events: EventSettings) -> "EventMappings":
        return cls(events.properties, events.mappings)

    def properties(self, event: dict) -> MappedProperties:
        """The mapped properties the event carries, made acceptable to Braze
        (``transforms.sanitize.clean_properties``). A null or absent field is left out."""
        found = {}
        if self._names:
            source = event.get("event_properties")
            if isinstance(source, dict):
                found = {name: source[name] for name in self._names if source.get(name) is not None}
        for get, target in self._getters:
            value = get(event)
            if value is not MISSING and value is not None:
                found[target] = value
        if not found:
            return MappedProperties({}, [])
        cleaned, changes = clean_properties(found)
        return MappedProperties(cleaned, changes)
