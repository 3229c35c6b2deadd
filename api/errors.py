"""API errors and the one middleware that turns every failure into the JSON error shape of DESIGN.md §5."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_urldispatcher import _default_expect_handler

from streamcart.errors import StreamcartError

#: On every response, also those answered before any middleware runs (an unparseable request, an unmet Expect).
REQUEST_ID_HEADER = "X-Request-Id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


def request_id(incoming: str | None) -> str:
    """A sane incoming ``X-Request-Id``, echoed, or a new one."""
    return incoming if incoming and _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex


log = logging.getLogger(__name__)


class ApiError(StreamcartError):
    """An error with an HTTP status, a stable code and a message meant for the client."""

    status = 400
    code = "bad_request"
    #: The connection is closed after the answer.
    closes_connection = False

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, code = 413, "request_entity_too_large"  # the code aiohttp's own 413 gets (see error_middleware)


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class RequestTimeout(ApiError):
    status, code = 408, "request_timeout"
    closes_connection = True  # what is left of the body may still come: the connection cannot be read on


class Invalid(ApiError):
    status, code = 422, "invalid"


class Unavailable(ApiError):
    status, code = 503, "unavailable"


class OutcomeUnknown(Unavailable):
    """The broker did not confirm a command in time: it may have been written all the same, so a retry may apply it
    twice unless the command names itself (an order's ``Idempotency-Key``)."""

    code = "outcome_unknown"


class Overloaded(ApiError):
    """The saga is too far behind to take a new order in time: refused before anything is sent (a retry later is
    safe, with or without an ``Idempotency-Key``)."""

    status, code = 503, "overloaded"


class ClientGone(ApiError):
    """The client closed its connection before its request's body was read, or while its long-poll waited. Nobody
    receives the answer; its status (nginx's 499) keeps it out of the server's errors in the logs and the metrics."""

    status, code = 499, "client_closed_request"


#: How long a request's body may take to arrive once the API reads it (64 KiB at most: some 50 kbit/s). aiohttp
#: itself waits for ever: a client that announces a ``Content-Length`` and sends less (or trickles it) would hold its
#: connection, and a handler, open.
BODY_READ_TIMEOUT_S = 10.0


async def read_body(request: web.Request) -> bytes:
    """The request's body; :class:`ClientGone` when the client closes the connection before it is all there,
    :class:`RequestTimeout` when it is not all there within :data:`BODY_READ_TIMEOUT_S` of this call (the
    connection is closed right after the answer)."""
    timeout_s = BODY_READ_TIMEOUT_S
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except ConnectionResetError as exc:  # what aiohttp raises for a body cut short by the client
        raise ClientGone("the client closed the connection before its request's body was read") from exc
    except TimeoutError as exc:
        raise RequestTimeout(
            f"the request's body did not arrive within {timeout_s:g} s (is its Content-Length right?)"
        ) from exc


def code_of(reason: str) -> str:
    """The error code of an HTTP reason phrase: ``"Request Entity Too Large"`` → ``"request_entity_too_large"``."""
    return reason.lower().replace(" ", "_")


def error_response(status: int, code: str, message: str, details: Any = None, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "details": details}}, status=status, headers=headers
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Map domain errors and aiohttp's own HTTP errors to JSON; never leak a stack trace."""
    if (expect := _unmet_expectation(request)) is not None:  # before the body is read (see expect_handler)
        return _expectation_failed(expect)
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ClientGone as exc:  # nobody to answer: said once, at INFO, and counted apart from the server's errors
        log.info("%s %s: %s", request.method, request.path, exc.message)
        return error_response(exc.status, exc.code, exc.message)
    except ApiError as exc:
        answer = error_response(exc.status, exc.code, exc.message, exc.details, **exc.headers)
        if exc.closes_connection:
            return await _answered_then_closed(request, answer)
        return answer
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, code_of(exc.reason), exc.reason, None, **{
            k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}
        })
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; it has been logged")


async def expect_handler(request: web.Request) -> None:
    """``Expect: 100-continue`` is answered ``100 Continue`` as aiohttp does; any other expectation is left to
    :func:`error_middleware` (a JSON 417 with a request id, counted like every answer), where aiohttp's own
    handler would answer it in plain text before any middleware."""
    if _unmet_expectation(request) is None:
        await _default_expect_handler(request)


def _expectation_failed(expect: str) -> web.Response:
    return error_response(417, "expectation_failed", f"unknown Expect: {expect[:100]!r} (only 100-continue is)")


async def _answered_then_closed(request: web.Request, answer: web.Response) -> web.Response:
    """Send ``answer`` now and close the connection after it. aiohttp would otherwise go on reading what is left of
    the body (its "lingering", 10 s) before closing, and that is what the client is holding back."""
    answer.force_close()
    await answer.prepare(request)
    await answer.write_eof()
    request.protocol.force_close()  # the transport sends what was written, then closes
    return answer


def _unmet_expectation(request: web.Request) -> str | None:
    """The request's ``Expect``, when it is one this server does not meet (HTTP/1.1 only, as aiohttp)."""
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11 and expect and expect.lower() != "100-continue":
        return expect
    return None


#: Credentials in what aiohttp's parser quotes of a request it cannot read: a header's value, a bearer token, the
#: live stream's ``?token=``.
_CREDENTIALS = re.compile(
    r"(?i)((?:proxy-)?authorization|cookie|x-api-key)(\s*:\s*)[^\r\n'\"]*"
    r"|(bearer\s+|basic\s+)[A-Za-z0-9._~+/=-]+"
    r"|([?&]token=)[^&\s'\"]+"
)
#: A JWT's dotted parts, or a long run of token characters: what no parser's own words are.
_TOKEN_LIKE = re.compile(r"(?:[A-Za-z0-9_~+/=-]{8,}\.)+[A-Za-z0-9_~+/=-]{8,}|[A-Za-z0-9_~+/=-]{24,}")


def redacted(text: str) -> str:
    """``text`` without the credentials it quotes: a header's value, a bearer token, the stream's ``?token=``, and
    whatever looks like a token where the parser quoted a value without its name."""
    named = _CREDENTIALS.sub(lambda m: f"{m.group(1) or m.group(3) or m.group(4)}{m.group(2) or ''}<redacted>", text)
    return _TOKEN_LIKE.sub("<redacted>", named)


#: How long a request's line and headers may take to arrive, from their first byte while the connection waits for a
#: request (the body has :data:`BODY_READ_TIMEOUT_S` of its own). aiohttp sets no such limit: a client trickling a
#: header a byte at a time ("slowloris") held its connection until the idle timeout.
HEAD_READ_TIMEOUT_S = 10.0
#: How long a connection may wait for its next request, its first one too (aiohttp's ``AppRunner`` keeps one for an
#: hour; 75 s is ``web.run_app``'s and nginx's, above how long HTTP clients keep an idle one: 15 s for aiohttp's).
IDLE_TIMEOUT_S = 75.0


def _head_timeout_answer() -> bytes:
    """A 408 in the JSON error shape, written straight to the transport: no request was read, so none can answer."""
    answer = error_response(
        408, "request_timeout", f"the request line and headers did not all arrive within {HEAD_READ_TIMEOUT_S:g} s")
    body = cast(bytes, answer.body)
    head = (f"HTTP/1.1 408 Request Timeout\r\nDate: {formatdate(usegmt=True)}\r\n"
            f"Content-Type: {answer.headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n"
            f"{REQUEST_ID_HEADER}: {request_id(None)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


class _JsonErrorsHandler(RequestHandler):
    """aiohttp's connection handler, answering what it cannot parse in the JSON error shape too, and a request whose
    line and headers do not all arrive within :data:`HEAD_READ_TIMEOUT_S` with a 408 (then closing)."""

    __slots__ = ("_head_deadline", "_heads_read")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._heads_read = 0  # requests whose line and headers were complete, as aiohttp's parser counted them

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._request_count != self._heads_read:  # a request's head is complete (and perhaps the start of another)
            self._heads_read = self._request_count
            self._stop_head_deadline()
        elif self._head_deadline is None and self._waiting_for_a_request():  # the first bytes of a head
            self._head_deadline = self._loop.call_later(HEAD_READ_TIMEOUT_S, self._head_too_slow)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_deadline()
        super().connection_lost(exc)

    def _waiting_for_a_request(self) -> bool:
        """The connection is between requests: bytes now are a head's, not a body's. aiohttp's loop awaits this
        future only then; a body being read, or lingered over once its handler is done, is awaited otherwise."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _stop_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.transport is None or not self._waiting_for_a_request():  # a completed head stopped the deadline
            return
        peer = self.transport.get_extra_info("peername")
        log.info("request head from %s not complete %g s after its first bytes: answered 408 and closed",
                 peer[0] if peer else "?", HEAD_READ_TIMEOUT_S)
        self.transport.write(_head_timeout_answer())
        self.force_close()  # the transport sends what was written, then closes

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        # A request line or header aiohttp cannot parse (or one over its 8 KiB limit) never reaches the app and its
        # middleware: aiohttp answers it here, in plain text, and logs a stack trace. Bad input is the client's; a
        # line says what it was.
        if request.writer.output_size > 0:  # part of a response went out already: aiohttp closes the connection
            raise ConnectionError("a response was being sent when the request failed")
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            response = error_response(status, "internal", "internal error; it has been logged")
        else:
            # What aiohttp's parser says quotes the request's bytes, credentials among them (which of them depends
            # on the parser): the log has it redacted, the client only what kind of error it was.
            log.info("unreadable request from %s: %s", request.remote, redacted(str(message or exc)))
            phrase = HTTPStatus(status).phrase
            response = error_response(status, code_of(phrase),
                                      f"{phrase}: the request line or its headers could not be read")
        response.headers[REQUEST_ID_HEADER] = request_id(None)  # what it sent could not be read
        response.force_close()
        return response


class _JsonErrorsServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorsHandler(self, loop=self._loop, **self._kwargs)


#: Header lines a client's request may have (aiohttp's default limit; one over it is a 400).
MAX_HEADERS = 128
#: What a worker's forward may add to a client's headers (the owner's Host, the forwarded-by mark and its proof, a
#: traceparent, aiohttp's own Accept, Accept-Encoding and User-Agent): the owner's parser takes this many more, so
#: a request forwarded whole is answered as it would be directly (api/middleware.py, ``header_limit_middleware``,
#: keeps the client's own limit).
FORWARDING_HEADERS = 8


class JsonErrorsRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer even an unparseable request with the JSON error shape, whose
    parser leaves room for the headers a forward adds (:data:`FORWARDING_HEADERS`), and which bounds how long a
    request's head may trickle in (:data:`HEAD_READ_TIMEOUT_S`) and a connection may idle (:data:`IDLE_TIMEOUT_S`)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("max_headers", MAX_HEADERS + FORWARDING_HEADERS)
        kwargs.setdefault("keepalive_timeout", IDLE_TIMEOUT_S)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorsServer  # aiohttp has no setting for the handler's class
        server.request_handler = _unmet_expectations_in_json(server.request_handler)
        return server


def _unmet_expectations_in_json(handle: Any) -> Any:
    """A path no route has gets aiohttp's own ``Expect`` handler (routes get :func:`expect_handler`), which raises
    its plain-text 417 before any middleware runs: answered here in the JSON shape instead."""

    async def handle_request(request: web.BaseRequest) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handle(request)
            return response
        except web.HTTPExpectationFailed:
            response = _expectation_failed(request.headers.get("Expect", ""))
            response.headers[REQUEST_ID_HEADER] = request_id(request.headers.get(REQUEST_ID_HEADER))
            return response

    return handle_request
