"""Requests between workers: the forwarded-by mark counts on a worker's proof, never on a client's word.

Two workers over aiohttp's test servers: worker 1 (``peer``) is a real server; worker 0 (``client``) finds it at
its worker URL. A request a worker forwards, or sends to gather a list, is not rate-limited again, not forwarded
again, and is answered with the receiver's part of a list only.
"""

import time

import pytest

from api.app import SERVED_BY, init_app
from api.routing import FORWARDED_HEADER, PROOF_HEADER, PeerProof
from streamcart.domain.catalog import ProductState
from tests.component.test_api_orders import SECRET, SETTINGS, FakeWorker, an_order, bearer

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


def a_product(sku: str) -> ProductState:
    return ProductState(sku=sku, name=sku, unit_price_cents=1, currency="EUR", active=True,
                        updated={"event_id": "e", "at": 0})


@pytest.fixture
async def peer(aiohttp_server):
    """Worker 1: product B and order o-2 are its own (its owner URL is its own worker URL in ``SETTINGS``)."""
    worker = FakeWorker(index=1, owner=SETTINGS.worker_url(1), orders={"o-2": an_order("o-2")},
                        catalog={"B": a_product("B")})
    return await aiohttp_server(init_app(SETTINGS, worker))


@pytest.fixture
async def client(aiohttp_client, peer):
    """Worker 0 of two: product A is its own, every order is ``peer``'s."""
    settings = SETTINGS.model_copy(update={"api_port": peer.port - 1, "advertised_host": peer.host,
                                           "rate_limit_per_s": 0.01, "rate_limit_burst": 2})
    worker = FakeWorker(owner=settings.worker_url(1), catalog={"A": a_product("A")})
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


async def test_an_order_as_stored_is_given_to_a_worker_only(aiohttp_client, peer):
    """The stored order carries the payment token and the contact details: a client never gets it, even with a
    token that may see the order; a worker asking on its behalf does (the idempotency check of a placement)."""
    owner = await aiohttp_client(peer)
    path = "/internal/v1/orders/o-2"
    assert (await owner.get(path, headers=CUSTOMER)).status == 404
    assert (await owner.get(path, headers=FORGED["no-proof"]())).status == 404
    asked = await owner.get(path, headers=genuine(f"GET {path}"))
    assert asked.status == 200
    assert (await asked.json())["payment_token"] == "tok_approve"
