"""The payment gateway client: one HTTP call per :class:`GatewayCall`, made safe to repeat and to fail.

- The order id is the idempotency key, so a retry (or a redelivered command) never authorizes twice.
- Transient failures (connection errors, timeouts, 5xx, 429) are retried with exponential backoff and jitter
  (tenacity), each attempt under its own timeout; a 4xx answer is final.
- A circuit breaker (purgatory) stops calling a gateway that keeps failing and fails fast until it recovers; one
  for authorizations and one for captures, voids and refunds, so one settlement the gateway always fails (tried
  again and again for minutes) cannot keep the breaker open for every new order's authorization.
- An answer is taken for what it says only when it says it: a 2xx without the status and authorization id the
  operation returns is transient (tried again), never an approval; a void by key settles with nothing to give
  back only when the gateway says the authorization holds nothing (declined, voided, refunded).
- An answer is this call's answer only when it says so: an authorization must name the call's idempotency key (and
  its amount and currency, where it gives them), an operation's answer the authorization operated on. Another
  request's record (a misrouted answer, a proxy's cache) is no answer: transient. A redirect is not followed (it
  would turn the POST into a GET of whatever it names): a 3xx is transient too, like an answer too large to be
  one (over :data:`MAX_ANSWER_BYTES`) or one that does not parse (nested too deep included). Another request's
  record (:class:`AnotherRequestsAnswer`) is no failure for the breaker: the gateway answered, and answers mixed up
  for a few orders must not stop every other order's calls.
- What the gateway says is recorded only in a shape every reader takes: an authorization id is a short token of
  letters, digits and ``._:~-`` (it goes into the gateway's URLs and, as it is, into events and the warehouse,
  whose PostgreSQL refuses a NUL and stops the sink on such a row), anything else is no answer (transient); a
  decline reason or error code loses its control characters and is cut at 100 characters.
- Whatever happens, the caller gets a :class:`GatewayResult`: approved, declined (with the reason), or
  unavailable (no answer after the retries, or the breaker is open). Nothing here decides what that means for
  the order: :mod:`streamcart.domain.payments` does.
- Every request is a child span of the one being handled, and says so in its ``traceparent`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientResponse, ClientSession, ClientTimeout, TCPConnector, ThreadedResolver
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from streamcart.domain.payments import AUTHORIZATION_CAPTURED, NOTHING_HELD, GatewayCall, GatewayResult
from streamcart.errors import StreamcartError
from streamcart.telemetry import BREAKER_LEVEL, GATEWAY_BREAKER, GATEWAY_CALLS, GATEWAY_RETRIES
from streamcart.text import CONTROL
from streamcart.tracing import call_span

log = logging.getLogger(__name__)

BREAKER = "payment-gateway"
#: The breaker of captures, voids and refunds (:data:`BREAKER` is the authorizations').
SETTLEMENTS_BREAKER = "payment-gateway-settlements"
#: The reason of an unavailable result given without calling: the call's breaker is open.
CIRCUIT_OPEN = "gateway_circuit_open"


class TransientGatewayError(StreamcartError):
    """The gateway did not answer usefully this time; the same call may succeed later."""


class AnotherRequestsAnswer(TransientGatewayError):
    """The gateway answered with another request's record (another idempotency key, amount, currency or
    authorization): tried again, yet no failure for the breaker, which stops calls to a gateway that fails as a
    whole. Answers mixed up for a few orders must not stop every other order's authorization. (purgatory counts it
    as a call that went well: the gateway answered.)"""


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """How hard the client tries. The defaults keep one call's worst case near 9 s (4 attempts of 2 s and the
    backoff between them); a void by key makes two requests an attempt, each with its 2 s: near 17 s."""

    attempt_timeout_s: float = 2.0
    attempts: int = 4
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    breaker_threshold: int = 20
    breaker_reset_s: float = 5.0


class GatewayClient:
    """Calls the gateway over HTTP. Create it inside a running event loop; close it when done."""

    def __init__(
        self,
        base_url: str,
        policy: ClientPolicy | None = None,
        session: ClientSession | None = None,
        on_breaker: Callable[[str], None] | None = None,
    ):
        self.on_breaker = on_breaker
        self.base_url = base_url.rstrip("/")
        self.policy = policy or ClientPolicy()
        # The system's resolver, not aiohttp's default (c-ares, once aiodns is installed for the webhooks): c-ares keeps
        # an answer for its TTL (Docker's DNS gives 600 s), so a gateway back at a new address would be called at its
        # old one until then.
        self._session = session or ClientSession(connector=TCPConnector(resolver=ThreadedResolver()),
                                                 timeout=ClientTimeout(total=self.policy.attempt_timeout_s))
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=self.policy.breaker_threshold,
            default_ttl=self.policy.breaker_reset_s,
            exclude=[AnotherRequestsAnswer],
        )
        self.breaker_state = "closed"
        self._states: dict[str, str] = {}  # breaker name -> its state
        self._changes: dict[str, int] = {}  # breaker name -> how many times it changed state (a timer's check)
        self._last_failure: dict[str, str] = {}  # breaker name -> the last failure counted against it
        self._breakers.add_listener(self._on_breaker_event)

    async def close(self) -> None:
        await self._session.close()

    def _on_breaker_event(self, name: str, event_name: str, event: Any) -> None:
        state = getattr(event, "state", None)
        if state is not None:
            self._changes[name] = changes = self._changes.get(name, 0) + 1
            self._report(name, str(state))
            log.warning("payment gateway circuit breaker %s is now %s", name, state)
            if str(state) == "opened":
                # purgatory moves an open breaker on only when a call comes after its reset time: with no call (the
                # payments that were waiting settled, no new order), it would say "opened" for good, and the
                # breaker alert fire, while the gateway is back. Once the reset time has passed the next call is a
                # trial: half-opened, as the next call would find it.
                with contextlib.suppress(RuntimeError):  # no running loop (not in a worker): nothing to schedule
                    asyncio.get_running_loop().call_later(
                        self.policy.breaker_reset_s, self._reset_time_passed, name, changes)

    def _reset_time_passed(self, name: str, changes: int) -> None:
        if self._changes.get(name) == changes and self._states.get(name) == "opened":
            self._report(name, "half-opened")

    def _report(self, name: str, state: str) -> None:
        self._states[name] = state
        # The least healthy breaker (BREAKER_LEVEL: closed 0, half-opened 0.5, opened 1).
        self.breaker_state = max(self._states.values(), key=lambda s: BREAKER_LEVEL.get(s, 1.0))
        GATEWAY_BREAKER.set(BREAKER_LEVEL.get(self.breaker_state, 1.0))
        if self.on_breaker is not None:
            self.on_breaker(self.breaker_state)

    async def execute(self, call: GatewayCall) -> GatewayResult:
        """Perform ``call``; never raises for a gateway problem (that is an ``unavailable`` result, whose detail is
        the last failure: this call's, or while the breaker is open the one that last counted against it)."""
        breaker = _breaker_of(call)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.policy.attempts),
                wait=wait_exponential_jitter(
                    multiplier=self.policy.backoff_initial_s, max=self.policy.backoff_max_s,
                    jitter=self.policy.backoff_initial_s,
                ),
                retry=retry_if_exception_type(TransientGatewayError),
                reraise=True,
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        GATEWAY_RETRIES.labels(call.operation).inc()
                    return await self._guarded(call)
        except TransientGatewayError as exc:
            log.warning("payment gateway unavailable for %s %s: %s", call.operation, call.idempotency_key, exc)
            self._last_failure[breaker] = str(exc)
            return GatewayResult.unavailable(detail=str(exc))
        except OpenedState:
            # The breaker answers for the gateway while it is open: a give-up met here names what opened it.
            last = self._last_failure.get(breaker)
            return GatewayResult.unavailable(CIRCUIT_OPEN, None if last is None else f"opened by: {last}")
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _guarded(self, call: GatewayCall) -> GatewayResult:
        # Only a TransientGatewayError escaping this block counts as a failure (AnotherRequestsAnswer does not, nor
        # does a decline: both are answers).
        async with await self._breakers.get_breaker(_breaker_of(call)):
            return await self._once(call)

    async def _once(self, call: GatewayCall) -> GatewayResult:
        started = time.perf_counter()
        result = "error"
        try:
            answer = await self._call(call)
            result = answer.outcome
            return answer
        finally:
            GATEWAY_CALLS.labels(call.operation, result).observe(time.perf_counter() - started)

    async def _call(self, call: GatewayCall) -> GatewayResult:
        if call.operation == "authorize" or call.authorization_id is None:
            status, body = await self._post("/v1/authorizations", _authorization_body(call))
            if call.operation != "authorize":
                # A void (or refund) by idempotency key: the authorization is found by re-sending it.
                if status >= 300:
                    return _refused(status, body)  # not found out: for a person, never "nothing to void"
                _answers(call, body, None)
                found = _status(body, "approved", "captured", *NOTHING_HELD)
                if found in NOTHING_HELD:
                    return GatewayResult.declined(NOTHING_HELD[found])  # it holds no money: nothing to give back
                if call.operation == "void" and found == "captured":
                    return GatewayResult.declined(AUTHORIZATION_CAPTURED)  # taken, not held: not "nothing to void"
                authorization_id = _authorization_id(body)
                status, body = await self._post(f"/v1/authorizations/{authorization_id}/{call.operation}")
            else:
                authorization_id = None
        else:
            authorization_id = call.authorization_id
            status, body = await self._post(f"/v1/authorizations/{authorization_id}/{call.operation}")
        if status < 300:
            _answers(call, body, authorization_id)
        return _result(call, status, body)

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        try:
            with call_span(f"payment gateway {path.rsplit('/', 1)[-1]}") as traceparent:
                headers = {"traceparent": traceparent}
                async with self._session.post(self.base_url + path, json=body or {}, headers=headers,
                                              allow_redirects=False) as response:
                    status = response.status
                    if status >= 500 or status == 429:
                        raise TransientGatewayError(f"HTTP {status}")
                    if 300 <= status < 400:
                        location = response.headers.get("Location", "")
                        raise TransientGatewayError(f"HTTP {status}: redirected to {location[:200]!r}, not followed")
                    raw = await _read_at_most(response, MAX_ANSWER_BYTES)
        except TransientGatewayError:
            raise
        except TimeoutError as exc:
            raise TransientGatewayError(f"no answer within {self.policy.attempt_timeout_s:g} s") from exc
        except Exception as exc:
            # Whatever went wrong in the exchange (ClientError, or anything else aiohttp meets) leaves no answer to
            # act on: tried again, and at worst an authorization is unavailable, declined and voided by key at its
            # deadline. A failure that escaped would dead-letter the command, its outcome unknown and no void sent.
            raise TransientGatewayError(f"{type(exc).__name__}: {exc}"[:300]) from exc
        try:
            payload = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except Exception as exc:  # not UTF-8 or JSON (ValueError), or nested too deep to parse (RecursionError)
            raise TransientGatewayError(f"an answer that does not parse: {type(exc).__name__}: {exc}"[:300]) from exc
        return status, payload if isinstance(payload, dict) else {}


def _breaker_of(call: GatewayCall) -> str:
    return BREAKER if call.operation == "authorize" else SETTLEMENTS_BREAKER


#: The largest answer the client reads: an authorization is a few hundred bytes; more is no answer (transient),
#: not something to hold in memory while it streams in.
MAX_ANSWER_BYTES = 64 * 1024


async def _read_at_most(response: ClientResponse, limit: int) -> bytes:
    """The body of ``response``; :class:`TransientGatewayError` once it proves longer than ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise TransientGatewayError(f"an answer of {response.content_length} bytes, over the {limit} an answer may be")
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise TransientGatewayError(f"an answer of over {limit} bytes, more than an answer may be")
    return bytes(body)


def _authorization_body(call: GatewayCall) -> dict[str, Any]:
    return {
        "idempotency_key": call.idempotency_key,
        "amount_cents": call.amount_cents,
        "currency": call.currency,
        "token": call.payment_token or "",
    }


def _answers(call: GatewayCall, body: dict[str, Any], authorization_id: str | None) -> None:
    """Check that ``body`` (a 2xx answer) is about ``call``: the authorization of its idempotency key, amount and
    currency, and the one operated on (``authorization_id``, for an operation); else it is no answer to act on."""
    if body.get("idempotency_key") != call.idempotency_key:
        raise AnotherRequestsAnswer(f"an answer for another request: idempotency key "
                                    f"{str(body.get('idempotency_key'))[:200]!r}, not {call.idempotency_key!r}")
    for field, value in (("amount_cents", call.amount_cents), ("currency", call.currency)):
        if field in body and body[field] != value:
            raise AnotherRequestsAnswer(f"an answer for another request: {field} {str(body[field])[:50]!r}, "
                                        f"not {value!r}")
    if authorization_id is not None and body.get("authorization_id") != authorization_id:
        raise AnotherRequestsAnswer(f"an answer about another authorization: "
                                    f"{str(body.get('authorization_id'))[:200]!r}, not {authorization_id!r}")


#: The status a capture, void or refund leaves its authorization in.
_DONE = {"capture": "captured", "void": "voided", "refund": "refunded"}


def _result(call: GatewayCall, status: int, body: dict[str, Any]) -> GatewayResult:
    if status >= 300:
        return _refused(status, body)
    if call.operation == "authorize":
        # A repeat of the key answers its authorization as it is now: captured still holds the money taken; one
        # voided or refunded holds nothing.
        found = _status(body, "approved", "captured", *NOTHING_HELD)
        if found == "declined":
            return GatewayResult.declined(_code(body.get("reason"), "declined"))
        if found in NOTHING_HELD:
            return GatewayResult.declined(NOTHING_HELD[found])
    else:
        _status(body, _DONE[call.operation])
    return GatewayResult.approved(_authorization_id(body))


def _refused(status: int, body: dict[str, Any]) -> GatewayResult:
    error = body.get("error", {}) if isinstance(body.get("error"), dict) else {}
    return GatewayResult.declined(_code(error.get("code"), f"http_{status}"))


def _status(body: dict[str, Any], *expected: str) -> str:
    """The ``status`` the gateway answered, one of ``expected``; anything else (no body, another status) is no
    answer to act on: transient, tried again."""
    status = body.get("status")
    if status not in expected:
        raise TransientGatewayError(f"unexpected answer: status {status!r}, expected one of {', '.join(expected)}")
    return str(status)


#: An authorization id the client takes: it becomes a path segment of the gateway's URLs and a warehouse column.
_AUTHORIZATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:~-]{0,127}")
_CODE_LENGTH = 100


def _authorization_id(body: dict[str, Any]) -> str:
    authorization_id = body.get("authorization_id")
    if not isinstance(authorization_id, str) or _AUTHORIZATION_ID.fullmatch(authorization_id) is None:
        raise TransientGatewayError(f"unexpected answer: no authorization_id ({str(authorization_id)[:200]!r})")
    return authorization_id


def _code(value: object, default: str) -> str:
    """A decline reason or error code as the gateway gave it, without control characters and cut at 100
    characters; ``default`` when it gave none (or only control characters)."""
    text = CONTROL.sub("", _text(value)).strip()[:_CODE_LENGTH]
    return text or default


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return str(value)  # an ISO 8583 response code may come as a number
