"""Reads that need every worker: ask each one for what it owns, over HTTP, and check nothing is missing.

Keyed reads are forwarded to the one owner (api/routing.py). Analytics and the live figures are spread over every
partition, so the worker that got the request asks all workers (itself included, the same way) for the partitions
they own and merges the answers. A partition nobody answered for (a rebalance, a worker restarting) makes the
answer incomplete, which is a 503 with ``Retry-After``, never a silently smaller total.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, ThreadedResolver, web

from api.auth import issue_token
from api.errors import Unavailable
from streamcart.settings import Settings

PEERS = web.AppKey("peers", ClientSession)
PEER_TIMEOUT_S = 5.0
#: Workers call each other with a token of their own, renewed well before it expires.
_TOKEN_TTL_S = 600


class PeerToken:
    """An admin token this worker signs for calls to its peers."""

    def __init__(self, settings: Settings) -> None:
        self.secret = settings.jwt_secret.get_secret_value()
        self._token = ""
        self._renew_at = 0.0

    def header(self) -> dict[str, str]:
        now = time.time()
        if now >= self._renew_at:
            self._token = issue_token(self.secret, "streamcart-worker", ["admin"], ttl_s=_TOKEN_TTL_S, now=now)
            self._renew_at = now + _TOKEN_TTL_S / 2
        return {"Authorization": f"Bearer {self._token}"}


PEER_TOKEN = web.AppKey("peer_token", PeerToken)


async def peer_session(app: web.Application) -> AsyncIterator[None]:
    """The HTTP session for calls between workers (a cleanup context)."""
    # The system's resolver, not aiohttp's default (c-ares, once aiodns is installed for the webhooks): c-ares keeps an
    # answer for its TTL (Docker's DNS gives 600 s), so a worker back at a new address would be called at its old one
    # until then.
    async with ClientSession(connector=TCPConnector(resolver=ThreadedResolver()),
                             timeout=ClientTimeout(total=PEER_TIMEOUT_S, sock_connect=2)) as session:
        app[PEERS] = session
        yield


def setup(app: web.Application, settings: Settings) -> None:
    """Give ``app`` what :func:`from_every_worker` needs (idempotent: several route modules call it)."""
    if PEER_TOKEN not in app:
        app[PEER_TOKEN] = PeerToken(settings)
        app.cleanup_ctx.append(peer_session)


async def from_every_worker(app: web.Application, settings: Settings, path_qs: str) -> list[dict[str, Any]]:
    """The JSON body of ``GET path_qs`` on every worker that answered (those that did not are left out)."""
    session = app[PEERS]
    headers = app[PEER_TOKEN].header()

    async def one(index: int) -> dict[str, Any] | None:
        try:
            async with session.get(settings.worker_url(index) + path_qs, headers=headers) as response:
                if response.status != 200:
                    return None
                body: dict[str, Any] = await response.json()
                return body
        except (ClientError, TimeoutError, ValueError):
            return None

    answers = await asyncio.gather(*(one(i) for i in range(settings.workers)))
    return [a for a in answers if a is not None]


def by_partition(answers: list[dict[str, Any]], partitions: int) -> dict[int, dict[str, Any]]:
    """Each partition's part of the workers' answers (``answer["partitions"]``); 503 if one is missing."""
    found: dict[int, dict[str, Any]] = {}
    for answer in answers:
        for part in answer.get("partitions", []):
            found.setdefault(int(part["partition"]), part)
    missing = sorted(set(range(partitions)) - set(found))
    if missing:
        raise Unavailable(
            f"no worker answered for partition(s) {missing}: partitions are being reassigned; retry shortly",
            headers={"Retry-After": "1"},
        )
    return found
