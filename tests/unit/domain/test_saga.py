"""The whole saga, in memory, under duplicate delivery, crashes between store and send, and reordering.

Each scenario runs over many seeds (each seed is another interleaving) and ends by checking DESIGN.md §4's I1-I5.
"""

from collections import Counter

import pytest
from domain_builders import make
from saga_harness import TIMEOUT_MS, Saga

from schemas.messages import (
    AdjustStock,
    CancelOrder,
    CancelReason,
    OrderLine,
    PlaceOrder,
    UpdateShipment,
    UpsertProduct,
)
from streamcart.domain.orders import CANNOT_CANCEL_AFTER_DISPATCH, OrderStatus
from streamcart.domain.shipping import SHIPMENT_CANCELLED, ShipmentStatus

SEEDS = range(30)
CONFIRMED_OR_LATER = {OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.DELIVERED}


def stocked(seed: int, catalog: dict[str, tuple[int, int]], **bus) -> Saga:
    """A saga whose catalog and stock hold ``{sku: (unit price, quantity)}``, settled before any order."""
    saga = Saga(seed, **bus)
    for sku, (price, quantity) in catalog.items():
        saga.send(make(UpsertProduct, sku=sku, name=sku, unit_price_cents=price, currency="EUR", at=0))
        saga.send(make(AdjustStock, sku=sku, delta=quantity, reason="delivery", at=0))
    saga.run()
    return saga


def place(order_id: str, *lines: tuple[str, int], token: str = "tok_approve", at: int = 1_000) -> PlaceOrder:
    return make(PlaceOrder, order_id=order_id, customer_id=f"c-{order_id}", lines=tuple(
        OrderLine(sku=sku, quantity=quantity) for sku, quantity in lines
    ), currency="EUR", payment_token=token, at=at)


def cancel(order_id: str, at: int = 2_000) -> CancelOrder:
    return make(CancelOrder, order_id=order_id, requested_by=f"c-{order_id}", at=at, event_id=f"cancel-{order_id}-{at}")


def ship(order_id: str, status: str) -> UpdateShipment:
    return make(UpdateShipment, order_id=order_id, status=status, at=3_000)


def outcome(saga: Saga, order_id: str) -> tuple[str, str | None]:
    order = saga.orders[order_id]
    return order.status, order.cancel_reason


def check_invariants(saga: Saga, supplied: dict[str, int], *, allowed_rejections: frozenset[str] = frozenset()):
    """I1-I5 of DESIGN.md §4 on a settled saga."""
    # I1: every order reached an outcome (the live check in the harness saw it never leave it).
    for order in saga.orders.values():
        assert order.settled, (order.order_id, order.status)
        assert (order.status == OrderStatus.CANCELLED) == (order.cancel_reason is not None)
    # I2 and I3, per SKU.
    confirmed_units: Counter[str] = Counter()
    for order in saga.orders.values():
        if order.status in CONFIRMED_OR_LATER:
            confirmed_units.update({line.sku: line.quantity for line in order.lines})
    for sku, quantity in supplied.items():
        stock = saga.stock(sku)
        assert stock.on_hand == quantity - stock.sold + stock.restocked
        assert stock.reserved == sum(res.held for res in saga.reservations(sku)) == 0
        assert stock.available >= 0
        assert stock.sold - stock.restocked == confirmed_units[sku] <= quantity
    # I4, against the gateway's own ledger.
    ledger = saga.gateway.ledger
    for order in saga.orders.values():
        auth = ledger.get(order.order_id)
        if order.status in CONFIRMED_OR_LATER:
            assert auth is not None and auth.status in ("approved", "captured"), (order.order_id, auth)
            assert auth.amount_cents == order.total_cents
        else:
            assert auth is None or auth.status in ("declined", "voided", "refunded"), (order.order_id, auth)
    # Nothing refused but what the scenario expects.
    assert {reason for _, _, reason in saga.rejections} <= allowed_rejections
    # I5: every message again changes nothing and emits nothing new.
    saga.replay_everything()


@pytest.mark.parametrize("seed", SEEDS)
def test_a_multi_line_order_is_confirmed_shipped_and_delivered(seed):
    saga = stocked(seed, {"A": (500, 10), "B": (1_250, 5)})
    saga.send(place("o-1", ("A", 2), ("B", 1)))
    saga.run()
    order = saga.orders["o-1"]
    assert order.status == OrderStatus.CONFIRMED
    assert order.total_cents == 2 * 500 + 1_250
    assert [(v.sku, v.unit_price_cents) for v in order.line_views()] == [("A", 500), ("B", 1_250)]
    saga.send(ship("o-1", "dispatched"))
    saga.run()
    saga.send(ship("o-1", "delivered"))
    saga.run()
    order = saga.orders["o-1"]
    assert order.status == OrderStatus.DELIVERED
    assert order.shipment is not None and order.shipment.status == "delivered"
    assert (saga.stock("A").on_hand, saga.stock("B").on_hand) == (8, 4)
    assert saga.gateway.ledger["o-1"].status == "captured"
    check_invariants(saga, {"A": 10, "B": 5})


@pytest.mark.parametrize("seed", SEEDS)
def test_one_line_out_of_stock_cancels_the_order_and_releases_the_other_lines(seed):
    saga = stocked(seed, {"A": (500, 10), "B": (1_250, 0)})
    saga.send(place("o-1", ("A", 2), ("B", 1)))
    saga.run()
    assert outcome(saga, "o-1") == (OrderStatus.CANCELLED, CancelReason.OUT_OF_STOCK)
    assert (saga.stock("A").on_hand, saga.stock("A").reserved) == (10, 0)
    assert "o-1" not in saga.gateway.ledger
    check_invariants(saga, {"A": 10, "B": 0})


@pytest.mark.parametrize("seed", SEEDS)
def test_an_unknown_product_cancels_the_order_as_product_unavailable(seed):
    saga = stocked(seed, {"A": (500, 10)})
    saga.send(place("o-1", ("A", 1), ("NOPE", 1)))
    saga.run()
    assert outcome(saga, "o-1") == (OrderStatus.CANCELLED, CancelReason.PRODUCT_UNAVAILABLE)
    assert saga.orders["o-1"].cancel_detail == "NOPE: unknown sku NOPE"
    check_invariants(saga, {"A": 10})


@pytest.mark.parametrize("seed", SEEDS)
def test_a_declined_payment_cancels_the_order_and_releases_its_stock(seed):
    saga = stocked(seed, {"A": (500, 10), "B": (1_250, 5)})
    saga.send(place("o-1", ("A", 2), ("B", 1), token="tok_decline"))
    saga.run()
    assert outcome(saga, "o-1") == (OrderStatus.CANCELLED, CancelReason.PAYMENT_DECLINED)
    assert (saga.stock("A").available, saga.stock("B").available) == (10, 5)
    check_invariants(saga, {"A": 10, "B": 5})


@pytest.mark.parametrize("seed", SEEDS)
def test_a_timeout_cancels_the_order_and_the_late_authorization_is_voided(seed):
    saga = stocked(seed, {"A": (500, 10)})
    saga.paused.add("payments")  # the gateway is slower than the deadline
    saga.send(place("o-1", ("A", 3)))
    saga.run()
    assert outcome(saga, "o-1") == (OrderStatus.PENDING, None)
    saga.tick(now_ms=1_000 + TIMEOUT_MS)
    saga.run()
    assert outcome(saga, "o-1") == (OrderStatus.CANCELLED, CancelReason.TIMEOUT)
    assert saga.stock("A").available == 10
    saga.paused.clear()
    saga.run()
    assert saga.gateway.ledger["o-1"].status == "voided"
    assert outcome(saga, "o-1") == (OrderStatus.CANCELLED, CancelReason.TIMEOUT)
    check_invariants(saga, {"A": 10})


@pytest.mark.parametrize("seed", SEEDS)
def test_an_authorization_whose_answer_was_lost_is_declined_and_voided_at_the_gateway(seed):
    saga = stocked(seed, {"A": (500, 10)})
    saga.send(place("o-1", ("A", 1), token="tok_lost"))
    saga.run()
    assert outcome(saga, "o-1") == (OrderStatus.CANCELLED, CancelReason.PAYMENT_DECLINED)
    assert saga.gateway.ledger["o-1"].status == "voided"
    check_invariants(saga, {"A": 10})


@pytest.mark.parametrize("seed", SEEDS)
def test_a_customer_cancel_while_payment_is_in_flight_releases_stock_and_voids_the_authorization(seed):
    saga = stocked(seed, {"A": (500, 10)})
    saga.paused.add("payments")
    saga.send(place("o-1", ("A", 4)))
    saga.run()
    saga.send(cancel("o-1"))
    saga.run()
    saga.paused.clear()
    saga.run()
    assert outcome(saga, "o-1") == (OrderStatus.CANCELLED, CancelReason.CUSTOMER_REQUEST)
    assert saga.gateway.ledger["o-1"].status == "voided"
    check_invariants(saga, {"A": 10})


@pytest.mark.parametrize("seed", SEEDS)
def test_a_customer_cancel_racing_the_reservations_settles_the_order_cancelled_with_nothing_held(seed):
    saga = stocked(seed, {"A": (500, 10), "B": (700, 10)})
    saga.send(place("o-1", ("A", 1), ("B", 1)))
    saga.send(cancel("o-1"))  # same queue as the placement, so it lands after it, but races everything else
    saga.run()
    assert saga.orders["o-1"].status in (OrderStatus.CANCELLED, OrderStatus.CONFIRMED)
    check_invariants(saga, {"A": 10, "B": 10})


@pytest.mark.parametrize("seed", SEEDS)
def test_a_customer_cancel_after_confirmation_refunds_restocks_and_stops_the_shipment(seed):
    saga = stocked(seed, {"A": (500, 10)})
    saga.send(place("o-1", ("A", 4)))
    saga.run()
    assert saga.orders["o-1"].status == OrderStatus.CONFIRMED
    saga.send(cancel("o-1"))
    saga.run()
    assert outcome(saga, "o-1") == (OrderStatus.CANCELLED, CancelReason.CUSTOMER_REQUEST)
    assert saga.gateway.ledger["o-1"].status == "refunded"
    assert (saga.stock("A").on_hand, saga.stock("A").sold, saga.stock("A").restocked) == (10, 4, 4)
    assert saga.tables["shipping"]["o-1"].status == ShipmentStatus.CANCELLED
    check_invariants(saga, {"A": 10})


@pytest.mark.parametrize("seed", SEEDS)
def test_a_cancel_after_dispatch_is_refused_and_the_order_is_delivered(seed):
    saga = stocked(seed, {"A": (500, 10)})
    saga.send(place("o-1", ("A", 1)))
    saga.run()
    saga.send(ship("o-1", "dispatched"))
    saga.run()
    saga.send(cancel("o-1"))
    saga.run()
    # Refused once, or again for each redelivery, and for nothing else.
    assert {reason for _, _, reason in saga.rejections} == {CANNOT_CANCEL_AFTER_DISPATCH}
    saga.send(ship("o-1", "delivered"))
    saga.run()
    assert outcome(saga, "o-1") == (OrderStatus.DELIVERED, None)
    check_invariants(saga, {"A": 10}, allowed_rejections=frozenset({CANNOT_CANCEL_AFTER_DISPATCH}))


@pytest.mark.parametrize("seed", range(6))
def test_two_hundred_orders_racing_for_fifty_units_confirm_exactly_fifty(seed):
    saga = stocked(seed, {"HOT": (999, 50)})
    for n in range(200):
        saga.send(place(f"o-{n}", ("HOT", 1), at=1_000 + n))
    saga.run()
    outcomes = Counter(outcome(saga, f"o-{n}") for n in range(200))
    assert outcomes == {(OrderStatus.CONFIRMED, None): 50, (OrderStatus.CANCELLED, CancelReason.OUT_OF_STOCK): 150}
    stock = saga.stock("HOT")
    assert (stock.on_hand, stock.reserved, stock.sold) == (0, 0, 50)
    check_invariants(saga, {"HOT": 50})


@pytest.mark.parametrize("seed", range(15))
def test_a_busy_shop_with_every_kind_of_trouble_keeps_every_invariant(seed):
    saga = stocked(seed, {"A": (500, 30), "B": (1_250, 12), "C": (99, 60)}, redeliver=0.1, crash=0.08)
    rng = saga.rng
    tokens = ["tok_approve"] * 6 + ["tok_decline", "tok_lost"]
    for n in range(40):
        lines = rng.sample([("A", rng.randint(1, 3)), ("B", rng.randint(1, 2)), ("C", rng.randint(1, 5)),
                            ("GONE", 1)], k=rng.randint(1, 3))
        saga.send(place(f"o-{n}", *lines, token=rng.choice(tokens), at=1_000 + 100 * n))
        if rng.random() < 0.2:
            saga.send(cancel(f"o-{n}", at=1_050 + 100 * n))
    saga.paused.add("payments")
    saga.run()
    saga.tick(now_ms=1_000 + 100 * 20 + TIMEOUT_MS)  # the first half of the orders reach their deadline
    saga.run()
    saga.paused.clear()  # and their payments are answered after that
    saga.run()
    saga.tick(now_ms=10**9)
    saga.run()
    shipped = [o.order_id for o in saga.orders.values() if o.status == OrderStatus.CONFIRMED]
    for order_id in shipped[: len(shipped) // 2]:
        saga.send(ship(order_id, "dispatched"))
        saga.send(cancel(order_id, at=5_000))
    saga.run()
    reasons = {o.cancel_reason for o in saga.orders.values()}
    assert {CancelReason.TIMEOUT, CancelReason.PRODUCT_UNAVAILABLE} <= reasons
    refusals = frozenset({CANNOT_CANCEL_AFTER_DISPATCH, SHIPMENT_CANCELLED})
    check_invariants(saga, {"A": 30, "B": 12, "C": 60}, allowed_rejections=refusals)
