"""Notifications on the real stack: the customer's webhook hears of confirmation, dispatch and cancellation over
HTTP, a failing attempt is retried under the same Idempotency-Key, a webhook that never answers ends in the DLQ
with the reason while the saga goes on, and the order's email address and phone number get theirs through the
email/SMS provider."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streamcart.dead_letters import DlqHeader
from tests.integration.support import QuietHandler, admin_token, headers_of, http_server, poll, read_topic
from tests.integration.test_api import call, customer, order_body, place, stocked_sku
from tests.integration.test_saga import Shop, sku


@dataclass
class Hook:
    """A customer's webhook receiver: records every POST; answers 503 to the first attempt of each key."""

    fail_first: bool = True
    always_fail: bool = False
    received: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, key: str, body: dict) -> int:
        with self.lock:
            first = not any(r["key"] == key for r in self.received)
            self.received.append({"key": key, "body": body})
        if self.always_fail or (self.fail_first and first):
            return 503
        return 204

    def delivered(self, order_id: str, template: str) -> list[dict]:
        with self.lock:
            return [r for r in self.received if r["body"].get("order_id") == order_id
                    and r["body"].get("template") == template]


@pytest.fixture
def hook() -> Iterator[tuple[Hook, str]]:
    state = Hook()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            self.send_response(state.answer(self.headers.get("Idempotency-Key", ""), body))
            self.end_headers()

    with http_server(Handler) as base:
        yield state, f"{base}/hooks"


@pytest.fixture(scope="module")
def shop(stack, settings, codec) -> Shop:
    return Shop(settings, codec)



def _settled_order(shop: Shop, settings, webhook_url: str, **body: str) -> dict:
    """An order placed through the API with ``webhook_url`` as its webhook, as it is once settled."""
    _, token = customer(settings)
    _, _, placed = place(f"{settings.worker_url(0)}/v1/orders",
                        {**order_body(stocked_sku(shop), **body), "webhook_url": webhook_url}, token)
    _, _, order = call(f"{settings.worker_url(0)}/v1/orders/{placed['order_id']}?wait=30", token=token)
    return order

def test_the_webhook_hears_of_confirmation_and_dispatch_and_a_failed_attempt_is_retried(shop, settings, hook):
    receiver, url = hook
    order = _settled_order(shop, settings, url)
    order_id = order["order_id"]
    assert order["status"] == "CONFIRMED", order

    confirmed = poll(lambda: len(receiver.delivered(order_id, "order_confirmed")) >= 2 and
                     receiver.delivered(order_id, "order_confirmed"), what="the confirmation, retried once")
    assert len({r["key"] for r in confirmed}) == 1, "a retry carries the same Idempotency-Key"
    assert confirmed[0]["body"]["order_id"] == order_id

    # The shipment is created after the confirmation: until the orders flow has it, a dispatch is a 409.
    poll(lambda: (shop.order(order_id) or {}).get("shipment"), what="the shipment created")
    status, _, _ = call(f"{settings.worker_url(1)}/v1/shipments/{order_id}/status", "POST",
                        {"status": "dispatched"}, admin_token(settings))
    assert status == 202
    poll(lambda: len(receiver.delivered(order_id, "shipment_dispatched")) >= 2, what="the dispatch notification")


def test_a_cancelled_order_is_notified(shop, settings, hook):
    receiver, url = hook
    order = _settled_order(shop, settings, url, token="tok_decline")
    order_id = order["order_id"]
    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "payment_declined")
    poll(lambda: len(receiver.delivered(order_id, "order_cancelled")) >= 2, what="the cancellation notification")


def test_a_webhook_that_never_answers_ends_in_the_dlq_with_the_reason(shop, settings, hook):
    receiver, url = hook
    receiver.always_fail = True
    order = _settled_order(shop, settings, url)
    order_id = order["order_id"]
    assert order["status"] == "CONFIRMED"  # the saga does not wait on a customer's webhook

    def given_up(records: list) -> bool:
        return any(r.key() == order_id.encode() and headers_of(r).get(DlqHeader.FLOW) == b"notifications.webhook"
                   for r in records)

    dead = [r for r in read_topic(settings, shop.topics.dlq, until=given_up, timeout_s=60)
            if r.key() == order_id.encode() and headers_of(r).get(DlqHeader.FLOW) == b"notifications.webhook"]
    assert b"503" in headers_of(dead[0])[DlqHeader.ERROR_MESSAGE]
    assert len(receiver.delivered(order_id, "order_confirmed")) >= 2  # it was tried more than once


def test_the_orders_email_and_phone_hear_through_the_provider_each_on_the_channels_its_event_calls_for(shop, settings):
    item = sku()
    shop.product(item, price=450, stock=3)
    order = shop.place_order({item: 1}).model_copy(update={"email": "ada@example.com", "phone": "+15550100"})
    shop.send(order)
    shop.confirmed(order.order_id)
    poll(lambda: (shop.order(order.order_id) or {}).get("shipment"), what="shipment created")
    shop.ship(order.order_id, "dispatched")
    outbox = Path(settings.home).resolve() / "data" / "notifications" / "outbox.jsonl"

    def sent() -> set[tuple[str, str, str]]:
        # Complete lines only: a worker may be appending one right now.
        lines = outbox.read_text(encoding="utf-8").split("\n")[:-1] if outbox.exists() else []
        records = [json.loads(line) for line in lines]
        return {(r["channel"], r["template"], r["to"]) for r in records if r["payload"]["order_id"] == order.order_id}

    expected = {("email", "order_confirmed", "ada@example.com"), ("email", "shipment_dispatched", "ada@example.com"),
                ("sms", "shipment_dispatched", "+15550100")}
    assert poll(lambda: sent() == expected and sent(), what="an email for each event and an SMS for the dispatch")
