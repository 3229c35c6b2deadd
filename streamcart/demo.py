"""The demo catalog `streamcart demo` puts into a freshly started stack."""

from __future__ import annotations

from schemas.messages import AdjustStock, UpsertProduct
from streamcart.commands import CommandSender, envelope
from streamcart.settings import Settings

#: sku, name, unit price in cents, units on hand
CATALOG = (
    ("KB-001", "Mechanical keyboard", 8900, 40),
    ("MS-002", "Wireless mouse", 2900, 120),
    ("MN-003", "27-inch monitor", 24900, 15),
    ("HD-004", "Noise-cancelling headphones", 17900, 25),
    ("CB-005", "USB-C cable", 990, 500),
    ("LT-006", "Desk lamp", 3490, 3),
)


def seed(settings: Settings) -> int:
    """Upsert the demo products and stock them (each SKU's stock is set once: a second seed adds nothing)."""
    sender = CommandSender(settings)
    for sku, name, price, units in CATALOG:
        sender.send(
            UpsertProduct(**envelope(sku, now_ms=1), sku=sku, name=name, unit_price_cents=price, currency="EUR"),
        )
        # A fixed event id per SKU: inventory drops a repeated adjustment, so re-seeding never doubles stock.
        sender.send(AdjustStock(**envelope(sku, event_id=f"demo-seed-{sku}"), sku=sku, delta=units, reason="demo seed"))
    return len(CATALOG)
