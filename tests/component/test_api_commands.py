"""Commands over HTTP on aiohttp's test client: what is sent, what is refused before anything is sent."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from multidict import CIMultiDict

import api.orders as orders_module
from api.admission import START_RATE, PlacementGate
from api.app import init_app
from api.catalog import ADJUSTING, ADJUSTMENT_IN_FLIGHT_S
from api.commands import UNCONFIRMED
from api.errors import OutcomeUnknown, Unavailable
from api.handling import KeyedRequests
from api.orders import GATE, PLACEMENT_IN_FLIGHT_S, PLACING
from schemas.messages import AdjustStock, CancelOrder, Message, PlaceOrder, UpdateShipment, UpsertProduct
from streamcart.domain.catalog import ProductState
from streamcart.domain.inventory import StockState, adjustment_body, adjustment_id
from streamcart.domain.order_state import ShipmentInfo
from streamcart.domain.shipping import SHIPMENT_CANCELLED
from tests.component.test_api_orders import SETTINGS, FakeWorker, an_order, bearer

#: One worker: lists are gathered from this one alone (gathering across workers runs on the real stack).
SOLO = SETTINGS.model_copy(update={"workers": 1})
ORDER = {"lines": [{"sku": "KB-001", "quantity": 2}], "payment": {"token": "tok_approve"}, "currency": "EUR"}


@dataclass
class RecordingCommands:
    sent: list[Message] = field(default_factory=list)
    broker_down: bool = False
    sending: asyncio.Event = field(default_factory=asyncio.Event)  # set once a send has begun
    #: When set to an event, a send waits for it: the broker has not acknowledged until the test says so.
    release: asyncio.Event | None = None
    unconfirmed: bool = False

    async def send(self, message: Message, *, traceparent: str | None = None) -> None:
        self.sending.set()
        if self.release is not None:
            await self.release.wait()
        if self.broker_down:
            raise Unavailable("the broker did not acknowledge the command in time", headers={"Retry-After": "2"})
        self.sent.append(message)
        if self.unconfirmed:  # written, but the broker's confirmation did not come in time (a stalled broker)
            raise OutcomeUnknown(UNCONFIRMED, headers={"Retry-After": "2"})


@pytest.fixture
def worker() -> FakeWorker:
    return FakeWorker(orders={"o-1": an_order()})


@pytest.fixture
def commands() -> RecordingCommands:
    return RecordingCommands()


@pytest.fixture
async def client(aiohttp_client, worker, commands):
    return await aiohttp_client(init_app(SOLO, worker, commands))


CUSTOMER = bearer("c-1", "customer")
ADMIN = bearer("ops", "admin")


async def test_placing_an_order_answers_202_with_its_location_after_the_command_was_sent(client, commands):
    response = await client.post("/v1/orders", json=ORDER, headers=CUSTOMER)
    assert response.status == 202
    body = await response.json()
    assert body["status"] == "PENDING"
    assert response.headers["Location"] == f"/v1/orders/{body['order_id']}"
    (sent,) = commands.sent
    assert isinstance(sent, PlaceOrder)
    assert (sent.order_id, sent.customer_id, sent.currency, sent.payment_token) == (
        body["order_id"], "c-1", "EUR", "tok_approve")
    assert [(line.sku, line.quantity) for line in sent.lines] == [("KB-001", 2)]


async def test_a_new_order_is_refused_with_503_while_the_orders_flow_is_too_far_behind(client, worker, commands):
    worker.queue_s = SOLO.admission_max_delay_s + 1.5
    response = await client.post("/v1/orders", json=ORDER, headers=CUSTOMER)
    assert response.status == 503
    assert response.headers["Retry-After"] == str(math.ceil(worker.queue_s))
    error = (await response.json())["error"]
    assert error["code"] == "overloaded"
    assert error["details"] == {"queue_s": worker.queue_s, "max_delay_s": SOLO.admission_max_delay_s}
    assert commands.sent == []
    worker.queue_s = SOLO.admission_max_delay_s  # caught up (at the limit is not beyond it)
    assert (await client.post("/v1/orders", json=ORDER, headers=CUSTOMER)).status == 202
    assert len(commands.sent) == 1


async def test_a_wait_just_past_the_limit_is_said_as_past_it(client, worker, commands):
    worker.queue_s = SOLO.admission_max_delay_s + 0.0002  # rounded to the millisecond, it read as the limit itself
    response = await client.post("/v1/orders", json=ORDER, headers=CUSTOMER)
    assert response.status == 503
    error = (await response.json())["error"]
    assert error["details"]["queue_s"] > SOLO.admission_max_delay_s
    assert f"wait {error['details']['queue_s']:g} s" in error["message"]
    assert commands.sent == []


async def test_an_order_placed_under_a_key_is_still_answered_while_new_ones_are_refused(client, worker, commands):
    keyed = {**CUSTOMER, "Idempotency-Key": "k-overload"}
    first = await client.post("/v1/orders", json=ORDER, headers=keyed)
    assert first.status == 202
    worker.queue_s = 60.0
    retry = await client.post("/v1/orders", json=ORDER, headers=keyed)
    assert retry.status == 202
    assert (await retry.json())["order_id"] == (await first.json())["order_id"]
    refused = await client.post("/v1/orders", json=ORDER, headers={**CUSTOMER, "Idempotency-Key": "k-new"})
    assert (refused.status, refused.headers["Retry-After"]) == (503, "10")  # at most 10 s
    assert len(commands.sent) == 1


async def test_beyond_the_pace_a_new_order_is_refused_with_503_saying_the_pace(aiohttp_client, worker, commands):
    app = init_app(SOLO, worker, commands)
    app[GATE] = PlacementGate(SOLO.admission_max_delay_s, clock=lambda: 100.0)  # no time passes: no refill
    client = await aiohttp_client(app)
    answers = [await client.post("/v1/orders", json=ORDER, headers=bearer(f"c-{n}", "customer"))
               for n in range(int(START_RATE / 2) + 1)]
    assert [a.status for a in answers[:-1]] == [202] * int(START_RATE / 2)  # half a second's orders at once
    refused = answers[-1]
    assert (refused.status, refused.headers["Retry-After"]) == (503, "1")
    error = (await refused.json())["error"]
    assert (error["code"], error["details"]) == ("overloaded", {"pace_per_s": START_RATE})
    assert "the pace it learns" in error["message"]
    assert len(commands.sent) == int(START_RATE / 2)


async def test_one_customers_burst_leaves_the_pace_room_for_the_others(aiohttp_client, worker, commands):
    """The pace is the worker's, not one customer's: a burst of one takes half the bucket, the rest is others'."""
    app = init_app(SOLO, worker, commands)
    app[GATE] = PlacementGate(SOLO.admission_max_delay_s, clock=lambda: 100.0)  # no time passes: no refill
    client = await aiohttp_client(app)
    bob = [await client.post("/v1/orders", json=ORDER, headers=bearer("bob", "customer")) for _ in range(20)]
    taken = [a.status for a in bob].count(202)
    assert taken == math.ceil(START_RATE / 4) and [a.status for a in bob[taken:]] == [503] * (20 - taken)
    error = (await bob[-1].json())["error"]
    assert error["code"] == "overloaded" and "you had your share" in error["message"]
    alice = [await client.post("/v1/orders", json=ORDER, headers=bearer("alice", "customer")) for _ in range(3)]
    assert [a.status for a in alice] == [202] * 3
    assert len(commands.sent) == taken + 3


async def test_shedding_is_off_with_a_max_delay_of_0(aiohttp_client, worker, commands):
    client = await aiohttp_client(init_app(SOLO.model_copy(update={"admission_max_delay_s": 0.0}), worker, commands))
    worker.queue_s = 600.0
    assert (await client.post("/v1/orders", json=ORDER, headers=CUSTOMER)).status == 202


async def test_an_orders_email_and_phone_travel_with_it_for_its_notifications(client, commands):
    contact = {"email": "ada@example.com", "phone": "+15550100", "webhook_url": "https://hooks.example.com/o?x=1"}
    assert (await client.post("/v1/orders", json={**ORDER, **contact}, headers=CUSTOMER)).status == 202
    (sent,) = commands.sent
    assert (sent.email, sent.phone, sent.webhook_url) == ("ada@example.com", "+15550100",
                                                         "https://hooks.example.com/o?x=1")


@pytest.mark.parametrize("contact", [{"email": "not-an-address"}, {"email": "a\u0000\u001b[31m@b.c"},
                                     {"email": "ada@example.com\u0085"}, {"email": "ada@example.com\ufeff"},
                                     {"email": "ada\u202e@example.com"}, {"phone": "555-0100"},
                                     {"phone": "+0123456789"}, {"webhook_url": "ftp://hooks.example.com/"},
                                     # A URL parser would strip the newline and tab and encode the space: the order
                                     # would notify an address its customer never gave.
                                     {"webhook_url": "https://hooks.exa\nmple.com/"},
                                     {"webhook_url": "https://hooks.example.com/a\tb"},
                                     {"webhook_url": " https://hooks.example.com/"},
                                     {"webhook_url": "https://hooks.example.com/a b"}])
async def test_an_unusable_contact_is_a_422_and_sends_nothing(client, commands, contact):
    response = await client.post("/v1/orders", json={**ORDER, **contact}, headers=CUSTOMER)
    assert response.status == 422
    assert (await response.json())["error"]["code"]
    assert commands.sent == []


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b'{"lines": []}', "text/plain", 415),
        (b'{"lines": [], "payment": {"token": "t"}, "currency": "EUR"}', "application/json", 422),
        (b'{"lines": [{"sku": "A", "quantity": 0}], "payment": {"token": "t"}, "currency": "EUR"}',
         "application/json", 422),
        (b'{"lines": [{"sku": "A", "quantity": 1}], "payment": {"token": "t"}, "currency": "euro"}',
         "application/json", 422),
        (b'{"lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}], "payment": {"token": "t"}, '
         b'"currency": "EUR"}', "application/json", 422),
        (b'{"lines": [{"sku": "A/../B", "quantity": 1}], "payment": {"token": "t"}, "currency": "EUR"}',
         "application/json", 422),
        (b"[" * 70_000, "application/json", 413),
    ],
    ids=["not-json", "not-json-type", "no-lines", "zero-quantity", "bad-currency", "client-price", "bad-sku",
         "too-large"],
)
async def test_bad_input_is_a_json_error_and_sends_nothing(client, commands, body, content_type, status):
    response = await client.post("/v1/orders", data=body, headers={**CUSTOMER, "Content-Type": content_type})
    assert response.status == status
    assert set((await response.json())["error"]) == {"code", "message", "details"}
    assert commands.sent == []


#: Every route that reads a JSON body, with a body it would accept.
BODY_ROUTES = [
    ("POST", "/v1/orders", ORDER),
    ("POST", "/v1/orders/o-1/cancel", {"reason": "customer_request"}),
    ("PUT", "/v1/products/KB-001", {"name": "Keyboard", "unit_price_cents": 4999, "currency": "EUR"}),
    ("POST", "/v1/stock/KB-001/adjustments", {"delta": 1, "reason": "delivery"}),
    ("POST", "/v1/shipments/o-1/status", {"status": "dispatched"}),
]


@pytest.mark.parametrize(("method", "path", "body"), BODY_ROUTES, ids=[path for _, path, _ in BODY_ROUTES])
@pytest.mark.parametrize(
    ("raw", "encoding", "status"),
    [
        (b"[" * 5000, None, 400),
        (b"[" * 30_000, None, 400),
        (None, "gzip", 400),
        (None, "deflate", 400),
        (None, "br", 415),
    ],
    ids=["nested-5000", "nested-30000", "gzip-not-compressed", "deflate-not-compressed", "brotli"],
)
async def test_a_body_the_api_cannot_read_is_a_json_4xx_and_sends_nothing(
    client, commands, method, path, body, raw, encoding, status
):
    headers = {**ADMIN, "Content-Type": "application/json", **({"Content-Encoding": encoding} if encoding else {})}
    data = raw if raw is not None else json.dumps(body).encode()
    response = await client.request(method, path, data=data, headers=headers)
    assert response.status == status
    assert response.content_type == "application/json"
    assert set((await response.json())["error"]) == {"code", "message", "details"}
    assert commands.sent == []


@pytest.mark.parametrize(("method", "path", "body"), BODY_ROUTES, ids=[path for _, path, _ in BODY_ROUTES])
@pytest.mark.parametrize(
    ("encode", "content_type", "status"),
    [
        (lambda text: text.encode("utf-16"), "application/json", 400),
        (lambda text: text.encode("utf-32"), "application/json", 400),
        (lambda text: text.encode("utf-16-be"), "application/json", 400),
        (lambda text: text.encode(), "application/json; charset=utf-16", 415),
        (lambda text: text.encode(), "application/json; charset=latin-1", 415),
        (lambda text: text.encode(), 'application/json; charset="', 415),
    ],
    ids=["utf-16", "utf-32", "utf-16-no-bom", "said-utf-16", "said-latin-1", "said-nothing"],
)
async def test_a_body_that_is_not_utf_8_or_says_another_charset_is_refused_and_sends_nothing(
    client, commands, method, path, body, encode, content_type, status
):
    """From bytes, Python's parser guesses UTF-16 and UTF-32 too: such bodies placed orders and changed stock."""
    data = encode(json.dumps(body))
    response = await client.request(method, path, data=data, headers={**ADMIN, "Content-Type": content_type})
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    assert set((await response.json())["error"]) == {"code", "message", "details"}
    assert commands.sent == []


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/json; charset=UTF8",
                                          "application/json; charset=us-ascii"])
async def test_utf_8_said_or_with_a_byte_order_mark_is_read(client, commands, content_type):
    data = "\ufeff".encode() + json.dumps({"delta": 1, "reason": "délivery"}).encode()
    response = await client.post("/v1/stock/KB-001/adjustments", data=data,
                                 headers={**ADMIN, "Content-Type": content_type})
    assert response.status == 202, await response.text()
    (sent,) = commands.sent
    assert isinstance(sent, AdjustStock) and sent.reason == "délivery"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/stock/KB-001/adjustments", [("Idempotency-Key", "x-1"), ("Idempotency-Key", "x-2")]),
        ("/v1/stock/KB-001/adjustments", [("Idempotency-Key", "x-1"), ("Idempotency-Key", "\u00fc bad")]),
        ("/v1/stock/KB-001/adjustments", [("Authorization", ADMIN["Authorization"])]),
        ("/v1/stock/KB-001/adjustments?limit=1&limit=2", []),
        ("/v1/stock/KB-001/adjustments?token=x", []),
        ("/v1/stock/KB-001/adjustments", [("Content-Encoding", "identity"), ("Content-Encoding", "gzip")]),
    ],
    ids=["two-keys", "a-bad-second-key", "two-credentials", "a-query-parameter-twice", "header-and-query-token",
         "two-content-codings"],  # (two Content-Types: aiohttp's parser refuses them itself)
)
async def test_a_request_that_could_be_read_two_ways_is_a_400_and_sends_nothing(client, commands, path, headers):
    """aiohttp reads the first of two headers, a proxy may read the last or join them: an order placed under one
    key by one reader is another order for the next."""
    response = await client.post(path, data=json.dumps({"delta": 1, "reason": "delivery"}).encode(),
                                 headers=CIMultiDict([*ADMIN.items(), ("Content-Type", "application/json"),
                                                      *headers]))
    assert response.status == 400, await response.text()
    error = (await response.json())["error"]
    assert "which one was meant?" in error["message"] or error["message"].endswith(": send one")
    assert commands.sent == []


async def test_a_repeated_query_parameter_of_a_read_is_a_400(client):
    response = await client.get("/v1/products?limit=1&limit=abc", headers=ADMIN)
    assert response.status == 400
    assert "'limit' more than once" in (await response.json())["error"]["message"]


async def test_a_number_with_more_digits_than_python_reads_is_a_400_in_the_bodys_words(client, commands):
    body = b'{"delta": ' + b"9" * 5000 + b', "reason": "delivery"}'
    response = await client.post("/v1/stock/KB-001/adjustments", data=body,
                                 headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status == 400
    message = (await response.json())["error"]["message"]
    assert message == "the body holds a number with more digits than this API reads"
    assert commands.sent == []


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_a_compressed_body_is_decoded(client, commands, encoding, compress):
    headers = {**CUSTOMER, "Content-Type": "application/json", "Content-Encoding": encoding}
    response = await client.post("/v1/orders", data=compress(json.dumps(ORDER).encode()), headers=headers)
    assert response.status == 202
    (sent,) = commands.sent
    assert isinstance(sent, PlaceOrder) and [(line.sku, line.quantity) for line in sent.lines] == [("KB-001", 2)]


async def test_validation_errors_say_which_field_is_wrong(client):
    body = {**ORDER, "lines": [{"sku": "A", "quantity": -1}]}
    response = await client.post("/v1/orders", json=body, headers=CUSTOMER)
    details = (await response.json())["error"]["details"]
    assert [d["loc"] for d in details] == [["lines", 0, "quantity"]]


async def test_a_sku_asked_for_over_its_limit_across_lines_is_a_422_and_sends_nothing(client, commands):
    """Found live: each line within its 1,000 units but a SKU's lines adding up to more was answered 202, then the
    order could not be placed (the order keeps one line per SKU, their sum) and was dead-lettered: accepted, lost."""
    lines = [{"sku": "A", "quantity": 600}, {"sku": "B", "quantity": 1}, {"sku": "A", "quantity": 401}]
    response = await client.post("/v1/orders", json={**ORDER, "lines": lines}, headers=CUSTOMER)
    assert response.status == 422
    (detail,) = (await response.json())["error"]["details"]
    assert detail["loc"] == ["lines"] and "1001 units of A over its lines" in detail["msg"]
    assert commands.sent == []
    lines[2]["quantity"] = 400  # 1,000 of A in all: fine
    assert (await client.post("/v1/orders", json={**ORDER, "lines": lines}, headers=CUSTOMER)).status == 202


async def test_when_the_broker_does_not_acknowledge_the_answer_is_503_with_retry_after(client, commands):
    commands.broker_down = True
    response = await client.post("/v1/orders", json=ORDER, headers=CUSTOMER)
    assert response.status == 503
    assert response.headers["Retry-After"] == "2"


async def test_the_same_idempotency_key_and_body_return_the_same_order_once(client, commands):
    headers = {**CUSTOMER, "Idempotency-Key": "checkout-7"}
    first = await (await client.post("/v1/orders", json=ORDER, headers=headers)).json()
    second = await client.post("/v1/orders", json=ORDER, headers=headers)
    assert second.status == 202
    assert (await second.json())["order_id"] == first["order_id"]
    assert len(commands.sent) == 1


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks (the requests, the test server) run until ``condition`` holds."""
    for _ in range(5_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the requests never got there")


async def both_at_the_broker(client, commands, key_holders: KeyedRequests, *requests: Any) -> list[Any]:
    """Send ``requests`` at once, the first held at the broker until every one of them holds or waits for its
    key's lock; then let the broker answer. Their answers."""
    commands.release = asyncio.Event()
    sent = [asyncio.ensure_future(request) for request in requests]
    await until(lambda: commands.sending.is_set() and key_holders.holders() == len(requests))
    commands.release.set()
    return [await answer for answer in sent]


async def test_two_identical_requests_at_once_place_one_order(client, commands):
    headers = {**CUSTOMER, "Idempotency-Key": "double-click"}
    answers = await both_at_the_broker(client, commands, client.app[PLACING],
                                       *(client.post("/v1/orders", json=ORDER, headers=headers) for _ in range(2)))
    assert [a.status for a in answers] == [202, 202]
    assert len({(await a.json())["order_id"] for a in answers}) == 1
    assert len(commands.sent) == 1
    assert client.app[PLACING].locks == {}  # nothing kept per key once its requests are answered


async def test_the_same_idempotency_key_with_another_body_is_a_409(client, commands):
    headers = {**CUSTOMER, "Idempotency-Key": "checkout-8"}
    assert (await client.post("/v1/orders", json=ORDER, headers=headers)).status == 202
    other = {**ORDER, "lines": [{"sku": "KB-001", "quantity": 3}]}
    response = await client.post("/v1/orders", json=other, headers=headers)
    assert response.status == 409
    assert len(commands.sent) == 1


async def test_an_idempotency_key_belongs_to_its_customer(client, commands):
    key = {"Idempotency-Key": "shared"}
    one = await (await client.post("/v1/orders", json=ORDER, headers={**CUSTOMER, **key})).json()
    two = await (await client.post("/v1/orders", json=ORDER, headers={**bearer("c-2", "customer"), **key})).json()
    assert one["order_id"] != two["order_id"]
    assert len(commands.sent) == 2


async def test_an_already_stored_order_answers_a_repeated_key_from_the_table(client, commands, worker):
    headers = {**CUSTOMER, "Idempotency-Key": "stored"}
    first = await (await client.post("/v1/orders", json=ORDER, headers=headers)).json()
    sent = commands.sent[0]
    worker.orders[first["order_id"]] = an_order(first["order_id"]).model_copy(
        update={"placed_event_id": sent.event_id, "status": "CONFIRMED", "placed_at": sent.occurred_at})
    again = await (await client.post("/v1/orders", json=ORDER, headers=headers)).json()
    assert again == {"order_id": first["order_id"], "status": "CONFIRMED"}
    assert len(commands.sent) == 1


@dataclass
class Clock:
    """``api.orders``' clock, set by a test (the rest of the process keeps the real one)."""

    now: float

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """Half a second before a boundary between two of ``Idempotency-Key``'s TTL periods."""
    ttl = SOLO.idempotency_ttl_s
    clock = Clock((time.time() // ttl) * ttl - 0.5)
    monkeypatch.setattr("api.orders.time", clock)
    return clock


async def test_a_retry_just_after_the_keys_ttl_period_ends_is_the_order_still_on_its_way(client, commands, clock):
    """The first request's order is not in the table yet when its retry comes, a second later but in the next
    TTL period (whose order id is another): the owner's memory of what it sent answers for it."""
    headers = {**CUSTOMER, "Idempotency-Key": "checkout-boundary"}
    first = await (await client.post("/v1/orders", json=ORDER, headers=headers)).json()
    clock.now += 1.0
    retry = await client.post("/v1/orders", json=ORDER, headers=headers)
    assert retry.status == 202
    assert (await retry.json())["order_id"] == first["order_id"]
    other = await client.post("/v1/orders", json={**ORDER, "currency": "USD"}, headers=headers)
    assert other.status == 409
    assert (await other.json())["error"]["details"] == {"order_id": first["order_id"]}
    assert [m.order_id for m in commands.sent] == [first["order_id"]]


async def test_a_retry_after_the_boundary_while_the_first_is_being_sent_is_told_to_retry(client, commands, clock):
    commands.release = asyncio.Event()  # the broker has not acknowledged the first when the retry comes
    headers = {**CUSTOMER, "Idempotency-Key": "checkout-slow"}
    first = asyncio.ensure_future(client.post("/v1/orders", json=ORDER, headers=headers))
    await commands.sending.wait()  # the first holds its order's lock while it is being sent
    clock.now += 1.0
    retry = await client.post("/v1/orders", json=ORDER, headers=headers)
    assert retry.status == 503
    assert retry.headers["Retry-After"] == "1"
    commands.release.set()
    placed = await (await first).json()
    again = await client.post("/v1/orders", json=ORDER, headers=headers)
    assert (await again.json())["order_id"] == placed["order_id"]
    assert len(commands.sent) == 1


async def test_an_order_that_never_reached_its_table_holds_its_key_across_the_boundary_a_minute_at_most(
        client, commands, clock):
    """Its command was dead-lettered (say): after ``PLACEMENT_IN_FLIGHT_S`` the key in the new period places one."""
    headers = {**CUSTOMER, "Idempotency-Key": "checkout-lost"}
    first = await (await client.post("/v1/orders", json=ORDER, headers=headers)).json()
    clock.now += 0.5 + PLACEMENT_IN_FLIGHT_S + 0.1
    later = await (await client.post("/v1/orders", json=ORDER, headers=headers)).json()
    assert later["order_id"] != first["order_id"]
    assert len(commands.sent) == 2


async def test_a_long_poll_asks_the_worker_to_wait_and_answers_with_what_it_got(client, worker):
    response = await client.get("/v1/orders/o-1?wait=2.5", headers=CUSTOMER)
    assert response.status == 200
    assert worker.waited == [("o-1", 2.5)]


@pytest.mark.parametrize("wait", ["-1", "31", "soon"])
async def test_a_bad_wait_is_a_422(client, wait):
    assert (await client.get(f"/v1/orders/o-1?wait={wait}", headers=CUSTOMER)).status == 422


async def test_a_customer_cancels_their_pending_order(client, commands):
    response = await client.post("/v1/orders/o-1/cancel", headers=CUSTOMER)
    assert response.status == 202
    (sent,) = commands.sent
    assert isinstance(sent, CancelOrder)
    assert (sent.order_id, sent.requested_by) == ("o-1", "c-1")


async def test_a_cancel_right_after_placing_waits_for_the_order_to_be_stored(client, commands, worker):
    """Placed (202) a moment ago, the order is not stored yet: the cancel waits for it, not a 404 that leaves the
    order to be confirmed and charged."""
    worker.stored_meanwhile["o-new"] = an_order().model_copy(update={"order_id": "o-new"})
    response = await client.post("/v1/orders/o-new/cancel", headers=CUSTOMER)
    assert response.status == 202
    (sent,) = commands.sent
    assert isinstance(sent, CancelOrder) and sent.order_id == "o-new"
    assert worker.waited == [("o-new", orders_module.CANCEL_WAIT_S)]


async def test_a_cancel_of_an_order_never_stored_is_a_404_after_the_wait(client, commands, monkeypatch):
    monkeypatch.setattr(orders_module, "CANCEL_WAIT_S", 0.2)
    started = time.monotonic()
    assert (await client.post("/v1/orders/o-none/cancel", headers=CUSTOMER)).status == 404
    assert commands.sent == []
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("order_id", ["o-none", "o-1"])  # none, or another customer's: answered alike
async def test_a_cancel_that_finds_no_order_of_its_caller_while_the_saga_is_behind_is_a_503_to_retry(
    client, commands, worker, monkeypatch, order_id
):
    """An order accepted before the wait may still be on its way to the orders flow: a 404 would be final, and the
    order charged. The answer depends on the load alone, so it tells nothing of whether the order exists."""
    monkeypatch.setattr(orders_module, "CANCEL_WAIT_S", 0.05)
    worker.queue_s = 2.5
    response = await client.post(f"/v1/orders/{order_id}/cancel", headers=bearer("c-2", "customer"))
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert "may not be stored yet" in (await response.json())["error"]["message"]
    assert commands.sent == []
    worker.queue_s = 0.4
    assert (await client.post(f"/v1/orders/{order_id}/cancel", headers=bearer("c-2", "customer"))).status == 404


async def test_cancelling_another_customers_order_is_a_404_and_sends_nothing(client, commands, monkeypatch):
    monkeypatch.setattr(orders_module, "CANCEL_WAIT_S", 0.2)
    assert (await client.post("/v1/orders/o-1/cancel", headers=bearer("c-2", "customer"))).status == 404
    assert commands.sent == []


async def test_cancelling_after_dispatch_is_a_409_with_the_reason(client, commands, worker):
    worker.orders["o-1"] = an_order().model_copy(update={"status": "SHIPPED"})
    response = await client.post("/v1/orders/o-1/cancel", headers=CUSTOMER)
    assert response.status == 409
    assert "dispatch" in (await response.json())["error"]["message"]
    assert commands.sent == []


async def test_cancelling_a_cancelled_order_is_a_202_that_sends_nothing(client, commands, worker):
    """Nothing is left to cancel, and the orders flow would ignore the command; sent, it could land after the order
    was forgotten (its retention ran out meanwhile) and be dead-lettered as about an unknown order."""
    worker.orders["o-1"] = an_order().model_copy(update={"status": "CANCELLED", "cancel_reason": "payment_declined"})
    response = await client.post("/v1/orders/o-1/cancel", headers=CUSTOMER)
    assert response.status == 202
    assert (await response.json())["status"] == "CANCELLED"
    assert response.headers["Location"] == "/v1/orders/o-1"
    assert commands.sent == []


async def test_a_customer_lists_their_orders_page_by_page(client, worker):
    for n in range(5):
        worker.orders[f"o-p{n}"] = an_order(f"o-p{n}").model_copy(update={"placed_at": 100 + n})
    seen: list[str] = []
    cursor = None
    while True:
        url = "/v1/customers/c-1/orders?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url, headers=CUSTOMER)).json()
        seen += [o["order_id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["o-p4", "o-p3", "o-p2", "o-p1", "o-p0", "o-1"]


async def test_another_customers_list_is_a_404(client):
    assert (await client.get("/v1/customers/c-1/orders", headers=bearer("c-2", "customer"))).status == 404


async def test_a_forged_cursor_is_a_422(client):
    assert (await client.get("/v1/customers/c-1/orders?cursor=zzz", headers=CUSTOMER)).status == 422


async def test_only_an_admin_changes_the_catalog(client, commands):
    product = {"name": "Keyboard", "unit_price_cents": 4999, "currency": "EUR"}
    assert (await client.put("/v1/products/KB-001", json=product, headers=CUSTOMER)).status == 403
    assert commands.sent == []
    response = await client.put("/v1/products/KB-001", json=product, headers=ADMIN)
    assert response.status == 202
    (sent,) = commands.sent
    assert isinstance(sent, UpsertProduct)
    assert (sent.sku, sent.unit_price_cents, sent.active) == ("KB-001", 4999, True)


async def test_the_catalog_lists_by_sku(client, worker):
    for sku in ("B", "A", "C"):
        worker.catalog[sku] = ProductState(sku=sku, name=sku, unit_price_cents=1, currency="EUR", active=True,
                                           updated={"event_id": "e", "at": 0})
    page = await (await client.get("/v1/products?limit=2", headers=CUSTOMER)).json()
    assert [p["sku"] for p in page["items"]] == ["A", "B"]
    rest = await (await client.get(f"/v1/products?cursor={page['next_cursor']}", headers=CUSTOMER)).json()
    assert [p["sku"] for p in rest["items"]] == ["C"]


async def test_a_stock_adjustment_that_would_take_reserved_stock_is_a_409(client, commands, worker):
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=5, reserved=4)
    response = await client.post("/v1/stock/KB-001/adjustments", json={"delta": -2, "reason": "count"},
                                 headers=ADMIN)
    assert response.status == 409
    assert commands.sent == []
    response = await client.post("/v1/stock/KB-001/adjustments", json={"delta": 10, "reason": "delivery"},
                                 headers=ADMIN)
    assert response.status == 202
    assert (await response.json())["available"] == 11
    assert isinstance(commands.sent[0], AdjustStock)


async def test_a_stock_adjustment_with_an_idempotency_key_is_one_adjustment_however_often_it_is_sent(
    client, commands, worker
):
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=5)
    url, body = "/v1/stock/KB-001/adjustments", {"delta": 3, "reason": "delivery"}
    first = await client.post(url, json=body, headers={**ADMIN, "Idempotency-Key": "delivery-77"})
    again = await client.post(url, json=body, headers={**ADMIN, "Idempotency-Key": "delivery-77"})
    other = await client.post(url, json=body, headers={**ADMIN, "Idempotency-Key": "delivery-78"})
    other_sku = await client.post("/v1/stock/MS-002/adjustments", json=body,
                                  headers={**ADMIN, "Idempotency-Key": "delivery-77"})
    assert [r.status for r in (first, again, other, other_sku)] == [202, 202, 202, 202]
    ids = [m.event_id for m in commands.sent]
    assert ids[0] == ids[1] and len(set(ids)) == 3  # a repeat in flight: the inventory drops the second
    assert all(isinstance(m, AdjustStock) and m.causation_id == m.event_id for m in commands.sent)

    worker.adjustments["KB-001", ids[0]] = adjustment_body(3, "delivery")
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=8, adjusted=8)
    applied = await client.post(url, json=body, headers={**ADMIN, "Idempotency-Key": "delivery-77"})
    assert applied.status == 200
    assert (await applied.json())["on_hand"] == 8  # as it is: not counted twice
    assert len(commands.sent) == 4

    bad = await client.post(url, json=body, headers={**ADMIN, "Idempotency-Key": "no spaces"})
    assert bad.status == 422 and len(commands.sent) == 4


@pytest.mark.parametrize("key", [".", "..", "....", "x" * 201, "a b"])
async def test_an_idempotency_key_that_could_not_name_its_resource_in_a_url_is_a_422(client, commands, worker, key):
    """``GET /v1/stock/{sku}/adjustments/{key}`` reads an adjustment back by its key: ``.`` and ``..`` are not a
    path segment's name there (URLs normalise them away), so no request may use one."""
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=5)
    adjustment = await client.post("/v1/stock/KB-001/adjustments", json={"delta": 1, "reason": "count"},
                                   headers={**ADMIN, "Idempotency-Key": key})
    order = await client.post("/v1/orders", json=ORDER, headers={**CUSTOMER, "Idempotency-Key": key})
    assert (adjustment.status, order.status) == (422, 422)
    assert "not all dots" in (await adjustment.json())["error"]["message"]
    assert commands.sent == []


async def test_a_key_with_dots_and_something_else_is_fine(client, commands, worker):
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=5)
    for key in ("a.", "..a", "delivery.2026-12-01", "x" * 200):
        response = await client.post("/v1/stock/KB-001/adjustments", json={"delta": 1, "reason": "count"},
                                     headers={**ADMIN, "Idempotency-Key": key})
        assert response.status == 202, key
    assert len(commands.sent) == 4


async def test_an_idempotency_key_used_for_another_adjustment_is_a_409_in_flight_and_once_applied(
    aiohttp_client, client, commands, worker
):
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=5)
    url, key = "/v1/stock/KB-001/adjustments", {**ADMIN, "Idempotency-Key": "delivery-77"}
    first = await client.post(url, json={"delta": 3, "reason": "delivery"}, headers=key)
    assert first.status == 202
    for other in ({"delta": 4, "reason": "delivery"}, {"delta": 3, "reason": "count"}):
        conflict = await client.post(url, json=other, headers=key)
        assert conflict.status == 409  # in flight: the owner remembers what the key said
        error = (await conflict.json())["error"]
        assert error["code"] == "conflict" and error["details"] == {"sku": "KB-001", "key": "delivery-77"}
    assert len(commands.sent) == 1
    elsewhere = await client.post("/v1/stock/MS-002/adjustments", json={"delta": 4, "reason": "count"}, headers=key)
    assert elsewhere.status == 202  # a key names an adjustment of its SKU

    # Applied: an API that did not send it (another process, or after a restart) knows it from the stock.
    fresh = await aiohttp_client(init_app(SOLO, worker, commands))
    event_id = adjustment_id("KB-001", "delivery-77")
    worker.adjustments["KB-001", event_id] = adjustment_body(3, "delivery")
    assert (await fresh.post(url, json={"delta": 4, "reason": "delivery"}, headers=key)).status == 409
    assert (await fresh.post(url, json={"delta": 3, "reason": "delivery"}, headers=key)).status == 200
    worker.adjustments["KB-001", event_id] = None  # stored before bodies were kept: it cannot tell
    assert (await fresh.post(url, json={"delta": 4, "reason": "delivery"}, headers=key)).status == 200
    assert len(commands.sent) == 2


async def test_two_adjustments_under_one_key_at_once_send_the_first_and_refuse_the_other(client, commands, worker):
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=5)
    url, key = "/v1/stock/KB-001/adjustments", {**ADMIN, "Idempotency-Key": "delivery-77"}
    answers = await both_at_the_broker(client, commands, client.app[ADJUSTING],
                                       client.post(url, json={"delta": 3, "reason": "delivery"}, headers=key),
                                       client.post(url, json={"delta": 4, "reason": "delivery"}, headers=key))
    assert [a.status for a in answers] == [202, 409]
    assert [m.delta for m in commands.sent] == [3]  # type: ignore[attr-defined]
    assert client.app[ADJUSTING].locks == {}  # nothing kept per key once its requests are answered


async def test_an_adjustment_the_broker_did_not_take_leaves_its_key_free(client, commands, worker):
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=5)
    url, key = "/v1/stock/KB-001/adjustments", {**ADMIN, "Idempotency-Key": "delivery-77"}
    commands.broker_down = True
    assert (await client.post(url, json={"delta": 3, "reason": "delivery"}, headers=key)).status == 503
    commands.broker_down = False
    assert (await client.post(url, json={"delta": 4, "reason": "delivery"}, headers=key)).status == 202
    assert [m.delta for m in commands.sent] == [4]  # type: ignore[attr-defined]


async def test_an_adjustment_sent_long_ago_and_never_counted_no_longer_holds_its_key(client, commands, worker):
    """Refused (the stock went to orders meanwhile) or lost: after a while, the key takes another body."""
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=5)
    url, key = "/v1/stock/KB-001/adjustments", {**ADMIN, "Idempotency-Key": "delivery-77"}
    assert (await client.post(url, json={"delta": 3, "reason": "delivery"}, headers=key)).status == 202
    adjusting = client.app[ADJUSTING]
    event_id = adjustment_id("KB-001", "delivery-77")
    said, at = adjusting.recent[event_id]
    adjusting.recent[event_id] = (said, at - ADJUSTMENT_IN_FLIGHT_S - 1)
    assert (await client.post(url, json={"delta": 4, "reason": "delivery"}, headers=key)).status == 202
    assert [m.delta for m in commands.sent] == [3, 4]  # type: ignore[attr-defined]


async def test_an_adjustment_is_found_by_its_idempotency_key_once_the_stock_counts_it(client, commands, worker):
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=8, adjusted=8)
    url = "/v1/stock/KB-001/adjustments/delivery-77"
    assert (await client.get(url, headers=ADMIN)).status == 404  # not applied yet
    worker.adjustments["KB-001", adjustment_id("KB-001", "delivery-77")] = adjustment_body(3, "delivery")
    found = await client.get(url, headers=ADMIN)
    assert found.status == 200
    body = await found.json()
    assert (body["key"], body["event_id"], body["stock"]["on_hand"]) == (
        "delivery-77", adjustment_id("KB-001", "delivery-77"), 8)
    assert (await client.get(url, headers=CUSTOMER)).status == 403
    assert (await client.get("/v1/stock/KB-001/adjustments/no%20spaces", headers=ADMIN)).status == 404
    assert (await client.get("/v1/stock/KB-001/adjustments/delivery-78", headers=ADMIN)).status == 404
    assert commands.sent == []


WRITE_OFF_REFUSED = "adjusting KB-001 by -10 would leave -2 available (on hand 10, reserved 2)"


def refused_by_the_inventory(worker: FakeWorker, key: str, delta: int = -10, reason: str = "write-off") -> None:
    """The inventory flow refused the adjustment sent under ``key``: orders queued ahead of it reserved 2."""
    worker.refusals["KB-001", adjustment_id("KB-001", key)] = (adjustment_body(delta, reason), WRITE_OFF_REFUSED)
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=10, reserved=2, adjusted=10)


async def keyed_adjustment(client: Any, key: str, delta: int = -10, reason: str = "write-off") -> Any:
    return await client.post("/v1/stock/KB-001/adjustments", json={"delta": delta, "reason": reason},
                             headers={**ADMIN, "Idempotency-Key": key})


async def test_an_adjustment_the_inventory_refused_is_a_409_with_the_reason_when_looked_up(client, commands, worker):
    """Sent (202) in the moment orders reserved the SKU: its key's lookup answers the refusal, not a 404 for ever."""
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=10, adjusted=10)
    assert (await keyed_adjustment(client, "wo")).status == 202
    url = "/v1/stock/KB-001/adjustments/wo"
    assert (await client.get(url, headers=ADMIN)).status == 404  # not decided yet
    refused_by_the_inventory(worker, "wo")
    looked_up = await client.get(url, headers=ADMIN)
    assert looked_up.status == 409
    error = (await looked_up.json())["error"]
    assert error["code"] == "conflict" and WRITE_OFF_REFUSED in error["message"]
    assert error["details"] == {"sku": "KB-001", "key": "wo", "reason": WRITE_OFF_REFUSED}
    spec = await (await client.get("/openapi.json")).json()
    assert "409" in spec["paths"]["/v1/stock/{sku}/adjustments/{key}"]["get"]["responses"]


async def test_an_adjustment_the_inventory_refused_is_that_409_again_when_sent_again_under_its_key(
        client, commands, worker):
    """The key's first body counts, as for one applied (200): nothing is sent, and a new key is a new adjustment."""
    refused_by_the_inventory(worker, "wo")
    again = await keyed_adjustment(client, "wo")
    assert again.status == 409
    assert (await again.json())["error"]["details"] == {"sku": "KB-001", "key": "wo", "reason": WRITE_OFF_REFUSED}
    assert (await keyed_adjustment(client, "wo", delta=-8)).status == 409  # another body under a refused key
    assert commands.sent == []
    anew = await keyed_adjustment(client, "wo-2", delta=-8)
    assert anew.status == 202 and (await anew.json())["available"] == 0


async def test_an_adjustment_the_inventory_refused_does_not_hold_back_those_sent_after_it(client, commands, worker):
    """It was counted as sent and not counted for a minute: a write-off of 3 of the 8 available was a false 409."""
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=10, adjusted=10)
    assert (await keyed_adjustment(client, "wo")).status == 202
    refused_by_the_inventory(worker, "wo")
    later = await keyed_adjustment(client, "c-1", delta=-3, reason="count")
    assert later.status == 202, await later.text()
    assert (await later.json())["available"] == 5
    assert [m.delta for m in commands.sent] == [-10, -3]  # type: ignore[attr-defined]


async def test_a_shipment_update_needs_a_shipment(client, commands, worker):
    url = "/v1/shipments/o-1/status"
    pending = await client.post(url, json={"status": "dispatched"}, headers=ADMIN)
    assert pending.status == 409
    assert (await pending.json())["error"]["message"] == "order o-1 has no shipment yet (status PENDING)"
    worker.orders["o-1"] = an_order().model_copy(update={"status": "CANCELLED"})
    cancelled = await client.post(url, json={"status": "dispatched"}, headers=ADMIN)
    assert (await cancelled.json())["error"]["message"] == "order o-1 was cancelled before it had a shipment"
    worker.orders["o-1"] = an_order().model_copy(update={
        "status": "CONFIRMED", "shipment": ShipmentInfo(status="created", tracking_id="T-1")})
    assert (await client.post(url, json={"status": "lost"}, headers=ADMIN)).status == 422
    assert (await client.post(url, json={"status": "dispatched"}, headers=CUSTOMER)).status == 403
    assert (await client.post(url, json={"status": "dispatched"}, headers=ADMIN)).status == 202
    assert [type(m) for m in commands.sent] == [UpdateShipment]


def with_shipment(worker: FakeWorker, order_status: str, shipment_status: str) -> None:
    worker.orders["o-1"] = an_order().model_copy(update={
        "status": order_status, "shipment": ShipmentInfo(status=shipment_status, tracking_id="T-1")})


@pytest.mark.parametrize(
    ("order_status", "shipment_status", "requested", "reason"),
    [
        ("CANCELLED", "cancelled", "dispatched", SHIPMENT_CANCELLED),
        ("CANCELLED", "cancelled", "delivered", SHIPMENT_CANCELLED),
    ],
    ids=["dispatch-after-cancel", "delivered-after-cancel"],
)
async def test_a_shipment_update_shipping_would_refuse_is_a_409_with_its_reason_and_sends_nothing(
    client, commands, worker, order_status, shipment_status, requested, reason
):
    with_shipment(worker, order_status, shipment_status)
    response = await client.post("/v1/shipments/o-1/status", json={"status": requested}, headers=ADMIN)
    assert response.status == 409
    error = (await response.json())["error"]
    assert (error["message"], error["details"]["shipment_status"]) == (reason, shipment_status)
    assert commands.sent == []


@pytest.mark.parametrize(
    ("order_status", "shipment_status", "requested"),
    [
        ("CONFIRMED", "created", "dispatched"),
        ("CONFIRMED", "created", "delivered"),  # right after a dispatch the order has not heard of yet
        ("SHIPPED", "dispatched", "delivered"),
        ("SHIPPED", "dispatched", "dispatched"),
        ("DELIVERED", "delivered", "delivered"),
        ("DELIVERED", "delivered", "dispatched"),
    ],
    ids=["dispatch", "deliver-at-once", "deliver", "dispatch-again", "deliver-again", "dispatch-after-delivery"],
)
async def test_a_shipment_update_shipping_applies_or_repeats_harmlessly_is_sent(
    client, commands, worker, order_status, shipment_status, requested
):
    with_shipment(worker, order_status, shipment_status)
    response = await client.post("/v1/shipments/o-1/status", json={"status": requested}, headers=ADMIN)
    assert response.status == 202
    (sent,) = commands.sent
    assert isinstance(sent, UpdateShipment) and sent.status == requested


async def test_every_response_carries_a_request_id_and_a_sane_one_is_echoed(client):
    mine = await client.get("/healthz", headers={"X-Request-Id": "req-42"})
    assert mine.headers["X-Request-Id"] == "req-42"
    minted = await client.get("/v1/orders/o-1")
    assert len(minted.headers["X-Request-Id"]) == 32
    evil = await client.get("/healthz", headers={"X-Request-Id": "a\u00e9" * 80})
    assert evil.headers["X-Request-Id"] != "a\u00e9" * 80


async def test_a_token_over_its_rate_gets_429_with_retry_after(aiohttp_client, worker, commands):
    strict = SOLO.model_copy(update={"rate_limit_per_s": 0.01, "rate_limit_burst": 2})
    client = await aiohttp_client(init_app(strict, worker, commands))
    answers = [await client.get("/v1/orders/o-1", headers=CUSTOMER) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    assert int(answers[2].headers["Retry-After"]) >= 1
    assert (await client.get("/v1/orders/o-1", headers=bearer("c-9", "customer"))).status == 404  # its own bucket


async def test_a_token_is_one_bucket_however_its_header_is_written(aiohttp_client, worker, commands):
    strict = SOLO.model_copy(update={"rate_limit_per_s": 0.01, "rate_limit_burst": 2})
    client = await aiohttp_client(init_app(strict, worker, commands))
    token = CUSTOMER["Authorization"].removeprefix("Bearer ")
    spellings = [f"Bearer {token}", f"bearer  {token}", f"BEARER {token} ", f"Bearer    {token}"]
    answers = [await client.get("/v1/orders/o-1", headers={"Authorization": header}) for header in spellings]
    assert [a.status for a in answers] == [200, 200, 429, 429]


@pytest.mark.parametrize(
    ("field", "value"),
    [("quantity", True), ("quantity", "3"), ("quantity", 2.5)],
)
async def test_a_quantity_that_is_not_a_json_integer_is_a_422_and_sends_nothing(client, commands, field, value):
    body = {**ORDER, "lines": [{"sku": "KB-001", field: value}]}
    response = await client.post("/v1/orders", json=body, headers=CUSTOMER)
    assert response.status == 422
    assert (await response.json())["error"]["details"][0]["loc"] == ["lines", 0, field]
    assert commands.sent == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/v1/products/KB-001", {"name": "Keyboard", "unit_price_cents": True, "currency": "EUR"}),
        ("PUT", "/v1/products/KB-001", {"name": "Keyboard", "unit_price_cents": "4999", "currency": "EUR"}),
        ("PUT", "/v1/products/KB-001", {"name": "Keyboard", "unit_price_cents": 1, "currency": "EUR", "active": "no"}),
        ("POST", "/v1/stock/KB-001/adjustments", {"delta": True, "reason": "delivery"}),
        ("POST", "/v1/stock/KB-001/adjustments", {"delta": "5", "reason": "delivery"}),
    ],
    ids=["price-bool", "price-text", "active-text", "delta-bool", "delta-text"],
)
async def test_a_number_or_flag_of_another_json_type_is_a_422_and_sends_nothing(client, commands, method, path,
                                                                                body):
    response = await client.request(method, path, json=body, headers=ADMIN)
    assert response.status == 422
    assert commands.sent == []


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/v1/products/KB-001", {"name": "Key\nboard", "unit_price_cents": 1, "currency": "EUR"}, "name"),
        ("PUT", "/v1/products/KB-001", {"name": "\x1b[31mKeyboard", "unit_price_cents": 1, "currency": "EUR"}, "name"),
        ("POST", "/v1/stock/KB-001/adjustments", {"delta": 1, "reason": "delivery\x00"}, "reason"),
        ("POST", "/v1/shipments/o-1/status", {"status": "dispatched", "carrier": "DHL\u0085"}, "carrier"),
        ("POST", "/v1/orders", {**ORDER, "payment": {"token": "tok\r\napprove"}}, "token"),
        ("PUT", "/v1/products/KB-001", {"name": "Key\u2028board", "unit_price_cents": 1, "currency": "EUR"}, "name"),
        ("POST", "/v1/stock/KB-001/adjustments", {"delta": 1, "reason": "refund \u202edenifer"}, "reason"),
        ("POST", "/v1/shipments/o-1/status", {"status": "dispatched", "carrier": "\u2066DHL\u2069"}, "carrier"),
        ("POST", "/v1/orders", {**ORDER, "payment": {"token": "tok_\ufeffapprove"}}, "token"),
    ],
    ids=["newline", "escape", "nul", "c1-next-line", "crlf-token", "line-separator", "bidi-override", "bidi-isolate",
         "byte-order-mark"],
)
async def test_text_with_a_control_character_is_a_422_that_says_so_and_sends_nothing(client, commands, method, path,
                                                                                      body, field):
    headers = CUSTOMER if path == "/v1/orders" else ADMIN
    response = await client.request(method, path, json=body, headers=headers)
    assert response.status == 422
    (detail,) = (await response.json())["error"]["details"]
    assert detail["loc"][-1] == field and "control characters" in detail["msg"]
    assert commands.sent == []


async def test_text_in_any_script_with_punctuation_and_spaces_is_accepted(client, commands):
    # Right-to-left text with its marks (U+200F) too: only the embeddings, overrides and isolates are refused.
    body = {"name": "Clavier « AZERTY » — 日本語, 100 % / מקלדת\u200f (עברית)", "unit_price_cents": 4999,
            "currency": "EUR"}
    response = await client.put("/v1/products/KB-001", json=body, headers=ADMIN)
    assert response.status in (200, 202)
    (sent,) = commands.sent
    assert sent.name == body["name"]


async def test_a_quantity_written_as_a_number_with_no_fraction_is_a_json_integer_as_the_document_says(client,
                                                                                                    commands):
    response = await client.post("/v1/orders", json={**ORDER, "lines": [{"sku": "KB-001", "quantity": 2.0}]},
                                 headers=CUSTOMER)
    assert response.status == 202
    (sent,) = commands.sent
    assert isinstance(sent, PlaceOrder) and sent.lines[0].quantity == 2


async def test_an_expectation_other_than_100_continue_is_a_json_417_and_sends_nothing(client, commands):
    response = await client.post("/v1/orders", json=ORDER, headers={**CUSTOMER, "Expect": "200-ok"})
    assert response.status == 417
    assert (await response.json())["error"]["code"] == "expectation_failed"
    assert len(response.headers["X-Request-Id"]) == 32  # an answer like every other, through the middlewares
    assert commands.sent == []
    continued = await client.post("/v1/orders", json=ORDER, headers={**CUSTOMER, "Expect": "100-continue"})
    assert continued.status == 202


async def test_cors_is_off_by_default(client):
    response = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_with_cors_on_a_browser_of_an_allowed_origin_may_ask_and_read_the_answer(aiohttp_client, worker,
                                                                                        commands):
    shop = "https://shop.example"
    client = await aiohttp_client(init_app(SOLO.model_copy(update={"cors_origins": shop}), worker, commands))
    asking = {"Origin": shop, "Access-Control-Request-Method": "POST",
              "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"}
    preflight = await client.options("/v1/orders", headers=asking)  # no token: a browser sends none here
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == shop
    assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
    assert len(preflight.headers["X-Request-Id"]) == 32  # an answer like every other
    assert {"Authorization", "Content-Type", "Idempotency-Key"} <= set(
        preflight.headers["Access-Control-Allow-Headers"].split(", "))
    assert commands.sent == []
    placed = await client.post("/v1/orders", json=ORDER, headers={**CUSTOMER, "Origin": shop})
    assert placed.status == 202 and placed.headers["Access-Control-Allow-Origin"] == shop
    exposed = set(placed.headers["Access-Control-Expose-Headers"].split(", "))
    assert {"Location", "Retry-After", "X-Request-Id"} <= exposed
    read = await client.options("/v1/orders/o-1", headers={**asking, "Access-Control-Request-Method": "GET"})
    assert read.status == 204 and read.headers["Access-Control-Allow-Methods"] == "GET"
    # Another origin's preflight is refused as any OPTIONS is, and says nothing a browser would let through.
    other = await client.options("/v1/orders", headers={**asking, "Origin": "https://evil.example"})
    assert other.status == 405 and (await other.json())["error"]["code"] == "method_not_allowed"
    assert "Access-Control-Allow-Origin" not in other.headers
    nowhere = await client.options("/v1/nowhere", headers=asking)
    assert nowhere.status == 404 and (await nowhere.json())["error"]["code"] == "not_found"


async def test_the_openapi_document_is_3_1_and_covers_every_public_route(client):
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"] == "3.1.0"
    assert {"/v1/orders", "/v1/orders/{order_id}", "/v1/orders/{order_id}/cancel", "/v1/customers/{customer_id}/orders",
            "/v1/products", "/v1/products/{sku}", "/v1/stock/{sku}", "/v1/stock/{sku}/adjustments",
            "/v1/shipments/{order_id}/status"} <= set(spec["paths"])
    place = spec["paths"]["/v1/orders"]["post"]
    body_schema = place["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema == {"$ref": "#/components/schemas/PlaceOrderIn"}
    assert spec["components"]["schemas"]["LineIn"]["properties"]["quantity"]["minimum"] == 1
    docs = await client.get("/docs")
    page = await docs.text()
    assert docs.status == 200 and "/v1/orders/{order_id}/cancel" in page
    # The docs page names each body's fields (required ones starred) and which requests need a token.
    assert "PlaceOrderIn: lines*, payment*, currency*, webhook_url, email, phone" in page
    assert "CancelIn (optional): reason" in page
    assert spec["paths"]["/v1/orders/{order_id}/cancel"]["post"]["requestBody"]["required"] is False
    assert "<td><code>/healthz</code></td><td>liveness</td><td>no</td>" in page


async def test_the_openapi_document_declares_what_the_middleware_answers_on_every_route(client):
    """A client generated from the document must expect them: a token without a role is a 403 on a customer's route,
    a query parameter given twice a 400 on a GET, and /readyz says whether Kafka answers."""
    spec = await (await client.get("/openapi.json")).json()
    no_role = await client.get("/v1/products", headers=bearer("c-1"))
    assert no_role.status == 403
    twice = await client.get("/v1/products?limit=1&limit=2", headers=CUSTOMER)
    assert twice.status == 400
    products = spec["paths"]["/v1/products"]["get"]["responses"]
    assert {"400", "401", "403", "408", "417", "429"} <= set(products)
    unmet = await client.get("/v1/products", headers={**CUSTOMER, "Expect": "x-foo"})
    assert unmet.status == 417
    assert {"417", "413", "415"} <= set(spec["paths"]["/v1/orders"]["post"]["responses"])
    assert "401" not in spec["paths"]["/readyz"]["get"]["responses"]
    ready = (await (await client.get("/readyz")).json())
    assert set(ready) == set(spec["components"]["schemas"]["ReadyOut"]["properties"])


async def test_an_adjustment_of_zero_is_a_422_and_sends_nothing(client, commands, worker):
    """It would change no stock yet take one of the SKU's 1,000 remembered adjustments (and make a stock record
    for a SKU that has none)."""
    response = await client.post("/v1/stock/KB-001/adjustments", json={"delta": 0, "reason": "count"},
                                 headers={**ADMIN, "Idempotency-Key": "zero"})
    assert response.status == 422
    assert "delta of 0" in json.dumps(await response.json())
    assert commands.sent == []


async def test_an_adjustment_is_checked_against_the_ones_sent_before_it_that_the_stock_does_not_count_yet(
        client, commands, worker):
    """Two write-offs of 5 with 8 available were both answered 202, and the inventory refused the second where no
    client saw it; a delivery answered "available 15" was followed by a 409 for taking 12."""
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=8, adjusted=8)
    url = "/v1/stock/KB-001/adjustments"
    first = await client.post(url, json={"delta": -5, "reason": "damaged"}, headers={**ADMIN, "Idempotency-Key": "w1"})
    second = await client.post(url, json={"delta": -5, "reason": "damaged"}, headers={**ADMIN, "Idempotency-Key": "w2"})
    assert (first.status, second.status) == (202, 409)
    assert (await second.json())["error"]["details"]["sent_not_counted"] == -5
    again = await client.post(url, json={"delta": -5, "reason": "damaged"}, headers={**ADMIN, "Idempotency-Key": "w1"})
    assert again.status == 202  # a retry of the one in flight is checked once, not twice
    delivery = await client.post(url, json={"delta": 10, "reason": "delivery"}, headers=ADMIN)
    assert (await delivery.json())["available"] == 13
    taken = await client.post(url, json={"delta": -12, "reason": "sold elsewhere"}, headers=ADMIN)
    assert taken.status == 202 and (await taken.json())["available"] == 1
    assert [m.delta for m in commands.sent] == [-5, -5, 10, -12]

    # Counted by the stock now (or refused long ago): no longer outstanding.
    worker.adjustments.update({("KB-001", m.event_id): None for m in commands.sent})
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=1, adjusted=1)
    assert (await client.post(url, json={"delta": -1, "reason": "count"}, headers=ADMIN)).status == 202


async def test_a_retry_of_an_adjustment_in_flight_is_not_checked_against_those_sent_after_it(client, commands, worker):
    """It was checked when first sent; the inventory counts it once, before those sent after it."""
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=8, adjusted=8)
    url = "/v1/stock/KB-001/adjustments"
    first = await client.post(url, json={"delta": -5, "reason": "damaged"}, headers={**ADMIN, "Idempotency-Key": "w1"})
    second = await client.post(url, json={"delta": -3, "reason": "damaged"}, headers={**ADMIN, "Idempotency-Key": "w2"})
    assert (first.status, second.status) == (202, 202)
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=8, adjusted=8, reserved=1)  # an order came first
    again = await client.post(url, json={"delta": -5, "reason": "damaged"}, headers={**ADMIN, "Idempotency-Key": "w1"})
    assert again.status == 202
    assert commands.sent[0].event_id == commands.sent[2].event_id  # the same adjustment, sent again


async def test_once_an_adjustment_counts_every_one_sent_before_it_is_done(client, commands, worker):
    """Counted or refused: the inventory has them in the order sent. (The stock remembers only a SKU's last 1,000
    adjustment ids, so an earlier one may count without the API seeing it.)"""
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=10, adjusted=10)
    url = "/v1/stock/KB-001/adjustments"
    for delta in (-4, -4):
        assert (await client.post(url, json={"delta": delta, "reason": "count"}, headers=ADMIN)).status == 202
    last = commands.sent[-1].event_id
    worker.adjustments["KB-001", last] = None  # the last one counts; the first is out of the stock's memory
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=2, adjusted=2)
    taken = await client.post(url, json={"delta": -2, "reason": "count"}, headers=ADMIN)
    assert taken.status == 202 and (await taken.json())["available"] == 0


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PUT", "/v1/products/a%20b", {"name": "Mug", "unit_price_cents": 1299, "currency": "EUR"}),
    ("POST", "/v1/stock/a%20b/adjustments", {"delta": 5, "reason": "delivery"}),
])
async def test_a_write_that_would_name_a_sku_badly_is_a_422_and_sends_nothing(client, commands, method, path, body):
    """It does not look up something missing (a 404 said "no such sku"): it would make a name that cannot be one."""
    response = await client.request(method, path, json=body, headers=ADMIN)
    assert response.status == 422, await response.text()
    assert "'a b' cannot be a sku" in (await response.json())["error"]["message"]
    assert commands.sent == []
    assert (await client.get("/v1/products/a%20b", headers=ADMIN)).status == 404  # a read of it names nothing


async def test_health_checks_answer_head_as_load_balancers_ask(client):
    for path in ("/healthz", "/readyz"):
        response = await client.head(path)
        assert response.status == 200, path
        assert await response.read() == b""


@pytest.mark.parametrize(("field", "value", "says"), [
    ("email", "not-an-address", "should be an email address, such as ada@example.com"),
    ("phone", "0151 123", "should be a phone number in E.164 form"),
    ("currency", "eur", "should be a currency code of three capital letters"),
])
async def test_a_value_that_misses_its_pattern_is_told_what_is_asked_not_the_expression(client, field, value, says):
    response = await client.post("/v1/orders", json={**ORDER, field: value}, headers=CUSTOMER)
    assert response.status == 422
    (detail,) = (await response.json())["error"]["details"]
    assert detail["loc"] == [field] and detail["msg"].startswith(says) and "^" not in detail["msg"]


# --- reads answer only what a crash can no longer take back (api/handling.py, ``stored``) -------------------------

READS = [
    ("GET", "/v1/orders/o-1", CUSTOMER),
    ("GET", "/v1/orders/o-1?wait=1", CUSTOMER),
    ("GET", "/v1/customers/c-1/orders", CUSTOMER),
    ("GET", "/v1/products/KB-001", CUSTOMER),
    ("GET", "/v1/products", CUSTOMER),
    ("GET", "/v1/stock/KB-001", ADMIN),
    ("GET", "/v1/orders/o-1/timeline", CUSTOMER),
    ("GET", "/v1/stock/KB-001/adjustments/k-1", ADMIN),
]


def _stocked(worker: FakeWorker) -> None:
    worker.catalog["KB-001"] = ProductState(sku="KB-001", name="Keyboard", unit_price_cents=4900, currency="EUR",
                                            active=True, updated={"event_id": "e", "at": 0})
    worker.stocks["KB-001"] = StockState(sku="KB-001", on_hand=5)
    worker.adjustments["KB-001", adjustment_id("KB-001", "k-1")] = adjustment_body(5, "initial")


class WrittenMeanwhile(FakeWorker):
    """A worker whose tables take a write each time they are read: a read answered from a mark taken before it
    would wait for too little."""

    def _read(self) -> None:
        self.writes += 1

    def order(self, order_id):
        self._read()
        return super().order(order_id)

    def order_raw(self, order_id):
        self._read()
        return super().order_raw(order_id)

    def orders_of(self, customer_id, *, after, limit):
        self._read()
        return super().orders_of(customer_id, after=after, limit=limit)

    def stock(self, sku):
        self._read()
        return super().stock(sku)

    def product(self, sku):
        self._read()
        return super().product(sku)

    def products(self, *, after, limit):
        self._read()
        return super().products(after=after, limit=limit)

    async def wait_settled(self, order_id, timeout_s):
        self._read()
        return await super().wait_settled(order_id, timeout_s)


@pytest.mark.parametrize(("method", "url", "auth"), READS)
async def test_a_read_waits_until_the_table_writes_made_up_to_it_are_stored(aiohttp_client, method, url, auth):
    worker = WrittenMeanwhile(orders={"o-1": an_order()})
    _stocked(worker)
    client = await aiohttp_client(init_app(SOLO, worker, RecordingCommands()))
    response = await client.request(method, url, headers=auth)
    assert response.status == 200, await response.text()
    assert worker.writes >= 1
    assert [mark for mark, _ in worker.marks] == [worker.writes]  # taken after the reads, waited for once


@pytest.mark.parametrize(("method", "url", "auth"), READS)
async def test_a_read_of_what_kafka_has_not_acknowledged_yet_is_a_503_to_retry(client, worker, method, url, auth):
    _stocked(worker)
    worker.unstored = True
    response = await client.request(method, url, headers=auth)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    body = await response.json()
    assert body["error"]["code"] == "unavailable" and "not stored in Kafka yet" in body["error"]["message"]


@pytest.mark.parametrize(("url", "body"), [
    ("/v1/orders/o-1/cancel", {"reason": "customer_request"}),
    ("/v1/shipments/o-1/status", {"status": "dispatched"}),
])
async def test_a_command_checked_against_state_not_stored_yet_is_a_503_and_sends_nothing(
    client, worker, commands, url, body
):
    worker.orders["o-1"] = an_order().model_copy(update={"status": "CONFIRMED", "shipment": ShipmentInfo(
        tracking_id="trk-1", status="created")})
    worker.unstored = True
    response = await client.post(url, json=body, headers=ADMIN)
    assert response.status == 503
    assert commands.sent == []
    worker.unstored = False
    assert (await client.post(url, json=body, headers=ADMIN)).status == 202
    assert len(commands.sent) == 1


async def test_a_body_shorter_than_its_content_length_is_a_408_and_the_connection_closes_at_once(client, commands,
                                                                                                 monkeypatch):
    monkeypatch.setattr("api.errors.BODY_READ_TIMEOUT_S", 0.3)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        head = "".join(f"{name}: {value}\r\n" for name, value in {
            **CUSTOMER, "Host": "streamcart", "Content-Type": "application/json", "Content-Length": "100",
        }.items())
        writer.write(f"POST /v1/orders HTTP/1.1\r\n{head}\r\n".encode() + b'{"lines": ')  # 10 of the 100 bytes
        await writer.drain()
        # To the end: the server closed the connection right after its answer (aiohttp would go on waiting for the
        # rest of the body for 10 s, its "lingering", before closing).
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    assert b"\r\nConnection: close\r\n" in rest
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "request_timeout"
    assert "did not arrive within 0.3 s" in body["error"]["message"]
    assert commands.sent == []


@pytest.mark.parametrize("body", [
    b'{"lines": [{"sku": "KB-001", "quantity": 1}], "payment": {"token": "tok_approve"}, "currency": "EUR",'
    b' "currency": "USD"}',
    b'{"lines": [{"sku": "KB-001", "quantity": 1, "quantity": 5}], "payment": {"token": "tok_approve"}}',
], ids=["top-level", "nested"])
async def test_a_body_naming_a_key_twice_is_a_400_and_sends_nothing(client, commands, body):
    response = await client.post("/v1/orders", data=body, headers={**CUSTOMER, "Content-Type": "application/json"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "bad_request"
    assert "twice" in error["message"]
    assert commands.sent == []


async def test_an_order_the_broker_did_not_confirm_in_time_is_answered_with_its_id_not_as_refused(client, commands):
    """A stalled broker (paused 5.6 s) wrote three orders, confirmed and captured them, while their clients were told
    "the broker refused the command": a client retrying as a 503 invites placed and paid each order twice."""
    commands.unconfirmed = True
    response = await client.post("/v1/orders", json=ORDER, headers=CUSTOMER)
    assert response.status == 503
    error = (await response.json())["error"]
    (placed,) = commands.sent
    assert (error["code"], error["details"]) == ("outcome_unknown", {"order_id": placed.order_id})
    assert response.headers["Location"] == f"/v1/orders/{placed.order_id}"
    assert "may have been placed" in error["message"] and "refused" not in error["message"]


@pytest.mark.parametrize("state", ["rebalancing", "stopping"])
async def test_a_new_order_is_not_taken_while_the_worker_s_flows_are_not_running(client, worker, commands, state):
    """In a rebalance, while it reads its tables back, or stopping, a worker's saga flows handle nothing: the gate
    has no measure of how far behind they are (it reads as idle), so a new order is refused, nothing sent, as one
    with an Idempotency-Key already was (seen live: a restarted worker took orders while reading its tables back,
    as the other worker refused them with the saga 8 s behind)."""
    if state == "rebalancing":
        worker.is_ready = False
    else:
        worker.is_stopping = True
    response = await client.post("/v1/orders", json=ORDER, headers=CUSTOMER)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert (await response.json())["error"]["code"] == "unavailable"
    assert commands.sent == []


async def test_readiness_says_not_ready_while_the_api_cannot_reach_kafka(client, commands):
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["kafka"] is True
    commands.reachable = lambda: False  # type: ignore[attr-defined]
    unready = await client.get("/readyz")
    assert unready.status == 503
    assert (await unready.json())["kafka"] is False
    assert "streamcart_kafka_reachable 0.0" in await (await client.get("/metrics")).text()
