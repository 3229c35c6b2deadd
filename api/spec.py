"""Routes declared once, with their pydantic models: aiohttp serves them and OpenAPI 3.1 is generated from them.

Nothing in the OpenAPI document is hand-kept: every path, parameter, body and response schema comes from the
:class:`Route` list and the models of :mod:`api.models` (pydantic v2 emits JSON Schema 2020-12, OpenAPI 3.1's).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from api.models import ErrorOut
from streamcart.ids import IDENTIFIER_PATTERN

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    auth: bool = True
    headers: tuple[tuple[str, str], ...] = ()  # request headers: (name, description)
    content_type: str = "application/json"
    in_schema: bool = True
    body_required: bool = True

    @property
    def name(self) -> str:
        """The route's label in metrics (the path template, never the raw path)."""
        return self.path


_PATH_PARAM = re.compile(r"{([^}]+)}")
#: An ``Idempotency-Key``: up to 200 characters of ``[A-Za-z0-9._:-]``, not all dots (a key names a resource in a
#: URL, ``/v1/stock/{sku}/adjustments/{key}``, where ``.`` and ``..`` are not a name).
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9._:-]*[A-Za-z0-9_:-][A-Za-z0-9._:-]*$"
IDEMPOTENCY_KEY_MAX = 200
#: Path parameters that are not ids: an idempotency key is what the ``Idempotency-Key`` header may be.
_PATH_SCHEMAS = {"key": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX, "pattern": IDEMPOTENCY_KEY_PATTERN}}

ERROR_TEXT = {
    400: "malformed request", 401: "missing, malformed or invalid token", 403: "the token's role may not do this",
    404: "not found (or not yours)", 408: "the request's head or body did not all arrive in time",
    409: "conflicts with the current state", 413: "body too large", 415: "body is not JSON",
    417: "an Expect header other than 100-continue", 422: "body or query failed validation",
    429: "rate limited, or too many long-polls at once (see Retry-After)",
    503: "not ready or rebalancing, the broker did not acknowledge (a command, or the latest change to what was "
         "read), or (a new order) the saga is too far behind to take it (see Retry-After)",
}


def openapi(routes: Sequence[Route], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            schemas[name] = definition
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not route.in_schema:
            continue
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True,
             "schema": _PATH_SCHEMAS.get(name, {"type": "string", "pattern": IDENTIFIER_PATTERN})}
            for name in _PATH_PARAM.findall(route.path)
        ]
        if route.query is not None:
            query = route.query.model_json_schema()
            for name, prop in query.get("properties", {}).items():
                parameters.append({"name": name, "in": "query", "required": name in query.get("required", ()),
                                   "schema": prop})
        for name, description in route.headers:
            parameters.append({"name": name, "in": "header", "required": False, "description": description,
                               "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX,
                                          "pattern": IDEMPOTENCY_KEY_PATTERN}})
        responses: dict[str, Any] = {}
        for status, model in route.responses.items():
            content = {route.content_type: {"schema": ref(model)}} if model is not None else \
                {route.content_type: {"schema": {"type": "string"}}}
            description = {200: "OK", 202: "accepted: the command was acknowledged by the broker"}.get(
                status, ERROR_TEXT.get(status, ""))
            responses[str(status)] = {"description": description, "content": content}
        # What the middleware answers on any route (api/middleware.py, api/errors.py): a header or query parameter
        # given twice, a request head that did not all arrive in time, an Expect it cannot meet, the rate limit; a
        # token without a role.
        errors = set(route.errors) | {400, 408, 417, 429} | ({401, 403} if route.auth else set()) | \
            ({422} if route.query else set())
        if route.body is not None:
            errors |= {413, 415, 422}
        for status in sorted(errors):
            responses[str(status)] = {"description": ERROR_TEXT[status],
                                      "content": {"application/json": {"schema": ref(ErrorOut)}}}
        operation: dict[str, Any] = {
            "summary": route.summary, "tags": [route.tag], "operationId": route.handler.__name__,
            "parameters": parameters, "responses": responses,
        }
        if route.body is not None:
            operation["requestBody"] = {"required": route.body_required,
                                        "content": {"application/json": {"schema": ref(route.body)}}}
        if route.auth:
            operation["security"] = [{"bearer": []}]
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "The streamcart HTTP API (DESIGN.md §5). Errors are "
                                "`{\"error\": {\"code\", \"message\", \"details\"}}`."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }


def docs_page(spec: dict[str, Any]) -> str:
    """A plain HTML page listing every operation, generated from the spec (no script, no CDN)."""
    from html import escape

    schemas = spec.get("components", {}).get("schemas", {})
    rows = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            params = ", ".join(f"{p['name']} ({p['in']})" for p in op["parameters"]) or "—"
            statuses = ", ".join(op["responses"])
            token = "yes" if op.get("security") else "no"
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{escape(path)}</code></td>"
                f"<td>{escape(op['summary'])}</td><td>{token}</td><td>{escape(params)}</td>"
                f"<td>{_body_fields(op.get('requestBody'), schemas)}</td><td>{escape(statuses)}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>streamcart API</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #ddd;padding:.35rem .6rem;text-align:left;vertical-align:top}"
        "code{background:#f4f4f4;padding:0 .2rem}</style></head><body>"
        f"<h1>{escape(spec['info']['title'])} <small>{escape(spec['info']['version'])}</small></h1>"
        "<p>A request marked <em>token</em> needs <code>Authorization: Bearer &lt;JWT&gt;</code> "
        "(<code>streamcart token --sub C --role customer</code>). A body's fields marked * are required. The "
        "machine-readable document is <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>"
        "<table><tr><th>method</th><th>path</th><th>does</th><th>token</th><th>parameters</th><th>body</th>"
        "<th>answers</th></tr>"
        + "".join(rows) + "</table></body></html>"
    )


def _body_fields(body: dict[str, Any] | None, schemas: dict[str, Any]) -> str:
    """A request body's fields as the docs page lists them (``lines*, currency*, email``), from its schema."""
    from html import escape

    if body is None:
        return "—"
    schema = body.get("content", {}).get("application/json", {}).get("schema", {})
    name = schema.get("$ref", "").rsplit("/", 1)[-1]
    model = schemas.get(name, {})
    required = set(model.get("required", ()))
    fields = ", ".join(f"{field}{'*' if field in required else ''}" for field in model.get("properties", {}))
    optional = "" if body.get("required", True) else " (optional)"
    return f"{escape(name)}{optional}: {escape(fields) or '—'}"
