"""Replay chosen dead letters into the job's input topic, once their cause is fixed.

    python -m pipeline.replay --dead_letter_subscription=projects/P/subscriptions/S \\
        --input_topic=projects/P/topics/T [--reason=R ...] [--sync=S ...] [--stage=parse|braze] [--dry_run]

- Stage ``parse``: the dead letter's payload is the original message text; it is published
  as it was, so the job parses it again (after you fixed the publisher, or the job).
- Stage ``braze``: the payload is the Braze object that failed. It is published with the
  attribute ``amplitude_braze_replay=braze`` and goes straight to that sync's requests: the
  identify state already counted it as sent, so replaying the Amplitude event would not
  resend it.

A dead letter is acknowledged only after its replay was published; the ones not chosen are
released for later. Nothing is moved with ``--dry_run``.
"""
from __future__ import annotations

import argparse
import collections
import sys
from typing import List, Optional

import orjson

from pipeline.options import SUBSCRIPTION_RE, TOPIC_RE
from transforms.parse import REPLAY_ATTRIBUTE

PULL_BATCH = 500


def replay_message(letter: dict):
    """``(data, attributes)`` to publish for one dead letter, or None if it cannot be replayed."""
    payload = letter.get("payload")
    if letter.get("stage") == "parse" and isinstance(payload, str):
        return payload.encode("utf-8"), {"replayed_reason": str(letter.get("reason", ""))}
    if letter.get("stage") == "braze" and isinstance(payload, dict) and letter.get("sync"):
        return orjson.dumps(letter), {REPLAY_ATTRIBUTE: "braze", "replayed_reason": str(letter.get("reason", ""))}
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
                try:
                    letter = orjson.loads(received.message.data)
                    to_publish = replay_message(letter) if chosen(letter, reasons, syncs, stage) else None
                except (orjson.JSONDecodeError, AttributeError):
                    letter, to_publish = None, None
                if letter is None:
                    counts["unreadable"] += 1
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
