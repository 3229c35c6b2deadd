"""Webhook URLs come from customers: they must never reach inside our own network, nor hold the flow up for long.
A webhook continues the trace."""

import asyncio
import dataclasses
import json
import socket
import struct
from collections import Counter

import pytest
from aiohttp import ClientSession, TCPConnector, web

from streamcart.domain.causes import Cause
from streamcart.domain.notifications import Channel, Notification
from streamcart.notify.delivery import (
    Deliverer,
    DeliveryFailed,
    DeliveryRefused,
    HostFailing,
    NonPublicAddress,
    OutboxProvider,
    PublicResolver,
    Unanswered,
    WebhookProvider,
    check_webhook_url,
    default_providers,
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


class FakeNameServer(asyncio.DatagramProtocol):
    """A name server on 127.0.0.1 (for ``PublicResolver(nameservers=…)``): A records from ``addresses``, no AAAA
    ones, no answer at all for names under ``silent.example``, and NXDOMAIN for any other name. ``lookups`` counts
    the A queries of each name: a lookup's, whatever its family (a retransmission keeps its query id and is not
    counted again)."""

    def __init__(self, addresses: dict[str, tuple[str, ...]]) -> None:
        self.addresses = addresses
        self.lookups: Counter[str] = Counter()
        self.nameservers: list[str] = []
        self._ids: set[tuple[int, str]] = set()
        self._queried = asyncio.Event()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.nameservers = [f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"]

    def datagram_received(self, data: bytes, addr) -> None:
        query_id = struct.unpack("!H", data[:2])[0]
        labels, at = [], 12  # the question's name, after the header
        while data[at]:
            labels.append(data[at + 1:at + 1 + data[at]].decode().lower())
            at += 1 + data[at]
        (qtype,) = struct.unpack("!H", data[at + 1:at + 3])
        question = data[12:at + 5]  # the name, its type and its class, echoed in the answer
        name = ".".join(labels)
        if qtype == 1 and (query_id, name) not in self._ids:
            self._ids.add((query_id, name))
            self.lookups[name] += 1
            self._queried.set()
        if name == "silent.example" or name.endswith(".silent.example"):
            return
        records = [struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(a)
                   for a in self.addresses.get(name, ()) if qtype == 1]
        rcode = 0 if name in self.addresses else 3  # NXDOMAIN
        header = struct.pack("!6H", query_id, 0x8180 | rcode, 1, len(records), 0, 0)
        self.transport.sendto(header + question + b"".join(records), addr)

    async def queried(self, names: set[str]) -> None:
        """Returns once every one of ``names`` has been asked for."""
        while not names <= self.lookups.keys():
            self._queried.clear()
            await self._queried.wait()


@pytest.fixture
async def dns():
    addresses = {"shop.example": ("93.184.216.34",), "inside.example": ("127.0.0.1",),
                 "mixed.example": ("93.184.216.34", "10.0.0.5"), "bare.example": ()}
    transport, server = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: FakeNameServer(addresses), local_addr=("127.0.0.1", 0))
    yield server
    transport.close()


@pytest.fixture
async def resolver_for(dns):
    """Makes :class:`PublicResolver` asking ``dns`` alone; closes them after the test."""
    made: list[PublicResolver] = []

    def make(**options) -> PublicResolver:
        made.append(PublicResolver(nameservers=dns.nameservers, **options))
        return made[-1]

    yield make
    for resolver in made:
        await resolver.close()


async def test_a_host_name_is_checked_on_the_addresses_the_connection_is_made_to(hook, dns, resolver_for):
    # DNS rebinding: a name that a check's own lookup sees public and the connection's lookup sees as 127.0.0.1.
    # Here there is one lookup, the connection's, and its answer is what is checked.
    port, received, _ = hook
    async with ClientSession(connector=TCPConnector(resolver=resolver_for())) as session:
        with pytest.raises(DeliveryRefused, match="non-public address"):
            await WebhookProvider(session).deliver(to(f"http://inside.example:{port}/hook"))
    assert (dns.lookups["inside.example"], received) == (1, [])
    # Allowed (a test stack), the connection goes to the address that lookup gave.
    async with ClientSession(connector=TCPConnector(resolver=resolver_for(allow_private=True))) as session:
        await WebhookProvider(session, allow_private=True).deliver(to(f"http://inside.example:{port}/hook"))
    assert received == [f"inside.example:{port}"]


async def test_one_non_public_address_among_public_ones_refuses_the_host(resolver_for):
    with pytest.raises(NonPublicAddress, match=r"10\.0\.0\.5"):
        await resolver_for().resolve("mixed.example", 443)
    found = await resolver_for(allow_private=True).resolve("mixed.example", 443)
    assert sorted(f["host"] for f in found) == ["10.0.0.5", "93.184.216.34"]


async def test_localhost_resolves_without_a_name_server(dns, resolver_for):
    found = await resolver_for(allow_private=True).resolve("localhost", 8080)
    assert ("127.0.0.1", 8080) in {(f["host"], f["port"]) for f in found}
    assert dns.lookups == {}


async def test_a_name_without_an_address_and_an_unknown_one_fail_their_lookup(resolver_for):
    resolver = resolver_for()
    with pytest.raises(OSError, match=r"'bare\.example' has no address"):
        await resolver.resolve("bare.example", 443)
    with pytest.raises(OSError, match=r"'nowhere\.example' did not resolve: "):
        await resolver.resolve("nowhere.example", 443)


async def test_a_name_server_that_never_answers_fails_the_attempt_in_time_and_the_host_at_once_after(
        dns, resolver_for):
    resolver = resolver_for(timeout_s=0.2)
    with pytest.raises(OSError, match=r"'silent\.example' did not resolve within 0\.2 s$"):
        await resolver.resolve("silent.example", 443)
    with pytest.raises(OSError, match="a moment ago"):
        await resolver.resolve("silent.example", 443)
    # Asked over the same socket after anything the second attempt could have sent: answered, it was all counted.
    (found,) = await resolver.resolve("shop.example", 443)
    assert found["host"] == "93.184.216.34"
    assert dns.lookups["silent.example"] == 1  # not looked up again


async def test_lookups_waiting_on_a_silent_name_server_hold_no_other_lookup_up(dns, resolver_for):
    # A customer's webhooks on many subdomains of a zone whose name server never answers: 64 lookups waiting on it
    # at once (when lookups took one of 8 threads each, the 9th and every other customer's waited for a thread).
    resolver = resolver_for(timeout_s=5)
    names = {f"n{i}.silent.example" for i in range(64)}
    silent = [asyncio.create_task(resolver.resolve(name, 443)) for name in names]
    queried = asyncio.create_task(dns.queried(names))
    try:
        await asyncio.wait([queried, *silent], return_when=asyncio.FIRST_COMPLETED)
        assert queried.done(), "the silent lookups did not all reach the name server before one of them ended"
        (found,) = await resolver.resolve("shop.example", 443)
        assert found["host"] == "93.184.216.34"
        assert not [task for task in silent if task.done()]  # every silent lookup is still waiting
    finally:
        for task in [queried, *silent]:
            task.cancel()
        await asyncio.gather(queried, *silent, return_exceptions=True)


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


async def test_a_replayed_give_up_is_tried_even_while_its_webhook_is_given_up_on_and_a_give_up_says_its_attempts(
    hook,
):
    """Found live: `streamcart dlq replay` a moment after the webhook came back printed every letter replayed, and
    the worker, still giving the webhook up at once from its own memory of the failures, dead-lettered them again
    unsent. A replay is an operator saying the cause is gone: its first attempt is made."""
    port, received, answer = hook
    answer["status"] = 503
    url = f"http://127.0.0.1:{port}/hook"
    async with ClientSession() as session:
        deliverer = Deliverer({Channel.WEBHOOK: WebhookProvider(session, allow_private=True, failing_after=3)},
                              attempts=4, backoff_s=0)
        with pytest.raises(HostFailing) as failing:  # three attempts, then given up at once
            await deliverer.deliver(to(url))
        assert failing.value.attempts == 3 and len(received) == 3
        with pytest.raises(HostFailing) as at_once:
            await deliverer.deliver(to(url))
        assert at_once.value.attempts == 0 and len(received) == 3
        answer["status"] = 204
        assert await deliverer.deliver(to(url), replayed=True) == 1
        assert len(received) == 4


async def test_a_line_of_the_outbox_torn_by_a_failed_write_does_not_tear_the_next_record(tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    outbox.write_text('{"channel": "email", "to": "ada@exam')  # a full disk stopped a write part way
    await OutboxProvider(outbox).deliver(dataclasses.replace(to("ada@example.com"), channel=Channel.EMAIL))
    torn, record = outbox.read_text().splitlines()
    assert torn == '{"channel": "email", "to": "ada@exam'
    assert json.loads(record)["idempotency_key"] == "n-1"


async def test_an_outbox_that_cannot_be_written_is_a_failed_attempt_tried_again(tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    provider = OutboxProvider(outbox)
    outbox.mkdir()  # cannot be appended to
    email = dataclasses.replace(to("ada@example.com"), channel=Channel.EMAIL)
    deliverer = Deliverer({Channel.EMAIL: provider}, attempts=3, backoff_s=0)
    with pytest.raises(DeliveryFailed, match="could not be written") as failed:
        await deliverer.deliver(email)
    assert failed.value.attempts == 3


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


async def test_closing_the_deliverer_closes_the_webhook_session_and_its_resolver(hook, tmp_path):
    port, received, _ = hook
    deliverer = Deliverer(default_providers(tmp_path / "outbox.jsonl", allow_private=True), backoff_s=0)
    await deliverer.deliver(to(f"http://localhost:{port}/hook"))  # a lookup, then a connection kept alive
    assert len(received) == 1
    webhook = deliverer.providers[Channel.WEBHOOK]
    assert isinstance(webhook, WebhookProvider) and webhook.resolver is not None
    assert webhook.resolver._dns is not None and not webhook.session.closed
    await deliverer.close()
    assert webhook.session.closed
    assert webhook.resolver._dns is None  # c-ares's channel ended: no late answer calls into a closed loop


async def test_a_url_answered_with_errors_fails_alone_not_the_other_hooks_of_its_host(aiohttp_server):
    """Found live: one customer's broken hook on a service that many customers' hooks share (they differ by path)
    had every other customer's notifications to that service dead-lettered unsent for 30 s."""
    received: Counter[str] = Counter()

    async def receive(request: web.Request) -> web.Response:
        received[request.path] += 1
        return web.Response(status=404 if request.path == "/revoked" else 204)

    app = web.Application()
    app.router.add_post("/{hook}", receive)
    server = await aiohttp_server(app)
    revoked, live = str(server.make_url("/revoked")), str(server.make_url("/live"))
    async with ClientSession() as session:
        webhook = WebhookProvider(session, allow_private=True, failing_after=2)
        for _ in range(2):
            with pytest.raises(DeliveryFailed, match="HTTP 404"):
                await webhook.deliver(to(revoked))
        with pytest.raises(HostFailing, match=r"URL .*/revoked failed its last 2 attempts \(the last: .*HTTP 404\)"):
            await webhook.deliver(to(revoked))
        for _ in range(3):
            await webhook.deliver(to(live))
    assert received == {"/revoked": 2, "/live": 3}


async def test_a_host_that_does_not_answer_fails_every_url_on_it(aiohttp_server):
    with socket.socket() as closed:  # a port nothing listens on: every connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with ClientSession() as session:
        webhook = WebhookProvider(session, allow_private=True, failing_after=2)
        for _ in range(2):
            with pytest.raises(DeliveryFailed, match="unreachable"):
                await webhook.deliver(to(f"http://127.0.0.1:{port}/one"))
        with pytest.raises(HostFailing, match=f"endpoint 127.0.0.1:{port} failed its last 2 attempts"):
            await webhook.deliver(to(f"http://127.0.0.1:{port}/another"))


async def test_a_webhook_that_does_not_answer_in_time_says_so():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(5)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ClientSession() as session:
            webhook = WebhookProvider(session, timeout_s=0.2, allow_private=True, failing_after=1)
            with pytest.raises(DeliveryFailed, match=r"no answer within 0\.2 s"):
                await webhook.deliver(to(f"http://127.0.0.1:{port}/hook"))
            with pytest.raises(HostFailing, match=r"\(the last: webhook unreachable: no answer within 0\.2 s\)"):
                await webhook.deliver(to(f"http://127.0.0.1:{port}/other"))
    finally:
        server.close()


async def test_an_informational_answer_is_no_delivery():
    status = 101
    """Found live: a webhook answering 101 was counted as delivered, never tried again."""
    async def informational(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(f"HTTP/1.1 {status} Informational\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(informational, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ClientSession() as session:
            with pytest.raises(DeliveryFailed, match="webhook answered HTTP 101"):
                await WebhookProvider(session, timeout_s=1.0, allow_private=True).deliver(
                    to(f"http://127.0.0.1:{port}/hook"))
    finally:
        server.close()


async def test_a_slow_or_closing_hook_fails_alone_not_the_other_hooks_of_its_host(aiohttp_server):
    """Found live: one customer's webhook answering after 30 s on a host shared with another customer's healthy one
    had the healthy one's notifications dead-lettered unsent (the host "failed its last 5 attempts") for 30 s after
    each of the slow one's timeouts: 5 of 12 in a minute. A host that took the request reached: the URL failed."""
    received: Counter[str] = Counter()

    async def receive(request: web.Request) -> web.Response:
        received[request.path] += 1
        if request.path == "/slow":
            await asyncio.sleep(5)
        if request.path == "/closing":
            assert request.transport is not None
            request.transport.close()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{hook}", receive)
    server = await aiohttp_server(app)
    slow, closing, live = (str(server.make_url(p)) for p in ("/slow", "/closing", "/live"))
    resolver = PublicResolver(allow_private=True)
    webhook = WebhookProvider(webhook_session(resolver=resolver), timeout_s=0.3, allow_private=True,
                              failing_after=2, resolver=resolver)
    try:
        for _ in range(2):
            with pytest.raises(DeliveryFailed, match=r"gave no answer within 0\.3 s") as failed:
                await webhook.deliver(to(slow))
            assert not isinstance(failed.value, (HostFailing, Unanswered))
            with pytest.raises(DeliveryFailed, match="gave no answer: ServerDisconnectedError"):
                await webhook.deliver(to(closing))
        await webhook.deliver(to(live))  # the host is not given up: it answers
        with pytest.raises(HostFailing, match=r"URL .*/slow failed its last 2 attempts"):
            await webhook.deliver(to(slow))
        with pytest.raises(HostFailing, match=r"URL .*/closing failed its last 2 attempts"):
            await webhook.deliver(to(closing))
        await webhook.deliver(to(live))
    finally:
        await webhook.close()
    assert received == {"/slow": 2, "/closing": 2, "/live": 2}


async def test_a_host_that_cannot_be_reached_fails_every_url_on_it_through_the_webhook_session():
    with socket.socket() as closed:  # a port nothing listens on: every connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    resolver = PublicResolver(allow_private=True)
    webhook = WebhookProvider(webhook_session(resolver=resolver), allow_private=True, failing_after=2,
                              resolver=resolver)
    try:
        for _ in range(2):
            with pytest.raises(DeliveryFailed, match="unreachable"):
                await webhook.deliver(to(f"http://127.0.0.1:{port}/one"))
        with pytest.raises(HostFailing, match=f"endpoint 127.0.0.1:{port} failed its last 2 attempts"):
            await webhook.deliver(to(f"http://127.0.0.1:{port}/another"))
    finally:
        await webhook.close()
