"""Packing Braze objects into /users/track-sized requests: the pure rules under the packer
(``transforms.batching``), also run by the tests and the benchmark.

Braze caps a request at 75 objects in all (``combined``, current accounts) or 75 per array
(``per_type``, legacy rate limits), and at 4 MB (``transforms.braze_facts``); the cap is
checked *before* an object is added. One user, one request, one attribute object:

- At flush time a user's attribute updates collapse into one object carrying the final
  values (``collapse``), so several updates in one batch window cost one object and only the
  data points of what finally changed. The merged object carries every source, so the sink
  still accounts for each event.
- A user's attribute update that will merge takes no object slot, so it never forces a flush.
- When an object does not fit (75 objects per array in ``per_type`` mode, or 4 MB), the
  objects already waiting for that user are kept back with it for the next request
  (``carry_over``) instead of being sent without it; they keep their original deadline.
- An event that updates its user reaches the packer right behind that update (see
  ``transforms.route``). An update that would fill the request opens the next one instead
  (that request leaves with 74 objects), so its event's objects join it.
- Left: an update and events of *different* events of one user can still be split by a full
  request, or by a flush on time between them (each event's own update stays with it).
"""
from __future__ import annotations

import collections
import zlib
from typing import List, NamedTuple, Tuple

import orjson
from apache_beam.metrics import Metrics

from transforms.attribute_values import NOT_ATTRIBUTES, is_identify_attributes, merge_attribute_items
from transforms.braze_facts import MAX_BODY_BYTES, MAX_OBJECTS_PER_REQUEST as MAX_OBJECTS
from transforms.records import KINDS, BrazeItem
from transforms.sanitize import clean_attributes

__all__ = ["EMPTY", "EMPTY_FILL", "LIMIT_MODES", "MAX_OBJECTS", "Counts", "Fill", "RequestLimits", "admit",
           "admit_last", "carry_over", "collapse", "fill_of", "object_size", "pack", "pack_more", "shard_key"]

LIMIT_MODES = ("combined", "per_type")
# Room for the body's own brackets, keys and commas: 3 array keys and a comma per object.
_BODY_OVERHEAD_BYTES = 64
_KIND_INDEX = {kind: i for i, kind in enumerate(KINDS)}


def object_size(item: BrazeItem) -> int:
    return len(orjson.dumps(item.obj)) + 1  # + the comma between objects


class RequestLimits:
    """Whether one more object fits in the request being filled (pure, unit-tested)."""

    def __init__(self, mode: str = "combined", max_objects: int = MAX_OBJECTS, max_bytes: int = MAX_BODY_BYTES):
        if mode not in LIMIT_MODES:
            raise ValueError(f"braze batch limit mode must be one of {LIMIT_MODES}, got {mode!r}")
        if not 1 <= max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects must be 1..{MAX_OBJECTS}, got {max_objects}")
        self.mode = mode
        self.max_objects = max_objects
        self.max_bytes = max_bytes - _BODY_OVERHEAD_BYTES

    def fits(self, counts: Counts, kind: str, size: int) -> bool:
        """Whether one more ``kind`` object of ``size`` bytes fits beside ``counts``."""
        if counts.bytes + size > self.max_bytes:
            return False
        if self.mode == "combined":
            return counts.objects() < self.max_objects
        return counts[_KIND_INDEX[kind]] < self.max_objects

    def full(self, counts: Counts) -> bool:
        if self.mode == "combined":
            return counts.objects() >= self.max_objects
        return counts.attributes >= self.max_objects and counts.events >= self.max_objects and \
            counts.purchases >= self.max_objects

    @staticmethod
    def add(counts: Counts, kind: str, size: int) -> Counts:
        attributes, events, purchases, size_before = counts
        index = _KIND_INDEX[kind]
        return Counts(attributes + (index == 0), events + (index == 1), purchases + (index == 2), size_before + size)


class Counts(NamedTuple):
    """What a request being filled holds: objects by array (in ``KINDS``' order) and bytes."""
    attributes: int
    events: int
    purchases: int
    bytes: int

    def objects(self) -> int:
        return self.attributes + self.events + self.purchases


class Fill(NamedTuple):
    """A request being filled: its ``Counts``, and the users whose attribute object a later
    update of theirs merges into (so it takes bytes but no object slot)."""
    counts: Counts
    merging: Tuple[str, ...]


EMPTY = Counts(0, 0, 0, 0)
EMPTY_FILL = Fill(EMPTY, ())


def _user(item: BrazeItem) -> Tuple[str, str]:
    return item.sync, item.user_key


def admit(fill, item: BrazeItem, size: int, limits: RequestLimits):
    """The request's fill with ``item`` added, or None when it does not fit.

    An attribute update of a user who already has one in the request merges into it at
    flush time, so it takes bytes but no object slot. The first object of a request always
    fits (one object over 4 MB is Braze's to refuse, and the sink dead-letters it)."""
    counts, merging = fill
    mergeable = is_identify_attributes(item)
    if mergeable and item.user_key in merging:
        if counts.bytes + size > limits.max_bytes:
            return None
        return Fill(Counts(counts.attributes, counts.events, counts.purchases, counts.bytes + size), merging)
    if counts != EMPTY and not limits.fits(counts, item.kind, size):
        return None
    return Fill(limits.add(counts, item.kind, size), merging + (item.user_key,) if mergeable else merging)


def admit_last(fill, item: BrazeItem, size: int, limits: RequestLimits):
    """``admit``, except that an attribute update that would fill the request opens the next
    one instead: its event's objects come right behind it (``transforms.route``), and a full
    request leaves at once, so they would be sent without it."""
    added = admit(fill, item, size, limits)
    if (added is not None and fill.counts != EMPTY and is_identify_attributes(item) and limits.full(added.counts)
            and added.counts.objects() != fill.counts.objects()):
        return None
    return added


def fill_of(items: List[BrazeItem], limits: RequestLimits):
    """The fill of a request holding ``items``, or None if they do not fit in one."""
    fill = EMPTY_FILL
    for item in items:
        fill = admit(fill, item, object_size(item), limits)
        if fill is None:
            return None
    return fill


def carry_over(batch: List[BrazeItem], item: BrazeItem, limits: RequestLimits):
    """``(send now, keep for the next request)`` when ``item`` does not fit in ``batch``.

    The objects of ``item``'s user wait with it for the next request, so a user's attributes
    are not sent in one request and their events in another (Braze orders only within a
    request). Only when that leaves something to send and the user's objects fit together."""
    user = _user(item)
    keep = [i for i in batch if _user(i) == user]
    if not keep or len(keep) == len(batch) or fill_of(keep + [item], limits) is None:
        return batch, []
    return [i for i in batch if _user(i) != user], keep


def collapse(batch: List[BrazeItem]) -> List[BrazeItem]:
    """One attribute object per user: a user's attribute updates merge into one object in the
    place of the first (``transforms.identify.merge_attribute_items``). Other objects, and
    attribute objects not made by the identify step (replays), pass as they are."""
    groups = collections.defaultdict(list)
    for item in batch:
        if is_identify_attributes(item):
            groups[_user(item)].append(item)
    if not groups:
        return list(batch)
    out = []
    for item in batch:
        if not is_identify_attributes(item):
            out.append(item)
            continue
        group = groups.pop(_user(item), None)
        if group is not None:
            out.append(_merged(group) if len(group) > 1 else group[0])
    return out


def _merged(group: List[BrazeItem]) -> BrazeItem:
    """One user's attribute items as one; values are sanitised again because merging can make
    a value Braze would refuse (two ``inc`` steps summing past 64 bits)."""
    dropped: List[str] = []
    merged = merge_attribute_items(group, dropped)
    obj, changes, _ = clean_attributes(merged.obj, NOT_ATTRIBUTES)
    for change in (*dropped, *changes):
        Metrics.counter("sanitize", change).inc()
    return merged._replace(obj=obj) if changes else merged


def pack(items: List[BrazeItem], limits: RequestLimits) -> List[List[BrazeItem]]:
    """Split items, in order, into requests as ``_PackDoFn`` does (for tests and the benchmark)."""
    requests: List[List[BrazeItem]] = []
    batch, _ = pack_more([], EMPTY_FILL, items, limits, requests)
    if batch:
        requests.append(collapse(batch))
    return requests


def pack_more(batch: List[BrazeItem], fill, items, limits: RequestLimits, requests: list):
    """``pack`` resumed: go on filling the open request ``batch`` (with its ``fill``) with
    ``items``, appending each request that closes to ``requests`` (collapsed); returns the open
    request's ``(batch, fill)``, so the caller can feed more items later."""
    for item in items:
        size = object_size(item)
        added = admit_last(fill, item, size, limits)
        if added is None:
            send, batch = carry_over(batch, item, limits)
            requests.append(collapse(send))
            fill = fill_of(batch, limits)
            added = admit(fill, item, size, limits)
        batch.append(item)
        fill = added
        if limits.full(fill.counts):
            requests.append(collapse(batch))
            batch, fill = [], EMPTY_FILL
    return batch, fill


def shard_key(sync: str, user_key: str, shards: int) -> str:
    # crc32 is stable across processes (Python's hash() of str is salted per process).
    return f"{sync}#{zlib.crc32(user_key.encode('utf-8')) % shards}"
