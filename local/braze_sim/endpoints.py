"""What each Braze endpoint answers to a parsed body, apart from HTTP plumbing and faults.

Every function returns ``(status, payload)``. Checks that need no state run before the
store lock is taken; applying takes it once, so one request is applied as a whole.
"""
from __future__ import annotations

from typing import Any, Tuple

from local.braze_sim import endpoint_rules, rules
from local.braze_sim.state import Store

ARRAYS = ("attributes", "events", "purchases")
VALID_DATA = "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."
MAX_INPUT = "Max Input Length Exceeded"
_ARRAY_ORDER = {name: i for i, name in enumerate(ARRAYS)}


def users_track(store: Store, body: Any, limit_mode: str, received_at: float) -> Tuple[int, dict]:
    if not isinstance(body, dict):
        return 400, {"message": VALID_DATA}
    for name in ARRAYS:
        if name in body and not isinstance(body[name], list):
            return 400, {"message": f"'{name}' must be an array"}
    if rules.over_object_limit(rules.count_objects(body), limit_mode):
        return 400, {"message": MAX_INPUT}
    errors, valid = [], []
    sent = [name for name in ARRAYS if name in body]
    for name in sent:  # attributes, then events, then purchases, as Braze processes them
        check = rules.CHECKS[name]
        for index, obj in enumerate(body[name]):
            error = check(obj) if isinstance(obj, dict) else f"'{name}' items must be objects"
            if error:
                errors.append((name, index, error))
            else:
                valid.append((name, index, obj))
    with store.lock:
        store.counters["objects_rejected"] += len(errors)
        late_errors = store.apply_track(valid, received_at) if valid else []
    processed = {name: 0 for name in sent}
    for name, _, _ in valid:
        processed[name] += 1
    for name, _, _ in late_errors:
        processed[name] -= 1
    errors = sorted(errors + late_errors, key=lambda e: (_ARRAY_ORDER[e[0]], e[1]))
    error_json = [{"type": error, "input_array": name, "index": index} for name, index, error in errors]
    if not any(processed.values()):
        payload = {"message": VALID_DATA}
        if error_json:
            payload["errors"] = error_json
        return 400, payload
    payload = {"message": "success"}
    for name in sent:
        payload[f"{name}_processed"] = processed[name]
    if error_json:
        payload["errors"] = error_json
    return 201, payload


def alias_new(store: Store, body: Any) -> Tuple[int, dict]:
    error = endpoint_rules.check_alias_new(body)
    if error:
        return 400, {"message": error}
    with store.lock:
        for item in body["user_aliases"]:
            store.add_alias(item)
    return 201, {"aliases_processed": len(body["user_aliases"]), "message": "success"}


def identify(store: Store, body: Any) -> Tuple[int, dict]:
    error = endpoint_rules.check_identify(body)
    if error:
        return 400, {"message": error}
    with store.lock:
        for item in body["aliases_to_identify"]:
            store.identify(item)
    return 201, {"aliases_processed": len(body["aliases_to_identify"]), "message": "success"}


def export_ids(store: Store, body: Any) -> Tuple[int, dict]:
    """POST /users/export/ids: the profiles the identifiers name, with the requested fields the
    simulator models (braze_id, external_id, user_aliases, devices, email, phone,
    custom_attributes); fields a profile lacks are left out. ``invalid_user_ids`` lists the
    external_ids and braze_id that matched nobody (present only when some did not)."""
    error = endpoint_rules.check_export_ids(body)
    if error:
        return 400, {"message": error}
    fields = set(body["fields_to_export"])
    with store.lock:
        users, invalid = store.export(body)
        exported = [_exported(user, fields) for user in users]
    payload = {"users": exported, "message": "success"}
    if invalid:
        payload["invalid_user_ids"] = invalid
    return 201, payload


def _exported(user, fields: set) -> dict:
    attributes = user.attributes
    out = {}
    if "braze_id" in fields:
        out["braze_id"] = user.braze_id
    if "external_id" in fields and user.external_id is not None:
        out["external_id"] = user.external_id
    if "user_aliases" in fields and user.aliases:
        out["user_aliases"] = [{"alias_name": n, "alias_label": l} for l, n in user.aliases.items()]
    if "devices" in fields and user.device_ids:
        out["devices"] = [{"device_id": d} for d in user.device_ids]
    for name in ("email", "phone"):
        if name in fields and attributes.get(name) is not None:
            out[name] = attributes[name]
    if "custom_attributes" in fields:
        custom = {k: v for k, v in attributes.items() if k not in ("email", "phone")}
        if custom:
            out["custom_attributes"] = custom
    return out


def partner_auth(body: Any, partner_keys, client_secrets) -> Tuple[int, dict] | None:
    """401 for a bad partner key or client secret; never echoes either."""
    if not isinstance(body, dict):
        return 400, {"message": "body must be a JSON object"}
    if body.get("partner_api_key") not in partner_keys:
        return 401, {"message": "Invalid partner API key"}
    if body.get("client_secret") not in client_secrets:
        return 401, {"message": "Invalid client secret"}
    return None


def cohort_name(store: Store, partner: str, body: dict) -> Tuple[int, dict]:
    error = endpoint_rules.check_cohort_name(body)
    if error:
        return 400, {"message": error}
    with store.lock:
        store.name_cohort(partner, body)
    # Braze does not document the success answer; Segment's test mocks use 201 {}.
    return 201, {}


def cohort_users(store: Store, body: dict) -> Tuple[int, dict]:
    error = endpoint_rules.check_cohort_changes(body)
    if error:
        return 400, {"message": error}
    cohort_id = body["cohort_id"]
    with store.lock:
        if cohort_id not in store.cohorts:
            return 400, {"message": "'cohort_id' is unknown: name the cohort first"}
        for change in body["cohort_changes"]:
            store.change_cohort(cohort_id, change)
    return 201, {}  # unconfirmed body, as for the name endpoint


def redact_partner_body(body: Any) -> Any:
    """The partner endpoints carry their secrets in the body: keep them out of the log."""
    if isinstance(body, dict) and ("partner_api_key" in body or "client_secret" in body):
        body = dict(body)
        for key in ("partner_api_key", "client_secret"):
            if key in body:
                body[key] = "[redacted]"
    return body
