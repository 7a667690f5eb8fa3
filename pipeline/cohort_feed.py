"""The streaming mode of the cohort job: Amplitude's Pub/Sub cohort feed into Braze.

    ReadFromPubSub(subscription)
      → ParseFeed                  bytes → membership batches; unreadable messages and unknown
                                   cohorts → dead letters (the bytes unchanged, with a reason)
      → DropRepeatedMessages       by message_id (state per message id)
      → NewestChangePerUser        one change per user; the newest computed_time wins (state per user)
      → FanOutToSyncs              to every feed sync of the cohort, with its target's Braze key
      → Deliver <sync> (per sync)  buffered ≤ flush_seconds, then the same delivery as batch runs;
                                   the final flush dead-letters what it could not deliver
      → FeedReports                hourly and daily reports per sync; emails (daily, failed hours)
    every dead letter → WriteDeadLetters (the dead-letter topic)

Step names are stable (``--update`` of a running job depends on them); adding a sync adds its
own ``Deliver <sync>`` step.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.cohort_config import CohortConfig, CohortSync, Target
from transforms.cohorts.delivery import CohortDeliverer, RetryPolicy
from transforms.cohorts.feed import DEAD_LETTER_TAG, ParseFeed
from transforms.cohorts.feed_reports import FeedReports
from transforms.cohorts.feed_state import SKIPPED_TAG, DropRepeatedMessages, FanOutToSyncs, NewestChangePerUser
from transforms.cohorts.realtime import FlushAndDeliver
from transforms.secrets import resolve_api_key

__all__ = ["FeedSettings", "FeedToBraze", "build_feed_pipeline", "feed_syncs", "name_feed_cohorts"]

STREAMING_RUNNER = "BundleBasedDirectRunner"


@dataclasses.dataclass(frozen=True)
class FeedSettings:
    subscription: str
    dead_letter_topic: str
    report_dir: str
    flush_seconds: float = 60.0
    dedup_seconds: float = 48 * 3600.0
    state_ttl_seconds: float = 30 * 86400.0
    shards: int = 4


def feed_syncs(config: CohortConfig, only: str = "") -> List[Tuple[CohortSync, Target]]:
    """The feed syncs the streaming mode serves (all, or ``only``); ValueError when none."""
    syncs = [(s, config.target(s.target)) for s in config.feed_syncs() if not only or s.name == only]
    if not syncs:
        if only:
            raise ValueError(f"no feed sync named {only!r} (source: feed) in the cohorts file")
        raise ValueError("the cohorts file has no sync with source: feed (cadence real_time means feed by default)")
    return syncs


def name_feed_cohorts(config: CohortConfig, syncs, policy: RetryPolicy,
                      resolve_key: Callable[[str], str] = resolve_api_key) -> List[str]:
    """Partner targets: name each cohort in Braze before the stream starts (the name call is
    idempotent). Returns the problems, one per sync that failed."""
    problems = []
    for sync, target in syncs:
        if target.delivery != "partner":
            continue
        with CohortDeliverer(target, sync, policy, resolve_key=resolve_key) as deliverer:
            problem = deliverer.name_cohort()
        if problem:
            problems.append(f"{sync.name}: {problem}")
    return problems


class FeedToBraze(beam.PTransform):
    """Feed messages → Braze; returns the dead letters (``DeadLetter``), for the caller to write."""

    def __init__(self, syncs, settings: FeedSettings, *, email=None, policy: RetryPolicy = RetryPolicy(),
                 resolve_key: Callable[[str], str] = resolve_api_key, clock: Callable[[], float] = time.time):
        super().__init__()
        self._syncs = list(syncs)
        self._settings = settings
        self._email = email
        self._policy = policy
        self._resolve_key = resolve_key
        self._clock = clock

    def expand(self, messages):
        s = self._settings
        parsed = messages | "ParseFeed" >> ParseFeed(sync.cohort_id for sync, _ in self._syncs)
        unique = parsed.batches | "DropRepeatedMessages" >> DropRepeatedMessages(s.dedup_seconds, self._clock)
        newest = unique.batches | "NewestChangePerUser" >> NewestChangePerUser(s.state_ttl_seconds, self._clock)
        routed = newest["changes"] | "FanOutToSyncs" >> FanOutToSyncs(self._syncs)
        dead = [parsed[DEAD_LETTER_TAG], unique[DEAD_LETTER_TAG], newest[DEAD_LETTER_TAG], routed[DEAD_LETTER_TAG]]
        results = [routed[SKIPPED_TAG]]
        for sync, target in self._syncs:
            delivered = (routed.changes
                         | f"SelectChanges[{sync.name}]" >> beam.Filter(lambda kv, name=sync.name: kv[0] == name)
                         | f"DropSyncNames[{sync.name}]" >> beam.Map(lambda kv: kv[1])
                         | f"Deliver[{sync.name}]" >> FlushAndDeliver(
                             target, sync, self._policy, flush_seconds=s.flush_seconds, shards=s.shards,
                             resolve_key=self._resolve_key, clock=self._clock))
            dead.append(delivered[DEAD_LETTER_TAG])
            results.append(delivered.results | f"NameResults[{sync.name}]" >> beam.Map(
                lambda r, name=sync.name: (name, r)))
        _ = (results | "FlattenResults" >> beam.Flatten()
             | "FeedReports" >> FeedReports(self._syncs, s.report_dir, self._email, self._clock))
        return dead | "FlattenDeadLetters" >> beam.Flatten()


def build_feed_pipeline(options: PipelineOptions, config: CohortConfig, syncs, settings: FeedSettings, *,
                        policy: RetryPolicy = RetryPolicy(), read: Optional[beam.PTransform] = None) -> beam.Pipeline:
    """The streaming graph (not run here). ``read`` replaces ReadFromPubSub (tests)."""
    from transforms.dead_letters import WriteDeadLetters

    standard = options.view_as(StandardOptions)
    standard.streaming = True
    if not standard.runner:
        standard.runner = STREAMING_RUNNER
    p = beam.Pipeline(options=options)
    messages = p | "ReadFromPubSub" >> (read or ReadFromPubSub(subscription=settings.subscription,
                                                               with_attributes=True))
    dead = messages | "FeedToBraze" >> FeedToBraze(syncs, settings, email=config.email, policy=policy)
    _ = dead | "WriteDeadLetters" >> WriteDeadLetters(settings.dead_letter_topic)
    return p
