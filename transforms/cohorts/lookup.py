"""Checking that users exist in Braze before their cohort changes are sent.

Why: Braze never creates users from a cohort, and neither delivery mode's answer says which ids
matched (the partner endpoint answers ``{}``, ``/users/track`` counts processed objects, not
matched ones). Without a check the report would call an unknown user "sent", and every cohort
assignment is a billable data point. So, with ``Target.verify_users`` (the default), each batch
of changes is first looked up through ``POST {endpoint}/users/export/ids``; users the answer
does not return are reported ``skipped: unknown_to_braze`` and not sent.

The request (Braze docs, "Export user profile by identifier"): ``Authorization: Bearer`` a
REST API key with ``users.export.ids`` (``Target.lookup_api_key``; attribute delivery falls back
to ``api_key``), a JSON body with one kind of identifier, and ``fields_to_export`` (required
for accounts onboarded on or after 2024-08-22; kept minimal, which also keeps the request
eligible for Braze's faster rate limit):

* ``user_id`` mapping: ``{"external_ids": [≤ 50], ...}``;
* ``user_alias`` mapping: ``{"user_aliases": [≤ 50 {alias_name, alias_label}], ...}``;
* ``device_id`` mapping: ``{"device_id": "<one id>", ...}``: Braze takes ONE device id per
  request, so each id costs a request of its own.

A user is known when the answer's ``users`` holds it: matched by the returned ``external_id``
or by a returned alias with the target's label (``invalid_user_ids`` is not trusted alone);
for a device id, when any user comes back. Anything not returned is unknown.

Cost: one lookup per 50 external ids or aliases, one per device id, against Braze's limit for
this endpoint of 250 requests per minute (accounts onboarded on or after 2024-08-22; 2,500 for
older ones), shared with anything else using it. At 250/min a full sync checks at most 12,500
ids a minute (250 device ids a minute); the lookups go through the delivery's retry policy,
so a 429 waits as its rate-limit headers say, and a run past the policy's budget fails rather
than sending unchecked. Unknown users who stay in the cohort are looked up again on every run
(their adds are not saved as membership), until Braze knows them and they are added.

A lookup that fails for good (401/403, a 400, retries exhausted) makes its changes FAILED
(``lookup_failed``; the detail names the cause), so the run fails and its state is not
replaced: a change is never reported "sent" unchecked. The key lives only in the session's
headers (``BrazeClient`` scrubs it from error text); it never reaches a result or a log line.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import orjson

from transforms.cohorts.model import Target, UserMapping
from transforms import braze_client as bc
from transforms.braze_facts import EXPORT_IDS_PATH, MAX_EXPORT_IDS
from transforms.braze_client import BrazeClient, Response, TransportError, classify
from transforms.cohorts.records import FAILED, LOOKUP_FAILED, SKIPPED, UNKNOWN_TO_BRAZE, Change, Result

__all__ = ["EXPORT_MAX_IDS", "EXPORT_PATH", "FIELDS_TO_EXPORT", "ExportClient", "classify_lookup",
           "known_keys", "lookup_bodies", "lookup_key_reference", "check_users"]

EXPORT_PATH = EXPORT_IDS_PATH
EXPORT_MAX_IDS = MAX_EXPORT_IDS  # external_ids or user_aliases per request; device_id is one per request
FIELDS_TO_EXPORT = ("external_id", "user_aliases", "braze_id")
UNKNOWN_DETAIL = "Braze has no such user (/users/export/ids); not sent, as Braze never creates users from a cohort"


def lookup_key_reference(target: Target) -> Optional[str]:
    """The key reference the check uses, or None when the target does not verify users.

    Raises ValueError for a target that verifies without a usable key (a partner target built
    in code without ``lookup_api_key``; the config loader reports the same case with its path).
    """
    if not target.verify_users:
        return None
    if target.lookup_api_key:
        return target.lookup_api_key
    if target.delivery == "attribute":
        return target.api_key
    raise ValueError(f"target {target.name!r}: verify_users needs lookup_api_key with partner delivery (a REST "
                     "API key with users.export.ids), or set verify_users to false")


def lookup_bodies(mapping: UserMapping, keys: Sequence[str]) -> List[Tuple[List[str], dict]]:
    """``[(the keys one request asks about, its body)]``: 50 ids or aliases, or one device id."""
    keys = list(dict.fromkeys(keys))
    fields = list(FIELDS_TO_EXPORT)
    if mapping.type == "device_id":
        return [([k], {"device_id": k, "fields_to_export": fields}) for k in keys]
    out = []
    for i in range(0, len(keys), EXPORT_MAX_IDS):
        chunk = keys[i:i + EXPORT_MAX_IDS]
        if mapping.type == "user_id":
            out.append((chunk, {"external_ids": chunk, "fields_to_export": fields}))
        else:
            aliases = [{"alias_name": k, "alias_label": mapping.alias_label} for k in chunk]
            out.append((chunk, {"user_aliases": aliases, "fields_to_export": fields}))
    return out


def known_keys(mapping: UserMapping, keys: Iterable[str], body: dict) -> Set[str]:
    """The asked-for keys the answer's ``users`` returned (see the module docstring)."""
    users = [u for u in body.get("users") or () if isinstance(u, dict)]
    wanted = set(keys)
    if mapping.type == "device_id":
        return wanted if users else set()
    if mapping.type == "user_id":
        found = {u.get("external_id") for u in users}
    else:
        found = {a.get("alias_name") for u in users for a in (u.get("user_aliases") or ())
                 if isinstance(a, dict) and a.get("alias_label") == mapping.alias_label}
    return wanted & found


def classify_lookup(response: Union[Response, TransportError]) -> bc.Verdict:
    """``classify``, except that nothing is split or partly rejected: a lookup either answers a
    ``users`` array (OK), is retried, or fails."""
    verdict = classify(response)
    if verdict.action == bc.OK:
        if not isinstance((response.body or {}).get("users"), list):
            return bc.Verdict(bc.FAIL, bc.BRAZE_FAILED, f"HTTP {response.status}: the answer has no 'users' array",
                              response.status)
        return verdict
    if verdict.action in (bc.SPLIT, bc.REJECT):
        return bc.Verdict(bc.FAIL, verdict.reason, verdict.detail, verdict.http_status)
    return verdict


class ExportClient(BrazeClient):
    """``BrazeClient``'s transport (Bearer key, timeouts, no redirects, scrubbed errors), posting
    to ``/users/export/ids``."""

    def __init__(self, endpoint: str, api_key: str, timeout_seconds: float, session=None):
        super().__init__(endpoint, api_key, timeout_seconds, session, path=EXPORT_PATH)


Send = Callable[[bytes, Callable], Tuple[bc.Verdict, int]]


def check_users(mapping: UserMapping, changes: Sequence[Change], send: Send) -> Tuple[List[Change], Dict[str, Result]]:
    """Look the changes' users up: ``(changes to send, {key: Result})`` for the rest, which are
    ``skipped: unknown_to_braze`` or, when their lookup failed, ``failed: lookup_failed``.

    ``send(body, judge)`` posts one body with the delivery's retries and returns
    ``(verdict, attempts)``.
    """
    by_key = {c.key: c for c in changes}
    known: Set[str] = set()
    settled: Dict[str, Result] = {}
    for keys, body in lookup_bodies(mapping, list(by_key)):
        answers: list = []

        def judge(answer, answers=answers):
            answers.append(answer)
            return classify_lookup(answer)

        verdict, attempts = send(orjson.dumps(body), judge)
        if verdict.action == bc.OK:
            known |= known_keys(mapping, keys, answers[-1].body)
            continue
        detail = f"{EXPORT_PATH} {verdict.reason}: {verdict.detail} (after {attempts} attempt(s))"
        for k in keys:
            c = by_key[k]
            settled[k] = Result(c.op, c.key, c.amplitude_ids, FAILED, LOOKUP_FAILED, detail)
    for k, c in by_key.items():
        if k not in known and k not in settled:
            settled[k] = Result(c.op, c.key, c.amplitude_ids, SKIPPED, UNKNOWN_TO_BRAZE, UNKNOWN_DETAIL)
    return [c for c in changes if c.key in known], settled
