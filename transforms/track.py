"""The track branch: a selected Amplitude event → one Braze event object.

(Revenue events become purchase objects instead where a sync asks for it: ``transforms.purchases``.)

The object's ``properties`` are the sync's ``events.properties`` and ``events.mappings``
(``transforms.mappings.EventMappings``: any Amplitude field under any property name), made
acceptable to Braze (``transforms.sanitize``), each fix counted as ``sanitize.<change>``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

from apache_beam.metrics import Metrics

from transforms.mappings import EventMappings
from transforms.records import iso_from_ms
from transforms.sanitize import clean_properties

# Amplitude's identify calls travel as events but are not events a user did.
NOT_TRACKED_EVENT_TYPES = frozenset({"$identify", "$groupidentify"})

# A sync's compiled event mappings, or (for callers that only name properties) the names.
Properties = Union[EventMappings, Sequence[str]]


def selected_properties(event: dict, properties: Tuple[str, ...]) -> dict:
    """The selected event properties the event carries (none selected → none sent).

    A null value is left out: Braze documents no null property type, and "not set" is what
    an absent property already says."""
    if not properties:
        return {}
    source = event["event_properties"]
    selected = {name: source[name] for name in properties if source.get(name) is not None}
    cleaned, changes = clean_properties(selected)
    count_sanitized(changes)
    return cleaned


def mapped_properties(event: dict, properties: Properties) -> dict:
    """The event's properties as the sync maps them, sanitised; the fixes are counted."""
    if not isinstance(properties, EventMappings):
        return selected_properties(event, tuple(properties))
    mapped = properties.properties(event)
    if mapped.changes:
        count_sanitized(mapped.changes)
    return mapped.properties


_COUNTERS = {}


def _sanitized(change: str):
    """Counter ``sanitize.<change>``: what was fixed so Braze would take the object."""
    counter = _COUNTERS.get(change)
    if counter is None:
        counter = _COUNTERS[change] = Metrics.counter("sanitize", change)
    return counter


def count_sanitized(changes) -> None:
    for change in changes:
        _sanitized(change).inc()


def event_object(
    event: dict, time_ms: int, identifier_fields: dict, properties: Properties, app_id: Optional[str]
) -> dict:
    """Braze event object: identifier, ``name``, ``time`` (ISO 8601 UTC), ``app_id``, and the
    mapped properties (``properties``: the sync's ``EventMappings``, or property names) that
    the event carries."""
    obj = dict(identifier_fields)
    obj["name"] = event["event_type"]
    obj["time"] = iso_from_ms(time_ms)
    if app_id:
        obj["app_id"] = app_id
    selected = mapped_properties(event, properties)
    if selected:
        obj["properties"] = selected
    return obj
