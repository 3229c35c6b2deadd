"""Observability on the real stack: one order is one trace (DESIGN.md §2), and every Python process of the stack
logs one JSON object per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from streamcart.stack.specs import worker_name
from streamcart.tracing import new_traceparent, trace_id
from tests.integration.support import QuietHandler, headers_of, http_server, read_topic
from tests.integration.test_api import call, customer, order_body, place, stocked_sku
from tests.integration.test_saga import Shop


@pytest.fixture(scope="module")
def shop(stack, settings, codec) -> Shop:
    return Shop(settings, codec)


@pytest.fixture(scope="module")
def webhook() -> Iterator[tuple[str, list[str]]]:
    """A customer's webhook receiver on loopback: its URL, and the ``traceparent`` of every POST it answered."""
    received: list[str] = []

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(self.headers.get("traceparent", ""))
            self.send_response(204)
            self.end_headers()

    with http_server(Handler) as base:
        yield f"{base}/hooks", received


@pytest.fixture(scope="module")
def traced_order(shop, settings, webhook) -> tuple[str, str]:
    """An order placed over HTTP by a caller with its own ``traceparent``, once confirmed: (order id, traceparent)."""
    sku = stocked_sku(shop)
    _, token = customer(settings)
    traceparent = new_traceparent()
    body = {**order_body(sku, 2), "webhook_url": webhook[0]}
    status, _, placed = place(f"{settings.worker_url(0)}/v1/orders", body, token,
                             headers={"traceparent": traceparent})
    assert status == 202, placed
    status, _, order = call(f"{settings.worker_url(1)}/v1/orders/{placed['order_id']}?wait=30", token=token)
    assert (status, order["status"]) == (200, "CONFIRMED"), order
    return placed["order_id"], traceparent


def test_every_record_of_an_order_and_its_http_calls_carry_the_callers_trace(
    shop, settings, codec, traced_order, webhook
):
    order_id, traceparent = traced_order
    t = shop.topics
    # What a confirmed order leaves on each saga topic (DESIGN.md §3, steps 1-6 and 9).
    expected = {
        t.order_commands: {"PlaceOrder"},
        t.order_events: {"OrderPlaced", "OrderConfirmed"},
        t.inventory_commands: {"ReserveStock", "CommitStock"},
        t.inventory_events: {"StockReserved", "StockCommitted"},
        t.payment_commands: {"AuthorizePayment", "CapturePayment"},
        t.payment_events: {"PaymentAuthorized", "PaymentCaptured"},
        t.shipping_events: {"ShipmentCreated"},
        t.notification_events: {"NotificationSent"},
    }

    def of_order(records: list[Any]) -> list[tuple[str, Any]]:
        decoded = []
        for record in records:
            try:
                message = codec.decode(record.value())
            except Exception:  # another test's poison record
                continue
            if getattr(message, "order_id", None) == order_id:
                decoded.append((type(message).__name__, record))
        return decoded

    ours: list[tuple[str, Any]] = []
    for topic, names in expected.items():
        records = read_topic(settings, topic, until=lambda rs, names=names: names <= {n for n, _ in of_order(rs)})
        ours += of_order(records)

    traces = {name: trace_id(headers_of(record).get("traceparent", b"").decode()) for name, record in ours}
    assert traces == dict.fromkeys(traces, trace_id(traceparent)), traces

    authorization = shop.gateway_ledger()[order_id]
    assert trace_id(authorization["traceparent"]) == trace_id(traceparent)
    _, hooked = webhook  # NotificationSent (read above) is sent only once the webhook has answered
    assert hooked and {trace_id(h) for h in hooked} == {trace_id(traceparent)}


def log_entries(stack, name: str) -> list[dict[str, Any]]:
    """Every line process ``name`` wrote, parsed as JSON (the stack's own "starting" banners left out)."""
    lines = stack.log_path(name).read_text().splitlines()
    return [json.loads(line) for line in lines if line and not line.startswith("--- streamcart: starting ")]


def test_every_python_process_logs_one_json_object_per_line(stack, settings, traced_order):
    order_id, traceparent = traced_order
    for name in ["gateway", *(worker_name(i) for i in range(settings.workers))]:
        entries = log_entries(stack, name)
        assert entries, f"{name} logged nothing"
        assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries), name
    workers = [e for i in range(settings.workers) for e in log_entries(stack, worker_name(i))]
    assert any(e["logger"].startswith("faust.") for e in workers), "faust's own records are missing"
    gateway = log_entries(stack, "gateway")
    assert any(order_id in e["message"] and e.get("trace_id") == trace_id(traceparent) for e in gateway)
