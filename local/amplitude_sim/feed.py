"""Publish cohort-feed messages to the Pub/Sub emulator, as Amplitude's "Google Pub/Sub (Cohort
Sync)" destination does (docs/api-facts.md, A6): one JSON batch per message, every user in it
entering (``in_cohort: true``) or leaving, ``computed_time`` as epoch seconds in a string.

    publisher = FeedPublisher(emulator, "cohort-feed")
    first = publisher.enter("c1", "Power users", ["u1", "u2"], at=T)
    publisher.repeat(first)                                  # Amplitude retried: same message_id
    publisher.leave("c1", "Power users", ["u2"], at=T + 120)
    publisher.enter("c1", "Power users", ["u2"], at=T + 60)  # out of order: older than the exit

CLI: ``python -m local.amplitude_sim.feed --topic T --cohort c1 --name "Power users" --enter u1,u2
--leave u3 [--at EPOCH_SECONDS]`` (with ``PUBSUB_EMULATOR_HOST`` set).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
import uuid
from typing import List, Optional, Sequence

import orjson

__all__ = ["FeedPublisher", "feed_message"]


def feed_message(cohort_id: str, cohort_name: str, users: Sequence[str], in_cohort: bool, at: float,
                 message_id: Optional[str] = None) -> bytes:
    return orjson.dumps({"cohort_name": cohort_name, "cohort_id": cohort_id, "in_cohort": in_cohort,
                         "computed_time": str(int(at)), "message_id": message_id or f"{uuid.uuid4()}:{len(users)}",
                         "users": [{"user_id": u} for u in users]})


class FeedPublisher:
    def __init__(self, emulator, topic: str):
        self.emulator = emulator
        self.topic = topic
        self.published: List[bytes] = []
        self._sequence = itertools.count()

    def publish(self, *datas: bytes) -> List[str]:
        self.published.extend(datas)
        return self.emulator.publish(self.topic, list(datas))

    def enter(self, cohort_id: str, cohort_name: str, users: Sequence[str], at: Optional[float] = None) -> bytes:
        data = feed_message(cohort_id, cohort_name, users, True, at or time.time(),
                            f"{cohort_id}::enter::{next(self._sequence)}")
        self.publish(data)
        return data

    def leave(self, cohort_id: str, cohort_name: str, users: Sequence[str], at: Optional[float] = None) -> bytes:
        data = feed_message(cohort_id, cohort_name, users, False, at or time.time(),
                            f"{cohort_id}::leave::{next(self._sequence)}")
        self.publish(data)
        return data

    def repeat(self, data: bytes) -> bytes:
        """Publish the same message again (an Amplitude retry: same ``message_id``)."""
        self.publish(data)
        return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.amplitude_sim.feed", description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="local-project")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--cohort", required=True, help="cohort_id")
    parser.add_argument("--name", default="", help="cohort_name (default: the id)")
    parser.add_argument("--enter", default="", help="comma-separated user ids entering")
    parser.add_argument("--leave", default="", help="comma-separated user ids leaving")
    parser.add_argument("--at", type=float, default=0, help="computed_time, epoch seconds (default: now)")
    args = parser.parse_args(argv)
    from google.cloud import pubsub_v1

    class _Emulator:  # the emulator helper's publish(), on an emulator someone else started
        def publish(self, topic, datas):
            client = pubsub_v1.PublisherClient()
            path = client.topic_path(args.project, topic)
            return [client.publish(path, d).result(timeout=30) for d in datas]

    publisher = FeedPublisher(_Emulator(), args.topic)
    for users, in_cohort in ((args.enter, True), (args.leave, False)):
        ids = [u for u in users.split(",") if u]
        if ids:
            publish = publisher.enter if in_cohort else publisher.leave
            print(publish(args.cohort, args.name or args.cohort, ids, args.at or None).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
