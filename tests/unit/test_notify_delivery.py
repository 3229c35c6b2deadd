"""Webhook URLs come from customers: they must never reach inside our own network, nor hold the flow up for long.
A webhook continues the trace."""

import asyncio
import socket
import threading
import time

import pytest
from aiohttp import ClientSession, TCPConnector, web

from streamcart.domain.causes import Cause
from streamcart.domain.notifications import Channel, Notification
from streamcart.notify.delivery import (
    Deliverer,
    DeliveryFailed,
    DeliveryRefused,
    HostFailing,
    PublicResolver,
    WebhookProvider,
    check_webhook_url,
    webhook_session,
)
from streamcart.tracing import new_traceparent, span, trace_id


def to(url: str) -> Notification:
    return Notification(template="order_confirmed", channel=Channel.WEBHOOK, address=url, customer_id="c-1",
                        order_id="o-1", cause=Cause(event_id="e-1", at=1), idempotency_key="n-1")


@pytest.fixture
async def hook(aiohttp_server):
    """A webhook receiver on 127.0.0.1: (its port, the requests it got, the status it answers)."""
    received: list[str] = []
    answer = {"status": 204}

    async def receive(request: web.Request) -> web.Response:
        received.append(request.host)
        return web.Response(status=answer["status"])

    app = web.Application()
    app.router.add_post("/hook", receive)
    server = await aiohttp_server(app)
    return server.port, received, answer


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
    async with webhook_session() as session:
        with pytest.raises(DeliveryRefused):
            await WebhookProvider(session).deliver(to(url))


async def test_a_public_address_is_accepted_and_private_ones_only_when_allowed():
    await check_webhook_url("https://93.184.216.34/hook", allow_private=False)
    await check_webhook_url("http://127.0.0.1:9999/hook", allow_private=True)


def answering(*addresses: str):
    """A lookup that answers each host name with ``addresses``, and counts its calls."""
    calls: list[str] = []

    def lookup(host, port, **_):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return lookup, calls


async def test_a_host_name_is_checked_on_the_addresses_the_connection_is_made_to(hook):
    # DNS rebinding: a name that a check's own lookup sees public and the connection's lookup sees as 127.0.0.1.
    # Here there is one lookup, the connection's, and its answer is what is checked.
    port, received, _ = hook
    lookup, calls = answering("127.0.0.1")
    resolver = PublicResolver(lookup=lookup)
    async with ClientSession(connector=TCPConnector(resolver=resolver)) as session:
        with pytest.raises(DeliveryRefused, match="non-public address"):
            await WebhookProvider(session).deliver(to(f"http://shop.example:{port}/hook"))
    assert (calls, received) == (["shop.example"], [])
    # Allowed (a test stack), the connection goes to the address that lookup gave.
    allowing = PublicResolver(allow_private=True, lookup=answering("127.0.0.1")[0])
    async with ClientSession(connector=TCPConnector(resolver=allowing)) as session:
        await WebhookProvider(session, allow_private=True).deliver(to(f"http://shop.example:{port}/hook"))
    assert received == [f"shop.example:{port}"]


async def test_a_lookup_that_never_answers_fails_the_attempt_in_time_and_the_host_fails_at_once_after():
    release = threading.Event()
    calls: list[str] = []

    def hanging(host, port, **_):
        calls.append(host)
        release.wait(10)
        return []

    resolver = PublicResolver(timeout_s=0.2, lookup=hanging)
    try:
        started = time.monotonic()
        with pytest.raises(OSError, match=r"did not resolve within 0\.2 s"):
            await resolver.resolve("silent.example", 443)
        assert time.monotonic() - started < 2
        with pytest.raises(OSError, match="a moment ago"):
            await resolver.resolve("silent.example", 443)
        assert calls == ["silent.example"]  # not looked up again: no second thread held by it
    finally:
        release.set()
        await resolver.close()


async def test_a_host_that_failed_its_last_attempts_is_given_up_at_once_and_tried_again_later(hook):
    port, received, answer = hook
    answer["status"] = 503
    url = f"http://127.0.0.1:{port}/hook"
    async with ClientSession() as session:
        webhook = WebhookProvider(session, allow_private=True, failing_after=3, failing_for_s=0.3)
        for _ in range(3):
            with pytest.raises(DeliveryFailed, match="HTTP 503"):
                await webhook.deliver(to(url))
        with pytest.raises(HostFailing):
            await webhook.deliver(to(url))
        assert len(received) == 3  # the fourth never left
        # A give-up is not retried by the deliverer: to the dead-letter topic at once.
        deliverer = Deliverer({Channel.WEBHOOK: webhook}, backoff_s=0)
        with pytest.raises(HostFailing):
            await deliverer.deliver(to(url))
        assert len(received) == 3
        await asyncio.sleep(0.35)
        answer["status"] = 204
        await webhook.deliver(to(url))  # its time is up: tried, and it answers again
        assert len(received) == 4


class GaveBack(BaseException):
    """Stands for ``Yielded``: a rebalance took the message back."""


async def test_a_rebalance_during_the_retries_takes_the_notification_back_instead_of_waiting_them_out(hook):
    port, received, answer = hook
    answer["status"] = 503
    waits: list[float] = []

    async def pause(delay_s: float) -> None:
        waits.append(delay_s)
        raise GaveBack

    async with ClientSession() as session:
        deliverer = Deliverer({Channel.WEBHOOK: WebhookProvider(session, allow_private=True)}, sleep=pause)
        with pytest.raises(GaveBack):
            await deliverer.deliver(to(f"http://127.0.0.1:{port}/hook"))
    assert (len(received), len(waits)) == (1, 1)


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


async def test_an_endpoint_that_fails_does_not_make_another_port_of_its_host_fail(hook, aiohttp_server):
    port, _, answer = hook
    answer["status"] = 503
    async def fine(request: web.Request) -> web.Response:
        return web.Response(status=204)

    other = web.Application()
    other.router.add_post("/hook", fine)
    healthy = await aiohttp_server(other)
    async with ClientSession() as session:
        webhook = WebhookProvider(session, allow_private=True, failing_after=2)
        for _ in range(2):
            with pytest.raises(DeliveryFailed):
                await webhook.deliver(to(f"http://127.0.0.1:{port}/hook"))
        with pytest.raises(HostFailing):
            await webhook.deliver(to(f"http://127.0.0.1:{port}/hook"))
        await webhook.deliver(to(f"http://127.0.0.1:{healthy.port}/hook"))


async def test_a_host_that_only_waited_for_a_lookup_thread_is_not_blamed_for_the_hanging_one():
    release = threading.Event()

    def lookup(host, port, **_):
        if host == "silent.example":
            release.wait(10)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    resolver = PublicResolver(timeout_s=0.2, threads=1, lookup=lookup)
    try:
        with pytest.raises(OSError, match="did not resolve"):
            await resolver.resolve("silent.example", 443)  # holds the one thread
        with pytest.raises(OSError, match="every webhook lookup thread is waiting"):
            await resolver.resolve("shop.example", 443)
        release.set()  # the name server answers at last: the thread is free again, as soon as it has returned
        for _ in range(500):
            try:
                (found,) = await resolver.resolve("shop.example", 443)  # not refused for good
                break
            except OSError as exc:
                refused = str(exc)
                await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"still refused: {refused}")
        assert found["host"] == "93.184.216.34"
    finally:
        release.set()


async def test_failures_of_concurrent_deliveries_to_one_endpoint_all_count(hook):
    port, received, answer = hook
    answer["status"] = 503
    url = f"http://127.0.0.1:{port}/hook"
    async with ClientSession() as session:
        webhook = WebhookProvider(session, allow_private=True, failing_after=5)
        failures = await asyncio.gather(*(webhook.deliver(to(url)) for _ in range(10)), return_exceptions=True)
        assert all(isinstance(f, DeliveryFailed) for f in failures)
        with pytest.raises(HostFailing, match="failed its last 10 attempts"):
            await webhook.deliver(to(url))
    assert len(received) == 10
