"""The aiohttp application factory: ``init_app(settings, worker, commands) -> web.Application`` (DESIGN.md §5).

Every worker serves the same API. A request about a key is answered by the worker that owns the key's partition
(another worker forwards it there, body and all: :mod:`api.routing`); a list is gathered from every worker. A
command is answered 202 only once the broker acknowledged it (:mod:`api.commands`); bad input is refused with the
JSON error shape before anything is sent.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import json
import math
import re
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, ThreadedResolver, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from api import analytics, dashboard, stream
from api.admission import PlacementGate
from api.auth import Principal, authenticate
from api.commands import CommandPort, reachable
from api.content_coding import decoded
from api.context import WorkerView
from api.errors import (
    ApiError,
    ClientGone,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    OutcomeUnknown,
    Overloaded,
    Unavailable,
    UnsupportedMediaType,
    error_middleware,
    expect_handler,
    read_body,
)
from api.middleware import (
    WAITED,
    TokenBuckets,
    header_limit_middleware,
    one_reading_middleware,
    rate_limit_middleware,
    request_id_header,
    request_id_middleware,
)
from api.models import (
    PATTERN_MEANING,
    Accepted,
    AdjustmentIn,
    AdjustmentOut,
    CancelIn,
    CommandAccepted,
    HealthOut,
    OrderOut,
    OrderPage,
    OrderPageQuery,
    PlaceOrderIn,
    ProductIn,
    ProductOut,
    ProductPage,
    ProductPageQuery,
    ReadyOut,
    ShipmentStatusIn,
    StockOut,
    WaitQuery,
    plain_message,
)
from api.routing import PEER_PROOF, PeerProof, forward, request_target
from api.spec import IDEMPOTENCY_KEY_MAX, IDEMPOTENCY_KEY_PATTERN, Route, docs_page, openapi
from schemas.messages import AdjustStock, CancelOrder, OrderLine, PlaceOrder, UpdateShipment, UpsertProduct
from streamcart.commands import envelope
from streamcart.domain import inventory
from streamcart.domain.order_state import OrderState, OrderStatus
from streamcart.domain.orders import cancel_refusal
from streamcart.domain.shipping import update_refusal
from streamcart.ids import IDENTIFIER_PATTERN, derive_id, is_identifier, new_id
from streamcart.settings import Settings
from streamcart.telemetry import KAFKA_REACHABLE, ORDERS_SHED
from streamcart.tracing import new_traceparent

SETTINGS = web.AppKey("settings", Settings)
WORKER = web.AppKey("worker", WorkerView)
COMMANDS = web.AppKey("commands", CommandPort)
HTTP = web.AppKey("http", ClientSession)
#: The session for forwarding long-polls (``?wait=``): its own connections, so that waits, however many, never hold
#: up the forwards and gathers of the other requests.
HTTP_WAITS = web.AppKey("http_waits", ClientSession)
LONG_POLLS: web.AppKey[LongPolls] = web.AppKey("long_polls")
PLACING: web.AppKey[KeyedRequests] = web.AppKey("placing")
GATE: web.AppKey[PlacementGate] = web.AppKey("placement_gate")
ADJUSTING: web.AppKey[KeyedRequests] = web.AppKey("adjusting")
PENDING: web.AppKey[PendingAdjustments] = web.AppKey("pending_adjustments")
RENDERED: web.AppKey[RenderedOrders] = web.AppKey("rendered")
SPEC = web.AppKey("spec", dict)

MAX_BODY_BYTES = 64 * 1024
#: Long-polls one caller (a token's subject) may have open at once on one worker (:class:`LongPolls`).
LONG_POLLS_PER_CALLER = 16
#: Connections a worker keeps for the long-polls it forwards to their orders' owners.
WAIT_CONNECTIONS = 500
API_VERSION = "1.0.0"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Which worker answered a keyed read (the owner, whichever worker the client asked).
SERVED_BY = "X-Streamcart-Served-By"
ANSWERED_HERE = web.RequestKey("streamcart.answered_here", bool)
M = TypeVar("M", bound=BaseModel)


def init_app(settings: Settings, worker: WorkerView, commands: CommandPort | None = None) -> web.Application:
    buckets = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
    proof = PeerProof(settings.jwt_secret.get_secret_value())
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, header_limit_middleware(proof.forwarded),
                     one_reading_middleware, rate_limit_middleware(buckets, proof.forwarded)],
        client_max_size=MAX_BODY_BYTES,
        # Bodies are decoded by _body, where a coding that fails is a JSON error (api/content_coding.py).
        handler_args={"auto_decompress": False},
    )
    app[SETTINGS] = settings
    app[WORKER] = worker
    app[PEER_PROOF] = proof
    if commands is not None:
        app[COMMANDS] = commands
    app[PLACING] = KeyedRequests()
    app[GATE] = PlacementGate(settings.admission_max_delay_s)
    app[ADJUSTING] = KeyedRequests()
    app[PENDING] = PendingAdjustments()
    app[RENDERED] = RenderedOrders()
    app[LONG_POLLS] = LongPolls(LONG_POLLS_PER_CALLER)
    app.cleanup_ctx.append(_http_session)
    app.on_response_prepare.append(_served_by)
    app.on_response_prepare.append(request_id_header)
    routes = ROUTES + analytics.ROUTES + stream.ROUTES + dashboard.ROUTES
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler, expect_handler=expect_handler)
        if route.tag == "health":  # load balancers' checks may ask with HEAD
            app.router.add_route("HEAD", route.path, route.handler, expect_handler=expect_handler)
    app[SPEC] = openapi(routes, title="streamcart", version=API_VERSION)
    if origins := tuple(o.strip() for o in settings.cors_origins.split(",") if o.strip()):
        # After the request id (every answer has one), before the rate limit (a preflight has no token).
        app.middlewares.insert(1, _cors_preflight(origins))
        app.on_response_prepare.append(_cors(origins))
    for module in (analytics, stream, dashboard):
        module.setup_routes(app)
    return app


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    # Waits hold their connections for up to 30 s each: more of them than of quick forwards (aiohttp's 100).
    # Both look workers up with the system's resolver, not aiohttp's default (c-ares, once aiodns is installed for the
    # webhooks): c-ares keeps an answer for its TTL (Docker's DNS gives 600 s), so a worker back at a new address would
    # be called at its old one until then.
    async with ClientSession(connector=TCPConnector(resolver=ThreadedResolver())) as session, ClientSession(
            connector=TCPConnector(limit=WAIT_CONNECTIONS, resolver=ThreadedResolver())) as waits:
        app[HTTP] = session
        app[HTTP_WAITS] = waits
        yield


async def _served_by(request: web.Request, response: web.StreamResponse) -> None:
    """A keyed request answered by its owner (this worker) says so; a forwarded one relays its owner's header."""
    if request.get(ANSWERED_HERE):
        response.headers.setdefault(SERVED_BY, str(request.app[WORKER].index))


#: What a browser page of an allowed origin may send (CORS preflight) and read of an answer.
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "Content-Encoding", IDEMPOTENCY_HEADER, "X-Request-Id",
                        "traceparent")
CORS_EXPOSED_HEADERS = ("Location", "Retry-After", "X-Request-Id", SERVED_BY)
#: How long a browser may keep a preflight's answer.
CORS_MAX_AGE_S = 600


def _allowed(origins: tuple[str, ...], origin: str | None) -> bool:
    return bool(origin) and ("*" in origins or origin in origins)


def _cors_preflight(origins: tuple[str, ...]) -> Any:
    """Answers a browser's preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin:
    204 with the methods the path takes and the headers a page may send. Every ``/v1/`` call carries a token, so a
    browser asks first, without it, before each such call."""

    @web.middleware
    async def preflight(request: web.Request, handler: Any) -> web.StreamResponse:
        asked = request.headers.get("Access-Control-Request-Method")
        refused = request.match_info.http_exception  # no route takes OPTIONS: which methods the path takes
        if (request.method != "OPTIONS" or asked is None or not _allowed(origins, request.headers.get("Origin"))
                or not isinstance(refused, web.HTTPMethodNotAllowed)):  # not a preflight, or no such path (404)
            response: web.StreamResponse = await handler(request)
            return response
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": ", ".join(sorted(refused.allowed_methods)),
            "Access-Control-Allow-Headers": ", ".join(CORS_REQUEST_HEADERS),
            "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
        })

    return preflight


def _cors(origins: tuple[str, ...]) -> Any:
    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if _allowed(origins, origin):
            response.headers["Access-Control-Allow-Origin"] = origin or ""
            response.headers["Access-Control-Expose-Headers"] = ", ".join(CORS_EXPOSED_HEADERS)
            response.headers["Vary"] = "Origin"

    return add_headers


# --- Plumbing -------------------------------------------------------------------------------------------------

def _principal(request: web.Request) -> Principal:
    secret = request.app[SETTINGS].jwt_secret.get_secret_value()
    return authenticate(request.headers.get("Authorization"), secret)


def _admin(request: web.Request) -> Principal:
    principal = _principal(request)
    if not principal.is_admin:
        raise Forbidden("this needs the admin role")
    return principal


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Each field at fault; a pattern it missed is said in words (what it asks for), not as the expression."""
    return [{"loc": list(e["loc"]), "msg": plain_message(e), "type": e["type"]} for e in exc.errors(include_url=False)]


class DuplicateKey(ValueError):
    """A JSON object with the same key twice (the name is the message)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict; :class:`DuplicateKey` when a key comes twice. Python's parser keeps the last, another
    reader of the same body (a proxy, a log, the client's own code) may keep the first: the body means two things."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(key)
        found[key] = value
    return found


async def _body(request: web.Request, model: type[M]) -> M:
    if request.content_type != "application/json":
        raise UnsupportedMediaType(f"expected Content-Type: application/json, got {request.content_type!r}")
    if request.charset is not None and request.charset.lower().replace("-", "") not in ("utf8", "usascii", "ascii"):
        raise UnsupportedMediaType(f"JSON is read as UTF-8 (RFC 8259), not {request.charset[:40]!r}: send it in "
                                   "UTF-8, with charset=utf-8 or no charset")
    raw = decoded(await read_body(request), request.headers.get("Content-Encoding", ""), MAX_BODY_BYTES)
    try:
        # UTF-8 only (a leading byte order mark is let go): from bytes, Python's parser would guess UTF-16 or
        # UTF-32 as well, and take a body another reader of it refuses.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        at = exc.start + (len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0)
        raise ApiError(f"the body is not UTF-8: byte {at} cannot begin or continue a character") from exc
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ApiError(f"the body is not valid JSON: {exc}") from exc
    except DuplicateKey as exc:
        raise ApiError(f"the body names {str(exc)[:80]!r} twice in one object: which one was meant?") from exc
    except ValueError as exc:  # Python's own limit on an integer's digits, in words of the body's
        raise ApiError("the body holds a number with more digits than this API reads") from exc
    except RecursionError as exc:  # the parser recurses once per level: "[" * 5000 is refused, not a crash
        raise ApiError("the body's JSON nests deeper than this API reads") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid("the body failed validation", details=_validation_details(exc)) from exc


def parsed_query(request: web.Request, model: type[M]) -> M:
    """The request's query as ``model``; 422 with the fields at fault when it is not one."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise Invalid("the query failed validation", details=_validation_details(exc)) from exc


def identifier(request: web.Request, name: str, *, naming: bool = False) -> str:
    """The path parameter ``name``, an identifier: anything else names nothing here (404), or, where the request
    would give it a name (``naming``: a product's, a SKU's stock), cannot be one (422)."""
    value = request.match_info[name]
    if not is_identifier(value):
        if naming:
            raise Invalid(f"{value[:80]!r} cannot be a {name}: it should be {PATTERN_MEANING[IDENTIFIER_PATTERN]}")
        raise NotFound(f"no such {name}: {value[:80]!r}")
    return value


def _commands(request: web.Request) -> CommandPort:
    commands = request.app.get(COMMANDS)
    if commands is None:
        raise Unavailable("this worker cannot send commands", headers={"Retry-After": "5"})
    return commands


def owner_elsewhere(request: web.Request, table: str, key: str) -> str | None:
    """The URL of the worker that owns ``key`` of ``table`` when it is another one; ``None`` when this worker owns it
    and its tables can answer for it.

    503 (``Retry-After``) while nobody is known to own it, and while this worker, its owner, is in a rebalance or
    still reading its tables back from the changelogs: a partition is assigned before its table is restored, and an
    answer from the table then (a 404 for an order that exists, a stock of 0) would pass for a final one.
    """
    worker = request.app[WORKER]
    unless_stopping(worker)  # (its producer, which finds a key's partition, may be stopped already)
    owner = worker.owner_url(table, key)
    if owner is None:
        raise Unavailable("partitions are being reassigned; retry shortly", headers={"Retry-After": "1"})
    if owner.rstrip("/") != request.app[SETTINGS].worker_url(worker.index):
        return owner
    _unless_restoring(worker)
    request[ANSWERED_HERE] = True  # its answer names this worker (_served_by)
    return None


def unless_stopping(worker: WorkerView) -> None:
    """503 (``Retry-After``) once ``worker`` has begun to stop: its tables and producer stop before its API does."""
    if worker.stopping():
        raise Unavailable("this worker is stopping; retry shortly (another worker takes its partitions over)",
                          headers={"Retry-After": "1"})


def _unless_restoring(worker: WorkerView, what: str = "") -> None:
    """503 (``Retry-After``) while ``worker`` is in a rebalance or still reading its tables back, or stopping (its
    tables closed): what its tables say then would pass for a final answer."""
    unless_stopping(worker)
    if worker.rebalancing() or not worker.recovered():
        retry = f"retry its {what} shortly" if what else "retry shortly"
        raise Unavailable(f"this worker is restoring its tables after a rebalance; {retry}",
                          headers={"Retry-After": "1"})


async def _forward_unless_owner(
    request: web.Request, table: str, key: str, *, session: web.AppKey[ClientSession] = HTTP
) -> web.Response | None:
    """The owner's answer when another worker owns ``key`` of ``table``; ``None`` when this worker does (and can
    answer: :func:`owner_elsewhere`)."""
    if (owner := owner_elsewhere(request, table, key)) is not None:
        return await forward(request, request.app[session], owner, request.app[WORKER].index)
    return None


def _to_peer(request: web.Request, target: str) -> dict[str, str]:
    """The headers of a request ``target`` (method, path and query) to another worker on behalf of ``request``'s
    client: the client's credentials and this worker's proof that it sent it (:class:`api.routing.PeerProof`)."""
    authorization = request.headers.get("Authorization", "")
    proof = request.app[PEER_PROOF].headers(request.app[WORKER].index, authorization, target)
    return {"Authorization": authorization, **proof}


def _json(model: BaseModel, status: int = 200, **headers: str) -> web.Response:
    return web.Response(body=model.model_dump_json().encode(), status=status, content_type="application/json",
                        headers=headers)


# --- Health, metrics, the spec ----------------------------------------------------------------------------------

async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready once tables are recovered and this worker holds partitions (the stack waits on this), while its API
    reaches Kafka: a worker that cannot send a command takes no order, and its tables stand still."""
    worker = request.app[WORKER]
    kafka = reachable(request.app.get(COMMANDS))
    body = {
        "ready": worker.ready() and kafka,
        "worker": worker.index,
        "kafka": kafka,
        "recovered": worker.recovered(),
        "rebalancing": worker.rebalancing(),
        "assigned": worker.assigned(),
    }
    return web.json_response(body, status=200 if body["ready"] else 503)


async def metrics(request: web.Request) -> web.Response:
    KAFKA_REACHABLE.set(1 if reachable(request.app.get(COMMANDS)) else 0)
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[SPEC])


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=docs_page(request.app[SPEC]), content_type="text/html")


# --- Orders ---------------------------------------------------------------------------------------------------

def order_out(order: OrderState) -> OrderOut:
    return OrderOut.model_validate(order_json(order))


def order_json(order: OrderState) -> dict[str, object]:
    return {
        "order_id": order.order_id,
        "customer_id": order.customer_id,
        "status": order.status,
        "lines": [line.model_dump() for line in order.line_views()],
        "total_cents": order.total_cents,
        "currency": order.currency,
        "payment": order.payment.model_dump(include={"status", "amount_cents", "authorization_id", "decline_reason"})
        if order.payment else None,
        "shipment": order.shipment.model_dump() if order.shipment else None,
        "cancel_reason": order.cancel_reason,
        "cancel_detail": order.cancel_detail,
        "cancel_requested": order.status == OrderStatus.CONFIRMED and order.cancel_request is not None,
        "placed_at": order.placed_at,
        "deadline": order.deadline,
        "history": [
            {"event": entry.event, "time": entry.at, "event_id": entry.event_id, "detail": entry.detail,
             "recorded": entry.recorded_at}
            for entry in order.history
        ],
    }


#: How long a read waits for the worker's table writes made before it to reach Kafka before it answers 503.
STORED_WAIT_S = 5.0


async def stored(worker: WorkerView, what: str) -> None:
    """Return once every table write ``worker`` made up to now is in its changelog, so that what was just read of its
    tables (with no ``await`` since) can no longer be lost to a crash; 503 + ``Retry-After`` if Kafka has not
    acknowledged them within :data:`STORED_WAIT_S` (it is away, or far behind).

    A worker's tables take a write at once and its changelog a moment later (agents/state_first.py). Answered from
    the table alone, a client could see a state its worker, killed before the changelog had it, never comes back to:
    an order answered CONFIRMED was PENDING again on the worker that took its partition over, and timed out.
    """
    if not await worker.stored(worker.write_mark(), STORED_WAIT_S):
        raise Unavailable(f"the latest change to {what} is not stored in Kafka yet; retry shortly",
                          headers={"Retry-After": "1"})


async def get_order(request: web.Request) -> web.Response:
    principal = _principal(request)
    order_id = identifier(request, "order_id")
    query = parsed_query(request, WaitQuery)
    if query.wait == 0:
        return await _read_order(request, principal, order_id)
    return await _long_poll(request, principal, lambda: _wait_for_order(request, principal, order_id, query.wait))


#: How often a long-poll looks whether its client is still connected.
CLIENT_CHECK_S = 0.5
_Waited = TypeVar("_Waited")


async def _long_poll(
    request: web.Request, principal: Principal, wait: Callable[[], Coroutine[Any, Any, _Waited]]
) -> _Waited:
    """Run ``wait()`` as one of the caller's long-polls (:class:`LongPolls`: counted where the request came in, not
    again at an owner it was forwarded to), ended as soon as its client goes away (:func:`_while_connected`)."""
    if request.app[PEER_PROOF].forwarded(request):
        return await _while_connected(request, wait())
    with request.app[LONG_POLLS].held(principal.subject):
        return await _while_connected(request, wait())


async def _while_connected(request: web.Request, wait: Coroutine[Any, Any, _Waited]) -> _Waited:
    """Run a long-poll's ``wait``, ended as soon as its client disconnects: aiohttp does not cancel a handler whose
    client went away (``handler_cancellation`` is off, so that a command's handler always finishes), so an
    abandoned long-poll would keep its caller's share (:class:`LongPolls`) and its forward to the owner for up to
    30 s, and the caller's next long-polls would be refused meanwhile."""
    task = asyncio.ensure_future(wait)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CLIENT_CHECK_S)
            if done:
                return task.result()
            if request.transport is None or request.transport.is_closing():
                raise ClientGone("the client closed its connection during the long-poll")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _read_order(request: web.Request, principal: Principal, order_id: str) -> web.Response:
    if (forwarded := await _forward_unless_owner(request, "orders", order_id)) is not None:
        return forwarded
    worker = request.app[WORKER]
    # The common read: answered from the rendering of the stored bytes.
    raw = worker.order_raw(order_id)
    await stored(worker, f"order {order_id}")
    rendered = None if raw is None else request.app[RENDERED].answer(raw)
    if rendered is None or not principal.may_see_customer(rendered[0]):
        raise NotFound(f"order {order_id} not found (one accepted a moment ago is readable once the orders flow "
                       "has stored it: ?wait=S waits for it)")
    return web.Response(body=rendered[1], content_type="application/json")


async def _wait_for_order(request: web.Request, principal: Principal, order_id: str, wait_s: float) -> web.Response:
    """The long-poll: the order once it is settled, or as it is after ``wait_s``."""
    if (forwarded := await _forward_unless_owner(request, "orders", order_id, session=HTTP_WAITS)) is not None:
        request[WAITED] = True  # its owner's long-poll, maybe
        return forwarded
    worker = request.app[WORKER]
    deadline = asyncio.get_running_loop().time() + wait_s
    order = worker.order(order_id)
    if order is None or order.status not in OrderStatus.SETTLED:
        request[WAITED] = True  # the client's wait: no request latency (api/middleware.py)
        order = await worker.wait_settled(order_id, wait_s)
        # A rebalance that moved the order ends the wait, as does the deadline while this worker's tables are read
        # back: both answer 503 here (the retry goes to the owner).
        if owner_elsewhere(request, "orders", order_id) is not None:
            raise Unavailable("the order moved to another worker in a rebalance; retry", headers={"Retry-After": "1"})
    await stored(worker, f"order {order_id}")
    if order is None or not principal.may_see_customer(order.customer_id):
        # Another customer's order is indistinguishable from a missing one, in time too: a missing order is
        # answered after the whole wait, so is this one (when it exists, or when it settled, is not told).
        request[WAITED] = True
        await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))
        raise NotFound(f"order {order_id} not found")
    return web.json_response(order_json(order))


class TooManyWaits(ApiError):
    status, code = 429, "too_many_waits"


class LongPolls:
    """How many long-polls each caller has open on this worker, up to ``limit`` at once: each one holds a
    connection to the order's owner for up to 30 s, and one caller's hundreds would hold every other caller's."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    @contextlib.contextmanager
    def held(self, caller: str) -> Iterator[None]:
        """One long-poll of ``caller`` while the block runs; 429 + ``Retry-After`` beyond ``limit`` at once."""
        if self._open[caller] >= self.limit:
            raise TooManyWaits(f"{self.limit} long-polls (?wait=) of this caller, or cancels waiting for their order, "
                               "are open on this worker already; wait for one to end, or read without ?wait=",
                               headers={"Retry-After": "1"})
        self._open[caller] += 1
        try:
            yield
        finally:
            self._open[caller] -= 1
            if not self._open[caller]:
                del self._open[caller]


class RenderedOrders:
    """The JSON answers of recently read orders, by their stored bytes: a polled order is decoded and rendered once
    per change (the bytes name the version; the owner's customer id is kept for the access check)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._answers: OrderedDict[bytes, tuple[str, bytes]] = OrderedDict()

    def answer(self, raw: bytes) -> tuple[str, bytes]:
        """The order stored as ``raw``: its customer id and its JSON answer."""
        answer = self._answers.get(raw)
        if answer is None:
            order = OrderState.model_validate_json(raw)
            answer = self._answers[raw] = (order.customer_id, json.dumps(order_json(order)).encode())
            if len(self._answers) > self.size:
                self._answers.popitem(last=False)
        return answer


class KeyedRequests:
    """The owner's memory of requests it sent under an ``Idempotency-Key`` whose effect may not be stored yet, and
    one lock per resource the key names (an order id, an adjustment's event id).

    Two requests under one key are forwarded to the one worker that owns what the key names; the lock makes the
    second wait for the first, and this memory tells it what the first said (the same, or a conflict) even before
    the flow has stored the effect.
    """

    def __init__(self, remember: int = 10_000) -> None:
        self.remember = remember
        self.recent: OrderedDict[str, tuple[str, float]] = OrderedDict()  # resource -> (what the request said, when)
        self.locks: dict[str, asyncio.Lock] = {}
        self._holders: Counter[str] = Counter()  # per lock: who holds it or waits for it

    @contextlib.asynccontextmanager
    async def holding(self, resource: str) -> AsyncIterator[None]:
        """Hold ``resource``'s lock; it is forgotten once nobody holds it or waits for it."""
        lock = self.locks.setdefault(resource, asyncio.Lock())
        self._holders[resource] += 1
        try:
            async with lock:
                yield
        finally:
            self._holders[resource] -= 1
            if not self._holders[resource]:
                del self._holders[resource], self.locks[resource]

    def holders(self) -> int:
        """How many requests hold or wait for a lock now."""
        return sum(self._holders.values())

    def sent(self, resource: str, said: str, at: float) -> None:
        self.recent[resource] = (said, at)
        self.recent.move_to_end(resource)
        while len(self.recent) > self.remember:
            self.recent.popitem(last=False)

    def said(self, resource: str, *, since: float = 0.0) -> str | None:
        """What the request sent for ``resource`` said, if it was sent at ``since`` or later."""
        sent = self.sent_at(resource, since=since)
        return sent[0] if sent is not None else None

    def sent_at(self, resource: str, *, since: float = 0.0) -> tuple[str, float] | None:
        """What the request sent for ``resource`` said and when (s), if it was sent at ``since`` or later."""
        recent = self.recent.get(resource)
        return recent if recent is not None and recent[1] >= since else None

    def busy(self, resource: str) -> bool:
        """Whether a request holds ``resource``'s lock (or waits for it): what it will say is not known yet."""
        return resource in self.locks


def _digest(body: PlaceOrderIn) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


def _valid_key(key: str) -> bool:
    """An idempotency key: 1-200 characters of ``[A-Za-z0-9._:-]``, not all dots (``api.spec``)."""
    return len(key) <= IDEMPOTENCY_KEY_MAX and _IDEMPOTENCY_KEY.fullmatch(key) is not None


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not _valid_key(key):
        raise Invalid(f"{IDEMPOTENCY_HEADER} must be 1-200 characters of [A-Za-z0-9._:-], not all dots")
    return key


async def place_order(request: web.Request) -> web.Response:
    principal = _principal(request)
    body = await _body(request, PlaceOrderIn)
    key = _idempotency_key(request)
    commands = _commands(request)
    settings = request.app[SETTINGS]
    if key is None:
        order_id = new_id()
        # While this worker stops, is in a rebalance or reads its tables back, its saga flows handle nothing: the
        # gate has no measure of how far behind they are (it would read as idle), so no new order is taken here.
        _unless_restoring(request.app[WORKER])
        _admit(request, principal)
        try:
            await commands.send(_place_order(order_id, new_id(), principal, body))
        except OutcomeUnknown as exc:  # a retry would be a second order if this one was written: say which it is
            raise OutcomeUnknown(f"{exc.message}: order {order_id} may have been placed; read it (Location) before "
                                 f"placing it again, or place with an {IDEMPOTENCY_HEADER}, which makes a retry safe",
                                 details={"order_id": order_id},
                                 headers={**exc.headers, "Location": f"/v1/orders/{order_id}"}) from exc
        return _accepted(order_id, OrderStatus.PENDING)

    # The key names one order for ``idempotency_ttl_s``: the order id is derived from the customer, the key and
    # the TTL period it was first used in, and the request goes to the worker owning that order id.
    ttl = settings.idempotency_ttl_s
    now = time.time()
    period = int(now // ttl)
    order_id = derive_id("order", principal.subject, key, period)
    if (forwarded := await _forward_unless_owner(request, "orders", order_id)) is not None:
        return forwarded
    event_id = derive_id("place", principal.subject, key, period, _digest(body))
    placing = request.app[PLACING]
    async with placing.holding(order_id):
        # Used in the previous period, less than a TTL ago: that is still the key's order, stored or still on its
        # way to the orders table (a retry a moment after the boundary must not place a second order).
        previous_id = derive_id("order", principal.subject, key, period - 1)
        previous = await _placement_anywhere(request, previous_id, now)
        if previous is not None and now * 1000 - previous.placed_at < ttl * 1000:
            previous_event = derive_id("place", principal.subject, key, period - 1, _digest(body))
            return _same_or_conflict(previous_id, previous.placed_event_id, previous_event, previous.status)
        unless_stopping(request.app[WORKER])  # (its tables may have closed while this waited)
        known = request.app[WORKER].order(order_id)
        if known is not None:
            await stored(request.app[WORKER], f"order {order_id}")
            return _same_or_conflict(order_id, known.placed_event_id, event_id, known.status)
        if (placed := placing.said(order_id)) is not None:
            return _same_or_conflict(order_id, placed, event_id, OrderStatus.PENDING)
        _admit(request, principal)  # a retry of an order this worker knows of is answered above, whatever the load
        await commands.send(_place_order(order_id, event_id, principal, body))
        placing.sent(order_id, event_id, now)
        return _accepted(order_id, OrderStatus.PENDING)


_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def _admit(request: web.Request, principal: Principal) -> None:
    """Refuse a new order while this worker's saga flows are more than ``admission_max_delay_s`` behind, or beyond
    the pace learnt from that (api/admission.py): a 503 at once beats an order accepted to be cancelled by its
    deadline. Orders spread over every partition, so this worker's queue stands for the saga's (each worker's flows
    take the same share of the load). One customer's burst does not take the whole pace (the gate's caller share)."""
    refusal = request.app[GATE].refusal(request.app[WORKER].saga_queue_s(), principal.subject)
    if refusal is None:
        return
    ORDERS_SHED.labels("queue" if refusal.behind_s is not None else "pace").inc()
    limit = request.app[SETTINGS].admission_max_delay_s
    retry = {"Retry-After": str(refusal.retry_after_s)}
    if refusal.behind_s is not None:
        # Rounded up to the millisecond: a wait just past the limit must not read as the limit itself.
        behind_s = math.ceil(refusal.behind_s * 1000) / 1000
        raise Overloaded(f"the saga is behind (records wait {behind_s:g} s before the saga's flows handle them, more "
                         f"than {limit:g} s): no new order is taken until it catches up; retry later",
                         details={"queue_s": behind_s, "max_delay_s": limit}, headers=retry)
    rate = request.app[GATE].rate
    if refusal.share:
        raise Overloaded(f"new orders are taken at {rate:.0f}/s on this worker for now, and you had your share of "
                         "this second's (the rest is kept for other customers); retry shortly",
                         details={"pace_per_s": round(rate, 1)}, headers=retry)
    raise Overloaded(f"new orders are taken at {rate:.0f}/s on this worker for now (the pace it learns from how far "
                     "behind the saga is); retry shortly", details={"pace_per_s": round(rate, 1)}, headers=retry)


def _same_or_conflict(order_id: str, placed_event_id: str, event_id: str, status: str) -> web.Response:
    if placed_event_id != event_id:
        raise Conflict(f"this {IDEMPOTENCY_HEADER} was used for a different order request",
                       details={"order_id": order_id})
    return _accepted(order_id, status)


def _accepted(order_id: str, status: str) -> web.Response:
    return _json(Accepted(order_id=order_id, status=status), 202, Location=f"/v1/orders/{order_id}")


def _place_order(order_id: str, event_id: str, principal: Principal, body: PlaceOrderIn) -> PlaceOrder:
    return PlaceOrder(
        **envelope(order_id, event_id=event_id),
        order_id=order_id, customer_id=principal.subject,
        lines=tuple(OrderLine(sku=line.sku, quantity=line.quantity) for line in body.lines),
        currency=body.currency, payment_token=body.payment.token,
        webhook_url=str(body.webhook_url) if body.webhook_url is not None else None,
        email=body.email, phone=body.phone,
    )


class Placement(BaseModel):
    """What an idempotency check needs of an order placed under a key: its placement's event id, when, and its
    status; from the orders table, or from the owner's memory of a ``PlaceOrder`` it sent and the table does not
    hold yet (``PENDING``)."""

    placed_event_id: str
    placed_at: int
    status: str


#: How long the owner takes an order it sent a ``PlaceOrder`` for, and its table does not hold yet, for on its way:
#: far beyond the flow's latency under load (a burst settles in tens of seconds); an order that never comes (its
#: command dead-lettered) holds its key no longer than this across a period's boundary.
PLACEMENT_IN_FLIGHT_S = 60.0


async def _placement(request: web.Request, order_id: str, now: float) -> Placement | None:
    """``order_id``'s placement as this worker, its owner, knows it: stored, sent and not stored yet, or being
    sent right now (503: what that request will say is not known yet)."""
    order = request.app[WORKER].order(order_id)
    if order is not None:
        await stored(request.app[WORKER], f"order {order_id}")
        return Placement(placed_event_id=order.placed_event_id, placed_at=order.placed_at, status=order.status)
    placing = request.app[PLACING]
    if (sent := placing.sent_at(order_id, since=now - PLACEMENT_IN_FLIGHT_S)) is not None:
        return Placement(placed_event_id=sent[0], placed_at=int(sent[1] * 1000), status=OrderStatus.PENDING)
    if placing.busy(order_id):
        raise Unavailable("an order under this Idempotency-Key is being placed; retry shortly",
                          headers={"Retry-After": "1"})
    return None


async def _placement_anywhere(request: web.Request, order_id: str, now: float) -> Placement | None:
    """``order_id``'s placement from this worker, or from its owner (asked with the caller's own credentials)."""
    if (owner := owner_elsewhere(request, "orders", order_id)) is None:
        return await _placement(request, order_id, now)
    try:
        path = f"/internal/v1/placements/{order_id}"
        async with request.app[HTTP].get(f"{owner.rstrip('/')}{path}", headers=_to_peer(request, f"GET {path}"),
                                         timeout=ClientTimeout(total=STORED_WAIT_S + 5, sock_connect=2)) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise Unavailable(f"the worker owning {order_id} answered {response.status}",
                                  headers={"Retry-After": "1"})
            return Placement.model_validate_json(await response.read())
    except (ClientError, TimeoutError, ValidationError) as exc:
        raise Unavailable(f"the worker owning {order_id} did not answer", headers={"Retry-After": "1"}) from exc


async def internal_placement(request: web.Request) -> web.Response:
    """An order's placement as its owner knows it (:func:`_placement`), for another worker checking an
    ``Idempotency-Key`` across a TTL period's boundary, with the caller's own credentials. Only a worker may ask
    (its proof holds); to anyone else it is 404."""
    if not request.app[PEER_PROOF].forwarded(request):
        raise NotFound("no such route")
    principal = _principal(request)
    order_id = identifier(request, "order_id")
    if owner_elsewhere(request, "orders", order_id) is not None:  # moved meanwhile: the asker retries
        raise Unavailable("partitions are being reassigned; retry shortly", headers={"Retry-After": "1"})
    order = request.app[WORKER].order(order_id)
    if order is not None and not principal.may_see_customer(order.customer_id):
        raise NotFound("order not found")
    if (placement := await _placement(request, order_id, time.time())) is None:
        raise NotFound("order not found")
    return _json(placement, 200)


#: How long a cancel waits for an order that is not stored yet (one accepted a moment ago) before it answers 404.
CANCEL_WAIT_S = 3.0
#: How far behind the saga's flows may be for a cancel that found no order to answer 404 rather than 503.
CANCEL_BEHIND_S = 1.0


async def cancel_order(request: web.Request) -> web.Response:
    principal = _principal(request)
    order_id = identifier(request, "order_id")
    body = await _body(request, CancelIn) if request.can_read_body else CancelIn()
    if (forwarded := await _forward_unless_owner(request, "orders", order_id)) is not None:
        return forwarded
    worker = request.app[WORKER]
    started = asyncio.get_running_loop().time()
    order = worker.order(order_id)
    if order is None:
        # Accepted a moment ago (202) and not stored by the orders flow yet: wait for it rather than answer 404, or
        # the customer's cancel right after placing is lost and the order goes on to be charged. The CancelOrder,
        # sent once the order is stored, lands after its PlaceOrder (same partition).
        # A wait like a long-poll's: counted in the caller's share, and ended if the client goes (nothing is sent yet).
        order = await _long_poll(request, principal, lambda: worker.wait_stored(order_id, CANCEL_WAIT_S))
        if owner_elsewhere(request, "orders", order_id) is not None:
            raise Unavailable("the order moved to another worker in a rebalance; retry", headers={"Retry-After": "1"})
    await stored(worker, f"order {order_id}")
    if order is None or not principal.may_see_customer(order.customer_id):
        # Another customer's order answers as late as a missing one: whether it exists is not told by the time.
        await asyncio.sleep(max(0.0, started + CANCEL_WAIT_S - asyncio.get_running_loop().time()))
        if (behind_s := worker.saga_queue_s()) is not None and behind_s >= CANCEL_BEHIND_S:
            # The orders flow is far enough behind that an order accepted before the wait may still be on its way:
            # a 404 would be final to the client, and the order charged. Told by the load alone, as to everyone.
            raise Unavailable(f"the orders flow is {behind_s:.1f} s behind: an order placed a moment ago may not be "
                              "stored yet; retry", headers={"Retry-After": "1"})
        raise NotFound(f"order {order_id} not found")
    if (refusal := cancel_refusal(order.status)) is not None:
        raise Conflict(refusal, details={"status": order.status})
    await _commands(request).send(CancelOrder(**envelope(order_id), order_id=order_id,
                                              requested_by=principal.subject, reason=body.reason))
    return _json(Accepted(order_id=order_id, status=order.status), 202, Location=f"/v1/orders/{order_id}")


async def customer_orders(request: web.Request) -> web.Response:
    principal = _principal(request)
    customer_id = identifier(request, "customer_id")
    if not principal.may_see_customer(customer_id):
        raise NotFound(f"customer {customer_id} not found")
    page = parsed_query(request, OrderPageQuery)
    after = _order_cursor(page.cursor)

    def local(worker: WorkerView) -> list[dict[str, Any]]:
        return [order_json(o) for o in worker.orders_of(customer_id, after=after, limit=page.limit)]

    items = await _gather(request, "orders", local, page.limit,
                          sort=lambda o: (-int(o["placed_at"]), str(o["order_id"])))
    next_cursor = f"{items[-1]['placed_at']}.{items[-1]['order_id']}" if len(items) == page.limit else None
    return _page(request, OrderPage(items=[OrderOut.model_validate(i) for i in items], next_cursor=next_cursor))


def _order_cursor(raw: str | None) -> tuple[int, str] | None:
    """The sort key ``(-placed_at, order_id)`` after which a page of orders starts."""
    if raw is None:
        return None
    placed_at, _, order_id = raw.partition(".")
    return -int(placed_at), order_id


#: On a worker's part of a gathered list: the partitions it answered for (comma-separated).
PARTITIONS_HEADER = "X-Streamcart-Partitions"
_COVERED = web.RequestKey("covered", list[int])


async def _gather(
    request: web.Request, what: str, local: Any, limit: int, *, sort: Any
) -> list[dict[str, Any]]:
    """This worker's page of ``what`` merged with every other worker's (each answers for its own partitions).

    A list is only whole if every partition was answered for exactly once: while a worker is in a rebalance, or
    reading its tables back, or a partition is between owners, its orders would be missing (and a page's cursor
    would step past them for good), so that is a 503 + ``Retry-After``, never a silently shorter page.
    """
    worker = request.app[WORKER]
    settings = request.app[SETTINGS]
    _unless_restoring(worker, what)
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
    headers = _to_peer(request, request_target(request))  # each peer is asked the very same request

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


def _page(request: web.Request, page: BaseModel) -> web.Response:
    """A gathered list's page; a worker's part for a peer says which partitions it covers."""
    response = _json(page)
    if (covered := request.get(_COVERED)) is not None:
        response.headers[PARTITIONS_HEADER] = ",".join(map(str, covered))
    return response


# --- Catalog, stock, shipments ------------------------------------------------------------------------------------

async def get_product(request: web.Request) -> web.Response:
    _principal(request)
    sku = identifier(request, "sku")
    if (forwarded := await _forward_unless_owner(request, "catalog", sku)) is not None:
        return forwarded
    product = request.app[WORKER].product(sku)
    await stored(request.app[WORKER], f"product {sku}")
    if product is None:
        raise NotFound(f"no product {sku}")
    return _json(ProductOut.model_validate(product.model_dump()))


async def list_products(request: web.Request) -> web.Response:
    _principal(request)
    page = parsed_query(request, ProductPageQuery)
    after = page.cursor

    def local(worker: WorkerView) -> list[dict[str, Any]]:
        return [ProductOut.model_validate(p.model_dump()).model_dump()
                for p in worker.products(after=after, limit=page.limit)]

    items = await _gather(request, "products", local, page.limit, sort=lambda p: p["sku"])
    next_cursor = items[-1]["sku"] if len(items) == page.limit else None
    return _page(request, ProductPage(items=[ProductOut.model_validate(i) for i in items], next_cursor=next_cursor))


async def put_product(request: web.Request) -> web.Response:
    _admin(request)
    sku = identifier(request, "sku", naming=True)
    body = await _body(request, ProductIn)
    command = UpsertProduct(**envelope(sku), sku=sku, **body.model_dump())
    await _commands(request).send(command)
    return _json(ProductOut(sku=sku, **body.model_dump()), 202, Location=f"/v1/products/{sku}")


async def get_stock(request: web.Request) -> web.Response:
    _admin(request)
    sku = identifier(request, "sku")
    if (forwarded := await _forward_unless_owner(request, "stock", sku)) is not None:
        return forwarded
    stock = request.app[WORKER].stock(sku)
    await stored(request.app[WORKER], f"the stock of {sku}")
    if stock is None:
        raise NotFound(f"no stock record for {sku}")
    return _json(_stock_now(stock))


def _stock_now(stock: inventory.StockState) -> StockOut:
    return _stock_out(stock.sku, stock.on_hand, stock.reserved, stock.adjusted, stock.sold, stock.restocked)


def _stock_out(sku: str, on_hand: int, reserved: int, adjusted: int, sold: int, restocked: int) -> StockOut:
    return StockOut(sku=sku, on_hand=on_hand, reserved=reserved, available=on_hand - reserved, adjusted=adjusted,
                    sold=sold, restocked=restocked)


async def adjust_stock(request: web.Request) -> web.Response:
    """With an ``Idempotency-Key`` the adjustment's event id is derived from the SKU and the key: a repeat is applied
    once however often it is sent (the inventory drops an event id among the SKU's last 1,000 adjustments), one
    already applied is answered 200 with the stock as it is, sending nothing, one the inventory refused is answered
    its refusal (409), sending nothing, and a request under a key used for another delta or reason is refused with
    409."""
    _admin(request)
    sku = identifier(request, "sku", naming=True)
    body = await _body(request, AdjustmentIn)
    key = _idempotency_key(request)
    if (forwarded := await _forward_unless_owner(request, "stock", sku)) is not None:
        return forwarded
    if key is None:
        return await _adjust(request, sku, body, None)
    event_id = inventory.adjustment_id(sku, key)
    said = inventory.adjustment_body(body.delta, body.reason)
    adjusting = request.app[ADJUSTING]
    async with adjusting.holding(event_id):
        worker = request.app[WORKER]
        unless_stopping(worker)  # (its tables may have closed while this waited for the key)
        stock = worker.stock(sku)
        if (outcome := worker.adjustment_outcome(sku, event_id)) is not None:
            await stored(worker, f"the stock of {sku}")
            _same_adjustment(sku, key, outcome.body, said)
            _not_refused(sku, key, outcome)
            if stock is not None:  # (counted: so it is)
                return _json(_stock_now(stock), 200, Location=f"/v1/stock/{sku}")
        now = time.time()
        # Sent a moment ago and not decided yet: in flight.
        _same_adjustment(sku, key, adjusting.said(event_id, since=now - ADJUSTMENT_IN_FLIGHT_S), said)
        response = await _adjust(request, sku, body, event_id)
        adjusting.sent(event_id, said, now)
        return response


#: How long the owner takes an adjustment it sent, and the inventory did not decide yet, for in flight: within it, the
#: same key with another body is a 409; after it, the key's first adjustment was lost (or decided and forgotten).
ADJUSTMENT_IN_FLIGHT_S = 60.0


def _not_refused(sku: str, key: str, outcome: inventory.AdjustmentOutcome) -> None:
    """Answer an adjustment the inventory refused with its reason (409): the key's first body is the one that counts,
    so a retry of it is refused too (a new key sends the adjustment again)."""
    if outcome.refused is not None:
        raise Conflict(f"the adjustment of {sku} sent under {key!r} was refused: {outcome.refused}",
                       details={"sku": sku, "key": key, "reason": outcome.refused})


def _same_adjustment(sku: str, key: str, first: str | None, said: str) -> None:
    """Refuse a request whose body differs from the first one sent under its key (``first`` unknown: let it be)."""
    if first is not None and first != said:
        raise Conflict(f"this {IDEMPOTENCY_HEADER} was used for a different adjustment of {sku} (the first body sent "
                       "under a key is the one that counts)", details={"sku": sku, "key": key})


class PendingAdjustments:
    """The owner's adjustments sent and not counted by the SKU's stock yet, and one lock per SKU.

    An adjustment is checked against the stock as it will be once those are counted (they reach the inventory in
    the order they were sent: one partition per SKU), not as the table says now: two write-offs of 5 with 8
    available were both answered 202, and the inventory refused the second where nobody saw it. Kept in the order
    sent: once one is decided (counted, or refused: the inventory notes its refusals), it and every one sent before
    it are done; any is forgotten after :data:`ADJUSTMENT_IN_FLIGHT_S` (decided and forgotten meanwhile, or lost).
    """

    def __init__(self) -> None:
        self._sent: dict[str, dict[str, tuple[int, float]]] = {}  # sku -> event id -> (delta, when sent), in order
        self.locks = KeyedRequests()

    def outstanding(self, sku: str, decided: Any, now: float) -> dict[str, int]:
        """``sku``'s adjustments sent and not decided yet, event id -> delta, in the order sent
        (``decided(event_id)``: whether the stock counts it or the inventory refused it)."""
        sent = self._sent.get(sku, {})
        ids = list(sent)
        done = next((i for i in range(len(ids) - 1, -1, -1) if decided(ids[i])), -1)
        for event_id in ids[:done + 1]:
            del sent[event_id]
        for event_id, (_, at) in list(sent.items()):
            if at < now - ADJUSTMENT_IN_FLIGHT_S:
                del sent[event_id]
        if not sent:
            self._sent.pop(sku, None)
        return {event_id: delta for event_id, (delta, _) in sent.items()}

    def add(self, sku: str, event_id: str, delta: int, now: float) -> None:
        sent = self._sent.setdefault(sku, {})
        if event_id not in sent:  # a retry keeps its place in the order sent
            sent[event_id] = (delta, now)
        stale = now - ADJUSTMENT_IN_FLIGHT_S
        for other in [k for k, v in self._sent.items() if all(at < stale for _, at in v.values())]:
            del self._sent[other]  # SKUs not adjusted for a while (or whose partition moved away)


async def _adjust(request: web.Request, sku: str, body: AdjustmentIn, event_id: str | None) -> web.Response:
    """Send the adjustment (``event_id``: derived from its key, or a fresh one) and answer 202 with the stock it
    should leave, or 409 if it would take stock promised to orders, counting the adjustments sent before it that
    the stock does not count yet."""
    worker, pending = request.app[WORKER], request.app[PENDING]
    async with pending.locks.holding(sku):  # the check and the send, one adjustment of the SKU at a time
        unless_stopping(worker)  # (its tables may have closed while this waited for the SKU)
        now = time.time()
        stock = worker.stock(sku)
        on_hand, reserved = (stock.on_hand, stock.reserved) if stock is not None else (0, 0)
        outstanding = pending.outstanding(sku, lambda e: worker.adjustment_outcome(sku, e) is not None, now)
        await stored(worker, f"the stock of {sku}")  # checked and answered as Kafka holds it
        sent = sum(outstanding.values())
        # A retry of one in flight was checked when it was first sent, against what came before it; sent again
        # (the inventory counts it once), it is not checked against what was sent after it.
        retry = event_id is not None and event_id in outstanding
        if not retry and on_hand + sent - reserved + body.delta < 0:
            raise Conflict(f"adjusting {sku} by {body.delta} would leave {on_hand + sent - reserved + body.delta} "
                           "available", details={"on_hand": on_hand, "reserved": reserved,
                                                 "available": on_hand - reserved, "sent_not_counted": sent,
                                                 "available_once_counted": on_hand + sent - reserved})
        command = AdjustStock(**envelope(sku, event_id=event_id), sku=sku, delta=body.delta, reason=body.reason)
        await _commands(request).send(command)
        pending.add(sku, command.event_id, body.delta, now)
    change = sent if retry else sent + body.delta
    expected = _stock_out(sku, on_hand + change, reserved, (stock.adjusted if stock else 0) + change,
                          stock.sold if stock else 0, stock.restocked if stock else 0)
    return _json(expected, 202, Location=f"/v1/stock/{sku}")


async def get_adjustment(request: web.Request) -> web.Response:
    """The adjustment sent under ``key`` (an ``Idempotency-Key``) once the SKU's stock counts it (200), or its refusal
    by the inventory (409, with the reason); 404 before either (or when it is older than the SKU's last 1,000
    adjustments, or 100 refusals)."""
    _admin(request)
    sku = identifier(request, "sku")
    key = request.match_info["key"]
    if not _valid_key(key):
        raise NotFound(f"no such key: {key[:80]!r}")
    if (forwarded := await _forward_unless_owner(request, "stock", sku)) is not None:
        return forwarded
    worker = request.app[WORKER]
    event_id = inventory.adjustment_id(sku, key)
    stock = worker.stock(sku)
    outcome = worker.adjustment_outcome(sku, event_id)
    await stored(worker, f"the stock of {sku}")
    if outcome is not None:
        _not_refused(sku, key, outcome)
    if stock is None or outcome is None:
        raise NotFound(f"the stock of {sku} does not count an adjustment sent under {key!r}, nor was it refused "
                       "(not decided yet, or more than 1,000 adjustments or 100 refusals ago)")
    return _json(AdjustmentOut(sku=sku, key=key, event_id=event_id, stock=_stock_now(stock)))


async def shipment_status(request: web.Request) -> web.Response:
    _admin(request)
    order_id = identifier(request, "order_id")
    body = await _body(request, ShipmentStatusIn)
    if (forwarded := await _forward_unless_owner(request, "orders", order_id)) is not None:
        return forwarded
    order = request.app[WORKER].order(order_id)
    await stored(request.app[WORKER], f"order {order_id}")
    if order is None:
        raise NotFound(f"order {order_id} not found")
    if order.shipment is None:
        why = ("was cancelled before it had a shipment" if order.status == OrderStatus.CANCELLED
               else f"has no shipment yet (status {order.status})")
        raise Conflict(f"order {order_id} {why}", details={"status": order.status})
    if (refusal := update_refusal(order.shipment.status)) is not None:
        raise Conflict(refusal, details={"status": order.status, "shipment_status": order.shipment.status})
    command = UpdateShipment(**envelope(order_id), order_id=order_id, status=body.status, carrier=body.carrier)
    await _commands(request).send(command, traceparent=new_traceparent())
    return _json(CommandAccepted(event_id=command.event_id), 202, Location=f"/v1/orders/{order_id}")


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", healthz, "liveness", "health", auth=False, responses={200: HealthOut}),
    Route("GET", "/readyz", readyz, "readiness: recovered, assigned and reaching Kafka", "health", auth=False,
          responses={200: ReadyOut, 503: ReadyOut}),
    Route("GET", "/metrics", metrics, "Prometheus metrics", "health", auth=False, responses={200: None},
          content_type="text/plain"),
    Route("GET", "/openapi.json", openapi_json, "this document", "docs", auth=False, in_schema=False),
    Route("GET", "/docs", docs, "the API's documentation page", "docs", auth=False, in_schema=False),
    Route("POST", "/v1/orders", place_order, "place an order", "orders", body=PlaceOrderIn,
          responses={202: Accepted}, errors=(409, 503),
          headers=((IDEMPOTENCY_HEADER, "the same key and body return the same order"),)),
    Route("GET", "/v1/orders/{order_id}", get_order, "an order; ?wait=S long-polls until it is settled", "orders",
          query=WaitQuery, responses={200: OrderOut}, errors=(404, 503)),
    Route("POST", "/v1/orders/{order_id}/cancel", cancel_order, "ask to cancel an order", "orders",
          body=CancelIn, body_required=False, responses={202: Accepted}, errors=(404, 409, 503)),
    Route("GET", "/internal/v1/placements/{order_id}", internal_placement,
          "an order's placement, stored or on its way (worker to worker)",
          "internal", in_schema=False),
    Route("GET", "/v1/customers/{customer_id}/orders", customer_orders, "a customer's orders, newest first",
          "orders", query=OrderPageQuery, responses={200: OrderPage}, errors=(404, 503)),
    Route("GET", "/v1/products", list_products, "the catalog, by sku", "catalog", query=ProductPageQuery,
          responses={200: ProductPage}, errors=(503,)),
    Route("GET", "/v1/products/{sku}", get_product, "one product", "catalog", responses={200: ProductOut},
          errors=(404, 503)),
    Route("PUT", "/v1/products/{sku}", put_product, "create or change a product (admin)", "catalog",
          body=ProductIn, responses={202: ProductOut}, errors=(403, 503)),
    Route("GET", "/v1/stock/{sku}", get_stock, "a SKU's stock (admin)", "stock", responses={200: StockOut},
          errors=(403, 404, 503)),
    Route("POST", "/v1/stock/{sku}/adjustments", adjust_stock, "change what is on hand (admin)", "stock",
          body=AdjustmentIn, responses={202: StockOut, 200: StockOut}, errors=(403, 409, 503),
          headers=((IDEMPOTENCY_HEADER, "the same key is one adjustment of the SKU, applied once; 200 with the "
                                        "stock when it already was, 409 when the inventory refused it (the "
                                        "reason) and for a key used with another body"),)),
    Route("GET", "/v1/stock/{sku}/adjustments/{key}", get_adjustment, "what became of the adjustment sent under "
          "this Idempotency-Key: 200 once the stock counts it, 409 with the reason if the inventory refused it, 404 "
          "before either (admin)", "stock", responses={200: AdjustmentOut}, errors=(403, 404, 409, 503)),
    Route("POST", "/v1/shipments/{order_id}/status", shipment_status, "a shipment was dispatched or delivered "
          "(admin)", "shipments", body=ShipmentStatusIn, responses={202: CommandAccepted},
          errors=(403, 404, 409, 503)),
)
