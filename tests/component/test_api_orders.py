"""The API on aiohttp's test client, over a hand-written fake of the worker it runs in."""

import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import api
from api.app import init_app
from api.auth import issue_token
from schemas.messages import OrderLine
from streamcart.domain.catalog import ProductState
from streamcart.domain.causes import Cause
from streamcart.domain.inventory import AdjustmentOutcome, StockState
from streamcart.domain.order_state import CancelRequest, HistoryEntry
from streamcart.domain.orders import OrderState
from streamcart.ids import IDENTIFIER_PATTERN
from streamcart.settings import Settings


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: One worker whose address leads nowhere (a port free when the tests start; the app is served by a test server):
#: what the app asks of its peers (the stream's ticks) never reaches a stack running on this machine.
SETTINGS = Settings(jwt_secret="component-test-secret-0123456789abcdef", api_port=_unused_port(), workers=1)
SECRET = SETTINGS.jwt_secret.get_secret_value()


def bearer(subject: str, *roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, subject, list(roles))}"}


def an_order(order_id: str = "o-1", customer_id: str = "c-1") -> OrderState:
    return OrderState(
        order_id=order_id, customer_id=customer_id, status="PENDING", lines=(OrderLine(sku="A", quantity=1),),
        currency="EUR", payment_token="tok_approve", placed_at=1, deadline=30_001, placed_event_id="e-1",
    )


@dataclass
class FakeWorker:
    index: int = 0
    orders: dict[str, OrderState] = field(default_factory=dict)
    owner: str | None = SETTINGS.worker_url(0)
    is_ready: bool = True
    is_stopping: bool = False
    #: The partitions it owns (every one: a worker alone; split them between workers of a cluster)
    partitions: list[int] = field(default_factory=lambda: list(range(SETTINGS.partitions)))
    stocks: dict[str, StockState] = field(default_factory=dict)
    catalog: dict[str, ProductState] = field(default_factory=dict)
    waited: list[tuple[str, float]] = field(default_factory=list)
    #: (sku, event id) the stock counts -> what the adjustment said (``adjustment_body``; ``None``: not kept)
    adjustments: dict[tuple[str, str], str | None] = field(default_factory=dict)
    #: (sku, event id) the inventory refused -> (what the adjustment said, why it was refused)
    refusals: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    moves_to: str | None = None  # the owner's URL after a long-poll's wait, if its order moves meanwhile
    #: Orders the orders flow stores while a request waits for them (:meth:`wait_stored`)
    stored_meanwhile: dict[str, OrderState] = field(default_factory=dict)
    queue_s: float | None = None  # how far behind its saga flows are (None: idle)
    writes: int = 0  # table writes made so far (its write mark)
    unstored: bool = False  # whether its table writes stay unacknowledged by Kafka
    marks: list[tuple[int, float]] = field(default_factory=list)  # what reads waited for: (write mark, timeout)

    def recovered(self) -> bool:
        return self.is_ready

    def rebalancing(self) -> bool:
        return not self.is_ready

    def stopping(self) -> bool:
        return self.is_stopping

    def assigned(self) -> list[int]:
        return self.partitions if self.is_ready else []

    def ready(self) -> bool:
        return self.is_ready

    def order(self, order_id: str) -> OrderState | None:
        return self.orders.get(order_id)

    def saga_queue_s(self) -> float | None:
        return self.queue_s

    def write_mark(self) -> int:
        return self.writes

    async def stored(self, mark: int, timeout_s: float) -> bool:
        self.marks.append((mark, timeout_s))
        return not self.unstored

    def order_raw(self, order_id: str) -> bytes | None:
        order = self.orders.get(order_id)
        return None if order is None else order.model_dump_json().encode()

    def owner_url(self, table: str, key: str) -> str | None:
        return self.owner

    def stock(self, sku: str) -> StockState | None:
        return self.stocks.get(sku)

    def adjustment_outcome(self, sku: str, event_id: str) -> AdjustmentOutcome | None:
        if (sku, event_id) in self.adjustments:
            return AdjustmentOutcome(self.adjustments[sku, event_id])
        if (sku, event_id) in self.refusals:
            body, reason = self.refusals[sku, event_id]
            return AdjustmentOutcome(body, refused=reason)
        return None

    def product(self, sku: str) -> ProductState | None:
        return self.catalog.get(sku)

    def products(self, *, after: str | None, limit: int) -> list[ProductState]:
        return sorted((p for p in self.catalog.values() if after is None or p.sku > after), key=lambda p: p.sku)[:limit]

    def orders_of(self, customer_id: str, *, after: tuple[int, str] | None, limit: int) -> list[OrderState]:
        mine = sorted(((-o.placed_at, o.order_id), o) for o in self.orders.values() if o.customer_id == customer_id)
        return [o for rank, o in mine if after is None or rank > after][:limit]

    async def wait_stored(self, order_id: str, timeout_s: float) -> OrderState | None:
        self.waited.append((order_id, timeout_s))
        if (late := self.stored_meanwhile.pop(order_id, None)) is not None:  # the orders flow stores it meanwhile
            self.orders[order_id] = late
        return self.orders.get(order_id)

    async def wait_settled(self, order_id: str, timeout_s: float) -> OrderState | None:
        self.waited.append((order_id, timeout_s))
        if self.moves_to is not None:  # a rebalance while it waits gives the order's partition to another worker
            self.owner = self.moves_to
        return self.orders.get(order_id)


@pytest.fixture
def worker() -> FakeWorker:
    return FakeWorker(orders={"o-1": an_order()})


@pytest.fixture
async def client(aiohttp_client, worker):
    return await aiohttp_client(init_app(SETTINGS, worker))


async def test_a_customer_reads_their_own_order(client):
    response = await client.get("/v1/orders/o-1", headers=bearer("c-1", "customer"))
    assert response.status == 200
    body = await response.json()
    assert (body["order_id"], body["status"]) == ("o-1", "PENDING")


async def test_a_long_poll_whose_order_moved_to_another_worker_meanwhile_is_told_to_retry(client, worker):
    """What this worker holds of it after the rebalance is no answer (its store here is gone, or stale): a 503, and
    the retry is forwarded to the new owner."""
    worker.moves_to = SETTINGS.worker_url(1)
    response = await client.get("/v1/orders/o-1?wait=5", headers=bearer("c-1", "customer"))
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert worker.waited == [("o-1", 5.0)]


async def test_an_orders_history_names_each_event_its_time_and_when_it_was_recorded(client, worker):
    worker.orders["o-1"] = an_order().model_copy(update={"history": (
        HistoryEntry(event="OrderPlaced", at=1, event_id="e-1"),  # stored before streamcart kept when
        HistoryEntry(event="StockRejected", at=1, event_id="e-2", detail="A: out_of_stock", recorded_at=43),
    )})
    for wait in ("", "?wait=1"):  # the stored bytes' rendering, and the model's
        response = await client.get(f"/v1/orders/o-1{wait}", headers=bearer("c-1", "customer"))
        assert (await response.json())["history"] == [
            {"event": "OrderPlaced", "time": 1, "event_id": "e-1", "detail": None, "recorded": None},
            {"event": "StockRejected", "time": 1, "event_id": "e-2", "detail": "A: out_of_stock", "recorded": 43},
        ]


async def test_a_timeline_without_the_workers_memory_of_its_steps_times_them_from_the_history(client, worker):
    worker.orders["o-1"] = an_order().model_copy(update={"history": (
        HistoryEntry(event="OrderPlaced", at=1, event_id="e-1", recorded_at=1_004),
        HistoryEntry(event="StockRejected", at=1, event_id="e-2", detail="A: out_of_stock", recorded_at=1_046),
    )})
    response = await client.get("/v1/orders/o-1/timeline", headers=bearer("c-1", "customer"))
    assert response.status == 200
    steps = (await response.json())["steps"]
    assert [(s["event"], s["recorded_at"], s["stage_ms"]) for s in steps] == [
        ("OrderPlaced", 1_004, None), ("StockRejected", 1_046, 42),
    ]


@pytest.mark.parametrize(("status", "asked", "shown"), [
    ("CONFIRMED", True, True), ("CONFIRMED", False, False), ("SHIPPED", True, False),  # asked, then the goods left
])
async def test_a_confirmed_orders_pending_cancel_is_shown_until_shipping_answers(client, worker, status, asked, shown):
    request = CancelRequest(cause=Cause(event_id="x-1", at=2), reason="customer_request") if asked else None
    worker.orders["o-1"] = an_order().model_copy(update={"status": status, "cancel_request": request})
    body = await (await client.get("/v1/orders/o-1", headers=bearer("c-1", "customer"))).json()
    assert (body["status"], body["cancel_requested"]) == (status, shown)


async def test_an_order_not_stored_yet_is_a_404_that_says_how_to_wait_for_it(client):
    response = await client.get("/v1/orders/o-just-placed", headers=bearer("c-1", "customer"))
    assert response.status == 404
    assert "?wait=S waits for it" in (await response.json())["error"]["message"]


async def test_another_customers_order_is_not_found(client):
    response = await client.get("/v1/orders/o-1", headers=bearer("c-2", "customer"))
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_an_admin_reads_any_order(client):
    assert (await client.get("/v1/orders/o-1", headers=bearer("ops", "admin"))).status == 200


async def test_no_token_is_a_401_json_error(client):
    response = await client.get("/v1/orders/o-1")
    assert response.status == 401
    assert set((await response.json())["error"]) == {"code", "message", "details"}


async def test_while_ownership_is_unknown_a_read_is_a_503_with_retry_after(client, worker):
    worker.owner = None
    response = await client.get("/v1/orders/o-1", headers=bearer("c-1", "customer"))
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"


async def test_readiness_reports_assignment_and_is_503_until_ready(client, worker):
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["assigned"] == list(range(SETTINGS.partitions))
    worker.is_ready = False
    assert (await client.get("/readyz")).status == 503


async def test_an_unknown_route_is_a_json_404(client):
    response = await client.get("/nope")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_a_missing_dashboard_file_is_a_json_404_and_a_present_one_is_served(client):
    missing = await client.get("/dashboard/static/nope.js")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "not_found"
    present = await client.get("/dashboard/static/dashboard.js")
    assert (present.status, present.content_type) == (200, "application/javascript")


def test_the_dashboards_order_search_takes_the_ids_the_api_takes():
    """A search for "." or ".." asked another route: the browser folds them into the path."""
    script = (Path(api.__file__).parent / "static" / "dashboard.js").read_text()
    assert f"const ORDER_ID = /{IDENTIFIER_PATTERN}/;" in script
    assert "if (!ORDER_ID.test(orderId))" in script


async def test_metrics_are_exposed_for_prometheus(client):
    response = await client.get("/metrics")
    assert response.status == 200
    assert "python_info" in await response.text()


async def test_a_timeline_of_an_id_that_is_no_identifier_is_a_404_that_does_not_echo_it_whole(client):
    response = await client.get(f"/v1/orders/{'o' * 7000}/timeline", headers=bearer("c-1", "customer"))
    assert response.status == 404
    assert len((await response.json())["error"]["message"]) < 200


async def test_a_worker_still_restoring_its_tables_answers_no_analytics_rather_than_older_ones(client, worker):
    from streamcart.domain.analytics import PartitionView

    views = [PartitionView(partition=0, watermark=120_000, late={}, windows={"revenue/0/60000": {"cents.EUR": 5}})]
    worker.analytics = lambda metric, start, end: views  # type: ignore[attr-defined]
    admin = bearer("ops", "admin")
    ok = await client.get("/v1/internal/analytics/revenue?from=0&to=60000", headers=admin)
    assert ok.status == 200 and (await ok.json())["partitions"][0]["windows"] == {"revenue/0/60000": {"cents.EUR": 5}}
    worker.is_ready = False  # assigned its partitions, reading their changelogs back
    restoring = await client.get("/v1/internal/analytics/revenue?from=0&to=60000", headers=admin)
    assert restoring.status == 503 and restoring.headers["Retry-After"] == "1"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/orders/o-1", None),
    ("GET", "/v1/orders/o-1?wait=1", None),
    ("GET", "/v1/stock/A", None),
    ("POST", "/v1/orders/o-1/cancel", {"reason": "customer_request"}),
    ("POST", "/v1/stock/A/adjustments", {"delta": -1, "reason": "write-off"}),
    ("GET", "/v1/orders/o-1/timeline", None),
])
async def test_the_owner_still_restoring_its_tables_answers_503_not_what_an_empty_table_says(client, worker, method,
                                                                                             path, body):
    # Assigned its partitions, reading their changelogs back: a 404 (or a stock of 0) would pass for final.
    worker.is_ready = False
    response = await client.request(method, path, json=body, headers=bearer("ops", "admin"))
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"] == "1"
    worker.is_ready = True
    assert (await client.request("GET", "/v1/orders/o-1", headers=bearer("ops", "admin"))).status == 200


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/orders/o-1", None),
    ("GET", "/v1/orders/o-1?wait=1", None),
    ("GET", "/v1/stock/A", None),
    ("POST", "/v1/orders/o-1/cancel", {"reason": "customer_request"}),
    ("POST", "/v1/stock/A/adjustments", {"delta": 1, "reason": "delivery"}),
    ("GET", "/v1/customers/c-1/orders", None),
    ("GET", "/v1/products", None),
    ("GET", "/v1/internal/analytics/revenue?from=0&to=60000", None),
])
async def test_a_worker_that_has_begun_to_stop_answers_503_not_what_its_closed_tables_say(client, worker, method,
                                                                                          path, body):
    """Found live: between a worker's SIGTERM and its API's stop, its tables are closed (RocksDB's stores emptied)
    while the API answers: orders that exist were a 404, a stock adjustment's answer showed a stock of its own
    delta, a second body under an Idempotency-Key was a 202; and a long-poll woken then met the stopped producer
    and was a 500."""
    worker.is_stopping = True
    response = await client.request(method, path, json=body, headers=bearer("ops", "admin"))
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"] == "1"
    assert "this worker is stopping" in (await response.json())["error"]["message"]


async def test_a_long_polls_wait_is_no_request_latency_but_a_plain_read_is(client):
    """The latency histogram is the server's time: a long-poll that waited 30 s for its order made every route's
    p99 on Grafana the clients' patience."""
    from prometheus_client import REGISTRY

    def observed() -> float:
        return REGISTRY.get_sample_value("streamcart_http_request_seconds_count",
                                         {"route": "/v1/orders/{order_id}", "method": "GET"}) or 0.0

    def answered() -> float:
        return REGISTRY.get_sample_value("streamcart_http_requests_total",
                                         {"route": "/v1/orders/{order_id}", "method": "GET", "status": "200"}) or 0.0

    before, counted = observed(), answered()
    assert (await client.get("/v1/orders/o-1?wait=1", headers=bearer("c-1", "customer"))).status == 200
    assert (observed(), answered()) == (before, counted + 1)  # counted, not timed
    assert (await client.get("/v1/orders/o-1", headers=bearer("c-1", "customer"))).status == 200
    assert observed() == before + 1
    # What the query says is not enough: a ?wait=0.0 read waits for nothing, and is timed.
    assert (await client.get("/v1/orders/o-1?wait=0.0", headers=bearer("c-1", "customer"))).status == 200
    assert observed() == before + 2


# --- long-polls: how many one caller may hold, and what they tell of others' orders --------------------------------

class HeldWorker(FakeWorker):
    """A worker whose long-polls wait until the test lets them go (``release``), counting those that wait."""

    def __init__(self, **kwargs) -> None:
        import asyncio
        super().__init__(**kwargs)
        self.release = asyncio.Event()
        self.holding = 0
        self._changed = asyncio.Condition()

    async def until_holding(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.holding >= n)

    async def until_holding_no_more_than(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.holding <= n)

    async def wait_stored(self, order_id: str, timeout_s: float) -> OrderState | None:
        return await self.wait_settled(order_id, timeout_s)  # held alike

    async def wait_settled(self, order_id: str, timeout_s: float) -> OrderState | None:
        async with self._changed:
            self.holding += 1
            self._changed.notify_all()
        try:
            await self.release.wait()
        finally:
            self.holding -= 1
            async with self._changed:
                self._changed.notify_all()
        return self.orders.get(order_id)


async def held_share(client, worker: HeldWorker, request: bytes) -> list:
    """A caller's whole share of waits, each ``request`` sent raw on a connection of its own (the writers, to drop
    them), once the worker holds them all."""
    import asyncio

    from api.orders import LONG_POLLS_PER_CALLER

    connections = []
    for _ in range(LONG_POLLS_PER_CALLER):
        _, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(request)
        connections.append(writer)
    await asyncio.wait_for(worker.until_holding(LONG_POLLS_PER_CALLER), 10)
    return connections


async def test_one_caller_holds_at_most_its_share_of_long_polls_and_others_are_not_held_up(aiohttp_client):
    """Each long-poll holds a connection to the order's owner for up to 30 s: one caller's hundreds would hold
    every other caller's forwards. Beyond its share a caller gets 429, and only that caller."""
    import asyncio

    from api.orders import LONG_POLLS_PER_CALLER

    worker = HeldWorker(orders={"o-1": an_order(), "o-2": an_order("o-2", "c-2")})
    client = await aiohttp_client(init_app(SETTINGS, worker))
    mine = bearer("c-1", "customer")
    held = [asyncio.ensure_future(client.get("/v1/orders/o-1?wait=30", headers=mine))
            for _ in range(LONG_POLLS_PER_CALLER)]
    await asyncio.wait_for(worker.until_holding(LONG_POLLS_PER_CALLER), 10)
    refused = await client.get("/v1/orders/o-1?wait=30", headers=mine)
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"]["code"] == "too_many_waits"
    assert (await client.get("/v1/orders/o-1", headers=mine)).status == 200  # a plain read is not a long-poll
    other = asyncio.ensure_future(client.get("/v1/orders/o-2?wait=30", headers=bearer("c-2", "customer")))
    await asyncio.wait_for(worker.until_holding(LONG_POLLS_PER_CALLER + 1), 10)  # another caller's waits
    worker.release.set()
    assert [r.status for r in await asyncio.gather(*held, other)] == [200] * (LONG_POLLS_PER_CALLER + 1)
    assert (await client.get("/v1/orders/o-1?wait=30", headers=mine)).status == 200  # its share is back


async def test_a_long_poll_whose_client_went_away_ends_and_gives_its_callers_share_back(aiohttp_client):
    """aiohttp does not cancel a handler whose client disconnected: a long-poll must notice by itself, or its
    caller's next long-polls are refused for up to 30 s with no connection open."""
    import asyncio


    worker = HeldWorker(orders={"o-1": an_order()})
    client = await aiohttp_client(init_app(SETTINGS, worker))
    mine = bearer("c-1", "customer")
    request = (f"GET /v1/orders/o-1?wait=30 HTTP/1.1\r\nHost: x\r\nAuthorization: {mine['Authorization']}\r\n\r\n"
               .encode())
    connections = await held_share(client, worker, request)
    for writer in connections:
        writer.close()
    await asyncio.wait_for(worker.until_holding_no_more_than(0), 10)  # every abandoned wait ended
    again = asyncio.ensure_future(client.get("/v1/orders/o-1?wait=30", headers=mine))
    await asyncio.wait_for(worker.until_holding(1), 10)  # taken, not refused with 429
    worker.release.set()
    assert (await again).status == 200


async def test_a_cancel_waiting_for_its_order_counts_in_its_callers_share_and_ends_when_its_client_goes(
    aiohttp_client
):
    """A cancel of an order not stored yet waits for it like a long-poll: counted in the caller's share, and ended as
    soon as its client goes away (nothing was sent yet)."""
    import asyncio


    worker = HeldWorker(orders={"o-1": an_order()})
    client = await aiohttp_client(init_app(SETTINGS, worker))
    mine = bearer("c-1", "customer")
    request = (f"POST /v1/orders/o-new/cancel HTTP/1.1\r\nHost: x\r\nAuthorization: {mine['Authorization']}\r\n"
               "Content-Length: 0\r\n\r\n").encode()
    connections = await held_share(client, worker, request)
    refused = await client.post("/v1/orders/o-new/cancel", headers=mine)
    assert refused.status == 429 and (await refused.json())["error"]["code"] == "too_many_waits"
    for writer in connections:
        writer.close()
    await asyncio.wait_for(worker.until_holding_no_more_than(0), 10)  # every abandoned wait ended
    again = asyncio.ensure_future(client.get("/v1/orders/o-1?wait=30", headers=mine))
    await asyncio.wait_for(worker.until_holding(1), 10)  # the share is back: taken, not refused with 429
    worker.release.set()
    assert (await again).status == 200


async def test_a_long_poll_on_another_customers_order_answers_as_late_as_one_on_a_missing_order(client, worker):
    """When another customer's order exists, or when it settles, is not told by when the 404 comes: both wait the
    whole wait (a lower bound, which no machine's slowness can break)."""
    import time

    worker.orders["o-1"] = an_order().model_copy(update={"status": "CONFIRMED"})  # settled: no wait for it
    answers = []
    for order_id in ("o-1", "o-missing"):
        started = time.monotonic()
        response = await client.get(f"/v1/orders/{order_id}?wait=0.5", headers=bearer("c-2", "customer"))
        answers.append((response.status, (await response.json())["error"]["code"], time.monotonic() - started))
    assert [(status, code) for status, code, _ in answers] == [(404, "not_found")] * 2
    assert all(took >= 0.5 for _, _, took in answers), answers
    response = await client.get("/v1/orders/o-1?wait=0.5", headers=bearer("c-1", "customer"))
    assert response.status == 200  # its own customer is answered at once (a settled order is not waited for)


async def test_stock_levels_are_an_admins_to_read(client, worker):
    """A SKU's stock says how much of it sold: DESIGN.md §5 gives its reads, like its adjustments, to admins."""
    worker.stocks["A"] = StockState(sku="A", on_hand=40, reserved=3)
    refused = await client.get("/v1/stock/A", headers=bearer("c-1", "customer"))
    assert refused.status == 403 and (await refused.json())["error"]["code"] == "forbidden"
    read = await client.get("/v1/stock/A", headers=bearer("ops", "admin"))
    assert read.status == 200 and (await read.json())["available"] == 37


@pytest.mark.parametrize("path", ["/v1/orders/o-1", "/v1/orders/o-1?wait=1", "/v1/orders/o-1/timeline",
                                  "/v1/products/A", "/v1/stock/A"])
async def test_a_keyed_read_answered_by_its_owner_names_it(client, worker, path):
    worker.catalog["A"] = ProductState(sku="A", name="A", unit_price_cents=1, currency="EUR", active=True,
                                       updated={"event_id": "e", "at": 0})
    worker.stocks["A"] = StockState(sku="A", on_hand=1)
    response = await client.get(path, headers=bearer("ops", "admin"))
    assert response.status == 200 and response.headers["X-Streamcart-Served-By"] == "0"
