"""Delivering cohort changes to Braze: the two modes, and the Beam transform.

Modes (``Target.delivery``; docs/api-facts.md, B15 and B1):

* ``partner``: ``POST {endpoint}/partners/{partner}/cohorts`` names the cohort (called by the
  job before any membership call, on the first sync and when the cohort was renamed), then
  ``POST {endpoint}/partners/{partner}/cohorts/users`` carries the changes. Both keys go in the
  body (``partner_api_key``, ``client_secret`` = the Data Import Key); there is no
  Authorization header. At most 1,000 ids per request; each request holds one change object,
  adds (``should_remove`` absent) and removes (``should_remove: true``) never share one.
  Success status and body are unconfirmed (Segment's mocks use ``201 {}``), so any 2xx is a
  success; 423 (resource locked) is retried; 400/401/403/404 fail the request.
* ``attribute``: ``POST {endpoint}/users/track`` with ≤ 75 attribute objects per request,
  ``{<attribute>: {"add": [value]}}`` on entry and ``{"remove": [value]}`` on exit, and
  ``_update_existing_only: true`` so no user is ever created. Braze's ``errors[]`` for one
  object makes that user ``skipped: rejected_by_braze``; the rest of the request counts.

Unknown users: both modes change existing users only, and neither answer says which ids
matched. So when the target verifies users (``verify_users``, the default), ``deliver()``
first looks the batch up through ``/users/export/ids`` (``transforms.cohorts.lookup``): users
Braze does not know are ``skipped: unknown_to_braze`` and not sent, and a failed lookup makes
its changes FAILED. With ``verify_users: false`` every change is sent and reported as sent.
Other skips: ``unresolved_mapping`` (no value for the mapped property), ``rejected_by_braze``.

Retries (``transforms.cohorts.transport``) follow the streaming sink; past the budget the
changes are FAILED (``retries_exhausted``), and a run with a FAILED change is a failed run. An
unexpected error in the delivery step makes its changes FAILED (``internal_error``, guarded by
``transforms.guard``) instead of stopping the job.

Keys are resolved in ``setup()`` (``transforms.secrets.resolve_api_key``) and live only in the
request bodies/headers; they never reach a result, a log line or a report.
"""
from __future__ import annotations

import datetime
import logging
import random
import time
import typing
import zlib
from typing import Callable, List, Optional, Sequence, Tuple

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics

from transforms.cohorts.model import CohortSync, Target, UserMapping
from transforms import braze_client as bc
from transforms.braze_client import BrazeClient, classify
from transforms.braze_facts import MAX_OBJECTS_PER_REQUEST, MAX_PARTNER_IDS
from transforms.cohorts.lookup import ExportClient, check_users, lookup_key_reference
from transforms.cohorts.records import ADD, DONE, FAILED, REJECTED_BY_BRAZE, REMOVE, SKIPPED, Change, Result
from transforms.cohorts.transport import PartnerClient, classify_partner
from transforms.retry_policy import RETRIES_EXHAUSTED, RetryPolicy, send_with_retries
from transforms.guard import INTERNAL_ERROR, guarded
from transforms.scrub import remember_secret
from transforms.secrets import SecretError, resolve_api_key

__all__ = [
    "RETRIES_EXHAUSTED", "PARTNER_MAX_IDS", "TRACK_MAX_OBJECTS", "RetryPolicy", "CohortDeliverer", "DeliverChanges",
    "PartnerClient", "attribute_value", "attribute_objects", "classify_partner", "cohort_label", "partner_changes_body",
    "partner_name_body", "send_with_retries",
]

_LOG = logging.getLogger(__name__)

PARTNER_MAX_IDS = MAX_PARTNER_IDS  # user_ids + device_ids + aliases, per request (docs/api-facts.md, B15)
TRACK_MAX_OBJECTS = MAX_OBJECTS_PER_REQUEST  # objects per /users/track request (B2)
METRICS_NAMESPACE = "cohorts"
API_KEY_UNAVAILABLE = "api_key_unavailable"


# --------------------------------------------------------------------------------------------
# Payloads (pure)


def cohort_label(sync: CohortSync) -> str:
    """How Braze shows an Amplitude cohort: ``[Amplitude] <name>: <id>`` (docs/api-facts.md, A5)."""
    return f"[Amplitude] {sync.cohort_name}: {sync.cohort_id}"


def attribute_value(target: Target, sync: CohortSync) -> str:
    return cohort_label(sync) if target.attribute_value == "label" else sync.cohort_id


def partner_name_body(partner_api_key: str, client_secret: str, sync: CohortSync, created_at: str) -> dict:
    return {"partner_api_key": partner_api_key, "client_secret": client_secret, "cohort_id": sync.cohort_id,
            "name": sync.cohort_name, "created_at": created_at}


def partner_changes_body(partner_api_key: str, client_secret: str, cohort_id: str, mapping: UserMapping,
                         op: str, keys: Sequence[str]) -> dict:
    if op not in (ADD, REMOVE):
        raise ValueError(f"op must be {ADD!r} or {REMOVE!r}, got {op!r}")
    if not keys or len(keys) > PARTNER_MAX_IDS:
        raise ValueError(f"a request carries 1..{PARTNER_MAX_IDS} ids, got {len(keys)}")
    if mapping.type == "user_id":
        change = {"user_ids": list(keys)}
    elif mapping.type == "device_id":
        change = {"device_ids": list(keys)}
    else:
        change = {"aliases": [{"alias_name": k, "alias_label": mapping.alias_label} for k in keys]}
    if op == REMOVE:
        change["should_remove"] = True
    return {"partner_api_key": partner_api_key, "client_secret": client_secret, "cohort_id": cohort_id,
            "cohort_changes": [change]}


def attribute_objects(mapping: UserMapping, attribute: str, value: str, op: str, keys: Sequence[str]) -> List[dict]:
    if mapping.type == "device_id":
        raise ValueError("/users/track cannot address a user by device id; use partner delivery")
    objects = []
    for k in keys:
        ident = {"external_id": k} if mapping.type == "user_id" else {
            "user_alias": {"alias_name": k, "alias_label": mapping.alias_label}}
        objects.append({**ident, attribute: {"add" if op == ADD else "remove": [value]},
                        "_update_existing_only": True})
    return objects


# --------------------------------------------------------------------------------------------
# One target's deliverer (plain Python; used by the batch and the real-time DoFns)


class CohortDeliverer:
    """Sends one cohort's changes to one target. ``open()`` reads the keys and opens sessions."""

    def __init__(self, target: Target, sync: CohortSync, policy: RetryPolicy = RetryPolicy(), *,
                 resolve_key: Callable[[str], str] = resolve_api_key, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time):
        self.target = target
        self.sync = sync
        self.policy = policy.check()
        self._lookup_ref = lookup_key_reference(target)  # None: send unchecked; ValueError: no key
        self._resolve_key = resolve_key
        self._sleep = sleep
        self._clock = clock
        self._rng = random.Random()
        self._keys: Optional[Tuple[str, ...]] = None
        self._key_error: Optional[str] = None
        self._clients: dict = {}
        self._requests = Metrics.counter(METRICS_NAMESPACE, f"{sync.name}.requests")
        self._failed = Metrics.counter(METRICS_NAMESPACE, f"{sync.name}.changes_failed")
        self._done = Metrics.counter(METRICS_NAMESPACE, f"{sync.name}.changes_done")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_keys"], state["_clients"], state["_key_error"] = None, {}, None  # never ship keys
        return state

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> "CohortDeliverer":
        if self._keys is not None or self._key_error is not None:
            return self
        try:
            if self.target.delivery == "partner":
                self._keys = (self._resolve_key(self.target.partner_api_key), self._resolve_key(self.target.api_key))
            else:
                self._keys = (self._resolve_key(self.target.api_key),)
            lookup_key = None
            if self._lookup_ref is not None:
                lookup_key = self._keys[0] if self._lookup_ref == self.target.api_key and \
                    self.target.delivery == "attribute" else self._resolve_key(self._lookup_ref)
            for key in self._keys + (lookup_key,):
                remember_secret(key)
        except SecretError as e:
            self._key_error = str(e)
            _LOG.error("target %s: cannot read a key: %s", self.target.name, e)
            return self
        t = self.target
        if t.delivery == "partner":
            base = f"/partners/{t.partner}/cohorts"
            self._clients["name"] = PartnerClient(t.endpoint, base, self._keys, self.policy.timeout_seconds)
            self._clients["users"] = PartnerClient(t.endpoint, base + "/users", self._keys,
                                                   self.policy.timeout_seconds)
        else:
            self._clients["track"] = BrazeClient(t.endpoint, self._keys[0], self.policy.timeout_seconds)
        if lookup_key is not None:
            self._clients["lookup"] = ExportClient(t.endpoint, lookup_key, self.policy.timeout_seconds)
        return self

    def close(self) -> None:
        for client in self._clients.values():
            try:
                client.close()
            except Exception:  # noqa: BLE001 - close every session
                pass
        self._clients = {}
        self._keys, self._key_error = None, None  # a later open() reads the keys and opens sessions again

    def __enter__(self) -> "CohortDeliverer":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------

    def name_cohort(self, created_at: Optional[str] = None) -> Optional[str]:
        """Partner mode: name the cohort. Returns None on success, else why it failed."""
        if self.target.delivery != "partner":
            return None
        self.open()
        if self._key_error:
            return f"{API_KEY_UNAVAILABLE}: {self._key_error}"
        created_at = created_at or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        body = orjson.dumps(partner_name_body(self._keys[0], self._keys[1], self.sync, created_at))
        verdict, attempts = self._send(self._clients["name"], body, classify_partner)
        if verdict.action == bc.OK:
            return None
        return f"{verdict.reason}: {verdict.detail} (after {attempts} attempt(s))"

    def deliver(self, op: str, changes: Sequence[Change]) -> List[Result]:
        """Check (when verifying) and send changes of one operation; one Result per change, in order."""
        changes = list(changes)
        if not changes:
            return []
        self.open()
        if self._key_error:
            return self._count([Result(c.op, c.key, c.amplitude_ids, FAILED, API_KEY_UNAVAILABLE, self._key_error)
                                for c in changes])
        settled: dict = {}
        to_send = changes
        if self._lookup_ref is not None:  # never skipped silently: no client here is a KeyError
            to_send, settled = check_users(self.target.user_mapping, changes,
                                           lambda body, judge: self._send(self._clients["lookup"], body, judge))
        size = PARTNER_MAX_IDS if self.target.delivery == "partner" else TRACK_MAX_OBJECTS
        sent: List[Result] = []
        for i in range(0, len(to_send), size):
            chunk = to_send[i:i + size]
            if self.target.delivery == "partner":
                sent.extend(self._deliver_partner(op, chunk))
            else:
                sent.extend(self._deliver_attribute(op, chunk))
        in_order = iter(sent)  # sent keeps the order of to_send, itself in the order of changes
        return self._count([settled[c.key] if c.key in settled else next(in_order) for c in changes])

    def _count(self, results: List[Result]) -> List[Result]:
        failed = sum(1 for r in results if r.status == FAILED)
        if failed:
            self._failed.inc(failed)
        if len(results) - failed:
            self._done.inc(len(results) - failed)
        return results

    def _send(self, client, body: bytes, judge) -> Tuple[bc.Verdict, int]:
        def send():
            self._requests.inc()
            return client.post(body)

        return send_with_retries(send, judge, self.policy, self._sleep, self._clock, self._rng)

    def _deliver_partner(self, op: str, chunk: List[Change]) -> List[Result]:
        body = orjson.dumps(partner_changes_body(self._keys[0], self._keys[1], self.sync.cohort_id,
                                                 self.target.user_mapping, op, [c.key for c in chunk]))
        verdict, attempts = self._send(self._clients["users"], body, classify_partner)
        if verdict.action == bc.OK:
            return [Result(c.op, c.key, c.amplitude_ids, DONE) for c in chunk]
        detail = f"{verdict.detail} (after {attempts} attempt(s))"
        _LOG.warning("sync %s: %d %s changes failed: %s", self.sync.name, len(chunk), op, verdict.reason)
        return [Result(c.op, c.key, c.amplitude_ids, FAILED, verdict.reason, detail) for c in chunk]

    def _deliver_attribute(self, op: str, chunk: List[Change]) -> List[Result]:
        t = self.target
        objects = attribute_objects(t.user_mapping, t.attribute, attribute_value(t, self.sync), op,
                                    [c.key for c in chunk])
        body = orjson.dumps({"attributes": objects})
        verdict, attempts = self._send(self._clients["track"], body, classify)
        if verdict.action == bc.SPLIT and len(chunk) > 1:
            middle = len(chunk) // 2
            return self._deliver_attribute(op, chunk[:middle]) + self._deliver_attribute(op, chunk[middle:])
        rejected = {e.index: e.type for e in verdict.item_errors if e.input_array == bc.ATTRIBUTES}
        if verdict.action == bc.OK or (verdict.action == bc.REJECT and len(rejected) == len(chunk)):
            return [Result(c.op, c.key, c.amplitude_ids, SKIPPED, REJECTED_BY_BRAZE, rejected[i]) if i in rejected
                    else Result(c.op, c.key, c.amplitude_ids, DONE) for i, c in enumerate(chunk)]
        detail = f"{verdict.detail} (after {attempts} attempt(s))"
        _LOG.warning("sync %s: %d %s changes failed: %s", self.sync.name, len(chunk), op, verdict.reason)
        return [Result(c.op, c.key, c.amplitude_ids, FAILED, verdict.reason, detail) for c in chunk]


# --------------------------------------------------------------------------------------------
# Beam


class DeliverChanges(beam.PTransform):
    """PCollection[Change] → PCollection[Result], in requests of at most the mode's size.

    Changes are keyed by (operation, shard) and grouped, so adds and removes never share a
    request and ``shards`` requests can be in flight at once.
    """

    def __init__(self, target: Target, sync: CohortSync, policy: RetryPolicy = RetryPolicy(), *, shards: int = 4,
                 resolve_key: Callable[[str], str] = resolve_api_key, sleep=time.sleep, clock=time.time):
        super().__init__()
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValueError(f"shards must be an integer >= 1, got {shards!r}")
        if target.delivery == "attribute" and target.user_mapping.type == "device_id":
            raise ValueError(f"target {target.name!r}: device_id mapping needs partner delivery")
        self._deliverer = CohortDeliverer(target, sync, policy, resolve_key=resolve_key, sleep=sleep, clock=clock)
        # Attribute mode with the check: 150 = 3 lookups of 50 = 2 requests of 75, no half-empty lookup.
        self._batch = PARTNER_MAX_IDS if target.delivery == "partner" else \
            TRACK_MAX_OBJECTS * (2 if target.verify_users else 1)
        self._shards = shards

    def expand(self, changes):
        shards = self._shards
        return (
            changes
            | "KeyByOperationAndShard" >> beam.Map(
                lambda c: (f"{c.op}:{zlib.crc32(c.key.encode('utf-8')) % shards}", c)).with_output_types(
                    typing.Tuple[str, Change])
            | "GroupIntoRequests" >> beam.GroupIntoBatches(self._batch)
            | "SendToBraze" >> beam.ParDo(_DeliverDoFn(self._deliverer))
        )


def failed_results(changes, failure) -> List[Result]:
    """Every change of an element whose stage failed unexpectedly, as FAILED ``internal_error``
    (so the run fails, the membership is kept and the next run sends them again)."""
    return [Result(c.op, c.key, tuple(c.amplitude_ids), FAILED, INTERNAL_ERROR,
                   failure.detail) for c in changes if isinstance(c, Change)]


def _on_deliver_error(dofn, element, failure):
    return failed_results(list(element[1]), failure)


class _DeliverDoFn(beam.DoFn):
    def __init__(self, deliverer: CohortDeliverer):
        self._deliverer = deliverer

    def setup(self):
        self._deliverer.open()

    def teardown(self):
        self._deliverer.close()

    @guarded("cohorts.deliver", _on_deliver_error)
    def process(self, element):
        key, changes = element
        op = key.split(":", 1)[0]
        yield from self._deliverer.deliver(op, list(changes))
