"""The gateway client against the gateway's own aiohttp app on a test server (no mocks of HTTP)."""

import pytest
from aiohttp import web

from streamcart.domain.payments import AUTHORIZATION_CAPTURED, GatewayCall, Outcome
from streamcart.gateway.client import ClientPolicy, GatewayClient
from streamcart.gateway.server import init_app
from streamcart.tracing import new_traceparent, span, trace_id

FAST = ClientPolicy(attempt_timeout_s=0.5, attempts=4, backoff_initial_s=0.001, backoff_max_s=0.005,
                    breaker_threshold=3, breaker_reset_s=60)


def authorize(order_id: str, token: str = "tok_approve", amount: int = 1000) -> GatewayCall:
    return GatewayCall(operation="authorize", idempotency_key=order_id, amount_cents=amount, currency="EUR",
                       payment_token=token)


@pytest.fixture
async def gateway(aiohttp_server, tmp_path):
    return await aiohttp_server(init_app(tmp_path / "journal.jsonl"))


@pytest.fixture
async def client(gateway):
    client = GatewayClient(str(gateway.make_url("")), FAST)
    yield client
    await client.close()


async def ledger(client: GatewayClient) -> list[dict]:
    async with client._session.get(client.base_url + "/v1/authorizations") as response:
        return (await response.json())["authorizations"]


async def test_an_approved_authorization_carries_its_id(client):
    result = await client.execute(authorize("o-1"))
    assert result.outcome == Outcome.APPROVED
    assert result.authorization_id and result.authorization_id.startswith("auth_")


async def test_a_declined_card_is_an_answer_with_the_reason(client):
    result = await client.execute(authorize("o-2", "tok_decline"))
    assert (result.outcome, result.reason) == (Outcome.DECLINED, "card_declined")


async def test_transient_failures_are_retried_into_one_authorization(client):
    result = await client.execute(authorize("o-3", "tok_flaky_2"))
    assert result.outcome == Outcome.APPROVED
    assert [a["idempotency_key"] for a in await ledger(client)] == ["o-3"]


async def test_a_gateway_slower_than_the_timeout_is_unavailable(client):
    result = await client.execute(authorize("o-4", "tok_slow_3000"))
    assert result.outcome == Outcome.UNAVAILABLE


async def test_capture_then_refund_by_authorization_id(client):
    auth = await client.execute(authorize("o-5"))
    capture = GatewayCall("capture", "o-5", 1000, "EUR", authorization_id=auth.authorization_id)
    refund = GatewayCall("refund", "o-5", 1000, "EUR", authorization_id=auth.authorization_id)
    assert (await client.execute(capture)).outcome == Outcome.APPROVED
    assert (await client.execute(refund)).outcome == Outcome.APPROVED
    assert [a["status"] for a in await ledger(client)] == ["refunded"]


async def test_a_void_by_idempotency_key_finds_and_voids_the_authorization(client):
    await client.execute(authorize("o-6"))
    void = GatewayCall("void", "o-6", 1000, "EUR", payment_token="tok_approve")
    assert (await client.execute(void)).outcome == Outcome.APPROVED
    assert [a["status"] for a in await ledger(client)] == ["voided"]


async def test_a_void_by_key_that_finds_its_authorization_captured_says_so_and_changes_nothing(client):
    auth = await client.execute(authorize("o-6c"))
    await client.execute(GatewayCall("capture", "o-6c", 1000, "EUR", authorization_id=auth.authorization_id))
    void = GatewayCall("void", "o-6c", 1000, "EUR", payment_token="tok_approve")
    result = await client.execute(void)
    assert (result.outcome, result.reason) == (Outcome.DECLINED, AUTHORIZATION_CAPTURED)
    assert [a["status"] for a in await ledger(client)] == ["captured"]


async def test_the_breaker_opens_after_repeated_failures_and_fails_fast(aiohttp_server):
    async def always_503(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "down"}}, status=503)

    app = web.Application()
    app.router.add_post("/v1/authorizations", always_503)
    server = await aiohttp_server(app)
    client = GatewayClient(str(server.make_url("")), FAST)
    try:
        first = await client.execute(authorize("o-7"))
        second = await client.execute(authorize("o-8"))
        assert first.outcome == second.outcome == Outcome.UNAVAILABLE
        assert second.reason == "gateway_circuit_open"
        assert client.breaker_state == "opened"
    finally:
        await client.close()


async def test_each_call_carries_a_child_of_the_span_being_handled(client):
    parent = new_traceparent()
    with span(parent, "test") as handling:
        await client.execute(authorize("o-trace"))
    (entry,) = await ledger(client)
    assert trace_id(entry["traceparent"]) == trace_id(parent)
    assert entry["traceparent"] not in {parent, handling}
