"""The catalog, keyed by sku and co-partitioned with inventory (DESIGN.md §3 step 2).

A product is what UpsertProduct last said about it, "last" in the log: a SKU's upserts all land in one partition
of the catalog commands topic, so its log order is the order they were sent in, whatever the senders' clocks say
(an admin's laptop ten minutes fast kept every later update out for ten minutes, and two updates in one
millisecond were ordered by their random ids). The product keeps its upsert's position (offset) there: a
redelivery, or an older record read again, is at or before it and changes nothing. A dead letter replayed is
written anew at the end of the log: the replay says where its message first was (``dlq.replay.position``), and it
is placed there, so an upsert replayed after newer ones changes nothing. A replay that does not say (written by an
older version) is decided by its event time (ties broken by event id) and stores no position. A product without a
position (stored before positions were kept, or by such a replay) takes the next upsert read from the log (the
log, read in order, ends where it ended); an upsert whose position is not known (a test without Kafka) is placed
by its event time. Upserts emit nothing.
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
    #: The offset of the upsert that made this state, in its SKU's partition of the catalog commands topic
    #: (``None``: stored before positions were kept, or not known).
    position: int | None = None


def decide(
    state: ProductState | None, message: Message, position: int | None = None, *, replayed: bool = False,
) -> Decision[ProductState]:
    """Apply an UpsertProduct to a product (``None``: not in the catalog yet) read at ``position`` (its offset in
    the catalog commands topic; ``None``: unknown), ``replayed`` if it is a dead letter written back."""
    if not isinstance(message, UpsertProduct):
        return Decision(state=None, rejected=f"catalog does not handle {type(message).__name__}")
    if state is not None:
        if message.event_id == state.updated.event_id:
            return Decision(state=None)  # the same upsert again
        if position is not None and state.position is not None and position <= state.position:
            return Decision(state=None)  # read again (a redelivery, a replay's too), or older in the log
        if (replayed or position is None) and \
                (message.occurred_at, message.event_id) <= (state.updated.at, state.updated.event_id):
            return Decision(state=None)  # out of its place in the log (or not in it), and older by event time
    product = ProductState(
        sku=message.sku,
        name=message.name,
        unit_price_cents=message.unit_price_cents,
        currency=message.currency,
        active=message.active,
        updated=Cause.of(message),
        position=position,
    )
    return Decision(state=product)
