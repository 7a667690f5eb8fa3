"""Pure checks for /users/track objects, as strict as Braze's docs say Braze is (docs/api-facts.md).

Nothing here touches simulator state: each ``check_*`` function takes one parsed object and
returns an error text for the ``errors[].type`` field, or ``None`` when the object is valid.
Checks that need the stored profile (``inc`` on a non-integer) live in ``users.py``.

Error texts copy Braze's where a real one is known ("'quantity' is not valid",
"'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required",
``EXTERNAL_USER_ID_TOO_LARGE``); the others follow the same pattern.
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any, Optional

import orjson

OBJECT_LIMIT = 75
MAX_EXTERNAL_ID_BYTES = 987
MAX_NAME_CHARS = 255  # property names, string values, product_id
MAX_NESTED_PROPERTY_BYTES = 100 * 1024  # array/object-valued properties, serialized, in total
MAX_PURCHASE_QUANTITY = 100

PRIMARY_IDS = ("external_id", "braze_id", "user_alias")
MISSING_ID = "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required"
MANY_IDS = "only one of 'external_id', 'braze_id' or 'user_alias' may be provided"
TOO_LARGE_ID = "EXTERNAL_USER_ID_TOO_LARGE"
BAD_EMAIL = "The value provided for the 'email' field is not a valid email."

RESERVED_PROPERTY_NAMES = frozenset(("time", "event_name"))
CONTROL_KEYS = frozenset(("_update_existing_only", "_merge_objects", "push_token_import"))
IDENTIFIER_KEYS = frozenset(("external_id", "braze_id", "user_alias"))
SUBSCRIPTION_STATES = frozenset(("opted_in", "subscribed", "unsubscribed"))

# ISO 4217 alphabetic codes in current use. A shape check alone would let "ABC" through.
CURRENCIES = frozenset("""
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN
BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS
GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW
KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD
NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD
SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS
VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL
""".split())

# Braze's documented alternative to ISO 8601: yyyy-MM-dd'T'HH:mm:ss:SSSZ (milliseconds after a colon).
_BRAZE_TIME = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}):(\d{3})(Z|[+-]\d{2}:?\d{2})?")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def parse_time(value: Any) -> Optional[_dt.datetime]:
    """An aware UTC datetime for an ISO 8601 (or Braze colon-millisecond) string, else None.

    A time without a zone is read as UTC, as Braze reads zone-less dates.
    """
    if not isinstance(value, str) or len(value) < 10:
        return None
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        parsed = _dt.datetime.fromisoformat(text)
    except ValueError:
        match = _BRAZE_TIME.fullmatch(value)
        if match is None:
            return None
        zone = match.group(3) or "+00:00"
        zone = "+00:00" if zone == "Z" else zone
        try:
            parsed = _dt.datetime.fromisoformat(f"{match.group(1)}.{match.group(2)}{zone}")
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.timezone.utc)
    return parsed


def check_identifier(obj: dict) -> Optional[str]:
    """Exactly one primary identifier, or else email/phone for lookup."""
    present = [key for key in PRIMARY_IDS if key in obj]
    if len(present) > 1:
        return MANY_IDS
    if not present:
        if obj.get("email") is not None:
            return check_email(obj["email"])
        phone = obj.get("phone")
        if phone is None:
            return MISSING_ID
        return None if isinstance(phone, str) and phone else "'phone' is not valid"
    key = present[0]
    value = obj[key]
    if key == "user_alias":
        return check_alias(value)
    if not isinstance(value, str) or not value:
        return f"'{key}' is not valid"
    if key == "external_id" and len(value.encode("utf-8")) > MAX_EXTERNAL_ID_BYTES:
        return TOO_LARGE_ID
    return None


def check_alias(value: Any) -> Optional[str]:
    if not isinstance(value, dict):
        return "'user_alias' is not valid"
    name, label = value.get("alias_name"), value.get("alias_label")
    if not isinstance(name, str) or not name or not isinstance(label, str) or not label:
        return "'user_alias' must have 'alias_name' and 'alias_label'"
    return None


def check_email(value: Any) -> Optional[str]:
    if value is None:  # null removes the email on an identified profile
        return None
    if not isinstance(value, str) or _EMAIL.fullmatch(value) is None:
        return BAD_EMAIL
    return None


def _check_flag(obj: dict, key: str) -> Optional[str]:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        return f"'{key}' is not valid"
    return None


def check_properties(props: Any) -> Optional[str]:
    """Event/purchase property rules: names, reserved keys, value types and sizes."""
    if not isinstance(props, dict):
        return "'properties' is not valid"
    nested = []
    for name, value in props.items():
        if not name or len(name) > MAX_NAME_CHARS or name[0] == "$":
            return f"property name '{name[:40]}' is not valid"
        if name in RESERVED_PROPERTY_NAMES:
            return f"'{name}' is a reserved property name"
        if isinstance(value, str):
            if len(value) > MAX_NAME_CHARS:
                return f"property '{name}' is longer than {MAX_NAME_CHARS} characters"
        elif isinstance(value, (dict, list)):
            nested.append(value)
        elif value is None:
            # Braze lists no null property type; strict, so callers drop nulls themselves.
            return f"property '{name}' is null"
        elif not isinstance(value, (int, float)):
            return f"property '{name}' is not valid"
    if nested and len(orjson.dumps(nested)) > MAX_NESTED_PROPERTY_BYTES:
        return "array and object properties exceed 100 KB"
    return None


def check_event(obj: dict) -> Optional[str]:
    error = check_identifier(obj)
    if error:
        return error
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return "'name' is required" if name is None else "'name' is not valid"
    if "time" not in obj:
        return "'time' is required"
    if parse_time(obj["time"]) is None:
        return "'time' is not valid"
    return _check_common(obj)


def check_purchase(obj: dict) -> Optional[str]:
    error = check_identifier(obj)
    if error:
        return error
    product = obj.get("product_id")
    if not isinstance(product, str) or not product or len(product) > MAX_NAME_CHARS:
        return "'product_id' is not valid"
    if obj.get("currency") not in CURRENCIES:
        return "'currency' is not valid"
    price = obj.get("price")
    if isinstance(price, bool) or not isinstance(price, (int, float)):
        return "'price' is not valid"
    if "quantity" in obj:
        quantity = obj["quantity"]
        if isinstance(quantity, bool) or not isinstance(quantity, int) \
                or not 1 <= quantity <= MAX_PURCHASE_QUANTITY:
            return "'quantity' is not valid"
    if "time" not in obj:
        return "'time' is required"
    if parse_time(obj["time"]) is None:
        return "'time' is not valid"
    return _check_common(obj)


def _check_common(obj: dict) -> Optional[str]:
    app_id = obj.get("app_id")
    if app_id is not None and not isinstance(app_id, str):
        return "'app_id' is not valid"
    if "properties" in obj:
        error = check_properties(obj["properties"])
        if error:
            return error
    return _check_flag(obj, "_update_existing_only")


def check_attributes(obj: dict) -> Optional[str]:
    """Identifier, key names and operator shapes; the stored value is checked when applied."""
    error = check_identifier(obj)
    if error:
        return error
    for key in CONTROL_KEYS:
        error = _check_flag(obj, key)
        if error:
            return error
    for key, value in obj.items():
        if key in IDENTIFIER_KEYS or key in CONTROL_KEYS:
            continue
        if not key or len(key) > MAX_NAME_CHARS or key[0] == "$":
            return f"attribute name '{key[:40]}' is not valid"
        if key == "email":
            error = check_email(value)
        elif key in ("email_subscribe", "push_subscribe"):
            error = None if value in SUBSCRIPTION_STATES else f"'{key}' is not valid"
        elif key == "dob":
            error = None if value is None or _is_date(value) else "'dob' is not valid"
        elif isinstance(value, dict):
            error = check_operator(key, value)
        else:
            error = None
        if error:
            return error
    return None


def _is_date(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        _dt.date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


def operator_kind(value: dict) -> Optional[str]:
    """'inc', 'array' or None (a nested custom object) for a dict attribute value."""
    if not value:
        return None
    keys = value.keys()
    if keys == {"inc"}:
        return "inc"
    if keys <= {"add", "remove"}:
        return "array"
    return None


def check_operator(key: str, value: dict) -> Optional[str]:
    kind = operator_kind(value)
    if kind == "inc":
        step = value["inc"]
        if isinstance(step, bool) or not isinstance(step, int):
            return f"'{key}' increment is not an integer"
    elif kind == "array":
        for op, items in value.items():
            if not isinstance(items, list):
                return f"'{key}' {op} must be an array"
            if any(isinstance(item, (dict, list)) or item is None for item in items):
                return f"'{key}' {op} values must be strings, numbers or booleans"
    return None


def count_objects(body: dict) -> tuple:
    """(attributes, events, purchases) lengths; non-list arrays count as 0."""
    return tuple(len(body[k]) if isinstance(body.get(k), list) else 0
                 for k in ("attributes", "events", "purchases"))


def over_object_limit(counts: tuple, mode: str) -> bool:
    """``combined``: 75 objects in all (current Braze); ``per-type``: 75 per array (legacy)."""
    if mode == "per-type":
        return max(counts) > OBJECT_LIMIT
    return sum(counts) > OBJECT_LIMIT


CHECKS = {"attributes": check_attributes, "events": check_event, "purchases": check_purchase}
