"""A deterministic, realistic stream of Amplitude events as Pub/Sub message bodies (the generator).

The demo, the integration tests and the benchmark need input that looks like what Amplitude
and its SDKs really send, including the awkward parts (both wire shapes, every identify
operation, unicode, long strings, duplicates, arrays, broken messages), and they need the same
input every time: one ``random.Random(seed)`` drives everything, so the same arguments give
byte-identical output. The values it draws from are ``local.sample_values``; files, Pub/Sub and
the command line are ``local.generate``.

Counting: ``events`` counts events, not messages. An array message counts as its length, a
repeated (duplicate) message counts again, and a malformed message counts as one event.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import random
from typing import Iterator, Optional

import orjson

from local import sample_values as pools

__all__ = ["GeneratorConfig", "generate_messages", "IDENTIFY_OPERATIONS", "MALFORMED_KINDS", "DEFAULT_START_MS",
           "HTTP_SHAPE", "EXPORT_SHAPE"]

DEFAULT_START_MS = 1_795_168_800_000  # 2026-11-20T10:00:00Z
IDENTIFY_OPERATIONS = (
    "$set", "$setOnce", "$add", "$append", "$prepend",
    "$preInsert", "$postInsert", "$remove", "$unset", "$clearAll",
)
MALFORMED_KINDS = (
    "invalid_json", "not_an_object", "missing_event_type", "missing_ids",
    "time_not_a_number", "empty_body", "not_utf8",
)
HTTP_SHAPE = "http_v2"
EXPORT_SHAPE = "export"

_IDENTIFY_SHARE = 0.12
_ANONYMOUS_SHARE = 0.05
_SNAPSHOT_CHANGE_SHARE = 0.07  # share of a user's ordinary events where one property changed
_CLEAR_ALL_SHARE = 0.02  # of identify events, after the first of each operation
_LONG_STRING_SHARE = 0.03
_SESSION_GAP_MS = 30 * 60 * 1000
_DUPLICATE_WINDOW = 64  # a duplicate repeats one of the last N valid messages (a redelivery)


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Shares are per message slot and must add up to at most 1."""

    events: int
    users: int = 100
    seed: int = 0
    malformed_share: float = 0.02
    duplicate_share: float = 0.01
    array_share: float = 0.05
    start_ms: int = DEFAULT_START_MS

    def __post_init__(self) -> None:
        if self.events < 0:
            raise ValueError(f"events must be >= 0, got {self.events}")
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        shares = {"malformed_share": self.malformed_share, "duplicate_share": self.duplicate_share,
                  "array_share": self.array_share}
        for name, value in shares.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if sum(shares.values()) > 1.0:
            raise ValueError(f"the shares add up to more than 1: {shares}")


def _uuid(rng: random.Random) -> str:
    """A version-4 uuid string from the seeded generator (uuid.uuid4 would not be reproducible)."""
    h = "%032x" % rng.getrandbits(128)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _export_time(ms: int) -> str:
    # The Export format: UTC, space separator, microseconds ("2026-11-20 10:15:01.795000").
    return (_EPOCH + datetime.timedelta(milliseconds=ms)).isoformat(sep=" ", timespec="microseconds")


_EPOCH = datetime.datetime(1970, 1, 1)


class _User:
    """One person's stable facts and the user properties they currently have."""

    __slots__ = ("user_id", "device_id", "amplitude_id", "shape", "device", "language",
                 "profile", "session_id", "last_ms", "event_id")

    def __init__(self, index: int, rng: random.Random) -> None:
        self.user_id = f"user-{index:05d}"  # Amplitude requires ids of at least 5 characters
        self.device_id = _uuid(rng)
        self.amplitude_id = 100_000_000_000 + index * 7919
        # Alternate so any two users cover both shapes; one user keeps one source, as in reality.
        self.shape = HTTP_SHAPE if index % 2 == 0 else EXPORT_SHAPE
        self.device = rng.choice(pools.DEVICES)
        self.language = rng.choice(pools.LANGUAGES)
        country, city = rng.choice(pools.PLACES)
        self.profile = {
            "name": rng.choice(pools.NAMES),
            "plan": rng.choice(pools.PLANS),
            "country": country,
            "city": city,
            "age": rng.randint(16, 75),
            "favorite_genres": rng.sample(pools.GENRES, rng.randint(1, 3)),
            "is_subscriber": rng.random() < 0.4,
            "signup_date": (datetime.date(2024, 1, 1) + datetime.timedelta(days=rng.randrange(1000))).isoformat(),
            "preferences": {
                "theme": rng.choice(("dark", "light")),
                "notifications": {"email": rng.random() < 0.5, "push": rng.random() < 0.5},
            },
        }
        if rng.random() < 0.1:
            self.profile["bio"] = pools.LOREM * 2
        self.session_id = -1
        self.last_ms = 0
        self.event_id = 0


class _Generator:
    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.users = [_User(i + 1, self.rng) for i in range(config.users)]
        self.now_ms = config.start_ms
        self.identify_count = 0
        self.malformed_count = 0

    # -- messages ------------------------------------------------------------------------

    def messages(self) -> Iterator[bytes]:
        rng, config = self.rng, self.config
        malformed_until = config.malformed_share
        duplicate_until = malformed_until + config.duplicate_share
        array_until = duplicate_until + config.array_share
        recent: collections.deque = collections.deque(maxlen=_DUPLICATE_WINDOW)
        remaining = config.events
        while remaining > 0:
            roll = rng.random()
            if roll < malformed_until:
                yield self._malformed()
                remaining -= 1
                continue
            if roll < duplicate_until and recent:
                body, count = recent[rng.randrange(len(recent))]
                if count <= remaining:
                    yield body  # exactly the same bytes: same insert ids, as a redelivery would be
                    remaining -= count
                    continue
            user = self._pick_user()
            if duplicate_until <= roll < array_until and remaining >= 2:
                count = min(remaining, rng.randint(2, 5))
                body = orjson.dumps([self._event(user) for _ in range(count)])
            else:
                count = 1
                body = orjson.dumps(self._event(user))
            recent.append((body, count))
            remaining -= count
            yield body

    def _pick_user(self) -> _User:
        # A few users are much more active than the rest, as in real traffic.
        return self.users[int(len(self.users) * self.rng.random() ** 2)]

    # -- events --------------------------------------------------------------------------

    def _event(self, user: _User) -> dict:
        rng = self.rng
        self.now_ms += rng.randint(1, 400)
        if self.now_ms - user.last_ms > _SESSION_GAP_MS:
            user.session_id = self.now_ms
        user.last_ms = self.now_ms
        user.event_id += 1

        anonymous = False
        if rng.random() < _IDENTIFY_SHARE:
            event_type, user_properties = "$identify", self._identify_operations(user)
            event_properties: dict = {}
            revenue: dict = {}
        else:
            event_type = rng.choices(pools.EVENT_NAMES, cum_weights=pools.EVENT_CUM_WEIGHTS)[0]
            anonymous = event_type != "Sign Up" and rng.random() < _ANONYMOUS_SHARE
            if anonymous:
                user_properties = {}
            else:
                if rng.random() < _SNAPSHOT_CHANGE_SHARE:
                    self._change_one_property(user)
                user_properties = user.profile
            event_properties, revenue = self._properties(event_type)

        if user.shape == HTTP_SHAPE:
            return self._http_event(user, event_type, event_properties, user_properties, revenue, anonymous)
        return self._export_event(user, event_type, event_properties, user_properties, revenue, anonymous)

    def _http_event(self, user, event_type, event_properties, user_properties, revenue, anonymous) -> dict:
        platform, os_name, os_version, device_model, _ = user.device
        event = {"device_id": user.device_id}
        if not anonymous:
            event["user_id"] = user.user_id
        event.update({
            "event_type": event_type,
            "time": self.now_ms,
            "insert_id": _uuid(self.rng),
            "event_properties": event_properties,
        })
        if user_properties:
            event["user_properties"] = user_properties
        event.update(revenue)
        event.update({
            "platform": platform, "os_name": os_name, "os_version": os_version,
            "device_model": device_model, "country": user.profile["country"],
            "language": user.language, "app_version": "5.4.1",
            "session_id": user.session_id, "event_id": user.event_id,
        })
        return event

    def _export_event(self, user, event_type, event_properties, user_properties, revenue, anonymous) -> dict:
        rng = self.rng
        platform, os_name, os_version, device_model, library = user.device
        if revenue:
            # UNCONFIRMED: exports are read to carry revenue fields as "$"-prefixed event properties.
            event_properties = dict(event_properties, **{"$" + key: value for key, value in revenue.items()})
        event_time = _export_time(self.now_ms)
        received_ms = self.now_ms + rng.randint(50, 3000)
        return {
            "$insert_id": _uuid(rng),
            "uuid": _uuid(rng),
            "amplitude_id": user.amplitude_id,
            "user_id": None if anonymous else user.user_id,
            "device_id": user.device_id,
            "event_type": event_type,
            # Under 60 s of clock skew Amplitude does not adjust, so event_time == client_event_time.
            "event_time": event_time,
            "client_event_time": event_time,
            "client_upload_time": _export_time(received_ms - 20),
            "server_received_time": _export_time(received_ms),
            "server_upload_time": _export_time(received_ms + 5),
            "processed_time": _export_time(received_ms + rng.randint(100, 900)),
            "event_id": user.event_id,
            "session_id": user.session_id,
            "event_properties": event_properties,
            "user_properties": user_properties,
            "group_properties": {},
            "groups": {},
            "data": {"first_event": user.event_id == 1, "path": "/2/httpapi"},
            "app": 424242,
            "library": library,
            "platform": platform,
            "os_name": os_name,
            "os_version": os_version,
            "device_model": device_model,
            "device_family": device_model.split(",")[0],
            "country": user.profile["country"],
            "city": user.profile["city"],
            "language": user.language,
            "version_name": "5.4.1",
            "paying": None,
            "sample_rate": None,
        }

    def _identify_operations(self, user: _User) -> dict:
        """One identify's operation map; each property appears under one operation only (SDK rule)."""
        rng = self.rng
        index, self.identify_count = self.identify_count, self.identify_count + 1
        # The first identify events walk through every operation, so small samples cover them all.
        if index < len(IDENTIFY_OPERATIONS):
            operations = [IDENTIFY_OPERATIONS[index]]
        elif rng.random() < _CLEAR_ALL_SHARE:
            operations = ["$clearAll"]
        else:
            operations = rng.sample(IDENTIFY_OPERATIONS[:-1], rng.randint(1, 3))
        if operations == ["$clearAll"]:
            return {"$clearAll": "-"}  # the SDK sends it alone: once set, it ignores other operations
        return {operation: self._operation_values(operation, user) for operation in operations}

    def _operation_values(self, operation: str, user: _User) -> dict:
        rng = self.rng
        if operation == "$set":
            choice = rng.randrange(4)
            if choice == 0:
                values = {"plan": rng.choice(pools.PLANS)}
            elif choice == 1:
                country, city = rng.choice(pools.PLACES)
                values = {"country": country, "city": city}
            elif choice == 2:
                values = {"age": user.profile["age"] + 1}
            else:
                values = {"preferences": {"theme": rng.choice(("dark", "light")),
                                          "notifications": {"email": rng.random() < 0.5, "push": True}}}
            user.profile = dict(user.profile, **values)  # later snapshots show what was set
            return values
        if operation == "$setOnce":
            return {"initial_referrer": rng.choice(("google", "newsletter", "tiktok", "direct")),
                    "first_platform": user.device[0]}
        if operation == "$add":
            return rng.choice(({"login_count": 1}, {"credits": -5}, {"lifetime_value": 12.5}))
        if operation == "$append":
            return {"recent_searches": rng.choice(pools.SEARCHES)}
        if operation == "$prepend":
            return {"recent_artists": rng.sample(pools.ARTISTS, 2)}
        if operation == "$preInsert":
            return {"badges": rng.choice(("early-adopter", "superfan", "🎧 audiophile"))}
        if operation == "$postInsert":
            return {"devices_seen": [user.device[0]]}
        if operation == "$remove":
            return {"favorite_genres": rng.choice(pools.GENRES)}
        if operation == "$unset":
            return rng.choice(({"coupon_code": "-"}, {"trial_ends_at": "-"}))
        raise ValueError(f"unknown identify operation {operation!r}")

    def _change_one_property(self, user: _User) -> None:
        # Copy on change: earlier events already serialised the old dict, later ones get the new one.
        rng, profile = self.rng, dict(user.profile)
        choice = rng.randrange(5)
        if choice == 0:
            profile["plan"] = rng.choice(pools.PLANS)
        elif choice == 1:
            profile["country"], profile["city"] = rng.choice(pools.PLACES)
        elif choice == 2:
            profile["is_subscriber"] = not profile["is_subscriber"]
        elif choice == 3:
            profile["favorite_genres"] = profile["favorite_genres"] + [rng.choice(pools.GENRES)]
        else:
            preferences = profile["preferences"]
            theme = "light" if preferences["theme"] == "dark" else "dark"
            profile["preferences"] = dict(preferences, theme=theme)
        user.profile = profile

    def _properties(self, event_type: str) -> tuple:
        """(event_properties, revenue fields) for an ordinary event."""
        rng = self.rng
        if event_type == "Page Viewed":
            path = rng.choice(("/", "/pricing", "/artists/björk", "/search", "/cart"))
            properties = {"page": path, "title": rng.choice(("Home", "Preise", "ホーム", "Panier 🛒")),
                          "referrer": rng.choice(("https://www.google.com/", "", "https://t.co/x"))}
            if rng.random() < _LONG_STRING_SHARE:
                properties["url"] = "https://example.com" + path + "?q=" + "x" * 300
            return properties, {}
        if event_type == "Song Played":
            return {"song": rng.choice(pools.SONGS), "artist": rng.choice(pools.ARTISTS),
                    "duration_ms": rng.randint(60_000, 420_000), "genre": rng.choice(pools.GENRES),
                    "context": {"source": rng.choice(("playlist", "album", "radio")),
                                "playlist": {"id": f"pl-{rng.randrange(500):03d}", "owner": "editorial"}}}, {}
        if event_type == "Search":
            properties = {"query": rng.choice(pools.SEARCHES), "results_count": rng.randint(0, 250),
                          "filters": {"genre": rng.sample(pools.GENRES, 2),
                                      "price_range": {"min": 0, "max": rng.choice((20, 50, 100))}}}
            if rng.random() < _LONG_STRING_SHARE:
                properties["query"] = pools.LOREM * 2
            return properties, {}
        if event_type == "Add to Cart":
            sku, name, category, price = rng.choice(pools.PRODUCTS)
            return {"sku": sku, "price": price, "quantity": rng.randint(1, 3),
                    "product": {"id": sku, "name": name, "category": {"name": category, "path": f"shop/{category}"}}}, {}
        if event_type == "Sign Up":
            return {"method": rng.choice(("email", "google", "apple")),
                    "referral": {"source": rng.choice(("friend", "ad", "organic")), "campaign": "herbst-2026"}}, {}
        if event_type == "Order Completed":
            lines = rng.sample(pools.PRODUCTS, rng.randint(1, 3))
            items = [{"sku": sku, "name": name, "price": price, "quantity": rng.randint(1, 2)}
                     for sku, name, _, price in lines]
            total = round(sum(item["price"] * item["quantity"] for item in items), 2)
            properties = {"total": total, "sku": items[0]["sku"], "items": items,
                          "coupon": rng.choice((None, "WELCOME10", "ÉTÉ-2026")),
                          "shipping": {"method": "standard", "address": {"city": rng.choice(pools.PLACES)[1]}}}
            if rng.random() < 0.5:
                revenue = {"revenue": total, "currency": "USD", "revenueType": "purchase"}
            else:
                item = items[0]
                revenue = {"price": item["price"], "quantity": item["quantity"], "productId": item["sku"],
                           "currency": "EUR", "revenueType": "purchase"}
            return properties, revenue
        # "[Amplitude] Revenue", as the SDKs' Revenue API sends it; a negative price is a refund.
        sku, _, _, price = rng.choice(pools.PRODUCTS)
        price = -price if rng.random() < 0.1 else price
        return {"receipt_id": f"r-{rng.randrange(10**8):08d}"}, {
            "price": price, "quantity": 1, "productId": sku, "revenueType": "refund" if price < 0 else "purchase",
            "currency": "USD"}

    # -- malformed -----------------------------------------------------------------------

    def _malformed(self) -> bytes:
        # Kinds take turns so every kind appears once there are a handful of malformed messages.
        kind = MALFORMED_KINDS[self.malformed_count % len(MALFORMED_KINDS)]
        self.malformed_count += 1
        user = self._pick_user()
        self.now_ms += self.rng.randint(1, 400)
        insert_id = _uuid(self.rng)
        if kind == "invalid_json":
            return b'{"event_type": "Page Viewed", "user_id": "' + user.user_id.encode() + b'", "time": 17'
        if kind == "not_an_object":
            return b"42"
        if kind == "missing_event_type":
            return orjson.dumps({"user_id": user.user_id, "time": self.now_ms, "insert_id": insert_id,
                                 "event_properties": {"page": "/"}})
        if kind == "missing_ids":
            return orjson.dumps({"event_type": "Page Viewed", "time": self.now_ms, "insert_id": insert_id})
        if kind == "time_not_a_number":
            return orjson.dumps({"user_id": user.user_id, "event_type": "Page Viewed", "insert_id": insert_id,
                                 "time": _export_time(self.now_ms).replace(" ", "T")[:19] + "Z"})
        if kind == "empty_body":
            return b""
        # Latin-1 text where UTF-8 is required; no newline byte, so the JSONL line stays intact.
        return b'{"user_id": "' + user.user_id.encode() + b'", "event_type": "Caf\xe9 Visited", "time": 1}'


def generate_messages(config: Optional[GeneratorConfig] = None, /, **kwargs) -> Iterator[bytes]:
    """Yield message bodies; pass a ``GeneratorConfig`` or its fields as keywords."""
    if config is None:
        config = GeneratorConfig(**kwargs)
    elif kwargs:
        config = dataclasses.replace(config, **kwargs)
    return _Generator(config).messages()
