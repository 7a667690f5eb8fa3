"""What Amplitude holds for a user after a stream of property operations, computed independently
of the job (no code of ``transforms/``), and a generator of such streams for the end-to-end tests
of ordering and outages.

Amplitude applies a user's operations in event-time order (its docs; docs/api-facts.md,
A3). The model covers the operations the generator makes: ``$set``, ``$setOnce``, ``$add``,
``$unset`` on scalars, ``$append``/``$remove`` on an array whose values are never repeated (Braze
arrays hold unique values, so the comparison is exact), and snapshots on ordinary events.
"""
from __future__ import annotations

import collections
import random
from typing import Dict, List, Tuple

import orjson

T0_MS = 1_796_000_000_000
PROPERTIES = ("plan", "score", "tags")
PLANS = ("free", "pro", "team", "enterprise")


def apply_in_event_time_order(operations: List[Tuple[int, str, str, object]]) -> dict:
    """``[(time_ms, op, property, value)]`` of one user → the user's properties."""
    state: Dict[str, object] = {}
    for _, op, name, value in sorted(operations, key=lambda o: o[0]):
        if op == "$set":
            state[name] = value
        elif op == "$setOnce":
            state.setdefault(name, value)
        elif op == "$unset":
            state.pop(name, None)
        elif op == "$add":
            state[name] = state.get(name, 0) + value
        elif op == "$append":
            state[name] = list(state.get(name, [])) + [value]
        elif op == "$remove":
            state[name] = [v for v in state.get(name, []) if v != value]
        else:
            raise ValueError(op)
    return state


def user_operations(rng: random.Random, count: int) -> List[Tuple[str, str, object]]:
    """A plausible sequence of one user's operations (without times)."""
    ops: List[Tuple[str, str, object]] = []
    tags: List[str] = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.25:
            ops.append(("$set", "plan", rng.choice(PLANS)))
        elif roll < 0.32:
            ops.append(("$setOnce", "plan", rng.choice(PLANS)))
        elif roll < 0.38:
            ops.append(("$unset", "plan", "-"))
        elif roll < 0.58:
            ops.append(("$add", "score", rng.randint(-5, 20)))
        elif roll < 0.66:
            ops.append(("$set", "score", rng.randint(0, 50)))
        elif roll < 0.86 or not tags:
            tag = f"t{i}"
            tags.append(tag)
            ops.append(("$append", "tags", tag))
        else:
            ops.append(("$remove", "tags", tags.pop(rng.randrange(len(tags)))))
    return ops


def identify_message(user: str, time_ms: int, op: str, name: str, value, insert_id: str) -> bytes:
    return orjson.dumps({"event_type": "$identify", "user_id": user, "time": time_ms, "insert_id": insert_id,
                         "user_properties": {op: {name: value}}})


def stream(seed: int, users: int, ops_per_user: int, prefix: str):
    """``(messages in publish order, expected properties per user)``.

    Each user's operations are 20-400 ms apart in event time, users interleaved; the publish
    order is event-time order except that about a third of each user's consecutive operations
    swap places (Pub/Sub and publishers keep no order), so a user's operations often arrive out
    of order, a ``$set`` after the ``$add`` that followed it included. Each moves one place at
    most: published well within the job's reorder lateness of its neighbour."""
    rng = random.Random(seed)
    timeline = []
    expected = {}
    for u in range(users):
        user = f"{prefix}-{u:03d}"
        t = T0_MS + rng.randint(0, 500)
        ops = []
        for i, (op, name, value) in enumerate(user_operations(rng, ops_per_user)):
            t += rng.randint(20, 400)
            ops.append((t, op, name, value))
            timeline.append((t, user, identify_message(user, t, op, name, value, f"{user}-{i}")))
        expected[user] = apply_in_event_time_order(ops)
    timeline.sort(key=lambda e: e[0])
    messages = [m for _, _, m in timeline]
    positions = collections.defaultdict(list)  # user → positions of their messages, in order
    for position, (_, user, _) in enumerate(timeline):
        positions[user].append(position)
    for user_positions in positions.values():
        i = 0
        while i + 1 < len(user_positions):
            if rng.random() < 0.35:  # a pair swaps; each operation moves one place at most
                a, b = user_positions[i], user_positions[i + 1]
                messages[a], messages[b] = messages[b], messages[a]
                i += 2
            else:
                i += 1
    return messages, expected


def braze_view(expected: dict) -> dict:
    """The model's properties as Braze holds them: an empty array and a removed value are absent
    (the job sends a removal as ``null``, which removes the attribute)."""
    return {k: v for k, v in expected.items() if v != []}
