"""Replay chosen dead letters once their cause is fixed: input events to the job's input topic,
Braze objects to the operator's replay topic.

    python -m pipeline.replay --dead_letter_subscription=projects/P/subscriptions/S \\
        [--input_topic=projects/P/topics/EVENTS] [--replay_topic=projects/P/topics/REPLAY] \\
        [--reason=R ...] [--stage=S ...] [--sync=S ...] [--dry_run]

A dead letter (``transforms.dead_letters``, format 2) carries the failed bytes unchanged as its
data, and says in its ``payload_type`` attribute what they are:

- ``input_event``: an Amplitude event as it came in (stage ``parse`` and any failure before a
  Braze object existed). Published to ``--input_topic`` unchanged and without attributes, so
  the job parses it again like any event.
- ``braze_object``: a Braze object that failed (stage ``braze``, or ``replay``). Published to
  ``--replay_topic`` unchanged, with the attributes ``sync`` and ``kind``; the job reads that
  topic through ``--replay_subscription`` (``transforms.replay``), checks the object as a fresh
  one and sends it to that sync, past the identify state (which already counted it as sent).
  Never to the input topic: whoever may publish events there could then inject any Braze object
  for any user. Give only the operator (and this command) publish rights on the replay topic.

Dead letters are chosen by ``--reason``, ``--stage`` and ``--sync`` (each repeatable; all given
filters must match). A chosen letter is acknowledged only once its replay was published; every
other letter read (not chosen, malformed, cut, with no destination given, or whose publish
failed) is counted and left in place: held while the command runs, so it is read once, and
released at the end (deadline 0), so it is available again at once, not after its ack
deadline. A malformed dead letter (attributes missing or odd, data cut because it was too
large) never stops the command. ``--dry_run`` reads and counts, and moves nothing.

Exit code 0; 1 if a publish failed (those letters stay in place) or the subscription could not
be read; 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
from typing import Collection, Mapping, NamedTuple, Optional, Union

from pipeline.options import SUBSCRIPTION_RE, TOPIC_RE
from transforms.dead_letters import FORMAT_VERSION
from transforms.records import BRAZE_OBJECT, INPUT_EVENT, KINDS

PULL_BATCH = 500
PULL_TIMEOUT_SECONDS = 10.0
# Pulls in a row that bring nothing new before the command decides it has read everything.
EMPTY_PULLS_TO_STOP = 2
# Letters read but not moved are held this long (Pub/Sub's maximum) while the command runs,
# then released at once; a command killed hard lets them go after this at the latest.
HOLD_SECONDS = 600
PUBLISH_TIMEOUT_SECONDS = 60.0

# Why a letter read was left in place.
NOT_CHOSEN = "not_chosen"
UNREADABLE = "unreadable"  # not a format-2 dead letter, or its attributes are missing or odd
TRUNCATED = "truncated"  # its data was cut to fit Pub/Sub: replaying it would send something else
NO_DESTINATION = "no_destination"  # its topic (--input_topic / --replay_topic) was not given
EMPTY = "empty"  # an input event without data: Pub/Sub cannot publish it without attributes
PUBLISH_FAILED = "publish_failed"
LEFT_REASONS = (NOT_CHOSEN, UNREADABLE, TRUNCATED, NO_DESTINATION, EMPTY, PUBLISH_FAILED)


class Replay(NamedTuple):
    """Where one dead letter goes: ``topic`` is "input" or "replay"."""

    topic: str
    data: bytes
    attributes: Mapping[str, str]


def _text(attributes, name: str) -> Optional[str]:
    value = attributes.get(name) if isinstance(attributes, Mapping) else None
    return value if isinstance(value, str) and value else None


def plan(data, attributes, *, reasons: Collection[str] = (), stages: Collection[str] = (),
         syncs: Collection[str] = ()) -> Union[Replay, str]:
    """One dead letter → its ``Replay``, or why it stays (one of ``LEFT_REASONS``). Pure; never
    raises, whatever the data and attributes are."""
    if not isinstance(data, (bytes, bytearray)) or not isinstance(attributes, Mapping) \
            or _text(attributes, "format") != FORMAT_VERSION:
        return UNREADABLE
    stage, reason, payload_type = (_text(attributes, n) for n in ("stage", "reason", "payload_type"))
    if stage is None or reason is None:
        return UNREADABLE
    sync = _text(attributes, "sync") or ""
    if (reasons and reason not in reasons) or (stages and stage not in stages) or (syncs and sync not in syncs):
        return NOT_CHOSEN
    if attributes.get("data_truncated") is not None:
        return TRUNCATED
    if payload_type == INPUT_EVENT:
        return Replay("input", bytes(data), {}) if data else EMPTY
    if payload_type == BRAZE_OBJECT:
        kind = _text(attributes, "kind")
        if not sync or kind not in KINDS:
            return UNREADABLE
        return Replay("replay", bytes(data), {"sync": sync, "kind": kind})
    return UNREADABLE


def replay(subscription: str, *, input_topic: Optional[str] = None, replay_topic: Optional[str] = None,
           reasons: Collection[str] = (), stages: Collection[str] = (), syncs: Collection[str] = (),
           dry_run: bool = False, max_messages: Optional[int] = None,
           pull_timeout_seconds: float = PULL_TIMEOUT_SECONDS, out=None) -> collections.Counter:
    """Read the dead-letter subscription once through; see the module docstring. Returns the
    counts: ``read``, ``moved`` (or, dry run, ``would_move``), ``to_input``, ``to_replay``,
    and one per left reason."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    subscriber = _subscriber_client()
    publisher = pubsub_v1.PublisherClient()
    topics = {"input": input_topic, "replay": replay_topic}
    counts: collections.Counter = collections.Counter()
    seen, held = set(), []
    empty_pulls = 0
    try:
        while empty_pulls < EMPTY_PULLS_TO_STOP and (max_messages is None or counts["read"] < max_messages):
            want = PULL_BATCH if max_messages is None else min(PULL_BATCH, max_messages - counts["read"])
            try:
                response = subscriber.pull(request={"subscription": subscription, "max_messages": want},
                                           timeout=pull_timeout_seconds, retry=None)
                received = list(response.received_messages)
            except gexc.DeadlineExceeded:
                received = []
            except gexc.GoogleAPICallError as error:
                counts["pull_failed"] += 1
                print(f"replay: could not read {subscription}: {type(error).__name__}: {error.message}; "
                      "stopped reading", file=sys.stderr)
                break
            fresh = [m for m in received if m.message.message_id not in seen]
            again = [m.ack_id for m in received if m.message.message_id in seen]
            if again:  # a letter held earlier whose lease ran out: let it go at once
                _set_deadline(subscriber, subscription, again, 0)
            empty_pulls = 0 if fresh else empty_pulls + 1
            publishing, keep = [], []
            for received_message in fresh:
                message = received_message.message
                seen.add(message.message_id)
                counts["read"] += 1
                decision = plan(message.data, dict(message.attributes), reasons=reasons, stages=stages, syncs=syncs)
                if isinstance(decision, Replay) and topics[decision.topic] is None:
                    decision = NO_DESTINATION
                if not isinstance(decision, Replay):
                    counts[decision] += 1
                    keep.append(received_message.ack_id)
                elif dry_run:
                    counts["would_move"] += 1
                    counts[f"to_{decision.topic}"] += 1
                    keep.append(received_message.ack_id)
                else:
                    future = publisher.publish(topics[decision.topic], decision.data, **decision.attributes)
                    publishing.append((received_message.ack_id, decision.topic, future))
            done = []
            for ack_id, topic, future in publishing:
                try:
                    future.result(timeout=PUBLISH_TIMEOUT_SECONDS)
                except Exception as error:  # noqa: BLE001 - counted, reported, the letter stays
                    counts[PUBLISH_FAILED] += 1
                    keep.append(ack_id)
                    print(f"replay: could not publish to the {topic} topic: {type(error).__name__}", file=sys.stderr)
                    continue
                counts["moved"] += 1
                counts[f"to_{topic}"] += 1
                done.append(ack_id)
            if done:
                for i in range(0, len(done), 1000):
                    subscriber.acknowledge(request={"subscription": subscription, "ack_ids": done[i:i + 1000]})
            if keep:  # read once: hold them until the end instead of reading them again
                _set_deadline(subscriber, subscription, keep, HOLD_SECONDS)
                held.extend(keep)
    finally:
        if held:
            _set_deadline(subscriber, subscription, held, 0)
    _report(counts, dry_run, topics, sys.stdout if out is None else out)
    return counts


def _subscriber_client():
    """The subscriber. Against the emulator, over a channel that takes Pub/Sub's 10 MB messages:
    the client library's emulator channel keeps gRPC's 4 MB default (production channels have no
    limit), so a large dead letter could not be read locally."""
    from google.cloud import pubsub_v1

    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:
        return pubsub_v1.SubscriberClient()
    import grpc
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    channel = grpc.insecure_channel(host, options=[("grpc.max_receive_message_length", -1),
                                                   ("grpc.max_send_message_length", -1)])
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


def _set_deadline(subscriber, subscription: str, ack_ids, seconds: int) -> None:
    for i in range(0, len(ack_ids), 1000):
        subscriber.modify_ack_deadline(request={"subscription": subscription, "ack_ids": ack_ids[i:i + 1000],
                                                "ack_deadline_seconds": seconds})


def _report(counts, dry_run: bool, topics, out) -> None:
    verb, moved = ("would move", counts["would_move"]) if dry_run else ("moved", counts["moved"])
    where = ", ".join(f"{counts[f'to_{name}']} to the {name} topic" for name, topic in topics.items() if topic)
    left = sum(counts[reason] for reason in LEFT_REASONS) + (counts["would_move"] if dry_run else 0)
    why = ", ".join(f"{reason.replace('_', ' ')}: {counts[reason]}" for reason in LEFT_REASONS if counts[reason])
    print(f"replay: read {counts['read']} dead letters, {verb} {moved} ({where or 'no topic given'}), "
          f"left {left} in place" + (f" ({why})" if why else ""), file=out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.replay", description=__doc__.splitlines()[0],
        epilog="Letters not chosen, malformed or cut stay in the dead-letter subscription. Exit code 1 if a "
        "publish failed.")
    parser.add_argument("--dead_letter_subscription", required=True,
                        help="a subscription of the dead-letter topic, projects/P/subscriptions/S")
    parser.add_argument("--input_topic", help="the job's input topic, projects/P/topics/T: input events go "
                        "there (without it they stay in place)")
    parser.add_argument("--replay_topic", help="the topic of the job's --replay_subscription, projects/P/topics/T, "
                        "that only the operator may publish to: Braze objects go there (without it they stay "
                        "in place)")
    parser.add_argument("--reason", action="append", default=[], help="only these reasons (repeatable)")
    parser.add_argument("--stage", action="append", default=[], help="only these stages (repeatable)")
    parser.add_argument("--sync", action="append", default=[], help="only these syncs (repeatable)")
    parser.add_argument("--max_messages", type=int, help="stop after reading this many dead letters")
    parser.add_argument("--dry_run", action="store_true", help="count what would move; move nothing")
    args = parser.parse_args(argv)
    if not SUBSCRIPTION_RE.match(args.dead_letter_subscription):
        parser.error("--dead_letter_subscription must look like projects/P/subscriptions/S")
    for name in ("input_topic", "replay_topic"):
        value = getattr(args, name)
        if value is not None and not TOPIC_RE.match(value):
            parser.error(f"--{name} must look like projects/P/topics/T")
    if not args.input_topic and not args.replay_topic:
        parser.error("give --input_topic, --replay_topic or both: where the chosen dead letters go")
    if args.input_topic and args.input_topic == args.replay_topic:
        parser.error("--replay_topic must not be the input topic: Braze objects would then be open to "
                     "anyone who may publish events")
    if args.max_messages is not None and args.max_messages < 1:
        parser.error("--max_messages must be >= 1")
    counts = replay(args.dead_letter_subscription, input_topic=args.input_topic, replay_topic=args.replay_topic,
                    reasons=set(args.reason), stages=set(args.stage), syncs=set(args.sync), dry_run=args.dry_run,
                    max_messages=args.max_messages)
    return 1 if counts[PUBLISH_FAILED] or counts["pull_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
