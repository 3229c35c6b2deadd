"""A request aiohttp cannot even parse gets the JSON error shape too (api/errors.py, ``JsonErrorsRunner``): it never
reaches the app's middleware, and aiohttp would answer it in plain text."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from api.errors import JsonErrorsRunner


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/", ok)
    runner = JsonErrorsRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=5)  # the server closes the connection after an error
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize("request_bytes", [
    b"NOT AN HTTP REQUEST\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nno colon in this header\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n",
], ids=["request line", "header", "header over 8 KiB"])
async def test_an_unparseable_request_gets_a_json_400_and_the_connection_closes(port: int, request_bytes: bytes):
    status, headers, body = await exchange(port, request_bytes)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request"
    assert error["message"] == "Bad Request: the request line or its headers could not be read"
    assert "Traceback" not in error["message"]
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])  # a new one: what it sent could not be read


async def test_a_good_request_on_the_same_server_is_answered_by_the_app(port: int) -> None:
    status, _, body = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (status, json.loads(body)) == (200, {"ok": True})


async def test_an_unmet_expectation_on_a_path_no_route_has_is_a_json_417(port: int) -> None:
    # Routes answer it through the middlewares (test_api_commands.py); a route-less path gets aiohttp's own handler.
    status, headers, body = await exchange(
        port, b"POST /nowhere HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 2\r\n"
              b"X-Request-Id: req-417\r\nConnection: close\r\n\r\n{}")
    assert status == 417
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "expectation_failed"
    assert headers["x-request-id"] == "req-417"  # echoed, as the middleware would



SECRET_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjLTEifQ.c2lnbmF0dXJl"


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + SECRET_TOKEN.encode() + b"\x01\r\n\r\n",
    b"GET /v1/stream?token=" + SECRET_TOKEN.encode() + b" HTTP/1.1 junk\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nCookie: session=" + SECRET_TOKEN.encode() + b"\x7f\r\n\r\n",
], ids=["authorization header", "stream token in the request line", "cookie"])
async def test_what_an_unparseable_request_is_told_and_what_is_logged_hold_none_of_its_credentials(
        port: int, request_bytes: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp's parser quotes the bytes it stopped at: a bearer token with a stray control character went to the
    worker's log (and back to the client) whole."""
    caplog.set_level("INFO", logger="api.errors")
    status, _, body = await exchange(port, request_bytes)
    assert status == 400
    assert SECRET_TOKEN not in body.decode(errors="replace")
    assert caplog.records and all(SECRET_TOKEN not in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("quoted", [
    "Invalid header value char: b'" + SECRET_TOKEN[:3] + "\\x01" + SECRET_TOKEN[3:] + "'",  # the value, no name
    "bad request line: GET /v1/stream?token=a " + SECRET_TOKEN + " HTTP/1.1",
])
def test_what_a_parser_quotes_without_the_headers_name_is_redacted_too(quoted: str) -> None:
    """aiohttp's pure-Python parser (no compiled wheel) quotes a value without its header's name."""
    from api.errors import redacted

    assert not any(part in redacted(quoted) for part in SECRET_TOKEN.split(".") if len(part) > 8)


def test_the_parsers_own_words_are_kept() -> None:
    from api.errors import redacted

    said = "Data after `Connection: close`; Content-Length can not be parsed; Invalid method encountered"
    assert redacted(said) == said
