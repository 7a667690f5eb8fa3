"""The project's own DoFns and pure functions run without a Beam runner, so ``core`` and the
baselines measure the team's code as it changes: ``KeyedDoFnDriver`` calls a stateful DoFn with
in-memory state (and fires its timer callbacks when told), ``PureJob`` chains parse → route →
identify, ``Packer`` packs as the packer does."""
from __future__ import annotations

import collections
import inspect
from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms import core as beam_core
from apache_beam.transforms import userstate
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from pipeline.config import Sync
from transforms.packing import EMPTY_FILL, RequestLimits, collapse, pack_more, shard_key
from transforms.braze_client import build_track_body
from transforms.identify import IdentifyDoFn
from transforms.parse import parse_message
from transforms.records import BrazeItem, ParsedEvent
from transforms.route import IDENTIFY_TAG, _RouteDoFn
from transforms.sanitize import DEFAULT_MAX_ARRAY_LENGTH


class _Value:
    """ReadModifyWriteState over a dict slot; ``stateless`` forgets every write."""

    __slots__ = ("_store", "_slot", "_stateless")

    def __init__(self, store: dict, slot, stateless: bool):
        self._store, self._slot, self._stateless = store, slot, stateless

    def read(self):
        return self._store.get(self._slot)

    def write(self, value):
        if not self._stateless:
            self._store[self._slot] = value

    def clear(self):
        self._store.pop(self._slot, None)


class _Bag(_Value):
    def read(self):
        return list(self._store.get(self._slot, ()))

    def add(self, value):
        if not self._stateless:
            self._store.setdefault(self._slot, []).append(value)


class _Combining(_Value):
    def __init__(self, store, slot, stateless, combine_fn):
        super().__init__(store, slot, stateless)
        self._fn = combine_fn

    def read(self):
        return self._fn.extract_output(self._store.get(self._slot, self._fn.create_accumulator()))

    def add(self, value):
        if not self._stateless:
            acc = self._store.get(self._slot, self._fn.create_accumulator())
            self._store[self._slot] = self._fn.add_input(acc, value)


class _NoTimer:
    def set(self, *args, **kwargs):
        pass

    def clear(self, *args, **kwargs):
        pass


_NO_TIMER = _NoTimer()


class _RecordedTimer:
    """A timer whose last setting is kept in ``store[slot]`` (cleared: removed)."""

    __slots__ = ("_store", "_slot")

    def __init__(self, store: dict, slot):
        self._store, self._slot = store, slot

    def set(self, timestamp, *args, **kwargs):
        self._store[self._slot] = timestamp

    def clear(self, *args, **kwargs):
        self._store.pop(self._slot, None)


def _plan_of(method) -> list:
    """``(parameter, kind, state spec)`` of a DoFn method's state, timer, key, window and
    timestamp parameters."""
    plan = []
    for name, param in list(inspect.signature(method).parameters.items())[1:]:
        default = param.default
        if isinstance(default, beam_core._StateDoFnParam):
            plan.append((name, "state", default.state_spec))
        elif isinstance(default, beam_core._TimerDoFnParam):
            plan.append((name, "timer", None))
        elif default is beam.DoFn.KeyParam:
            plan.append((name, "key", None))
        elif default is beam.DoFn.WindowParam:
            plan.append((name, "window", None))
        elif default is beam.DoFn.TimestampParam:
            plan.append((name, "timestamp", None))
    return plan


class KeyedDoFnDriver:
    """Calls a stateful DoFn's ``process`` for ``(key, value)`` elements with in-memory state.

    The parameters are read from the DoFn's signature (state, timers, key, window), so a new
    state cell or timer in the DoFn needs no change here. Timers set by the DoFn never fire by
    themselves (the benchmark measures per-element work); ``fire`` calls a timer callback when
    the caller decides. ``record_timers``: each timer's last setting is kept in ``timers``
    under ``(key, parameter name)``, for a test that fires them when they are due."""

    def __init__(self, dofn: beam.DoFn, stateless: bool = False, record_timers: bool = False):
        self.dofn = dofn
        self.stateless = stateless
        self.store: dict = {}
        self.timers: Optional[dict] = {} if record_timers else None
        self._kwargs: dict = {}  # key → process's arguments; (callback, key) → a timer callback's
        self._plans: dict = {}  # timer callback → its parameters
        if hasattr(dofn, "setup"):
            dofn.setup()
        self._plan = _plan_of(dofn.process)

    def fire(self, callback: str, key, timestamp: Timestamp) -> list:
        """The outputs of the timer callback ``callback`` (a method name) for ``key``."""
        prepared = self._kwargs.get((callback, key))
        if prepared is None:
            plan = self._plans.get(callback)
            if plan is None:
                plan = self._plans[callback] = _plan_of(getattr(type(self.dofn), callback))
            stamp = next((name for name, kind, _ in plan if kind == "timestamp"), None)
            prepared = self._kwargs[(callback, key)] = (getattr(self.dofn, callback), self._build(plan, key), stamp)
        method, kwargs, stamp = prepared
        if stamp is not None:
            kwargs[stamp] = timestamp
        return list(method(**kwargs) or ())

    def _state(self, key, spec):
        slot = (key, spec.name)
        if isinstance(spec, userstate.BagStateSpec):
            return _Bag(self.store, slot, self.stateless)
        if isinstance(spec, userstate.CombiningValueStateSpec):
            return _Combining(self.store, slot, self.stateless, spec.combine_fn)
        return _Value(self.store, slot, self.stateless)

    def _arguments(self, key) -> dict:
        """The keyword arguments of ``process`` for ``key``, built once per key (the harness's
        own cost is not the DoFn's)."""
        kwargs = self._kwargs.get(key)
        if kwargs is None:
            kwargs = self._kwargs[key] = self._build(self._plan, key)
        return kwargs

    def _build(self, plan, key) -> dict:
        kwargs = {}
        for name, kind, spec in plan:
            if kind == "state":
                kwargs[name] = self._state(key, spec)
            elif kind == "timer":
                kwargs[name] = _NO_TIMER if self.timers is None else _RecordedTimer(self.timers, (key, name))
            elif kind == "key":
                kwargs[name] = key
            elif kind == "window":
                kwargs[name] = _WINDOW
            else:
                kwargs[name] = _TIME_ZERO
        return kwargs

    def process(self, element):
        return self.dofn.process(element, **self._arguments(element[0])) or ()


_WINDOW = GlobalWindow()
_TIME_ZERO = Timestamp(0)


class PureJob:
    """parse → route → identify (+ track) with the job's own functions and DoFns, no Beam runner.

    ``stateless_identify=True`` runs the same identify code with a state that never remembers:
    every selected property an event carries is sent, as a forwarder without state would."""

    def __init__(self, syncs: Sequence[Sync], stateless_identify: bool = False, lateness_seconds: float = 0.0):
        self.syncs = tuple(syncs)
        self.route = _RouteDoFn(self.syncs)
        self.route.setup()
        self.lateness = lateness_seconds
        self.identify = KeyedDoFnDriver(
            IdentifyDoFn({s.name: s.users.properties for s in self.syncs}, lateness_seconds=lateness_seconds,
                         max_array_length=DEFAULT_MAX_ARRAY_LENGTH),
            stateless=stateless_identify)

    def parse(self, data: bytes, message_id: str, publish_time_ms: Optional[int] = None) -> List[ParsedEvent]:
        return [r for r in parse_message(data, message_id, publish_time_ms) if isinstance(r, ParsedEvent)]

    def route_event(self, parsed: ParsedEvent) -> Tuple[List[BrazeItem], list]:
        """(track items, identify work)"""
        track, work = [], []
        for out in self.route.process(parsed):
            if isinstance(out, pvalue.TaggedOutput):
                if out.tag == IDENTIFY_TAG:
                    work.append(out.value)
            else:
                track.extend(out.items)
        return track, work

    def identify_work(self, work) -> List[BrazeItem]:
        """The objects of the user's batch: the attribute update, then the event's own objects
        (``lateness_seconds=0``: identify applies each update as it arrives)."""
        items: List[BrazeItem] = []
        for out in self.identify.process(work):
            if isinstance(out, TimestampedValue):
                items.extend(out.value.items)
        return items

    def identify_works(self, works) -> List[BrazeItem]:
        """The objects of a bundle's identify work as the job makes them: with a reorder buffer
        (``lateness_seconds > 0``) each update waits in its user's buffer, and every buffer the
        bundle touched is flushed once the bundle is in (as the watermark timer does)."""
        if self.lateness <= 0:
            return [item for w in works for item in self.identify_work(w)]
        touched = dict.fromkeys(w[0] for w in works if not self.identify.process(w))
        flush_at = Timestamp.of(self.lateness)  # the driver gives every element timestamp 0
        items: List[BrazeItem] = []
        for key in touched:
            for out in self.identify.fire("on_flush", key, flush_at):
                if isinstance(out, TimestampedValue):
                    items.extend(out.value.items)
        return items

    def event_items(self, parsed: ParsedEvent) -> List[BrazeItem]:
        """Every Braze object one event gives, attributes first (as Braze applies them)."""
        track, work = self.route_event(parsed)
        attributes = [item for w in work for item in self.identify_work(w)]
        return attributes + track

    def message_items(self, data: bytes, message_id: str, publish_time_ms: Optional[int] = None):
        """[(parsed event, [items])] for one message."""
        return [(p, self.event_items(p)) for p in self.parse(data, message_id, publish_time_ms)]


def pack_requests(items: Sequence[BrazeItem], shards: int = 4) -> List[List[BrazeItem]]:
    """Items → requests as the job packs them: by (sync, shard of user), in order, within
    Braze's limits (without the time bound, which only ever makes requests smaller)."""
    packer = Packer(shards)
    return packer.add(items) + packer.flush()


class Packer:
    """``pack_requests`` fed in chunks: each key's open request waits for the next chunk, as the
    packer's state does between bundles."""

    def __init__(self, shards: int = 4):
        self.shards = shards
        self.limits = RequestLimits("combined")
        self._open: Dict[str, tuple] = {}

    def add(self, items: Sequence[BrazeItem]) -> List[List[BrazeItem]]:
        """The requests that close with ``items``."""
        by_key: Dict[str, List[BrazeItem]] = collections.defaultdict(list)
        for item in items:
            by_key[shard_key(item.sync, item.user_key, self.shards)].append(item)
        requests: List[List[BrazeItem]] = []
        for key in sorted(by_key):
            batch, fill = self._open.get(key, ([], EMPTY_FILL))
            self._open[key] = pack_more(batch, fill, by_key[key], self.limits, requests)
        return requests

    def flush(self) -> List[List[BrazeItem]]:
        """Every open request, as the packer's timers send them."""
        requests = [collapse(batch) for key, (batch, _) in sorted(self._open.items()) if batch]
        self._open.clear()
        return requests


def encode_requests(batches: Sequence[Sequence[BrazeItem]]) -> List[bytes]:
    return [build_track_body(batch)[0] for batch in batches]
