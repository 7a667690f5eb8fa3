"""Replay chosen dead letters into the job's input topic, once their cause is fixed.

    python -m pipeline.replay --dead_letter_subscription=projects/P/subscriptions/S \\
        --input_topic=projects/P/topics/T [--reason=R ...] [--sync=S ...] [--stage=parse|braze] [--dry_run]

- ``payload_type=input_event`` (stage ``parse`` and other failures before a Braze object
  existed): the data is the event's input bytes; it is published as it was, so the job parses
  it again (after you fixed the publisher, or the job).
- ``payload_type=braze_object``: the data is the Braze object that failed. It is left in place
  for now: Braze objects are replayed only through a source the operator controls, never the
  input topic, whose attributes any publisher could set.

A dead letter is acknowledged only after its replay was published; the ones not chosen are
released for later. Nothing is moved with ``--dry_run``.
"""
from __future__ import annotations

import argparse
import collections
import sys
from typing import List, Optional

from pipeline.options import SUBSCRIPTION_RE, TOPIC_RE
from transforms.records import INPUT_EVENT

PULL_BATCH = 500


def replay_message(data: bytes, attributes: dict):
    """``(data, attributes)`` to publish for one dead letter, or None if it cannot be replayed."""
    if attributes.get("payload_type") == INPUT_EVENT and attributes.get("data_truncated") != "true":
        return data, {}
    return None


def chosen(letter: dict, reasons, syncs, stage: Optional[str]) -> bool:
    return ((not reasons or letter.get("reason") in reasons)
            and (not syncs or letter.get("sync") in syncs)
            and (stage is None or letter.get("stage") == stage))


def replay(subscription: str, topic: str, *, reasons=(), syncs=(), stage=None, dry_run=False,
           max_messages: Optional[int] = None, out=sys.stdout) -> collections.Counter:
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    publisher = pubsub_v1.PublisherClient()
    counts = collections.Counter()
    seen, release = set(), []
    try:
        while max_messages is None or counts["read"] < max_messages:
            response = subscriber.pull(subscription=subscription, max_messages=PULL_BATCH, timeout=10)
            fresh = [m for m in response.received_messages if m.message.message_id not in seen]
            if not fresh:
                release.extend(m.ack_id for m in response.received_messages)
                break
            done: List[str] = []
            futures = []
            for received in fresh:
                seen.add(received.message.message_id)
                counts["read"] += 1
                letter = dict(received.message.attributes)
                if "stage" not in letter:
                    counts["unreadable"] += 1
                to_publish = replay_message(received.message.data, letter) if chosen(
                    letter, reasons, syncs, stage) else None
                if to_publish is None or dry_run:
                    counts["chosen" if to_publish else "left"] += 1
                    release.append(received.ack_id)
                    continue
                data, attributes = to_publish
                futures.append((received.ack_id, letter.get("stage"), publisher.publish(topic, data, **attributes)))
            for ack_id, letter_stage, future in futures:
                future.result(timeout=60)
                counts["moved"] += 1
                counts[f"moved_{letter_stage}"] += 1
                done.append(ack_id)
            if done:
                subscriber.acknowledge(subscription=subscription, ack_ids=done)
    finally:
        if release:  # make the ones not moved available again at once
            for i in range(0, len(release), 1000):
                subscriber.modify_ack_deadline(subscription=subscription, ack_ids=release[i:i + 1000],
                                               ack_deadline_seconds=0)
    verb = "would move" if dry_run else "moved"
    moved = counts["chosen"] if dry_run else counts["moved"]
    print(f"replay: read {counts['read']} dead letters, {verb} {moved} to {topic} "
          f"(parse: {counts['moved_parse']}, braze: {counts['moved_braze']}), "
          f"left {counts['left']} in place ({counts['unreadable']} unreadable)", file=out)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.replay", description=__doc__.splitlines()[0])
    parser.add_argument("--dead_letter_subscription", required=True, help="projects/P/subscriptions/S")
    parser.add_argument("--input_topic", required=True, help="the job's input topic, projects/P/topics/T")
    parser.add_argument("--reason", action="append", default=[], help="only these reasons (repeatable)")
    parser.add_argument("--sync", action="append", default=[], help="only these syncs (repeatable)")
    parser.add_argument("--stage", choices=("parse", "braze"), help="only this stage")
    parser.add_argument("--max_messages", type=int, help="stop after reading this many dead letters")
    parser.add_argument("--dry_run", action="store_true", help="count what would move; move nothing")
    args = parser.parse_args(argv)
    if not SUBSCRIPTION_RE.match(args.dead_letter_subscription):
        parser.error("--dead_letter_subscription must look like projects/P/subscriptions/S")
    if not TOPIC_RE.match(args.input_topic):
        parser.error("--input_topic must look like projects/P/topics/T")
    replay(args.dead_letter_subscription, args.input_topic, reasons=set(args.reason), syncs=set(args.sync),
           stage=args.stage, dry_run=args.dry_run, max_messages=args.max_messages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
