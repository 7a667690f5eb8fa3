"""The cohorts file: named Braze targets, the cohort syncs that use them, and notifications.

Loaded and validated once, when the job is built, to the same standard as the syncs file
(``pipeline.config``): every problem at once, each ``path: what is wrong``, raised as
``ConfigError``; keys are references (``env:NAME`` / Secret Manager), never values, and never
quoted; endpoints limited to the Braze REST hosts unless ``allow_insecure_endpoints``.
The JSON Schema for editors is ``pipeline/cohorts.schema.json`` (kept in agreement by
``tests/test_cohort_config.py``; what it cannot express, the loader checks: unique names,
that a sync's target exists, field combinations that depend on the delivery mode).

Two forms (seed ``braze-cohort-sync.md``, "Set up multiple API key targets"):

* ``targets:`` a list of named targets; each cohort sync names one with ``target``.
* Backward compatibility: no ``targets`` list, the target's keys (``endpoint``, ``api_key``,
  ...) at the top of the document. That single target is read as the target ``"Default"``, and
  syncs may leave ``target`` out (or say ``Default``).

A target: ``endpoint``, ``api_key`` (a reference), ``delivery`` and ``user_mapping``.

* ``delivery: partner`` (the default): Braze's partner cohort-import endpoints
  (braze-api.md §5). ``api_key`` is the customer's *Data Import Key* (sent as
  ``client_secret``), ``partner_api_key`` (required) the key Braze issued to the partner, and
  ``partner`` the path segment of ``/partners/<partner>/cohorts`` (default ``amplitude``; the
  reference marks Amplitude's exact path **unconfirmed**, so it is a setting).
* ``delivery: attribute``: membership as an array custom attribute through ``/users/track``
  (for teams without a partner key). ``api_key`` is a REST API key with ``users.track``;
  ``attribute`` names the array (default ``amplitude_cohorts``); ``attribute_value`` says what
  goes in it: ``label`` (default) is ``"[Amplitude] <cohort name>: <cohort id>"``, the form in
  which Braze shows Amplitude cohorts (amplitude.md §4.2), ``cohort_id`` the bare id.
  ``/users/track`` cannot address a user by device id, so ``device_id`` mapping needs
  ``partner`` delivery.

``verify_users`` (default true): look users up through ``/users/export/ids`` before sending
and report those Braze does not know as skipped, ``unknown_to_braze`` (``transforms.cohorts.lookup``).
It needs a REST API key with ``users.export.ids``, ``lookup_api_key`` (a reference); attribute
delivery falls back to ``api_key``. Partner keys cannot call it, so a partner target must give
``lookup_api_key`` or say ``verify_users: false``: leaving both out is a config error, not a
silent change of what "sent" means. With ``false`` every change is sent unchecked (the report
says so), and a ``lookup_api_key`` next to it is refused as unused.

``user_mapping.type``: ``user_id`` (→ external_id), ``device_id`` (→ device id) or
``user_alias`` (``alias_label`` required; ``alias_source`` is the Amplitude field giving the
alias name, default ``user_id``).

A cohort sync: ``name``, ``cohort_id``, ``cohort_name``, ``target``, ``cadence``
(``one_time``, ``hourly``, ``daily`` or ``real_time``). Two syncs may not send the same
cohort to the same target (they would share one "last successful membership").

``notifications.email``: ``smtp_host``, ``smtp_port`` (default 25), ``sender``,
``recipients``, ``starttls`` (default false), ``username`` and ``password`` (a reference),
``timeout_seconds`` (default 10).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional, Tuple

from pipeline.config_documents import decode_document, format_for_name, read_bytes
from pipeline.config_validation import ConfigError, Validator, join_path, type_name

__all__ = [
    "CADENCES", "DEFAULT_TARGET", "DELIVERY_MODES", "MAPPING_TYPES", "CohortConfig", "CohortSync",
    "ConfigError", "EmailSettings", "Target", "UserMapping", "load_cohorts", "loads_cohorts",
    "parse_cohorts",
]

DEFAULT_TARGET = "Default"
CADENCES = ("one_time", "hourly", "daily", "real_time")
DELIVERY_MODES = ("partner", "attribute")
MAPPING_TYPES = ("user_id", "device_id", "user_alias")
ATTRIBUTE_VALUES = ("label", "cohort_id")
DEFAULT_PARTNER = "amplitude"
DEFAULT_ATTRIBUTE = "amplitude_cohorts"

# Target names may hold spaces ("US Production", as in the seed); files use them URL-quoted.
_TARGET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}")
_COHORT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_PARTNER_RE = re.compile(r"[a-z0-9_-]{1,64}")
_ATTRIBUTE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_ -]{0,254}")
_FIELD_RE = re.compile(r"[A-Za-z0-9_$][A-Za-z0-9_$.-]{0,127}")
_EMAIL_RE = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_HOST_RE = re.compile(r"[A-Za-z0-9.:_-]{1,253}")

_EXPECTED = "a mapping with 'cohort_syncs'"  # what the document must be, for "empty"/"wrong type" messages
_TOP_KEYS = ("$schema", "targets", "cohort_syncs", "notifications")
_TARGET_KEYS = ("name", "endpoint", "api_key", "delivery", "partner_api_key", "partner", "attribute",
                "attribute_value", "user_mapping", "verify_users", "lookup_api_key")
_LEGACY_KEYS = tuple(k for k in _TARGET_KEYS if k != "name")
_MAPPING_KEYS = ("type", "alias_label", "alias_source")
_SYNC_KEYS = ("name", "cohort_id", "cohort_name", "target", "cadence")
_NOTIFY_KEYS = ("email",)
_EMAIL_KEYS = ("smtp_host", "smtp_port", "sender", "recipients", "starttls", "username", "password",
               "timeout_seconds")


@dataclasses.dataclass(frozen=True)
class UserMapping:
    type: str = "user_id"  # one of MAPPING_TYPES
    alias_label: Optional[str] = None  # user_alias only
    alias_source: str = "user_id"  # user_alias only: the Amplitude field holding the alias name

    @property
    def source(self) -> str:
        """The Amplitude field whose value identifies the user in Braze."""
        return {"user_id": "user_id", "device_id": "device_id"}.get(self.type, self.alias_source)


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    endpoint: str
    api_key: str  # reference; partner: the Data Import Key (client_secret); attribute: REST key
    delivery: str = "partner"
    user_mapping: UserMapping = UserMapping()
    partner_api_key: Optional[str] = None  # reference; partner delivery only
    partner: str = DEFAULT_PARTNER
    attribute: str = DEFAULT_ATTRIBUTE
    attribute_value: str = "label"
    verify_users: bool = True  # check users exist (/users/export/ids) before sending
    lookup_api_key: Optional[str] = None  # reference; REST key with users.export.ids (partner: required to verify)

    def identity(self) -> dict:
        """What makes this target the same Braze account and key, whatever its name (no secrets:
        only references)."""
        return {"endpoint": self.endpoint, "delivery": self.delivery, "api_key": self.api_key,
                "partner_api_key": self.partner_api_key,
                "partner": self.partner if self.delivery == "partner" else None}


@dataclasses.dataclass(frozen=True)
class CohortSync:
    name: str
    cohort_id: str
    cohort_name: str
    target: str
    cadence: str  # one of CADENCES


@dataclasses.dataclass(frozen=True)
class EmailSettings:
    smtp_host: str
    sender: str
    recipients: Tuple[str, ...]
    smtp_port: int = 25
    starttls: bool = False
    username: Optional[str] = None
    password: Optional[str] = None  # reference
    timeout_seconds: float = 10.0


@dataclasses.dataclass(frozen=True)
class CohortConfig:
    targets: Tuple[Target, ...]
    syncs: Tuple[CohortSync, ...]
    email: Optional[EmailSettings] = None
    legacy: bool = False  # read from the single-key form as the target "Default"

    def target(self, name: str) -> Target:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    def sync(self, name: str) -> CohortSync:
        for s in self.syncs:
            if s.name == name:
                return s
        raise KeyError(name)


# --------------------------------------------------------------------------------------------
# Loading


def load_cohorts(path_or_uri: str, *, allow_insecure_endpoints: bool = False) -> CohortConfig:
    """Read and validate a cohorts file: a local path or ``gs://`` URI, YAML or JSON."""
    source = str(path_or_uri)
    data = read_bytes(source)
    return loads_cohorts(data, source=source, format=format_for_name(source),
                         allow_insecure_endpoints=allow_insecure_endpoints)


def loads_cohorts(text, *, source: str = "<cohorts>", format: Optional[str] = None,
                  allow_insecure_endpoints: bool = False) -> CohortConfig:
    document, duplicates = decode_document(text, source, format, _EXPECTED)
    return _parse(document, source, allow_insecure_endpoints, duplicates)


def parse_cohorts(document, *, source: str = "<cohorts>", allow_insecure_endpoints: bool = False) -> CohortConfig:
    """Validate an already-parsed cohorts document; ``ConfigError`` lists every problem."""
    return _parse(document, source, allow_insecure_endpoints, [])


def _parse(document, source, allow_insecure, problems) -> CohortConfig:
    v = _CohortValidator(list(problems), allow_insecure)
    return v.checked(source, v.document(document))


class _CohortValidator(Validator):
    """The shared validator helpers (``pipeline.config_validation``: mapping, string, boolean,
    reference, endpoint...) plus the cohorts file's own rules."""

    def choice(self, m, key, path, choices, default):
        if key not in m:
            return default
        value = m[key]
        if not isinstance(value, str) or value not in choices:
            shown = repr(value) if isinstance(value, str) else type_name(value)
            self.add(join_path(path, key), f"must be one of: {', '.join(choices)} (got {shown})")
            return None
        return value

    def document(self, document):
        if not self.root_mapping(document, _EXPECTED):
            return CohortConfig((), ())
        legacy_keys = [k for k in document if k in _LEGACY_KEYS]
        legacy = "targets" not in document and bool(legacy_keys)
        # Target keys next to 'targets' get their own message below, not "unknown key".
        self.mapping(document, "", _TOP_KEYS + (_LEGACY_KEYS if legacy_keys else ()), required=("cohort_syncs",))
        self.schema_key(document)
        targets = []
        if "targets" in document:
            for k in legacy_keys:
                self.add(k, "not allowed next to 'targets' (put it in a target, or drop 'targets' "
                            "to use the single-key form read as the target 'Default')")
            targets = self.targets(document["targets"])
        elif legacy:
            t = self.target(document, "", legacy=True)
            targets = [t] if t is not None else []
        else:
            self.add("targets", "required: a list of named targets (or the single-key form: endpoint, "
                                "api_key, ... at the top, read as the target 'Default')")
        names = {t.name for t in targets}
        if "targets" in document and isinstance(document["targets"], list):
            # Names of targets that have other problems still count: a sync naming one is fine.
            names |= {t.get("name") for t in document["targets"] if isinstance(t, dict)
                      and isinstance(t.get("name"), str)}
        syncs = self.syncs(document.get("cohort_syncs"), names, legacy, "cohort_syncs" in document)
        email = None
        if "notifications" in document:
            nm = self.mapping(document["notifications"], "notifications", _NOTIFY_KEYS)
            if nm is not None and "email" in nm:
                email = self.email(nm["email"], "notifications.email")
        return CohortConfig(tuple(targets), tuple(syncs), email, legacy)

    def targets(self, items):
        if not isinstance(items, list):
            self.add("targets", f"must be a list of targets, got {type_name(items)}")
            return []
        if not items:
            self.add("targets", "at least one target is required")
            return []
        out, names, identities = [], {}, {}
        for i, item in enumerate(items):
            path = f"targets[{i}]"
            name = item.get("name") if isinstance(item, dict) else None
            # Checked on the raw name, before the target's other checks, as the problem order has it.
            self.unique_name(names, name if isinstance(name, str) else None, path)
            t = self.target(item, path)
            if t is None or names.get(t.name) != path:
                continue
            key = tuple(sorted((k, str(v)) for k, v in t.identity().items()))
            if key in identities:
                self.add(path, f"same endpoint, delivery and keys as {identities[key]}: one Braze "
                               "account and key is one target (give each sync that target)")
                continue
            identities[key] = path
            out.append(t)
        return out

    def target(self, value, path, legacy=False):
        if legacy:  # the document itself; its keys were checked by document()
            m = value
            for key in ("endpoint", "api_key"):
                if key not in m:
                    self.add(key, "required (single-key form, read as the target 'Default')")
        else:
            m = self.mapping(value, path, _TARGET_KEYS, required=("name", "endpoint", "api_key"))
            if m is None:
                return None
        n = len(self.problems)
        name = DEFAULT_TARGET if legacy else self.string(
            m, "name", path, pattern=_TARGET_NAME_RE,
            pattern_text="must be 1-64 characters: letters, digits, spaces, '.', '-' or '_', "
                         "starting with a letter or digit")
        endpoint = self.endpoint(m, path)
        api_key = self.reference(m, "api_key", path)
        delivery = self.choice(m, "delivery", path, DELIVERY_MODES, "partner")
        mapping = self.user_mapping(m, path, delivery)
        partner_api_key, partner = None, DEFAULT_PARTNER
        attribute, attribute_value = DEFAULT_ATTRIBUTE, "label"
        if delivery == "partner":
            partner_api_key = self.reference(m, "partner_api_key", path, required=True)
            if "partner" in m:
                partner = self.string(m, "partner", path, pattern=_PARTNER_RE,
                                      pattern_text="must be 1-64 lower-case letters, digits, '-' or '_' "
                                                   "(the <partner> in /partners/<partner>/cohorts)")
            for k in ("attribute", "attribute_value"):
                if k in m:
                    self.add(join_path(path, k), "only allowed with delivery: attribute")
        elif delivery == "attribute":
            if "attribute" in m:
                attribute = self.string(m, "attribute", path, pattern=_ATTRIBUTE_RE,
                                        pattern_text="must be a custom attribute name: 1-255 letters, digits, "
                                                     "'_', '-' or spaces, not starting with '$'")
            attribute_value = self.choice(m, "attribute_value", path, ATTRIBUTE_VALUES, "label")
            for k in ("partner_api_key", "partner"):
                if k in m:
                    self.add(join_path(path, k), "only allowed with delivery: partner")
        verify_users, lookup_api_key = self.user_check(m, path, delivery)
        if len(self.problems) != n:
            return None
        return Target(name=name, endpoint=endpoint, api_key=api_key, delivery=delivery, user_mapping=mapping,
                      partner_api_key=partner_api_key, partner=partner, attribute=attribute,
                      attribute_value=attribute_value, verify_users=verify_users, lookup_api_key=lookup_api_key)

    def user_check(self, m, path, delivery):
        """``(verify_users, lookup_api_key)``; see the module docstring for the rules."""
        verify = self.boolean(m, "verify_users", path, True)
        key = self.reference(m, "lookup_api_key", path)
        if "verify_users" in m and m["verify_users"] is False and "lookup_api_key" in m:
            self.add(join_path(path, "lookup_api_key"), "not used with verify_users: false (remove it, or remove "
                                                       "verify_users: false to check that users exist)")
        elif verify and delivery == "partner" and "lookup_api_key" not in m:
            self.add(join_path(path, "lookup_api_key"),
                     "required with delivery: partner to check that users exist in Braze before sending (a "
                     "reference to a REST API key with users.export.ids); or set verify_users: false to send "
                     "without checking (users unknown to Braze are then reported as sent)")
        return verify, key

    def user_mapping(self, m, path, delivery):
        if "user_mapping" not in m:
            return UserMapping()
        p = join_path(path, "user_mapping")
        um = self.mapping(m["user_mapping"], p, _MAPPING_KEYS)
        if um is None:
            return None
        n = len(self.problems)
        kind = self.choice(um, "type", p, MAPPING_TYPES, "user_id")
        label, source = None, "user_id"
        if kind == "user_alias":
            label = self.alias_label(um, p)
            if "alias_source" in um:
                source = self.string(um, "alias_source", p, pattern=_FIELD_RE,
                                     pattern_text="must be an Amplitude field name (a snapshot column)")
        elif kind is not None:
            self.only_for_alias(um, p, kind, ("alias_label", "alias_source"))
        if kind == "device_id" and delivery == "attribute":
            self.add(join_path(p, "type"), "device_id needs delivery: partner (/users/track cannot address a "
                                           "user by device id)")
        if len(self.problems) != n:
            return None
        return UserMapping(type=kind, alias_label=label, alias_source=source)

    def syncs(self, items, target_names, legacy, present):
        if not present:
            return []
        if not isinstance(items, list):
            self.add("cohort_syncs", f"must be a list of cohort syncs, got {type_name(items)}")
            return []
        if not items:
            self.add("cohort_syncs", "at least one cohort sync is required")
            return []
        out, names, pairs = [], {}, {}
        for i, item in enumerate(items):
            path = f"cohort_syncs[{i}]"
            m = self.mapping(item, path, _SYNC_KEYS,
                             required=("name", "cohort_id", "cohort_name", "cadence") + (() if legacy else ("target",)))
            if m is None:
                continue
            n = len(self.problems)
            name = self.sync_name(m, path)
            cohort_id = self.string(m, "cohort_id", path, pattern=_COHORT_ID_RE,
                                    pattern_text="must be 1-128 letters, digits, '-' or '_' (Amplitude's cohort id)")
            cohort_name = self.string(m, "cohort_name", path)
            if cohort_name is not None and len(cohort_name) > 255:
                self.add(join_path(path, "cohort_name"), "must be at most 255 characters")
            target = DEFAULT_TARGET if legacy and "target" not in m else self.string(m, "target", path)
            if target is not None and target not in target_names and target_names:
                known = ", ".join(repr(t) for t in sorted(target_names))
                self.add(join_path(path, "target"), f"unknown target {target!r} (targets: {known})")
            cadence = self.choice(m, "cadence", path, CADENCES, None) if "cadence" in m else None
            self.unique_name(names, name, path)
            if cohort_id is not None and target is not None:
                pair = (cohort_id, target)
                if pair in pairs:
                    self.add(path, f"cohort {cohort_id!r} already goes to target {target!r} in {pairs[pair]} "
                                   "(one sync per cohort and target)")
                pairs.setdefault(pair, path)
            if len(self.problems) == n and None not in (name, cohort_id, cohort_name, target, cadence):
                out.append(CohortSync(name, cohort_id, cohort_name, target, cadence))
        return out

    def email(self, value, path):
        m = self.mapping(value, path, _EMAIL_KEYS, required=("smtp_host", "sender", "recipients"))
        if m is None:
            return None
        n = len(self.problems)
        host = self.string(m, "smtp_host", path, pattern=_HOST_RE, pattern_text="must be a host name or address")
        port = m.get("smtp_port", 25)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            self.add(join_path(path, "smtp_port"), f"must be a port number 1-65535, got {type_name(port)}")
        sender = self.string(m, "sender", path, pattern=_EMAIL_RE, pattern_text="must be an email address")
        recipients = self.string_list(m, "recipients", path)
        if "recipients" in m and isinstance(m["recipients"], list):
            if not m["recipients"]:
                self.add(join_path(path, "recipients"), "at least one recipient is required")
            for i, r in enumerate(recipients):
                if not _EMAIL_RE.fullmatch(r):
                    self.add(f"{join_path(path, 'recipients')}[{i}]", "must be an email address")
        starttls = self.boolean(m, "starttls", path, False)
        username = self.string(m, "username", path)
        password = self.reference(m, "password", path)
        if ("password" in m) != ("username" in m):
            self.add(path, "username and password go together (SMTP login)")
        timeout = m.get("timeout_seconds", 10.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
            self.add(join_path(path, "timeout_seconds"), "must be a number of seconds, > 0 and <= 300")
        if len(self.problems) != n:
            return None
        return EmailSettings(smtp_host=host, sender=sender, recipients=recipients, smtp_port=port,
                             starttls=starttls, username=username, password=password,
                             timeout_seconds=float(timeout))
