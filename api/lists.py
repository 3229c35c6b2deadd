"""Lists gathered from every worker (a customer's orders, the catalog): each worker answers for the partitions it
owns, and a list is whole only if every partition was answered for exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp import ClientError, ClientTimeout, web
from pydantic import BaseModel

from api.errors import Unavailable
from api.handling import HTTP, SETTINGS, STORED_WAIT_S, WORKER, json_answer, stored, to_peer, unless_restoring
from api.routing import PEER_PROOF, request_target

#: On a worker's part of a gathered list: the partitions it answered for (comma-separated).
PARTITIONS_HEADER = "X-Streamcart-Partitions"
_COVERED = web.RequestKey("covered", list[int])


async def gathered(
    request: web.Request, what: str, local: Any, limit: int, *, sort: Any
) -> list[dict[str, Any]]:
    """This worker's page of ``what`` merged with every other worker's (each answers for its own partitions).

    A list is only whole if every partition was answered for exactly once: while a worker is in a rebalance, or
    reading its tables back, or a partition is between owners, its orders would be missing (and a page's cursor
    would step past them for good), so that is a 503 + ``Retry-After``, never a silently shorter page.
    """
    worker = request.app[WORKER]
    settings = request.app[SETTINGS]
    unless_restoring(worker, what)
    covered = Counter(worker.assigned())
    items: list[dict[str, Any]] = list(local(worker))
    await stored(worker, what)
    if request.app[PEER_PROOF].forwarded(request):  # a peer gathering: it wants this worker's part only
        request[_COVERED] = sorted(covered)
        return items
    if sorted(covered.elements()) == list(range(settings.partitions)):
        # This worker owns every partition (the others stopped, or are frozen and left the group): nothing to ask
        # them, and one that is frozen would hold the answer until its timeout.
        return sorted(items, key=sort)[:limit]
    others = [settings.worker_url(i) for i in range(settings.workers) if i != worker.index]
    headers = to_peer(request, request_target(request))  # each peer is asked the very same request

    silent: list[str] = []  # what each worker that gave no part said

    async def ask(url: str) -> tuple[list[int], list[dict[str, Any]]]:
        """A peer's part and the partitions it covers; none when it gives none (stopped, down, restoring): whether
        the others cover its partitions then is what decides, not that it did not answer (a worker that is down
        for good has its partitions taken over by the others, and its lists must not be 503 meanwhile)."""
        try:
            timeout = ClientTimeout(total=STORED_WAIT_S + 5, sock_connect=1)  # its part waits for its writes too
            async with request.app[HTTP].get(url + request.rel_url.path_qs, headers=headers,
                                             timeout=timeout) as response:
                if response.status != 200:
                    silent.append(f"HTTP {response.status}")
                    return [], []
                body = await response.json()
                partitions = [int(p) for p in response.headers.get(PARTITIONS_HEADER, "").split(",") if p]
                return partitions, list(body["items"])
        except (ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            silent.append(type(exc).__name__)
            return [], []

    for partitions, part in await asyncio.gather(*(ask(url) for url in others)):
        covered.update(partitions)
        items.extend(part)
    if sorted(covered.elements()) != list(range(settings.partitions)):
        unanswered = f" ({len(silent)} worker(s) gave no part: {', '.join(silent)})" if silent else ""
        raise Unavailable(f"partitions are being reassigned: not every partition's {what} could be read"
                          f"{unanswered}; retry shortly", headers={"Retry-After": "1"})
    return sorted(items, key=sort)[:limit]


def page_answer(request: web.Request, page: BaseModel) -> web.Response:
    """A gathered list's page; a worker's part for a peer says which partitions it covers."""
    response = json_answer(page)
    if (covered := request.get(_COVERED)) is not None:
        response.headers[PARTITIONS_HEADER] = ",".join(map(str, covered))
    return response


