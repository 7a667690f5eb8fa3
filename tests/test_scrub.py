"""Scrubbing keys from text and from every log record, in every rendering a library may use."""
import io
import json
import logging
import urllib.parse

import pytest

from transforms.scrub import MASK, ScrubSecretsFilter, install_log_scrubbing, remember_secret, renderings, scrub

KEYS = [
    "sk-plain-5f0c9d2e41",
    "sk-line\nbreak-5f0c9d2e",
    'sk-"quote"/plus+eq=5f0c',
    "sk-\u0151-non-latin1-5f0c",
    "sk-\U0001f511-astral-5f0c",
]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("render", [
    str, repr, ascii, json.dumps, lambda k: json.dumps(k, ensure_ascii=False),
    lambda k: urllib.parse.quote(k, safe=""), lambda k: urllib.parse.quote_plus(k),
    lambda k: repr(k.encode("utf-8")), lambda k: k.encode("unicode_escape").decode("ascii"),
    lambda k: repr(f"Bearer {k}"),
], ids=["str", "repr", "ascii", "json", "json_utf8", "url", "url_plus", "bytes_repr", "unicode_escape",
        "header_repr"])
def test_every_rendering_is_scrubbed(key, render):
    text = f"before {render(key)} after"
    clean = scrub(text, [key])
    assert MASK in clean
    assert [form for form in renderings(key) if form in clean] == []
    assert clean.startswith("before ") and clean.endswith(" after")


def test_short_values_and_empty_text_are_left_alone():
    assert scrub("a 12345 b", ["12345"]) == "a 12345 b"
    assert scrub(None) == "" and scrub("") == ""


def _logger_to(stream, name):
    logger = logging.getLogger(name)
    logger.handlers[:] = []
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_log_scrubbing_covers_messages_arguments_and_tracebacks_of_any_logger():
    key = "sk-log\nscrub-7a6b5c4d"
    remember_secret(key)
    install_log_scrubbing()
    install_log_scrubbing()  # idempotent
    stream = io.StringIO()
    logger = _logger_to(stream, "tests.scrub.any_library")  # a handler added after installing
    logger.info("sending %s with %r", key, {"Authorization": f"Bearer {key}"})
    logger.warning(f"formatted in the message: {key!r}")
    try:
        raise ValueError(f"Invalid header value {('Bearer ' + key)!r}")
    except ValueError:
        logger.exception("request failed")
    logger.info("nothing secret here: %d%%", 50)
    text = stream.getvalue()
    assert [form for form in renderings(key) if form in text] == []
    assert "sending *** with {'Authorization': 'Bearer ***'}" in text
    assert "ValueError: Invalid header value 'Bearer ***'" in text  # the traceback, scrubbed
    assert "nothing secret here: 50%" in text


def test_the_filter_scrubs_what_one_handler_writes():
    key = "sk-filter-8b7c6d5e"
    remember_secret(key)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key=%s", (key,), None)
    assert ScrubSecretsFilter().filter(record) is True
    assert (record.getMessage(), record.args) == ("key=***", ())
