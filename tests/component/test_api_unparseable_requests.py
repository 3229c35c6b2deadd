"""A request aiohttp cannot even parse gets the JSON error shape too (api/errors.py, ``JsonErrorsRunner``): it never
reaches the app's middleware, and aiohttp would answer it in plain text. So does one whose line and headers trickle
in slower than the server waits for them."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

import api.errors
from api.errors import JsonErrorsRunner


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"bytes": len(await request.read())})

    app = web.Application()
    app.router.add_get("/", ok)
    app.router.add_post("/echo", echo)
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


HEAD_TIMEOUT_S = 0.5  # the tests' HEAD_READ_TIMEOUT_S
IDLE_TIMEOUT_S = 2.0  # the tests' IDLE_TIMEOUT_S


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.errors, "HEAD_READ_TIMEOUT_S", HEAD_TIMEOUT_S)
    monkeypatch.setattr(api.errors, "IDLE_TIMEOUT_S", IDLE_TIMEOUT_S)  # read as the runner is made


@pytest.fixture
async def short_port(short_timeouts: None, port: int) -> int:
    """A server whose timeouts are the tests' short ones (patched before ``port`` makes its runner)."""
    return port


async def read_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trickle: bytes) -> bytes:
    """What the server sends until it closes the connection, while a byte of ``trickle`` goes out every 50 ms."""
    received = asyncio.ensure_future(reader.read())
    for byte in trickle:
        if received.done():
            break
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.wait([received], timeout=0.05)
    return await asyncio.wait_for(received, timeout=5)


async def test_a_head_trickled_in_gets_a_json_408_from_its_first_byte_and_the_connection_closes(
        short_port: int) -> None:
    """A slowloris client: each byte in time, the head never complete. aiohttp waited for it up to an hour."""
    reader, writer = await asyncio.open_connection("127.0.0.1", short_port)
    started = time.monotonic()
    raw = await read_until_closed(reader, writer, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1_000)
    closed_after = time.monotonic() - started
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"Connection: close" in head
    assert json.loads(body)["error"] == {
        "code": "request_timeout", "details": None,
        "message": f"the request line and headers did not all arrive within {HEAD_TIMEOUT_S:g} s",
    }
    assert int(re.search(rb"Content-Length: (\d+)", head).group(1)) == len(body)
    assert re.search(rb"X-Request-Id: [0-9a-f]{32}\r\n", head + b"\r\n")
    assert HEAD_TIMEOUT_S <= closed_after < 1_000 * 0.05  # by the deadline, not once the trickle ran out
    assert re.search(rb"\r\nDate: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT\r\n", head + b"\r\n")


async def test_a_head_deadline_does_not_cut_a_body_or_an_idle_connection_between_requests(short_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", short_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a head in two pieces: its deadline starts, then must stop
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"X-Second: piece\r\n\r\n")
    answer = await asyncio.wait_for(reader.readuntil(b"}"), timeout=5)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"ok": true}')
    await asyncio.sleep(HEAD_TIMEOUT_S * 2)  # idle between requests past the head's deadline, under the idle timeout

    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 30\r\n\r\n")
    for _ in range(30):  # the body over 1.5 s, three head deadlines: the body has a timeout of its own
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.05)
    answer = await asyncio.wait_for(reader.readuntil(b"}"), timeout=5)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"bytes": 30}')

    await asyncio.sleep(HEAD_TIMEOUT_S * 2)  # idle between requests, under the idle timeout
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"ok": true}')


async def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(short_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", short_port)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), timeout=IDLE_TIMEOUT_S + 5) == b""  # closed, nothing said
    writer.close()
    assert time.monotonic() - started >= IDLE_TIMEOUT_S - 0.1
