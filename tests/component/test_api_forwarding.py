"""Requests between workers: the forwarded-by mark counts on a worker's proof, never on a client's word.

Two workers over aiohttp's test servers: worker 1 (``peer``) is a real server; worker 0 (``client``) finds it at
its worker URL. A request a worker forwards, or sends to gather a list, is not rate-limited again, not forwarded
again, and is answered with the receiver's part of a list only.
"""

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from api.app import init_app
from api.handling import SERVED_BY, WORKER
from api.lists import PARTITIONS_HEADER
from api.models import PlaceOrderIn
from api.orders import PLACING, _digest
from api.routing import FORWARDED_HEADER, PROOF_HEADER, PeerProof
from streamcart.domain.catalog import ProductState
from streamcart.ids import derive_id
from tests.component.test_api_commands import RecordingCommands
from tests.component.test_api_orders import SECRET, SETTINGS, FakeWorker, an_order, bearer

#: Two workers: each test puts worker 0's address on a test server of its own (``api_port``).
CLUSTER = SETTINGS.model_copy(update={"workers": 2})

CUSTOMER = bearer("c-1", "customer")
AUTHORIZATION = CUSTOMER["Authorization"]


def genuine(target: str = "GET /v1/products") -> dict[str, str]:
    """What worker 1 sends with the request ``target`` it forwards for this client (signed now: a proof is
    short-lived)."""
    return {**CUSTOMER, **PeerProof(SECRET).headers(1, AUTHORIZATION, target)}


#: What a client may send with GET /v1/products to pass for a worker, each lacking a valid proof (made when the
#: test runs, so that only what each one is about makes it invalid: its proof is not too old).
FORGED = {
    "no-proof": lambda: {**CUSTOMER, FORWARDED_HEADER: "1"},
    "garbage-proof": lambda: {**CUSTOMER, FORWARDED_HEADER: "1", PROOF_HEADER: "1.abc"},
    "another-secret": lambda: {**CUSTOMER, **PeerProof("not-the-cluster-secret").headers(1, AUTHORIZATION,
                                                                                          "GET /v1/products")},
    "another-token": lambda: {**CUSTOMER, **PeerProof(SECRET).headers(1, bearer("c-2", "customer")["Authorization"],
                                                                      "GET /v1/products")},
    "another-request": lambda: genuine("GET /v1/orders/o-2"),  # a proof seen elsewhere, replayed
    "too-old": lambda: {**CUSTOMER, **PeerProof(SECRET).headers(1, AUTHORIZATION, "GET /v1/products",
                                                                now=time.time() - 120)},
}


#: The partitions each of the two workers owns.
FIRST_HALF = list(range(CLUSTER.partitions // 2))
SECOND_HALF = list(range(CLUSTER.partitions // 2, CLUSTER.partitions))


def a_product(sku: str) -> ProductState:
    return ProductState(sku=sku, name=sku, unit_price_cents=1, currency="EUR", active=True,
                        updated={"event_id": "e", "at": 0})


@pytest.fixture
async def peer(aiohttp_server):
    """Worker 1: product B and order o-2 are its own (its owner URL is its own worker URL in ``CLUSTER``)."""
    worker = FakeWorker(index=1, owner=CLUSTER.worker_url(1), orders={"o-2": an_order("o-2")},
                        catalog={"B": a_product("B")}, partitions=SECOND_HALF)
    return await aiohttp_server(init_app(CLUSTER, worker))


@pytest.fixture
async def client(aiohttp_client, peer):
    """Worker 0 of two: product A is its own, every order is ``peer``'s."""
    settings = CLUSTER.model_copy(update={"api_port": peer.port - 1, "advertised_host": peer.host,
                                           "rate_limit_per_s": 0.01, "rate_limit_burst": 2})
    worker = FakeWorker(owner=settings.worker_url(1), catalog={"A": a_product("A")}, partitions=FIRST_HALF)
    return await aiohttp_client(init_app(settings, worker))


@pytest.mark.parametrize("forged", FORGED.values(), ids=FORGED.keys())
async def test_a_forged_forwarded_header_is_rate_limited_like_any_request(client, forged):
    answers = [await client.get("/v1/products", headers=forged()) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]


async def test_a_request_a_worker_sent_is_not_rate_limited_again(client):
    answers = [await client.get("/v1/products", headers=genuine()) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 200]


@pytest.mark.parametrize("claim", [lambda: CUSTOMER, *FORGED.values()], ids=["plain", *FORGED.keys()])
async def test_a_client_gets_every_workers_part_of_a_list_whatever_it_claims(client, claim):
    page = await (await client.get("/v1/products", headers=claim())).json()
    assert [p["sku"] for p in page["items"]] == ["A", "B"]


async def test_a_worker_gathering_a_list_gets_this_workers_part_only(client):
    page = await (await client.get("/v1/products", headers=genuine())).json()
    assert [p["sku"] for p in page["items"]] == ["A"]


@pytest.mark.parametrize("claim", [lambda: CUSTOMER, FORGED["no-proof"]], ids=["plain", "forged"])
async def test_a_key_another_worker_owns_is_answered_there(client, claim):
    response = await client.get("/v1/orders/o-2", headers=claim())
    assert response.status == 200
    assert response.headers[SERVED_BY] == "1"


async def test_a_request_a_worker_forwarded_is_not_forwarded_again(client):
    response = await client.get("/v1/orders/o-2", headers=genuine("GET /v1/orders/o-2"))
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"


async def test_a_request_with_as_many_headers_as_a_client_may_send_is_answered_forwarded_as_directly(
        aiohttp_client, client, peer):
    """A forward adds headers (its proof, the owner's Host, a traceparent…): the owner still reads a request that
    had as many as a client may send, and one over that is refused either way, with the JSON error shape."""
    owner = await aiohttp_client(peer)

    def many(n: int) -> dict[str, str]:
        return {**CUSTOMER, **{f"X-Extra-{i}": "v" for i in range(n)}}

    direct = {n: (await owner.get("/v1/orders/o-2", headers=many(n))).status for n in range(100, 140)}
    most = max(n for n, status in direct.items() if status == 200)
    assert direct[most + 1] == 400 and set(direct.values()) == {200, 400}  # the client's limit is in range
    forwarded = await client.get("/v1/orders/o-2", headers=many(most))
    assert forwarded.status == 200 and forwarded.headers[SERVED_BY] == "1"
    refused = await client.get("/v1/orders/o-2", headers=many(most + 1))
    assert refused.status == 400
    assert (await refused.json())["error"]["code"] == "bad_request"


async def test_an_orders_placement_is_given_to_a_worker_only(aiohttp_client, peer):
    """What an Idempotency-Key check needs of an order (its placement's event id, time and status, nothing of the
    payment token or the contact details): a client never gets it, even with a token that may see the order."""
    owner = await aiohttp_client(peer)
    path = "/internal/v1/placements/o-2"
    assert (await owner.get(path, headers=CUSTOMER)).status == 404
    assert (await owner.get(path, headers=FORGED["no-proof"]())).status == 404
    asked = await owner.get(path, headers=genuine(f"GET {path}"))
    assert asked.status == 200
    assert await asked.json() == {"placed_event_id": "e-1", "placed_at": 1, "status": "PENDING"}
    someone_else = {**bearer("c-2", "customer"),
                    **PeerProof(SECRET).headers(1, bearer("c-2", "customer")["Authorization"], f"GET {path}")}
    assert (await owner.get(path, headers=someone_else)).status == 404


@dataclass
class SplitWorker(FakeWorker):
    """A worker owning every order but those in ``elsewhere`` (order id -> its owner's URL)."""

    elsewhere: dict[str, str] = field(default_factory=dict)

    def owner_url(self, table: str, key: str) -> str | None:
        return self.elsewhere.get(key, self.owner)


async def test_a_key_used_just_before_its_periods_end_names_that_order_on_the_worker_sending_it(
        aiohttp_client, peer, monkeypatch):
    """The first request went to worker 1, which owns the key's order of the period that is ending and sent its
    PlaceOrder; the retry, a second later, falls in the next period, whose order id worker 0 owns: worker 0 asks
    worker 1, which answers from what it sent, before its table holds the order."""
    ttl = CLUSTER.idempotency_ttl_s
    boundary = (time.time() // ttl) * ttl
    monkeypatch.setattr("api.orders.time", SimpleNamespace(time=lambda: boundary + 0.5))
    body = {"lines": [{"sku": "A", "quantity": 1}], "payment": {"token": "tok_approve"}, "currency": "EUR"}
    period = int(boundary // ttl) - 1
    previous_id = derive_id("order", "c-1", "checkout-9", period)
    sent = derive_id("place", "c-1", "checkout-9", period, _digest(PlaceOrderIn.model_validate(body)))
    peer.app[PLACING].sent(previous_id, sent, boundary - 0.5)
    settings = CLUSTER.model_copy(update={"api_port": peer.port - 1, "advertised_host": peer.host})
    worker = SplitWorker(owner=settings.worker_url(0), elsewhere={previous_id: settings.worker_url(1)})
    commands = RecordingCommands()
    client = await aiohttp_client(init_app(settings, worker, commands))
    headers = {**CUSTOMER, "Idempotency-Key": "checkout-9"}
    retry = await client.post("/v1/orders", json=body, headers=headers)
    assert retry.status == 202
    assert await retry.json() == {"order_id": previous_id, "status": "PENDING"}
    other = await client.post("/v1/orders", json={**body, "currency": "USD"}, headers=headers)
    assert other.status == 409
    assert commands.sent == []


async def test_a_list_while_another_worker_is_restoring_its_tables_is_a_503_not_a_shorter_page(client, peer):
    peer.app[WORKER].is_ready = False  # in a rebalance: its part of the catalog would be missing
    response = await client.get("/v1/products", headers=CUSTOMER)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize("peers", [SECOND_HALF[1:], SECOND_HALF + FIRST_HALF[:1]], ids=["unowned", "twice"])
async def test_a_list_is_a_503_unless_every_partition_was_answered_for_once(client, peer, peers):
    """A partition between owners (revoked from one, not assigned to the next yet), or claimed by two workers for
    a moment: the page would skip (or repeat) its items and its cursor would step past them for good."""
    peer.app[WORKER].partitions = peers
    response = await client.get("/v1/products", headers=CUSTOMER)
    assert response.status == 503
    assert "partitions are being reassigned" in (await response.json())["error"]["message"]
    peer.app[WORKER].partitions = SECOND_HALF
    assert (await client.get("/v1/products", headers=CUSTOMER)).status == 200


async def test_a_list_is_whole_while_a_worker_that_is_down_has_its_partitions_taken_over(client, peer):
    """Found live: with one worker down, the other took every partition over, yet every customer's order list and
    the catalog were a 503 until the worker came back, because it did not answer for its part."""
    client.server.app[WORKER].partitions = FIRST_HALF + SECOND_HALF  # it owns them all now ...
    await peer.close()  # ... and the other one is gone
    response = await client.get("/v1/products", headers=CUSTOMER)
    assert response.status == 200, await response.text()
    assert [p["sku"] for p in (await response.json())["items"]] == ["A"]
    client.server.app[WORKER].partitions = FIRST_HALF  # its partitions unowned: no page that skips them
    response = await client.get("/v1/products", headers=CUSTOMER)
    assert response.status == 503
    assert "1 worker(s) gave no part" in (await response.json())["error"]["message"]


async def test_a_workers_part_of_a_list_says_which_partitions_it_answered_for(aiohttp_client, peer):
    owner = await aiohttp_client(peer)
    part = await owner.get("/v1/products", headers=genuine())
    assert part.headers[PARTITIONS_HEADER] == ",".join(map(str, SECOND_HALF))


async def test_every_keyed_read_says_which_worker_answered_it(client):
    """Not only an order's: a product's (and a stock's, an adjustment's, a timeline's) read names its owner."""
    response = await client.get("/v1/products/B", headers=CUSTOMER)
    assert response.status == 200 and response.headers[SERVED_BY] == "1"
    long_poll = await client.get("/v1/orders/o-2?wait=1", headers=CUSTOMER)  # a long-poll, forwarded too
    assert long_poll.status == 200 and long_poll.headers[SERVED_BY] == "1"


async def test_a_read_forwarded_to_an_owner_that_does_not_answer_is_a_503_within_its_margin(
        aiohttp_client, aiohttp_server, monkeypatch):
    """An owner frozen (SIGSTOP, seen live: a plain GET through the other worker took 40.6 s to its 503) holds a
    forwarded read no longer than its long-poll and READ_MARGIN_S (shortened here)."""
    import asyncio

    from aiohttp import web

    import api.routing

    monkeypatch.setattr(api.routing, "READ_MARGIN_S", 0.5, raising=False)
    frozen = web.Application()

    async def never(request: web.Request) -> web.Response:
        await asyncio.sleep(4)  # (longer than the margin; the test server waits for it as it closes)
        return web.Response()

    frozen.router.add_route("*", "/{tail:.*}", never)
    owner = await aiohttp_server(frozen)
    settings = CLUSTER.model_copy(update={"api_port": owner.port - 1, "advertised_host": owner.host})
    client = await aiohttp_client(init_app(settings, FakeWorker(owner=settings.worker_url(1))))
    began = time.monotonic()
    response = await client.get("/v1/orders/o-2", headers=CUSTOMER)
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "unavailable"
    assert time.monotonic() - began < 3


async def test_a_list_is_not_held_up_by_a_frozen_peer_when_this_worker_owns_every_partition(
        aiohttp_client, aiohttp_server):
    """Seen live: worker 0 SIGSTOPped, worker 1 took its partitions over, yet each GET /v1/products on worker 1
    waited for the frozen worker 0 (up to 9 s) though worker 1 alone covered every partition."""
    import asyncio

    from aiohttp import web

    frozen = web.Application()
    asked: list[str] = []

    async def never(request: web.Request) -> web.Response:
        asked.append(request.path)
        await asyncio.sleep(4)  # (the test server waits for it as it closes)
        return web.Response()

    frozen.router.add_route("*", "/{tail:.*}", never)
    other = await aiohttp_server(frozen)
    settings = CLUSTER.model_copy(update={"api_port": other.port - 1, "advertised_host": other.host})
    alone = FakeWorker(catalog={"A": a_product("A"), "B": a_product("B")}, partitions=FIRST_HALF + SECOND_HALF)
    client = await aiohttp_client(init_app(settings, alone))
    began = time.monotonic()
    response = await client.get("/v1/products", headers=CUSTOMER)
    assert response.status == 200
    assert [item["sku"] for item in (await response.json())["items"]] == ["A", "B"]
    assert time.monotonic() - began < 1 and asked == []
