"""`streamcart traffic` on the real stack: its shoppers take every path of the saga, and what they report is what
the API shows, with the money and the stock accounted for."""

from __future__ import annotations

import asyncio
from collections import Counter

from streamcart.settings import Settings
from streamcart.traffic import run
from tests.integration.test_dashboard import shop  # noqa: F401 (fixture)
from tests.integration.test_saga import Shop, sku
from tests.integration.test_saga_failures import assert_money_nets_out, settle_all


def test_the_shoppers_orders_are_delivered_or_cancelled_as_the_api_shows_them(
    shop: Shop, settings: Settings  # noqa: F811
):
    skus = [sku() for _ in range(3)]
    for item in skus:  # little stock: the shoppers restock what runs low
        shop.product(item, price=1_999, stock=8)
    lines: list[str] = []
    tally = asyncio.run(run(settings, rate=5, orders=24, seed=3, skus=skus, echo=lines.append, every_s=2))
    print("\n".join(lines))
    assert tally.placed == 24 and not tally.errors, tally.line()
    assert tally.restocks >= 1, tally.line()
    settled = settle_all(shop, list(tally.status), timeout_s=60)
    shown = {order_id: order["status"] for order_id, order in settled.items()}
    assert shown == tally.status  # each shopper saw its order to the end, as the API has it now
    assert {"DELIVERED", "CANCELLED"} <= set(shown.values()) <= {"CONFIRMED", "DELIVERED", "CANCELLED"}
    reasons = {order["cancel_reason"] for order in settled.values() if order["status"] == "CANCELLED"}
    assert reasons <= {"customer_request", "payment_declined", "out_of_stock"} and reasons == set(tally.reasons)
    assert_money_nets_out(shop, settled)
    kept = Counter()  # what the customers kept: refunded orders were sold, then restocked
    for order in settled.values():
        if order["status"] in ("CONFIRMED", "DELIVERED"):
            kept.update({line["sku"]: line["quantity"] for line in order["lines"]})
    for item in skus:  # I2 once quiet: nothing held, and what left the shelf is what was kept
        stock = shop.quiet_stock(item)
        assert stock["sold"] - stock["restocked"] == kept[item], (item, stock, kept[item])
        assert stock["on_hand"] == stock["adjusted"] - stock["sold"] + stock["restocked"], stock
