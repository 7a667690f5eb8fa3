"""The rules every config file is held to, and the walker that applies them.

Both config files (the syncs file, ``pipeline.config``, and the cohorts file,
``pipeline.cohort_config``) are checked once, when the job is built, so a mistake fails the
launch with every problem listed rather than a worker later. This module holds what the two
share, so that a rule written for one is the same rule, with the same message, in the other:

- ``ConfigError``: the one exception, listing each problem as ``path: what is wrong``.
- ``Validator``: collects problems while each file's own subclass walks its document in a
  fixed order (so the problem list is stable), and offers the checks for generic values
  (mappings with known keys, strings, booleans, string lists) and for shared fields (secret
  references, endpoints, sync names, user-alias fields).

Secrets: a key field is only ever a reference (``env:NAME`` or a Secret Manager version), and
no message quotes its value: a real key pasted by mistake must not end up in a log.
"""
from __future__ import annotations

import difflib
import math
import re

from pipeline.braze_endpoints import check_endpoint

__all__ = ["ConfigError", "DOTTED_PATH_RE", "DOTTED_PATH_TEXT", "ROOT", "Validator", "choice_hint", "is_number",
           "is_scalar", "join_path", "type_name"]

ROOT = "(document)"  # the path of a problem with the document as a whole
DOTTED_PATH_RE = re.compile(r"[^.]+(\.[^.]+)*")  # an event field or dotted path: no empty part
DOTTED_PATH_TEXT = "must be a field name or dotted path with no empty part"

_API_KEY_MESSAGE = "must be a reference (env:NAME or projects/P/secrets/S/versions/V), not a key"
_ENV_REF_RE = re.compile(r"env:[A-Za-z_][A-Za-z0-9_]*")
_SECRET_REF_RE = re.compile(r"projects/[^/]+/secrets/[^/]+/versions/[^/]+")

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME_TEXT = "must be 1-64 letters, digits, '-' or '_'"


class ConfigError(ValueError):
    """A config file has problems; ``problems`` lists each as ``path: what is wrong``."""

    def __init__(self, source: str, problems: list):
        self.problems = list(problems)
        super().__init__(
            f"{source}: {len(self.problems)} problem(s):\n" + "\n".join(f"  {p}" for p in self.problems)
        )


def type_name(value) -> str:
    """The name a config author knows a value's type by (YAML/JSON terms, not Python's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__  # e.g. a YAML date


def is_number(value) -> bool:
    """A finite int or float; ``true`` is not a number here, though Python says it is."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_scalar(value) -> bool:
    return isinstance(value, str) or isinstance(value, bool) or is_number(value)


def join_path(path: str, key) -> str:
    """``path.key``, or just ``key`` at the top of the document."""
    return f"{path}.{key}" if path else str(key)


def choice_hint(value: str, choices, aliases=None) -> str:
    """"did you mean 'x'?" for a value close to one of ``choices`` (or named in ``aliases``,
    a map of common other spellings such as ``gt`` → ``greater_than``); else the choices."""
    close = (aliases or {}).get(value.strip().lower())
    if close is None:
        matches = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
        close = matches[0] if matches else None
    return f"did you mean {close!r}?" if close else "expected one of: " + ", ".join(choices)


class Validator:
    """Collects every problem while a subclass walks the document; the subclass builds the result.

    Each helper returns the usable value, or ``None`` (or the default) when it is not usable,
    having recorded why. Subclasses call the helpers in document order, which keeps the problem
    list stable from run to run.
    """

    def __init__(self, problems, allow_insecure_endpoints):
        self.problems = problems
        self.allow_insecure = allow_insecure_endpoints

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def checked(self, source: str, value):
        """``value`` when nothing was wrong; otherwise ``ConfigError`` listing every problem."""
        if self.problems:
            raise ConfigError(source, self.problems)
        return value

    # -- the document itself --

    def root_mapping(self, document, expected: str) -> bool:
        """Whether the document is a mapping at all; ``expected`` says what it should be."""
        if document is None:
            self.add(ROOT, f"the file is empty (expected {expected})")
            return False
        if not isinstance(document, dict):
            self.add(ROOT, f"must be {expected}, got {type_name(document)}")
            return False
        return True

    def schema_key(self, document) -> None:
        """``$schema`` (which lets JSON editors find the schema) is optional but must be a string."""
        if "$schema" in document and not isinstance(document["$schema"], str):
            self.add("$schema", f"must be a string, got {type_name(document['$schema'])}")

    # -- generic helpers (return None when the value is unusable; the problem is recorded) --

    def mapping(self, value, path, keys, required=()):
        if not isinstance(value, dict):
            self.add(path, f"must be a mapping, got {type_name(value)}")
            return None
        for key in required:
            if key not in value:
                self.add(join_path(path, key), "required")
        for key in value:
            if not isinstance(key, str):
                self.add(path, f"keys must be strings, got {type_name(key)} key")
            elif key not in keys:
                self.add(join_path(path, key), f"unknown key ({choice_hint(key, keys)})")
        return value

    def boolean(self, m, key, path, default):
        if key not in m:
            return default
        value = m[key]
        if not isinstance(value, bool):
            self.add(join_path(path, key), f"must be true or false, got {type_name(value)}")
            return default
        return value

    def choice(self, m, key, path, choices, default):
        """One of ``choices`` (a string), with "did you mean" for a near miss; None when not."""
        if key not in m:
            return default
        value = m[key]
        p = join_path(path, key)
        if not isinstance(value, str):
            self.add(p, f"must be a string, one of: {', '.join(choices)}; got {type_name(value)}")
            return None
        if value not in choices:
            self.add(p, f"unknown {key} {value!r} ({choice_hint(value, choices)})")
            return None
        return value

    def string(self, m, key, path, required=False, pattern=None, pattern_text=""):
        if key not in m:
            return None  # "required" already reported by mapping()
        value = m[key]
        p = join_path(path, key)
        if not isinstance(value, str):
            self.add(p, f"must be a string, got {type_name(value)}")
            return None
        if not value:
            self.add(p, "must not be empty")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.add(p, pattern_text)
            return None
        return value

    def string_list(self, m, key, path):
        if key not in m:
            return ()
        value = m[key]
        p = join_path(path, key)
        if not isinstance(value, list):
            self.add(p, f"must be a list of strings, got {type_name(value)}")
            return ()
        out, seen = [], set()
        for i, item in enumerate(value):
            ip = f"{p}[{i}]"
            if not isinstance(item, str):
                self.add(ip, f"must be a string, got {type_name(item)}")
            elif not item:
                self.add(ip, "must not be empty")
            elif item in seen:
                self.add(ip, f"duplicate {item!r}")
            else:
                seen.add(item)
                out.append(item)
        return tuple(out)

    # -- fields both files have --

    def sync_name(self, m, path):
        """A sync's ``name`` (in either file): letters, digits, '-' and '_' only."""
        return self.string(m, "name", path, pattern=_NAME_RE, pattern_text=_NAME_TEXT)

    def unique_name(self, names: dict, name, path) -> None:
        """Report ``name`` if an earlier entry has it; else record ``path`` as its first use.

        ``names`` maps each name to the path of its first entry; ``None`` (no usable name) is
        skipped.
        """
        if name is None:
            return
        if name in names:
            self.add(join_path(path, "name"), f"duplicate name {name!r} (also {names[name]})")
        else:
            names[name] = path

    def reference(self, m, key, path, required=False):
        """A secret given as a reference (``env:NAME`` or a Secret Manager version), never a key."""
        if key not in m:
            if required:
                self.add(join_path(path, key), "required")
            return None
        value = m[key]
        p = join_path(path, key)
        if not isinstance(value, str):  # never quote the value: it may be a pasted key
            self.add(p, f"must be a string, got {type_name(value)}; it " + _API_KEY_MESSAGE)
            return None
        if not (_ENV_REF_RE.fullmatch(value) or _SECRET_REF_RE.fullmatch(value)):
            self.add(p, _API_KEY_MESSAGE)
            return None
        return value

    def endpoint(self, m, path):
        """A Braze REST endpoint (``pipeline.braze_endpoints``), without a trailing slash."""
        if "endpoint" not in m:
            return None
        value = m["endpoint"]
        p = join_path(path, "endpoint")
        if not isinstance(value, str):
            self.add(p, f"must be a string, got {type_name(value)}")
            return None
        problem, normalised = check_endpoint(value, self.allow_insecure)
        if problem:
            self.add(p, problem)
            return None
        return normalised

    def alias_label(self, m, path):
        """``alias_label``, which a user_alias identifier requires (the Braze alias label)."""
        if "alias_label" not in m:
            self.add(join_path(path, "alias_label"), "required when type is user_alias")
            return None
        return self.string(m, "alias_label", path)

    def only_for_alias(self, m, path, kind: str, keys) -> bool:
        """Report each of ``keys`` present although the type is ``kind``, not user_alias."""
        found = [k for k in keys if k in m]
        for k in found:
            self.add(join_path(path, k), f"only allowed when type is user_alias (type is {kind!r})")
        return bool(found)
