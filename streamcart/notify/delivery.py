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
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from aiohttp import ClientError, ClientSession, ClientTimeout
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
    """A channel could not deliver (this attempt)."""


class DeliveryRefused(DeliveryFailed):
    """The notification must never be sent (e.g. a webhook aimed inside our own network); not retried."""


async def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """Refuse a webhook URL that is not http(s), or whose host resolves to a loopback, private, link-local or
    otherwise internal address: the URL comes from a customer, and the gateway and the workers listen there."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise DeliveryRefused(f"webhook URL must be http(s) with a host: {url!r}")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443)
    except OSError as exc:
        raise DeliveryFailed(f"webhook host {parts.hostname!r} does not resolve: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise DeliveryRefused(f"webhook host {parts.hostname!r} resolves to a non-public address ({address})")


class Provider(Protocol):
    async def deliver(self, notification: Notification) -> None: ...


class OutboxProvider:
    """Email/SMS "sent" by appending to a local outbox file: the stand-in for a provider's API."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    async def deliver(self, notification: Notification) -> None:
        record = {
            "channel": notification.channel, "to": notification.address, "template": notification.template,
            "idempotency_key": notification.idempotency_key, "payload": dict(notification.payload),
        }
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record, sort_keys=True) + "\n")


class WebhookProvider:
    """POSTs the notification to the customer's webhook URL; any non-2xx answer is a failed attempt."""

    def __init__(self, session: ClientSession, timeout_s: float = 2.0, allow_private: bool = False) -> None:
        self.session = session
        self.timeout = ClientTimeout(total=timeout_s)
        self.allow_private = allow_private

    async def deliver(self, notification: Notification) -> None:
        await check_webhook_url(notification.address, allow_private=self.allow_private)
        body = {"template": notification.template, **notification.payload}
        try:
            with call_span("webhook") as traceparent:
                headers = {"Idempotency-Key": notification.idempotency_key, "traceparent": traceparent}
                async with self.session.post(
                    notification.address, json=body, headers=headers, timeout=self.timeout, allow_redirects=False
                ) as r:
                    if r.status >= 300:
                        raise DeliveryFailed(f"webhook answered HTTP {r.status}")
        except (ClientError, TimeoutError, ValueError) as exc:
            raise DeliveryFailed(f"webhook unreachable: {type(exc).__name__}: {exc}") from exc


class Deliverer:
    """Delivers on the right channel, retrying with backoff; returns how many attempts it took, or raises."""

    def __init__(self, providers: dict[str, Provider], attempts: int = 4, backoff_s: float = 0.2) -> None:
        self.providers = providers
        self.attempts = attempts
        self.backoff_s = backoff_s

    async def deliver(self, notification: Notification) -> int:
        provider = self.providers.get(notification.channel)
        if provider is None:
            raise DeliveryFailed(f"no provider for channel {notification.channel}")
        tries = 0
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(multiplier=self.backoff_s, max=5.0, jitter=self.backoff_s),
            retry=retry_if_exception_type(DeliveryFailed) & retry_if_not_exception_type(DeliveryRefused),
            reraise=True,
        ):
            with attempt:
                tries += 1
                await provider.deliver(notification)
        return tries


def default_providers(session: ClientSession, outbox: Path, *, allow_private: bool = False) -> dict[str, Provider]:
    email_and_sms = OutboxProvider(outbox)
    webhook = WebhookProvider(session, allow_private=allow_private)
    return {Channel.WEBHOOK: webhook, Channel.EMAIL: email_and_sms, Channel.SMS: email_and_sms}
