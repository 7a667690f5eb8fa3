"""The values the event generator (``local.event_generator``) draws from: event types and their
weights, plans, places, names, songs, products, devices, languages. Realistic and deliberately
awkward (unicode in several scripts, emoji, a text past Braze's 255 characters), so the demo,
the tests and the benchmark meet what real traffic holds. Data, not logic.
"""
from __future__ import annotations

# (event type, weight) for events that are neither identify nor anonymous-only.
EVENT_TYPES = (
    ("Page Viewed", 30), ("Song Played", 22), ("Search", 12), ("Add to Cart", 10),
    ("Order Completed", 7), ("[Amplitude] Revenue", 2), ("Sign Up", 3),
)
EVENT_NAMES = [name for name, _ in EVENT_TYPES]
EVENT_CUM_WEIGHTS = []
for _, _weight in EVENT_TYPES:
    EVENT_CUM_WEIGHTS.append((EVENT_CUM_WEIGHTS[-1] if EVENT_CUM_WEIGHTS else 0) + _weight)

PLANS = ("free", "basic", "premium", "family")
PLACES = (
    ("United States", "New York"), ("United States", "San Francisco"), ("Germany", "München"),
    ("Japan", "東京"), ("France", "Paris"), ("Brazil", "São Paulo"), ("Poland", "Łódź"),
    ("India", "Bengaluru"), ("Sweden", "Göteborg"), ("Egypt", "القاهرة"),
)
NAMES = ("Zoë", "José", "Łukasz", "李雷", "Ana 🎧", "Ömer", "Chloé", "Nguyễn Văn An", "Sam", "Priya")
GENRES = ("rock", "jazz", "hip-hop", "classical", "j-pop", "electronic", "folk", "metal", "lo-fi")
ARTISTS = ("Björk", "宇多田ヒカル", "Beyoncé", "Sigur Rós", "Die Ärzte", "Rosalía")
SONGS = ("Jóga", "First Love", "Halo", "Hoppípolla", "Zu spät", "Malamente", "Lo-fi ☕ beats")
SEARCHES = ("jazz", "sushi 🍣 東京", "running shoes", "Zoë Kravitz", "café playlist", "ß vs ss")
PRODUCTS = (
    ("sku-1001", "Wireless Headphones", "audio", 79.99),
    ("sku-1002", "Vinyl: Homogenic", "music", 24.5),
    ("sku-1003", "Gift Card 🎁", "gift", 50.0),
    ("sku-1004", "Concert Ticket — 東京", "tickets", 120.0),
    ("sku-1005", "Phone Case", "accessories", 15.0),
)
DEVICES = (
    # platform, os_name, os_version, device_model, library
    ("iOS", "ios", "17.5", "iPhone15,2", "amplitude-ios/8.21.0"),
    ("Android", "android", "14", "Pixel 8", "amplitude-android/2.39.8"),
    ("Web", "Chrome", "126", "Mac OS", "amplitude-ts/2.11.0"),
    ("Web", "Safari", "17", "iPhone", "amplitude-ts/2.11.0"),
)
LANGUAGES = ("English", "German", "Japanese", "French", "Portuguese", "Polish")
LOREM = (
    "Ein langer Text mit Umlauten äöü, 日本語の文章, emoji 🎶🎸 and plain words that keep going so "
    "the value is well past Braze's 255-character limit for string attributes and event properties. "
)
