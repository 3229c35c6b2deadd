import pytest
from domain_builders import kinds, make

from schemas.messages import (
    AuthorizePayment,
    CapturePayment,
    Message,
    PaymentAuthorized,
    PaymentDeclined,
    PaymentRefunded,
    PaymentVoided,
    RefundPayment,
    ReleaseStock,
    VoidPayment,
)
from streamcart.domain.decision import Decision
from streamcart.domain.payments import (
    AUTHORIZATION_CAPTURED,
    CANCELLED_BEFORE_AUTHORIZATION,
    GATEWAY_UNAVAILABLE,
    NOTHING_HELD,
    GatewayCall,
    GatewayResult,
    PaymentState,
    PaymentStatus,
    apply_result,
    plan,
)

APPROVED = GatewayResult.approved("auth-1")


def authorize(**kw) -> AuthorizePayment:
    return make(AuthorizePayment, order_id="o-1", customer_id="c-1", amount_cents=2_250, currency="EUR",
                payment_token="tok_approve", **kw)


def capture(**kw) -> CapturePayment:
    return make(CapturePayment, order_id="o-1", authorization_id="auth-1", amount_cents=2_250, currency="EUR", **kw)


def void(**kw) -> VoidPayment:
    return make(VoidPayment, order_id="o-1", authorization_id="auth-1", reason="timeout", **kw)


def refund(**kw) -> RefundPayment:
    return make(RefundPayment, order_id="o-1", authorization_id="auth-1", amount_cents=2_250, currency="EUR",
                reason="customer_request", **kw)


def through_gateway(state: PaymentState | None, command: Message, result: GatewayResult = APPROVED):
    """Plan, 'call' the gateway with ``result``, apply it; the call must have been needed."""
    call = plan(state, command)
    assert isinstance(call, GatewayCall), call
    decision = apply_result(state, command, result)  # type: ignore[arg-type]
    assert decision.rejected is None, decision.rejected
    assert decision.state is not None
    return decision.state, list(decision.messages), call


def authorized() -> PaymentState:
    return through_gateway(None, authorize())[0]


def captured() -> PaymentState:
    return through_gateway(authorized(), capture())[0]


# --- authorize ------------------------------------------------------------------------------------------------

def test_authorizing_asks_the_gateway_with_the_order_id_as_idempotency_key():
    call = plan(None, authorize())
    assert call == GatewayCall(operation="authorize", idempotency_key="o-1", amount_cents=2_250, currency="EUR",
                               payment_token="tok_approve")


def test_an_approved_authorization_emits_payment_authorized_with_the_gateways_authorization_id():
    cmd = authorize()
    state, emitted, _ = through_gateway(None, cmd)
    [event] = emitted
    assert isinstance(event, PaymentAuthorized)
    assert (event.authorization_id, event.amount_cents, event.currency, event.key) == ("auth-1", 2_250, "EUR", "o-1")
    assert (event.causation_id, event.correlation_id) == (cmd.event_id, "o-1")
    assert state.status == PaymentStatus.AUTHORIZED


def test_a_declined_authorization_emits_payment_declined_with_the_gateways_reason():
    state, emitted, _ = through_gateway(None, authorize(), GatewayResult.declined("insufficient_funds"))
    [event] = emitted
    assert isinstance(event, PaymentDeclined) and event.reason == "insufficient_funds"
    assert state.status == PaymentStatus.DECLINED


def test_authorize_payment_twice_authorizes_once_and_re_emits_the_same_event():
    state, first, _ = through_gateway(None, authorize())
    for repeat in (authorize(), authorize(event_id="retry")):
        again = plan(state, repeat)
        assert isinstance(again, Decision)
        assert again.state is None and list(again.messages) == first


def test_a_gateway_answer_for_a_step_that_happened_meanwhile_is_ignored():
    state = authorized()
    decision = apply_result(state, authorize(event_id="retry"), GatewayResult.approved("auth-other"))
    assert decision.state is None
    assert decision.messages[0].authorization_id == "auth-1"  # type: ignore[attr-defined]


def test_an_authorization_with_no_answer_is_declined_and_voided_by_its_idempotency_key():
    cmd = authorize()
    state, emitted, _ = through_gateway(None, cmd, GatewayResult.unavailable())
    assert kinds(emitted) == ["PaymentDeclined", "VoidPayment"]
    declined, void_cmd = emitted
    assert isinstance(declined, PaymentDeclined) and declined.reason == GATEWAY_UNAVAILABLE
    assert isinstance(void_cmd, VoidPayment) and void_cmd.authorization_id is None and void_cmd.key == "o-1"
    assert state.status == PaymentStatus.UNKNOWN
    call = plan(state, void_cmd)
    assert call == GatewayCall(operation="void", idempotency_key="o-1", amount_cents=2_250, currency="EUR",
                               payment_token="tok_approve", authorization_id=None)


def test_the_void_by_key_of_an_authorization_that_was_approved_after_all_reports_it_voided():
    state, (_, void_cmd), _ = through_gateway(None, authorize(), GatewayResult.unavailable())
    state, emitted, _ = through_gateway(state, void_cmd, GatewayResult.approved("auth-late"))
    [event] = emitted
    assert isinstance(event, PaymentVoided) and event.authorization_id == "auth-late"
    assert state.status == PaymentStatus.VOIDED


def test_the_void_for_an_unknown_authorization_leaves_one_with_an_answer_to_the_orders_flow():
    """Only a worker writing on after it lost the partition could have both answers on record; the order may be
    confirmed on the approval, and the orders flow voids an approval it does not want, one after the decline too
    (test_orders.py: I4 whichever answer comes first)."""
    _, (_, void_cmd), _ = through_gateway(None, authorize(), GatewayResult.unavailable())
    assert plan(authorized(), void_cmd) == Decision(state=None)
    assert plan(captured(), void_cmd) == Decision(state=None)  # not dead-lettered with "refund it"
    assert isinstance(plan(authorized(), void()), GatewayCall)  # the orders flow's void of it still goes


@pytest.mark.parametrize("held", NOTHING_HELD.values())
def test_the_void_by_key_of_an_authorization_that_held_nothing_settles_quietly(held):
    state, (_, void_cmd), _ = through_gateway(None, authorize(), GatewayResult.unavailable())
    state, emitted, _ = through_gateway(state, void_cmd, GatewayResult.declined(held))
    assert emitted == []
    assert state.status == PaymentStatus.VOIDED
    assert plan(state, void_cmd) == Decision(state=None)


@pytest.mark.parametrize("refusal", ["not_found", "idempotency_conflict", "invalid_state", "http_401"])
def test_a_void_by_key_the_gateway_refuses_is_for_a_person_never_settled_as_nothing_held(refusal):
    """The lookup or the void refused says nothing of whether money is held: it may be (an approval the client
    never saw); settling it as voided would leave it held, and retention would forget it."""
    state, (_, void_cmd), _ = through_gateway(None, authorize(), GatewayResult.unavailable())
    decision = apply_result(state, void_cmd, GatewayResult.declined(refusal))
    assert decision.state is None and decision.messages == ()
    assert decision.rejected is not None and refusal in decision.rejected


def test_the_void_by_key_of_an_authorization_found_captured_is_refused_for_a_person_not_settled_as_nothing():
    state, (_, void_cmd), _ = through_gateway(None, authorize(), GatewayResult.unavailable())
    decision = apply_result(state, void_cmd, GatewayResult.declined(AUTHORIZATION_CAPTURED))
    assert decision.state is None and decision.messages == ()
    assert decision.rejected is not None and "captured" in decision.rejected


# --- capture --------------------------------------------------------------------------------------------------

def test_capturing_an_authorized_payment_calls_the_gateway_with_the_authorization():
    call = plan(authorized(), capture())
    assert isinstance(call, GatewayCall)
    assert (call.operation, call.authorization_id, call.amount_cents) == ("capture", "auth-1", 2_250)
    state, emitted, _ = through_gateway(authorized(), capture())
    assert kinds(emitted) == ["PaymentCaptured"]
    assert state.status == PaymentStatus.CAPTURED


def test_a_redelivered_capture_re_emits_the_same_event_without_calling_the_gateway():
    state, first, _ = through_gateway(authorized(), capture())
    again = plan(state, capture(event_id="again"))
    assert isinstance(again, Decision) and list(again.messages) == first


def test_capturing_a_declined_payment_is_refused():
    state, _, _ = through_gateway(None, authorize(), GatewayResult.declined("card_declined"))
    assert plan(state, capture()).rejected == "cannot capture o-1: payment is declined"  # type: ignore[union-attr]


def test_capturing_after_the_money_went_back_does_nothing():
    state, _, _ = through_gateway(authorized(), void())
    assert plan(state, capture()) == Decision(state=None)


def test_a_capture_the_gateway_cannot_do_now_is_rejected_so_it_can_be_retried():
    decision = apply_result(authorized(), capture(), GatewayResult.unavailable())
    assert decision.state is None and decision.messages == ()
    assert decision.rejected == "payment gateway unavailable: capture of o-1 not done (gateway_unavailable)"


def test_a_capture_the_gateway_refuses_is_rejected_with_its_reason():
    decision = apply_result(authorized(), capture(), GatewayResult.declined("invalid_state"))
    assert decision.rejected == "payment gateway refused to capture o-1: invalid_state"


# --- void -----------------------------------------------------------------------------------------------------

def test_voiding_an_authorized_payment_emits_payment_voided():
    state, emitted, call = through_gateway(authorized(), void())
    assert (call.operation, call.authorization_id) == ("void", "auth-1")
    [event] = emitted
    assert isinstance(event, PaymentVoided) and (event.authorization_id, event.amount_cents) == ("auth-1", 2_250)
    assert state.status == PaymentStatus.VOIDED


def test_a_redelivered_void_re_emits_the_same_event():
    state, first, _ = through_gateway(authorized(), void())
    again = plan(state, void(event_id="again"))
    assert isinstance(again, Decision) and list(again.messages) == first


def test_voiding_a_never_authorized_payment_records_a_tombstone_and_emits_nothing():
    decision = plan(None, void())
    assert isinstance(decision, Decision)
    assert decision.messages == ()
    assert decision.state is not None and decision.state.status == PaymentStatus.VOIDED


def test_an_authorization_arriving_after_its_void_is_declined_without_calling_the_gateway():
    tombstone = plan(None, void()).state  # type: ignore[union-attr]
    decision = plan(tombstone, authorize())
    assert isinstance(decision, Decision)
    [event] = decision.messages
    assert isinstance(event, PaymentDeclined) and event.reason == CANCELLED_BEFORE_AUTHORIZATION
    again = plan(decision.state, authorize())
    assert isinstance(again, Decision) and again.messages == decision.messages


def test_voiding_a_declined_payment_does_nothing():
    state, _, _ = through_gateway(None, authorize(), GatewayResult.declined("card_declined"))
    assert plan(state, void()) == Decision(state=None)


def test_voiding_a_captured_payment_is_refused():
    assert plan(captured(), void()).rejected == "cannot void o-1: it is captured (refund it)"  # type: ignore[union-attr]


# --- refund ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("paid", [authorized, captured], ids=["authorized", "captured"])
def test_refunding_a_paid_order_emits_payment_refunded(paid):
    state, emitted, call = through_gateway(paid(), refund())
    assert (call.operation, call.authorization_id) == ("refund", "auth-1")
    [event] = emitted
    assert isinstance(event, PaymentRefunded) and event.amount_cents == 2_250
    assert state.status == PaymentStatus.REFUNDED


def test_a_redelivered_refund_re_emits_the_same_event():
    state, first, _ = through_gateway(captured(), refund())
    again = plan(state, refund(event_id="again"))
    assert isinstance(again, Decision) and list(again.messages) == first


def test_refunding_a_declined_payment_does_nothing():
    state, _, _ = through_gateway(None, authorize(), GatewayResult.declined("card_declined"))
    assert plan(state, refund()) == Decision(state=None)


def test_a_refund_before_any_authorization_leaves_a_tombstone():
    decision = plan(None, refund())
    assert isinstance(decision, Decision) and decision.messages == ()
    assert decision.state is not None and decision.state.status == PaymentStatus.REFUNDED


def test_a_refund_the_gateway_cannot_do_now_is_rejected_so_it_can_be_retried():
    assert apply_result(captured(), refund(), GatewayResult.unavailable()).rejected is not None


# --- the rest -------------------------------------------------------------------------------------------------

def test_payments_rejects_what_it_does_not_handle():
    other = make(ReleaseStock, sku="A", order_id="o-1", reason="x")
    assert plan(None, other).rejected == "payments does not handle ReleaseStock"  # type: ignore[union-attr]


def test_event_ids_are_derived_from_the_command_and_differ_per_step():
    state, authorized_events, _ = through_gateway(None, authorize())
    state, captured_events, _ = through_gateway(state, capture())
    _, refunded_events, _ = through_gateway(state, refund())
    ids = [m.event_id for m in (*authorized_events, *captured_events, *refunded_events)]
    assert len(set(ids)) == 3
    assert kinds([*authorized_events, *captured_events, *refunded_events]) == [
        "PaymentAuthorized", "PaymentCaptured", "PaymentRefunded",
    ]


def test_the_payment_survives_the_json_round_trip_its_table_makes():
    state, _, _ = through_gateway(captured(), refund())
    assert PaymentState.model_validate_json(state.model_dump_json()) == state
