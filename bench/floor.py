"""The same-shape floor: the job's keyed stages with trivial bodies, the baseline our graph is
measured against (``beam_batch`` on the FnApiRunner, ``streaming`` on the BundleBasedDirectRunner).

    messages → FloorParse → FloorDropRepeats (key: insert id) → FloorRoute → (sync|user, IdentifyWork)
             → FloorIdentify (sync|user) → UserBatch → FloorPack (sync#shard) → FloorSend (sync#shard)

What it keeps from the job: the same keys (``dedup_key``, ``identify_key``, ``shard_key``), the
same state cells and timers of each keyed stage (the job's DoFns' own specs, so they cannot
drift), the same ordering helpers (``release_plan``, the sink's ``in_order``), the same record
types and so the same coders, and the same cadence: an update waits in its user's buffer until the watermark
passes its publish time plus the lateness, a user's batch waits for its predecessor, a request
leaves at 75 objects or after ``max_wait_seconds``, a key's requests go in their packed order,
and each request is POSTed to Braze (the simulator) as the job's are.

What it leaves out: every per-event rule. No validation, no event selection or filters, no
user-property diffing, no sanitising, no size accounting, no merging, no retries or outages.
Every (event, sync) with an identifier becomes one attribute object, ``{identifier...,
"bench_source": source}`` (valid for Braze; the source lets the streaming part time each one),
routed through identify, so the floor carries somewhat more objects than the job does (the job
routes events that update nobody past identify, and merges a user's updates in a request).

``python -m bench.floor_job`` runs it as a streaming job (Pub/Sub in, the simulator out), with
the job's options, for the streaming part.
"""
from __future__ import annotations

import time
from typing import Tuple

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.transforms.userstate import TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from pipeline.config import Sync
from transforms.batching import END_OF_WINDOW_MICROS, _PackDoFn, release_plan, release_time
from transforms.packing import MAX_OBJECTS, shard_key
from transforms.braze_client import BrazeClient, build_track_body
from transforms.coders import BATCH, ITEM, REQUEST, WORK, JsonBag, JsonValue, typed
from transforms.dedup import _DropRepeatsDoFn, dedup_key
from transforms.identifiers import IdentifierMapper
from transforms.identify import EXPIRY_SLACK, LAST_TAU, IdentifyDoFn, identify_key, next_tau
from transforms.records import ATTRIBUTES, DELIVERED, IDENTIFY, NO_PREDECESSOR, BrazeItem, IdentifyWork, \
    Outcome, ParsedEvent, Request, UserBatch
from transforms.secrets import resolve_api_key
from transforms.sink import _BrazeSinkDoFn, in_order

BYPASS = "no_insert_id"


def _same_timer(spec: TimerSpec) -> TimerSpec:
    """A job DoFn's timer, as this floor's own: Beam binds a TimerSpec to one callback, so the
    floor copies its name and time domain (a state spec it takes as it is)."""
    return TimerSpec(spec.name, spec.time_domain)
SOURCE_ATTRIBUTE = "bench_source"


class _FloorParseDoFn(beam.DoFn):
    """Decode; every JSON object in the message is an event (anything else is dropped)."""

    def process(self, message, timestamp=beam.DoFn.TimestampParam):
        if isinstance(message, (bytes, bytearray)):
            data, message_id = bytes(message), None
        else:
            data, message_id = bytes(message.data or b""), message.message_id
        message_id = message_id or str(hash(data))
        publish_ms = int(timestamp.micros // 1000) if timestamp.micros > 0 else 0
        try:
            decoded = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        for index, raw in enumerate(decoded if isinstance(decoded, list) else [decoded]):
            if isinstance(raw, dict):
                insert_id = raw.get("insert_id") or raw.get("$insert_id") or raw.get("uuid")
                yield ParsedEvent(f"{message_id}/{index}", publish_ms, insert_id and str(insert_id), publish_ms, raw)


class _FloorKeyByInsertIdDoFn(beam.DoFn):
    def process(self, parsed):
        key = dedup_key(parsed)
        if key is None:
            yield pvalue.TaggedOutput(BYPASS, parsed)
        else:
            yield key, parsed


class _FloorDropRepeatsDoFn(beam.DoFn):
    """``_DropRepeatsDoFn``'s state and timer (its own specs): remember a key for the window."""

    SEEN = _DropRepeatsDoFn.SEEN
    FORGET = _same_timer(_DropRepeatsDoFn.FORGET)

    def __init__(self, window_seconds: float):
        self._window = window_seconds

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam,
                seen=beam.DoFn.StateParam(SEEN), forget=beam.DoFn.TimerParam(FORGET)):
        if seen.read():
            return
        seen.write(1)
        forget.set(min(timestamp + self._window, window.max_timestamp()))
        yield element[1]

    @on_timer(FORGET)
    def forget(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()


class _FloorRouteDoFn(beam.DoFn):
    """Per sync with an identifier: one update of the user, carrying its object's fields."""

    def __init__(self, syncs: Tuple[Sync, ...]):
        self._syncs = syncs
        self._mappers = None

    def setup(self):
        self._mappers = [(s.name, IdentifierMapper(s.identifier, s.users.update_existing_only)) for s in self._syncs]

    def process(self, parsed):
        for name, mapper in self._mappers:
            user_key = mapper.user_key(parsed.event)
            if user_key is not None:
                fields = mapper.fields(user_key)
                fields[SOURCE_ATTRIBUTE] = parsed.source
                yield identify_key(name, user_key), IdentifyWork(parsed.source, parsed.publish_time_ms,
                                                                 parsed.time_ms, fields, (), ())


class _FloorIdentifyDoFn(beam.DoFn):
    """``IdentifyDoFn``'s state, timers and flush cadence; the user state only counts."""

    USER, PENDING, FLUSH_DUE = IdentifyDoFn.USER, IdentifyDoFn.PENDING, IdentifyDoFn.FLUSH_DUE
    EXPIRY, FLUSH = _same_timer(IdentifyDoFn.EXPIRY), _same_timer(IdentifyDoFn.FLUSH)

    def __init__(self, lateness_seconds: float, ttl_seconds: float):
        self._lateness = lateness_seconds
        self._ttl = ttl_seconds

    def process(self, element, timestamp=beam.DoFn.TimestampParam, pending=beam.DoFn.StateParam(PENDING),
                flush_due=beam.DoFn.StateParam(FLUSH_DUE), flush=beam.DoFn.TimerParam(FLUSH)):
        arrived = timestamp.micros / 1e6
        JsonBag(pending).add([arrived, element[1]])
        due = flush_due.read()
        if due is None or arrived + self._lateness < due:
            flush.set(Timestamp.of(arrived + self._lateness))
            flush_due.write(arrived + self._lateness)

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, fired_at=beam.DoFn.TimestampParam,
                 user_state=beam.DoFn.StateParam(USER), pending=beam.DoFn.StateParam(PENDING),
                 flush_due=beam.DoFn.StateParam(FLUSH_DUE), flush=beam.DoFn.TimerParam(FLUSH),
                 expiry=beam.DoFn.TimerParam(EXPIRY)):
        user_state, pending = JsonValue(user_state), JsonBag(pending)
        now = fired_at.micros / 1e6
        entries = [(a, WORK(w)) for a, w in pending.read()]
        go = [w for a, w in entries if a + self._lateness <= now + 1e-6]
        keep = [(a, w) for a, w in entries if a + self._lateness > now + 1e-6]
        pending.clear()
        for entry in keep:
            pending.add(list(entry))
        if keep:
            due = min(a for a, _ in keep) + self._lateness
            flush.set(Timestamp.of(due))
            flush_due.write(due)
        else:
            flush_due.clear()
        if not go:
            return
        sync, user_key = key.split("|", 1)
        state = user_state.read() or {"n": 0}
        deadline = min(fired_at.micros / 1e6 + self._ttl, LAST_TAU / 1e6)  # event time, as the job's
        if state.get("e") is None or deadline - state["e"] > self._ttl * EXPIRY_SLACK:
            expiry.set(Timestamp.of(deadline))
            state["e"] = deadline
        last_tau = state.get("t")
        tau = next_tau(last_tau, fired_at.micros)
        state["n"] += len(go)
        state["t"] = tau
        user_state.write(state)
        items = tuple(BrazeItem(sync, user_key, ATTRIBUTES, w.fields, (w.source,), IDENTIFY, w.publish_time_ms)
                      for w in go)
        yield TimestampedValue(UserBatch(sync, user_key, items, tau, NO_PREDECESSOR if last_tau is None else last_tau),
                               Timestamp(micros=tau))

    @on_timer(EXPIRY)
    def expire(self, user_state=beam.DoFn.StateParam(USER)):
        user_state.clear()


class _FloorPackDoFn(beam.DoFn):
    """``_PackDoFn``'s state and timers: hold a batch until its predecessor, fill, number."""

    HELD, RELEASE_AT, ITEMS, FILL = _PackDoFn.HELD, _PackDoFn.RELEASE_AT, _PackDoFn.ITEMS, _PackDoFn.FILL
    NEXT_SEQ = _PackDoFn.NEXT_SEQ
    RELEASE, BUFFERING = _same_timer(_PackDoFn.RELEASE), _same_timer(_PackDoFn.BUFFERING)
    WINDOW_END = _same_timer(_PackDoFn.WINDOW_END)

    def __init__(self, max_wait_seconds: float):
        self._max_wait = max_wait_seconds

    def process(self, element, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam,
                held=beam.DoFn.StateParam(HELD), release_at=beam.DoFn.StateParam(RELEASE_AT),
                items=beam.DoFn.StateParam(ITEMS), fill=beam.DoFn.StateParam(FILL),
                next_seq=beam.DoFn.StateParam(NEXT_SEQ), release=beam.DoFn.TimerParam(RELEASE),
                buffering=beam.DoFn.TimerParam(BUFFERING), window_end=beam.DoFn.TimerParam(WINDOW_END)):
        key, batch = element
        cells = (JsonBag(items, ITEM), JsonValue(fill), next_seq, buffering)
        if timestamp.micros >= window.max_timestamp().micros - END_OF_WINDOW_MICROS:
            held = JsonBag(held, BATCH)
            ready, _ = release_plan(held.read() + [batch], MAX_TIMESTAMP.micros)
            held.clear()
            release_at.clear()
            for b in ready:
                yield from self._add(key, b.items, cells, None, None)
            yield from self._flush(key, cells)
        elif batch.after == NO_PREDECESSOR:
            yield from self._add(key, batch.items, cells, window, window_end)
        else:
            JsonBag(held, BATCH).add(batch)
            at = release_at.read()
            if at is None or release_time(batch) < at:
                release.set(Timestamp(micros=release_time(batch)))
                release_at.write(release_time(batch))

    @on_timer(RELEASE)
    def on_release(self, key=beam.DoFn.KeyParam, fired_at=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam,
                   held=beam.DoFn.StateParam(HELD), release_at=beam.DoFn.StateParam(RELEASE_AT),
                   items=beam.DoFn.StateParam(ITEMS), fill=beam.DoFn.StateParam(FILL),
                   next_seq=beam.DoFn.StateParam(NEXT_SEQ), release=beam.DoFn.TimerParam(RELEASE),
                   buffering=beam.DoFn.TimerParam(BUFFERING), window_end=beam.DoFn.TimerParam(WINDOW_END)):
        held = JsonBag(held, BATCH)
        ready, keep = release_plan(held.read(), fired_at.micros)
        held.clear()
        for b in keep:
            held.add(b)
        if keep:
            at = min(release_time(b) for b in keep)
            release.set(Timestamp(micros=at))
            release_at.write(at)
        else:
            release_at.clear()
        cells = (JsonBag(items, ITEM), JsonValue(fill), next_seq, buffering)
        for b in ready:
            yield from self._add(key, b.items, cells, window, window_end)

    @on_timer(BUFFERING)
    def on_buffering_end(self, key=beam.DoFn.KeyParam, items=beam.DoFn.StateParam(ITEMS),
                         fill=beam.DoFn.StateParam(FILL), next_seq=beam.DoFn.StateParam(NEXT_SEQ),
                         buffering=beam.DoFn.TimerParam(BUFFERING)):
        yield from self._flush(key, (JsonBag(items, ITEM), JsonValue(fill), next_seq, buffering), cancel=False)

    @on_timer(WINDOW_END)
    def on_window_end(self, key=beam.DoFn.KeyParam, held=beam.DoFn.StateParam(HELD),
                      release_at=beam.DoFn.StateParam(RELEASE_AT), items=beam.DoFn.StateParam(ITEMS),
                      fill=beam.DoFn.StateParam(FILL), next_seq=beam.DoFn.StateParam(NEXT_SEQ),
                      buffering=beam.DoFn.TimerParam(BUFFERING)):
        held = JsonBag(held, BATCH)
        ready, _ = release_plan(held.read(), MAX_TIMESTAMP.micros)
        held.clear()
        release_at.clear()
        cells = (JsonBag(items, ITEM), JsonValue(fill), next_seq, buffering)
        for b in ready:
            yield from self._add(key, b.items, cells, None, None)
        yield from self._flush(key, cells)

    def _add(self, key, new_items, cells, window, window_end):
        items, fill, _, buffering = cells
        for item in new_items:
            count = fill.read()
            if count is None and window is not None:
                buffering.set(Timestamp.of(time.time() + self._max_wait))
                window_end.set(window.max_timestamp())
            items.add(item)
            count = (count or 0) + 1
            if count >= MAX_OBJECTS:
                yield from self._flush(key, cells)
            else:
                fill.write(count)

    @staticmethod
    def _flush(key, cells, cancel: bool = True):
        items, fill, next_seq, buffering = cells
        batch = items.read()
        if cancel and fill.read() is not None:
            buffering.clear()
        items.clear()
        fill.clear()
        if batch:
            seq = next_seq.read() or 0
            next_seq.write(seq + 1)
            yield key, Request(key, seq, tuple(batch))


class _FloorSendDoFn(beam.DoFn):
    """``_BrazeSinkDoFn``'s state and timers: a key's requests in order, each POSTed once."""

    NEXT_SEQ, EARLY, EARLY_COUNT = _BrazeSinkDoFn.NEXT_SEQ, _BrazeSinkDoFn.EARLY, _BrazeSinkDoFn.EARLY_COUNT
    QUEUE, HOLD = _BrazeSinkDoFn.QUEUE, _BrazeSinkDoFn.HOLD
    RETRY, WINDOW_END = _same_timer(_BrazeSinkDoFn.RETRY), _same_timer(_BrazeSinkDoFn.WINDOW_END)

    def __init__(self, syncs: Tuple[Sync, ...], timeout_seconds: float = 10.0):
        self._syncs = syncs
        self._timeout = timeout_seconds
        self._clients = None

    def setup(self):
        self._clients = {s.name: BrazeClient(s.endpoint, resolve_api_key(s.api_key), self._timeout)
                         for s in self._syncs}

    def teardown(self):
        for client in (self._clients or {}).values():
            client.close()

    def process(self, element, next_seq=beam.DoFn.StateParam(NEXT_SEQ), early=beam.DoFn.StateParam(EARLY),
                early_count=beam.DoFn.StateParam(EARLY_COUNT), hold=beam.DoFn.StateParam(HOLD),
                queue=beam.DoFn.StateParam(QUEUE), retry=beam.DoFn.TimerParam(RETRY),
                window_end=beam.DoFn.TimerParam(WINDOW_END)):
        _, request = element
        due = in_order(request, next_seq, JsonBag(early, REQUEST), early_count)
        if not due:
            return
        JsonValue(hold).read()  # the job checks whether the key holds through an outage
        for r in due:
            yield from self._send(r)

    def _send(self, request: Request):
        self._clients[request.items[0].sync].post_track(build_track_body(request.items)[0])
        for item in request.items:
            for source in item.sources:
                yield Outcome(source, item.sync, item.branch, DELIVERED)

    @on_timer(RETRY)
    def on_retry(self, queue=beam.DoFn.StateParam(QUEUE)):
        queue.clear()

    @on_timer(WINDOW_END)
    def on_window_end(self, early=beam.DoFn.StateParam(EARLY)):
        for r in sorted(JsonBag(early, REQUEST).read(), key=lambda r: r.seq):
            yield from self._send(r)


class SameShapeFloor(beam.PTransform):
    """Messages (bytes or PubsubMessage) → ``Outcome`` per delivered object."""

    def __init__(self, syncs: Tuple[Sync, ...], *, shards: int = 4, max_batch_wait_seconds: float = 2.0,
                 dedup_window_seconds: float = 600.0, lateness_seconds: float = 2.0,
                 user_state_ttl_days: float = 30.0, timeout_seconds: float = 10.0):
        super().__init__()
        self._syncs = tuple(s for s in syncs if s.enabled)
        self._shards = shards
        self._max_wait = max_batch_wait_seconds
        self._window = dedup_window_seconds
        self._lateness = lateness_seconds
        self._ttl = user_state_ttl_days * 86400.0
        self._timeout = timeout_seconds

    def expand(self, messages):
        parsed = typed(messages | "FloorParse" >> beam.ParDo(_FloorParseDoFn()), ParsedEvent)
        keyed = parsed | "FloorKeyByInsertId" >> beam.ParDo(_FloorKeyByInsertIdDoFn()).with_outputs(
            BYPASS, main="keyed")
        kept = typed(typed(keyed.keyed, Tuple[str, ParsedEvent])
                     | "FloorDropRepeats" >> beam.ParDo(_FloorDropRepeatsDoFn(self._window)), ParsedEvent)
        events = typed((kept, typed(keyed[BYPASS], ParsedEvent)) | "FloorUnique" >> beam.Flatten(), ParsedEvent)
        work = typed(events | "FloorRoute" >> beam.ParDo(_FloorRouteDoFn(self._syncs)), Tuple[str, IdentifyWork])
        batches = typed(work | "FloorIdentify" >> beam.ParDo(_FloorIdentifyDoFn(self._lateness, self._ttl)),
                        UserBatch)
        shards = self._shards
        requests = typed(
            batches
            | "FloorKeyByShard" >> beam.Map(lambda b: (shard_key(b.sync, b.user_key, shards), b)).with_output_types(
                Tuple[str, UserBatch])
            | "FloorPack" >> beam.ParDo(_FloorPackDoFn(self._max_wait)), Tuple[str, Request])
        return typed(requests | "FloorSend" >> beam.ParDo(_FloorSendDoFn(self._syncs, self._timeout)), Outcome)
