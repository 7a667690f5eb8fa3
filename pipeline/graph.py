"""The event-streaming graph, without its Pub/Sub ends, so tests can feed it directly.

    messages → ParseEvents → DropRepeats → RouteToSyncs ─┬─ track batches ────────────────┐
                                                         ├─ identify work → IdentifyUsers ┼→ PackRequests → WriteToBraze
    replayed Braze objects (--replay_subscription) ──────┼────────────────────────────────┘                   │ progress
                                                         └─ devices → DecideMerges ─ merge requests → SendMerges ←┘
    outcomes:      parse failures + repeats + skips by rule + what the sink delivered or dead-lettered
    dead letters:  every stage's failures + objects Braze did not take + merges Braze did not take
    shadow:        the requests of syncs in shadow mode, built and not sent (transforms/shadow.py)

The merge branch (syncs with ``identifier.anonymous``) is always in the graph, idle when no sync
uses it, so turning the option on or off never adds or removes a stateful step (an ``--update``
keeps working). ``SendMerges`` also reads the track sink's outcomes, turned into nothing
(``progress``): its watermark then trails the track sink's, and it sends a merge only once
the track sink has passed the merge's time (``transforms.identify_sink``).

The stateful steps, with their state, keys and order guarantees, are described in
docs/architecture.md. Their names are part of the job's update contract (``--update`` matches
steps by name): ``tests/test_update_safety.py`` pins them.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Tuple

import apache_beam as beam

from pipeline.config import Sync
from transforms.batching import PackRequests
from transforms.braze_facts import DEFAULT_ARRAY_LENGTH
from transforms.coders import typed
from transforms.dedup import DropRepeats
from transforms.anonymous import DEFAULT_SETTLE_SECONDS
from transforms.device_merge import DEAD_LETTER_TAG as MERGE_DEAD_LETTERS
from transforms.device_merge import DecideMerges
from transforms.identify import DEAD_LETTER_TAG as IDENTIFY_DEAD_LETTERS
from transforms.identify import OUTCOME_TAG as IDENTIFY_OUTCOMES
from transforms.identify import IdentifyDoFn
from transforms.identify_sink import DEAD_LETTER_TAG as IDENTIFY_CALL_DEAD_LETTERS
from transforms.identify_sink import SendMerges
from transforms.mappings import UserMappings
from transforms.parse import ParseEvents
from transforms.records import NO_PREDECESSOR, DeadLetter, MergeRequest, Outcome, ParsedEvent, ShadowRequest, \
    UserBatch
from transforms.replay import DEAD_LETTER_TAG as REPLAY_DEAD_LETTERS
from transforms.replay import OUTCOME_TAG as REPLAY_OUTCOMES
from transforms.replay import ReadReplayedObjects
from transforms.route import ANONYMOUS_TAG, RouteToSyncs
from transforms.secrets import resolve_api_key
from transforms.sink import DEAD_LETTER_TAG, DEFAULT_OUTAGE_BUDGET_SECONDS, SHADOW_TAG, WriteToBraze

DEFAULT_LATENESS_SECONDS = 2.0
DEFAULT_MAX_ARRAY_LENGTH = DEFAULT_ARRAY_LENGTH


def _nothing(outcome):
    """The track sink's outcomes, as nothing: only their watermark reaches the identify sink."""
    return ()


class EventsToBraze(beam.PTransform):
    """Pub/Sub messages (or bytes) → ``{"outcomes": Outcome, "dead_letters": DeadLetter,
    "shadow": ShadowRequest}`` (the last one empty unless a sync is in shadow mode).

    ``replayed_messages``: an optional PCollection of the replay subscription's messages
    (Braze objects an operator replays); each is checked against ``all_syncs`` (the whole
    syncs file, disabled syncs too) as a fresh object would be, then joins the packer."""

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
        outage_budget_seconds: float = DEFAULT_OUTAGE_BUDGET_SECONDS,
        hold_backoff_cap_seconds: float = 300.0,
        max_in_flight: int = 4,
        dedup_window_seconds: float = 600.0,
        user_state_ttl_days: float = 30.0,
        lateness_seconds: float = DEFAULT_LATENESS_SECONDS,
        max_array_length: Optional[int] = DEFAULT_MAX_ARRAY_LENGTH,
        anonymous_settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        replayed_messages=None,
        all_syncs: Optional[Tuple[Sync, ...]] = None,
        resolve_key: Callable[[str], str] = resolve_api_key,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__()
        # The entry points refuse a syncs file that enables no sync (pipeline.config.require_enabled_syncs);
        # given none here, the sink's argument check says so.
        self._syncs = tuple(s for s in syncs if s.enabled)
        self._dedup_window = dedup_window_seconds
        if isinstance(user_state_ttl_days, bool) or not isinstance(user_state_ttl_days, (int, float)) \
                or not user_state_ttl_days > 0:
            raise ValueError(f"user_state_ttl_days must be a number > 0, got {user_state_ttl_days!r}")
        self._identify = dict(ttl_seconds=user_state_ttl_days * 86400.0, clock=clock,
                              lateness_seconds=lateness_seconds, max_array_length=max_array_length,
                              shadow_syncs=tuple(s.name for s in self._syncs if s.shadow))
        self._clock = clock
        self._replayed = replayed_messages
        self._all_syncs = tuple(all_syncs) if all_syncs is not None else tuple(syncs)
        self._pack = dict(limit_mode=limit_mode, max_wait_seconds=max_batch_wait_seconds, shards=shards, clock=clock)
        self._write = dict(
            timeout_seconds=timeout_seconds, max_attempts=max_attempts, max_retry_seconds=max_retry_seconds,
            outage_budget_seconds=outage_budget_seconds, hold_backoff_cap_seconds=hold_backoff_cap_seconds,
            max_in_flight=max_in_flight, resolve_key=resolve_key, sleep=sleep, clock=clock,
        )
        self._merge = dict(settle_seconds=anonymous_settle_seconds, ttl_seconds=user_state_ttl_days * 86400.0)
        self._identify_calls = {k: v for k, v in self._write.items() if k != "max_in_flight"}

    def expand(self, messages):
        parsed = messages | "ParseEvents" >> ParseEvents()
        events = typed(parsed.events, ParsedEvent)
        outcomes, dead_letters = [parsed.outcomes], [parsed.dead_letters]
        if self._dedup_window > 0:
            unique = events | "DropRepeats" >> DropRepeats(self._dedup_window)
            events = unique["events"]
            outcomes.append(unique["outcomes"])
            dead_letters.append(unique["dead_letters"])
        routed = events | "RouteToSyncs" >> RouteToSyncs(self._syncs)
        outcomes.append(routed.outcomes)
        dead_letters.append(routed.dead_letters)
        # Identify keeps state for every Braze name a sync's mappings can write.
        selected = {s.name: UserMappings.from_settings(s.users).targets for s in self._syncs}
        identified = routed.identify | "IdentifyUsers" >> beam.ParDo(
            IdentifyDoFn(selected, **self._identify)).with_outputs(IDENTIFY_OUTCOMES, IDENTIFY_DEAD_LETTERS,
                                                                   main="batches")
        outcomes.append(typed(identified[IDENTIFY_OUTCOMES], Outcome))
        dead_letters.append(typed(identified[IDENTIFY_DEAD_LETTERS], DeadLetter))
        batches = [routed.track, typed(identified.batches, UserBatch)]
        if self._replayed is not None:
            checked = self._replayed | "ReadReplayedObjects" >> ReadReplayedObjects(self._all_syncs)
            batches.append(checked.objects | "WrapReplayedObjects" >> beam.Map(
                lambda item: UserBatch(item.sync, item.user_key, (item,), 0, NO_PREDECESSOR)
            ).with_output_types(UserBatch))
            outcomes.append(typed(checked[REPLAY_OUTCOMES], Outcome))
            dead_letters.append(typed(checked[REPLAY_DEAD_LETTERS], DeadLetter))
        packed = tuple(batches) | "FlattenBatches" >> beam.Flatten() | "PackRequests" >> PackRequests(**self._pack)
        outcomes.append(packed.outcomes)
        dead_letters.append(packed.dead_letters)
        written = packed.requests | "WriteToBraze" >> WriteToBraze(self._syncs, **self._write)
        outcomes.append(written.outcomes)
        dead_letters.append(written[DEAD_LETTER_TAG])

        merges = routed[ANONYMOUS_TAG] | "DecideMerges" >> DecideMerges(self._syncs, **self._merge)
        dead_letters.append(merges[MERGE_DEAD_LETTERS])
        track_progress = written.outcomes | "FollowTrackSink" >> beam.FlatMap(_nothing).with_output_types(
            Tuple[str, MergeRequest])
        calls = ((merges.requests, track_progress) | "MergeRequestsAfterTrack" >> beam.Flatten()
                 | "SendMerges" >> SendMerges(self._syncs, **self._identify_calls))
        dead_letters.append(calls[IDENTIFY_CALL_DEAD_LETTERS])
        return {
            "outcomes": typed(tuple(outcomes) | "FlattenOutcomes" >> beam.Flatten(), Outcome),
            "dead_letters": typed(tuple(dead_letters) | "FlattenDeadLetters" >> beam.Flatten(), DeadLetter),
            "shadow": typed(written[SHADOW_TAG], ShadowRequest),
        }
