"""State bytes where they really go, metered in this process at two levels.

* The state channel: the SDK harness reads and writes user state through the Fn API state
  channel (on Dataflow its runner harness serves it from Streaming Engine). ``metered_state()``
  wraps the in-process FnApiRunner's state servicer (``get_raw``, ``append_raw``, ``clear``).
  With no state cache, as Dataflow's harness runs by default (``pipeline/local_runner.py``),
  every ``read()`` of a stored value is a ``get_raw``; writes are buffered and committed once
  per key and bundle, and a value written in a bundle is read back from that buffer. The
  FnApiRunner runs a bounded input in large bundles, so this is the least a streaming runner
  would move.
* Per operation: every ``read()`` (the bytes of all values returned), ``add()`` and
  ``write()`` of a cell (the SDK's runtime state, ``bundle_processor.SynchronousBagRuntimeState``,
  on which ReadModifyWrite cells are built), as if each element were its own bundle and every
  write were committed: the most a streaming runner would move (more, where a stage writes one
  cell several times for one element).

Both wrap Beam's classes for the duration of a ``with`` block, in the benchmark process only (the
job's code path is untouched), and count per stateful step and state cell: calls, bytes read,
bytes written, clears, and distinct keys. Timers travel on the data channel and are not counted.
"""
from __future__ import annotations

import collections
import contextlib
from typing import Dict, Iterator, Sequence, Tuple

from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import bundle_processor

# Step name fragments → stage, the job's and the floor's (first match wins).
STAGES: Sequence[Tuple[str, str]] = (
    ("DropRepeats", "dedup"),
    ("Identify", "identify"),
    ("Pack", "pack"),
    ("DecideMerges", "merge"),
    ("SendInOrder", "sink"),
    ("WriteToBraze", "sink"),
    ("FloorSend", "sink"),
)


def stage_of(transform_id: str) -> str:
    for fragment, stage in STAGES:
        if fragment in transform_id:
            return stage
    return transform_id


class StateMeter:
    """Tallies of one metered run; ``per_event(events)`` turns them into the report."""

    _FIELDS = ("reads", "bytes_read", "writes", "bytes_written", "clears")

    def __init__(self):
        self._tallies: Dict[Tuple[str, str], list] = {}  # (step id, cell) → [reads, bytes, writes, bytes, clears]
        self._keys: Dict[str, set] = collections.defaultdict(set)  # step id → hashes of its keys

    def _tally(self, state_key) -> list:
        user = state_key.bag_user_state
        step, cell = user.transform_id, user.user_state_id
        tally = self._tallies.get((step, cell))
        if tally is None:
            tally = self._tallies[(step, cell)] = [0, 0, 0, 0, 0]
        self._keys[step].add(hash(user.key))
        return tally

    def read(self, state_key, data: bytes, size: int = -1) -> None:
        tally = self._tally(state_key)
        tally[0] += 1
        tally[1] += len(data) if size < 0 else size

    def write(self, state_key, data: bytes, size: int = -1) -> None:
        tally = self._tally(state_key)
        tally[2] += 1
        tally[3] += len(data) if size < 0 else size

    def clear(self, state_key) -> None:
        self._tally(state_key)[4] += 1

    def per_event(self, events: int) -> dict:
        """Per stage: bytes read and written per event, calls per event, distinct keys, and the
        same per state cell with the mean size of a value read and written; plus the total."""
        stages: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        by_cell: Dict[str, dict] = collections.defaultdict(dict)
        keys: Dict[str, set] = collections.defaultdict(set)
        for (step, cell), values in sorted(self._tallies.items()):
            stage = stage_of(step)
            tally = collections.Counter(dict(zip(self._FIELDS, values)))
            stages[stage].update(tally)
            by_cell[stage][cell] = {**_rates(tally, events),
                                    "mean_bytes_per_read": round(tally["bytes_read"] / max(1, tally["reads"]), 1),
                                    "mean_bytes_per_write": round(tally["bytes_written"] / max(1, tally["writes"]), 1)}
            keys[stage] |= self._keys[step]
        out = {stage: {**_rates(tally, events), "keys": len(keys[stage]), "cells": by_cell[stage]}
               for stage, tally in stages.items()}
        total = sum(s["bytes_per_event"] for s in out.values())
        return {"stages": out, "bytes_per_event": round(total, 1), "events": events}


def _rates(tally, events: int) -> dict:
    events = max(1, events)
    read, written = tally["bytes_read"], tally["bytes_written"]
    return {
        "bytes_read_per_event": round(read / events, 1),
        "bytes_written_per_event": round(written / events, 1),
        "bytes_per_event": round((read + written) / events, 1),
        "calls_per_event": round((tally["reads"] + tally["writes"] + tally["clears"]) / events, 3),
    }


@contextlib.contextmanager
def metered_state() -> Iterator["Meters"]:
    """Meter the user state of every in-process FnApiRunner run inside the block."""
    servicer = worker_handlers.StateServicer
    bag = bundle_processor.SynchronousBagRuntimeState
    original = servicer.get_raw, servicer.append_raw, servicer.clear
    original_bag = bag.read, bag.add, bag.clear
    meters = Meters(StateMeter(), StateMeter())
    channel, operations = meters

    def get_raw(self, state_key, continuation_token=None):
        data, token = original[0](self, state_key, continuation_token)
        if state_key.WhichOneof("type") == "bag_user_state":
            channel.read(state_key, data)
        return data, token

    def append_raw(self, state_key, data):
        if state_key.WhichOneof("type") == "bag_user_state":
            channel.write(state_key, data)
        return original[1](self, state_key, data)

    def clear(self, state_key):
        if state_key.WhichOneof("type") == "bag_user_state":
            channel.clear(state_key)
        return original[2](self, state_key)

    def bag_read(self):
        values = list(original_bag[0](self))
        operations.read(self._state_key, b"", sum(_size(self, v) for v in values))
        return values

    def bag_add(self, value):
        operations.write(self._state_key, b"", _size(self, value))
        return original_bag[1](self, value)

    def bag_clear(self):
        operations.clear(self._state_key)
        return original_bag[2](self)

    servicer.get_raw, servicer.append_raw, servicer.clear = get_raw, append_raw, clear
    bag.read, bag.add, bag.clear = bag_read, bag_add, bag_clear
    try:
        yield meters
    finally:
        servicer.get_raw, servicer.append_raw, servicer.clear = original
        bag.read, bag.add, bag.clear = original_bag


def _size(bag_state, value) -> int:
    if isinstance(value, bytes):
        return len(value)  # the job's JSON cells hold bytes (transforms.coders.STATE_CODER)
    return len(bag_state._value_coder.encode(value))


class Meters(collections.namedtuple("Meters", "channel operations")):
    """The two meters of one block: the state channel's traffic, and every cell operation's."""

    def per_event(self, events: int) -> dict:
        channel = self.channel.per_event(events)
        operations = self.operations.per_event(events)
        return {**channel, "per_operation": operations,
                "per_operation_bytes_per_event": operations["bytes_per_event"]}
