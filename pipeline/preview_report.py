"""What ``pipeline.preview`` found, as a readable table or as JSON lines (pure; no Beam here).

Per sync: each request it would send, and each event of the sample it would not send, with the
rule that skipped it or the reason it would be dead-lettered. An event counts as sent by a sync
when any of its branches (track, identify) would send an object; it is listed as
``dead_lettered`` when any branch would dead-letter it, else as ``skipped`` when no branch
sends it. Its ``reason`` names each such branch, ``branch: reason`` joined by ``; ``
(``track: not_selected; identify: no_selected_property``). A line that fails before the fan-out
to syncs (parse, dedup) has no sync: ``parse: invalid_json``, ``dedup: duplicate``.

JSON lines, one object each, as issue 16 specifies them::

    {"sync": S, "request": BODY}
    {"sync": S, "line": N, "insert_id": ID, "outcome": "skipped"|"dead_lettered", "reason": R}

``line`` is the sample's line number (1-based); a sample line is one Pub/Sub message whose id is
that number, so the job's sources (``<message id>/<index>``) lead back to it.
"""
from __future__ import annotations

import collections
import urllib.parse
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import orjson

from pipeline.config import Sync
from transforms.records import DEAD_LETTERED, SKIPPED, DeadLetter, Outcome, ShadowRequest
from transforms.shadow import SHADOW

__all__ = ["NotSent", "Preview", "line_of", "not_sent", "json_lines", "table", "body_lines", "BRANCH_ORDER"]

# The order branches are named in a reason: the event-wide stages first, then the sync's.
BRANCH_ORDER = ("parse", "dedup", "route", "track", "identify", "replay")


class NotSent(NamedTuple):
    """An event of the sample that a sync would not send (``sync`` None: before routing)."""

    sync: Optional[str]
    line: int
    insert_id: Optional[str]
    outcome: str  # "skipped" | "dead_lettered"
    reason: str  # "branch: reason; ..."
    detail: str = ""  # a dead letter's explanation, for the table
    source: str = ""


class Preview(NamedTuple):
    """Everything one preview run produced, in the job's own records."""

    syncs: Tuple[Sync, ...]  # every sync of the file, in file order (disabled ones are not run)
    requests: Tuple[ShadowRequest, ...]
    outcomes: Tuple[Outcome, ...]
    dead_letters: Tuple[DeadLetter, ...]
    insert_ids: Dict[str, Optional[str]]  # source → insert id
    lines: int  # sample lines read (blank ones excluded)
    events: int  # events in them (a line may hold a JSON array of events)
    seconds: float = 0.0


def line_of(source: str) -> int:
    """The sample line a source came from: its message id is the line number."""
    try:
        return int(source.split("/", 1)[0])
    except ValueError:
        return 0


def _branch_rank(branch: str) -> int:
    return BRANCH_ORDER.index(branch) if branch in BRANCH_ORDER else len(BRANCH_ORDER)


def _reason(parts: Iterable[Tuple[str, str]]) -> str:
    unique = dict.fromkeys(parts)  # one event's objects in one branch may share a reason
    return "; ".join(f"{branch}: {reason}" for branch, reason in sorted(unique, key=lambda p: _branch_rank(p[0])))


def not_sent(outcomes: Iterable[Outcome], dead_letters: Iterable[DeadLetter],
             insert_ids: Dict[str, Optional[str]]) -> List[NotSent]:
    """Every (sync, event) the preview would not send, in sample order (pure).

    A sync's objects end ``skipped``/``shadow`` when they would have been sent (the preview
    runs every sync in shadow mode): any such branch makes the event sent."""
    details: Dict[Tuple[str, str], str] = {}
    for letter in dead_letters:
        for source in letter.sources:
            details.setdefault((letter.sync or "", source), letter.detail)
    ends: Dict[Tuple[str, str], List[Tuple[str, str, str]]] = collections.defaultdict(list)
    for o in outcomes:
        ends[(o.sync or "", o.source)].append((o.branch, o.status, o.reason))
    found = []
    for (sync, source), parts in ends.items():
        dead = [(branch, reason) for branch, status, reason in parts if status == DEAD_LETTERED]
        if not dead and any(status == SKIPPED and reason == SHADOW for _, status, reason in parts):
            continue  # a branch would send it
        if dead:
            outcome, reason = DEAD_LETTERED, _reason(dead)
        else:
            outcome, reason = SKIPPED, _reason((branch, reason) for branch, _, reason in parts)
        found.append(NotSent(sync or None, line_of(source), insert_ids.get(source), outcome, reason,
                             details.get((sync, source), ""), source))
    return sorted(found, key=lambda n: (n.line, _source_index(n.source), n.sync or ""))


def _source_index(source: str) -> int:
    try:
        return int(source.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return 0


def _requests_by_sync(preview: Preview) -> Dict[str, List[ShadowRequest]]:
    by_sync: Dict[str, List[ShadowRequest]] = collections.defaultdict(list)
    for r in sorted(preview.requests, key=lambda r: (r.sync, _shard(r.key), r.seq)):
        by_sync[r.sync].append(r)
    return by_sync


def _shard(key: str) -> int:
    try:
        return int(key.rsplit("#", 1)[1])
    except (IndexError, ValueError):
        return 0


def json_lines(preview: Preview) -> List[str]:
    """The preview as JSON lines: events that fail before routing, then per sync (file order)
    its requests and the events it would not send."""
    skipped = not_sent(preview.outcomes, preview.dead_letters, preview.insert_ids)
    requests = _requests_by_sync(preview)
    out = [_not_sent_json(n) for n in skipped if n.sync is None]
    for sync in preview.syncs:
        if not sync.enabled:
            continue
        out += [orjson.dumps({"sync": sync.name, "request": orjson.loads(r.body)}).decode()
                for r in requests[sync.name]]
        out += [_not_sent_json(n) for n in skipped if n.sync == sync.name]
    return out


def _not_sent_json(n: NotSent) -> str:
    return orjson.dumps({"sync": n.sync, "line": n.line, "insert_id": n.insert_id, "outcome": n.outcome,
                         "reason": n.reason}).decode()


def _host(endpoint: str) -> str:
    # Only scheme and host: a URL may carry credentials, which are never printed.
    url = urllib.parse.urlsplit(endpoint)
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.hostname}{port}"


def _kinds(body: dict) -> str:
    counts = [(len(body[k]), k) for k in ("attributes", "events", "purchases") if body.get(k)]
    return ", ".join(f"{n} {kind if n != 1 else kind[:-1]}" for n, kind in counts)


def body_lines(body: dict) -> List[str]:
    """A request body as valid JSON, one Braze object per line: readable, and still the body."""
    arrays = [(kind, objects) for kind, objects in body.items()]
    out = ["{"]
    for i, (kind, objects) in enumerate(arrays):
        out.append(f"  {orjson.dumps(kind).decode()}: [")
        out += [f"    {orjson.dumps(o).decode()}{',' if j < len(objects) - 1 else ''}" for j, o in enumerate(objects)]
        out.append("  ]" + ("," if i < len(arrays) - 1 else ""))
    out.append("}")
    return out


def _not_sent_rows(rows: Sequence[NotSent], indent: str) -> List[str]:
    if not rows:
        return []
    ids = [n.insert_id or "-" for n in rows]
    width_line = max(4, max(len(str(n.line)) for n in rows))
    width_id = min(40, max(9, max(len(i) for i in ids)))
    out = [f"{indent}{'line':<{width_line}}  {'insert_id':<{width_id}}  {'outcome':<13}  reason"]
    for n, insert_id in zip(rows, ids):
        reason = n.reason + (f" ({n.detail})" if n.detail and n.outcome == DEAD_LETTERED else "")
        out.append(f"{indent}{n.line:<{width_line}}  {insert_id:<{width_id}}  {n.outcome:<13}  {reason}")
    return out


def table(preview: Preview) -> List[str]:
    """The preview for a person: per sync, its requests (bodies indented) and what it would not send."""
    skipped = not_sent(preview.outcomes, preview.dead_letters, preview.insert_ids)
    requests = _requests_by_sync(preview)
    enabled = [s for s in preview.syncs if s.enabled]
    out = [f"preview: {preview.events} event(s) in {preview.lines} line(s), {len(enabled)} enabled sync(s), "
           f"{len(preview.requests)} request(s) that would be sent; nothing was sent, no key was read "
           f"({preview.seconds:.1f} s)"]
    early = [n for n in skipped if n.sync is None]
    if early:
        out += ["", f"before routing (no sync sees these): {len(early)} event(s)"]
        out += _not_sent_rows(early, "  ")
    for sync in preview.syncs:
        out.append("")
        if not sync.enabled:
            out.append(f"sync {sync.name}: disabled (enabled: false), not previewed")
            continue
        mine = requests[sync.name]
        rows = [n for n in skipped if n.sync == sync.name]
        objects = sum(r.objects for r in mine)
        out.append(f"sync {sync.name} (mode: {sync.mode}): {len(mine)} request(s), {objects} object(s); "
                   f"{len(rows)} event(s) not sent")
        for i, r in enumerate(mine, 1):
            body = orjson.loads(r.body)
            out.append(f"  request {i} of {len(mine)}: POST {_host(sync.endpoint)}/users/track  "
                       f"Authorization: Bearer ***  (batch key {r.key}, seq {r.seq}; {_kinds(body)})")
            out += ["    " + line for line in body_lines(body)]
        if rows:
            counts = collections.Counter(n.reason for n in rows)
            out.append("  not sent: " + ", ".join(f"{count} × {reason}" for reason, count in counts.most_common()))
            out += _not_sent_rows(rows, "    ")
    return out
