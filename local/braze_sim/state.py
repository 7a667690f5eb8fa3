"""Simulator state: users with their indexes, cohorts and counters, behind one lock.

Callers hold ``store.lock`` around every method here (the server takes it once per request),
so a request is applied as a whole and readers never see half of one.
"""
from __future__ import annotations

import collections
import datetime as _dt
import threading
from typing import Iterable, List, Optional, Tuple

from local.braze_sim.rules import parse_time
from local.braze_sim.users import User, attribute_data_points, commit_attributes, plan_attributes


_SEED_KEYS = frozenset(("braze_id", "external_id", "user_aliases", "device_ids", "attributes"))


def _utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    """Users, aliases, device ids, cohorts and counters of one simulated workspace."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.users: dict = {}  # braze_id -> User
        self.by_external_id: dict = {}
        self.by_alias: dict = {}  # (alias_label, alias_name) -> User
        self.by_device_id: dict = collections.defaultdict(list)
        self.cohorts: dict = {}  # cohort_id -> {"name", "created_at", "partner"}
        self.requests_by_status: collections.Counter = collections.Counter()
        self.counters = dict(objects_accepted=0, objects_rejected=0, objects_unmatched=0,
                             data_points=0, requests=0, cohort_ids_unmatched=0,
                             aliases_merged=0, aliases_identified=0, aliases_not_merged=0)
        self._seq = 0

    # -- lookup and creation ---------------------------------------------------------------

    def _touch(self, user: User) -> User:
        self._seq += 1
        user.updated_seq = self._seq
        return user

    def _add_user(self, user: User) -> User:
        self.users[user.braze_id] = user
        if user.external_id is not None:
            self.by_external_id[user.external_id] = user
        for label, name in user.aliases.items():
            self.by_alias[(label, name)] = user
        for device_id in user.device_ids:
            self.by_device_id[device_id].append(user)
        return self._touch(user)

    def _remove_user(self, user: User) -> None:
        del self.users[user.braze_id]
        if user.external_id is not None and self.by_external_id.get(user.external_id) is user:
            del self.by_external_id[user.external_id]
        for label, name in user.aliases.items():
            if self.by_alias.get((label, name)) is user:
                del self.by_alias[(label, name)]
        for device_id in user.device_ids:
            self.by_device_id[device_id].remove(user)

    def resolve(self, obj: dict) -> Optional[User]:
        """The profile a /users/track object targets, created when Braze would create it."""
        update_only = obj.get("_update_existing_only")
        if "external_id" in obj:
            user = self.by_external_id.get(obj["external_id"])
            if user is None and update_only is not True:
                user = self._add_user(User(external_id=obj["external_id"]))
            return user
        if "user_alias" in obj:
            alias = obj["user_alias"]
            key = (alias["alias_label"], alias["alias_name"])
            user = self.by_alias.get(key)
            if user is None and update_only is False:  # alias-only users need an explicit false
                user = User()
                user.aliases[key[0]] = key[1]
                user = self._add_user(user)
            return user
        if "braze_id" in obj:  # Braze assigns braze_ids, so an unknown one never creates
            return self.users.get(obj["braze_id"])
        field = "email" if obj.get("email") is not None else "phone"
        return self._by_contact(field, obj[field], update_only is not True)

    def _by_contact(self, field: str, value: str, create: bool) -> Optional[User]:
        """Most recently updated identified profile with that email/phone, else most recent."""
        matches = [u for u in self.users.values() if u.attributes.get(field) == value]
        if matches:
            identified = [u for u in matches if u.external_id is not None]
            return max(identified or matches, key=lambda u: u.updated_seq)
        if not create:
            return None
        user = User()
        user.attributes[field] = value
        return self._add_user(user)

    # -- /users/track ------------------------------------------------------------------------

    def apply_track(self, valid: Iterable[tuple], received_at: float) -> List[tuple]:
        """Apply valid (array, index, obj) in order; returns (array, index, error) failures."""
        errors = []
        counters = self.counters
        for array, index, obj in valid:
            user = self.resolve(obj)
            if user is None:
                counters["objects_unmatched"] += 1
                continue
            if array == "attributes":
                changes, error = plan_attributes(user.attributes, obj)
                if error:
                    errors.append((array, index, error))
                    counters["objects_rejected"] += 1
                    continue
                commit_attributes(user, changes)
                points = attribute_data_points(obj, self._has_primary(obj))
            elif array == "events":
                user.events.append(self._event_record(obj, received_at))
                points = 1 + len(obj.get("properties") or ())
            else:
                user.purchases.append(self._purchase_record(obj, received_at))
                points = 1 + len(obj.get("properties") or ())
            self._touch(user)
            counters["objects_accepted"] += 1
            counters["data_points"] += points
        return errors

    @staticmethod
    def _has_primary(obj: dict) -> bool:
        return "external_id" in obj or "user_alias" in obj or "braze_id" in obj

    @staticmethod
    def _stored_time(value: str, received_at: float) -> str:
        """Braze replaces a time in the future with the time it received the object."""
        if parse_time(value).timestamp() > received_at:
            return _utc_now_iso()
        return value

    def _event_record(self, obj: dict, received_at: float) -> dict:
        return {"name": obj["name"], "time": self._stored_time(obj["time"], received_at),
                "app_id": obj.get("app_id"), "properties": obj.get("properties") or {},
                "received_at": received_at}

    def _purchase_record(self, obj: dict, received_at: float) -> dict:
        # Braze stores quantity X as X purchases of 1; one record with the quantity is kept
        # here so tests can match it to the object that was sent.
        return {"product_id": obj["product_id"], "currency": obj["currency"],
                "price": obj["price"], "quantity": obj.get("quantity", 1),
                "time": self._stored_time(obj["time"], received_at), "app_id": obj.get("app_id"),
                "properties": obj.get("properties") or {}, "received_at": received_at}

    # -- /users/alias/new and /users/identify ----------------------------------------------

    def add_alias(self, item: dict) -> None:
        key = (item["alias_label"], item["alias_name"])
        if key in self.by_alias:
            return  # an alias names one profile
        if "external_id" not in item:
            user = User()
            user.aliases[key[0]] = key[1]
            self._add_user(user)
            return
        user = self.by_external_id.get(item["external_id"])
        if user is None or key[0] in user.aliases:
            return  # unknown external_id: added to nobody; one alias_name per alias_label
        user.aliases[key[0]] = key[1]
        self.by_alias[key] = user
        self._touch(user)

    def identify(self, item: dict) -> str:
        """One ``aliases_to_identify`` entry, as docs/api-facts.md, B13 describes it; returns what
        happened (``merged``, ``identified`` or ``not_merged``) and counts it as
        ``aliases_<that>``. Nothing is billed: external ids and aliases are not data points (B17)."""
        outcome = self._identify(item)
        self.counters[f"aliases_{outcome}"] += 1
        return outcome

    def _identify(self, item: dict) -> str:
        alias = item["user_alias"]
        key = (alias["alias_label"], alias["alias_name"])
        anonymous = self.by_alias.get(key)
        external_id = item["external_id"]
        if anonymous is None or anonymous.external_id is not None:
            # Silently dropped, as Braze does: the alias names nobody, or a profile that is
            # already identified (after a merge, or a repeated call: identify is idempotent).
            return "not_merged"
        known = self.by_external_id.get(external_id)
        if known is None:
            anonymous.external_id = external_id  # no profile has the external_id: the alias profile takes it
            self.by_external_id[external_id] = anonymous
            self._touch(anonymous)
            return "identified"
        if key[0] in known.aliases:
            return "not_merged"  # no merge when the identified user already has an alias with that label
        # Merge: what exists only on the anonymous profile moves over; it is then removed.
        self._remove_user(anonymous)
        for name, value in anonymous.attributes.items():
            known.attributes.setdefault(name, value)
        known.events.extend(anonymous.events)
        known.purchases.extend(anonymous.purchases)
        known.cohorts.extend(c for c in anonymous.cohorts if c not in known.cohorts)
        for label, name in anonymous.aliases.items():
            if label not in known.aliases:
                known.aliases[label] = name
                self.by_alias[(label, name)] = known
        for device_id in anonymous.device_ids:
            if device_id not in known.device_ids:
                known.device_ids.append(device_id)
                self.by_device_id[device_id].append(known)
        self._touch(known)
        return "merged"

    # -- /users/export/ids ------------------------------------------------------------------

    def export(self, body: dict) -> Tuple[List[User], List[str]]:
        """(the profiles a checked export body names, each once, in request order; the
        external_ids and braze_id that named nobody)."""
        found, invalid = [], []
        for external_id in body.get("external_ids", ()):
            user = self.by_external_id.get(external_id)
            if user is None:
                invalid.append(external_id)
            found.append(user)
        for alias in body.get("user_aliases", ()):
            found.append(self.by_alias.get((alias["alias_label"], alias["alias_name"])))
        if "device_id" in body:
            found.extend(self.by_device_id.get(body["device_id"], ()))
        if "braze_id" in body:
            user = self.users.get(body["braze_id"])
            if user is None:
                invalid.append(body["braze_id"])
            found.append(user)
        for field, key in (("email", "email_address"), ("phone", "phone")):
            if key in body:
                found.extend(u for u in self.users.values() if u.attributes.get(field) == body[key])
        unique = list({id(u): u for u in found if u is not None}.values())
        return unique, invalid

    # -- partner cohorts -----------------------------------------------------------------------

    def name_cohort(self, partner: str, body: dict) -> None:
        self.cohorts[body["cohort_id"]] = {"name": body["name"], "created_at": body["created_at"],
                                           "partner": partner}

    def change_cohort(self, cohort_id: str, change: dict) -> None:
        """Add or remove existing users only; device ids match anonymous users only."""
        users = []
        for external_id in change.get("user_ids", ()):
            users.append(self.by_external_id.get(external_id))
        for alias in change.get("aliases", ()):
            users.append(self.by_alias.get((alias["alias_label"], alias["alias_name"])))
        for device_id in change.get("device_ids", ()):
            anonymous = [u for u in self.by_device_id.get(device_id, ()) if u.external_id is None]
            users.append(anonymous[-1] if anonymous else None)
        remove = change.get("should_remove", False)
        for user in users:
            if user is None:
                self.counters["cohort_ids_unmatched"] += 1
                continue
            if remove and cohort_id in user.cohorts:
                user.cohorts.remove(cohort_id)
            elif not remove and cohort_id not in user.cohorts:
                user.cohorts.append(cohort_id)
            self.counters["data_points"] += 1  # each cohort assignment is billable
            self._touch(user)

    # -- test seeding and inspection --------------------------------------------------------

    def seed(self, spec: dict) -> User:
        """Create a user from a test spec; raises ValueError when an identifier is taken."""
        unknown = set(spec) - _SEED_KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        if spec.get("braze_id") in self.users or spec.get("external_id") in self.by_external_id:
            raise ValueError("a user with that braze_id or external_id exists")
        user = User(braze_id=spec.get("braze_id"), external_id=spec.get("external_id"))
        for alias in spec.get("user_aliases", ()):
            if (alias["alias_label"], alias["alias_name"]) in self.by_alias:
                raise ValueError("that alias belongs to another user")
            user.aliases[alias["alias_label"]] = alias["alias_name"]
        user.device_ids = list(spec.get("device_ids", ()))
        user.attributes = dict(spec.get("attributes", {}))
        return self._add_user(user)

    def find(self, external_id=None, braze_id=None, alias=None) -> List[User]:
        if external_id is not None:
            user = self.by_external_id.get(external_id)
        elif braze_id is not None:
            user = self.users.get(braze_id)
        elif alias is not None:
            user = self.by_alias.get(alias)
        else:
            return list(self.users.values())
        return [user] if user else []

    def counters_json(self) -> dict:
        return {"requests_by_status": {str(k): v for k, v in sorted(self.requests_by_status.items())},
                **self.counters}

    def count_request(self, status) -> None:
        self.counters["requests"] += 1
        self.requests_by_status["none" if status is None else status] += 1
