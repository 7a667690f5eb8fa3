"""The Braze sink's holding: a key's requests kept in order through an outage, retried by timer.

``HoldingMixin`` is part of the sink's DoFn (``transforms.sink._BrazeSinkDoFn``), kept apart from
its arrival path. When a request must be held (Braze failing or throttling), it and every later
request of the key wait in the key's state (``transforms.outage.HeldQueue``) and a processing-time
timer retries the first with backoff (or as long as a 429 asks), then drains the queue in order,
``DRAIN_SECONDS_PER_FIRING`` at a time. Objects are dead-lettered only past the outage budget
(``outage_budget_exhausted``), or when one request keeps failing while Braze takes the sync's
others (``retries_exhausted`` after ``max_attempts`` such strikes). At the end of a bounded input
or a drain, what is held gets one last round (``_final_round``). An unexpected error in a timer
dead-letters what is held (``_salvage``): a timer must never raise. Uses the DoFn's
``DispatchMixin`` to send, and its ``_params``, ``_clock`` and ``_rng``.
"""
from __future__ import annotations

import logging
from typing import Optional

from apache_beam.utils.timestamp import Timestamp

from transforms.coders import REQUEST, JsonBag, JsonValue
from transforms.guard import INTERNAL_ERROR, count_internal_error, failure_of
from transforms.outage import OUTAGE_BUDGET_EXHAUSTED, RETRIES_EXHAUSTED, HeldQueue, Hold, Parked, split_expired
from transforms.retry_policy import hold_delay
from transforms.sink_dispatch import STAGE, Dispatched, dead_letter_outputs
from transforms.sink_state import Failure

__all__ = ["DRAIN_SECONDS_PER_FIRING", "HOLD_BACKOFF_BASE_SECONDS", "HoldingMixin", "held_queue"]

_LOG = logging.getLogger("transforms.sink")

# One retry timer sends for at most this long before it hands over to the next firing, so a
# drain after a long outage is a series of short work items, not one long one.
DRAIN_SECONDS_PER_FIRING = 20.0
# While holding, the first retry comes 2.5-5 s after the failure, then twice as long each time
# up to the cap: quick enough for a blip, and an hour-long outage costs a few dozen requests.
HOLD_BACKOFF_BASE_SECONDS = 2.0


def _parked(fields) -> Parked:
    return Parked(REQUEST(fields[0]), fields[1])


def held_queue(queue, hold) -> HeldQueue:
    """The key's held requests and its ``Hold``, read from its two state cells."""
    return HeldQueue(JsonBag(queue, _parked), JsonValue(hold))


class HoldingMixin:
    """Holding and draining one key's requests; see the module docstring."""

    def _start_holding(self, held: HeldQueue, outcome: "Dispatched", now: float, retry, window_end, window) -> None:
        first = outcome.held[0]
        state = self._state_of(first.request)
        sent = outcome.first_held
        held.set_hold(Hold(since=now, head_tries=sent.attempts, head_failed_at=now, head_seconds=sent.seconds,
                           last_failed_at=now,
                           ambiguous=sent.ambiguous, last_error=state.scrub(sent.error) if state else sent.error,
                           last_status=sent.http_status))
        self._count_held([p.request for p in outcome.held], +1)
        held.park(outcome.held)
        if state is not None:
            state.metrics.outages.inc()
            _LOG.warning("sync %s: Braze is failing (%s); holding this key's requests and retrying",
                         state.sync.name, held.hold.last_error)
        delay = self._hold_delay(1, sent.wait_seconds)
        if sent.throttled or sent.wait_seconds is not None:
            self._report_throttled(delay)
        retry.set(Timestamp.of(now + delay))
        window_end.set(window.max_timestamp())

    def _retry_held(self, held: HeldQueue, now: float, retry):
        hold = held.hold
        entries = held.entries()
        state = self._state_of(entries[0].request) if entries else None
        if state is not None:
            held_for = int(max(0.0, now - hold.since))
            state.metrics.outage_seconds.inc(held_for - hold.counted)
            hold = hold._replace(counted=held_for)
            state.metrics.oldest_held_age_seconds.update(int(max(0.0, now - entries[0].parked_at)))
        expired, entries = split_expired(entries, now, self._params.outage_budget_seconds)
        handled = len(expired)
        for parked in expired:
            yield from self._give_up(parked, OUTAGE_BUDGET_EXHAUSTED,
                                     f"Braze did not take it within the outage budget of "
                                     f"{self._params.outage_budget_seconds:.0f} s; last error: {hold.last_error}",
                                     hold)
        deadline = now + DRAIN_SECONDS_PER_FIRING
        rewrite = False
        # A drain is not throttled on the client side: the first request of each chunk is the
        # probe, and Braze's answer to it decides whether the key goes on holding.
        while entries and self._clock() < deadline:
            chunk = entries[:max(1, self._params.max_in_flight) * 4]
            outcome = self._send_all([p.request for p in chunk], 1, 0.0,
                                     first_ambiguous=hold.ambiguous, first_retrying=True, throttle=False)
            yield from outcome.outputs
            still = {p.request.seq: p for p in outcome.held}
            kept = []
            for old in chunk:
                new = still.get(old.request.seq)
                self._count_held([old.request], -1)
                if new is not None:
                    self._count_held([new.request], +1)
                    kept.append(Parked(new.request, old.parked_at))  # keeps its place and its age
                    rewrite = rewrite or len(new.request.items) != len(old.request.items)
            settled = len(chunk) - len(kept)
            handled += settled
            if not kept:
                entries = entries[len(chunk):]
                hold = hold._replace(head_tries=0, head_failed_at=now, head_seconds=0.0, ambiguous=False)
                continue
            # Still failing: the held requests keep their place, the rest of the queue behind them.
            rewrite = rewrite or settled > 0
            entries = kept + entries[len(chunk):]
            sent = outcome.first_held
            same_head = chunk[0].request.seq == kept[0].request.seq
            # A strike: the same request failed again (not throttled, not rate-limited) although
            # Braze took another request of this sync since its previous failure.
            struck = (same_head and state is not None and not sent.throttled and sent.wait_seconds is None
                      and state.succeeded_since(hold.last_failed_at))
            strikes = hold.strikes + 1 if struck else 0
            if strikes >= self._params.max_attempts:
                yield from self._give_up(kept[0], RETRIES_EXHAUSTED,
                                         f"failed {strikes} times in a row while Braze took other requests of "
                                         f"this sync; last error: {sent.error}", hold._replace(
                                             last_status=sent.http_status, head_tries=hold.head_tries + sent.attempts))
                entries = entries[1:]
                handled += 1
                rewrite = True
                hold = hold._replace(head_tries=0, head_failed_at=now, head_seconds=0.0, strikes=0,
                                     last_failed_at=now)
                held.set_hold(hold)
                held.commit(handled, entries, rewrite)
                if entries:
                    retry.set(Timestamp.of(self._clock()))
                else:
                    held.clear()
                return
            # The backoff grows only while Braze takes nothing: a round that sent some of the
            # queue before a request failed again starts the next one from the shortest delay.
            retries = 1 if handled > len(expired) else hold.retries + 1
            hold = hold._replace(retries=retries, strikes=strikes, last_failed_at=self._clock(),
                                 head_tries=(hold.head_tries if same_head else 0) + sent.attempts,
                                 head_failed_at=hold.head_failed_at if same_head else now,
                                 head_seconds=(hold.head_seconds if same_head else 0.0) + sent.seconds,
                                 ambiguous=sent.ambiguous, last_error=state.scrub(sent.error) if state else sent.error,
                                 last_status=sent.http_status)
            held.set_hold(hold)
            held.commit(handled, entries, rewrite)
            delay = self._hold_delay(hold.retries, sent.wait_seconds)
            if sent.throttled or sent.wait_seconds is not None:
                self._report_throttled(delay)
            retry.set(Timestamp.of(now + delay))
            return
        if entries:  # the firing's time is up: the next one goes on at once
            held.set_hold(hold)
            held.commit(handled, entries, rewrite)
            retry.set(Timestamp.of(self._clock()))
            return
        if state is not None:
            state.metrics.outage_seconds.inc(int(max(0.0, self._clock() - hold.since)) - hold.counted)
            _LOG.warning("sync %s: Braze answers again; the held requests of this key were sent after %.0f s",
                         state.sync.name, now - hold.since)
        held.clear()

    def _hold_delay(self, retries: int, wait_hint: Optional[float]) -> float:
        return hold_delay(retries, wait_hint, min(HOLD_BACKOFF_BASE_SECONDS, self._params.hold_backoff_cap_seconds),
                           self._params.hold_backoff_cap_seconds, self._rng)

    def _final_round(self, held: HeldQueue):
        """The input ended: each held request gets what is left of ``max_attempts`` and
        ``max_retry_seconds`` (the first one has used some already), then a dead letter."""
        hold = held.hold
        entries = held.entries()
        held.clear()
        self._count_held([p.request for p in entries], -1)
        for i, parked in enumerate(entries):
            tries, seconds = (hold.head_tries, hold.head_seconds) if i == 0 else (0, 0.0)
            attempts_left = self._params.max_attempts - tries
            seconds_left = self._params.max_retry_seconds - seconds
            if tries and (attempts_left <= 0 or seconds_left <= 0):
                still, sent_attempts, sent_seconds, error, status = parked, 0, 0.0, hold.last_error, hold.last_status
                outputs = []
            else:
                outcome = self._send_all([parked.request], max(1, attempts_left), max(0.0, seconds_left),
                                         first_ambiguous=hold.ambiguous if i == 0 else False,
                                         first_retrying=tries > 0, throttle=False)
                outputs = outcome.outputs
                still = outcome.held[0] if outcome.held else None
                sent = outcome.first_held
                if sent is not None:
                    sent_attempts, sent_seconds, error, status = sent.attempts, sent.seconds, sent.error, sent.http_status
            yield from outputs
            if still is None:
                continue
            state = self._state_of(still.request)
            attempts = tries + sent_attempts
            detail = f"gave up after {attempts} attempt(s) in {seconds + sent_seconds:.1f}s; last error: {error}"
            for item in still.request.items:
                yield from self._emit_failure(item, Failure(RETRIES_EXHAUSTED, detail, status, attempts), state)

    def _give_up(self, parked: Parked, reason: str, detail: str, hold: Hold):
        self._count_held([parked.request], -1)
        state = self._state_of(parked.request)
        _LOG.warning("sync %s: %d held objects dead-lettered (%s)", state.sync.name if state else "?",
                     len(parked.request.items), reason)
        failure = Failure(reason, detail, hold.last_status, hold.head_tries)
        for item in parked.request.items:
            yield from self._emit_failure(item, failure, state)

    def _salvage(self, held: HeldQueue, error: BaseException):
        """An unexpected error in a timer: what is held is dead-lettered, never retried forever."""
        failure = failure_of(STAGE, error)
        count_internal_error(STAGE, failure)
        try:
            entries = held.entries()
        except Exception:  # noqa: BLE001 - the state itself cannot be read
            entries = []
        held.clear()
        for parked in entries:
            for item in parked.request.items:
                yield from dead_letter_outputs(item, Failure(INTERNAL_ERROR, failure.detail, None, 0), failure.error_class)
