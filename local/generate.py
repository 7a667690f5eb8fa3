"""A deterministic, realistic stream of Amplitude events as Pub/Sub message bodies: to a JSONL
file or the emulator, from the command line (the generator itself is ``local.event_generator``).

The demo, the integration tests and the benchmark need input that looks like what Amplitude
and its SDKs really send, including the awkward parts (both wire shapes, every identify
operation, unicode, long strings, duplicates, arrays, broken messages), and they need the same
input every time: one ``random.Random(seed)`` drives everything, so the same arguments give
byte-identical output.

Counting: ``events`` counts events, not messages. An array message counts as its length, a
repeated (duplicate) message counts again, and a malformed message counts as one event.

JSONL files hold one message body per line. Bodies may be empty or not UTF-8, so read them in
binary mode and keep empty lines; ``read_messages`` does that.

    python -m local.generate --events 1000 --users 100 --seed 7 --out sample.jsonl
    python -m local.generate --events 1000 --users 100 --seed 7 --topic events   # to the emulator
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

# The generator; its public names stay importable from here.
from local.event_generator import (  # noqa: F401
    DEFAULT_START_MS, EXPORT_SHAPE, HTTP_SHAPE, IDENTIFY_OPERATIONS, MALFORMED_KINDS, GeneratorConfig,
    generate_messages,
)

__all__ = [
    "GeneratorConfig",
    "generate_messages",
    "read_messages",
    "write_jsonl",
    "IDENTIFY_OPERATIONS",
    "MALFORMED_KINDS",
    "DEFAULT_START_MS",
]


def write_jsonl(path: str, messages) -> int:
    """Write one body per line and return how many were written."""
    count = 0
    with open(path, "wb") as out:
        for body in messages:
            out.write(body + b"\n")
            count += 1
    return count


def read_messages(path: str) -> List[bytes]:
    """The bodies of a JSONL file written by ``write_jsonl``, empty ones included."""
    with open(path, "rb") as source:
        data = source.read()
    if not data:
        return []
    return data[:-1].split(b"\n") if data.endswith(b"\n") else data.split(b"\n")


def _publish(topic: str, project: str, messages, chunk: int = 1000) -> int:
    """Publish to the emulator named by PUBSUB_EMULATOR_HOST; returns the number published."""
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        raise SystemExit("PUBSUB_EMULATOR_HOST is not set; start the emulator (python -m local.pubsub_emulator)")
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    topic_path = publisher.topic_path(project, topic)
    # Pub/Sub refuses a message with neither data nor attributes, and we do send empty bodies.
    attributes = {"source": "local.generate"}
    published, futures = 0, []
    for body in messages:
        futures.append(publisher.publish(topic_path, body, **attributes))
        if len(futures) >= chunk:
            for future in futures:
                future.result(timeout=60)
            published, futures = published + len(futures), []
    for future in futures:
        future.result(timeout=60)
    return published + len(futures)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, required=True, help="number of events (not messages)")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="JSONL file, one message body per line")
    target.add_argument("--topic", help="publish to this topic on the emulator at PUBSUB_EMULATOR_HOST")
    parser.add_argument("--project", default="local-project")
    parser.add_argument("--malformed-share", type=float, default=GeneratorConfig.malformed_share)
    parser.add_argument("--duplicate-share", type=float, default=GeneratorConfig.duplicate_share)
    parser.add_argument("--array-share", type=float, default=GeneratorConfig.array_share)
    parser.add_argument("--start-ms", type=int, default=DEFAULT_START_MS, help="time of the first event, epoch ms")
    args = parser.parse_args(argv)
    try:
        config = GeneratorConfig(
            events=args.events, users=args.users, seed=args.seed, malformed_share=args.malformed_share,
            duplicate_share=args.duplicate_share, array_share=args.array_share, start_ms=args.start_ms)
    except ValueError as error:
        parser.error(str(error))
    messages = generate_messages(config)
    if args.out:
        count = write_jsonl(args.out, messages)
        print(f"wrote {count} messages ({config.events} events) to {args.out}", file=sys.stderr)
    else:
        count = _publish(args.topic, args.project, messages)
        print(f"published {count} messages ({config.events} events) to {args.topic}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
