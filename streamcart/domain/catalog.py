"""The catalog, keyed by sku and co-partitioned with inventory (DESIGN.md §3 step 2).

A product is what UpsertProduct last said about it, where "last" is by event time, not by arrival: an old upsert
redelivered after a newer one must not bring an old price back. Ties on event time are broken by event id, so every
worker settles on the same product whatever order the upserts arrive in. Upserts emit nothing.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from schemas.messages import Message, UpsertProduct
from streamcart.domain.causes import Cause
from streamcart.domain.decision import Decision


class ProductState(BaseModel):
    """One catalog entry: the price a reservation is made at, in its currency, and whether it is on sale."""

    model_config = ConfigDict(frozen=True)

    sku: str
    name: str
    unit_price_cents: int
    currency: str
    active: bool
    updated: Cause


def decide(state: ProductState | None, message: Message) -> Decision[ProductState]:
    """Apply an UpsertProduct to a product (``None``: not in the catalog yet)."""
    if not isinstance(message, UpsertProduct):
        return Decision(state=None, rejected=f"catalog does not handle {type(message).__name__}")
    if state is not None and (message.occurred_at, message.event_id) <= (state.updated.at, state.updated.event_id):
        return Decision(state=None)  # the same upsert again, or an older one arriving late
    product = ProductState(
        sku=message.sku,
        name=message.name,
        unit_price_cents=message.unit_price_cents,
        currency=message.currency,
        active=message.active,
        updated=Cause.of(message),
    )
    return Decision(state=product)
