"""Braze's standard attributes: every field's valid, fixable and refused values (tables)."""
import subprocess
import sys

import pytest

from transforms import standard_attributes as sa
from transforms.standard_attribute_data import COUNTRY_BY_NAME, COUNTRY_CODES, LANGUAGE_CODES
from transforms.standard_attributes import Formatted, format_standard

# (attribute, value as Amplitude may hold it, what is sent) — already valid, sent unchanged.
VALID = [
    ("email", "ada@example.com", "ada@example.com"),
    ("email", "o'brien+tag@mail.example.co.uk", "o'brien+tag@mail.example.co.uk"),
    ("email", "ab@gmail.com", "ab@gmail.com"),
    ("phone", "+14155550132", "+14155550132"),
    ("phone", "+442071838750", "+442071838750"),
    ("dob", "1990-05-17", "1990-05-17"),
    ("gender", "F", "F"),
    ("gender", "P", "P"),
    ("country", "US", "US"),
    ("country", "DE", "DE"),
    ("language", "en", "en"),
    ("language", "fil", "fil"),
    ("language", "haw", "haw"),
    ("language", "gsw", "gsw"),
    ("language", "nb", "nb"),
    ("time_zone", "America/New_York", "America/New_York"),
    ("time_zone", "Europe/Berlin", "Europe/Berlin"),
    ("time_zone", "UTC", "UTC"),
    ("email_subscribe", "opted_in", "opted_in"),
    ("push_subscribe", "unsubscribed", "unsubscribed"),
    ("first_name", "Ada", "Ada"),
    ("last_name", "Lovelace", "Lovelace"),
    ("home_city", "London", "London"),
]

# Values the job makes valid before sending.
FIXABLE = [
    ("email", "  Ada.Lovelace@Example.COM ", "ada.lovelace@example.com"),
    ("email", "ada@bücher.example", "ada@xn--bcher-kva.example"),
    ("phone", "(415) 555-0132", "+14155550132"),
    ("phone", "415.555.0132", "+14155550132"),
    ("phone", 4155550132, "+14155550132"),
    ("phone", "+44 20 7183 8750", "+442071838750"),
    ("phone", "+49 (0)30/1234567", "+49301234567"),
    ("dob", "1990-5-7", "1990-05-07"),
    ("dob", "1990/05/17", "1990-05-17"),
    ("dob", "05/17/1990", "1990-05-17"),
    ("dob", "1990-05-17T23:30:00-05:00", "1990-05-17"),  # the date as written, not moved to UTC
    ("dob", "1990-05-17 20:07:01.795", "1990-05-17"),  # Amplitude's export time format
    ("dob", " 1990-05-17 ", "1990-05-17"),
    ("gender", "female", "F"),
    ("gender", "Female", "F"),
    ("gender", "woman", "F"),
    ("gender", "male", "M"),
    ("gender", "MAN", "M"),
    ("gender", "m", "M"),
    ("gender", "other", "O"),
    ("gender", "Not Applicable", "N"),
    ("gender", "prefer not to say", "P"),
    ("gender", "Prefer  not to say", "P"),
    ("country", "United States", "US"),
    ("country", "United Kingdom", "GB"),
    ("country", "Germany", "DE"),
    ("country", "germany", "DE"),
    ("country", "  France ", "FR"),
    ("country", "us", "US"),
    ("country", "USA", "US"),
    ("country", "DEU", "DE"),
    ("country", "UK", "GB"),
    ("country", "South Korea", "KR"),
    ("country", "Korea, Republic of", "KR"),
    ("country", "Czech Republic", "CZ"),
    ("country", "Côte d'Ivoire", "CI"),
    ("country", "Cote d’Ivoire", "CI"),
    ("country", "Ivory Coast", "CI"),
    ("country", "Curacao", "CW"),
    ("country", "St Kitts & Nevis", "KN"),
    ("country", "The Netherlands", "NL"),
    ("country", "Russia", "RU"),
    ("country", "Vietnam", "VN"),
    ("country", "Türkiye", "TR"),
    ("country", "Turkey", "TR"),
    ("country", "Hong Kong", "HK"),
    ("country", "Democratic Republic of the Congo", "CD"),
    ("country", "Republic of the Congo", "CG"),
    ("country", "U.S. Virgin Islands", "VI"),
    ("language", "English", "en"),
    ("language", "english", "en"),
    ("language", "German", "de"),
    ("language", "Norwegian", "nb"),
    ("language", "Persian", "fa"),
    ("language", "Swiss German", "gsw"),
    ("language", "Filipino", "fil"),
    ("language", "Hawaiian", "haw"),
    ("language", "Khmer", "km"),
    ("language", "en-US", "en"),
    ("language", "pt_BR", "pt"),
    ("language", "zh-Hant-TW", "zh"),
    ("language", "EN", "en"),
    ("language", "no", "nb"),
    ("language", "nb-NO", "nb"),
    ("language", "iw", "he"),
    ("time_zone", "america/new_york", "America/New_York"),
    ("time_zone", " Europe/Paris ", "Europe/Paris"),
    ("email_subscribe", "Opted In", "opted_in"),
    ("email_subscribe", "opted-in", "opted_in"),
    ("push_subscribe", " SUBSCRIBED ", "subscribed"),
    ("first_name", "x" * 300, "x" * 255),
    ("home_city", "é" * 256, "é" * 255),
]

# Values that cannot be made valid: skipped with the reason, never sent.
REFUSED = [
    ("email", "not an email", "invalid_email"),
    ("email", "ada@", "invalid_email"),
    ("email", "@example.com", "invalid_email"),
    ("email", "ada@example", "invalid_email"),  # one label
    ("email", "ada lovelace@example.com", "invalid_email"),
    ("email", '"ada"@example.com', "invalid_email"),
    ("email", ".ada@example.com", "invalid_email"),
    ("email", "ada.@example.com", "invalid_email"),
    ("email", "a..da@example.com", "invalid_email"),
    ("email", "ada@@example.com", "invalid_email"),
    ("email", "ada@127.0.0.1", "invalid_email"),
    ("email", "ada@[127.0.0.1]", "invalid_email"),
    ("email", "ada@-example.com", "invalid_email"),
    ("email", "ada@example.c", "invalid_email"),
    ("email", "ada@example.123", "invalid_email"),
    ("email", "a" * 65 + "@example.com", "invalid_email"),
    ("email", "ada@" + "a" * 64 + ".com", "invalid_email"),
    ("email", "a@gmail.com", "invalid_email"),  # Gmail: 2+ characters before the @
    ("email", "", "invalid_email"),
    ("email", 42, "invalid_email"),
    ("email", ["ada@example.com"], "invalid_email"),
    ("phone", "555-0132", "invalid_phone"),  # 7 digits without a country
    ("phone", "14155550132", "invalid_phone"),  # 11 digits: +1, or a Chinese mobile? Not guessed
    ("phone", "13812345678", "invalid_phone"),
    ("phone", "0155550132", "invalid_phone"),  # not a North American number
    ("phone", "+0123456789", "invalid_phone"),
    ("phone", "+123", "invalid_phone"),
    ("phone", "+1234567890123456", "invalid_phone"),  # over 15 digits
    ("phone", "415-555-0132 ext. 12", "invalid_phone"),
    ("phone", "++14155550132", "invalid_phone"),
    ("phone", "", "invalid_phone"),
    ("phone", True, "invalid_phone"),
    ("phone", -4155550132, "invalid_phone"),
    ("phone", 4155550132.0, "invalid_phone"),
    ("dob", "17/05/1990", "invalid_dob"),  # not Braze's MM/dd/yyyy, and never guessed
    ("dob", "1990-02-30", "invalid_dob"),
    ("dob", "1899-12-31", "invalid_dob"),
    ("dob", "2101-01-01", "invalid_dob"),
    ("dob", "May 17, 1990", "invalid_dob"),
    ("dob", "1990-05-17 garbage", "invalid_dob"),
    ("dob", "19900517", "invalid_dob"),
    ("dob", 643593600000, "invalid_dob"),  # epoch: seconds or milliseconds?
    ("dob", "", "invalid_dob"),
    ("gender", "unknown", "invalid_gender"),
    ("gender", "nonbinary", "invalid_gender"),
    ("gender", "", "invalid_gender"),
    ("gender", 1, "invalid_gender"),
    ("country", "Narnia", "unknown_country"),
    ("country", "XK", "unknown_country"),  # Kosovo's code is not ISO 3166-1
    ("country", "Korea", "unknown_country"),  # North or South?
    ("country", "America", "unknown_country"),
    ("country", "", "unknown_country"),
    ("country", 840, "unknown_country"),
    ("language", "Klingon", "unknown_language"),
    ("language", "xx", "unknown_language"),
    ("language", "yue", "unknown_language"),  # ISO, but not on Braze's list
    ("language", "", "unknown_language"),
    ("language", 5, "unknown_language"),
    ("time_zone", "Eastern Time (US & Canada)", "unknown_time_zone"),  # Rails name: not IANA
    ("time_zone", "Mars/Olympus_Mons", "unknown_time_zone"),
    ("time_zone", "../../etc/passwd", "unknown_time_zone"),
    ("time_zone", "/etc/localtime", "unknown_time_zone"),
    ("time_zone", "localtime", "unknown_time_zone"),
    ("time_zone", "", "unknown_time_zone"),
    ("time_zone", -5, "unknown_time_zone"),
    ("email_subscribe", "yes", "invalid_subscription_state"),
    ("email_subscribe", True, "invalid_subscription_state"),  # never read as a state
    ("push_subscribe", "opted out", "invalid_subscription_state"),
    ("email_subscribe", None, "invalid_subscription_state"),  # there is no "unset"
    ("push_subscribe", None, "invalid_subscription_state"),
    ("first_name", 7, "not_a_string"),
    ("last_name", {"a": 1}, "not_a_string"),
    ("home_city", ["Paris"], "not_a_string"),
]


@pytest.mark.parametrize("name, value, sent", VALID + FIXABLE, ids=lambda v: repr(v)[:40])
def test_valid_and_fixable_values_are_sent_in_braze_format(name, value, sent):
    assert format_standard(name, value) == Formatted(sent, None)


@pytest.mark.parametrize("name, value, reason", REFUSED, ids=lambda v: repr(v)[:40])
def test_values_that_cannot_be_made_valid_are_refused_with_the_reason(name, value, reason):
    assert format_standard(name, value) == Formatted(None, reason)
    assert reason in sa.REASONS


@pytest.mark.parametrize("name", sorted(sa.FORMATTED_ATTRIBUTES - sa.NOT_NULLABLE))
def test_null_removes_a_standard_attribute(name):
    assert format_standard(name, None) == Formatted(None, None)


@pytest.mark.parametrize("name, value", [("plan", "United States"), ("Email", " X@Y "), ("score", 3),
                                         ("current_location", {"latitude": 1, "longitude": 2}),
                                         ("tags", ["a"]), ("plan", None)])
def test_custom_and_unformatted_attributes_pass_unchanged(name, value):
    assert format_standard(name, value) == Formatted(value, None)


def test_the_tables_cover_every_formatted_attribute():
    assert {name for name, _, _ in VALID} == sa.FORMATTED_ATTRIBUTES
    assert {name for name, _, _ in REFUSED} == sa.FORMATTED_ATTRIBUTES


def test_country_table_is_iso_3166_and_its_names_are_unambiguous():
    assert len(COUNTRY_CODES) == 249 and all(len(c) == 2 and c.isupper() for c in COUNTRY_CODES)
    assert set(COUNTRY_BY_NAME.values()) == COUNTRY_CODES  # every code has a name
    for name in ("united states", "united kingdom", "germany", "japan", "brazil", "india", "australia"):
        assert name in COUNTRY_BY_NAME


def test_language_table_is_brazes_list():
    assert {"fil", "haw", "gsw", "nb", "nn", "dua", "saq"} <= LANGUAGE_CODES
    assert "no" not in LANGUAGE_CODES  # Braze uses nb for Norwegian
    assert all(c.isascii() and c.islower() and 2 <= len(c) <= 3 for c in LANGUAGE_CODES)


def test_time_zones_resolve_without_a_system_time_zone_database():
    """A container without /usr/share/zoneinfo: the pinned tzdata package serves the names.
    Run in a fresh interpreter with an empty TZPATH, so this process's caches are not used."""
    code = (
        "import zoneinfo; zoneinfo.reset_tzpath([]);"
        "from transforms.standard_attributes import format_time_zone as f;"
        "print(f('America/New_York'), f('europe/berlin'), f('Mars/Base'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split("\n")[0] == (
        "Formatted(value='America/New_York', reason=None) Formatted(value='Europe/Berlin', reason=None) "
        "Formatted(value=None, reason='unknown_time_zone')"
    )
