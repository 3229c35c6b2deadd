"""`streamcart traffic`: what its shoppers choose, and how a run is summed up."""

from __future__ import annotations

import random
import socket
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from streamcart.errors import StreamcartError
from streamcart.settings import Settings
from streamcart.traffic import AFTER_CONFIRMATION, CARDS, Shoppers, Tally, failed, plan

SKUS = ["KB-001", "MS-002", "MN-003", "HD-004"]


def test_the_same_seed_makes_the_same_shoppers():
    first = [plan(random.Random(7), SKUS) for _ in range(3)]
    again = [plan(random.Random(7), SKUS) for _ in range(3)]
    assert first == again
    assert [plan(random.Random(8), SKUS) for _ in range(3)] != first


def test_every_path_of_the_saga_is_taken_and_each_order_is_one_the_api_accepts():
    rng = random.Random(1)
    plans = [plan(rng, SKUS) for _ in range(2_000)]
    assert {p.token for p in plans} == {card for card, _ in CARDS}
    assert {p.after for p in plans} == {after for after, _ in AFTER_CONFIRMATION}
    assert any(p.cancel_at_once for p in plans) and not all(p.cancel_at_once for p in plans)
    assert Counter(len(p.lines) for p in plans).keys() == {1, 2, 3}
    for p in plans:
        skus = [sku for sku, _ in p.lines]
        assert len(set(skus)) == len(skus) and set(skus) <= set(SKUS)
        assert all(1 <= quantity <= 2 for _, quantity in p.lines)
        assert all(1.0 <= delay <= 4.0 for delay in p.ship_after_s)
    assert Counter(p.token for p in plans).most_common(1)[0][0] == "tok_approve"  # most orders are paid


def test_a_catalog_of_one_still_makes_orders_of_one_line():
    assert {len(plan(random.Random(n), ["ONLY-1"]).lines) for n in range(50)} == {1}


def test_the_progress_line_counts_each_order_once_by_its_last_status():
    tally = Tally(placed=5, status={"a": "DELIVERED", "b": "CANCELLED", "c": "CANCELLED", "d": "PENDING",
                                    "e": "CONFIRMED"},
                  reason={"b": "payment_declined", "c": "customer_request"}, restocks=1)
    assert tally.line() == ("placed 5: 1 confirmed, 0 shipped, 1 delivered, 2 cancelled (customer_request 1, "
                            "payment_declined 1), 1 in flight; 1 restocks")
    tally.errors["place HTTP 429"] += 2
    assert tally.line().endswith("; errors: place HTTP 429 2")


def test_an_order_that_only_goes_forward_never_went_back():
    tally = Tally()
    for status, reason in [("PENDING", None), ("CONFIRMED", None), ("SHIPPED", None), ("DELIVERED", None)]:
        tally.saw("a", status, reason)
    for status, reason in [("PENDING", None), ("CONFIRMED", None), ("CANCELLED", "customer_request")]:
        tally.saw("b", status, reason)
    for status, reason in [("PENDING", None), ("PENDING", None), ("CANCELLED", "timeout"), ("CANCELLED", "timeout")]:
        tally.saw("c", status, reason)
    assert tally.went_back == {}
    assert tally.reason == {"b": "customer_request", "c": "timeout"}


@pytest.mark.parametrize(("seen", "change"), [
    ([("CONFIRMED", None), ("CANCELLED", "timeout")], "CONFIRMED -> CANCELLED (timeout)"),
    ([("CONFIRMED", None), ("PENDING", None)], "CONFIRMED -> PENDING"),
    ([("SHIPPED", None), ("CANCELLED", "customer_request")], "SHIPPED -> CANCELLED (customer_request)"),
    ([("CANCELLED", "payment_declined"), ("CONFIRMED", None)], "CANCELLED -> CONFIRMED"),
    ([("DELIVERED", None), ("SHIPPED", None), ("PENDING", None)], "DELIVERED -> SHIPPED"),  # the first one counts
])
def test_an_order_that_went_back_on_what_it_had_shown_is_named_once_with_the_change(seen, change):
    tally = Tally(placed=1)
    for status, reason in seen:
        tally.saw("o-1", status, reason)
    assert tally.went_back == {"o-1": change}
    assert tally.line().endswith("; 1 went back on what they had shown")


class _Catalog(Shoppers):
    """Shoppers whose catalog is a list (no API)."""

    def __init__(self, active: list[str]) -> None:
        self.active = active

    async def catalog(self) -> list[str]:
        return self.active


async def test_shoppers_leave_the_benchmarks_products_alone_unless_there_is_nothing_else():
    assert await _Catalog(["BENCH-1a-0", "KB-001", "BENCH-API-2", "MS-002"]).shelves(()) == ["KB-001", "MS-002"]
    assert await _Catalog(["BENCH-1a-0"]).shelves(()) == ["BENCH-1a-0"]


async def test_a_sku_asked_for_must_be_an_active_product():
    """`--sku NOPE-1` shopped a SKU the catalog does not have, then "restocked" it: stock without a product."""
    assert await _Catalog(["KB-001", "MS-002"]).shelves(["MS-002"]) == ["MS-002"]
    with pytest.raises(StreamcartError, match="not an active product: NOPE-1"):
        await _Catalog(["KB-001"]).shelves(["KB-001", "NOPE-1"])


async def test_the_catalog_is_read_to_its_last_page():
    """Products come sorted by SKU: after a benchmark, a first page of 500 can be all BENCH-… products."""
    pages = {
        "/v1/products?limit=500": {"items": [{"sku": "BENCH-1", "active": True}], "next_cursor": "BENCH-1"},
        "/v1/products?limit=500&cursor=BENCH-1": {"items": [{"sku": "KB-001", "active": True},
                                                            {"sku": "OLD-1", "active": False}], "next_cursor": None},
    }

    class Paged(Shoppers):
        def __init__(self) -> None:
            self.urls = ["http://worker-0"]
            self.admin = "admin-token"

        async def call(self, method, path, token, body=None, headers=None):
            return 200, pages[path]

    assert await Paged().catalog() == ["BENCH-1", "KB-001"]
    assert await Paged().shelves(()) == ["KB-001"]


def _dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_worker_that_does_not_answer_is_left_for_the_next_one(aiohttp_server):
    """`streamcart drill` kills workers under the shoppers: a refused connection counted as a failed placement
    at once, though the other worker was up (a load balancer would have sent it there)."""
    received: list[str] = []

    async def place(request: web.Request) -> web.Response:
        received.append(request.headers["Idempotency-Key"])
        return web.json_response({"order_id": "o-1"}, status=202)

    app = web.Application()
    app.router.add_post("/v1/orders", place)
    live = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        shoppers = Shoppers(Settings(), session)
        shoppers.urls = [f"http://127.0.0.1:{_dead_port()}", str(live.make_url("")).rstrip("/")]
        assert await shoppers.call("POST", "/v1/orders", "t", {}, {"Idempotency-Key": "k-1"}) == (
            202, {"order_id": "o-1"})
        assert received == ["k-1"]
        shoppers.urls = [f"http://127.0.0.1:{_dead_port()}"]
        status, answer = await shoppers.call("POST", "/v1/orders", "t", {})
    assert status == 0 and "ClientConnectorError" in answer["error"]
    assert failed("place", status) == "place: no answer" and failed("place", 422) == "place: HTTP 422"
