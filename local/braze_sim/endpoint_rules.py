"""Pure body checks for the alias, identify, export-by-id and partner cohort endpoints.

Each returns a message for a 400 answer, or None. Braze does not document per-item errors for
these endpoints, so one malformed item fails the whole request: the strict reading.
"""
from __future__ import annotations

from typing import Any, Optional

from local.braze_sim.rules import MAX_EXTERNAL_ID_BYTES, TOO_LARGE_ID, check_alias, parse_time

MAX_ALIASES_PER_REQUEST = 50
MAX_COHORT_IDS_PER_REQUEST = 1000
MAX_EXPORT_IDS_PER_REQUEST = 50  # external_ids, and user_aliases, per /users/export/ids request
# Braze's documented fields_to_export names; the simulator fills the ones it models (see
# endpoints.export_ids) and leaves the others out of each user.
EXPORT_FIELDS = frozenset((
    "apps", "attributed_ad", "attributed_adgroup", "attributed_campaign", "attributed_source", "braze_id",
    "campaigns_received", "canvases_received", "cards_clicked", "country", "created_at", "custom_attributes",
    "custom_events", "devices", "dob", "email", "email_subscribe", "external_id", "first_name", "gender",
    "home_city", "language", "last_coordinates", "last_name", "phone", "purchases", "push_subscribe",
    "push_tokens", "random_bucket", "time_zone", "total_revenue", "uninstalled_at", "user_aliases",
))
_EXPORT_KEYS = frozenset(("external_ids", "user_aliases", "device_id", "braze_id", "email_address", "phone",
                          "fields_to_export"))
_EXPORT_SINGLE = ("device_id", "braze_id", "email_address", "phone")
_CHANGE_KEYS = frozenset(("user_ids", "device_ids", "aliases", "should_remove"))


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def check_alias_new(body: Any) -> Optional[str]:
    items = body.get("user_aliases") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        return "'user_aliases' must be a non-empty array"
    if len(items) > MAX_ALIASES_PER_REQUEST:
        return f"at most {MAX_ALIASES_PER_REQUEST} 'user_aliases' per request"
    for index, item in enumerate(items):
        if not isinstance(item, dict) or check_alias(item):
            return f"user_aliases[{index}] needs 'alias_name' and 'alias_label'"
        if "external_id" in item and not _nonempty_str(item["external_id"]):
            return f"user_aliases[{index}].external_id is not valid"
    return None


def check_identify(body: Any) -> Optional[str]:
    if not isinstance(body, dict):
        return "body must be an object"
    if "emails_to_identify" in body or "phone_numbers_to_identify" in body:
        # Not modelled; refusing beats silently pretending to merge.
        return "the simulator supports only 'aliases_to_identify'"
    items = body.get("aliases_to_identify")
    if not isinstance(items, list) or not items:
        return "'aliases_to_identify' must be a non-empty array"
    if len(items) > MAX_ALIASES_PER_REQUEST:
        return f"at most {MAX_ALIASES_PER_REQUEST} 'aliases_to_identify' per request"
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not _nonempty_str(item.get("external_id")):
            return f"aliases_to_identify[{index}].external_id is required"
        if len(item["external_id"].encode("utf-8")) > MAX_EXTERNAL_ID_BYTES:
            return f"aliases_to_identify[{index}].external_id: {TOO_LARGE_ID}"
        if check_alias(item.get("user_alias")):
            return f"aliases_to_identify[{index}].user_alias needs 'alias_name' and 'alias_label'"
    return None


def check_cohort_name(body: dict) -> Optional[str]:
    """Body of POST /partners/{partner}/cohorts, keys already checked."""
    if not _nonempty_str(body.get("cohort_id")):
        return "'cohort_id' is not valid"
    if not _nonempty_str(body.get("name")):
        return "'name' must not be empty"
    if parse_time(body.get("created_at")) is None:
        return "'created_at' must be an ISO 8601 time"
    return None


def check_cohort_changes(body: dict) -> Optional[str]:
    """Body of POST /partners/{partner}/cohorts/users, keys already checked."""
    if not _nonempty_str(body.get("cohort_id")):
        return "'cohort_id' is not valid"
    changes = body.get("cohort_changes")
    if not isinstance(changes, list) or not changes:
        return "'cohort_changes' must be a non-empty array"
    total = 0
    for index, change in enumerate(changes):
        error = _check_change(change)
        if error:
            return f"cohort_changes[{index}]: {error}"
        total += sum(len(change.get(k, ())) for k in ("user_ids", "device_ids", "aliases"))
    if total > MAX_COHORT_IDS_PER_REQUEST:
        return f"at most {MAX_COHORT_IDS_PER_REQUEST} ids per request, got {total}"
    return None


def _check_change(change: Any) -> Optional[str]:
    if not isinstance(change, dict) or not change.keys() <= _CHANGE_KEYS:
        return "must be an object with user_ids, device_ids, aliases and should_remove only"
    if not any(k in change for k in ("user_ids", "device_ids", "aliases")):
        return "needs 'user_ids', 'device_ids' or 'aliases'"
    for key in ("user_ids", "device_ids"):
        if key in change:
            ids = change[key]
            if not isinstance(ids, list) or not all(_nonempty_str(i) for i in ids):
                return f"'{key}' must be an array of strings"
    if "aliases" in change:
        aliases = change["aliases"]
        if not isinstance(aliases, list) or any(check_alias(a) for a in aliases):
            return "'aliases' must be an array of {alias_name, alias_label}"
    if not isinstance(change.get("should_remove", False), bool):
        return "'should_remove' must be a boolean"
    return None


def check_export_ids(body: Any) -> Optional[str]:
    """Body of POST /users/export/ids. ``fields_to_export`` is required, as for accounts
    onboarded on or after 2024-08-22 (the accounts the job targets); ≤ 50 external_ids and
    ≤ 50 user_aliases; device_id, braze_id, email_address and phone are one string each."""
    if not isinstance(body, dict):
        return "body must be an object"
    unknown = sorted(k for k in body if k not in _EXPORT_KEYS)
    if unknown:
        return f"unknown field(s): {', '.join(unknown)}"
    fields = body.get("fields_to_export")
    if fields is None:
        return "'fields_to_export' is required: list the fields to export"
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        return "'fields_to_export' must be a non-empty array of strings"
    bad = sorted(set(fields) - EXPORT_FIELDS)
    if bad:
        return f"'fields_to_export' has unknown field(s): {', '.join(bad)}"
    if not any(k in body for k in ("external_ids", "user_aliases") + _EXPORT_SINGLE):
        return "provide 'external_ids', 'user_aliases', 'device_id', 'braze_id', 'email_address' or 'phone'"
    if "external_ids" in body:
        ids = body["external_ids"]
        if not isinstance(ids, list) or not all(_nonempty_str(i) for i in ids):
            return "'external_ids' must be an array of strings"
        if len(ids) > MAX_EXPORT_IDS_PER_REQUEST:
            return f"at most {MAX_EXPORT_IDS_PER_REQUEST} 'external_ids' per request"
    if "user_aliases" in body:
        aliases = body["user_aliases"]
        if not isinstance(aliases, list) or any(check_alias(a) for a in aliases):
            return "'user_aliases' must be an array of {alias_name, alias_label}"
        if len(aliases) > MAX_EXPORT_IDS_PER_REQUEST:
            return f"at most {MAX_EXPORT_IDS_PER_REQUEST} 'user_aliases' per request"
    for key in _EXPORT_SINGLE:
        if key in body and not _nonempty_str(body[key]):
            return f"'{key}' must be one string (one {key} per request)"
    return None
