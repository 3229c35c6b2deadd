"""The gateway client against the gateway's own aiohttp app on a test server (no mocks of HTTP)."""

import contextlib
import json

import pytest
from aiohttp import web

from streamcart.domain.payments import AUTHORIZATION_CAPTURED, NOTHING_HELD, GatewayCall, GatewayResult, Outcome
from streamcart.gateway.client import MAX_ANSWER_BYTES, ClientPolicy, GatewayClient
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


OPERATIONS = web.AppKey("operations", list[str])


def answer(key: str, status: str = "approved", authorization_id: str | None = "auth_1", **more: object) -> str:
    """An authorization as the gateway answers it: about ``key``, in ``status``."""
    return json.dumps({"status": status, "idempotency_key": key,
                       **({"authorization_id": authorization_id} if authorization_id is not None else {}), **more})


def odd_gateway(lookup: tuple[int, str], operate: tuple[int, str] = (200, answer("o-odd", "voided"))):
    """A gateway that answers POST /v1/authorizations with ``lookup`` and an operation with ``operate`` (status,
    raw body), and counts the operations asked of it."""
    app = web.Application()
    app[OPERATIONS] = []

    async def authorizations(request: web.Request) -> web.Response:
        return web.Response(status=lookup[0], text=lookup[1], content_type="application/json")

    async def operation(request: web.Request) -> web.Response:
        app[OPERATIONS].append(request.match_info["operation"])
        return web.Response(status=operate[0], text=operate[1], content_type="application/json")

    app.router.add_post("/v1/authorizations", authorizations)
    app.router.add_post("/v1/authorizations/{authorization_id}/{operation}", operation)
    return app


APPROVED_1 = answer("o-odd")


VOIDED = answer("o-odd", "voided", None)


@pytest.mark.parametrize("said", [(200, ""), (201, "[]"), (200, "null"), (200, "{}"), (201, VOIDED),
                                  (201, answer("o-odd", authorization_id=None)), (201, answer("o-odd", "approved", "")),
                                  (201, json.dumps({"status": "approved", "authorization_id": "auth_1"}))],
                         ids=["empty", "list", "null", "no-status", "not-an-authorization", "no-id", "empty-id",
                              "no-key"])
async def test_an_authorization_answer_that_says_no_status_and_id_is_no_approval(aiohttp_server, said):
    """Taken for an approval, the order would be confirmed for money nobody holds (its capture then fails for good);
    it is no answer: tried again, then unavailable."""
    server = await aiohttp_server(odd_gateway(said))
    client = GatewayClient(str(server.make_url("")), FAST)
    try:
        result = await client.execute(authorize("o-odd"))
        if said[1] == VOIDED:  # a repeat of a key whose authorization was voided: holds nothing
            assert (result.outcome, result.reason) == (Outcome.DECLINED, NOTHING_HELD["voided"])
        else:
            assert result.outcome == Outcome.UNAVAILABLE
    finally:
        await client.close()


@pytest.mark.parametrize("authorization_id", ["auth\u0000nul", "../../admin", "auth 1", "auth/1?x=1", "a" * 129,
                                              "\u00e9t\u00e9", 7],
                         ids=["nul", "dot-dot", "space", "path-and-query", "too-long", "non-ascii", "number"])
async def test_an_authorization_id_no_reader_takes_is_no_approval(aiohttp_server, authorization_id):
    """The id goes into the gateway's URLs and the warehouse as it is: a NUL in it would stop the payments sink for
    good (PostgreSQL refuses the row), a slash would capture at another address."""
    said = json.dumps({"status": "approved", "authorization_id": authorization_id, "idempotency_key": "o-odd"})
    server = await aiohttp_server(odd_gateway((201, said)))
    client = GatewayClient(str(server.make_url("")), FAST)
    try:
        assert (await client.execute(authorize("o-odd"))).outcome == Outcome.UNAVAILABLE
        voided = await client.execute(GatewayCall("void", "o-odd", 1000, "EUR", payment_token="tok_approve"))
        assert voided.outcome == Outcome.UNAVAILABLE and server.app[OPERATIONS] == []
    finally:
        await client.close()


@pytest.mark.parametrize(("said", "reason"), [
    ((201, answer("o-odd", "declined", reason="do_not_honor\u0000\n\u001b[31m")), "do_not_honor[31m"),
    ((201, answer("o-odd", "declined", reason="\u0000\u0085")), "declined"),
    ((201, answer("o-odd", "declined", reason=51)), "51"),
    ((201, answer("o-odd", "declined", reason=True)), "declined"),
    ((201, answer("o-odd", "declined", reason="x" * 500)), "x" * 100),
    ((402, '{"error": {"code": "card\\r\\nexpired"}}'), "cardexpired"),
    ((402, '{"error": {"code": ["a"]}}'), "http_402"),
], ids=["control-characters", "only-control-characters", "number", "boolean", "long", "error-code", "error-code-list"])
async def test_a_decline_reason_is_recorded_without_control_characters(aiohttp_server, said, reason):
    server = await aiohttp_server(odd_gateway(said))
    client = GatewayClient(str(server.make_url("")), FAST)
    try:
        assert await client.execute(authorize("o-odd")) == GatewayResult.declined(reason)
    finally:
        await client.close()


@pytest.mark.parametrize("lookup", [(409, '{"error": {"code": "idempotency_conflict"}}'), (401, ""), (404, "{}"),
                                    (200, ""), (200, "[]"), (200, answer("o-odd", authorization_id=None))],
                         ids=["conflict", "unauthorized", "not-found", "empty", "list", "approved-without-id"])
async def test_a_void_by_key_whose_authorization_is_not_found_out_never_settles_as_nothing_held(aiohttp_server, lookup):
    server = await aiohttp_server(odd_gateway(lookup))
    client = GatewayClient(str(server.make_url("")), FAST)
    try:
        result = await client.execute(GatewayCall("void", "o-odd", 1000, "EUR", payment_token="tok_approve"))
        assert result.reason not in NOTHING_HELD.values()
        assert result.outcome in (Outcome.DECLINED, Outcome.UNAVAILABLE)
        assert server.app[OPERATIONS] == []
    finally:
        await client.close()


@pytest.mark.parametrize("refused", [(409, '{"error": {"code": "invalid_state"}}'), (404, ""), (200, "{}")],
                         ids=["invalid-state", "not-found", "no-status"])
async def test_a_void_by_key_refused_or_unanswered_after_its_lookup_is_not_nothing_held(aiohttp_server, refused):
    server = await aiohttp_server(odd_gateway((200, APPROVED_1), refused))
    client = GatewayClient(str(server.make_url("")), FAST)
    try:
        result = await client.execute(GatewayCall("void", "o-odd", 1000, "EUR", payment_token="tok_approve"))
        assert result.reason not in NOTHING_HELD.values()
        assert result.outcome in (Outcome.DECLINED, Outcome.UNAVAILABLE)
        assert server.app[OPERATIONS][0] == "void"
    finally:
        await client.close()


async def test_a_settlement_the_gateway_keeps_failing_does_not_open_the_authorizations_breaker(aiohttp_server):
    """One capture answered 500 for ever (tried again and again for minutes) must not decline every new order."""
    server = await aiohttp_server(odd_gateway((201, answer("o-good")), (500, "")))
    client = GatewayClient(str(server.make_url("")), FAST)
    try:
        for _ in range(2):
            failed = await client.execute(GatewayCall("capture", "o-bad", 1000, "EUR", authorization_id="auth_1"))
            assert failed.outcome == Outcome.UNAVAILABLE
        assert failed.reason == "gateway_circuit_open" and client.breaker_state == "opened"
        assert (await client.execute(authorize("o-good"))).outcome == Outcome.APPROVED
    finally:
        await client.close()


@pytest.mark.parametrize("said", [answer("o-other"), answer("o-odd", amount_cents=1), answer("o-odd", currency="USD"),
                                  answer("o-other", "declined", None, reason="card_declined")],
                         ids=["another-key", "another-amount", "another-currency", "another-keys-decline"])
async def test_an_authorization_answer_about_another_request_is_no_answer(aiohttp_server, said):
    """Found live: a gateway (or a proxy's cache) answering another order's record had the order confirmed and
    captured against an authorization that held nothing for it."""
    server = await aiohttp_server(odd_gateway((200, said)))
    client = GatewayClient(str(server.make_url("")), FAST)
    try:
        assert (await client.execute(authorize("o-odd"))).outcome == Outcome.UNAVAILABLE
        void = await client.execute(GatewayCall("void", "o-odd", 1000, "EUR", payment_token="tok_approve"))
        assert void.outcome == Outcome.UNAVAILABLE and server.app[OPERATIONS] == []
    finally:
        await client.close()


@pytest.mark.parametrize("operation", ["capture", "void", "refund"])
@pytest.mark.parametrize(("said", "taken"), [(answer("o-odd", "{done}", "auth_2"), False),
                                             (answer("o-other", "{done}"), False), (answer("o-odd", "{done}"), True)],
                         ids=["another-authorization", "another-key", "its-own"])
async def test_an_operation_answer_about_another_authorization_is_no_answer(aiohttp_server, operation, said, taken):
    done = {"capture": "captured", "void": "voided", "refund": "refunded"}[operation]
    server = await aiohttp_server(odd_gateway((200, APPROVED_1), (200, said.replace("{done}", done))))
    client = GatewayClient(str(server.make_url("")), FAST)
    expected = GatewayResult.approved("auth_1") if taken else GatewayResult.unavailable()
    try:
        by_id = await client.execute(GatewayCall(operation, "o-odd", 1000, "EUR", authorization_id="auth_1"))
        assert (by_id.outcome, by_id.authorization_id) == (expected.outcome, expected.authorization_id)
        if operation != "capture":  # by key: looked up, then operated on
            by_key = await client.execute(GatewayCall(operation, "o-odd", 1000, "EUR", payment_token="tok_approve"))
            assert (by_key.outcome, by_key.authorization_id) == (expected.outcome, expected.authorization_id)
    finally:
        await client.close()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_not_followed(aiohttp_server, status):
    """Found live: a 301 to another authorization's address was followed (aiohttp turns the POST into a GET of it)
    and its record taken for this order's approval."""
    fetched: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": "/v1/authorizations/auth_1"})

    async def record(request: web.Request) -> web.Response:
        fetched.append(request.method)
        return web.Response(text=answer("o-redirected"), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/authorizations", redirect)
    app.router.add_route("*", "/v1/authorizations/{authorization_id}", record)
    server = await aiohttp_server(app)
    client = GatewayClient(str(server.make_url("")), FAST)
    try:
        assert (await client.execute(authorize("o-redirected"))).outcome == Outcome.UNAVAILABLE
        assert fetched == []
    finally:
        await client.close()


@pytest.mark.parametrize("body", [b"[" * 200_000, b'{"a":' * 100_000], ids=["array", "object"])
async def test_an_answer_nested_too_deep_to_parse_is_transient(aiohttp_server, body):
    """Found live: a RecursionError got past the client, and its AuthorizePayment was dead-lettered with no void
    by key ever sent for it."""
    server = await aiohttp_server(odd_gateway((200, body.decode())))
    client = GatewayClient(str(server.make_url("")), FAST)
    try:
        assert (await client.execute(authorize("o-odd"))).outcome == Outcome.UNAVAILABLE
    finally:
        await client.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["with-length", "chunked"])
async def test_an_answer_larger_than_an_answer_may_be_is_not_taken(aiohttp_server, chunked):
    """Found live: a 4 GB answer streamed into a worker took its memory from 290 MB to 1.7 GB, and kept it. Here
    an approval padded past the limit with white space: read whole, it would parse."""
    body = b" " * (2 * MAX_ANSWER_BYTES) + answer("o-huge").encode()

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(body)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client hung up, as it should
            await response.write(body)
        return response

    app = web.Application()
    app.router.add_post("/v1/authorizations", huge)
    server = await aiohttp_server(app)
    client = GatewayClient(str(server.make_url("")), FAST)
    try:
        assert (await client.execute(authorize("o-huge"))).outcome == Outcome.UNAVAILABLE
    finally:
        await client.close()


@pytest.mark.parametrize("garbage", [True, False], ids=["garbage-for-all", "mixed-up-for-a-few"])
async def test_answers_mixed_up_for_some_orders_do_not_open_the_breaker_for_the_others(aiohttp_server, garbage):
    """Found live: a gateway answering a few orders with other requests' records opened the one authorizations
    breaker, and orders it answered rightly were declined unheard. A gateway answering everyone with what no
    reader takes still opens it."""
    async def authorizations(request: web.Request) -> web.Response:
        key = (await request.json())["idempotency_key"]
        if garbage:
            return web.Response(text="<html>login</html>", content_type="text/html")
        said = {"o-1": answer("o-someone-else"), "o-2": answer("o-2", amount_cents=1),
                "o-3": answer("o-3", currency="USD")}.get(key, answer(key))
        return web.Response(text=said, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/authorizations", authorizations)
    server = await aiohttp_server(app)
    client = GatewayClient(str(server.make_url("")), FAST)  # (the breaker opens after 3 failures)
    try:
        for key in ("o-1", "o-2", "o-3"):
            assert (await client.execute(authorize(key))).outcome == Outcome.UNAVAILABLE
        assert client.breaker_state == ("opened" if garbage else "closed")
        if not garbage:
            assert (await client.execute(authorize("o-good"))) == GatewayResult.approved("auth_1")
    finally:
        await client.close()


async def test_an_open_breaker_no_call_comes_to_says_half_opened_once_its_reset_time_has_passed(aiohttp_server):
    """purgatory moves an open breaker on only when a call comes: with the gateway back and no order coming (the
    waiting payments settled or gave up at their deadlines), the breaker said "opened" for good, and
    streamcart_gateway_breaker_open stayed 1 (the critical alert "calls to the gateway keep failing"). Seen on the
    real stack: 1.0 on both workers for minutes after the gateway answered again, until the next order."""
    import asyncio

    async def always_503(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "down"}}, status=503)

    app = web.Application()
    app.router.add_post("/v1/authorizations", always_503)
    server = await aiohttp_server(app)
    policy = ClientPolicy(attempt_timeout_s=0.5, attempts=4, backoff_initial_s=0.001, backoff_max_s=0.005,
                          breaker_threshold=3, breaker_reset_s=0.2)
    client = GatewayClient(str(server.make_url("")), policy)
    try:
        await client.execute(authorize("o-7"))
        assert client.breaker_state == "opened"
        await asyncio.sleep(0.3)
        assert client.breaker_state == "half-opened"
    finally:
        await client.close()
