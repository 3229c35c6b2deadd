import pytest
from domain_builders import kinds, make, run

from schemas.messages import (
    AdjustStock,
    Message,
    OrderCancelled,
    OrderCancelRequested,
    OrderConfirmed,
    OrderPlaced,
    PricedLine,
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentDelivered,
    ShipmentDispatched,
    UpdateShipment,
)
from streamcart.domain.decision import Decision
from streamcart.domain.shipping import (
    DEFAULT_CARRIER,
    SHIPMENT_CANCELLED,
    UNKNOWN_SHIPMENT,
    ShipmentState,
    ShipmentStatus,
    decide,
    tracking_id,
)


def confirmed(order_id: str = "o-1", **kw) -> OrderConfirmed:
    return make(OrderConfirmed, order_id=order_id, customer_id="c-1",
                lines=(PricedLine(sku="A", quantity=1, unit_price_cents=500),), total_cents=500, currency="EUR",
                authorization_id="auth-1", **kw)


def update(status: str, **kw) -> UpdateShipment:
    return make(UpdateShipment, order_id="o-1", status=status, **kw)


def cancelled() -> OrderCancelled:
    return make(OrderCancelled, order_id="o-1", customer_id="c-1", reason="customer_request")


def cancel_requested(**kw) -> OrderCancelRequested:
    return make(OrderCancelRequested, order_id="o-1", customer_id="c-1", reason="customer_request", **kw)


def apply(state: ShipmentState | None, *messages: Message) -> tuple[ShipmentState, list[Message]]:
    return run(decide, state, *messages)


def created() -> ShipmentState:
    return apply(None, confirmed())[0]


def dispatched() -> ShipmentState:
    return apply(created(), update("dispatched"))[0]


def test_a_confirmed_order_gets_a_shipment_with_a_deterministic_tracking_id():
    cause = confirmed()
    state, emitted = apply(None, cause)
    [event] = emitted
    assert isinstance(event, ShipmentCreated)
    assert (event.order_id, event.tracking_id, event.carrier, event.key) == ("o-1", tracking_id("o-1"),
                                                                               DEFAULT_CARRIER, "o-1")
    assert (event.causation_id, event.correlation_id) == (cause.event_id, "o-1")
    assert state.status == ShipmentStatus.CREATED


def test_tracking_ids_are_the_same_for_the_same_order_and_differ_between_orders():
    assert tracking_id("o-1") == tracking_id("o-1")
    assert tracking_id("o-1") != tracking_id("o-2")
    assert tracking_id("o-1").startswith("trk_")


def test_the_carrier_can_be_chosen_by_the_caller():
    [event] = decide(None, confirmed(), carrier="dhl").messages
    assert isinstance(event, ShipmentCreated) and event.carrier == "dhl"


def test_a_redelivered_order_confirmed_re_emits_the_same_shipment_created():
    state, first = apply(None, confirmed())
    again = decide(state, confirmed(event_id="another"))
    assert again.state is None and list(again.messages) == first


def test_dispatching_emits_shipment_dispatched_with_the_tracking_id():
    state, emitted = apply(created(), update("dispatched", carrier="dhl"))
    [event] = emitted
    assert isinstance(event, ShipmentDispatched) and event.tracking_id == tracking_id("o-1")
    assert (state.status, state.dispatch_carrier, state.carrier) == (ShipmentStatus.DISPATCHED, "dhl", DEFAULT_CARRIER)
    assert event.carrier == "dhl"  # the carrier the admin named travels with the dispatch (the order, the warehouse)


def test_a_dispatch_naming_no_carrier_says_none_and_a_delivery_before_dispatch_carries_its_carrier():
    [event] = apply(created(), update("dispatched"))[1]
    assert isinstance(event, ShipmentDispatched) and event.carrier is None
    dispatched_event, delivered_event = apply(created(), update("delivered", carrier="ups"))[1]
    assert isinstance(dispatched_event, ShipmentDispatched) and dispatched_event.carrier == "ups"
    assert isinstance(delivered_event, ShipmentDelivered)


def test_delivering_a_dispatched_shipment_emits_shipment_delivered():
    state, emitted = apply(dispatched(), update("delivered"))
    assert kinds(emitted) == ["ShipmentDelivered"]
    assert state.status == ShipmentStatus.DELIVERED


@pytest.mark.parametrize("status", ["dispatched", "delivered"])
def test_a_repeated_status_update_re_emits_the_same_event_whatever_its_event_id(status):
    state, first = apply(created(), update("dispatched"))
    if status == "delivered":
        state, first = apply(state, update("delivered"))
    for repeat in (update(status), update(status, event_id="again")):
        again = decide(state, repeat)
        assert again.state is None and list(again.messages) == first


def test_a_dispatch_update_after_delivery_re_emits_the_dispatch():
    state, emitted = apply(created(), update("dispatched"), update("delivered"))
    again = decide(state, update("dispatched", event_id="late"))
    assert list(again.messages) == emitted[:1]


def test_a_delivery_before_any_dispatch_dispatches_and_delivers_at_once():
    state, emitted = apply(created(), update("delivered"))
    assert (state.status, kinds(emitted)) == (ShipmentStatus.DELIVERED, ["ShipmentDispatched", "ShipmentDelivered"])
    assert len({m.event_id for m in emitted}) == 2
    assert list(decide(state, update("delivered", event_id="again")).messages) == emitted  # a repeat: the same
    # A dispatch arriving late: what dispatched it is that delivery, which it re-emits whole (ids unchanged).
    assert list(decide(state, update("dispatched", event_id="late")).messages) == emitted


def test_an_update_for_an_order_without_a_shipment_is_refused():
    assert decide(None, update("dispatched")) == Decision(state=None, rejected=UNKNOWN_SHIPMENT)


def test_an_unknown_status_is_refused():
    assert decide(created(), update("lost")).rejected == "unknown shipment status 'lost' (dispatched | delivered)"


@pytest.mark.parametrize("cancel", [cancel_requested, cancelled], ids=["cancel requested", "order cancelled"])
def test_a_cancel_stops_a_shipment_that_has_not_left_so_it_cannot_be_dispatched(cancel):
    state, emitted = apply(created(), cancel())
    [event] = emitted
    assert isinstance(event, ShipmentCancelled)
    assert (state.status, event.order_id, event.tracking_id) == (ShipmentStatus.CANCELLED, "o-1", tracking_id("o-1"))
    assert decide(state, update("dispatched")).rejected == SHIPMENT_CANCELLED


@pytest.mark.parametrize("cancel", [cancel_requested, cancelled], ids=["cancel requested", "order cancelled"])
def test_a_cancel_reaching_a_dispatched_shipment_changes_nothing_the_dispatch_wins(cancel):
    assert decide(dispatched(), cancel()) == Decision(state=None)


def test_a_redelivered_cancel_request_re_emits_the_same_shipment_cancelled():
    request = cancel_requested()
    state, first = apply(created(), request)
    assert list(decide(state, request).messages) == first
    assert decide(state, cancel_requested(event_id="another")) == Decision(state=None)


def test_a_cancel_request_without_a_shipment_is_answered_and_a_confirmation_replayed_later_creates_none():
    request = cancel_requested()
    state, emitted = apply(None, request)
    [event] = emitted
    assert isinstance(event, ShipmentCancelled) and state.status == ShipmentStatus.CANCELLED
    assert list(decide(state, request).messages) == emitted  # a redelivery: the same event id
    assert decide(state, confirmed()) == Decision(state=None)  # e.g. replayed from the DLQ: no shipment appears
    assert decide(state, update("dispatched")).rejected == SHIPMENT_CANCELLED


def test_a_cancellation_of_an_order_never_confirmed_creates_no_shipment():
    assert decide(None, cancelled()) == Decision(state=None)


def test_other_order_events_are_not_about_shipping():
    placed = make(OrderPlaced, order_id="o-1", customer_id="c-1", lines=(), currency="EUR", deadline=1)
    assert decide(created(), placed) == Decision(state=None)


def test_shipping_rejects_what_it_does_not_handle():
    assert decide(None, make(AdjustStock, sku="A", delta=1, reason="x")).rejected is not None


def test_a_redelivered_order_confirmed_after_dispatch_re_emits_only_the_creation():
    state, emitted = apply(None, confirmed(), update("dispatched"))
    assert kinds(emitted) == ["ShipmentCreated", "ShipmentDispatched"]
    assert list(decide(state, confirmed()).messages) == emitted[:1]


def test_the_shipment_survives_the_json_round_trip_its_table_makes():
    state = apply(dispatched(), update("delivered"))[0]
    assert ShipmentState.model_validate_json(state.model_dump_json()) == state
