"""A worker killed at any instant: the inventory rebuilt from any prefix of its changelog, then the unprocessed
commands delivered again, must end where an uninterrupted run ends (invariant I2, DESIGN.md §4).

This drives :func:`streamcart.domain.inventory.records` the way the inventory agent does: one table (a dict)
holding the SKU record and the reservation records, every write appended to a changelog (a list). A crash keeps
a prefix of that changelog, and the commands from the last committed one on are processed again.
"""

from __future__ import annotations

import random

import pytest
from domain_builders import make

from schemas.messages import AdjustStock, CommitStock, Message, ReleaseStock, ReserveStock, RestockItems
from streamcart.domain.catalog import ProductState
from streamcart.domain.inventory import AdjustmentMemory, Record, Reservation, StockState, records

ANVIL = ProductState(sku="A", name="Anvil", unit_price_cents=500, currency="EUR", active=True,
                     updated={"event_id": "p-1", "at": 0})

Store = dict[str, Record]


def handle(store: Store, changelog: list[tuple[str, Record]], message: Message) -> tuple:
    """What the agent does with one command: read, decide, write in order. Returns the emitted event ids."""
    stock = store.get("A")
    assert stock is None or isinstance(stock, StockState)

    def stored(key: str) -> Reservation | None:
        record = store.get(key)
        assert record is None or isinstance(record, Reservation)
        return record

    def remembered(key: str) -> AdjustmentMemory | None:
        record = store.get(key)
        assert record is None or isinstance(record, AdjustmentMemory)
        return record

    decision, writes = records(stock, stored, message, product=ANVIL, remembered=remembered)
    for key, record in writes:
        store[key] = record
        changelog.append((key, record))
    return tuple(m.event_id for m in decision.messages)


def commands(rng: random.Random, orders: int) -> list[Message]:
    """A plausible interleaving: stock arrives, orders reserve, then each is released, or committed (and some
    of those restocked), in random order across orders, with more deliveries and write-offs now and then."""
    out: list[Message] = [make(AdjustStock, sku="A", delta=orders, reason="delivery")]
    follow_ups: list[list[Message]] = []
    for n in range(orders):
        order_id = f"o-{n}"
        steps: list[Message] = [make(ReserveStock, sku="A", order_id=order_id, quantity=rng.randint(1, 3),
                                     currency="EUR")]
        if rng.random() < 0.4:
            steps.append(make(ReleaseStock, sku="A", order_id=order_id, reason="timeout"))
        else:
            steps.append(make(CommitStock, sku="A", order_id=order_id))
            if rng.random() < 0.3:
                steps.append(make(RestockItems, sku="A", order_id=order_id))
        follow_ups.append(steps)
    while any(follow_ups):
        steps = rng.choice([s for s in follow_ups if s])
        out.append(steps.pop(0))
        if rng.random() < 0.3:
            out.append(make(AdjustStock, sku="A", delta=rng.randint(1, 3), reason="delivery",
                            event_id=f"delivery-{len(out)}"))
        if rng.random() < 0.2:  # often refused (orders hold the stock), and the refusal noted
            out.append(make(AdjustStock, sku="A", delta=-rng.randint(1, 4), reason="damaged",
                            event_id=f"write-off-{len(out)}"))
    return out


def accounted(store: Store) -> None:
    """The counters agree with the reservations (I2): what is held is what is reserved, and nothing is negative."""
    stock = store["A"]
    assert isinstance(stock, StockState)
    held = sum(r.held for k, r in store.items() if isinstance(r, Reservation))
    assert stock.reserved == held
    assert stock.on_hand >= 0 and stock.available >= 0


@pytest.mark.parametrize("seed", range(25))
def test_any_crash_point_then_redelivery_ends_where_an_uninterrupted_run_ends(seed):
    rng = random.Random(seed)
    msgs = commands(rng, orders=6)
    clean: Store = {}
    clean_log: list = []
    emitted = [handle(clean, clean_log, m) for m in msgs]
    accounted(clean)

    # Replay the run, noting after each command how long the changelog was: a commit point.
    lengths = []
    log: list = []
    store: Store = {}
    for m in msgs:
        handle(store, log, m)
        lengths.append(len(log))

    for cut in range(len(clean_log) + 1):
        # The offsets committed cover only commands whose writes had all left: those before the first command
        # whose writes reach past the cut. Pick any earlier commit point too (commits are periodic).
        fully_written = sum(1 for n in lengths if n <= cut)
        committed = rng.randint(0, fully_written)
        rebuilt: Store = {}
        for key, record in clean_log[:cut]:
            rebuilt[key] = record
        again = [handle(rebuilt, [], m) for m in msgs[committed:]]
        assert rebuilt == {k: v for k, v in clean.items()}, f"cut {cut}, committed {committed}"
        assert again == emitted[committed:], "a redelivered command re-emits its events under the same ids"
        accounted(rebuilt)
