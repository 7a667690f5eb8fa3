"""The syncs file: what each sync sends to which Braze workspace.

Loaded and validated once, when the pipeline is built, so a mistake fails the launch with
every problem listed, not a worker at 3 a.m. The JSON Schema for editors is
``pipeline/syncs.schema.json`` (kept in agreement by ``tests/test_config.py``; the one rule it
cannot express is that sync names are unique).

- ``load_syncs(path_or_uri)``: a local path or ``gs://`` URI, YAML or JSON.
- ``loads_syncs(text)`` / ``parse_syncs(document)``: the same from text or a parsed document.
- ``enabled_syncs(syncs)``: the syncs whose status is enabled; ``shadow_syncs(syncs)``: those of
  them in shadow mode; ``require_enabled_syncs(syncs, source)``: the enabled ones, or the
  ``ConfigError`` every entry point gives for a file that enables none.

Defaults: ``enabled`` true; ``mode`` live (``shadow``: the job builds the sync's requests and
publishes them to ``--shadow_topic`` instead of sending them); identifier ``external_id`` from
``user_id``; a ``users`` or ``events`` section that is absent is disabled, one that is present
is enabled unless it says ``enabled: false``; no properties or mappings listed means none are
sent; no ``identifier.anonymous``, so events without the identifier's value are skipped.

Mappings (``users.mappings``, ``events.mappings``: ``{from, to}``) and plain ``properties``
follow the rules in ``pipeline.config_mappings``: a dotted Amplitude path to a Braze name
that is not an identifier or control field, one source per Braze name.

Secrets: ``api_key`` is only ever a reference, and no message here quotes it (nor the
endpoint URL, which could carry credentials; only its host is quoted).

This module holds the syncs file's public API and its own rules; the model it builds
(``Sync`` and its parts) is ``transforms.model``, which the transforms import, and every model
name stays importable from here. The rules for ``events.select`` conditions and for mappings
are beside it (``pipeline.config_conditions``, ``pipeline.config_mappings``). What it shares
with the cohorts file lives beside it too: reading and decoding (``pipeline.config_documents``),
the validator helpers and ``ConfigError`` (``pipeline.config_validation``), and the Braze
endpoint allow-list (``pipeline.braze_endpoints``). ``ALLOWED_ENDPOINTS``, ``ConfigError``, ``decode_document``,
``Condition``, ``EventSelector``, ``OPERATORS`` and ``FieldMapping`` stay importable from here.
"""
from __future__ import annotations

from typing import Optional, Tuple

# ALLOWED_ENDPOINTS, ConfigError and decode_document are re-exported (see the docstring);
# _ENDPOINT_FIX too, for tests/test_config.py.
from pipeline.braze_endpoints import ALLOWED_ENDPOINTS, ENDPOINT_FIX as _ENDPOINT_FIX  # noqa: F401
from pipeline.config_documents import decode_document, format_for_name, read_bytes
# The filter and mapping rules live beside this module; their models and constants are
# re-exported here (Condition, EventSelector, OPERATORS, FieldMapping), with the key lists the
# schema test compares (_SELECTOR_KEYS, _CONDITION_KEYS).
from pipeline.config_conditions import CONDITION_KEYS as _CONDITION_KEYS  # noqa: F401
from pipeline.config_conditions import SELECTOR_KEYS as _SELECTOR_KEYS  # noqa: F401
from pipeline.config_conditions import SelectRules
from pipeline.config_mappings import MappingRules, attribute_name_problem, event_property_name_problem
from pipeline.config_validation import (
    DOTTED_PATH_RE, DOTTED_PATH_TEXT, ConfigError, Validator, choice_hint, join_path, type_name,
)
# The model is a leaf module of transforms/ (the transforms read it and never import pipeline/);
# every name stays importable from here.
from transforms.model import (  # noqa: F401
    ANONYMOUS_TYPES, IDENTIFIER_TYPES, LIVE, MODES, OPERATORS, SHADOW, AnonymousIdentifier, Condition,
    EventSelector, EventSettings, FieldMapping, Identifier, Sync, UserSettings, enabled_syncs, shadow_syncs,
)

__all__ = [
    "ALLOWED_ENDPOINTS", "ANONYMOUS_TYPES", "AnonymousIdentifier", "Condition", "ConfigError", "EventSelector",
    "EventSettings", "FieldMapping", "IDENTIFIER_TYPES", "Identifier", "LIVE", "MODES", "OPERATORS", "SHADOW", "Sync",
    "UserSettings", "enabled_syncs", "load_syncs", "loads_syncs", "parse_syncs", "require_enabled_syncs",
    "shadow_syncs",
]


_TOP_KEYS = ("$schema", "syncs")  # "$schema" lets JSON editors find syncs.schema.json
_SYNC_KEYS = ("name", "enabled", "mode", "endpoint", "api_key", "app_id", "identifier", "users", "events")
_IDENTIFIER_KEYS = ("type", "source", "alias_label", "anonymous")
_ANONYMOUS_KEYS = ("type", "source", "alias_label")
_USERS_KEYS = ("enabled", "properties", "mappings", "update_existing_only")
_EVENTS_KEYS = ("enabled", "select", "properties", "mappings", "purchases")
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


NO_ENABLED_SYNC = "syncs: no sync is enabled; set 'enabled: true' on at least one"


def require_enabled_syncs(syncs, source: str) -> Tuple[Sync, ...]:
    """The enabled syncs, or ``ConfigError`` naming ``source`` when there are none: the rule every
    entry point applies (the streaming job, the preview, the checker), defined once."""
    enabled = enabled_syncs(syncs)
    if not enabled:
        raise ConfigError(source, [NO_ENABLED_SYNC])
    return enabled


# --------------------------------------------------------------------------------------------
# Validation (the helpers shared with the cohorts file are in pipeline.config_validation)


def _parse(document, source, allow_insecure_endpoints, problems) -> Tuple[Sync, ...]:
    v = _SyncsValidator(list(problems), allow_insecure_endpoints)
    return v.checked(source, v.document(document))


class _SyncsValidator(SelectRules, MappingRules, Validator):
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
        mode = self.choice(m, "mode", path, MODES, LIVE)
        endpoint = self.endpoint(m, path)
        api_key = self.reference(m, "api_key", path)  # "required" is reported by mapping()
        app_id = self.string(m, "app_id", path)
        identifier = self.identifier(m, path)
        users = self.users(m, path)
        events = self.events(m, path)
        if identifier and identifier.anonymous and users and users.update_existing_only:
            self.add(join_path(path, "identifier.anonymous"), "not allowed with users.update_existing_only: true "
                     "(Braze would never create the alias profiles anonymous events go to)")
            return None
        if None in (name, mode, endpoint, api_key, identifier, users, events) or ("app_id" in m and app_id is None):
            return None
        return Sync(name=name, endpoint=endpoint, api_key=api_key, enabled=enabled, app_id=app_id,
                    identifier=identifier, users=users, events=events, mode=mode)

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
                self.add(join_path(p, "type"),
                         f"unknown identifier type {id_type!r} ({choice_hint(id_type, IDENTIFIER_TYPES)})")
                id_type, ok = None, False
        source = "user_id"
        if "source" in im:
            source = self.string(im, "source", p, pattern=DOTTED_PATH_RE, pattern_text=DOTTED_PATH_TEXT)
            ok = ok and source is not None
        alias_label = None
        if id_type == "user_alias":
            alias_label = self.alias_label(im, p)
            ok = ok and alias_label is not None
        elif id_type is not None and self.only_for_alias(im, p, id_type, ("alias_label",)):
            ok = False
        anonymous = None
        if "anonymous" in im:
            anonymous = self.anonymous(im["anonymous"], join_path(p, "anonymous"), id_type, source)
            ok = ok and anonymous is not None
        return Identifier(type=id_type, source=source, alias_label=alias_label, anonymous=anonymous) if ok else None

    def anonymous(self, value, path, id_type, main_source):
        am = self.mapping(value, path, _ANONYMOUS_KEYS, required=("alias_label",))
        if am is None:
            return None
        n = len(self.problems)
        if id_type is not None and id_type != "external_id":
            self.add(path, f"only allowed when type is external_id (type is {id_type!r}): Braze's "
                           "/users/identify merges an alias profile into an external_id profile")
        anon_type = am.get("type", "user_alias")
        if not isinstance(anon_type, str):
            self.add(join_path(path, "type"), f"must be a string, got {type_name(anon_type)}")
        elif anon_type not in ANONYMOUS_TYPES:
            self.add(join_path(path, "type"), f"unknown anonymous identifier type {anon_type!r} "
                                              f"({choice_hint(anon_type, ANONYMOUS_TYPES)})")
        source = "device_id"
        if "source" in am:
            source = self.string(am, "source", path, pattern=DOTTED_PATH_RE, pattern_text=DOTTED_PATH_TEXT)
        if source is not None and source == main_source:
            self.add(join_path(path, "source"), f"must differ from identifier.source ({main_source!r})")
        alias_label = self.string(am, "alias_label", path)
        if len(self.problems) != n or source is None or alias_label is None:
            return None
        return AnonymousIdentifier(type=anon_type, source=source, alias_label=alias_label)

    def users(self, m, path):
        if "users" not in m:
            return UserSettings()
        p = join_path(path, "users")
        um = self.mapping(m["users"], p, _USERS_KEYS)
        if um is None:
            return None
        n = len(self.problems)
        enabled = self.boolean(um, "enabled", p, True)
        properties = self.string_list(um, "properties", p)
        taken = self.attribute_names(um, p)
        mappings = self.field_mappings(um, p, taken, lambda name: attribute_name_problem(name, mapped=True))
        settings = UserSettings(
            enabled=enabled,
            properties=properties,
            update_existing_only=self.boolean(um, "update_existing_only", p, False),
            mappings=mappings,
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
        taken = self.event_property_names(em, p)
        mappings = self.field_mappings(em, p, taken, lambda name: event_property_name_problem(name, purchases))
        if len(self.problems) != n:
            return None
        return EventSettings(enabled=enabled, select=select, properties=properties, purchases=purchases,
                             mappings=mappings)
