import random

import pytest
from domain_builders import PLACED_AT, TIMEOUT_MS, kinds, make, of_type, place, run

from schemas.messages import (
    AdjustStock,
    AuthorizePayment,
    CancelOrder,
    CancelReason,
    CapturePayment,
    CommitStock,
    ExpireOrder,
    Message,
    OrderCancelled,
    OrderCancelRequested,
    OrderConfirmed,
    OrderPlaced,
    OrderShipped,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    PaymentVoided,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    RestockItems,
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentDelivered,
    ShipmentDispatched,
    StockCommitted,
    StockRejected,
    StockRejection,
    StockReleased,
    StockReserved,
    StockRestocked,
    VoidPayment,
)
from streamcart.domain.decision import Decision
from streamcart.domain.orders import (
    CANCEL_REFUSED,
    CANNOT_CANCEL_AFTER_DISPATCH,
    LineStatus,
    OrderState,
    OrderStatus,
    PaymentStatus,
    cancel_refusal,
    decide,
)

PRICES = {"A": 500, "B": 1250}
DEADLINE = PLACED_AT + TIMEOUT_MS


def order_decide(state: OrderState | None, message: Message) -> Decision[OrderState]:
    return decide(state, message, saga_timeout_ms=TIMEOUT_MS)


def apply(state: OrderState | None, *messages: Message) -> tuple[OrderState, list[Message]]:
    return run(order_decide, state, *messages)


def reserved(sku: str, quantity: int | None = None, price: int | None = None, **kw) -> StockReserved:
    quantity = quantity or {"A": 2, "B": 1}[sku]
    return make(StockReserved, order_id="o-1", sku=sku, quantity=quantity,
                unit_price_cents=PRICES[sku] if price is None else price, currency="EUR", **kw)


def rejected(sku: str, reason: str = StockRejection.OUT_OF_STOCK, available: int = 0, **kw) -> StockRejected:
    return make(StockRejected, order_id="o-1", sku=sku, quantity={"A": 2, "B": 1}[sku], reason=reason,
                available=available, **kw)


def authorized(amount: int = 2_250, **kw) -> PaymentAuthorized:
    return make(PaymentAuthorized, order_id="o-1", amount_cents=amount, currency="EUR", authorization_id="auth-1",
                **kw)


def declined(**kw) -> PaymentDeclined:
    return make(PaymentDeclined, order_id="o-1", amount_cents=2_250, currency="EUR", reason="card_declined", **kw)


def expire(at: int = DEADLINE) -> ExpireOrder:
    return make(ExpireOrder, order_id="o-1", deadline=DEADLINE, at=at)


def cancel(requested_by: str = "c-1", **kw) -> CancelOrder:
    return make(CancelOrder, order_id="o-1", requested_by=requested_by, **kw)


def shipment(kind: type[ShipmentCreated] | type[ShipmentDispatched] | type[ShipmentDelivered], **kw) -> Message:
    extra = {"carrier": "post"} if kind is ShipmentCreated else {}
    return make(kind, order_id="o-1", tracking_id="trk-1", **extra, **kw)


def stopped(**kw) -> ShipmentCancelled:
    return make(ShipmentCancelled, order_id="o-1", tracking_id="trk-1", **kw)


def pending() -> OrderState:
    return apply(None, place())[0]


def awaiting_payment() -> OrderState:
    return apply(pending(), reserved("A"), reserved("B"))[0]


def confirmed() -> OrderState:
    return apply(awaiting_payment(), authorized())[0]


def shipped() -> OrderState:
    return apply(confirmed(), shipment(ShipmentCreated), shipment(ShipmentDispatched))[0]


def refunded() -> OrderState:
    """A confirmed order cancelled by its customer, the shipment stopped before it left."""
    return apply(confirmed(), shipment(ShipmentCreated), cancel(), stopped())[0]


# --- placing ------------------------------------------------------------------------------------------------

def test_placing_an_order_records_it_pending_with_its_deadline():
    decision = order_decide(None, place(at=1_000))
    assert decision.state is not None
    assert decision.state.status == OrderStatus.PENDING
    assert decision.state.deadline == 1_000 + TIMEOUT_MS
    assert [h.event for h in decision.state.history] == ["OrderPlaced"]


def test_placing_an_order_emits_order_placed_and_one_reservation_per_line():
    decision = order_decide(None, place())
    assert [type(m) for m in decision.messages] == [OrderPlaced, ReserveStock, ReserveStock]
    reservations = of_type(decision.messages, ReserveStock)
    assert [(r.sku, r.quantity, r.currency, r.key) for r in reservations] == [
        ("A", 2, "EUR", "A"), ("B", 1, "EUR", "B"),
    ]


def test_a_redelivered_place_order_changes_nothing_and_re_emits_the_same_event_ids():
    first = order_decide(None, place())
    again = order_decide(first.state, place())
    assert again.state is None
    assert again.messages == first.messages


def test_a_second_placement_with_another_event_id_still_re_emits_the_first_results():
    first = order_decide(None, place(event_id="e-1"))
    retry = order_decide(first.state, place(event_id="e-2", at=5_000))
    assert retry.state is None
    assert retry.messages == first.messages


def test_derived_events_are_caused_by_and_correlated_with_the_placement():
    decision = order_decide(None, place(order_id="o-9", event_id="e-9"))
    assert {m.causation_id for m in decision.messages} == {"e-9"}
    assert {m.correlation_id for m in decision.messages} == {"o-9"}
    assert len({m.event_id for m in decision.messages}) == len(decision.messages)


def test_repeated_skus_in_one_order_become_one_line_with_the_summed_quantity():
    state, emitted = apply(None, place(lines=(("A", 1), ("B", 1), ("A", 2))))
    assert [(line.sku, line.quantity) for line in state.lines] == [("A", 3), ("B", 1)]
    assert [(r.sku, r.quantity) for r in of_type(emitted, ReserveStock)] == [("A", 3), ("B", 1)]


# --- collecting reservations --------------------------------------------------------------------------------

def test_a_reserved_line_records_its_catalog_price_and_waits_for_the_other_lines():
    state, emitted = apply(pending(), reserved("A"))
    assert emitted == []
    assert state.status == OrderStatus.PENDING
    assert state.outcome("A").status == LineStatus.RESERVED
    assert state.outcome("A").unit_price_cents == 500
    assert state.outcome("B").status == LineStatus.PENDING
    assert state.payment is None


def test_all_lines_reserved_requests_payment_for_the_total_of_the_reserved_prices():
    state, emitted = apply(pending(), reserved("A", price=499), reserved("B", price=1_000))
    [request] = emitted
    assert isinstance(request, AuthorizePayment)
    assert (request.amount_cents, request.currency, request.payment_token) == (2 * 499 + 1_000, "EUR", "tok_approve")
    assert request.key == "o-1"
    assert state.total_cents == 1_998
    assert state.payment is not None and state.payment.status == PaymentStatus.REQUESTED


def test_the_payment_request_is_caused_by_the_reservation_that_completed_the_order():
    last = reserved("B")
    _, emitted = apply(pending(), reserved("A"), last)
    assert [m.causation_id for m in emitted] == [last.event_id]
    assert emitted[0].occurred_at == last.occurred_at


def test_a_redelivered_completing_reservation_re_emits_the_same_payment_request():
    state, first = apply(pending(), reserved("A"), reserved("B"))
    again = order_decide(state, reserved("B"))
    assert again.state is None
    assert list(again.messages) == first


def test_a_redelivered_reservation_that_completed_nothing_re_emits_nothing():
    state, _ = apply(pending(), reserved("A"), reserved("B"))
    again = order_decide(state, reserved("A"))
    assert again == Decision(state=None)


def test_a_second_answer_for_a_line_under_another_event_id_changes_nothing():
    state = awaiting_payment()
    decision = order_decide(state, reserved("A", price=1, event_id="other"))
    assert decision == Decision(state=None)


def test_a_reservation_for_a_sku_not_in_the_order_is_ignored():
    decision = order_decide(pending(), make(StockReserved, order_id="o-1", sku="Z", quantity=1, unit_price_cents=1,
                                            currency="EUR"))
    assert decision == Decision(state=None)


def test_line_views_show_each_line_with_its_reserved_price_and_status():
    views = apply(pending(), reserved("A"))[0].line_views()
    assert [(v.sku, v.quantity, v.unit_price_cents, v.status) for v in views] == [
        ("A", 2, 500, LineStatus.RESERVED), ("B", 1, None, LineStatus.PENDING),
    ]


# --- rejections -----------------------------------------------------------------------------------------------

def test_an_out_of_stock_line_cancels_the_order_and_releases_every_reserved_line():
    state, emitted = apply(pending(), reserved("A"), rejected("B", available=0))
    assert state.status == OrderStatus.CANCELLED
    assert state.cancel_reason == CancelReason.OUT_OF_STOCK
    assert state.cancel_detail == "B: 1 requested, 0 available"
    assert kinds(emitted) == ["ReleaseStock", "OrderCancelled"]
    [release] = of_type(emitted, ReleaseStock)
    assert (release.sku, release.order_id, release.key, release.reason) == ("A", "o-1", "A", "out_of_stock")
    assert of_type(emitted, OrderCancelled)[0].reason == CancelReason.OUT_OF_STOCK


def test_an_unavailable_product_cancels_the_order_as_product_unavailable_with_the_detail():
    event = rejected("A", reason=StockRejection.PRODUCT_UNAVAILABLE).model_copy(update={"detail": "unknown sku A"})
    state, emitted = apply(pending(), event)
    assert (state.cancel_reason, state.cancel_detail) == (CancelReason.PRODUCT_UNAVAILABLE, "A: unknown sku A")
    assert kinds(emitted) == ["OrderCancelled"]  # nothing was reserved yet


def test_a_rejection_with_a_reason_the_orders_flow_does_not_know_cancels_as_product_unavailable():
    state, _ = apply(pending(), rejected("A", reason="recalled"))
    assert state.cancel_reason == CancelReason.PRODUCT_UNAVAILABLE


def test_a_second_rejection_after_cancellation_only_completes_the_picture():
    state, _ = apply(pending(), rejected("A"))
    state, emitted = apply(state, rejected("B"))
    assert emitted == []
    assert state.outcome("B").status == LineStatus.REJECTED
    assert state.cancel_reason == CancelReason.OUT_OF_STOCK


def test_stock_reserved_arriving_after_the_order_was_cancelled_is_released():
    state, _ = apply(pending(), rejected("A"))
    late = reserved("B")
    state, emitted = apply(state, late)
    [release] = emitted
    assert isinstance(release, ReleaseStock)
    assert (release.sku, release.causation_id, release.reason) == ("B", late.event_id, "out_of_stock")
    assert state.status == OrderStatus.CANCELLED
    assert state.payment is None  # a cancelled order never asks for money


def test_a_redelivered_late_reservation_re_emits_the_same_release():
    state, _ = apply(pending(), rejected("A"))
    state, first = apply(state, reserved("B"))
    again = order_decide(state, reserved("B"))
    assert again.state is None
    assert list(again.messages) == first


# --- payment --------------------------------------------------------------------------------------------------

def test_payment_authorized_confirms_commits_every_line_captures_and_announces():
    state, emitted = apply(awaiting_payment(), authorized())
    assert state.status == OrderStatus.CONFIRMED
    assert kinds(emitted) == ["CommitStock", "CommitStock", "CapturePayment", "OrderConfirmed"]
    assert [(c.sku, c.key) for c in of_type(emitted, CommitStock)] == [("A", "A"), ("B", "B")]
    [capture] = of_type(emitted, CapturePayment)
    assert (capture.authorization_id, capture.amount_cents) == ("auth-1", 2_250)
    assert state.payment is not None
    assert (state.payment.status, state.payment.authorization_id) == (PaymentStatus.AUTHORIZED, "auth-1")


def test_order_confirmed_carries_the_priced_lines_the_total_and_the_authorization():
    _, emitted = apply(awaiting_payment(), authorized())
    [event] = of_type(emitted, OrderConfirmed)
    assert [(line.sku, line.quantity, line.unit_price_cents) for line in event.lines] == [("A", 2, 500), ("B", 1, 1250)]
    assert (event.total_cents, event.currency, event.authorization_id) == (2_250, "EUR", "auth-1")


def test_a_redelivered_authorization_re_emits_the_confirmation_with_the_same_ids():
    state, first = apply(awaiting_payment(), authorized())
    again = order_decide(state, authorized())
    assert again.state is None
    assert list(again.messages) == first


def test_payment_declined_releases_every_reserved_line():
    state, emitted = apply(awaiting_payment(), declined())
    assert (state.status, state.cancel_reason, state.cancel_detail) == (
        OrderStatus.CANCELLED, CancelReason.PAYMENT_DECLINED, "card_declined",
    )
    assert sorted(r.sku for r in of_type(emitted, ReleaseStock)) == ["A", "B"]
    assert kinds(emitted)[-1] == "OrderCancelled"
    assert state.payment is not None and state.payment.status == PaymentStatus.DECLINED


def test_a_payment_authorized_after_the_timeout_is_voided():
    state, _ = apply(awaiting_payment(), expire())
    late = authorized()
    state, emitted = apply(state, late)
    [void] = emitted
    assert isinstance(void, VoidPayment)
    assert (void.authorization_id, void.causation_id, void.key) == ("auth-1", late.event_id, "o-1")
    assert state.status == OrderStatus.CANCELLED and state.cancel_reason == CancelReason.TIMEOUT
    assert state.payment is not None and state.payment.status == PaymentStatus.VOID_REQUESTED


def test_a_redelivered_late_authorization_re_emits_the_same_void():
    state, _ = apply(awaiting_payment(), expire())
    state, first = apply(state, authorized())
    assert list(order_decide(state, authorized()).messages) == first


def test_a_payment_authorized_after_a_customer_cancel_is_voided():
    state, _ = apply(awaiting_payment(), cancel())
    _, emitted = apply(state, authorized())
    assert kinds(emitted) == ["VoidPayment"]


def test_an_approval_after_the_decline_the_order_was_cancelled_on_is_voided_once():
    """The payments flow leaves such an approval to the orders flow (payments.py, _plan_void): I4 whichever of the
    two answers of a worker that lost its partition comes first."""
    state, _ = apply(awaiting_payment(), declined())
    late = authorized()
    state, emitted = apply(state, late)
    [void] = emitted
    assert isinstance(void, VoidPayment) and (void.authorization_id, void.causation_id) == ("auth-1", late.event_id)
    assert state.status == OrderStatus.CANCELLED and state.cancel_reason == CancelReason.PAYMENT_DECLINED
    assert state.payment is not None and state.payment.status == PaymentStatus.VOID_REQUESTED
    assert list(order_decide(state, late).messages) == emitted  # redelivered: the same void, nothing new


def test_a_payment_declined_after_the_timeout_only_records_the_decline():
    state, _ = apply(awaiting_payment(), expire())
    state, emitted = apply(state, declined())
    assert emitted == []
    assert state.cancel_reason == CancelReason.TIMEOUT
    assert state.payment is not None and state.payment.status == PaymentStatus.DECLINED


def test_payment_results_before_payment_was_requested_are_ignored():
    assert order_decide(pending(), authorized()) == Decision(state=None)
    assert order_decide(pending(), declined()) == Decision(state=None)


# --- timeout --------------------------------------------------------------------------------------------------

def test_expire_order_at_the_deadline_cancels_a_pending_order_as_timeout_and_releases_what_is_reserved():
    state, emitted = apply(apply(pending(), reserved("A"))[0], expire())
    assert (state.status, state.cancel_reason) == (OrderStatus.CANCELLED, CancelReason.TIMEOUT)
    assert kinds(emitted) == ["ReleaseStock", "OrderCancelled"]


def test_expire_order_before_the_deadline_changes_nothing():
    assert order_decide(pending(), expire(at=DEADLINE - 1)) == Decision(state=None)


@pytest.mark.parametrize("settled", [confirmed, shipped], ids=["confirmed", "shipped"])
def test_expire_order_on_a_settled_order_changes_nothing(settled):
    assert order_decide(settled(), expire()) == Decision(state=None)


def test_a_redelivered_expire_order_re_emits_the_same_cancellation():
    state, first = apply(apply(pending(), reserved("A"))[0], expire())
    again = order_decide(state, expire())
    assert again.state is None
    assert list(again.messages) == first


# --- customer cancel ------------------------------------------------------------------------------------------

def test_cancel_while_pending_releases_reserved_lines_and_cancels_with_the_requested_reason():
    state, emitted = apply(apply(pending(), reserved("A"))[0], cancel())
    assert (state.status, state.cancel_reason, state.cancel_detail) == (
        OrderStatus.CANCELLED, CancelReason.CUSTOMER_REQUEST, "requested by c-1",
    )
    assert kinds(emitted) == ["ReleaseStock", "OrderCancelled"]


def test_cancel_racing_a_reservation_releases_the_line_when_its_reservation_lands():
    state, _ = apply(apply(pending(), reserved("A"))[0], cancel())
    state, emitted = apply(state, reserved("B"))
    assert [(m.sku, type(m).__name__) for m in of_type(emitted, ReleaseStock)] == [("B", "ReleaseStock")]
    assert state.status == OrderStatus.CANCELLED


def test_cancel_while_payment_is_in_flight_voids_the_authorization_when_it_lands():
    state, _ = apply(awaiting_payment(), cancel())
    assert state.payment is not None and state.payment.status == PaymentStatus.REQUESTED
    _, emitted = apply(state, authorized())
    assert kinds(emitted) == ["VoidPayment"]


def test_cancel_of_a_confirmed_order_asks_shipping_to_stop_the_shipment_first():
    state, emitted = apply(confirmed(), shipment(ShipmentCreated), cancel(requested_by="c-1"))
    assert (state.status, state.cancel_reason) == (OrderStatus.CONFIRMED, None)
    [request] = of_type(emitted, OrderCancelRequested)
    assert (kinds(emitted), request.reason, request.detail) == (
        ["OrderCancelRequested"], CancelReason.CUSTOMER_REQUEST, "requested by c-1")
    assert state.payment is not None and state.payment.status == PaymentStatus.AUTHORIZED


def test_a_stopped_shipment_refunds_restocks_every_line_and_cancels_as_customer_request():
    state, _ = apply(confirmed(), shipment(ShipmentCreated), cancel())
    state, emitted = apply(state, stopped())
    assert (state.status, state.cancel_reason) == (OrderStatus.CANCELLED, CancelReason.CUSTOMER_REQUEST)
    assert kinds(emitted) == ["RefundPayment", "RestockItems", "RestockItems", "OrderCancelled"]
    assert state.shipment is not None and state.shipment.status == "cancelled"
    [refund] = of_type(emitted, RefundPayment)
    assert (refund.authorization_id, refund.amount_cents, refund.currency) == ("auth-1", 2_250, "EUR")
    assert [r.sku for r in of_type(emitted, RestockItems)] == ["A", "B"]
    assert state.payment is not None and state.payment.status == PaymentStatus.REFUND_REQUESTED


def test_cancel_after_dispatch_is_refused_with_a_clear_reason_noted_in_the_history():
    """A cancel that raced past the API's check (answered 202) says in the order why it did nothing."""
    state = shipped()
    decision = order_decide(state, cancel(event_id="late-click"))
    assert (decision.rejected, decision.messages) == (CANNOT_CANCEL_AFTER_DISPATCH, ())
    assert cancel_refusal(state.status) == CANNOT_CANCEL_AFTER_DISPATCH
    noted = decision.state
    assert noted is not None and noted.status == OrderStatus.SHIPPED
    assert noted.history[:-1] == state.history
    assert (noted.history[-1].event, noted.history[-1].detail, noted.history[-1].event_id) == (
        CANCEL_REFUSED, CANNOT_CANCEL_AFTER_DISPATCH, "late-click")
    again = order_decide(noted, cancel(event_id="late-click"))  # redelivered: nothing more
    assert (again.state, again.rejected, again.messages) == (None, None, ())


def test_cancel_after_delivery_is_refused():
    state, _ = apply(shipped(), shipment(ShipmentDelivered))
    assert order_decide(state, cancel()).rejected == CANNOT_CANCEL_AFTER_DISPATCH


@pytest.mark.parametrize("state", [pending, confirmed], ids=["pending", "confirmed"])
def test_cancel_refusal_lets_the_api_accept_a_cancel_before_dispatch(state):
    assert cancel_refusal(state().status) is None


def test_a_second_cancel_while_shipping_has_not_answered_asks_again_with_the_same_request():
    state, first = apply(confirmed(), cancel())
    again = order_decide(state, cancel(event_id="second-click"))
    assert (again.state, list(again.messages)) == (None, first)  # same event id: shipping's answer is the same


def test_a_dispatch_that_won_the_race_against_the_cancel_ships_the_order_and_refunds_nothing():
    state, _ = apply(confirmed(), shipment(ShipmentCreated), cancel())
    state, emitted = apply(state, shipment(ShipmentDispatched))
    assert (state.status, kinds(emitted)) == (OrderStatus.SHIPPED, ["OrderShipped"])
    assert [h.event for h in state.history[-3:]] == ["OrderCancelRequested", "ShipmentDispatched", "OrderShipped"]
    assert order_decide(state, cancel(event_id="later-click")).rejected == CANNOT_CANCEL_AFTER_DISPATCH


def test_a_shipment_stopped_for_an_order_that_asked_nothing_is_only_noted():
    state, emitted = apply(confirmed(), shipment(ShipmentCreated), stopped())
    assert (state.status, emitted) == (OrderStatus.CONFIRMED, [])
    assert state.shipment is not None and state.shipment.status == "cancelled"
    assert order_decide(state, stopped(event_id="again")) == Decision(state=None)


def test_cancel_of_a_cancelled_order_changes_nothing():
    state, _ = apply(pending(), cancel())
    assert order_decide(state, cancel(event_id="second-click")) == Decision(state=None)


def test_an_admin_cancel_records_the_admins_reason():
    state, _ = apply(pending(), cancel(requested_by="admin-1", reason="fraud_suspected"))
    assert (state.cancel_reason, state.cancel_detail) == ("fraud_suspected", "requested by admin-1")


# --- shipping -------------------------------------------------------------------------------------------------

def test_shipment_created_records_the_tracking_id_and_carrier_without_changing_status():
    state, emitted = apply(confirmed(), shipment(ShipmentCreated))
    assert emitted == []
    assert state.status == OrderStatus.CONFIRMED
    assert state.shipment is not None
    assert (state.shipment.tracking_id, state.shipment.carrier, state.shipment.status) == ("trk-1", "post", "created")


def test_a_dispatched_shipment_ships_the_confirmed_order():
    state, emitted = apply(confirmed(), shipment(ShipmentCreated), shipment(ShipmentDispatched))
    assert state.status == OrderStatus.SHIPPED
    [event] = emitted
    assert isinstance(event, OrderShipped) and event.tracking_id == "trk-1"
    assert state.shipment is not None and state.shipment.carrier == "post"  # the dispatch named no other


def test_a_dispatch_naming_its_carrier_shows_that_carrier_on_the_order():
    state, _ = apply(confirmed(), shipment(ShipmentCreated), shipment(ShipmentDispatched, carrier="dhl"))
    assert state.shipment is not None and state.shipment.carrier == "dhl"
    state, _ = apply(state, shipment(ShipmentDelivered))
    assert state.shipment is not None and state.shipment.carrier == "dhl"


def test_a_delivered_shipment_delivers_the_shipped_order():
    state, emitted = apply(shipped(), shipment(ShipmentDelivered))
    assert state.status == OrderStatus.DELIVERED
    assert kinds(emitted) == ["OrderDelivered"]
    assert state.shipment is not None and state.shipment.carrier == "post"


def test_a_delivery_that_overtook_its_dispatch_ships_and_delivers_the_order():
    state, emitted = apply(confirmed(), shipment(ShipmentDelivered))
    assert state.status == OrderStatus.DELIVERED
    assert kinds(emitted) == ["OrderShipped", "OrderDelivered"]
    state, emitted = apply(state, shipment(ShipmentDispatched))
    assert (state.status, emitted) == (OrderStatus.DELIVERED, [])


def test_a_shipment_created_arriving_after_the_dispatch_does_not_move_the_shipment_back():
    state, _ = apply(confirmed(), shipment(ShipmentDispatched), shipment(ShipmentCreated))
    assert state.shipment is not None and state.shipment.status == "dispatched"
    assert state.status == OrderStatus.SHIPPED


def test_a_dispatch_reaching_a_refunded_order_does_not_take_it_out_of_cancelled():
    state, emitted = apply(refunded(), shipment(ShipmentDispatched))
    assert (state.status, emitted) == (OrderStatus.CANCELLED, [])
    assert state.history[-1].event == "ShipmentDispatched"  # visible, for a person to sort out


def test_a_redelivered_dispatch_re_emits_the_same_order_shipped():
    state, _ = apply(confirmed(), shipment(ShipmentCreated))
    state, first = apply(state, shipment(ShipmentDispatched))
    assert list(order_decide(state, shipment(ShipmentDispatched)).messages) == first


# --- settlement events ----------------------------------------------------------------------------------------

def test_stock_and_payment_settlements_update_the_lines_and_the_payment():
    state, emitted = apply(
        confirmed(),
        make(StockCommitted, order_id="o-1", sku="A", quantity=2),
        make(PaymentCaptured, order_id="o-1", amount_cents=2_250, currency="EUR", authorization_id="auth-1"),
    )
    assert emitted == []
    assert state.outcome("A").status == LineStatus.COMMITTED
    assert state.payment is not None and state.payment.status == PaymentStatus.CAPTURED


def test_a_refund_and_restock_are_recorded_when_they_land():
    state, _ = apply(
        refunded(),
        make(StockRestocked, order_id="o-1", sku="B", quantity=1),
        make(PaymentRefunded, order_id="o-1", amount_cents=2_250, currency="EUR", authorization_id="auth-1"),
    )
    assert state.outcome("B").status == LineStatus.RESTOCKED
    assert state.payment is not None and state.payment.status == PaymentStatus.REFUNDED


def test_a_capture_landing_after_the_refund_was_requested_does_not_hide_the_refund():
    state, _ = apply(refunded(), make(PaymentCaptured, order_id="o-1", amount_cents=2_250, currency="EUR",
                                 authorization_id="auth-1"))
    assert state.payment is not None and state.payment.status == PaymentStatus.REFUND_REQUESTED


def test_a_void_and_a_release_are_recorded_on_a_cancelled_order():
    state, _ = apply(awaiting_payment(), expire())
    state, _ = apply(
        state, authorized(),
        make(PaymentVoided, order_id="o-1", amount_cents=2_250, currency="EUR", authorization_id="auth-1"),
        make(StockReleased, order_id="o-1", sku="A", quantity=2),
    )
    assert state.payment is not None and state.payment.status == PaymentStatus.VOIDED
    assert state.outcome("A").status == LineStatus.RELEASED


# --- history, errors, persistence -----------------------------------------------------------------------------

def test_the_history_lists_what_happened_with_event_times():
    state, _ = apply(pending(), reserved("A", at=1_100), reserved("B", at=1_200), authorized(at=1_300))
    assert [(h.event, h.at, h.detail) for h in state.history] == [
        ("OrderPlaced", PLACED_AT, None),
        ("StockReserved", 1_100, "A"),
        ("StockReserved", 1_200, "B"),
        ("PaymentAuthorized", 1_300, None),
        ("OrderConfirmed", 1_300, None),
    ]
    assert len({h.event_id for h in state.history}) == len(state.history)


def test_each_step_of_the_history_keeps_when_the_message_that_made_it_was_recorded():
    placed = decide(None, place(), saga_timeout_ms=TIMEOUT_MS, recorded_at=1_003).state
    assert placed is not None
    state = placed
    for message, recorded_at in ((reserved("A"), 1_040), (reserved("B"), 1_052), (authorized(), 1_120)):
        decision = decide(state, message, saga_timeout_ms=TIMEOUT_MS, recorded_at=recorded_at)
        assert decision.state is not None
        state = decision.state
    assert [(h.event, h.recorded_at) for h in state.history] == [
        ("OrderPlaced", 1_003),
        ("StockReserved", 1_040),
        ("StockReserved", 1_052),
        ("PaymentAuthorized", 1_120),
        ("OrderConfirmed", 1_120),  # decided as the authorization was applied
    ]
    again = decide(state, authorized(), saga_timeout_ms=TIMEOUT_MS, recorded_at=1_120)  # a redelivery
    assert again.state is None


def test_a_message_for_an_unknown_order_is_rejected():
    assert order_decide(None, reserved("A")).rejected == "unknown order o-1"


def test_a_message_the_orders_flow_does_not_handle_is_rejected():
    decision = order_decide(pending(), make(AdjustStock, sku="A", delta=1, reason="count"))
    assert decision.rejected == "orders does not handle AdjustStock"


def test_the_order_survives_the_json_round_trip_its_table_makes():
    state = apply(shipped(), shipment(ShipmentDelivered))[0]
    assert OrderState.model_validate_json(state.model_dump_json()) == state
    assert OrderState.model_validate(state.model_dump(mode="json")) == state


# --- every applied message, redelivered at any later point, changes nothing -----------------------------------

JOURNEYS = {
    "delivered": lambda: [place(), reserved("A"), reserved("B"), authorized(), shipment(ShipmentCreated),
                          shipment(ShipmentDispatched), shipment(ShipmentDelivered)],
    "refunded": lambda: [place(), reserved("A"), reserved("B"), authorized(), shipment(ShipmentCreated), cancel(),
                         stopped()],
    "cancel lost to the dispatch": lambda: [place(), reserved("A"), reserved("B"), authorized(), cancel(),
                                            shipment(ShipmentDispatched)],
    "timed out with late answers": lambda: [place(), reserved("A"), expire(), reserved("B"), authorized()],
    "declined": lambda: [place(), reserved("B"), reserved("A"), declined()],
    "rejected": lambda: [place(), reserved("A"), rejected("B")],
}


@pytest.mark.parametrize("journey", JOURNEYS)
def test_every_applied_message_redelivered_later_changes_nothing_and_re_emits_its_first_messages(journey):
    state: OrderState | None = None
    first: dict[str, tuple[Message, ...]] = {}
    for message in JOURNEYS[journey]():
        decision = order_decide(state, message)
        state = decision.state or state
        first[message.event_id] = decision.messages
    assert state is not None
    for message in JOURNEYS[journey]():
        again = order_decide(state, message)
        assert again.state is None and again.rejected is None
        assert again.messages == first[message.event_id]


# --- I1 under any order of arrival ----------------------------------------------------------------------------

ALLOWED_MOVES = {
    OrderStatus.PENDING: OrderStatus.SETTLED | {OrderStatus.PENDING},
    OrderStatus.CONFIRMED: {OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.DELIVERED, OrderStatus.CANCELLED},
    OrderStatus.SHIPPED: {OrderStatus.SHIPPED, OrderStatus.DELIVERED},
    OrderStatus.DELIVERED: {OrderStatus.DELIVERED},
    OrderStatus.CANCELLED: {OrderStatus.CANCELLED},
}


def _storm(rng: random.Random) -> list[Message]:
    """Every answer an order can get, mostly favourable, some optional, some twice, in a random order."""
    a = reserved("A") if rng.random() < 0.85 else rejected("A")
    b = reserved("B") if rng.random() < 0.85 else rejected("B", reason=StockRejection.PRODUCT_UNAVAILABLE)
    pay = authorized() if rng.random() < 0.8 else declined()
    optional = [expire(), cancel(), stopped(), shipment(ShipmentCreated), shipment(ShipmentDispatched),
                shipment(ShipmentDelivered), make(PaymentCaptured, order_id="o-1", amount_cents=2_250, currency="EUR",
                                                  authorization_id="auth-1")]
    messages = [a, b, pay, *(m for m in optional if rng.random() < 0.35)]
    messages += rng.choices(messages, k=rng.randint(0, 4))  # duplicates
    rng.shuffle(messages)
    return messages


@pytest.mark.parametrize("seed", range(300))
def test_an_order_reaches_one_outcome_and_never_leaves_it_whatever_the_order_of_arrival(seed):
    rng = random.Random(seed)
    state, emitted = apply(None, place())
    seen_outcome: str | None = None
    for message in _storm(rng):
        decision = order_decide(state, message)
        emitted.extend(decision.messages)
        if decision.rejected is not None:
            assert decision.rejected == CANNOT_CANCEL_AFTER_DISPATCH and isinstance(message, CancelOrder)
            assert decision.messages == () and decision.state is not None  # noted in the history, as stored
            assert decision.state.status == state.status and decision.state.history[-1].event == CANCEL_REFUSED
            state = decision.state
            continue
        new = decision.state or state
        assert new.status in ALLOWED_MOVES[state.status], (state.status, new.status, type(message).__name__)
        if new.status == OrderStatus.CANCELLED:
            assert new.cancel_reason is not None
        if state.status == OrderStatus.PENDING and new.status != OrderStatus.PENDING:
            assert seen_outcome is None
            seen_outcome = new.status
        state = new
    # Announced exactly once: one OrderConfirmed at most, one OrderCancelled at most.
    announced = [h.event for h in state.history if h.event in ("OrderConfirmed", "OrderCancelled")]
    assert len(announced) == len(set(announced))
    if state.status != OrderStatus.CANCELLED:
        return
    # A cancelled order gives back everything it got: money (I4) and every reserved line (I2).
    if state.payment is not None and state.payment.authorization_id is not None:
        assert of_type(emitted, VoidPayment if state.confirmed is None else RefundPayment)
    reserved_skus = {o for o, outcome in state.outcomes.items() if outcome.status != LineStatus.REJECTED
                     and outcome.status != LineStatus.PENDING}
    given_back = {m.sku for m in of_type(emitted, ReleaseStock)} | {m.sku for m in of_type(emitted, RestockItems)}
    assert reserved_skus <= given_back


# --- answers that come after the deadline (the flows were down, or far behind) --------------------------------

def late_decide(state: OrderState | None, message: Message, recorded_at: int) -> Decision[OrderState]:
    return decide(state, message, saga_timeout_ms=TIMEOUT_MS, recorded_at=recorded_at)


def test_an_authorization_recorded_after_the_deadline_expires_the_order_and_is_voided():
    """Workers down past an order's deadline: its PaymentAuthorized, written after the deadline, reaches the
    orders flow before the ExpireOrder behind it. The order must be CANCELLED(timeout), the money voided."""
    decision = late_decide(awaiting_payment(), authorized(), DEADLINE + 120_000)
    assert decision.state is not None
    assert (decision.state.status, decision.state.cancel_reason) == (OrderStatus.CANCELLED, CancelReason.TIMEOUT)
    assert "VoidPayment" in kinds(decision.messages) and "OrderConfirmed" not in kinds(decision.messages)
    assert "ReleaseStock" in kinds(decision.messages)
    again = late_decide(decision.state, authorized(), DEADLINE + 120_000)
    assert list(again.messages) == list(decision.messages)  # a redelivery: the same messages


def test_a_reservation_recorded_after_the_deadline_expires_the_order_without_asking_for_payment():
    state, _ = apply(pending(), reserved("A"))
    decision = late_decide(state, reserved("B"), DEADLINE + 1)
    assert decision.state is not None and decision.state.cancel_reason == CancelReason.TIMEOUT
    assert "AuthorizePayment" not in kinds(decision.messages)
    assert sorted(m.sku for m in of_type(decision.messages, ReleaseStock)) == ["A", "B"]


def test_an_authorization_recorded_before_the_deadline_confirms():
    decision = late_decide(awaiting_payment(), authorized(), DEADLINE - 1)
    assert decision.state is not None and decision.state.status == OrderStatus.CONFIRMED


def test_a_rejection_or_a_decline_recorded_after_the_deadline_cancels_as_timed_out():
    """Workers down past the deadline: a StockRejected written 60 s after it cancelled the order as out_of_stock,
    though the order had timed out before anything was answered."""
    decision = late_decide(pending(), rejected("A"), DEADLINE + 60_000)
    assert decision.state is not None
    assert (decision.state.status, decision.state.cancel_reason) == (OrderStatus.CANCELLED, CancelReason.TIMEOUT)
    assert decision.state.outcome("A").status == LineStatus.REJECTED  # the answer still completes the picture
    decision = late_decide(awaiting_payment(), declined(), DEADLINE)
    assert decision.state is not None and decision.state.cancel_reason == CancelReason.TIMEOUT
    assert late_decide(awaiting_payment(), declined(), DEADLINE - 1).state.cancel_reason == (
        CancelReason.PAYMENT_DECLINED)
