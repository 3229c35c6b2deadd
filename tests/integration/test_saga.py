"""The choreographed saga on the real stack (DESIGN.md §3), checked against the invariants of §4."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from schemas.codec import Codec
from schemas.messages import AdjustStock, CancelOrder, Message, OrderLine, PlaceOrder, UpdateShipment, UpsertProduct
from streamcart.commands import envelope
from streamcart.domain.shipping import SHIPMENT_CANCELLED
from streamcart.ids import new_id
from streamcart.settings import Settings
from streamcart.topics import Topics
from tests.integration.support import admin_token, headers_of, http_json, poll, producer, read_topic

TERMINAL = {"CONFIRMED", "CANCELLED", "SHIPPED", "DELIVERED"}


class Shop:
    """Drives the saga by producing commands with confluent-kafka, and reads it back through the API."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.settings = settings
        self.codec = codec
        self.topics = Topics.from_settings(settings)
        self.producer = producer(settings)
        self.token = admin_token(settings)
        self.undelivered: list = []

    def send(self, *messages: Message) -> None:
        for message in messages:
            self.producer.produce(
                getattr(self.topics, message.TOPIC), key=message.key.encode(), value=self.codec.encode(message)
            )
        assert self.producer.flush(30) == 0  # a bound: right after a Kafka restart the client reconnects first

    def send_later(self, message: Message) -> None:
        """Queue ``message`` without waiting for it (a burst); :meth:`flush` then waits for every delivery."""
        self.producer.produce(
            getattr(self.topics, message.TOPIC), key=message.key.encode(), value=self.codec.encode(message),
            on_delivery=lambda err, _m: err and self.undelivered.append(err),
        )
        self.producer.poll(0)

    def flush(self, timeout_s: float = 30) -> None:
        assert self.producer.flush(timeout_s) == 0, "messages still queued in the producer"
        assert not self.undelivered, self.undelivered[:5]

    def envelope(self, correlation: str) -> dict:
        return envelope(correlation)

    def product(self, sku: str, price: int, stock: int, active: bool = True) -> None:
        self.send(
            UpsertProduct(**self.envelope(sku), sku=sku, name=f"Product {sku}", unit_price_cents=price,
                          currency="EUR", active=active),
            AdjustStock(**self.envelope(sku), sku=sku, delta=stock, reason="initial"),
        )
        poll(lambda: (self.get(f"/v1/stock/{sku}") or {}).get("on_hand") == stock, what=f"stock of {sku}")
        # The catalog is a topic of its own: its upsert may land after the stock's.
        poll(lambda: (p := self.get(f"/v1/products/{sku}")) and (p["unit_price_cents"], p["active"]) == (price, active),
             what=f"product {sku}")

    def place(self, lines: dict[str, int], token: str = "tok_approve", order_id: str | None = None) -> PlaceOrder:
        order = self.place_order(lines, token, order_id)
        self.send(order)
        return order

    def place_order(
        self, lines: dict[str, int], token: str = "tok_approve", order_id: str | None = None
    ) -> PlaceOrder:
        """The PlaceOrder command, not sent yet."""
        order_id = order_id or f"o-{new_id()}"
        return PlaceOrder(**self.envelope(order_id), order_id=order_id, customer_id="c-saga",
                          lines=tuple(OrderLine(sku=s, quantity=q) for s, q in lines.items()), currency="EUR",
                          payment_token=token)

    def cancel(self, order_id: str) -> None:
        self.send(CancelOrder(**self.envelope(order_id), order_id=order_id, requested_by="c-saga"))

    def ship(self, order_id: str, status: str) -> None:
        self.send(UpdateShipment(**self.envelope(order_id), order_id=order_id, status=status))

    def get(self, path: str, worker: int = 0) -> dict | None:
        """The answer to ``GET path`` (``None`` unless 200). A 503 (a rebalance, or the owner still reading its
        tables back) is asked again, as its ``Retry-After`` says, for up to 30 s."""
        deadline = time.monotonic() + 30
        while True:
            status, body = http_json(f"{self.settings.worker_url(worker)}{path}", self.token)
            if status != 503 or time.monotonic() > deadline:
                return body if status == 200 else None
            time.sleep(0.2)

    def order(self, order_id: str) -> dict | None:
        return self.get(f"/v1/orders/{order_id}")

    def confirmed(self, order_id: str, timeout_s: float = 30) -> dict:
        """The order once terminal, which must be CONFIRMED (else the failure says why it was cancelled)."""
        order = self.settled(order_id, timeout_s)
        assert order["status"] == "CONFIRMED", (
            f"{order_id} is {order['status']} ({order['cancel_reason']}: {order['cancel_detail']}); history "
            f"{order['history']}"
        )
        return order

    def settled(self, order_id: str, timeout_s: float = 30, statuses: set[str] = TERMINAL) -> dict:
        return poll(lambda: (o := self.order(order_id)) and o["status"] in statuses and o,
                    timeout_s=timeout_s, what=f"order {order_id} to reach {sorted(statuses)}")

    def stock(self, sku: str) -> dict:
        stock = self.get(f"/v1/stock/{sku}")
        assert stock is not None
        return stock

    def quiet_stock(self, sku: str, timeout_s: float = 30) -> dict:
        """The stock once no reservation is live (I2: reserved is 0 when quiet)."""
        return poll(lambda: (s := self.stock(sku))["reserved"] == 0 and s, timeout_s=timeout_s,
                    what=f"{sku} to have no live reservation")

    def gateway_ledger(self) -> dict[str, dict]:
        return {a["idempotency_key"]: a for a in self.gateway_authorizations()}

    def gateway_authorizations(self) -> list[dict]:
        """Every authorization the gateway holds, as it lists them (one per row, duplicates included)."""
        with urllib.request.urlopen(f"{self.settings.gateway_url}/v1/authorizations", timeout=5) as response:
            return json.loads(response.read())["authorizations"]



@pytest.fixture(scope="module")
def shop(stack, settings, codec) -> Shop:
    return Shop(settings, codec)


def sku() -> str:
    return f"SKU-{new_id()[:8]}"


def test_a_multi_line_order_is_confirmed_at_catalog_prices(shop: Shop):
    a, b = sku(), sku()
    shop.product(a, price=1250, stock=10)
    shop.product(b, price=399, stock=5)
    order = shop.place({a: 2, b: 3})
    confirmed = shop.settled(order.order_id)
    assert confirmed["status"] == "CONFIRMED"
    assert confirmed["total_cents"] == 2 * 1250 + 3 * 399
    assert {line["sku"]: line["unit_price_cents"] for line in confirmed["lines"]} == {a: 1250, b: 399}
    # Each step is timed by when the message that made it was written: after the placement, the confirmation
    # after both reservations (their event times are all the placement's).
    recorded = {(h["event"], h["detail"]): h["recorded"] for h in confirmed["history"]}
    assert None not in recorded.values(), confirmed["history"]
    placed, done = recorded[("OrderPlaced", None)], recorded[("OrderConfirmed", None)]
    assert placed <= recorded[("StockReserved", a)] <= done and placed <= recorded[("StockReserved", b)] <= done
    # I2: sold leaves on_hand; nothing stays reserved.
    assert shop.quiet_stock(a)["on_hand"] == 8
    assert shop.quiet_stock(b)["on_hand"] == 2
    # I4: exactly one successful authorization, for the total.
    auth = poll(lambda: shop.gateway_ledger().get(order.order_id), what="the authorization")
    assert auth["amount_cents"] == confirmed["total_cents"]
    assert auth["attempts"] == 1  # asked once
    assert poll(lambda: shop.gateway_ledger()[order.order_id]["status"] == "captured", what="capture")


def test_one_line_out_of_stock_cancels_and_releases_the_other_lines(shop: Shop):
    plenty, scarce = sku(), sku()
    shop.product(plenty, price=100, stock=10)
    shop.product(scarce, price=100, stock=1)
    order = shop.place({plenty: 3, scarce: 2})
    cancelled = shop.settled(order.order_id)
    assert (cancelled["status"], cancelled["cancel_reason"]) == ("CANCELLED", "out_of_stock")
    assert shop.quiet_stock(plenty)["available"] == 10
    assert shop.quiet_stock(scarce)["available"] == 1
    assert order.order_id not in shop.gateway_ledger()


def test_an_unknown_or_inactive_product_cancels_as_unavailable(shop: Shop):
    inactive, plenty = sku(), sku()
    shop.product(inactive, price=100, stock=10, active=False)
    shop.product(plenty, price=100, stock=10)
    for lines in ({inactive: 1, plenty: 2}, {f"NOPE-{new_id()[:8]}": 1, plenty: 3}):
        order = shop.place(lines)
        cancelled = shop.settled(order.order_id)
        assert (cancelled["status"], cancelled["cancel_reason"]) == ("CANCELLED", "product_unavailable")
        # I2: the line that could be reserved is released, the inactive product's stock never was.
        assert (shop.quiet_stock(plenty)["available"], shop.quiet_stock(plenty)["sold"]) == (10, 0)
        assert shop.quiet_stock(inactive)["available"] == 10
        assert order.order_id not in shop.gateway_ledger()  # I4: no payment was asked for


def test_a_declined_payment_cancels_and_releases_the_stock(shop: Shop):
    item = sku()
    shop.product(item, price=500, stock=4)
    order = shop.place({item: 2}, token="tok_decline")
    cancelled = shop.settled(order.order_id)
    assert (cancelled["status"], cancelled["cancel_reason"]) == ("CANCELLED", "payment_declined")
    assert shop.quiet_stock(item)["available"] == 4
    assert shop.gateway_ledger()[order.order_id]["status"] == "declined"


def test_transient_gateway_failures_are_retried_into_one_authorization(shop: Shop):
    item = sku()
    shop.product(item, price=700, stock=3)
    order = shop.place({item: 1}, token="tok_flaky_2")
    shop.confirmed(order.order_id)
    (auth,) = [a for a in shop.gateway_authorizations() if a["idempotency_key"] == order.order_id]
    # The gateway refused the first two requests (503): retried, and the third made the one authorization.
    assert auth["attempts"] == 3
    assert (auth["amount_cents"], auth["status"] in {"approved", "captured"}) == (700, True)
    assert poll(lambda: shop.gateway_ledger()[order.order_id]["status"] == "captured", what="the capture")
    assert (shop.quiet_stock(item)["on_hand"], shop.quiet_stock(item)["sold"]) == (2, 1)


def test_a_duplicate_place_order_changes_nothing(shop: Shop):
    item = sku()
    shop.product(item, price=1000, stock=5)
    order = shop.place({item: 2})
    shop.send(order)  # the very same command again (same event id)
    again = order.model_copy(update={"event_id": new_id()})
    shop.send(again)  # and a retried request for the same order id
    shop.confirmed(order.order_id)
    assert shop.quiet_stock(item)["on_hand"] == 3
    placed = [h for h in shop.order(order.order_id)["history"] if h["event"] == "OrderPlaced"]
    assert len(placed) == 1


def test_a_customer_cancel_after_confirmation_refunds_and_restocks(shop: Shop):
    item = sku()
    shop.product(item, price=900, stock=2)
    order = shop.place({item: 2})
    shop.confirmed(order.order_id)
    shop.cancel(order.order_id)
    cancelled = shop.settled(order.order_id, statuses={"CANCELLED"})
    assert cancelled["cancel_reason"] == "customer_request"
    assert poll(lambda: shop.stock(item)["on_hand"] == 2, what="restock")
    stock = shop.quiet_stock(item)
    assert (stock["sold"], stock["restocked"], stock["available"]) == (2, 2, 2)
    assert poll(lambda: shop.gateway_ledger()[order.order_id]["status"] == "refunded", what="refund")
    assert shop.gateway_ledger()[order.order_id]["amount_cents"] == 2 * 900


def test_a_cancel_after_dispatch_is_refused_and_the_order_is_delivered(shop: Shop):
    item = sku()
    shop.product(item, price=100, stock=1)
    order = shop.place({item: 1})
    shop.settled(order.order_id)
    poll(lambda: (shop.order(order.order_id) or {}).get("shipment"), what="shipment created")
    shop.ship(order.order_id, "dispatched")
    shop.settled(order.order_id, statuses={"SHIPPED"})
    # Through the API: refused with the reason, nothing sent.
    status, body = http_json(f"{shop.settings.worker_url(1)}/v1/orders/{order.order_id}/cancel", shop.token,
                             body={"reason": "customer_request"})
    assert (status, body["error"]["message"]) == (409, "cannot cancel after dispatch"), body
    shop.cancel(order.order_id)  # and a CancelOrder produced straight to Kafka changes nothing either
    shop.ship(order.order_id, "delivered")
    delivered = shop.settled(order.order_id, statuses={"DELIVERED"})
    assert delivered["cancel_reason"] is None
    events = [h["event"] for h in delivered["history"]]
    assert "OrderCancelled" not in events and "OrderCancelRequested" not in events, events
    # The capture runs beside shipping, not before it.
    assert poll(lambda: shop.gateway_ledger()[order.order_id]["status"] == "captured", what="the capture")


def test_a_cancel_racing_a_dispatch_either_refunds_goods_that_stayed_or_ships_and_keeps_the_money(shop: Shop):
    # The cancel goes to the orders flow, the dispatch to the shipping flow: sent back to back they race, and
    # shipping decides who wins, so each order ends one consistent way, never refunded *and* dispatched. Half the
    # orders race; in the other half the cancel has won before the dispatch is sent, which must then be refused.
    item = sku()
    count = 8
    shop.product(item, price=700, stock=count)
    orders = [shop.place({item: 1}) for _ in range(count)]
    for order in orders:
        shop.confirmed(order.order_id)
        poll(lambda o=order: (shop.order(o.order_id) or {}).get("shipment"), what="shipment created")
    for i, order in enumerate(orders):
        cancel = CancelOrder(**shop.envelope(order.order_id), order_id=order.order_id, requested_by="c-saga")
        dispatch = UpdateShipment(**shop.envelope(order.order_id), order_id=order.order_id, status="dispatched")
        if i % 2:
            shop.send(*((cancel, dispatch) if i % 4 == 1 else (dispatch, cancel)))
        else:
            shop.send(cancel)
            shop.settled(order.order_id, statuses={"CANCELLED"})
            shop.send(dispatch)
    ends = {o.order_id: shop.settled(o.order_id, statuses={"CANCELLED", "SHIPPED"}) for o in orders}
    shipped = [i for i, end in ends.items() if end["status"] == "SHIPPED"]
    assert len(shipped) <= count // 2  # the orders cancelled before their dispatch stayed cancelled

    def settled_at_the_gateway() -> bool:
        ledger = shop.gateway_ledger()
        return all(ledger[i]["status"] == ("captured" if i in shipped else "refunded") for i in ends)

    assert poll(settled_at_the_gateway, what="captures and refunds")
    # I2: what stayed is back on hand (a restock goes with its refund: the last ones may still be on their way).
    assert poll(lambda: shop.quiet_stock(item)["on_hand"] == count - len(shipped), what="the restocks")
    for order_id, end in ends.items():
        now = shop.order(order_id)
        assert now is not None and now["status"] == end["status"]  # and it stays there (I1)
        events = [h["event"] for h in now["history"]]
        if order_id in shipped:  # the cancel came too late: asked and lost, or refused at once after the dispatch
            assert now["cancel_reason"] is None and "OrderCancelled" not in events
        else:
            assert now["cancel_reason"] == "customer_request" and now["shipment"]["status"] == "cancelled"
            assert "OrderCancelRequested" in events and "ShipmentDispatched" not in events
    # A dispatch that came after the cancel stopped its shipment is refused and dead-lettered for a person: the goods
    # may have left while the order was refunded (the API refuses it up front; these were sent straight to Kafka).
    stopped = {order_id for order_id in ends if order_id not in shipped}

    def letters(records: list) -> dict[str, bytes]:
        return {r.key().decode(): headers_of(r)["dlq.error.message"] for r in records
                if headers_of(r).get("dlq.flow") == b"shipping" and r.key().decode() in stopped}

    dead = letters(read_topic(shop.settings, shop.topics.dlq, until=lambda records: letters(records).keys() == stopped))
    assert all(SHIPMENT_CANCELLED.encode() in message for message in dead.values()), dead


def test_200_orders_racing_for_the_last_50_units_confirm_exactly_50(shop: Shop):
    item = sku()
    shop.product(item, price=100, stock=50)
    orders = [shop.place_order({item: 1}) for _ in range(200)]
    seen: list[dict] = []  # the stock as the API shows it while the orders race (I2: never negative)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(shop.stock(item))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for order in orders:  # one burst: the last one is in Kafka before the first is decided
            shop.send_later(order)
        shop.flush()
        settled = [shop.settled(o.order_id, timeout_s=60) for o in orders]
    finally:
        done.set()
        watcher.join(timeout=10)
    outcomes = [o["status"] for o in settled]
    assert outcomes.count("CONFIRMED") == 50
    assert outcomes.count("CANCELLED") == 150
    assert {o["cancel_reason"] for o in settled if o["status"] == "CANCELLED"} == {"out_of_stock"}
    assert len(seen) > 10 and all(s["available"] >= 0 and 0 <= s["reserved"] <= s["on_hand"] for s in seen), [
        s for s in seen if s["available"] < 0 or not 0 <= s["reserved"] <= s["on_hand"]][:3]
    stock = shop.quiet_stock(item)
    assert (stock["on_hand"], stock["available"], stock["sold"]) == (0, 0, 50)
    # I4: the 50 paid once each, for their one unit; the refused were never charged.
    confirmed = {o["order_id"] for o in settled if o["status"] == "CONFIRMED"}
    ledger = poll(lambda: (led := shop.gateway_ledger()) and all(led.get(i, {}).get("status") == "captured"
                                                                 for i in confirmed) and led, what="50 captures")
    assert all(ledger[i]["amount_cents"] == 100 for i in confirmed)
    assert not {o.order_id for o in orders} - confirmed & set(ledger)
