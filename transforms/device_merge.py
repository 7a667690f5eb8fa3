"""Anonymous devices, merged into their user's profile: the stateful step that decides when.

For syncs with ``identifier.anonymous``, route reports every device it sees
(``transforms.route``, tag ``anonymous``): ``(anonymous_key(sync, device), DeviceSighting)``,
with the event's external id, or None when the event went to the device's alias profile.
``DecideMerges`` keeps per (sync, device) what ``transforms.anonymous`` needs (the first user
seen on the device, when it was last anonymous, whether the merge was requested) and asks for
one ``/users/identify`` per device, when ``on_event`` / ``on_timer`` say it is due; the requests
go to ``transforms.identify_sink``.

Time. A device's merge waits ``settle_seconds`` after its last anonymous event, in event time:
the element timestamps are Pub/Sub publish times, and the wake-up is a watermark timer, so it
fires once every event published up to then has been read. So events that arrive out of order
are all seen first, a bounded run (tests, a replay, a drain) flushes every pending merge at its
end, and no processing-time timer is left waiting. The request leaves stamped with that time;
the identify sink holds it until the ``/users/track`` sink has also passed it
(``transforms.identify_sink``), so the alias profile's objects have been sent before Braze is
asked to merge it (Braze silently drops an identify whose alias does not exist yet).

State per key, read once per sighting and written only when it changes: ``{"u": first user,
"a": last anonymous time, "s": 1 once requested, "src": the source of the event that named the
user, "e": expiry}`` (about 100 bytes). It expires ``ttl_seconds`` (``--user_state_ttl_days``)
after the device was last seen, by publish time, moved only when that moves it by over 1%.

Both timers are watermark timers on purpose. A processing-time timer holds the step's output
watermark at the time of the element that set it until it fires (Beam's Fn API sets its hold
to the element's timestamp): a 30-day expiry would hold back the identify sink, which waits for
the watermark, for 30 days. A watermark timer holds at its own, future, time.

Failures: a sighting or a wake-up that fails unexpectedly becomes a dead letter (stage
``anonymous``, reason ``internal_error``) holding the device's key and state; the event itself
stays accounted for by its own branches (route sends its objects either way).
"""
from __future__ import annotations

from typing import Dict, Tuple

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from transforms.model import Sync
from transforms.anonymous import DEFAULT_SETTLE_SECONDS, on_event, on_timer as merge_due
from transforms.coders import STATE_CODER, JsonValue, typed
from transforms.guard import INTERNAL_ERROR, Failure, count_internal_error, failure_of, guarded
from transforms.identify import DEFAULT_TTL_SECONDS, EXPIRY_SLACK
from transforms.records import BRAZE_OBJECT, DeadLetter, MergeRequest, utc_now_iso

__all__ = ["STAGE", "DEAD_LETTER_TAG", "DecideMerges", "alias_labels"]

STAGE = "anonymous"
DEAD_LETTER_TAG = "dead_letters"
METRICS_NAMESPACE = "merge"
_LAST_SECONDS = GlobalWindow().max_timestamp().micros / 1e6


def alias_labels(syncs) -> Dict[str, str]:
    """Sync name → the alias label of its anonymous profiles, for syncs that have them."""
    return {s.name: s.identifier.anonymous.alias_label for s in syncs if s.identifier.anonymous is not None}


def pending_merge(state) -> bool:
    """A merge is due, or will be, and was not requested yet (``transforms.anonymous``'s state)."""
    return isinstance(state, dict) and isinstance(state.get("u"), str) and state.get("a") is not None \
        and not state.get("s")


def _dead_letter(key, state, failure: Failure):
    sync = key.split("|", 1)[0] if isinstance(key, str) else ""
    try:
        data = orjson.dumps({"key": key, "state": state})
    except Exception:  # noqa: BLE001 - describing a failure must not fail
        data = b""
    sources = tuple(s for s in (state.get("src"),) if isinstance(s, str)) if isinstance(state, dict) else ()
    yield pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
        stage=STAGE, reason=INTERNAL_ERROR, detail=failure.detail + "; this device's profiles may not be merged",
        sync=sync, data=data, payload_type=BRAZE_OBJECT, failed_at=utc_now_iso(), sources=sources,
        error_class=failure.error_class))


def _failed_sighting(dofn, element, failure: Failure):
    key = element[0] if isinstance(element, tuple) and element else ""
    sighting = element[1] if isinstance(element, tuple) and len(element) == 2 else None
    source = getattr(sighting, "source", None)
    yield from _dead_letter(key, {"src": source} if isinstance(source, str) else {}, failure)


class _DecideMergesDoFn(beam.DoFn):
    """Keyed by ``anonymous_key(sync, device)``; see the module docstring."""

    DEVICE = ReadModifyWriteStateSpec("device", STATE_CODER)
    MERGE = TimerSpec("merge", TimeDomain.WATERMARK)
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, labels: Dict[str, str], settle_seconds: float, ttl_seconds: float):
        self._labels = dict(labels)
        self._settle = float(settle_seconds)
        self._ttl = float(ttl_seconds)
        self._requested: Dict[str, object] = {}
        self._expired = Metrics.counter(METRICS_NAMESPACE, "devices_expired")

    @guarded(STAGE, _failed_sighting)
    def process(self, element, timestamp=beam.DoFn.TimestampParam, device=beam.DoFn.StateParam(DEVICE),
                merge=beam.DoFn.TimerParam(MERGE), expiry=beam.DoFn.TimerParam(EXPIRY)):
        _, sighting = element
        cell = JsonValue(device)
        stored = cell.read()
        now = timestamp.micros / 1e6
        step = on_event(stored, sighting.user, now, self._settle)
        state = step.state
        if sighting.user is not None and state.get("u") == sighting.user and "src" not in state:
            state["src"] = sighting.source
        deadline = min(now + self._ttl, _LAST_SECONDS)
        expires = state.get("e")
        if not isinstance(expires, (int, float)) or deadline - expires > self._ttl * EXPIRY_SLACK:
            expiry.set(Timestamp.of(deadline))
            state["e"] = deadline
        if state != stored:
            cell.write(state)  # last: a failure above leaves the state as it was
        if step.wake_at is not None:
            merge.set(Timestamp.of(step.wake_at))
        return ()

    @on_timer(MERGE)
    def on_merge(self, key=beam.DoFn.KeyParam, fired_at=beam.DoFn.TimestampParam,
                 device=beam.DoFn.StateParam(DEVICE), merge=beam.DoFn.TimerParam(MERGE),
                 expiry=beam.DoFn.TimerParam(EXPIRY)):
        cell = JsonValue(device)
        state = None
        try:
            state = cell.read()
            sync, name = key.split("|", 1)
            request, step = merge_due(state, fired_at.micros / 1e6, name, self._labels[sync], self._settle)
            if step.wake_at is not None:
                merge.set(Timestamp.of(step.wake_at))
            if step.state != state:
                cell.write(step.state)
            expires = step.state.get("e")
            if request is not None and isinstance(expires, (int, float)):
                expiry.set(Timestamp.of(expires))  # re-armed: an expiry that came first kept the state
            if request is not None:
                self._counter(sync).inc()
                source = step.state.get("src")
                yield sync, MergeRequest(sync, request.external_id, request.alias_name, request.alias_label,
                                         (source,) if isinstance(source, str) else ())
        except Exception as error:  # noqa: BLE001 - a timer must never raise (it would retry forever)
            failure = failure_of(STAGE, error)
            count_internal_error(STAGE, failure)
            yield from _dead_letter(key, state, failure)

    @on_timer(EXPIRY)
    def expire(self, device=beam.DoFn.StateParam(DEVICE)):
        # A merge still pending keeps the state: its timer needs it (the expiry comes after the
        # merge's time, so this happens only if both fire at once, as when the input ends).
        if pending_merge(JsonValue(device).read()):
            return
        device.clear()
        self._expired.inc()

    def _counter(self, sync: str):
        counter = self._requested.get(sync)
        if counter is None:
            counter = self._requested[sync] = Metrics.counter(METRICS_NAMESPACE, f"{sync}.requested")
        return counter


class DecideMerges(beam.PTransform):
    """``(anonymous key, DeviceSighting)`` → ``(sync, MergeRequest)`` (main, stamped with the
    time the merge became due) and ``DeadLetter`` (tag ``dead_letters``).

    Args:
      syncs: the enabled syncs; those without ``identifier.anonymous`` send nothing here.
      settle_seconds: how long after a device's last anonymous event its merge is asked for.
      ttl_seconds: how long after a device was last seen (by publish time) its state is kept.
    """

    def __init__(self, syncs: Tuple[Sync, ...], settle_seconds: float = DEFAULT_SETTLE_SECONDS,
                 ttl_seconds: float = DEFAULT_TTL_SECONDS):
        super().__init__()
        # Both come checked from the entry point (--anonymous_settle_seconds, --user_state_ttl_days).
        self._labels = alias_labels(syncs)
        self._settle = settle_seconds
        self._ttl = ttl_seconds

    def expand(self, sightings):
        decided = sightings | "DecidePerDevice" >> beam.ParDo(
            _DecideMergesDoFn(self._labels, self._settle, self._ttl)
        ).with_outputs(DEAD_LETTER_TAG, main="requests")
        typed(decided.requests, Tuple[str, MergeRequest])
        typed(decided[DEAD_LETTER_TAG], DeadLetter)
        return decided
