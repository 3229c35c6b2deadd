from domain_builders import TIMEOUT_MS, make, place

from schemas.messages import PaymentAuthorized, StockReserved
from streamcart.domain import orders
from streamcart.domain.orders import OrderState, OrderStatus
from streamcart.domain.timeouts import due


def placed(order_id: str, at: int) -> OrderState:
    state = orders.decide(None, place(order_id, (("A", 1),), event_id=f"place-{order_id}", at=at),
                          saga_timeout_ms=TIMEOUT_MS).state
    assert state is not None
    return state


def confirmed(order_id: str, at: int) -> OrderState:
    state = placed(order_id, at)
    for message in (
        make(StockReserved, order_id=order_id, sku="A", quantity=1, unit_price_cents=5, currency="EUR"),
        make(PaymentAuthorized, order_id=order_id, amount_cents=5, currency="EUR", authorization_id="auth"),
    ):
        state = orders.decide(state, message, saga_timeout_ms=TIMEOUT_MS).state or state
    assert state.status == OrderStatus.CONFIRMED
    return state


def test_only_pending_orders_past_their_deadline_are_expired_oldest_deadline_first():
    book = [placed("late", 2_000), placed("early", 1_000), placed("fresh", 50_000), confirmed("done", 0)]
    commands = due(book, now_ms=2_000 + TIMEOUT_MS)
    assert [(c.order_id, c.deadline) for c in commands] == [("early", 1_000 + TIMEOUT_MS), ("late", 2_000 + TIMEOUT_MS)]


def test_an_order_is_due_exactly_at_its_deadline():
    order = placed("o-1", 1_000)
    assert due([order], now_ms=order.deadline - 1) == []
    assert [c.order_id for c in due([order], now_ms=order.deadline)] == ["o-1"]


def test_a_tick_that_runs_twice_emits_identical_commands():
    book = [placed("a", 1_000), placed("b", 1_500)]
    first = due(book, now_ms=100_000)
    assert due(book, now_ms=100_000) == first
    assert due(book, now_ms=200_000) == first  # a later tick names and times them the same way


def test_expire_commands_are_keyed_caused_by_the_placement_and_timed_at_the_deadline():
    order = placed("o-1", 1_000)
    [command] = due([order], now_ms=10**9)
    assert (command.key, command.correlation_id, command.causation_id) == ("o-1", "o-1", order.placed_event_id)
    assert command.occurred_at == order.deadline


def test_the_orders_flow_cancels_an_order_on_the_command_and_a_second_tick_changes_nothing():
    order = placed("o-1", 1_000)
    [command] = due([order], now_ms=10**9)
    decision = orders.decide(order, command, saga_timeout_ms=TIMEOUT_MS)
    assert decision.state is not None and decision.state.cancel_reason == "timeout"
    assert due([decision.state], now_ms=10**9) == []
    again = orders.decide(decision.state, command, saga_timeout_ms=TIMEOUT_MS)
    assert again.state is None and again.messages == decision.messages


def test_with_no_orders_nothing_is_due():
    assert due([], now_ms=10**12) == []
