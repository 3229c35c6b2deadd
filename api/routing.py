"""Answering a keyed request on the worker that owns the key: forward it there with method, headers and body.

faust's own router drops bodies and hashes the JSON-serialised key (notes/faust.md), so this one asks the
assignor for the owner of the key's partition and replays the whole request, one hop at most.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from multidict import CIMultiDict

from api.errors import Unavailable, read_body
from streamcart.tracing import call_span

FORWARDED_HEADER = "X-Streamcart-Forwarded-By"
#: What makes :data:`FORWARDED_HEADER` count: see :class:`PeerProof`.
PROOF_HEADER = "X-Streamcart-Forwarded-Proof"
#: How long a proof is good for, either way of the signing time (the workers' clocks may differ a little).
PROOF_WINDOW_S = 30
_PROOF = re.compile(r"([0-9]{1,12})\.([0-9a-f]{64})")
_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
RETRY_AFTER_S = "1"
#: Longer than the longest long-poll a client may ask for (30 s) and the owner's wait for its writes to be stored
#: after it (api/handling.py, ``STORED_WAIT_S``), so a forwarded ``?wait=`` still works.
FORWARD_TIMEOUT_S = 40.0
#: What a forwarded read may take at its owner beyond its long-poll (``?wait=``, 0 when none): the owner's wait for
#: its writes to be stored (``STORED_WAIT_S``, 5 s) and as much again. A read is not kept 40 s by an owner that
#: does not answer (frozen, or its host gone) when it asked for no wait.
READ_MARGIN_S = 10.0


def forward_timeout_s(request: web.Request) -> float:
    """How long a forwarded ``request`` waits for its owner: a read its long-poll and :data:`READ_MARGIN_S`; a
    command :data:`FORWARD_TIMEOUT_S` (the owner may wait on the broker and on another worker before it answers)."""
    if request.method not in ("GET", "HEAD"):
        return FORWARD_TIMEOUT_S
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        wait = 0.0  # the owner refuses it (422) at once
    if not 0.0 <= wait <= FORWARD_TIMEOUT_S - READ_MARGIN_S:  # (NaN too) the owner refuses it at once
        wait = 0.0
    return min(FORWARD_TIMEOUT_S, wait + READ_MARGIN_S)


class PeerProof:
    """Tells a request one worker sent another (forwarded, or asked for its part of a list) from a client's.

    Such a request carries the client's own ``Authorization`` (the receiver authorizes the client) and
    :data:`FORWARDED_HEADER`, on which the receiver neither rate-limits it again nor forwards or gathers it again.
    Any client can send that header, so it counts only with :data:`PROOF_HEADER`: when it was signed and an HMAC,
    with the cluster's jwt secret, of that time, the request's method and path, and the ``Authorization`` it travels
    with. A proof seen by someone else is good for that one request of that token's owner for a moment, no more.
    """

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def headers(self, self_index: int, authorization: str, target: str, now: float | None = None) -> dict[str, str]:
        """The headers marking a request to a peer, ``target`` (``"GET /v1/products?limit=5"``: its method, path
        and query), carrying ``authorization``, as sent by worker ``self_index`` (``now``: the signing time, for
        tests)."""
        signed_at = str(int(time.time() if now is None else now))
        signature = self._sign(signed_at, target, authorization)
        return {FORWARDED_HEADER: str(self_index), PROOF_HEADER: f"{signed_at}.{signature}"}

    def forwarded(self, request: web.Request) -> bool:
        """Whether a worker sent ``request`` (its proof holds), not merely a client saying so."""
        if FORWARDED_HEADER not in request.headers:
            return False
        proof = _PROOF.fullmatch(request.headers.get(PROOF_HEADER, ""))
        if proof is None:
            return False
        signed_at, signature = proof.groups()
        if abs(time.time() - int(signed_at)) > PROOF_WINDOW_S:
            return False
        authorization = request.headers.get("Authorization", "")
        return hmac.compare_digest(signature, self._sign(signed_at, request_target(request), authorization))

    def _sign(self, signed_at: str, target: str, authorization: str) -> str:
        message = f"streamcart-forwarded\n{signed_at}\n{target}\n{authorization}".encode(errors="surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


PEER_PROOF = web.AppKey("peer_proof", PeerProof)


def request_target(request: web.Request) -> str:
    """What a :class:`PeerProof` signs of a request: its method, path and query (``"GET /v1/products?limit=5"``)."""
    return f"{request.method} {request.rel_url.path_qs}"


async def forward(request: web.Request, session: ClientSession, owner_url: str, self_index: int) -> web.Response:
    """Replay ``request`` on the worker at ``owner_url`` and relay its answer."""
    proof = request.app[PEER_PROOF]
    if proof.forwarded(request):
        # Already forwarded once and still not the owner: ownership is moving. Say so rather than loop.
        raise Unavailable("partition ownership is changing; retry shortly", headers={"Retry-After": RETRY_AFTER_S})
    # A CIMultiDict, so that this worker's marks replace a client's, however the client spelled them.
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)
    headers.update(proof.headers(self_index, request.headers.get("Authorization", ""), request_target(request)))
    body = await read_body(request)
    url = owner_url.rstrip("/") + request.rel_url.path_qs
    try:
        with call_span(f"forward {request.method}") as traceparent:  # the owner answers in this request's trace
            if traceparent:
                headers["traceparent"] = traceparent
            async with session.request(
                request.method, url, headers=headers, data=body,
                timeout=ClientTimeout(total=forward_timeout_s(request), sock_connect=2),
            ) as upstream:
                payload = await upstream.read()
                relay = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
                return web.Response(status=upstream.status, body=payload, headers=relay)
    except (ClientError, TimeoutError) as exc:
        raise Unavailable(
            f"the worker owning this key did not answer ({type(exc).__name__})",
            headers={"Retry-After": RETRY_AFTER_S},
        ) from exc
