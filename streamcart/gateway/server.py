"""The payment gateway's HTTP API. Authorizations are idempotent by key and kept in an append-only journal.

POST /v1/authorizations ``{idempotency_key, amount_cents, currency, token}`` → the authorization (the same key
with the same request returns the same authorization; with another amount or currency → 409).
POST /v1/authorizations/{id}/capture | /void | /refund → the authorization after the operation (idempotent).
GET /v1/authorizations/{id}, GET /v1/authorizations (the ledger, for reconciliation), GET /healthz.

Each call is handled as a span of the caller's trace (its ``traceparent`` header): the log lines carry its trace
id, and an authorization records the ``traceparent`` it was created with.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from streamcart.gateway.behaviour import behaviour_of
from streamcart.ids import derive_id
from streamcart.logs import configure_logging
from streamcart.otel import start_export
from streamcart.settings import Settings
from streamcart.tracing import span

log = logging.getLogger(__name__)

# Which operation may follow which state; anything else is a 409.
TRANSITIONS = {
    "capture": ({"approved"}, "captured"),
    "void": ({"approved"}, "voided"),
    "refund": ({"captured", "approved"}, "refunded"),
}


class AuthorizationRequest(BaseModel):
    idempotency_key: str = Field(min_length=1, max_length=200)
    amount_cents: int = Field(ge=0)
    currency: str = Field(min_length=3, max_length=3)
    token: str = Field(min_length=1, max_length=200)


class Ledger:
    """Every authorization by id, persisted as a JSON-lines journal replayed at start."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.by_id: dict[str, dict[str, Any]] = {}
        self.by_key: dict[str, str] = {}
        self.attempts: defaultdict[str, int] = defaultdict(int)
        journal.parent.mkdir(parents=True, exist_ok=True)
        text = journal.read_text() if journal.exists() else ""
        for line in text.splitlines():
            try:
                self._apply(json.loads(line))
            except (ValueError, KeyError):
                # A line torn by a kill mid-write: that request was never answered, so the caller retries.
                log.warning("skipping a torn journal line: %.80r", line)
        self._file = journal.open("a", encoding="utf-8")
        if text and not text.endswith("\n"):
            # End the torn line: the next record appended to it would be torn with it, and lost at the next start.
            self._file.write("\n")
            self._file.flush()

    def _apply(self, record: dict[str, Any]) -> None:
        self.by_id[record["authorization_id"]] = record
        self.by_key[record["idempotency_key"]] = record["authorization_id"]

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        self._apply(record)
        return record


LEDGER = web.AppKey("ledger", Ledger)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def authorize(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER]
    try:
        req = AuthorizationRequest.model_validate_json(await request.read())
    except ValidationError as exc:
        return _error(422, "invalid_request", exc.errors(include_url=False, include_context=False).__repr__())
    existing = ledger.by_key.get(req.idempotency_key)
    if existing is not None:
        record = ledger.by_id[existing]
        if (record["amount_cents"], record["currency"]) != (req.amount_cents, req.currency):
            return _error(409, "idempotency_conflict", "this idempotency key was used for another request")
        return web.json_response(record)
    behaviour = behaviour_of(req.token, req.amount_cents)
    ledger.attempts[req.idempotency_key] += 1
    if ledger.attempts[req.idempotency_key] <= behaviour.fail_first:
        return _error(503, "temporarily_unavailable", "try again")
    if behaviour.delay_ms:
        await asyncio.sleep(behaviour.delay_ms / 1000)
        if req.idempotency_key in ledger.by_key:  # a retry won the race while we were slow
            return web.json_response(ledger.by_id[ledger.by_key[req.idempotency_key]])
    record = {
        "authorization_id": "auth_" + derive_id("authorization", req.idempotency_key)[:18],
        "idempotency_key": req.idempotency_key,
        "amount_cents": req.amount_cents,
        "currency": req.currency,
        "status": "approved" if behaviour.approve else "declined",
        "reason": behaviour.reason,
        "operations": [],
        "traceparent": request.headers.get("traceparent"),
    }
    log.info("authorization %s for %s: %s", record["authorization_id"], req.idempotency_key, record["status"])
    return web.json_response(ledger.write(record), status=201)


async def operate(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER]
    operation = request.match_info["operation"]
    record = ledger.by_id.get(request.match_info["authorization_id"])
    if record is None:
        return _error(404, "not_found", "no such authorization")
    allowed, target = TRANSITIONS[operation]
    if record["status"] == target:
        return web.json_response(record)  # applied before: idempotent
    if record["status"] not in allowed:
        return _error(409, "invalid_state", f"cannot {operation} an authorization that is {record['status']}")
    updated = {**record, "status": target, "operations": [*record["operations"], operation]}
    log.debug("authorization %s: %s", record["authorization_id"], target)
    return web.json_response(ledger.write(updated))


async def get_authorization(request: web.Request) -> web.Response:
    record = request.app[LEDGER].by_id.get(request.match_info["authorization_id"])
    return web.json_response(record) if record else _error(404, "not_found", "no such authorization")


async def list_authorizations(request: web.Request) -> web.Response:
    """Every authorization, each with ``attempts``: how many requests for its key this process received before
    it existed (the failed ones and the one that made it; 0 for one made before a restart)."""
    ledger = request.app[LEDGER]
    return web.json_response({"authorizations": [
        {**record, "attempts": ledger.attempts.get(record["idempotency_key"], 0)} for record in ledger.by_id.values()
    ]})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "authorizations": len(request.app[LEDGER].by_id)})


@web.middleware
async def trace_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Handle the call as a span of the caller's trace."""
    resource = request.match_info.route.resource
    name = f"{request.method} {resource.canonical if resource is not None else 'unmatched'}"
    with span(request.headers.get("traceparent"), name, "server"):
        response: web.StreamResponse = await handler(request)
        return response


def init_app(journal: Path) -> web.Application:
    app = web.Application(client_max_size=16 * 1024, middlewares=[trace_middleware])
    app[LEDGER] = Ledger(journal)
    app.router.add_post("/v1/authorizations", authorize)
    app.router.add_get("/v1/authorizations", list_authorizations)
    app.router.add_get("/v1/authorizations/{authorization_id}", get_authorization)
    app.router.add_post(r"/v1/authorizations/{authorization_id}/{operation:capture|void|refund}", operate)
    app.router.add_get("/healthz", healthz)
    return app


def run(settings: Settings) -> None:
    """Serve the gateway until stopped."""
    configure_logging(settings)
    spans = start_export(settings, f"{settings.app_id}-gateway")
    journal = Path(settings.home) / "data" / "gateway" / "journal.jsonl"
    try:
        web.run_app(init_app(journal), host=settings.host, port=settings.gateway_port, print=None, access_log=None)
    finally:
        if spans is not None:
            spans.shutdown()
