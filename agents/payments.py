"""The payments flow, keyed by order_id: the gateway call between two pure steps of
:mod:`streamcart.domain.payments` (plan, then apply the result).

A gateway call takes tens of milliseconds, so one agent awaiting one call at a time would cap payments at a few
dozen a second. The agent takes batches and handles different orders concurrently, each order's own commands in
order (:func:`agents.runtime.consume_concurrently`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from agents.runtime import FlowError, Runtime, consume_concurrently, refused
from schemas.messages import AuthorizePayment, Message, PaymentCommand
from streamcart.domain import payments
from streamcart.domain.decision import Decision
from streamcart.domain.payments import PaymentState
from streamcart.gateway.client import ClientPolicy, GatewayClient

log = logging.getLogger(__name__)

#: A capture, void or refund the gateway cannot do now is tried again this many times (with backoff) before it
#: is dead-lettered for a person to replay: a compensation is never dropped silently.
SETTLEMENT_ATTEMPTS = 6


def register(runtime: Runtime) -> Any:
    """Declare the payments agent on the runtime's app."""
    table = runtime.tables.payments
    client: GatewayClient | None = None

    def gateway() -> GatewayClient:
        nonlocal client
        if client is None:  # created inside the running loop, on first use
            settings = runtime.settings
            policy = ClientPolicy(
                attempt_timeout_s=settings.gateway_attempt_timeout_s, attempts=settings.gateway_attempts
            )
            client = GatewayClient(settings.gateway_url, policy, on_breaker=runtime.telemetry.breaker)
        return client

    async def settle(command: PaymentCommand) -> Decision[PaymentState]:
        delay = 0.2
        for attempt in range(1, SETTLEMENT_ATTEMPTS + 1):
            state = table.get(command.order_id)
            planned = payments.plan(state, command)
            if not isinstance(planned, payments.GatewayCall):
                return planned
            result = await gateway().execute(planned)
            decision = payments.apply_result(state, command, result)
            retryable = result.outcome == payments.Outcome.UNAVAILABLE
            if decision.rejected is None or isinstance(command, AuthorizePayment) or not retryable:
                return decision
            if attempt < SETTLEMENT_ATTEMPTS:
                log.warning("payment %s: %s (attempt %d), retrying", command.order_id, decision.rejected, attempt)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        return decision

    async def handle(message: Message, event: Any) -> None:
        if not isinstance(message, PaymentCommand):
            raise FlowError(f"{type(message).__name__} on the payment commands topic")
        decision = await settle(message)
        refused(decision.rejected, message)
        payment = decision.state if decision.state is not None else table.get(message.order_id)
        if payment is not None:  # a redelivery stores it again (see agents/orders.py for why)
            table.put(message.order_id, payment)
        await runtime.emit(decision.messages, cause=event)

    async def payments_agent(stream: Any) -> None:
        await consume_concurrently(runtime, stream, handle, flow="payments")

    return runtime.app.agent(runtime.source(runtime.topics.payment_commands), name="payments")(payments_agent)
