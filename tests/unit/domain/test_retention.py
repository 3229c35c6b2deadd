"""Forgetting settled orders (streamcart.domain.retention) and their reservations (inventory.forget)."""

from domain_builders import TIMEOUT_MS, make, place, run

from schemas.messages import (
    CancelOrder,
    DropOrder,
    ExpireOrder,
    ForgetReservation,
    OrderCancelled,
    OrderConfirmed,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentDelivered,
    ShipmentDispatched,
    StockCommitted,
    StockRejected,
    StockReleased,
    StockReserved,
    StockRestocked,
)
from streamcart.domain import inventory, orders, payments, retention
from streamcart.domain.causes import Cause
from streamcart.domain.inventory import Reservation, ReservationStatus, StockState
from streamcart.domain.order_effects import effects_of
from streamcart.domain.order_state import OrderState, OrderStatus
from streamcart.ids import derive_id

DAY_MS = 24 * 3600 * 1000


def apply(state, *messages):
    return run(lambda s, m: orders.decide(s, m, saga_timeout_ms=TIMEOUT_MS), state, *messages)


def reserved(sku: str, quantity: int, at: int = 2_000) -> StockReserved:
    return make(StockReserved, order_id="o-1", sku=sku, quantity=quantity, unit_price_cents=500, currency="EUR", at=at)


def delivered() -> OrderState:
    """o-1 (two lines) through the whole happy path to DELIVERED, its last step at 9_000."""
    order, _ = apply(
        None, place(lines=(("A", 2), ("B", 1))), reserved("A", 2), reserved("B", 1),
        make(PaymentAuthorized, order_id="o-1", amount_cents=1_500, currency="EUR", authorization_id="a-1", at=3_000),
        make(StockCommitted, order_id="o-1", sku="A", quantity=2, at=4_000),
        make(StockCommitted, order_id="o-1", sku="B", quantity=1, at=4_000),
        make(PaymentCaptured, order_id="o-1", amount_cents=1_500, currency="EUR", authorization_id="a-1", at=5_000),
        make(ShipmentCreated, order_id="o-1", tracking_id="t-1", carrier="post", at=6_000),
        make(ShipmentDispatched, order_id="o-1", tracking_id="t-1", at=7_000),
        make(ShipmentDelivered, order_id="o-1", tracking_id="t-1", at=9_000),
    )
    assert order.status == OrderStatus.DELIVERED
    return order


def declined() -> OrderState:
    """o-1 (one line) cancelled by a declined payment, its stock released (last step at 5_000)."""
    order, _ = apply(
        None, place(lines=(("A", 1),)), reserved("A", 1),
        make(PaymentDeclined, order_id="o-1", amount_cents=500, currency="EUR", reason="card_declined", at=3_000),
        make(StockReleased, order_id="o-1", sku="A", quantity=1, at=5_000),
    )
    assert order.status == OrderStatus.CANCELLED
    return order


def test_a_final_order_is_forgotten_the_retention_after_its_last_step():
    assert retention.forget_at(delivered(), DAY_MS) == 9_000 + DAY_MS
    assert retention.forget_at(declined(), DAY_MS) == 5_000 + DAY_MS


def test_an_order_that_can_still_move_on_or_a_retention_of_zero_is_never_due():
    confirmed, _ = apply(None, place(lines=(("A", 1),)), reserved("A", 1),
                         make(PaymentAuthorized, order_id="o-1", amount_cents=500, currency="EUR",
                              authorization_id="a-1", at=3_000))
    assert confirmed.status == OrderStatus.CONFIRMED
    pending, _ = apply(None, place())
    for order in (confirmed, pending):
        assert retention.forget_at(order, DAY_MS) is None
    assert retention.forget_at(delivered(), 0) is None


def test_the_due_command_forgets_the_order_asks_inventory_once_per_sku_and_names_its_counted_events():
    order = delivered()
    command = retention.forget_command("o-1", retention.forget_at(order, DAY_MS))
    forgetting = retention.forget(order, None, command, DAY_MS)
    assert forgetting is not None
    drop = forgetting.drop
    assert isinstance(drop, DropOrder) and (drop.order_id, drop.forget_at, drop.skus) == ("o-1", command.forget_at,
                                                                                           ("A", "B"))
    assert forgetting.fallback_at == command.forget_at + DAY_MS
    forgets = retention.reservation_forgets(drop)
    assert [(m.sku, m.order_id) for m in forgets] == [("A", "o-1"), ("B", "o-1")]
    assert all(isinstance(m, ForgetReservation) and m.causation_id == drop.event_id for m in forgets)
    assert retention.reservation_forgets(drop) == forgets  # the same ids every time
    # OrderConfirmed is the one event of this order the analytics flow folds (placements and shipping count for
    # nothing): its id, rebuilt from the cause the order kept, is the mark to drop.
    confirmed = [m for m in effects_of(order, order.confirmed.event_id) if isinstance(m, OrderConfirmed)]
    assert forgetting.counted_event_ids == (confirmed[0].event_id,)


def test_a_cancelled_order_names_its_cancellation_for_the_analytics_marks():
    order = declined()
    command = retention.forget_command("o-1", 5_000 + DAY_MS)
    forgetting = retention.forget(order, None, command, DAY_MS)
    cancelled = [m for m in effects_of(order, order.cancelled.event_id) if isinstance(m, OrderCancelled)]
    assert forgetting is not None and forgetting.counted_event_ids == (cancelled[0].event_id,)


def test_the_command_is_the_same_every_time_it_is_built():
    first, again = retention.forget_command("o-1", 123), retention.forget_command("o-1", 123)
    assert first == again and first.event_id == derive_id("o-1", "ForgetOrder", 123)
    assert retention.forget_command("o-1", 124).event_id != first.event_id
    forgetting = retention.forget(delivered(), None, retention.forget_command("o-1", 9_000 + DAY_MS), DAY_MS)
    repeated = retention.forget(delivered(), None, retention.forget_command("o-1", 9_000 + DAY_MS), DAY_MS)
    assert forgetting == repeated


def test_a_command_older_than_the_orders_time_keeps_it():
    # A later step moved the order's time: the command the timer sent for the old time changes nothing.
    order = delivered()
    assert retention.forget(order, None, retention.forget_command("o-1", 9_000 + DAY_MS - 1), DAY_MS) is None
    # A longer retention setting since the command was sent, likewise.
    assert retention.forget(order, None, retention.forget_command("o-1", 9_000 + DAY_MS), 2 * DAY_MS) is None


def test_an_order_with_something_in_flight_is_kept():
    # Cancelled by its deadline while line A's reservation was still on its way: A is released when it lands.
    expired, _ = apply(None, place(lines=(("A", 1),)), make(ExpireOrder, order_id="o-1", deadline=1_000 + TIMEOUT_MS,
                                                              at=1_000 + TIMEOUT_MS))
    assert expired.status == OrderStatus.CANCELLED
    late = retention.forget_command("o-1", 10 * DAY_MS)
    assert not retention.quiet(expired, None) and retention.forget(expired, None, late, DAY_MS) is None
    # The reservation lands (the order asks to release it), then its release: only then is the order quiet.
    releasing, _ = apply(expired, reserved("A", 1, at=40_000))
    assert not retention.quiet(releasing, None)
    released, _ = apply(releasing, make(StockReleased, order_id="o-1", sku="A", quantity=1, at=41_000))
    assert retention.quiet(released, None) and retention.forget(released, None, late, DAY_MS) is not None


def test_an_order_cancelled_with_its_payment_still_asked_for_is_kept_until_the_payment_is_settled():
    asked, _ = apply(None, place(lines=(("A", 1),)), reserved("A", 1))
    assert asked.payment is not None
    expired, _ = apply(asked, make(ExpireOrder, order_id="o-1", deadline=1_000 + TIMEOUT_MS, at=1_000 + TIMEOUT_MS),
                       make(StockReleased, order_id="o-1", sku="A", quantity=1, at=32_000))
    assert expired.status == OrderStatus.CANCELLED and not retention.quiet(expired, None)
    # The late authorization is voided: still in flight until the void is confirmed.
    voiding, _ = apply(expired, make(PaymentAuthorized, order_id="o-1", amount_cents=500, currency="EUR",
                                     authorization_id="a-1", at=33_000))
    assert not retention.quiet(voiding, None)


def test_a_missing_order_is_already_forgotten():
    assert retention.forget(None, None, retention.forget_command("o-1", 1), DAY_MS) is None


def test_a_rejected_line_counts_as_settled():
    order, _ = apply(None, place(lines=(("A", 1),)),
                     make(StockRejected, order_id="o-1", sku="A", quantity=1, reason="out_of_stock", available=0))
    assert order.status == OrderStatus.CANCELLED and retention.quiet(order, None)


# --- inventory: forgetting a reservation ------------------------------------------------------------------------

def forget_a() -> ForgetReservation:
    return make(ForgetReservation, sku="A", order_id="o-1")


def reservation(status: str) -> Reservation:
    return Reservation(sku="A", order_id="o-1", quantity=2, status=status)


def test_a_settled_reservation_is_deleted_and_the_counters_stop_carrying_it():
    res = reservation(ReservationStatus.COMMITTED)
    stock = StockState(sku="A", on_hand=5, last_reservation=res)
    forgotten = inventory.forget(stock, res, forget_a())
    assert forgotten.delete and forgotten.refused is None
    assert forgotten.stock == stock.model_copy(update={"last_reservation": None})


def test_counters_carrying_another_orders_reservation_are_left_alone():
    other = Reservation(sku="A", order_id="o-2", quantity=1, status=ReservationStatus.RESERVED)
    forgotten = inventory.forget(StockState(sku="A", last_reservation=other), reservation("released"), forget_a())
    assert forgotten.delete and forgotten.stock is None


def test_a_reservation_the_counters_alone_still_carry_is_dropped_from_them():
    # A crash between the counters' write and the reservation's own: the counters are the only copy.
    res = reservation(ReservationStatus.RELEASED)
    forgotten = inventory.forget(StockState(sku="A", last_reservation=res), None, forget_a())
    assert not forgotten.delete and forgotten.stock is not None and forgotten.stock.last_reservation is None


def test_a_reservation_already_forgotten_changes_nothing():
    assert inventory.forget(StockState(sku="A"), None, forget_a()) == inventory.Forgotten()
    assert inventory.forget(None, None, forget_a()) == inventory.Forgotten()


def test_a_reservation_still_holding_stock_is_refused():
    forgotten = inventory.forget(StockState(sku="A", reserved=2), reservation(ReservationStatus.RESERVED), forget_a())
    assert forgotten.refused is not None and "holds 2" in forgotten.refused
    assert not forgotten.delete and forgotten.stock is None


def test_an_order_kept_by_a_command_is_looked_at_again_at_its_own_time_or_a_retention_later():
    order = delivered()
    at = 9_000 + DAY_MS
    # A later step (or a longer retention) moved its time past the command's: kept until then.
    assert retention.kept_until(order, retention.forget_command("o-1", at - 5), DAY_MS) == at
    # Due but something is in flight: a retention later, not at the front of the index for every tick meanwhile.
    expired, _ = apply(None, place(lines=(("A", 1),)), make(ExpireOrder, order_id="o-1", deadline=1_000 + TIMEOUT_MS,
                                                              at=1_000 + TIMEOUT_MS))
    command = retention.forget_command("o-1", 5 * DAY_MS)
    assert retention.kept_until(expired, command, DAY_MS) == 6 * DAY_MS
    pending, _ = apply(None, place())
    assert retention.kept_until(pending, command, DAY_MS) is None


def confirmed_one() -> OrderState:
    order, _ = apply(None, place(lines=(("A", 1),)), reserved("A", 1),
                     make(PaymentAuthorized, order_id="o-1", amount_cents=500, currency="EUR", authorization_id="a-1",
                          at=3_000),
                     make(StockCommitted, order_id="o-1", sku="A", quantity=1, at=4_000),
                     make(PaymentCaptured, order_id="o-1", amount_cents=500, currency="EUR", authorization_id="a-1",
                          at=4_000),
                     make(ShipmentCreated, order_id="o-1", tracking_id="t-1", carrier="post", at=5_000))
    assert order.status == OrderStatus.CONFIRMED
    return order


def test_an_order_cancelled_after_confirmation_is_kept_until_refunded_and_restocked():
    cancelled, _ = apply(confirmed_one(), make(CancelOrder, order_id="o-1", requested_by="c-1", at=6_000),
                         make(ShipmentCancelled, order_id="o-1", tracking_id="t-1", at=7_000))
    assert cancelled.status == OrderStatus.CANCELLED and not retention.quiet(cancelled, None)
    refunded, _ = apply(cancelled, make(PaymentRefunded, order_id="o-1", amount_cents=500, currency="EUR",
                                        authorization_id="a-1", at=8_000))
    assert not retention.quiet(refunded, None)  # its line is still committed: the restock is owed
    restocked, _ = apply(refunded, make(StockRestocked, order_id="o-1", sku="A", quantity=1, at=9_000))
    assert retention.quiet(restocked, None)


def test_an_order_whose_cancel_lost_the_race_to_dispatch_is_forgotten_once_delivered():
    lost, _ = apply(confirmed_one(), make(CancelOrder, order_id="o-1", requested_by="c-1", at=6_000),
                    make(ShipmentDispatched, order_id="o-1", tracking_id="t-1", at=7_000),
                    make(ShipmentDelivered, order_id="o-1", tracking_id="t-1", at=8_000))
    assert lost.status == OrderStatus.DELIVERED and lost.cancel_request is not None
    assert retention.quiet(lost, None)


def test_the_payments_record_must_be_settled_too():
    # Declined to the saga because the gateway never answered: a void by key is owed, which only the payments
    # flow's record shows (its status is unknown until the void settles it).
    order, _ = apply(None, place(lines=(("A", 1),)), reserved("A", 1),
                     make(PaymentDeclined, order_id="o-1", amount_cents=500, currency="EUR",
                          reason=payments.GATEWAY_UNAVAILABLE, at=3_000),
                     make(StockReleased, order_id="o-1", sku="A", quantity=1, at=4_000))
    cause = Cause(event_id="auth-1", at=2_000)
    unknown = payments.PaymentState(order_id="o-1", authorization=payments.Authorization(
        cause=cause, outcome=payments.Outcome.UNAVAILABLE, reason=payments.GATEWAY_UNAVAILABLE))
    assert unknown.status == payments.PaymentStatus.UNKNOWN
    assert not retention.quiet(order, unknown)
    command = retention.forget_command("o-1", 10 * DAY_MS)
    assert retention.forget(order, unknown, command, DAY_MS) is None
    voided = unknown.model_copy(update={"voided": payments.Settlement(cause=Cause(event_id="void-1", at=5_000))})
    assert retention.quiet(order, voided) and retention.forget(order, voided, command, DAY_MS) is not None
    # A cancelled order whose money is still captured owes its refund.
    captured = payments.PaymentState(order_id="o-1", authorization=payments.Authorization(
        cause=cause, outcome=payments.Outcome.APPROVED, authorization_id="a-1"),
        captured=payments.Settlement(cause=cause, authorization_id="a-1"))
    assert not retention.quiet(order, captured)


def test_a_placement_older_than_the_retention_may_be_about_a_forgotten_order_and_places_nothing():
    """Found live: a delivered order's PlaceOrder produced again after the order was forgotten placed it again:
    its stock sold twice, its money authorized again, its warehouse rows rewritten from DELIVERED to CONFIRMED."""
    order = delivered()
    kept = DAY_MS
    forgotten_at = retention.forget_at(order, kept)
    assert forgotten_at is not None and forgotten_at >= order.placed_at + kept  # never sooner than this
    command = place()

    for now in (order.placed_at + kept, forgotten_at, forgotten_at + DAY_MS):
        decision = orders.decide(None, command, saga_timeout_ms=TIMEOUT_MS, now_ms=now, retention_ms=kept)
        assert decision.state is None and decision.messages == ()
        assert decision.rejected is not None and "older than the order retention" in decision.rejected

    # Handled sooner, it cannot be about a forgotten order: it places it.
    fresh = orders.decide(None, command, saga_timeout_ms=TIMEOUT_MS, now_ms=order.placed_at + kept - 1,
                          retention_ms=kept)
    assert fresh.rejected is None and fresh.state is not None and fresh.state.status == OrderStatus.PENDING
    # Orders kept for ever are never forgotten; and an order still stored answers a redelivery as it always did.
    assert orders.decide(None, command, saga_timeout_ms=TIMEOUT_MS, now_ms=10 * DAY_MS, retention_ms=0).state
    again = orders.decide(order, command, saga_timeout_ms=TIMEOUT_MS, now_ms=10 * DAY_MS, retention_ms=kept)
    assert again.rejected is None and again.state is None and again.messages == effects_of(order, "place-1")
