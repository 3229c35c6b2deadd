"""The HTTP API on the real stack with two workers (issue 6): commands, routing, long-polls, idempotency, auth.

Every request here goes over HTTP to a worker process; commands travel through Kafka and the saga answers.
"""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from api.auth import issue_token
from schemas.messages import MAX_LINE_QUANTITY, PlaceOrder
from streamcart.commands import reindex_orders, stored_order_ids
from streamcart.ids import new_id
from streamcart.settings import Settings
from tests.integration.support import admin_token, poll, read_topic, worker_metric
from tests.integration.test_saga import Shop
from tests.integration.test_saga_failures import settle_all


@pytest.fixture(scope="module")
def shop(stack, settings, codec) -> Shop:
    return Shop(settings, codec)


def call(url: str, method: str = "GET", body: Any = None, token: str | None = None,
         headers: dict[str, str] | None = None, timeout_s: float = 40) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None else {}),
        **({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {}),
    })
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"null")


def place(url: str, body: Any, token: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """POST an order as a client should: a 503 (the saga still catching up on what an earlier test left, or a
    rebalance) is tried again after its Retry-After, for up to a minute."""
    deadline = time.monotonic() + 60
    while True:
        status, answer_headers, answer = call(url, "POST", body, token, headers)
        if status != 503 or time.monotonic() > deadline:
            return status, answer_headers, answer
        time.sleep(float(answer_headers.get("Retry-After", "1")))


def customer(settings: Settings, name: str | None = None) -> tuple[str, str]:
    subject = name or f"c-{new_id()[:8]}"
    return subject, issue_token(settings.jwt_secret.get_secret_value(), subject, ["customer"])


def stocked_sku(shop: Shop, stock: int = 100, price: int = 1250) -> str:
    sku = f"SKU-{new_id()[:8]}"
    shop.product(sku, price=price, stock=stock)
    return sku


def order_body(sku: str, quantity: int = 1, token: str = "tok_approve") -> dict:
    return {"lines": [{"sku": sku, "quantity": quantity}], "payment": {"token": token}, "currency": "EUR"}


def test_an_order_placed_on_one_worker_is_long_polled_on_the_other_until_confirmed(shop, settings):
    sku = stocked_sku(shop)
    _, token = customer(settings)
    status, headers, placed = place(f"{settings.worker_url(1)}/v1/orders", order_body(sku, 2), token)
    assert status == 202, placed
    assert headers["Location"] == f"/v1/orders/{placed['order_id']}"
    status, _, order = call(f"{settings.worker_url(0)}{headers['Location']}?wait=30", token=token)
    assert (status, order["status"]) == (200, "CONFIRMED"), order
    assert order["total_cents"] == 2 * 1250  # the catalog's price, not the client's


def test_a_long_poll_answers_with_the_outcome_when_it_comes_not_at_its_deadline(shop, settings, codec):
    """The wake-up itself (event-driven, at once) is tests/unit/agents/test_order_watch.py's; here, through both
    workers (one forwarding), the answer is the outcome and comes with the event, long before ``wait=30`` ends."""
    sku = stocked_sku(shop)
    _, token = customer(settings)
    _, _, placed = place(f"{settings.worker_url(0)}/v1/orders", order_body(sku), token)
    order_id = placed["order_id"]
    answers: list[tuple[float, Any]] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(lambda w=w: (call(f"{settings.worker_url(w)}/v1/orders/{order_id}?wait=30",
                                                 token=token), time.time())) for w in range(settings.workers)]
        for future in futures:
            (status, _, body), answered_at = future.result()
            assert (status, body["status"]) == (200, "CONFIRMED"), body
            answers.append((answered_at, body))

    def confirmed(records: list) -> bool:
        return any(r.key() == order_id.encode() and b"OrderConfirmed" in _type_name(codec, r) for r in records)

    records = read_topic(settings, shop.topics.order_events, until=confirmed, timeout_s=30)
    (event,) = [r for r in records if r.key() == order_id.encode() and b"OrderConfirmed" in _type_name(codec, r)]
    event_at = event.timestamp()[1] / 1000
    for answered_at, _ in answers:  # one answered by the owner, one forwarded through the other worker
        assert answered_at - event_at < 5, f"answered {answered_at - event_at:.1f} s after the event"


def _type_name(codec, record) -> bytes:
    try:
        return type(codec.decode(record.value())).__name__.encode()
    except Exception:  # another test's poison record
        return b""


def test_a_cancel_sent_to_either_worker_is_applied_by_the_owner(shop, settings):
    sku = stocked_sku(shop)
    _, token = customer(settings)
    for worker in range(settings.workers):
        _, _, placed = place(f"{settings.worker_url(0)}/v1/orders", order_body(sku, token="tok_slow_3000"),
                            token)
        order_id = placed["order_id"]
        # The order must be stored before it can be cancelled: wait until the owner knows it.
        status, _, _ = call(f"{settings.worker_url(worker)}/v1/orders/{order_id}?wait=0", token=token)
        deadline = time.monotonic() + 10
        while status == 404 and time.monotonic() < deadline:
            status, _, _ = call(f"{settings.worker_url(worker)}/v1/orders/{order_id}", token=token)
        status, _, body = call(f"{settings.worker_url(worker)}/v1/orders/{order_id}/cancel", "POST", token=token)
        assert status == 202, body
        _, _, order = call(f"{settings.worker_url(1 - worker)}/v1/orders/{order_id}?wait=30", token=token)
        assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "customer_request"), order
        shop.quiet_stock(sku)  # the cancel released the order's reservation (it fails after 30 s otherwise)


def test_two_identical_requests_to_different_workers_at_once_place_one_order(shop, settings, codec):
    sku = stocked_sku(shop)
    _, token = customer(settings)
    key = {"Idempotency-Key": f"checkout-{new_id()}"}
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(
            lambda w: call(f"{settings.worker_url(w % settings.workers)}/v1/orders", "POST", order_body(sku), token,
                           key),
            range(4),
        ))
    assert {a[0] for a in answers} == {202}, answers
    order_ids = {a[2]["order_id"] for a in answers}
    assert len(order_ids) == 1
    (order_id,) = order_ids
    _, _, order = call(f"{settings.worker_url(0)}/v1/orders/{order_id}?wait=30", token=token)
    assert order["status"] == "CONFIRMED"
    assert [h["event"] for h in order["history"]].count("OrderPlaced") == 1

    def placements(records: list) -> list:
        return [r for r in records if r.key() == order_id.encode()]

    # Every PlaceOrder that reached Kafka for this key is the same command (same event id): the saga saw one.
    found = placements(read_topic(settings, shop.topics.order_commands, until=lambda rs: bool(placements(rs)),
                                  timeout_s=30))
    assert len({codec.decode(r.value()).event_id for r in found if isinstance(codec.decode(r.value()),
                                                                               PlaceOrder)}) == 1
    other = order_body(sku, quantity=2)
    status, _, body = place(f"{settings.worker_url(1)}/v1/orders", other, token, key)
    assert status == 409, body


def test_a_customers_orders_are_gathered_from_both_workers_page_by_page(shop, settings):
    sku = stocked_sku(shop)
    subject, token = customer(settings)
    placed = {place(f"{settings.worker_url(0)}/v1/orders", order_body(sku), token)[2]["order_id"]
              for _ in range(7)}
    for order_id in placed:
        assert call(f"{settings.worker_url(0)}/v1/orders/{order_id}?wait=30", token=token)[0] == 200
    seen: list[tuple[int, str]] = []
    cursor = ""
    while True:
        status, _, page = call(f"{settings.worker_url(1)}/v1/customers/{subject}/orders?limit=3{cursor}",
                               token=token)
        assert status == 200, page
        seen += [(-o["placed_at"], o["order_id"]) for o in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    # Each once, newest first (the customer index's order in each worker's partitions, merged).
    assert sorted(o for _, o in seen) == sorted(placed) and len(seen) == len(placed)
    assert seen == sorted(seen)

    # Reindexing (an upgraded stack's one-off) finds these orders in the orders changelog and changes nothing.
    assert placed <= set(stored_order_ids(settings))
    progress: list[str] = []
    assert reindex_orders(settings, on_progress=progress.append) >= len(placed)
    assert progress and progress[-1].startswith("sent ")
    again = call(f"{settings.worker_url(0)}/v1/customers/{subject}/orders?limit=50", token=token)[2]
    assert [(-o["placed_at"], o["order_id"]) for o in again["items"]] == seen


def test_the_auth_matrix(shop, settings):
    sku = stocked_sku(shop)
    owner, token = customer(settings)
    _, _, placed = place(f"{settings.worker_url(0)}/v1/orders", order_body(sku), token)
    url = f"{settings.worker_url(1)}/v1/orders/{placed['order_id']}?wait=30"
    secret = settings.jwt_secret.get_secret_value()
    now = int(time.time())
    claims = {"sub": owner, "roles": ["customer"], "exp": now + 60}
    forged_none = jwt.encode(claims, key=None, algorithm="none")
    cases = {
        "missing": (None, 401),
        "malformed": ("not.a.jwt", 401),
        "expired": (jwt.encode({**claims, "exp": now - 3600}, secret, algorithm="HS256"), 401),
        "wrong signature": (jwt.encode(claims, "another-secret-0123456789abcdef0123", algorithm="HS256"), 401),
        "alg none": (forged_none, 401),
        "another customer": (customer(settings)[1], 404),
        "the customer": (token, 200),
        "admin": (admin_token(settings), 200),
    }
    answers = {name: call(url, token=t)[0] for name, (t, _) in cases.items()}
    assert answers == {name: want for name, (_, want) in cases.items()}
    product = {"name": "x", "unit_price_cents": 1, "currency": "EUR"}
    assert call(f"{settings.worker_url(0)}/v1/products/{sku}", "PUT", product, token)[0] == 403


def test_bad_input_changes_nothing(shop, settings):
    sku = stocked_sku(shop, stock=5)
    _, token = customer(settings)
    for body in ({"lines": []}, {**order_body(sku), "total_cents": 1}, {**order_body(sku), "currency": "eur"}):
        status, _, answer = call(f"{settings.worker_url(0)}/v1/orders", "POST", body, token)
        assert status == 422 and set(answer["error"]) == {"code", "message", "details"}
    assert shop.quiet_stock(sku)["reserved"] == 0
    status, _, answer = call(f"{settings.worker_url(0)}/v1/stock/{sku}/adjustments", "POST",
                             {"delta": -6, "reason": "write-off"}, admin_token(settings))
    assert status == 409, answer
    assert shop.quiet_stock(sku)["on_hand"] == 5


def test_a_stock_adjustment_sent_again_with_its_idempotency_key_is_applied_once(shop, settings):
    """A client that retries an adjustment (a timeout, a second worker) must not count the delivery twice: the key
    names one event id, which the inventory remembers past later adjustments of the SKU."""
    sku = stocked_sku(shop, stock=5)
    token = admin_token(settings)

    def adjust(worker: int, key: str, delta: int, allowed: tuple[int, ...] = (200, 202)) -> int:
        status, _, answer = call(f"{settings.worker_url(worker)}/v1/stock/{sku}/adjustments", "POST",
                                 {"delta": delta, "reason": "delivery"}, token, {"Idempotency-Key": key})
        assert status in allowed, answer
        return status

    assert adjust(0, "delivery-1", 3) == 202
    adjust(1, "delivery-1", 3)  # 202 while the first is in flight (the inventory drops it), 200 once applied
    adjust(1, "delivery-2", 1)
    adjust(0, "delivery-3", 1)
    # The SKU's commands are applied in order: once the later two count, both copies of the first were handled.
    stock = poll(lambda: (s := shop.stock(sku))["adjusted"] >= 10 and s, timeout_s=30, what="the adjustments")
    assert (stock["on_hand"], stock["adjusted"]) == (10, 10)
    assert adjust(1, "delivery-1", 3) == 200  # applied, and not the latest: answered from the SKU's memory
    assert adjust(0, "delivery-3", 1) == 200
    # The same key with another delta is another adjustment: refused, from the latest and from the memory alike.
    assert adjust(1, "delivery-3", 2, allowed=(409,)) == 409
    assert adjust(0, "delivery-1", 4, allowed=(409,)) == 409
    assert shop.stock(sku)["on_hand"] == 10
    for worker, key, found in ((0, "delivery-1", 200), (1, "delivery-3", 200), (1, "delivery-4", 404)):
        status, _, answer = call(f"{settings.worker_url(worker)}/v1/stock/{sku}/adjustments/{key}", token=token)
        assert status == found, answer
        assert found == 404 or (answer["key"], answer["stock"]["on_hand"]) == (key, 10)


# --- schemathesis: every documented operation, generated inputs, zero 5xx, every answer matches the schema ---

def _number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _each_sku_within_limit(lines: list[Any]) -> list[Any]:
    """The generated ``lines`` without those that take their SKU over :data:`MAX_LINE_QUANTITY` units in all: the
    one rule of an order's lines that JSON Schema cannot say (the document's description of ``lines`` says it, and
    an order breaking it is a 422). A SKU's first line always fits."""
    totals: dict[str, float] = {}
    kept = []
    for line in lines:
        if isinstance(line, dict) and isinstance(line.get("sku"), str) and _number(line.get("quantity")) \
                and 0 < float(line["quantity"]) <= MAX_LINE_QUANTITY:  # (a line wrong in itself is left as it is)
            total = totals.get(line["sku"], 0) + float(line["quantity"])
            if total > MAX_LINE_QUANTITY:
                continue
            totals[line["sku"]] = total
        kept.append(line)
    return kept


@pytest.mark.timeout(900)
def test_the_api_honours_its_openapi_document(stack, settings):
    """Inputs generated from /openapi.json for every documented operation: never a 5xx, and every answer (status,
    headers, body) is one the document allows."""
    # The live stream never ends, so it cannot be called like the rest: test_dashboard.py reads it.
    schema = schemathesis.openapi.from_url(f"{settings.worker_url(0)}/openapi.json").exclude(path="/v1/stream")
    auth = {"Authorization": f"Bearer {admin_token(settings)}"}
    calls: list[str] = []

    @given(case=schema.as_strategy())
    # Derandomized: every run sends the same inputs, so a 5xx found once is found again (and a pass is a pass).
    @hypothesis_settings(max_examples=150, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        if case.query and "wait" in case.query:  # a valid long-poll may wait 30 s; a second tells as much
            case.query["wait"] = min(float(case.query["wait"]), 1.0) if _number(case.query["wait"]) else \
                case.query["wait"]
        if isinstance(case.body, dict) and isinstance(case.body.get("lines"), list):
            case.body["lines"] = _each_sku_within_limit(case.body["lines"])
        response = case.call_and_validate(base_url=settings.worker_url(0), headers=auth)
        calls.append(case.operation.label)
        assert response.status_code < 500

    check()
    assert len(set(calls)) >= 15, sorted(set(calls))  # it reached (nearly) every operation


def test_new_orders_are_refused_with_503_while_the_saga_is_behind_and_taken_again_once_it_caught_up(shop, settings):
    """Overload (README, "Overload"): a burst written straight to Kafka puts the workers' saga flows seconds
    behind. Meanwhile a new order through the API is a 503 ``overloaded`` with ``Retry-After`` that sends nothing
    (the customer's orders are the 202s alone); once the burst has settled, orders are taken again and confirmed."""
    sku, other = stocked_sku(shop, stock=100_000, price=100), stocked_sku(shop, stock=100_000, price=250)
    burst = [shop.place_order({sku: 1, other: 2}, order_id=f"o-shed-{i}-{new_id()}") for i in range(2_000)]
    shed_before = worker_metric(settings, "streamcart_orders_shed_total", reason="queue")
    for order in burst:
        shop.send_later(order)
    shop.flush()
    name, token = customer(settings)
    accepted: list[str] = []

    def refused() -> tuple[dict[str, str], Any] | None:
        status, headers, body = call(f"{settings.worker_url(len(accepted) % 2)}/v1/orders", "POST",
                                     order_body(sku), token)
        if status == 202:
            accepted.append(body["order_id"])
            return None
        assert status == 503, (status, body)
        return headers, body

    headers, body = poll(refused, timeout_s=60, every_s=0.2, what="a placement refused while the burst is handled")
    assert body["error"]["code"] == "overloaded", body
    assert body["error"]["details"]["queue_s"] > settings.admission_max_delay_s
    assert 1 <= int(headers["Retry-After"]) <= 10
    print(f"refused after {len(accepted)} placements taken: {body['error']['message']}")
    assert worker_metric(settings, "streamcart_orders_shed_total", reason="queue") > shed_before

    settle_all(shop, [o.order_id for o in burst], timeout_s=300)
    taken = poll(lambda: (r := place(f"{settings.worker_url(0)}/v1/orders", order_body(sku), token))[0] == 202
                 and r[2], timeout_s=30, every_s=0.5, what="a placement taken once the burst settled")
    accepted.append(taken["order_id"])
    status, _, last = call(f"{settings.worker_url(1)}/v1/orders/{taken['order_id']}?wait=30", token=token)
    assert (status, last["status"]) == (200, "CONFIRMED"), last
    status, _, page = call(f"{settings.worker_url(0)}/v1/customers/{name}/orders?limit=100", token=token)
    assert status == 200, page
    assert sorted(o["order_id"] for o in page["items"]) == sorted(accepted)  # a refused placement sent nothing
