"""Webhook URLs come from customers: they must never reach inside our own network. A webhook continues the trace."""

import pytest
from aiohttp import ClientSession, web

from streamcart.domain.causes import Cause
from streamcart.domain.notifications import Channel, Notification
from streamcart.notify.delivery import DeliveryRefused, WebhookProvider, check_webhook_url
from streamcart.tracing import new_traceparent, span, trace_id


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8090/v1/authorizations/auth_x/refund",
        "http://localhost:8080/v1/orders",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8090/",
        "file:///etc/passwd",
        "ftp://example.com/x",
    ],
)
async def test_a_webhook_aimed_inside_the_network_or_not_http_is_refused(url):
    with pytest.raises(DeliveryRefused):
        await check_webhook_url(url, allow_private=False)


async def test_a_public_address_is_accepted_and_private_ones_only_when_allowed():
    await check_webhook_url("https://93.184.216.34/hook", allow_private=False)
    await check_webhook_url("http://127.0.0.1:9999/hook", allow_private=True)


async def test_a_webhook_carries_the_idempotency_key_and_a_child_of_the_current_span(aiohttp_server):
    received: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(dict(request.headers))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    notification = Notification(
        template="order_confirmed", channel=Channel.WEBHOOK, address=str(server.make_url("/hook")),
        customer_id="c-1", order_id="o-1", cause=Cause(event_id="e-1", at=1), idempotency_key="n-1",
    )
    parent = new_traceparent()
    async with ClientSession() as session:
        with span(parent, "test") as handling:
            await WebhookProvider(session, allow_private=True).deliver(notification)
    (headers,) = received
    assert headers["Idempotency-Key"] == "n-1"
    assert trace_id(headers["traceparent"]) == trace_id(parent)
    assert headers["traceparent"] not in {parent, handling}
