"""Amplitude revenue events → Braze purchase objects, for syncs with ``events.purchases: true``.

Off by default: a purchase is what Braze's revenue reports and purchase filters read, but
Braze says it will deprecate purchase objects in favour of eCommerce events (docs/api-facts.md,
B5), so a team opts in. With it on, a *selected* event that carries revenue becomes one
purchase object instead of a custom event; every other event stays a custom event.

Where the revenue fields are. The HTTP V2 shape has them at the top level (``price``,
``quantity``, ``revenue``, ``productId``, ``currency``, ``revenueType``); the Export shape is
read to carry them as event properties ``$price``, ``$quantity``, ``$revenue``, ``$productId``,
``$currency``, ``$revenueType`` (unconfirmed, so both are read; the top level wins).

==============  =============================================================================
Braze           from Amplitude
==============  =============================================================================
``product_id``  ``productId`` (a number is read as text); absent → the event type; over 255
                characters → skipped ``invalid_product_id``
``currency``    ``currency`` in upper case, 3 letters; absent → ``USD``; anything else →
                skipped ``invalid_currency`` (Braze judges whether the code exists)
``price``       ``price``; without it ``revenue`` ÷ ``quantity`` (Amplitude's ``revenue`` is the
                total, price × quantity), so Braze's revenue, price × quantity, stays the same
``quantity``    ``quantity`` (default 1), a whole number ≥ 1; over 100 (Braze's cap) the
                purchase is split into objects of at most 100 with the same price, which
                Braze stores exactly as it stores one (quantity X is X purchases of 1);
                over 1,000 → skipped ``invalid_quantity``
``time``        the event time (ISO 8601 UTC)
``properties``  the sync's event properties and mappings, as for custom events
==============  =============================================================================

A refund (negative ``price``, or negative ``revenue`` without a price) stays a custom event:
Braze documents no negative price. An event whose revenue fields are present but unusable
(``price`` or ``revenue`` not a number, a bad quantity) is skipped by rule with the reason, so
it is counted and never silently dropped; a dead letter would not help, replaying it would
fail the same way.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Union

from transforms.braze_facts import MAX_PRODUCT_ID_CHARS, MAX_PURCHASE_QUANTITY
from transforms.records import iso_from_ms
from transforms.track import Properties, mapped_properties

MAX_QUANTITY = MAX_PURCHASE_QUANTITY  # Braze's cap per purchase object
MAX_PIECES = 10  # a purchase splits into at most this many objects (quantity ≤ 1,000)
DEFAULT_CURRENCY = "USD"
REVENUE_FIELDS = ("price", "quantity", "revenue", "productId", "currency", "revenueType")

INVALID_PRICE = "invalid_price"
INVALID_QUANTITY = "invalid_quantity"
INVALID_PRODUCT_ID = "invalid_product_id"
INVALID_CURRENCY = "invalid_currency"


class Purchase(NamedTuple):
    product_id: str
    currency: str
    price: float
    quantity: int


def revenue_fields(event: dict) -> dict:
    """The revenue fields an event carries, from the top level or ``$``-prefixed properties."""
    properties = event.get("event_properties") or {}
    found = {}
    for name in REVENUE_FIELDS:
        value = event.get(name)
        if value is None:
            value = properties.get("$" + name)
        if value is not None:
            found[name] = value
    return found


def _number(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def purchase_of(event: dict) -> Union[Purchase, str, None]:
    """A Purchase, a skip reason (str), or None when the event is not a purchase (no revenue,
    or a refund) and goes on as a custom event."""
    fields = revenue_fields(event)
    if "price" not in fields and "revenue" not in fields:
        return None
    quantity = fields.get("quantity", 1)
    if isinstance(quantity, float) and quantity.is_integer():
        quantity = int(quantity)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        return INVALID_QUANTITY
    if quantity > MAX_QUANTITY * MAX_PIECES:
        return INVALID_QUANTITY
    if "price" in fields:
        price = _number(fields["price"])
        if price is None:
            return INVALID_PRICE
    else:
        revenue = _number(fields["revenue"])
        if revenue is None:
            return INVALID_PRICE
        price = revenue / quantity
    if price < 0:
        return None  # a refund
    product = fields.get("productId")
    if isinstance(product, (int, float)) and not isinstance(product, bool):
        product = str(product)
    if product is None or product == "":
        product = event["event_type"]
    if not isinstance(product, str) or len(product) > MAX_PRODUCT_ID_CHARS:
        return INVALID_PRODUCT_ID
    currency = fields.get("currency", DEFAULT_CURRENCY)
    currency = currency.strip().upper() if isinstance(currency, str) else ""
    if len(currency) != 3 or not (currency.isascii() and currency.isalpha()):
        return INVALID_CURRENCY
    return Purchase(product, currency, float(price), quantity)


def _pieces(quantity: int) -> List[int]:
    whole, rest = divmod(quantity, MAX_QUANTITY)
    return [MAX_QUANTITY] * whole + ([rest] if rest else [])


def purchase_objects(purchase: Purchase, event: dict, time_ms: int, identifier_fields: dict,
                     properties: Properties, app_id: Optional[str]) -> List[dict]:
    """Braze purchase objects for one purchase: one, or one per 100 of the quantity.
    ``properties``: the sync's ``EventMappings`` (or property names), read once for all."""
    selected = mapped_properties(event, properties)
    objects = []
    for quantity in _pieces(purchase.quantity):
        obj = dict(identifier_fields)
        obj.update(product_id=purchase.product_id, currency=purchase.currency, price=purchase.price,
                   quantity=quantity, time=iso_from_ms(time_ms))
        if app_id:
            obj["app_id"] = app_id
        if selected:
            obj["properties"] = selected
        objects.append(obj)
    return objects
