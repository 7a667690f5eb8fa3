"""Braze's facts, each defined once: the hosts it answers on, its paths, and its limits.

Every module that depends on one of these imports it from here, so a change Braze announces is
one edit. Each group names the section of ``docs/api-facts.md`` that gives the fact, its public
source, and what is UNCONFIRMED (where this module holds the safe reading). A leaf module: it
imports nothing of the project.
"""
from __future__ import annotations

__all__ = [
    "REST_HOSTS", "TRACK_PATH", "IDENTIFY_PATH", "EXPORT_IDS_PATH", "PARTNER_COHORTS_PATH",
    "MAX_OBJECTS_PER_REQUEST", "MAX_BODY_BYTES", "MAX_EXTERNAL_ID_BYTES", "MAX_STRING_CHARS",
    "MAX_STRING_BYTES", "MAX_NAME_CHARS", "MAX_PROPERTIES_BYTES", "MAX_ATTRIBUTE_BYTES",
    "DEFAULT_ARRAY_LENGTH", "MAX_ARRAY_LENGTH", "INT64_MIN", "INT64_MAX", "MAX_NESTED_TIME_YEAR",
    "RESERVED_EVENT_PROPERTIES", "RESERVED_PURCHASE_PROPERTIES", "MAX_PURCHASE_QUANTITY",
    "MAX_PRODUCT_ID_CHARS", "MAX_ALIASES_PER_IDENTIFY", "MAX_EXPORT_IDS", "MAX_PARTNER_IDS",
    "TRACK_REQUESTS_PER_WINDOW", "TRACK_RATE_WINDOW_SECONDS", "ALIAS_REQUESTS_PER_MINUTE",
    "EXPORT_IDS_REQUESTS_PER_MINUTE",
]

# REST hosts (docs/api-facts.md, B12). No US-09 exists in any source.
REST_HOSTS = tuple(
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

# Paths (B1, B13, B14, B15). The partner name in the partner path is a setting (UNCONFIRMED).
TRACK_PATH = "/users/track"
IDENTIFY_PATH = "/users/identify"
EXPORT_IDS_PATH = "/users/export/ids"
PARTNER_COHORTS_PATH = "/partners/{partner}/cohorts"  # + "/users" for membership changes

# One /users/track request (B2): 75 objects in all (current contracts; 75 per array on legacy
# rate limits), a body of at most 4 MB.
MAX_OBJECTS_PER_REQUEST = 75
MAX_BODY_BYTES = 4 * 1024 * 1024

# Identifiers (B3): a longer external_id is refused per object.
MAX_EXTERNAL_ID_BYTES = 987

# Values and names (B5, B7, B9): strings cut past 255 characters or 479 UTF-8 bytes; event
# properties with structured values at most 100 KB in all; a nested attribute, an array of
# objects or a flat array at most "100 KB", read as 100,000 bytes (the smaller reading).
MAX_STRING_CHARS = 255
MAX_STRING_BYTES = 479
MAX_NAME_CHARS = 255
MAX_PROPERTIES_BYTES = 100 * 1024
MAX_ATTRIBUTE_BYTES = 100_000
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # Braze's integers are 64-bit signed
MAX_NESTED_TIME_YEAR = 3000  # a nested time past it is not stored

# Arrays (B6): 25 values by default; a workspace admin may raise an array to 100 (or 500 in
# newer copies), which the job cannot know, so the default is assumed.
DEFAULT_ARRAY_LENGTH = 25
MAX_ARRAY_LENGTH = 100

# Event and purchase objects (B5).
RESERVED_EVENT_PROPERTIES = frozenset(("time", "event_name"))  # "Invalid 'properties' field"
RESERVED_PURCHASE_PROPERTIES = frozenset(("product_id", "quantity", "price", "currency"))
MAX_PURCHASE_QUANTITY = 100
MAX_PRODUCT_ID_CHARS = 255

# Entries per request of the other endpoints (B13, B14, B15).
MAX_ALIASES_PER_IDENTIFY = 50
MAX_EXPORT_IDS = 50  # external_ids or user_aliases; a device_id is one per request
MAX_PARTNER_IDS = 1000  # user_ids + device_ids + aliases, per cohort change request

# Rate limits (B11), per workspace (per company on some contracts).
TRACK_REQUESTS_PER_WINDOW = 3000
TRACK_RATE_WINDOW_SECONDS = 3.0
ALIAS_REQUESTS_PER_MINUTE = 20_000  # /users/identify, /users/alias/new, /users/merge, ... shared
EXPORT_IDS_REQUESTS_PER_MINUTE = 250  # accounts created on or after 2024-08-22 (2,500 before)
