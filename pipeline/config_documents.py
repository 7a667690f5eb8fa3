"""Reading a config file into a document: bytes from a path or URI, then JSON or YAML.

Shared by every config file (syncs and cohorts), so both accept the same places and formats
and fail the same way. A file that cannot be read or parsed raises ``ConfigError`` at once;
duplicate keys, which both parsers would otherwise drop silently (keeping the last), are
returned as problems for the validator to report along with everything else. No message quotes
the document: it may hold a key pasted by mistake.
"""
from __future__ import annotations

import json
from typing import Optional

import yaml

from pipeline.config_validation import ROOT, ConfigError

__all__ = ["decode_document", "format_for_name", "read_bytes"]


def format_for_name(source: str) -> Optional[str]:
    """The format a file name implies: ``.json`` → ``"json"``, ``.yaml``/``.yml`` → ``"yaml"``,
    anything else ``None`` (sniffed from the text by ``decode_document``)."""
    lower = source.lower()
    return "json" if lower.endswith(".json") else "yaml" if lower.endswith((".yaml", ".yml")) else None


def read_bytes(source: str) -> bytes:
    """The file's bytes: a local path, or any Beam filesystem URI (``gs://...``)."""
    if "://" not in source:
        try:
            with open(source, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ConfigError(source, [f"{ROOT}: file not found: {source}"]) from None
        except IsADirectoryError:
            raise ConfigError(source, [f"{ROOT}: is a directory, not a file: {source}"]) from None
        except OSError as e:
            raise ConfigError(source, [f"{ROOT}: cannot read {source}: {e.strerror or e}"]) from None
    # gs:// and other Beam filesystems. Imported here: Beam is slow to import and only needed for URIs.
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(source, compression_type="uncompressed") as f:
            return f.read()
    except Exception as e:  # noqa: BLE001 - each filesystem raises its own types
        if isinstance(e, FileNotFoundError) or type(e).__name__ == "NotFound":
            raise ConfigError(source, [f"{ROOT}: file not found: {source}"]) from None
        raise ConfigError(source, [f"{ROOT}: cannot read {source}: {type(e).__name__}: {e}"]) from None


def decode_document(text, source: str, format: Optional[str], expected: str):
    """Text or bytes → ``(document, duplicate-key problems)``; shared by every config file."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ConfigError(source, [f"{ROOT}: not UTF-8 text (byte {e.start})"]) from None
    if not text.strip():
        raise ConfigError(source, [f"{ROOT}: the file is empty (expected {expected})"])
    if format is None:
        format = "json" if text.lstrip().startswith("{") else "yaml"
    if format == "json":
        return _parse_json(text, source)
    if format == "yaml":
        return _parse_yaml(text, source)
    raise ValueError(f"format must be 'json', 'yaml' or None, got {format!r}")


def _parse_json(text: str, source: str):
    duplicates = []

    def pairs(items):
        seen = set()
        for key, _ in items:
            if key in seen:
                duplicates.append(f"{ROOT}: duplicate key {key!r}")
            seen.add(key)
        return dict(items)

    try:
        return json.loads(text, object_pairs_hook=pairs), duplicates
    except json.JSONDecodeError as e:
        # e.msg never contains the document, so no secret can leak from here.
        raise ConfigError(source, [f"line {e.lineno}, column {e.colno}: JSON syntax error: {e.msg}"]) from None


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys (plain PyYAML keeps the last silently)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates = []

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # "<<" merges may be overridden by explicit keys, by design
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        mark = key_node.start_mark
                        self.duplicates.append(
                            f"line {mark.line + 1}, column {mark.column + 1}: duplicate key {key!r}"
                        )
                    seen.add(key)
                except TypeError:
                    pass  # unhashable key; SafeLoader reports it below
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str):
    loader = _YamlLoader(text)
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        # Built from the parts, not str(e): str(e) quotes the offending line, which may hold a key.
        def at(mark):
            return f"line {mark.line + 1}, column {mark.column + 1}"

        mark = e.problem_mark or e.context_mark
        message = f"{at(mark) if mark else ROOT}: YAML syntax error: {e.problem or e.context}"
        if e.problem and e.context:
            message += f" ({e.context}" + (f" at {at(e.context_mark)})" if e.context_mark else ")")
        raise ConfigError(source, [message]) from None
    except yaml.YAMLError as e:
        raise ConfigError(source, [f"{ROOT}: YAML error: {type(e).__name__}"]) from None
    finally:
        loader.dispose()
    return document, loader.duplicates
