"""The syncs file: what each sync sends to which Braze workspace.

Loaded and validated once, when the pipeline is built, so a mistake fails the launch with
every problem listed, not a worker at 3 a.m. The JSON Schema for editors is
``pipeline/syncs.schema.json`` (kept in agreement by ``tests/test_config.py``; the one rule it
cannot express is that sync names are unique).

- ``load_syncs(path_or_uri)``: a local path or ``gs://`` URI, YAML or JSON.
- ``loads_syncs(text)`` / ``parse_syncs(document)``: the same from text or a parsed document.
- ``enabled_syncs(syncs)``: the syncs whose status is enabled.

Defaults: ``enabled`` true; identifier ``external_id`` from ``user_id``; a ``users`` or
``events`` section that is absent is disabled, one that is present is enabled unless it says
``enabled: false``; no properties listed means none are sent.

Secrets: ``api_key`` is only ever a reference, and no message here quotes it (nor the
endpoint URL, which could carry credentials; only its host is quoted).

This module holds the syncs file's model, its public API and its own rules. What it shares
with the cohorts file lives beside it: reading and decoding (``pipeline.config_documents``),
the validator helpers and ``ConfigError`` (``pipeline.config_validation``), and the Braze
endpoint allow-list (``pipeline.braze_endpoints``). ``ALLOWED_ENDPOINTS``, ``ConfigError``
and ``decode_document`` stay importable from here.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional, Tuple

# ALLOWED_ENDPOINTS, ConfigError and decode_document are re-exported (see the docstring);
# _ENDPOINT_FIX too, for tests/test_config.py.
from pipeline.braze_endpoints import ALLOWED_ENDPOINTS, ENDPOINT_FIX as _ENDPOINT_FIX  # noqa: F401
from pipeline.config_documents import decode_document, format_for_name, read_bytes
from pipeline.config_validation import ConfigError, Validator, is_number, is_scalar, join_path, type_name

IDENTIFIER_TYPES = ("external_id", "braze_id", "user_alias")
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
    purchases: bool = False  # revenue events → Braze purchase objects (transforms/purchases.py)


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


__all__ = [
    "ALLOWED_ENDPOINTS", "Condition", "ConfigError", "EventSelector", "EventSettings", "IDENTIFIER_TYPES",
    "Identifier", "OPERATORS", "Sync", "UserSettings", "enabled_syncs", "load_syncs", "loads_syncs", "parse_syncs",
]

# Operators by the value they take.
NO_VALUE_OPERATORS = ("is_set", "is_not_set")
EQUALITY_OPERATORS = ("is", "is_not")  # a scalar or a non-empty list of scalars
STRING_OPERATORS = ("contains", "does_not_contain", "starts_with")  # a non-empty string
NUMBER_OPERATORS = ("greater_than", "greater_or_equal", "less_than", "less_or_equal")  # a number

_PATH_RE = re.compile(r"[^.]+(\.[^.]+)*")  # a dotted path: no empty segment

_TOP_KEYS = ("$schema", "syncs")  # "$schema" lets JSON editors find syncs.schema.json
_SYNC_KEYS = ("name", "enabled", "endpoint", "api_key", "app_id", "identifier", "users", "events")
_IDENTIFIER_KEYS = ("type", "source", "alias_label")
_USERS_KEYS = ("enabled", "properties", "update_existing_only")
_EVENTS_KEYS = ("enabled", "select", "properties", "purchases")
_SELECTOR_KEYS = ("event_type", "where")
_CONDITION_KEYS = ("property", "op", "value")
_EXPECTED = "a mapping with a 'syncs' list"  # what the document must be, for "empty"/"wrong type" messages


# --------------------------------------------------------------------------------------------
# Loading


def load_syncs(path_or_uri: str, *, allow_insecure_endpoints: bool = False) -> Tuple[Sync, ...]:
    """Read and validate a syncs file: a local path or any Beam filesystem URI (``gs://...``).

    The format follows the extension (``.json``; ``.yaml``/``.yml``); any other name is sniffed
    (a document starting with ``{`` is JSON, anything else YAML). Raises ``ConfigError`` naming
    ``path_or_uri`` with every problem found.
    """
    source = str(path_or_uri)
    data = read_bytes(source)
    return loads_syncs(data, source=source, format=format_for_name(source),
                       allow_insecure_endpoints=allow_insecure_endpoints)


def loads_syncs(
    text, *, source: str = "<syncs>", format: Optional[str] = None, allow_insecure_endpoints: bool = False
) -> Tuple[Sync, ...]:
    """Parse and validate a syncs document given as text or bytes.

    ``format`` is ``"json"``, ``"yaml"`` or ``None`` to sniff (``{`` first means JSON).
    """
    document, duplicates = decode_document(text, source, format, _EXPECTED)
    return _parse(document, source, allow_insecure_endpoints, duplicates)


def parse_syncs(document, *, source: str = "<syncs>", allow_insecure_endpoints: bool = False) -> Tuple[Sync, ...]:
    """Validate an already-parsed syncs document (a dict with a ``syncs`` list).

    Every problem is collected and raised at once as ``ConfigError(source, problems)``, each
    problem ``path: message`` (``syncs[1].events.select[0].where[2].op: unknown operator ...``).
    With ``allow_insecure_endpoints`` any http(s) endpoint with a host is accepted (the local
    Braze simulator); otherwise only the Braze REST hosts in ``ALLOWED_ENDPOINTS``.
    """
    return _parse(document, source, allow_insecure_endpoints, [])


def enabled_syncs(syncs) -> Tuple[Sync, ...]:
    """The syncs whose status is enabled, in file order."""
    return tuple(s for s in syncs if s.enabled)


# --------------------------------------------------------------------------------------------
# Validation (the helpers shared with the cohorts file are in pipeline.config_validation)


def _parse(document, source, allow_insecure_endpoints, problems) -> Tuple[Sync, ...]:
    v = _SyncsValidator(list(problems), allow_insecure_endpoints)
    return v.checked(source, v.document(document))


class _SyncsValidator(Validator):
    """Walks a syncs document in a fixed order and collects every problem; returns ``Sync``s."""

    def document(self, document):
        if not self.root_mapping(document, _EXPECTED):
            return ()
        self.mapping(document, "", _TOP_KEYS, required=("syncs",))
        self.schema_key(document)
        if "syncs" not in document:
            return ()
        items = document["syncs"]
        if not isinstance(items, list):
            self.add("syncs", f"must be a list of syncs, got {type_name(items)}")
            return ()
        if not items:
            self.add("syncs", "at least one sync is required")
            return ()
        names = {}
        syncs = []
        for i, item in enumerate(items):
            sync = self.sync(item, f"syncs[{i}]", names)
            if sync is not None:
                syncs.append(sync)
        return tuple(syncs)

    def sync(self, value, path, names):
        m = self.mapping(value, path, _SYNC_KEYS, required=("name", "endpoint", "api_key"))
        if m is None:
            return None
        name = self.sync_name(m, path)
        self.unique_name(names, name, path)
        enabled = self.boolean(m, "enabled", path, True)
        endpoint = self.endpoint(m, path)
        api_key = self.reference(m, "api_key", path)  # "required" is reported by mapping()
        app_id = self.string(m, "app_id", path)
        identifier = self.identifier(m, path)
        users = self.users(m, path)
        events = self.events(m, path)
        if None in (name, endpoint, api_key, identifier, users, events) or ("app_id" in m and app_id is None):
            return None
        return Sync(name=name, endpoint=endpoint, api_key=api_key, enabled=enabled, app_id=app_id,
                    identifier=identifier, users=users, events=events)

    def identifier(self, m, path):
        if "identifier" not in m:
            return Identifier()
        p = join_path(path, "identifier")
        im = self.mapping(m["identifier"], p, _IDENTIFIER_KEYS)
        if im is None:
            return None
        ok = True
        id_type = "external_id"
        if "type" in im:
            id_type = im["type"]
            if not isinstance(id_type, str):
                self.add(join_path(p, "type"), f"must be a string, got {type_name(id_type)}")
                id_type, ok = None, False
            elif id_type not in IDENTIFIER_TYPES:
                self.add(join_path(p, "type"), f"unknown identifier type {id_type!r} (expected one of: "
                             + ", ".join(IDENTIFIER_TYPES) + ")")
                id_type, ok = None, False
        source = "user_id"
        if "source" in im:
            source = self.string(im, "source", p, pattern=_PATH_RE,
                                 pattern_text="must be a field name or dotted path with no empty part")
            ok = ok and source is not None
        alias_label = None
        if id_type == "user_alias":
            alias_label = self.alias_label(im, p)
            ok = ok and alias_label is not None
        elif id_type is not None and self.only_for_alias(im, p, id_type, ("alias_label",)):
            ok = False
        return Identifier(type=id_type, source=source, alias_label=alias_label) if ok else None

    def users(self, m, path):
        if "users" not in m:
            return UserSettings()
        p = join_path(path, "users")
        um = self.mapping(m["users"], p, _USERS_KEYS)
        if um is None:
            return None
        n = len(self.problems)
        settings = UserSettings(
            enabled=self.boolean(um, "enabled", p, True),
            properties=self.string_list(um, "properties", p),
            update_existing_only=self.boolean(um, "update_existing_only", p, False),
        )
        return settings if len(self.problems) == n else None

    def events(self, m, path):
        if "events" not in m:
            return EventSettings()
        p = join_path(path, "events")
        em = self.mapping(m["events"], p, _EVENTS_KEYS)
        if em is None:
            return None
        n = len(self.problems)
        enabled = self.boolean(em, "enabled", p, True)
        select = self.select(em, p, enabled)
        properties = self.string_list(em, "properties", p)
        purchases = self.boolean(em, "purchases", p, False)
        if len(self.problems) != n:
            return None
        return EventSettings(enabled=enabled, select=select, properties=properties, purchases=purchases)

    def select(self, em, path, enabled):
        p = join_path(path, "select")
        if "select" not in em:
            if enabled:
                self.add(p, "required when events are enabled (list the events to send, or event_type '*')")
            return ()
        value = em["select"]
        if not isinstance(value, list):
            self.add(p, f"must be a list of event selectors, got {type_name(value)}")
            return ()
        if not value and enabled:
            self.add(p, "must not be empty when events are enabled (list the events to send, or event_type '*')")
        return tuple(s for s in (self.selector(item, f"{p}[{i}]") for i, item in enumerate(value)) if s)

    def selector(self, value, path):
        sm = self.mapping(value, path, _SELECTOR_KEYS, required=("event_type",))
        if sm is None:
            return None
        event_type = self.string(sm, "event_type", path)
        where = ()
        if "where" in sm:
            wp = join_path(path, "where")
            value = sm["where"]
            if not isinstance(value, list):
                self.add(wp, f"must be a list of conditions, got {type_name(value)}")
                return None
            where = tuple(self.condition(item, f"{wp}[{i}]") for i, item in enumerate(value))
            if None in where:
                return None
        return EventSelector(event_type=event_type, where=where) if event_type is not None else None

    def condition(self, value, path):
        cm = self.mapping(value, path, _CONDITION_KEYS, required=("property", "op"))
        if cm is None:
            return None
        n = len(self.problems)
        prop = self.string(cm, "property", path, pattern=_PATH_RE,
                           pattern_text="must be a field name or dotted path with no empty part")
        op = cm.get("op")
        vp = join_path(path, "value")
        cond_value = None
        if "op" not in cm:
            pass
        elif not isinstance(op, str):
            self.add(join_path(path, "op"), f"must be a string, got {type_name(op)}")
        elif op not in OPERATORS:
            self.add(join_path(path, "op"), f"unknown operator {op!r} (expected one of: " + ", ".join(OPERATORS) + ")")
        elif op in NO_VALUE_OPERATORS:
            if "value" in cm:
                self.add(vp, f"not allowed with {op}")
        elif "value" not in cm:
            self.add(vp, f"required with {op}")
        else:
            raw = cm["value"]
            if op in EQUALITY_OPERATORS:
                if isinstance(raw, list):
                    if not raw:
                        self.add(vp, "must not be an empty list")
                    for i, item in enumerate(raw):
                        if not is_scalar(item):
                            self.add(f"{vp}[{i}]", _scalar_message(item))
                    cond_value = tuple(raw)
                elif not is_scalar(raw):
                    self.add(vp, _scalar_message(raw, list_allowed=True))
                else:
                    cond_value = raw
            elif op in STRING_OPERATORS:
                if not isinstance(raw, str):
                    self.add(vp, f"must be a string with {op}, got {type_name(raw)}")
                elif not raw:
                    self.add(vp, "must not be empty")
                else:
                    cond_value = raw
            elif not is_number(raw):  # NUMBER_OPERATORS
                got = "a non-finite number" if isinstance(raw, float) else type_name(raw)
                self.add(vp, f"must be a number with {op}, got {got}")
            else:
                cond_value = raw
        if len(self.problems) != n:
            return None
        return Condition(property=prop, op=op, value=cond_value)


def _scalar_message(value, list_allowed=False) -> str:
    allowed = "a string, number or boolean" + (" (or a list of them)" if list_allowed else "")
    hint = "; use is_set / is_not_set to test for presence" if value is None else ""
    got = "a non-finite number" if isinstance(value, float) else type_name(value)
    return f"must be {allowed}, got {got}{hint}"
