"""The payment gateway client: one HTTP call per :class:`GatewayCall`, made safe to repeat and to fail.

- The order id is the idempotency key, so a retry (or a redelivered command) never authorizes twice.
- Transient failures (connection errors, timeouts, 5xx, 429) are retried with exponential backoff and jitter
  (tenacity), each attempt under its own timeout; a 4xx answer is final.
- A circuit breaker (purgatory) stops calling a gateway that keeps failing and fails fast until it recovers.
- Whatever happens, the caller gets a :class:`GatewayResult`: approved, declined (with the reason), or
  unavailable (no answer after the retries, or the breaker is open). Nothing here decides what that means for
  the order: :mod:`streamcart.domain.payments` does.
- Every request is a child span of the one being handled, and says so in its ``traceparent`` header.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from streamcart.domain.payments import AUTHORIZATION_CAPTURED, GatewayCall, GatewayResult
from streamcart.errors import StreamcartError
from streamcart.telemetry import BREAKER_LEVEL, GATEWAY_BREAKER, GATEWAY_CALLS, GATEWAY_RETRIES
from streamcart.tracing import call_span

log = logging.getLogger(__name__)

BREAKER = "payment-gateway"


class TransientGatewayError(StreamcartError):
    """The gateway did not answer usefully this time; the same call may succeed later."""


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """How hard the client tries. The defaults keep one call's worst case near 6 s."""

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
        self._session = session or ClientSession(timeout=ClientTimeout(total=self.policy.attempt_timeout_s))
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=self.policy.breaker_threshold,
            default_ttl=self.policy.breaker_reset_s,
        )
        self.breaker_state = "closed"
        self._breakers.add_listener(self._on_breaker_event)

    async def close(self) -> None:
        await self._session.close()

    def _on_breaker_event(self, name: str, event_name: str, event: Any) -> None:
        state = getattr(event, "state", None)
        if state is not None:
            self.breaker_state = str(state)
            GATEWAY_BREAKER.set(BREAKER_LEVEL.get(self.breaker_state, 1.0))
            if self.on_breaker is not None:
                self.on_breaker(self.breaker_state)
            log.warning("payment gateway circuit breaker is now %s", state)

    async def execute(self, call: GatewayCall) -> GatewayResult:
        """Perform ``call``; never raises for a gateway problem (that is an ``unavailable`` result)."""
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
            return GatewayResult.unavailable()
        except OpenedState:
            return GatewayResult.unavailable("gateway_circuit_open")
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _guarded(self, call: GatewayCall) -> GatewayResult:
        # Only a TransientGatewayError escaping this block counts as a failure: a decline is an answer.
        async with await self._breakers.get_breaker(BREAKER):
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
            if call.operation != "authorize" and status < 300:
                # A void (or refund) by idempotency key: the authorization was found by re-sending it.
                if body.get("status") not in {"approved", "captured"}:
                    # It holds no money (declined, or already given back): nothing to void.
                    return GatewayResult.declined(f"authorization_{body.get('status')}")
                if call.operation == "void" and body.get("status") == "captured":
                    return GatewayResult.declined(AUTHORIZATION_CAPTURED)  # taken, not held: not "nothing to void"
                status, body = await self._post(f"/v1/authorizations/{body['authorization_id']}/{call.operation}")
        else:
            status, body = await self._post(f"/v1/authorizations/{call.authorization_id}/{call.operation}")
        return _result(call, status, body)

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        try:
            with call_span(f"payment gateway {path.rsplit('/', 1)[-1]}") as traceparent:
                headers = {"traceparent": traceparent}
                async with self._session.post(self.base_url + path, json=body or {}, headers=headers) as response:
                    payload = await response.json(content_type=None) if response.content_length != 0 else {}
                    status = response.status
        except (ClientError, TimeoutError, ValueError) as exc:
            raise TransientGatewayError(f"{type(exc).__name__}: {exc}") from exc
        if status >= 500 or status == 429:
            raise TransientGatewayError(f"HTTP {status}")
        return status, payload if isinstance(payload, dict) else {}


def _authorization_body(call: GatewayCall) -> dict[str, Any]:
    return {
        "idempotency_key": call.idempotency_key,
        "amount_cents": call.amount_cents,
        "currency": call.currency,
        "token": call.payment_token or "",
    }


def _result(call: GatewayCall, status: int, body: dict[str, Any]) -> GatewayResult:
    if status >= 400:
        error = body.get("error", {}) if isinstance(body.get("error"), dict) else {}
        return GatewayResult.declined(str(error.get("code") or f"http_{status}"))
    if call.operation == "authorize" and body.get("status") == "declined":
        return GatewayResult.declined(str(body.get("reason") or "declined"))
    return GatewayResult.approved(str(body.get("authorization_id")))
