"""Braze's standard user attributes: each value in the one format Braze accepts, or not at all.

Braze recognises its standard profile fields only by their lower-case names, and each wants a
format of its own (docs/api-facts.md, B8). A bad value is worse than no value:
an invalid email makes Braze refuse the whole attribute object (every other attribute in it
is lost), an unmappable country *erases* the stored one, an invalid time zone is ignored. So a
value is sent only once it is valid, and otherwise skipped with a short, stable reason that
the caller counts (the issue's rule: "skipped with a reason and counted, never sent to be
refused"). Nothing is ever guessed (B8: an unmappable country erases the stored one).

``format_standard(name, value) -> Formatted(value, reason)``: ``reason`` is None when
``value`` can be sent; a name that is not a formatted standard attribute passes unchanged. A
null (remove the attribute) passes for every field except the subscription states, which
have no "unset".

=====================  ===================================================  ====================
attribute              accepted → sent                                      refused: reason
=====================  ===================================================  ====================
``email``              trimmed, lower-cased, then checked as B8 says:       ``invalid_email``
                       local part 1-64 characters (letters, digits,
                       ``!#$%&'*+-/=?^_`{|}~.``, no leading, trailing or
                       double dot), domain of 2+ labels of letters, digits
                       and hyphens (Unicode domains become Punycode), a
                       top-level domain of letters, no IP address, 254
                       characters in all; Gmail needs 2+ characters
                       before the ``@``
``phone``              E.164 ``+<digits>``: ``+`` and 7-15 digits, or 10    ``invalid_phone``
                       digits without ``+`` (a US number, as Braze reads
                       it: ``+1`` is added); spaces, dashes, dots, ``/``
                       and parentheses are dropped
``dob``                ``YYYY-MM-DD`` from ``YYYY-MM-DD``, ``YYYY/MM/DD``,  ``invalid_dob``
                       ``MM/DD/YYYY`` (Braze's own date form) or an ISO
                       date-time (its date, as written); years 1900-2100
``gender``             ``M`` ``F`` ``O`` ``N`` ``P`` from the letter or the ``invalid_gender``
                       word (male/man, female/woman, other, not
                       applicable, prefer not to say), as the peers map it
``country``            ISO 3166-1 alpha-2 from the code, the alpha-3 code   ``unknown_country``
                       or the country's name ("United States" → ``US``)
``language``           Braze's code from the code, a region-tagged code     ``unknown_language``
                       (``en-US``, ``pt_BR`` → the base), or the name
                       Amplitude stores ("English" → ``en``)
``time_zone``          an IANA name (``zoneinfo``; the case is corrected)   ``unknown_time_zone``
``email_subscribe``,   ``opted_in``, ``subscribed`` or ``unsubscribed``     ``invalid_subscription_state``
``push_subscribe``     (case, spaces and dashes forgiven)
``first_name``,        a string, cut to 255 characters                      ``not_a_string``
``last_name``,
``home_city``
=====================  ===================================================  ====================

Choices where Braze's behaviour is UNCONFIRMED (docs/api-facts.md, B8), each on the safe side:
emails are lower-cased as RudderStack does (Braze's own case folding is unconfirmed; one
spelling keeps email look-ups stable); the top-level domain is checked for its shape, not
against ICANN's list (an address with an unknown TLD may still be refused by Braze, and is then
dead-lettered with Braze's reason); a region-tagged language becomes its base code (``pt_BR``
→ ``pt``) because Braze's list has no regional codes; an unmapped gender is skipped (Segment
passes it through; what Braze does with it is unconfirmed); Rails-style time-zone names
("Eastern Time (US & Canada)") are skipped, only IANA names are sent. Booleans are never read
as subscription states.
"""
from __future__ import annotations

import datetime as _dt
import functools
import re
import zoneinfo
from typing import Callable, Dict, NamedTuple, Optional

from transforms.braze_facts import MAX_NAME_CHARS
from transforms.standard_attribute_data import (
    COUNTRY_BY_NAME, COUNTRY_CODES, LANGUAGE_BY_NAME, LANGUAGE_CODES, LEGACY_LANGUAGE_CODES, normalise_name,
)

__all__ = [
    "Formatted", "FORMATTED_ATTRIBUTES", "STANDARD_ATTRIBUTES", "UNSUPPORTED_ATTRIBUTES", "NOT_NULLABLE",
    "INVALID_EMAIL", "INVALID_PHONE", "INVALID_DOB", "INVALID_GENDER", "UNKNOWN_COUNTRY", "UNKNOWN_LANGUAGE",
    "UNKNOWN_TIME_ZONE", "INVALID_SUBSCRIPTION_STATE", "NOT_A_STRING", "REASONS",
    "format_standard", "formatter_for", "format_email", "format_phone", "format_dob", "format_gender",
    "format_country", "format_language", "format_time_zone", "format_subscription_state", "format_name",
]

INVALID_EMAIL = "invalid_email"
INVALID_PHONE = "invalid_phone"
INVALID_DOB = "invalid_dob"
INVALID_GENDER = "invalid_gender"
UNKNOWN_COUNTRY = "unknown_country"
UNKNOWN_LANGUAGE = "unknown_language"
UNKNOWN_TIME_ZONE = "unknown_time_zone"
INVALID_SUBSCRIPTION_STATE = "invalid_subscription_state"
NOT_A_STRING = "not_a_string"
REASONS = (INVALID_EMAIL, INVALID_PHONE, INVALID_DOB, INVALID_GENDER, UNKNOWN_COUNTRY, UNKNOWN_LANGUAGE,
           UNKNOWN_TIME_ZONE, INVALID_SUBSCRIPTION_STATE, NOT_A_STRING)

MIN_DOB_YEAR, MAX_DOB_YEAR = 1900, 2100


class Formatted(NamedTuple):
    """A value as Braze takes it (``reason`` None), or why it cannot be sent (``value`` None)."""

    value: object
    reason: Optional[str] = None


def _refused(reason: str) -> Formatted:
    return Formatted(None, reason)


# --------------------------------------------------------------------------------------------
# email


_LOCAL_SYMBOLS = frozenset("!#$%&'*+-/=?^_`{|}~.")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TLD_RE = re.compile(r"[a-z]{2,63}|xn--[a-z0-9-]{1,59}")
_GMAIL_DOMAINS = frozenset(("gmail.com", "googlemail.com"))


def format_email(value) -> Formatted:
    """Trimmed, lower-cased, and valid by Braze's syntax rules (B8), else ``invalid_email``."""
    if not isinstance(value, str):
        return _refused(INVALID_EMAIL)
    text = value.strip().lower()
    local, at, domain = text.rpartition("@")
    if not at or not local or not 1 <= len(local) <= 64:
        return _refused(INVALID_EMAIL)
    if local[0] == "." or local[-1] == "." or ".." in local:
        return _refused(INVALID_EMAIL)
    if not all(c.isalnum() or c in _LOCAL_SYMBOLS for c in local):  # no quotes, spaces or a second @
        return _refused(INVALID_EMAIL)
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")  # Braze wants Punycode
        except UnicodeError:
            return _refused(INVALID_EMAIL)
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        return _refused(INVALID_EMAIL)
    if not _TLD_RE.fullmatch(labels[-1]):  # also refuses IP addresses: their last label is a number
        return _refused(INVALID_EMAIL)
    if domain in _GMAIL_DOMAINS and len(local) < 2:
        return _refused(INVALID_EMAIL)
    address = f"{local}@{domain}"
    return Formatted(address) if len(address) <= 254 else _refused(INVALID_EMAIL)


# --------------------------------------------------------------------------------------------
# phone


_PHONE_PUNCTUATION = str.maketrans("", "", " -.()/\u00a0")
_NANP_RE = re.compile(r"[2-9]\d\d[2-9]\d{6}")  # area code and exchange never start with 0 or 1


def format_phone(value) -> Formatted:
    """E.164 where the number says its country; else ``invalid_phone`` (no guessing).

    ``+`` and 7-15 digits is kept. Without ``+``, only a 10-digit North American number is
    read, as Braze reads it (a US number). A "(0)" after ``+`` is the national trunk prefix
    and is dropped. An 11-digit number starting with 1 is *not*
    taken as ``+1``: Chinese mobile numbers look the same."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, int) and value < 0):
        return _refused(INVALID_PHONE)
    text = str(value).strip()
    plus = text.startswith("+")
    if plus:
        text = text.replace("(0)", "")  # "+49 (0)30 ...": the national trunk 0, not dialled from abroad
    text = text.translate(_PHONE_PUNCTUATION)
    digits = text[1:] if plus else text
    if not digits.isascii() or not digits.isdigit():
        return _refused(INVALID_PHONE)  # letters ("ext. 12"), a second "+", nothing at all
    if plus:
        if 7 <= len(digits) <= 15 and digits[0] != "0":
            return Formatted("+" + digits)
        return _refused(INVALID_PHONE)
    if _NANP_RE.fullmatch(digits):
        return Formatted("+1" + digits)
    return _refused(INVALID_PHONE)


# --------------------------------------------------------------------------------------------
# dob


_ISO_DATE_RE = re.compile(
    r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})"
    r"(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:[.,:]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?", re.ASCII)
_US_DATE_RE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})", re.ASCII)


def format_dob(value) -> Formatted:
    """``YYYY-MM-DD``. A date-time gives its date as written (a birthday is a calendar date,
    not an instant, so it is not moved to UTC). Numbers are refused: seconds or milliseconds?"""
    if not isinstance(value, str):
        return _refused(INVALID_DOB)
    text = value.strip()
    match = _ISO_DATE_RE.fullmatch(text)
    if match:
        year, month, day = match.groups()
    else:
        match = _US_DATE_RE.fullmatch(text)
        if not match:
            return _refused(INVALID_DOB)
        month, day, year = match.groups()
    try:
        date = _dt.date(int(year), int(month), int(day))
    except ValueError:
        return _refused(INVALID_DOB)
    if not MIN_DOB_YEAR <= date.year <= MAX_DOB_YEAR:
        return _refused(INVALID_DOB)
    return Formatted(date.isoformat())


# --------------------------------------------------------------------------------------------
# gender


_GENDERS = {
    "M": ("m", "male", "man"),
    "F": ("f", "female", "woman"),
    "O": ("o", "other"),
    "N": ("n", "not applicable", "not_applicable", "n/a"),
    "P": ("p", "prefer not to say", "prefer_not_to_say"),
}
_GENDER_BY_WORD = {word: code for code, words in _GENDERS.items() for word in words}


def format_gender(value) -> Formatted:
    """Braze's ``M`` / ``F`` / ``O`` / ``N`` / ``P``; null means unknown (Braze: null)."""
    if value is None:
        return Formatted(None)
    if not isinstance(value, str):
        return _refused(INVALID_GENDER)
    code = _GENDER_BY_WORD.get(" ".join(value.split()).casefold())
    return Formatted(code) if code else _refused(INVALID_GENDER)


# --------------------------------------------------------------------------------------------
# country and language


def format_country(value) -> Formatted:
    """ISO 3166-1 alpha-2 from a code (either alpha) or a name Amplitude uses."""
    if not isinstance(value, str):
        return _refused(UNKNOWN_COUNTRY)
    text = value.strip()
    if len(text) == 2 and text.isascii() and text.upper() in COUNTRY_CODES:
        return Formatted(text.upper())
    code = COUNTRY_BY_NAME.get(text.casefold()) or COUNTRY_BY_NAME.get(normalise_name(text))
    return Formatted(code) if code else _refused(UNKNOWN_COUNTRY)


def format_language(value) -> Formatted:
    """A code from Braze's list, from a code, a region-tagged code or a language name."""
    if not isinstance(value, str):
        return _refused(UNKNOWN_LANGUAGE)
    text = value.strip().casefold()
    base = re.split(r"[-_]", text, maxsplit=1)[0] if text.isascii() else text
    for candidate in (text, base):
        candidate = LEGACY_LANGUAGE_CODES.get(candidate, candidate)
        if candidate in LANGUAGE_CODES:
            return Formatted(candidate)
    code = LANGUAGE_BY_NAME.get(normalise_name(text))
    return Formatted(code) if code else _refused(UNKNOWN_LANGUAGE)


# --------------------------------------------------------------------------------------------
# time zone


_NOT_ZONES = frozenset(("factory", "localtime", "posixrules"))


@functools.lru_cache(maxsize=1)
def _zones_by_lower_name() -> Dict[str, str]:
    # Read once, and only when a name is not found as given: the scan takes about 50 ms.
    return {name.lower(): name for name in zoneinfo.available_timezones()}


@functools.lru_cache(maxsize=4096)
def _time_zone(text: str) -> Optional[str]:
    if not text or len(text) > 64 or text.lower() in _NOT_ZONES:
        return None
    try:
        zoneinfo.ZoneInfo(text)
        return text
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        pass
    return _zones_by_lower_name().get(text.lower())


def format_time_zone(value) -> Formatted:
    """An IANA time-zone name, from the system's database or else the ``tzdata`` package
    (pinned in setup.py), so it works in a container without /usr/share/zoneinfo."""
    if not isinstance(value, str):
        return _refused(UNKNOWN_TIME_ZONE)
    name = _time_zone(value.strip())
    return Formatted(name) if name else _refused(UNKNOWN_TIME_ZONE)


# --------------------------------------------------------------------------------------------
# subscription states and plain strings


_SUBSCRIPTION_STATES = frozenset(("opted_in", "subscribed", "unsubscribed"))


def format_subscription_state(value) -> Formatted:
    """``opted_in`` / ``subscribed`` / ``unsubscribed``; never null (there is no "unset")."""
    if not isinstance(value, str):
        return _refused(INVALID_SUBSCRIPTION_STATE)
    state = "_".join(value.replace("-", " ").split()).casefold()
    return Formatted(state) if state in _SUBSCRIPTION_STATES else _refused(INVALID_SUBSCRIPTION_STATE)


def format_name(value) -> Formatted:
    """``first_name``, ``last_name``, ``home_city``: a string, cut to 255 characters (B8)."""
    if not isinstance(value, str):
        return _refused(NOT_A_STRING)
    return Formatted(value[:MAX_NAME_CHARS])


# --------------------------------------------------------------------------------------------
# Entry point


_FORMATTERS: Dict[str, Callable[[object], Formatted]] = {
    "email": format_email,
    "phone": format_phone,
    "dob": format_dob,
    "gender": format_gender,
    "country": format_country,
    "language": format_language,
    "time_zone": format_time_zone,
    "email_subscribe": format_subscription_state,
    "push_subscribe": format_subscription_state,
    "first_name": format_name,
    "last_name": format_name,
    "home_city": format_name,
}
FORMATTED_ATTRIBUTES = frozenset(_FORMATTERS)
# Standard fields sent as they come (Braze documents no format the job could check).
_PASSED_AS_IS = frozenset(("current_location", "date_of_first_session", "date_of_last_session",
                           "marked_email_as_spam_at", "facebook", "twitter", "image_url"))
# Standard fields that need structures this job does not build: refused as mapping targets.
UNSUPPORTED_ATTRIBUTES = frozenset(("push_tokens", "subscription_groups"))
STANDARD_ATTRIBUTES = FORMATTED_ATTRIBUTES | _PASSED_AS_IS | UNSUPPORTED_ATTRIBUTES
# A null cannot be sent for these (Braze has no "unset" subscription state).
NOT_NULLABLE = frozenset(("email_subscribe", "push_subscribe"))


def formatter_for(name: str) -> Optional[Callable[[object], Formatted]]:
    """The formatter of a standard attribute name, or None (the value goes as it is).

    Its result for a null is ``Formatted(None)`` except for ``NOT_NULLABLE`` names."""
    formatter = _FORMATTERS.get(name)
    if formatter is None or name in NOT_NULLABLE:
        return formatter
    return _nullable(formatter)


@functools.lru_cache(maxsize=None)
def _nullable(formatter):
    def formatted(value):
        return Formatted(None) if value is None else formatter(value)
    formatted.__name__ = formatter.__name__
    return formatted


def format_standard(name: str, value) -> Formatted:
    """``value`` of Braze attribute ``name`` as Braze takes it, or the reason it cannot be sent.

    Names that are not formatted standard attributes (custom attributes included) pass as
    they are. A null removes the attribute and passes, except for ``NOT_NULLABLE`` names."""
    formatter = formatter_for(name)
    return Formatted(value) if formatter is None else formatter(value)
