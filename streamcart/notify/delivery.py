"""Channels a notification can go out on, behind one interface, with retries.

The webhook channel POSTs JSON to the customer's URL with an ``Idempotency-Key`` header (a redelivered event
sends the same key, so a receiver can drop the copy) and a ``traceparent`` continuing the order's trace. Email
and SMS go through a :class:`Provider`; the one shipped here appends to a JSON-lines outbox file, standing in for
a real provider's API behind the same interface.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiodns
from aiohttp import ClientConnectorError, ClientError, ClientSession, ClientTimeout, TCPConnector, TraceConfig
from aiohttp.abc import AbstractResolver, ResolveResult
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from streamcart.domain.notifications import Channel, Notification
from streamcart.errors import StreamcartError
from streamcart.tracing import call_span


class DeliveryFailed(StreamcartError):
    """A channel could not deliver (this attempt). Raised out of :meth:`Deliverer.deliver` once it gives up, with
    ``attempts``: how many it made (none for a webhook given up at once, :class:`HostFailing`)."""

    attempts: int | None = None


class DeliveryRefused(DeliveryFailed):
    """The notification must never be sent (e.g. a webhook aimed inside our own network); not retried."""


class HostFailing(DeliveryFailed):
    """The webhook failed every recent attempt (its host and port did not answer, or its URL answered with a
    failure): given up at once (to the DLQ, replayable) instead of waiting out more timeouts, which would hold the
    flow's slots and, behind them, the worker's other flows."""


class Unanswered(DeliveryFailed):
    """The webhook's host could not be reached (no lookup, no connection in time): held against its host and port,
    whatever the path. (A host that took the connection and then gave no answer in time, or closed it, reached: its
    URL failed, not the host, see :class:`WebhookProvider`.)"""


class NonPublicAddress(OSError):
    """A webhook host resolved to a loopback, private, link-local or otherwise internal address."""


async def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """Refuse a webhook URL that is not http(s), or whose host is an internal address written as such. A host
    *name* is checked by :class:`PublicResolver` on the addresses the connection is then made to."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise DeliveryRefused(f"webhook URL must be http(s) with a host: {url!r}")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return
    if not allow_private and not literal.is_global:
        raise DeliveryRefused(f"webhook host {parts.hostname!r} is a non-public address")


class PublicResolver(AbstractResolver):
    """Resolves webhook hosts for aiohttp's connector, so that the addresses checked are the ones connected to.

    The URL comes from a customer, and the gateway, Connect and the workers listen inside our network: a host
    with any non-public address is refused (:class:`NonPublicAddress`) unless ``allow_private``. A check on a
    lookup of its own would not do: DNS can answer it with a public address and the connection's lookup, a moment
    later, with ``127.0.0.1`` (DNS rebinding).

    Lookups are asynchronous, by c-ares (aiodns), answered into the running loop: one waiting on a name server that
    never answers is a query pending in c-ares, which holds nothing another lookup needs. (Lookups in a bounded
    number of threads did not do: a customer's webhooks on many subdomains of a silent zone held every thread, and
    every other customer's lookups timed out waiting for one.) A lookup takes ``timeout_s`` at most; a host whose
    lookup ran out of time (or out of c-ares's own tries) fails at once for ``unresolvable_for_s``, so that the
    retries of its deliveries do not wait out the name server again. ``nameservers`` (``"127.0.0.1:5353"`` style)
    stand in for resolv.conf's (tests); names in /etc/hosts, such as ``localhost``, resolve from there either way.
    """

    def __init__(self, *, allow_private: bool = False, timeout_s: float = 2.0, unresolvable_for_s: float = 60.0,
                 nameservers: list[str] | None = None) -> None:
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.unresolvable_for_s = unresolvable_for_s
        self.nameservers = nameservers
        self._dns: aiodns.DNSResolver | None = None  # made in the running loop, which it hands its answers to
        self._timed_out: dict[str, float] = {}  # host -> until when it is not looked up again

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        now = time.monotonic()
        if self._timed_out.get(host, 0) > now:
            raise OSError(f"{host!r} did not resolve within {self.timeout_s:g} s a moment ago")
        self._timed_out = {h: until for h, until in self._timed_out.items() if until > now}
        if self._dns is None:
            # One try within our time: a silent name server is not asked again after the attempt gave up on it.
            self._dns = aiodns.DNSResolver(self.nameservers, loop=asyncio.get_running_loop(),
                                           timeout=self.timeout_s, tries=1)
        try:
            async with asyncio.timeout(self.timeout_s):  # the query goes on in c-ares, its answer then dropped
                nodes = (await self._dns.getaddrinfo(host, family=family, port=port, type=socket.SOCK_STREAM,
                                                     flags=socket.AI_ADDRCONFIG)).nodes
        except TimeoutError:
            raise self._ran_out(host) from None
        except aiodns.error.DNSError as exc:
            code, reason = exc.args
            if code == aiodns.error.ARES_ETIMEOUT:  # c-ares gave up on the name server before our time was up
                raise self._ran_out(host) from exc
            if code != aiodns.error.ARES_ENODATA:
                raise OSError(f"{host!r} did not resolve: {reason}") from exc
            nodes = []  # the name is there, without an address
        found: list[ResolveResult] = []
        for node in nodes:
            address = ipaddress.ip_address(node.addr[0].decode())
            if not self.allow_private and not address.is_global:
                raise NonPublicAddress(f"webhook host {host!r} resolves to a non-public address ({address})")
            found.append(ResolveResult(hostname=host, host=str(address), port=node.addr[1], family=node.family,
                                       proto=node.protocol, flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV))
        if not found:
            raise OSError(f"{host!r} has no address")
        return found

    def _ran_out(self, host: str) -> OSError:
        self._timed_out[host] = time.monotonic() + self.unresolvable_for_s
        return OSError(f"{host!r} did not resolve within {self.timeout_s:g} s")

    async def close(self) -> None:
        """Ends the lookups still pending (they fail) and c-ares's channel: a late answer would otherwise call
        into a loop that may be closed by then."""
        if self._dns is not None:
            dns, self._dns = self._dns, None
            await dns.close()


async def _connected(session: Any, context: Any, params: Any) -> None:
    """A trace hook: the request's connection was made (lookup, TCP and TLS done) or taken from the pool."""
    if isinstance(context.trace_request_ctx, dict):
        context.trace_request_ctx["connected"] = True


def webhook_session(*, allow_private: bool = False, timeout_s: float = 2.0,
                    resolver: PublicResolver | None = None) -> ClientSession:
    """The HTTP session webhooks go out through: its connector resolves with ``resolver``, or a
    :class:`PublicResolver` of its own (which closing the session leaves open). (Made inside the running loop.)
    It notes on each request whether its connection was made (:class:`WebhookProvider` tells by it a host that
    could not be reached from one that took the request and did not answer)."""
    if resolver is None:
        resolver = PublicResolver(allow_private=allow_private, timeout_s=timeout_s)
    tracing = TraceConfig()
    tracing.on_connection_create_end.append(_connected)
    tracing.on_connection_reuseconn.append(_connected)
    tracing.freeze()
    return ClientSession(connector=TCPConnector(resolver=resolver, limit=256), trace_configs=[tracing])


class Provider(Protocol):
    async def deliver(self, notification: Notification, *, even_if_failing: bool = False) -> None:
        """Deliver ``notification`` once; ``even_if_failing``: try even an endpoint given up on for now (a replay)."""
        ...


class OutboxProvider:
    """Email/SMS "sent" by appending to a local outbox file: the stand-in for a provider's API."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    async def deliver(self, notification: Notification, *, even_if_failing: bool = False) -> None:
        record = {
            "channel": notification.channel, "to": notification.address, "template": notification.template,
            "idempotency_key": notification.idempotency_key, "payload": dict(notification.payload),
        }
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        try:
            with self.path.open("a+b") as out:  # (appends, wherever it was read)
                if out.seek(0, os.SEEK_END) > 0:
                    out.seek(-1, os.SEEK_END)
                    if out.read(1) != b"\n":  # a write that failed part way tore the last line: not this one too
                        line = b"\n" + line
                out.write(line)
        except OSError as exc:  # a full disk, a file made unwritable: tried again, as a provider that failed
            raise DeliveryFailed(f"the outbox {self.path} could not be written: {exc}") from exc


class WebhookProvider:
    """POSTs the notification to the customer's webhook URL; any answer but a 2xx is a failed attempt.

    An attempt, its host's lookup included, takes ``timeout_s`` at most. A webhook whose last ``failing_after``
    attempts all failed is given up at once (:class:`HostFailing`) for ``failing_for_s``: a customer's endpoint
    that is down costs one slot of the flow for a moment, not every slot for the length of every retry. Failures
    count where they lie: a host and port that could not be reached (:class:`Unanswered`: no lookup, no
    connection) fails every URL on it, but a URL whose host took the request and answered with an error (a 404
    for a revoked hook, a 500), gave no answer in time or closed the connection fails that URL alone, so one
    customer's broken or slow hook on a service many customers share (their hooks differ by path) costs the others
    nothing. (Found live: one customer's hook answering after 30 s on a host shared with a healthy one had 5 of the
    healthy one's 12 notifications dead-lettered unsent.) Whether the connection was made is known from the session
    of :func:`webhook_session`; with another session, any failure without an answer is held against the host.
    """

    def __init__(self, session: ClientSession, timeout_s: float = 2.0, allow_private: bool = False,
                 failing_after: int = 5, failing_for_s: float = 30.0, resolver: PublicResolver | None = None) -> None:
        """``resolver``: the session's, closed with it by :meth:`close` (aiohttp closes only one it made itself)."""
        self.session = session
        self.resolver = resolver
        self.timeout_s = timeout_s
        self.timeout = ClientTimeout(total=timeout_s)
        self.allow_private = allow_private
        self.failing_after = failing_after
        self.failing_for_s = failing_for_s
        # host:port, or a URL -> (failed attempts in a row, the last one's time, what the last one met)
        self._failures: dict[str, tuple[int, float, str]] = {}

    async def deliver(self, notification: Notification, *, even_if_failing: bool = False) -> None:
        """``even_if_failing``: a replayed give-up, sent once its webhook is back, is tried even while this worker
        still gives the webhook up at once (its failures are this worker's memory, not the webhook's state now)."""
        await check_webhook_url(notification.address, allow_private=self.allow_private)
        parts = urlsplit(notification.address)
        host = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"  # an endpoint
        url = parts._replace(fragment="").geturl()
        for failing, what in ((host, f"endpoint {host}"), (url, f"URL {url[:200]}")):
            failed, last, cause = self._failures.get(failing, (0, 0.0, ""))
            if (not even_if_failing and failed >= self.failing_after
                    and time.monotonic() - last < self.failing_for_s):
                raise HostFailing(f"webhook {what} failed its last {failed} attempts (the last: {cause}); not "
                                  f"tried again for {self.failing_for_s:g} s after the last")
        try:
            await self._post(notification)
        except DeliveryRefused:
            raise
        except DeliveryFailed as exc:
            # Counted from what is recorded now: other deliveries to the endpoint may have failed meanwhile.
            failing = host if isinstance(exc, Unanswered) else url
            if failing == url:
                self._failures.pop(host, None)  # the host answered
            self._failures[failing] = (self._failures.get(failing, (0, 0.0, ""))[0] + 1, time.monotonic(),
                                       str(exc)[:200])
            if len(self._failures) > 10_000:  # endpoints that failed once, long ago
                self._failures = dict(list(self._failures.items())[-5_000:])
            raise
        self._failures.pop(host, None)  # it answered
        self._failures.pop(url, None)

    async def close(self) -> None:
        await self.session.close()
        if self.resolver is not None:
            await self.resolver.close()

    async def _post(self, notification: Notification) -> None:
        body = {"template": notification.template, **notification.payload}
        request: dict[str, bool] = {"connected": False}  # set by webhook_session's trace hooks
        try:
            async with asyncio.timeout(self.timeout_s):  # the lookup too, whatever the session's connector does
                with call_span("webhook") as traceparent:
                    headers = {"Idempotency-Key": notification.idempotency_key, "traceparent": traceparent}
                    async with self.session.post(
                        notification.address, json=body, headers=headers, timeout=self.timeout,
                        allow_redirects=False, trace_request_ctx=request,
                    ) as r:
                        if not 200 <= r.status < 300:  # (a 1xx is no delivery either)
                            raise DeliveryFailed(f"webhook answered HTTP {r.status}")
        except TimeoutError as exc:
            if request["connected"]:  # the host took the request: this URL did not answer
                raise DeliveryFailed(f"webhook gave no answer within {self.timeout_s:g} s") from exc
            raise Unanswered(f"webhook unreachable: no answer within {self.timeout_s:g} s") from exc
        except (ClientError, ValueError) as exc:
            if isinstance(exc, ClientConnectorError) and isinstance(exc.os_error, NonPublicAddress):
                raise DeliveryRefused(str(exc.os_error)) from exc
            if request["connected"] and not isinstance(exc, ClientConnectorError):
                raise DeliveryFailed(f"webhook gave no answer: {type(exc).__name__}: {exc}") from exc
            raise Unanswered(f"webhook unreachable: {type(exc).__name__}: {exc}") from exc


class Deliverer:
    """Delivers on the right channel, retrying with backoff; returns how many attempts it took, or raises."""

    def __init__(self, providers: dict[str, Provider], attempts: int = 4, backoff_s: float = 0.2,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """``sleep`` waits between attempts: the flow passes ``InProgress.pause``, which gives the message back
        (raising ``Yielded``) when a rebalance or a stop begins instead of holding it up for the retries."""
        self.providers = providers
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.sleep = sleep

    async def deliver(self, notification: Notification, *, replayed: bool = False) -> int:
        """How many attempts it took; a give-up raises :class:`DeliveryFailed` with the attempts made. ``replayed``:
        a give-up replayed from the dead-letter topic makes its first attempt even to a webhook given up on for now."""
        provider = self.providers.get(notification.channel)
        if provider is None:
            missing = DeliveryFailed(f"no provider for channel {notification.channel}")
            missing.attempts = 0
            raise missing
        tries = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential_jitter(multiplier=self.backoff_s, max=5.0, jitter=self.backoff_s),
                retry=retry_if_exception_type(DeliveryFailed)
                & retry_if_not_exception_type((DeliveryRefused, HostFailing)),
                sleep=self.sleep,
                reraise=True,
            ):
                with attempt:
                    tries += 1
                    await provider.deliver(notification, even_if_failing=replayed and tries == 1)
        except DeliveryFailed as exc:
            # One given up at once, or refused before it was sent, was not made.
            exc.attempts = tries - 1 if isinstance(exc, (HostFailing, DeliveryRefused)) else tries
            raise
        return tries

    async def close(self) -> None:
        """Close the providers that hold connections."""
        for provider in self.providers.values():
            if isinstance(provider, WebhookProvider):
                await provider.close()


def default_providers(outbox: Path, *, allow_private: bool = False) -> dict[str, Provider]:
    """Webhooks through :func:`webhook_session`, email and SMS through the outbox. (Made inside the running loop.)"""
    email_and_sms = OutboxProvider(outbox)
    resolver = PublicResolver(allow_private=allow_private)
    webhook = WebhookProvider(webhook_session(resolver=resolver), allow_private=allow_private, resolver=resolver)
    return {Channel.WEBHOOK: webhook, Channel.EMAIL: email_and_sms, Channel.SMS: email_and_sms}
