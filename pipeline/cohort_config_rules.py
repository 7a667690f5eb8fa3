"""The cohorts file's rules (``transforms.cohorts.model`` holds the records, and
``pipeline.cohort_config`` says what each field means): the shared validator helpers
(``pipeline.config_validation``) plus what only this file
has. The walk follows the document's order, so the problem list is stable.
"""
from __future__ import annotations

import re

from pipeline.config_validation import Validator, is_number, join_path, type_name
from transforms.cohorts.model import (
    ATTRIBUTE_VALUES, CADENCES, DEFAULT_ATTRIBUTE, DEFAULT_MAX_REMOVED_SHARE, DEFAULT_PARTNER, DEFAULT_TARGET,
    DELIVERY_MODES, MAPPING_TYPES, RECONCILE, REGIONS, SOURCES, AmplitudeSettings, CohortConfig, CohortSync,
    EmailSettings, Target, UserMapping, monthly_downloads,
)

__all__ = ["CohortValidator"]

# Target names may hold spaces ("US Production"); files use them URL-quoted.
_TARGET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}")
_COHORT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_PARTNER_RE = re.compile(r"[a-z0-9_-]{1,64}")
_ATTRIBUTE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_ -]{0,254}")
_FIELD_RE = re.compile(r"[A-Za-z0-9_$][A-Za-z0-9_$.-]{0,127}")
_EMAIL_RE = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_HOST_RE = re.compile(r"[A-Za-z0-9.:_-]{1,253}")
_AMPLITUDE_HOSTS = ("https://amplitude.com", "https://analytics.eu.amplitude.com")

_EXPECTED = "a mapping with 'cohort_syncs'"  # what the document must be, for "empty"/"wrong type" messages
_TOP_KEYS = ("$schema", "targets", "cohort_syncs", "notifications", "amplitude")
_TARGET_KEYS = ("name", "endpoint", "api_key", "delivery", "partner_api_key", "partner", "attribute",
                "attribute_value", "user_mapping", "verify_users", "lookup_api_key")
_LEGACY_KEYS = tuple(k for k in _TARGET_KEYS if k != "name")
_MAPPING_KEYS = ("type", "alias_label", "alias_source")
_SYNC_KEYS = ("name", "cohort_id", "cohort_name", "target", "cadence", "source", "reconcile", "max_removed_share")
_NOTIFY_KEYS = ("email",)
_EMAIL_KEYS = ("smtp_host", "smtp_port", "sender", "recipients", "starttls", "ssl", "username", "password",
               "timeout_seconds")
_AMPLITUDE_KEYS = ("api_key", "secret_key", "region", "monthly_download_budget", "budget_reserve",
                   "max_cohort_size", "endpoint")


class CohortValidator(Validator):
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
        amplitude = self.amplitude(document["amplitude"], "amplitude") if "amplitude" in document else None
        self.sources(syncs, {t.name: t for t in targets}, amplitude, "amplitude" in document)
        return CohortConfig(tuple(targets), tuple(syncs), email, legacy, amplitude)

    def sources(self, syncs, targets, amplitude, has_amplitude):
        """Rules across a sync, its target and the amplitude section (docs/api-facts.md, A6, A7)."""
        for i, sync in enumerate(syncs):
            path = f"cohort_syncs[{i}]"
            target = targets.get(sync.target)
            if sync.source == "feed" and target is not None and target.user_mapping.type == "device_id":
                self.add(join_path(path, "source"),
                         f"target {target.name!r} maps users by device_id, but Amplitude's Pub/Sub cohort feed "
                         "carries only user_id: use source: download for device-id targets")
            if sync.schedule or sync.source == "download":
                if not has_amplitude:
                    self.add(join_path(path, "source"),
                             "downloads from Amplitude need the 'amplitude' section (api_key, secret_key, region)")
        if amplitude is None:
            return
        total, arithmetic = monthly_downloads(syncs)
        allowed = amplitude.monthly_download_budget - amplitude.budget_reserve
        if total > allowed:
            self.add("cohort_syncs",
                     f"the scheduled downloads need {total} a month ({arithmetic}), over Amplitude's budget of "
                     f"{amplitude.monthly_download_budget} less the reserve of {amplitude.budget_reserve} "
                     f"({allowed}): make hourly syncs daily, or move them to source: feed (its changes cost no "
                     "download), or raise amplitude.monthly_download_budget if your plan allows more")

    def amplitude(self, value, path):
        m = self.mapping(value, path, _AMPLITUDE_KEYS, required=("api_key", "secret_key"))
        if m is None:
            return None
        n = len(self.problems)
        api_key = self.reference(m, "api_key", path)
        secret_key = self.reference(m, "secret_key", path)
        region = self.choice(m, "region", path, REGIONS, "us")
        numbers = {}
        for key, default, low in (("monthly_download_budget", 500, 1), ("budget_reserve", 50, 0),
                                  ("max_cohort_size", 2_000_000, 1)):
            number = m.get(key, default)
            if isinstance(number, bool) or not isinstance(number, int) or number < low:
                self.add(join_path(path, key), f"must be a whole number >= {low}, got {type_name(number)}")
            numbers[key] = number
        if isinstance(numbers["budget_reserve"], int) and isinstance(numbers["monthly_download_budget"], int) \
                and numbers["budget_reserve"] >= numbers["monthly_download_budget"]:
            self.add(join_path(path, "budget_reserve"), "must be less than monthly_download_budget")
        endpoint = None
        if "endpoint" in m:
            endpoint = m["endpoint"]
            if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
                self.add(join_path(path, "endpoint"), "must be an http(s) URL")
            elif not self.allow_insecure and endpoint.rstrip("/") not in _AMPLITUDE_HOSTS:
                self.add(join_path(path, "endpoint"),
                         f"must be one of {', '.join(_AMPLITUDE_HOSTS)} (set region instead); another host "
                         "only with --allow_insecure_endpoints (the local stand-in)")
            else:
                endpoint = endpoint.rstrip("/")
        if len(self.problems) != n:
            return None
        return AmplitudeSettings(api_key=api_key, secret_key=secret_key, region=region,
                                 monthly_download_budget=numbers["monthly_download_budget"],
                                 budget_reserve=numbers["budget_reserve"],
                                 max_cohort_size=numbers["max_cohort_size"], endpoint=endpoint)

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
            source, reconcile, share = self.sync_source(m, path, cadence)
            self.unique_name(names, name, path)
            if cohort_id is not None and target is not None:
                pair = (cohort_id, target)
                if pair in pairs:
                    self.add(path, f"cohort {cohort_id!r} already goes to target {target!r} in {pairs[pair]} "
                                   "(one sync per cohort and target)")
                pairs.setdefault(pair, path)
            if len(self.problems) == n and None not in (name, cohort_id, cohort_name, target, cadence, source):
                out.append(CohortSync(name, cohort_id, cohort_name, target, cadence, source, reconcile, share))
        return out

    def sync_source(self, m, path, cadence):
        """``(source, reconcile, max_removed_share)``; see ``pipeline.cohort_config``."""
        default = "feed" if cadence == "real_time" else "snapshot"
        source = self.choice(m, "source", path, SOURCES, default)
        reconcile = self.choice(m, "reconcile", path, RECONCILE, "none")
        if source == "feed" and cadence == "one_time":
            self.add(join_path(path, "cadence"), "a feed sync's cadence is the one chosen in Amplitude: "
                                                 "real_time, hourly or daily")
        if source in ("download", "snapshot") and cadence == "real_time":
            self.add(join_path(path, "cadence"), f"real_time needs source: feed (a {source} is a whole membership "
                                                 "at one time; real-time changes come from the Pub/Sub feed)")
        if "reconcile" in m and source != "feed":
            self.add(join_path(path, "reconcile"), "only for source: feed (download syncs run at their cadence)")
        share = m.get("max_removed_share", DEFAULT_MAX_REMOVED_SHARE)
        if not is_number(share) or not 0 < share <= 1:
            self.add(join_path(path, "max_removed_share"),
                     f"must be a number > 0 and <= 1 (a share of the members), got {type_name(share)}")
        return source, reconcile, float(share) if is_number(share) else DEFAULT_MAX_REMOVED_SHARE

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
        use_ssl = self.boolean(m, "ssl", path, False)
        username = self.string(m, "username", path)
        password = self.reference(m, "password", path)
        if ("password" in m) != ("username" in m):
            self.add(path, "username and password go together (SMTP login)")
        if starttls and use_ssl:
            self.add(join_path(path, "ssl"), "starttls and ssl exclude each other (ssl: TLS from the start, "
                                             "usually port 465; starttls: upgrade, usually port 587)")
        if "password" in m and not (starttls or use_ssl):
            self.add(join_path(path, "password"), "an SMTP password is only sent over TLS: set starttls: true "
                                                  "(port 587) or ssl: true (port 465)")
        timeout = m.get("timeout_seconds", 10.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
            self.add(join_path(path, "timeout_seconds"), "must be a number of seconds, > 0 and <= 300")
        if len(self.problems) != n:
            return None
        return EmailSettings(smtp_host=host, sender=sender, recipients=recipients, smtp_port=port,
                             starttls=starttls, username=username, password=password,
                             timeout_seconds=float(timeout), ssl=use_ssl)
