"""Keep secrets out of text: every form a key can take in an error message, a log line or a
dead letter.

An exact-match replace is not enough: libraries quote what they refuse. ``requests`` puts a
header value into its ``InvalidHeader`` message through ``repr`` (a key with an inner newline
shows up as ``...\\n...``), JSON encoders escape it, and URLs carry it percent-encoded. So
``scrub`` replaces the raw value and each of those renderings.

Keys the process has read are remembered (``remember_secret``) so code far from the key, such as
the guard that turns any exception into a dead letter (``transforms.guard``), can scrub them too.
"""
from __future__ import annotations

import json
import threading
import urllib.parse
from typing import Iterable, Optional, Set

__all__ = ["MASK", "remember_secret", "known_secrets", "renderings", "scrub"]

MASK = "***"
# Shorter values are not scrubbed: replacing "1" or "ab" everywhere would mangle every text,
# and no real API key is that short.
MIN_SECRET_CHARS = 6

_lock = threading.Lock()
_known: Set[str] = set()


def remember_secret(value: Optional[str]) -> None:
    """Add a key to the process-wide set that ``scrub`` always removes."""
    if isinstance(value, str) and len(value) >= MIN_SECRET_CHARS:
        with _lock:
            _known.add(value)


def known_secrets() -> Set[str]:
    with _lock:
        return set(_known)


def renderings(secret: str) -> Set[str]:
    """The forms ``secret`` takes when quoted by ``str``, ``repr``, JSON or a URL."""
    forms = {secret}
    forms.add(repr(secret)[1:-1])  # repr escapes \n, \t, quotes and non-printables
    forms.add(secret.encode("unicode_escape").decode("ascii"))
    forms.add(json.dumps(secret)[1:-1])
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    forms.add(urllib.parse.quote(secret, safe=""))
    forms.add(urllib.parse.quote_plus(secret, safe=""))
    try:
        forms.add(secret.encode("utf-8").decode("latin-1"))  # mojibake in a header error
    except UnicodeError:
        pass
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


def scrub(text, secrets: Iterable[Optional[str]] = ()) -> str:
    """``text`` without any rendering of ``secrets`` or of any key the process has read."""
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    if not text:
        return text
    candidates = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS}
    candidates |= known_secrets()
    if not candidates:
        return text
    forms = set()
    for secret in candidates:
        forms |= renderings(secret)
    # Longest first, so a rendering that contains another is replaced whole.
    for form in sorted(forms, key=len, reverse=True):
        if form in text:
            text = text.replace(form, MASK)
    return text
