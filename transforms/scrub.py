"""Keep secrets out of text: every form a key can take in an error message, a log line or a
dead letter.

An exact-match replace is not enough: libraries quote what they refuse. ``requests`` puts a
header value into its ``InvalidHeader`` message through ``repr`` (a key with an inner newline
shows up as ``...\\n...``), JSON encoders escape it, and URLs carry it percent-encoded. So
``scrub`` replaces the raw value and each of those renderings.

Keys the process has read are remembered (``remember_secret``) so code far from the key, such as
the guard that turns any exception into a dead letter (``transforms.guard``), can scrub them too.

Logging is scrubbed as a defence in depth (``install_log_scrubbing``): every log record the
process creates, on any logger and whatever handler writes it (Beam adds its own on Dataflow
workers), has its message, arguments, exception text and stack text scrubbed of every key the
process has read. ``transforms.secrets`` installs it when it reads a key; entry points install
it at start.
"""
from __future__ import annotations

import functools
import json
import logging
import threading
import urllib.parse
from typing import FrozenSet, Iterable, List, Optional, Set

__all__ = ["MASK", "remember_secret", "known_secrets", "renderings", "scrub", "scrub_record",
           "ScrubSecretsFilter", "install_log_scrubbing"]

MASK = "***"
# Shorter values are not scrubbed: replacing "1" or "ab" everywhere would mangle every text,
# and no real API key is that short.
MIN_SECRET_CHARS = 6

_lock = threading.Lock()
_known: Set[str] = set()
# Every rendering of every known secret, longest first; rebuilt when a secret is added, so
# scrubbing a log line does not recompute renderings.
_known_forms: List[str] = []
_log_scrubbing_installed = False


def remember_secret(value: Optional[str]) -> None:
    """Add a key to the process-wide set that ``scrub`` always removes."""
    global _known_forms
    if isinstance(value, str) and len(value) >= MIN_SECRET_CHARS:
        with _lock:
            if value in _known:
                return
            _known.add(value)
            forms = set(_known_forms) | renderings(value)
            _known_forms = sorted(forms, key=len, reverse=True)


def known_secrets() -> Set[str]:
    with _lock:
        return set(_known)


@functools.lru_cache(maxsize=256)
def renderings(secret: str) -> FrozenSet[str]:
    """The forms ``secret`` takes when quoted by ``str``, ``repr``, JSON or a URL."""
    forms = {secret}
    forms.add(repr(secret)[1:-1])  # repr escapes \n, \t, quotes and non-printables
    forms.add(ascii(secret)[1:-1])
    forms.add(secret.encode("unicode_escape").decode("ascii"))
    forms.add(json.dumps(secret)[1:-1])
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    forms.add(urllib.parse.quote(secret, safe=""))
    forms.add(urllib.parse.quote_plus(secret, safe=""))
    encoded = secret.encode("utf-8", "surrogatepass")
    forms.add(repr(encoded)[2:-1])  # bytes in a message: b'...\xc5\x91...'
    forms.add(encoded.decode("latin-1"))  # mojibake in a header error
    return frozenset(form for form in forms if len(form) >= MIN_SECRET_CHARS)


def scrub(text, secrets: Iterable[Optional[str]] = ()) -> str:
    """``text`` without any rendering of ``secrets`` or of any key the process has read."""
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    if not text:
        return text
    forms = _known_forms  # replaced, never mutated: safe to read without the lock
    extra = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS}
    if extra:
        merged = set(forms)
        for secret in extra:
            merged |= renderings(secret)
        forms = sorted(merged, key=len, reverse=True)
    # Longest first, so a rendering that contains another is replaced whole.
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


# --------------------------------------------------------------------------------------------
# Logging


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """Scrub one log record in place: the formatted message (then without arguments, so no
    handler formats the key back in), the exception text and the stack text. A record with
    nothing to scrub is left exactly as it was."""
    if not _known_forms:
        return record
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: keep what can be shown
        message = f"{record.msg} {record.args!r}"
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[1] is not None:
        text = record.exc_text or logging.Formatter().formatException(record.exc_info)
        clean = scrub(text)
        if clean != text:
            record.exc_text = clean
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
    return record


class ScrubSecretsFilter(logging.Filter):
    """A logging filter that scrubs each record it sees (``scrub_record``) and lets it pass.

    ``install_log_scrubbing`` covers every logger and handler of the process; this filter is
    for a handler that must be scrubbed on its own (a filter on a logger does not see records
    its children propagate)."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


def install_log_scrubbing() -> None:
    """Scrub every log record the process creates from now on (idempotent).

    Installed as the log record factory rather than a filter, because filters attach to one
    logger or handler, while Beam's SDK harness adds its own handlers to the root logger on
    Dataflow workers after our code has run."""
    global _log_scrubbing_installed
    with _lock:
        if _log_scrubbing_installed:
            return
        previous = logging.getLogRecordFactory()

        def scrubbed_record(*args, **kwargs):
            return scrub_record(previous(*args, **kwargs))

        logging.setLogRecordFactory(scrubbed_record)
        _log_scrubbing_installed = True
