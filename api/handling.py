"""What the API's handlers share: the app's keys, the caller, the request's body and query, the owner of a key
(answer here, or forward there), the worker's table writes stored before an answer, and requests under an
``Idempotency-Key`` (:class:`KeyedRequests`)."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import re
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from aiohttp import ClientSession, web
from pydantic import BaseModel, ValidationError

from api.auth import Principal, authenticate
from api.commands import CommandPort
from api.content_coding import decoded
from api.context import WorkerView
from api.errors import ApiError, Forbidden, Invalid, NotFound, Unavailable, UnsupportedMediaType, read_body
from api.models import PATTERN_MEANING, plain_message
from api.routing import PEER_PROOF, forward
from api.spec import IDEMPOTENCY_KEY_MAX, IDEMPOTENCY_KEY_PATTERN
from streamcart.ids import IDENTIFIER_PATTERN, is_identifier
from streamcart.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
WORKER = web.AppKey("worker", WorkerView)
COMMANDS = web.AppKey("commands", CommandPort)
HTTP = web.AppKey("http", ClientSession)
#: The session for forwarding long-polls (``?wait=``): its own connections, so that waits, however many, never hold
#: up the forwards and gathers of the other requests.
HTTP_WAITS = web.AppKey("http_waits", ClientSession)
SPEC = web.AppKey("spec", dict)

MAX_BODY_BYTES = 64 * 1024
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Which worker answered a keyed read (the owner, whichever worker the client asked).
SERVED_BY = "X-Streamcart-Served-By"
ANSWERED_HERE = web.RequestKey("streamcart.answered_here", bool)
M = TypeVar("M", bound=BaseModel)


def caller(request: web.Request) -> Principal:
    secret = request.app[SETTINGS].jwt_secret.get_secret_value()
    return authenticate(request.headers.get("Authorization"), secret)


def admin(request: web.Request) -> Principal:
    principal = caller(request)
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


async def json_body(request: web.Request, model: type[M]) -> M:
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


def command_port(request: web.Request) -> CommandPort:
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
    unless_restoring(worker)
    request[ANSWERED_HERE] = True  # its answer names this worker (_served_by)
    return None


def unless_stopping(worker: WorkerView) -> None:
    """503 (``Retry-After``) once ``worker`` has begun to stop: its tables and producer stop before its API does."""
    if worker.stopping():
        raise Unavailable("this worker is stopping; retry shortly (another worker takes its partitions over)",
                          headers={"Retry-After": "1"})


def unless_restoring(worker: WorkerView, what: str = "") -> None:
    """503 (``Retry-After``) while ``worker`` is in a rebalance or still reading its tables back, or stopping (its
    tables closed): what its tables say then would pass for a final answer."""
    unless_stopping(worker)
    if worker.rebalancing() or not worker.recovered():
        retry = f"retry its {what} shortly" if what else "retry shortly"
        raise Unavailable(f"this worker is restoring its tables after a rebalance; {retry}",
                          headers={"Retry-After": "1"})


async def forward_unless_owner(
    request: web.Request, table: str, key: str, *, session: web.AppKey[ClientSession] = HTTP
) -> web.Response | None:
    """The owner's answer when another worker owns ``key`` of ``table``; ``None`` when this worker does (and can
    answer: :func:`owner_elsewhere`)."""
    if (owner := owner_elsewhere(request, table, key)) is not None:
        return await forward(request, request.app[session], owner, request.app[WORKER].index)
    return None


def to_peer(request: web.Request, target: str) -> dict[str, str]:
    """The headers of a request ``target`` (method, path and query) to another worker on behalf of ``request``'s
    client: the client's credentials and this worker's proof that it sent it (:class:`api.routing.PeerProof`)."""
    authorization = request.headers.get("Authorization", "")
    proof = request.app[PEER_PROOF].headers(request.app[WORKER].index, authorization, target)
    return {"Authorization": authorization, **proof}


def json_answer(model: BaseModel, status: int = 200, **headers: str) -> web.Response:
    return web.Response(body=model.model_dump_json().encode(), status=status, content_type="application/json",
                        headers=headers)


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


_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)




def valid_key(key: str) -> bool:
    """An idempotency key: 1-200 characters of ``[A-Za-z0-9._:-]``, not all dots (``api.spec``)."""
    return len(key) <= IDEMPOTENCY_KEY_MAX and _IDEMPOTENCY_KEY.fullmatch(key) is not None


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not valid_key(key):
        raise Invalid(f"{IDEMPOTENCY_HEADER} must be 1-200 characters of [A-Za-z0-9._:-], not all dots")
    return key


