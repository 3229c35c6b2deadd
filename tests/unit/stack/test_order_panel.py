"""`streamcart order show` times each step of an order from when its message was written to Kafka (every step of a
saga has the placement's event time), and from the event times for an order stored before that was kept."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from streamcart.stack.views import order_panel


def order(*steps: tuple[str, int, int | None]) -> dict[str, Any]:
    return {
        "order_id": "o-1", "status": "CONFIRMED", "currency": "EUR", "placed_at": 1_000, "lines": [],
        "history": [{"event": event, "time": time, "event_id": f"e-{event}", "detail": None, "recorded": recorded}
                    for event, time, recorded in steps],
    }


def rendered(panel: Any) -> str:
    console = Console(width=120, record=True)
    console.print(panel)
    return console.export_text()


def test_the_steps_are_timed_from_when_their_messages_were_recorded() -> None:
    text = rendered(order_panel(order(("OrderPlaced", 1_000, 1_004), ("StockReserved", 1_000, 1_046),
                          ("OrderConfirmed", 1_000, 1_254))))
    assert "+0.000 s" in text and "+0.042 s" in text and "+0.250 s" in text


def test_an_order_recorded_without_those_times_is_timed_by_its_event_times() -> None:
    text = rendered(order_panel(order(("OrderPlaced", 1_000, None), ("OrderCancelled", 31_000, 31_020))))
    assert "+0.000 s" in text and "+30.000 s" in text


def test_steps_that_reached_the_orders_flow_out_of_order_are_shown_as_they_were_written() -> None:
    text = rendered(order_panel(order(("OrderPlaced", 1_000, 1_004), ("OrderConfirmed", 1_000, 1_254),
                                      ("PaymentCaptured", 1_000, 1_957), ("StockCommitted", 1_000, 1_926))))
    assert text.index("StockCommitted") < text.index("PaymentCaptured")


def test_a_cancelled_order_says_why_and_a_rejected_line_is_not_pending_a_price() -> None:
    cancelled = order(("OrderPlaced", 1_000, 1_004), ("OrderCancelled", 1_000, 1_040)) | {
        "status": "CANCELLED", "cancel_reason": "product_unavailable", "customer_id": "c-42",
        "cancel_detail": "KB-001: KB-001 is priced in EUR, the order is in USD",
        "lines": [{"sku": "KB-001", "quantity": 1, "unit_price_cents": None, "status": "rejected"}],
    }
    text = rendered(order_panel(cancelled))
    assert "KB-001 is priced in EUR, the order is in USD" in text and "c-42" in text
    assert "1 x not priced (rejected)" in text and "not priced yet" not in text
