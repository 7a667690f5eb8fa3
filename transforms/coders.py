"""Explicit coders for every record that crosses a stage and every state value.

Without them Beam falls back to pickling NamedTuples (and recursing through every nested value,
which a deep value turns into a ``RecursionError``), which is slow, ties the bytes to the class
pickle, and changes with Beam releases. Every record here holds only JSON values (parse refuses
events nested deeper than ``transforms.parse.MAX_EVENT_DEPTH``), so each is encoded as one orjson
array of its fields: fast, compact and the same on every worker. State keys are plain ``str``
(Beam's deterministic ``StrUtf8Coder``), so no coder here needs to be deterministic.

``register()`` puts them in Beam's coder registry; ``transforms/__init__.py`` calls it, so any
process that imports the job's transforms (the launcher, every worker) uses them, and the
PCollections that carry them are typed (``with_output_types``) so Beam picks them.
"""
from __future__ import annotations

import struct
from typing import Any, Callable, Tuple

import orjson
from apache_beam import coders
from apache_beam.typehints.native_type_compatibility import convert_to_beam_type

from transforms.records import (
    BrazeItem, DeadLetter, DeviceSighting, IdentifyWork, MergeRequest, Outcome, ParsedEvent, Request, ShadowRequest,
    UserBatch,
)

__all__ = ["JsonCoder", "RecordCoder", "DeadLetterCoder", "register", "typed", "ITEM", "WORK", "BATCH", "REQUEST",
           "MERGE", "STATE_CODER", "JsonValue", "JsonBag"]


def _default(value):
    if isinstance(value, tuple):  # a nested NamedTuple
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _dumps(value) -> bytes:
    return orjson.dumps(value, default=_default)


class JsonCoder(coders.Coder):
    """Any JSON value (dicts, lists, str, numbers, bools, None) ↔ orjson bytes. For state values."""

    def encode(self, value) -> bytes:
        return _dumps(value)

    def decode(self, encoded: bytes):
        return orjson.loads(encoded)

    def is_deterministic(self) -> bool:
        return False  # two equal dicts with keys in another order encode differently

    def to_type_hint(self):
        return Any

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


# How each record is rebuilt from its decoded JSON array: the tuple fields come back as lists.
def _item(f) -> BrazeItem:
    return BrazeItem(f[0], f[1], f[2], f[3], tuple(f[4]), f[5], f[6], f[7], f[8])


def _work(f) -> IdentifyWork:
    return IdentifyWork(f[0], f[1], f[2], f[3], tuple(tuple(u) for u in f[4]), tuple(_item(i) for i in f[5]))


def _batch(f) -> UserBatch:
    return UserBatch(f[0], f[1], tuple(_item(i) for i in f[2]), f[3], f[4])


def _request(f) -> Request:
    return Request(f[0], f[1], tuple(_item(i) for i in f[2]))


def _merge(f) -> MergeRequest:
    return MergeRequest(f[0], f[1], f[2], f[3], tuple(f[4]))


ITEM: Callable[[list], BrazeItem] = _item
WORK: Callable[[list], IdentifyWork] = _work
BATCH: Callable[[list], UserBatch] = _batch
REQUEST: Callable[[list], Request] = _request
MERGE: Callable[[list], MergeRequest] = _merge


class RecordCoder(coders.Coder):
    """A NamedTuple of JSON values ↔ the orjson array of its fields."""

    def __init__(self, record_type: type, rebuild: Callable[[list], Any] = None):
        self._type = record_type
        self._rebuild = rebuild or (lambda fields, t=record_type: t(*fields))

    def encode(self, value) -> bytes:
        return _dumps(value)

    def decode(self, encoded: bytes):
        return self._rebuild(orjson.loads(encoded))

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return self._type

    def __eq__(self, other):
        return type(self) is type(other) and self._type is other._type

    def __hash__(self):
        return hash((type(self), self._type))

    def __repr__(self):
        return f"RecordCoder({self._type.__name__})"


_DEAD_LETTER_DATA = 4  # the position of ``data`` in DeadLetter
_LENGTH = struct.Struct(">I")


class DeadLetterCoder(coders.Coder):
    """DeadLetter ↔ a length-prefixed JSON header of its other fields, then ``data`` raw (up to
    10 MB of bytes: no base64, no copy into JSON)."""

    def encode(self, value: DeadLetter) -> bytes:
        header = list(value)
        data = header.pop(_DEAD_LETTER_DATA)
        encoded = _dumps(header)
        return _LENGTH.pack(len(encoded)) + encoded + bytes(data)

    def decode(self, encoded: bytes) -> DeadLetter:
        (size,) = _LENGTH.unpack_from(encoded)
        header = orjson.loads(encoded[4:4 + size])
        header.insert(_DEAD_LETTER_DATA, encoded[4 + size:])
        header[9] = tuple(header[9])  # sources
        return DeadLetter(*header)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return DeadLetter

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


class _ParsedEventCoder(RecordCoder):
    def __init__(self):
        super().__init__(ParsedEvent)


class _BrazeItemCoder(RecordCoder):
    def __init__(self):
        super().__init__(BrazeItem, _item)


class _IdentifyWorkCoder(RecordCoder):
    def __init__(self):
        super().__init__(IdentifyWork, _work)


class _UserBatchCoder(RecordCoder):
    def __init__(self):
        super().__init__(UserBatch, _batch)


class _RequestCoder(RecordCoder):
    def __init__(self):
        super().__init__(Request, _request)


class _OutcomeCoder(RecordCoder):
    def __init__(self):
        super().__init__(Outcome)


class _ShadowRequestCoder(RecordCoder):
    def __init__(self):
        super().__init__(ShadowRequest)


class _DeviceSightingCoder(RecordCoder):
    def __init__(self):
        super().__init__(DeviceSighting)


class _MergeRequestCoder(RecordCoder):
    def __init__(self):
        super().__init__(MergeRequest, _merge)


_REGISTERED: Tuple[Tuple[type, type], ...] = (
    (ParsedEvent, _ParsedEventCoder),
    (BrazeItem, _BrazeItemCoder),
    (IdentifyWork, _IdentifyWorkCoder),
    (UserBatch, _UserBatchCoder),
    (Request, _RequestCoder),
    (Outcome, _OutcomeCoder),
    (ShadowRequest, _ShadowRequestCoder),
    (DeadLetter, DeadLetterCoder),
    (DeviceSighting, _DeviceSightingCoder),
    (MergeRequest, _MergeRequestCoder),
)


def register() -> None:
    """Register every record's coder with Beam (idempotent)."""
    for record_type, coder_class in _REGISTERED:
        coders.registry.register_coder(record_type, coder_class)


def typed(pcoll, type_hint):
    """Declare what a PCollection holds, so Beam picks the coder registered for it.

    A multi-output ParDo types its tagged outputs as ``Any`` (then pickled); this sets the
    element type of one output, as ``with_output_types`` does for a main output."""
    pcoll.element_type = convert_to_beam_type(type_hint)
    return pcoll


# --------------------------------------------------------------------------------------------
# State cells. State is stored as orjson bytes under Beam's standard BytesCoder, not under a
# coder of ours: a running job's state must stay readable by the next version of the job
# (``--update``), and a standard coder's spec never changes, while a custom coder's spec is a
# pickle of its class and changes when the class moves. The JSON inside is ours to evolve.

STATE_CODER = coders.BytesCoder()


class JsonValue:
    """A ReadModifyWrite cell holding one JSON value (or record, rebuilt by ``rebuild``)."""

    def __init__(self, cell, rebuild: Callable[[Any], Any] = None):
        self._cell = cell
        self._rebuild = rebuild

    def read(self):
        raw = self._cell.read()
        if raw is None:
            return None
        value = orjson.loads(raw)
        return self._rebuild(value) if self._rebuild is not None else value

    def write(self, value) -> None:
        self._cell.write(_dumps(value))

    def clear(self) -> None:
        self._cell.clear()


class JsonBag:
    """A Bag cell of JSON values (or records, rebuilt by ``rebuild``); ``read`` decodes all."""

    def __init__(self, cell, rebuild: Callable[[Any], Any] = None):
        self._cell = cell
        self._rebuild = rebuild

    def read(self) -> list:
        rebuild = self._rebuild
        values = [orjson.loads(raw) for raw in self._cell.read()]
        return [rebuild(v) for v in values] if rebuild is not None else values

    def add(self, value) -> None:
        self._cell.add(_dumps(value))

    def clear(self) -> None:
        self._cell.clear()
