"""Amplitude revenue events → Braze purchase objects (``events.purchases: true``)."""
import pytest

from transforms.purchases import Purchase, purchase_objects, purchase_of, revenue_fields


def event(**fields):
    return {"event_type": "Order Completed", "user_id": "u-1", "event_properties": {}, **fields}


@pytest.mark.parametrize(
    "fields, expected",
    [
        # HTTP V2: price × quantity
        (dict(price=9.99, quantity=2, productId="sku-1", currency="EUR"), Purchase("sku-1", "EUR", 9.99, 2)),
        # revenue alone is the total of one purchase
        (dict(revenue=20), Purchase("Order Completed", "USD", 20.0, 1)),
        # revenue and quantity: the unit price is revenue ÷ quantity, so price × quantity = revenue
        (dict(revenue=30, quantity=4), Purchase("Order Completed", "USD", 7.5, 4)),
        # with price, quantity and revenue, Amplitude's revenue is price × quantity: price wins
        (dict(price=5, quantity=2, revenue=999), Purchase("Order Completed", "USD", 5.0, 2)),
        # currency in upper case; a numeric product id as text; a whole float quantity
        (dict(price=1, currency=" gbp ", productId=1234, quantity=3.0), Purchase("1234", "GBP", 1.0, 3)),
        # a free item is a purchase
        (dict(price=0, productId="gift"), Purchase("gift", "USD", 0.0, 1)),
        # not a revenue event, and refunds: stay custom events
        (dict(productId="sku-1"), None),
        (dict(price=-5, productId="sku-1"), None),
        (dict(revenue=-5), None),
        # unusable revenue fields: skipped with the reason
        (dict(price="9.99"), "invalid_price"),
        (dict(revenue=True), "invalid_price"),
        (dict(price=1, quantity=0), "invalid_quantity"),
        (dict(price=1, quantity=1.5), "invalid_quantity"),
        (dict(price=1, quantity=1001), "invalid_quantity"),
        (dict(price=1, productId="x" * 256), "invalid_product_id"),
        (dict(price=1, productId=["a"]), "invalid_product_id"),
        (dict(price=1, currency="euro"), "invalid_currency"),
        (dict(price=1, currency=978), "invalid_currency"),
    ],
)
def test_purchase_of(fields, expected):
    assert purchase_of(event(**fields)) == expected


def test_export_shape_reads_dollar_prefixed_properties_and_the_top_level_wins():
    export = event(event_properties={"$price": 3, "$quantity": 2, "$productId": "sku-9", "$currency": "JPY",
                                     "$revenueType": "purchase"})
    assert purchase_of(export) == Purchase("sku-9", "JPY", 3.0, 2)
    assert revenue_fields(dict(export, price=4))["price"] == 4


def test_purchase_objects_carry_identifier_time_app_and_selected_properties():
    e = event(price=2.5, quantity=230, productId="sku-1", event_properties={"sku": "sku-1", "coupon": None, "x": 1})
    objects = purchase_objects(purchase_of(e), e, 1_700_000_000_000, {"external_id": "u-1"}, ("sku", "coupon"), "app")
    assert [o["quantity"] for o in objects] == [100, 100, 30]
    assert objects[0] == {"external_id": "u-1", "product_id": "sku-1", "currency": "USD", "price": 2.5, "quantity": 100,
                          "time": "2023-11-14T22:13:20.000Z", "app_id": "app", "properties": {"sku": "sku-1"}}
    assert sum(o["price"] * o["quantity"] for o in objects) == 2.5 * 230
