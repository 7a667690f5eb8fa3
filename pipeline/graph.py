"""The event-streaming graph, without its Pub/Sub ends, so tests can feed it directly.

    messages → ParseEvents → DropRepeats → RouteToSyncs ─┬─ track items ──────────────┐
                                                         └─ identify work → Identify ─┴→ PackRequests
                                                                                          → WriteToBraze
    outcomes:      parse failures + repeats + skips by rule + what the sink delivered or dead-lettered
    dead letters:  parse failures + objects Braze did not take
"""
from __future__ import annotations

import time
from typing import Any, Callable, Tuple

import apache_beam as beam

from pipeline.config import Sync
from transforms.batching import PackRequests
from transforms.dedup import DropRepeats
from transforms.identify import IdentifyDoFn
from transforms.identify import OUTCOME_TAG as IDENTIFY_OUTCOMES
from transforms.parse import ParseEvents
from transforms.route import RouteToSyncs
from transforms.secrets import resolve_api_key
from transforms.sink import DEAD_LETTER_TAG, WriteToBraze


class EventsToBraze(beam.PTransform):
    """Pub/Sub messages (or bytes) → ``{"outcomes": Outcome, "dead_letters": DeadLetter}``."""

    def __init__(
        self,
        syncs: Tuple[Sync, ...],
        *,
        limit_mode: str = "combined",
        max_batch_wait_seconds: float = 2.0,
        shards: int = 4,
        timeout_seconds: float = 10.0,
        max_attempts: int = 6,
        max_retry_seconds: float = 120.0,
        max_in_flight: int = 1,
        dedup_window_seconds: float = 600.0,
        user_state_ttl_days: float = 30.0,
        resolve_key: Callable[[str], str] = resolve_api_key,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__()
        self._syncs = tuple(s for s in syncs if s.enabled)
        if not self._syncs:
            raise ValueError("no enabled sync: set 'enabled: true' on at least one sync in the syncs file")
        self._dedup_window = dedup_window_seconds
        if isinstance(user_state_ttl_days, bool) or not isinstance(user_state_ttl_days, (int, float)) \
                or not user_state_ttl_days > 0:
            raise ValueError(f"user_state_ttl_days must be a number > 0, got {user_state_ttl_days!r}")
        self._identify = dict(ttl_seconds=user_state_ttl_days * 86400.0, clock=clock)
        self._clock = clock
        self._pack = dict(limit_mode=limit_mode, max_wait_seconds=max_batch_wait_seconds, shards=shards, clock=clock)
        self._write = dict(
            timeout_seconds=timeout_seconds, max_attempts=max_attempts, max_retry_seconds=max_retry_seconds,
            max_in_flight=max_in_flight,
            resolve_key=resolve_key, sleep=sleep, clock=clock,
        )

    def expand(self, messages):
        parsed = messages | "ParseEvents" >> ParseEvents()
        events, repeats = parsed.events, []
        if self._dedup_window > 0:
            unique = events | "DropRepeats" >> DropRepeats(self._dedup_window, self._clock)
            events, repeats = unique["events"], [unique["outcomes"]]
        routed = events | "RouteToSyncs" >> RouteToSyncs(self._syncs)
        selected = {s.name: s.users.properties for s in self._syncs}
        # Typed, so the identify state and timers get a str key coder (deterministic; the
        # FnApiRunner cannot decode timers of a FastPrimitivesCoder key).
        identify_work = routed.identify | "TypeIdentifyWork" >> beam.Map(lambda kv: kv).with_output_types(
            Tuple[str, Any])
        identified = identify_work | "Identify" >> beam.ParDo(IdentifyDoFn(selected, **self._identify)).with_outputs(
            IDENTIFY_OUTCOMES, main="attributes"
        )
        objects = (routed.track, identified.attributes) | "AllObjects" >> beam.Flatten()
        written = (
            objects
            | "PackRequests" >> PackRequests(**self._pack)
            | "WriteToBraze" >> WriteToBraze(self._syncs, **self._write)
        )
        outcomes = (
            parsed.outcomes, *repeats, routed.outcomes, identified[IDENTIFY_OUTCOMES], written.outcomes,
        ) | "AllOutcomes" >> beam.Flatten()
        dead_letters = (parsed.dead_letters, written[DEAD_LETTER_TAG]) | "AllDeadLetters" >> beam.Flatten()
        return {"outcomes": outcomes, "dead_letters": dead_letters}
