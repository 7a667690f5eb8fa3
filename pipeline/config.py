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
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import urllib.parse
from typing import Any, Optional, Tuple

import yaml

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

# Braze REST endpoints (reference/braze-api.md §3). No US-09 exists in any source.
ALLOWED_ENDPOINTS = tuple(
    [f"https://rest.iad-0{n}.braze.com" for n in range(1, 9)]
    + [
        "https://rest.us-10.braze.com",
        "https://rest.fra-01.braze.eu",
        "https://rest.fra-02.braze.eu",
        "https://rest.au-01.braze.com",
        "https://rest.id-01.braze.com",
        "https://rest.jp-01.braze.com",
        "https://rest.kr-01.braze.com",
    ]
)
_ALLOWED_ENDPOINT_SET = frozenset(ALLOWED_ENDPOINTS)

# Operators by the value they take.
NO_VALUE_OPERATORS = ("is_set", "is_not_set")
EQUALITY_OPERATORS = ("is", "is_not")  # a scalar or a non-empty list of scalars
STRING_OPERATORS = ("contains", "does_not_contain", "starts_with")  # a non-empty string
NUMBER_OPERATORS = ("greater_than", "greater_or_equal", "less_than", "less_or_equal")  # a number

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV_REF_RE = re.compile(r"env:[A-Za-z_][A-Za-z0-9_]*")
_SECRET_REF_RE = re.compile(r"projects/[^/]+/secrets/[^/]+/versions/[^/]+")
_PATH_RE = re.compile(r"[^.]+(\.[^.]+)*")  # a dotted path: no empty segment

_ROOT = "(document)"
_TOP_KEYS = ("$schema", "syncs")  # "$schema" lets JSON editors find syncs.schema.json
_SYNC_KEYS = ("name", "enabled", "endpoint", "api_key", "app_id", "identifier", "users", "events")
_IDENTIFIER_KEYS = ("type", "source", "alias_label")
_USERS_KEYS = ("enabled", "properties", "update_existing_only")
_EVENTS_KEYS = ("enabled", "select", "properties", "purchases")
_SELECTOR_KEYS = ("event_type", "where")
_CONDITION_KEYS = ("property", "op", "value")

_API_KEY_MESSAGE = "must be a reference (env:NAME or projects/P/secrets/S/versions/V), not a key"
_ENDPOINT_FIX = (
    "pick your cluster's REST endpoint from: " + ", ".join(ALLOWED_ENDPOINTS)
    + " (or pass --allow_insecure_endpoints for local testing)"
)


# --------------------------------------------------------------------------------------------
# Loading


def load_syncs(path_or_uri: str, *, allow_insecure_endpoints: bool = False) -> Tuple[Sync, ...]:
    """Read and validate a syncs file: a local path or any Beam filesystem URI (``gs://...``).

    The format follows the extension (``.json``; ``.yaml``/``.yml``); any other name is sniffed
    (a document starting with ``{`` is JSON, anything else YAML). Raises ``ConfigError`` naming
    ``path_or_uri`` with every problem found.
    """
    source = str(path_or_uri)
    data = _read_bytes(source)
    lower = source.lower()
    fmt = "json" if lower.endswith(".json") else "yaml" if lower.endswith((".yaml", ".yml")) else None
    return loads_syncs(data, source=source, format=fmt, allow_insecure_endpoints=allow_insecure_endpoints)


def loads_syncs(
    text, *, source: str = "<syncs>", format: Optional[str] = None, allow_insecure_endpoints: bool = False
) -> Tuple[Sync, ...]:
    """Parse and validate a syncs document given as text or bytes.

    ``format`` is ``"json"``, ``"yaml"`` or ``None`` to sniff (``{`` first means JSON).
    """
    document, duplicates = decode_document(text, source, format, "a mapping with a 'syncs' list")
    return _parse(document, source, allow_insecure_endpoints, duplicates)


def decode_document(text, source: str, format: Optional[str], expected: str):
    """Text or bytes → ``(document, duplicate-key problems)``; shared by every config file."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ConfigError(source, [f"{_ROOT}: not UTF-8 text (byte {e.start})"]) from None
    if not text.strip():
        raise ConfigError(source, [f"{_ROOT}: the file is empty (expected {expected})"])
    if format is None:
        format = "json" if text.lstrip().startswith("{") else "yaml"
    if format == "json":
        return _parse_json(text, source)
    if format == "yaml":
        return _parse_yaml(text, source)
    raise ValueError(f"format must be 'json', 'yaml' or None, got {format!r}")


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


def _read_bytes(source: str) -> bytes:
    if "://" not in source:
        try:
            with open(source, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ConfigError(source, [f"{_ROOT}: file not found: {source}"]) from None
        except IsADirectoryError:
            raise ConfigError(source, [f"{_ROOT}: is a directory, not a file: {source}"]) from None
        except OSError as e:
            raise ConfigError(source, [f"{_ROOT}: cannot read {source}: {e.strerror or e}"]) from None
    # gs:// and other Beam filesystems. Imported here: Beam is slow to import and only needed for URIs.
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(source, compression_type="uncompressed") as f:
            return f.read()
    except Exception as e:  # noqa: BLE001 - each filesystem raises its own types
        if isinstance(e, FileNotFoundError) or type(e).__name__ == "NotFound":
            raise ConfigError(source, [f"{_ROOT}: file not found: {source}"]) from None
        raise ConfigError(source, [f"{_ROOT}: cannot read {source}: {type(e).__name__}: {e}"]) from None


def _parse_json(text: str, source: str):
    duplicates = []

    def pairs(items):
        seen = set()
        for key, _ in items:
            if key in seen:
                duplicates.append(f"{_ROOT}: duplicate key {key!r}")
            seen.add(key)
        return dict(items)

    try:
        return json.loads(text, object_pairs_hook=pairs), duplicates
    except json.JSONDecodeError as e:
        # e.msg never contains the document, so no secret can leak from here.
        raise ConfigError(source, [f"line {e.lineno}, column {e.colno}: JSON syntax error: {e.msg}"]) from None


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys (plain PyYAML keeps the last silently)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates = []

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # "<<" merges may be overridden by explicit keys, by design
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        mark = key_node.start_mark
                        self.duplicates.append(
                            f"line {mark.line + 1}, column {mark.column + 1}: duplicate key {key!r}"
                        )
                    seen.add(key)
                except TypeError:
                    pass  # unhashable key; SafeLoader reports it below
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str):
    loader = _YamlLoader(text)
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        # Built from the parts, not str(e): str(e) quotes the offending line, which may hold a key.
        def at(mark):
            return f"line {mark.line + 1}, column {mark.column + 1}"

        mark = e.problem_mark or e.context_mark
        message = f"{at(mark) if mark else _ROOT}: YAML syntax error: {e.problem or e.context}"
        if e.problem and e.context:
            message += f" ({e.context}" + (f" at {at(e.context_mark)})" if e.context_mark else ")")
        raise ConfigError(source, [message]) from None
    except yaml.YAMLError as e:
        raise ConfigError(source, [f"{_ROOT}: YAML error: {type(e).__name__}"]) from None
    finally:
        loader.dispose()
    return document, loader.duplicates


# --------------------------------------------------------------------------------------------
# Validation


def _parse(document, source, allow_insecure_endpoints, problems) -> Tuple[Sync, ...]:
    v = _Validator(list(problems), allow_insecure_endpoints)
    syncs = v.document(document)
    if v.problems:
        raise ConfigError(source, v.problems)
    return syncs


def _type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__  # e.g. a YAML date


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value) -> bool:
    return isinstance(value, str) or isinstance(value, bool) or _is_number(value)


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


class _Validator:
    """Walks the document in a fixed order and collects every problem; returns dataclasses."""

    def __init__(self, problems, allow_insecure_endpoints):
        self.problems = problems
        self.allow_insecure = allow_insecure_endpoints

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    # -- generic helpers (return None when the value is unusable; the problem is recorded) --

    def mapping(self, value, path, keys, required=()):
        if not isinstance(value, dict):
            self.add(path, f"must be a mapping, got {_type_name(value)}")
            return None
        for key in required:
            if key not in value:
                self.add(_join(path, key), "required")
        for key in value:
            if not isinstance(key, str):
                self.add(path, f"keys must be strings, got {_type_name(key)} key")
            elif key not in keys:
                close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else "expected one of: " + ", ".join(keys)
                self.add(_join(path, key), f"unknown key ({hint})")
        return value

    def boolean(self, m, key, path, default):
        if key not in m:
            return default
        value = m[key]
        if not isinstance(value, bool):
            self.add(_join(path, key), f"must be true or false, got {_type_name(value)}")
            return default
        return value

    def string(self, m, key, path, required=False, pattern=None, pattern_text=""):
        if key not in m:
            return None  # "required" already reported by mapping()
        value = m[key]
        p = _join(path, key)
        if not isinstance(value, str):
            self.add(p, f"must be a string, got {_type_name(value)}")
            return None
        if not value:
            self.add(p, "must not be empty")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.add(p, pattern_text)
            return None
        return value

    def string_list(self, m, key, path):
        if key not in m:
            return ()
        value = m[key]
        p = _join(path, key)
        if not isinstance(value, list):
            self.add(p, f"must be a list of strings, got {_type_name(value)}")
            return ()
        out, seen = [], set()
        for i, item in enumerate(value):
            ip = f"{p}[{i}]"
            if not isinstance(item, str):
                self.add(ip, f"must be a string, got {_type_name(item)}")
            elif not item:
                self.add(ip, "must not be empty")
            elif item in seen:
                self.add(ip, f"duplicate {item!r}")
            else:
                seen.add(item)
                out.append(item)
        return tuple(out)

    # -- the document --

    def document(self, document):
        if document is None:
            self.add(_ROOT, "the file is empty (expected a mapping with a 'syncs' list)")
            return ()
        if not isinstance(document, dict):
            self.add(_ROOT, f"must be a mapping with a 'syncs' list, got {_type_name(document)}")
            return ()
        self.mapping(document, "", _TOP_KEYS, required=("syncs",))
        if "$schema" in document and not isinstance(document["$schema"], str):
            self.add("$schema", f"must be a string, got {_type_name(document['$schema'])}")
        if "syncs" not in document:
            return ()
        items = document["syncs"]
        if not isinstance(items, list):
            self.add("syncs", f"must be a list of syncs, got {_type_name(items)}")
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
        name = self.string(m, "name", path, pattern=_NAME_RE,
                           pattern_text="must be 1-64 letters, digits, '-' or '_'")
        if name is not None:
            if name in names:
                self.add(_join(path, "name"), f"duplicate name {name!r} (also {names[name]})")
            else:
                names[name] = path
        enabled = self.boolean(m, "enabled", path, True)
        endpoint = self.endpoint(m, path)
        api_key = self.api_key(m, path)
        app_id = self.string(m, "app_id", path)
        identifier = self.identifier(m, path)
        users = self.users(m, path)
        events = self.events(m, path)
        if None in (name, endpoint, api_key, identifier, users, events) or ("app_id" in m and app_id is None):
            return None
        return Sync(name=name, endpoint=endpoint, api_key=api_key, enabled=enabled, app_id=app_id,
                    identifier=identifier, users=users, events=events)

    def api_key(self, m, path):
        if "api_key" not in m:
            return None
        value = m["api_key"]
        p = _join(path, "api_key")
        # Never quote the value: it may be a real key pasted by mistake.
        if not isinstance(value, str):
            self.add(p, f"must be a string, got {_type_name(value)}; it " + _API_KEY_MESSAGE)
            return None
        if not (_ENV_REF_RE.fullmatch(value) or _SECRET_REF_RE.fullmatch(value)):
            self.add(p, _API_KEY_MESSAGE)
            return None
        return value

    def endpoint(self, m, path):
        if "endpoint" not in m:
            return None
        value = m["endpoint"]
        p = _join(path, "endpoint")
        if not isinstance(value, str):
            self.add(p, f"must be a string, got {_type_name(value)}")
            return None
        problem, normalised = _check_endpoint(value, self.allow_insecure)
        if problem:
            self.add(p, problem)
            return None
        return normalised

    def identifier(self, m, path):
        if "identifier" not in m:
            return Identifier()
        p = _join(path, "identifier")
        im = self.mapping(m["identifier"], p, _IDENTIFIER_KEYS)
        if im is None:
            return None
        ok = True
        id_type = "external_id"
        if "type" in im:
            id_type = im["type"]
            if not isinstance(id_type, str):
                self.add(_join(p, "type"), f"must be a string, got {_type_name(id_type)}")
                id_type, ok = None, False
            elif id_type not in IDENTIFIER_TYPES:
                self.add(_join(p, "type"), f"unknown identifier type {id_type!r} (expected one of: "
                         + ", ".join(IDENTIFIER_TYPES) + ")")
                id_type, ok = None, False
        source = "user_id"
        if "source" in im:
            source = self.string(im, "source", p, pattern=_PATH_RE,
                                 pattern_text="must be a field name or dotted path with no empty part")
            ok = ok and source is not None
        alias_label = None
        if id_type == "user_alias":
            if "alias_label" not in im:
                self.add(_join(p, "alias_label"), "required when type is user_alias")
                ok = False
            else:
                alias_label = self.string(im, "alias_label", p)
                ok = ok and alias_label is not None
        elif id_type is not None and "alias_label" in im:
            self.add(_join(p, "alias_label"), f"only allowed when type is user_alias (type is {id_type!r})")
            ok = False
        return Identifier(type=id_type, source=source, alias_label=alias_label) if ok else None

    def users(self, m, path):
        if "users" not in m:
            return UserSettings()
        p = _join(path, "users")
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
        p = _join(path, "events")
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
        p = _join(path, "select")
        if "select" not in em:
            if enabled:
                self.add(p, "required when events are enabled (list the events to send, or event_type '*')")
            return ()
        value = em["select"]
        if not isinstance(value, list):
            self.add(p, f"must be a list of event selectors, got {_type_name(value)}")
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
            wp = _join(path, "where")
            value = sm["where"]
            if not isinstance(value, list):
                self.add(wp, f"must be a list of conditions, got {_type_name(value)}")
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
        vp = _join(path, "value")
        cond_value = None
        if "op" not in cm:
            pass
        elif not isinstance(op, str):
            self.add(_join(path, "op"), f"must be a string, got {_type_name(op)}")
        elif op not in OPERATORS:
            self.add(_join(path, "op"), f"unknown operator {op!r} (expected one of: " + ", ".join(OPERATORS) + ")")
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
                        if not _is_scalar(item):
                            self.add(f"{vp}[{i}]", _scalar_message(item))
                    cond_value = tuple(raw)
                elif not _is_scalar(raw):
                    self.add(vp, _scalar_message(raw, list_allowed=True))
                else:
                    cond_value = raw
            elif op in STRING_OPERATORS:
                if not isinstance(raw, str):
                    self.add(vp, f"must be a string with {op}, got {_type_name(raw)}")
                elif not raw:
                    self.add(vp, "must not be empty")
                else:
                    cond_value = raw
            elif not _is_number(raw):  # NUMBER_OPERATORS
                got = "a non-finite number" if isinstance(raw, float) else _type_name(raw)
                self.add(vp, f"must be a number with {op}, got {got}")
            else:
                cond_value = raw
        if len(self.problems) != n:
            return None
        return Condition(property=prop, op=op, value=cond_value)


def _scalar_message(value, list_allowed=False) -> str:
    allowed = "a string, number or boolean" + (" (or a list of them)" if list_allowed else "")
    hint = "; use is_set / is_not_set to test for presence" if value is None else ""
    got = "a non-finite number" if isinstance(value, float) else _type_name(value)
    return f"must be {allowed}, got {got}{hint}"


def _check_endpoint(value: str, allow_insecure: bool):
    """Returns ``(problem, normalised)``; only the host is ever quoted (the URL may hold credentials)."""
    bare = value[:-1] if value.endswith("/") else value
    if not allow_insecure and bare in _ALLOWED_ENDPOINT_SET:
        return None, bare
    if not allow_insecure and bare.lower() in _ALLOWED_ENDPOINT_SET:
        return f"must be written in lower case: {bare.lower()}", None
    if any(c.isspace() or ord(c) < 32 for c in value):
        return "must not contain spaces or control characters", None
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:
        return "is not a valid URL; " + _ENDPOINT_FIX, None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an https URL such as https://rest.iad-01.braze.com; " + _ENDPOINT_FIX, None
    if parts.username is not None or parts.password is not None:
        return "must not contain user info (credentials); " + _ENDPOINT_FIX, None
    if parts.query or "?" in value:
        return "must not have a query string; " + _ENDPOINT_FIX, None
    if parts.fragment or "#" in value:
        return "must not have a fragment; " + _ENDPOINT_FIX, None
    if allow_insecure:
        return None, bare
    host = parts.hostname
    if parts.scheme != "https":
        return "must use https; " + _ENDPOINT_FIX, None
    if port is not None:
        return "must not have a port; " + _ENDPOINT_FIX, None
    if parts.path not in ("", "/"):
        return "must not have a path (the job adds /users/track); " + _ENDPOINT_FIX, None
    return f"host {host!r} is not a Braze REST endpoint; " + _ENDPOINT_FIX, None
