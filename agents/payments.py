"""The payments flow, keyed by order_id: the gateway call between two pure steps of
:mod:`streamcart.domain.payments` (plan, then apply the result).

A gateway call takes tens of milliseconds, so one agent awaiting one call at a time would cap payments at a few
dozen a second. The agent takes batches and handles different orders concurrently, each order's own commands in
order (:func:`agents.runtime.consume_concurrently`).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from agents.runtime import FlowError, Runtime, consume_concurrently, refused
from schemas.messages import AuthorizePayment, Message, PaymentCommand
from streamcart.domain import payments
from streamcart.domain.decision import Decision
from streamcart.domain.payments import PaymentState
from streamcart.gateway.client import CIRCUIT_OPEN, ClientPolicy, GatewayClient

log = logging.getLogger(__name__)

#: Waits between two tries of a payment step the gateway could not do (each try is the client's own retries: a few
#: seconds, or at once while its circuit breaker is open): doubling from the first to the last, each a random half
#: to all of it, so the steps waiting do not come back together, nor in step with the breaker's 5 s reset.
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0


def register(runtime: Runtime) -> Any:
    """Declare the payments agent on the runtime's app."""
    table = runtime.tables.payments

    def new_client() -> GatewayClient:
        settings = runtime.settings
        policy = ClientPolicy(attempt_timeout_s=settings.gateway_attempt_timeout_s, attempts=settings.gateway_attempts)
        return GatewayClient(settings.gateway_url, policy, on_breaker=runtime.telemetry.breaker)

    gateway = runtime.made_on_first_use(new_client, GatewayClient.close)
    saga_timeout_ms = int(runtime.settings.saga_timeout_s * 1000)
    in_progress = runtime.app.in_progress

    async def settle(command: PaymentCommand) -> Decision[PaymentState]:
        """Plan, call the gateway, apply its answer; while the gateway cannot be reached, try again.

        An authorization is tried until its order's deadline (the order is cancelled then, and the authorization
        found by its key is voided if it went through). A capture, void or refund is tried for
        ``gateway_settle_for_s`` (a setting, 15 minutes), then dead-lettered: money is not left held, or
        uncollected, because the gateway was down for a while. Each wait gives the message back if a rebalance or
        a stop begins (``InProgress.pause``).
        """
        delay, attempt = RETRY_FIRST_S, 1
        if isinstance(command, AuthorizePayment):
            # Derived commands carry their order's time (the placement): this is the order's deadline.
            give_up_at = (command.occurred_at + saga_timeout_ms) / 1000
        else:
            give_up_at = time.time() + runtime.settings.gateway_settle_for_s
        while True:
            state = table.get(command.order_id)
            planned = payments.plan(state, command)
            if not isinstance(planned, payments.GatewayCall):
                return planned
            result = await gateway().execute(planned)
            decision = payments.apply_result(state, command, result)
            left_s = give_up_at - time.time()
            if result.outcome != payments.Outcome.UNAVAILABLE or left_s <= 0:
                return decision  # an unavailable authorization: declined, and a void of whatever went through
            wait_s = min(delay * random.uniform(0.5, 1.0), left_s)  # the last try comes just before the deadline
            # While the breaker is open every payment in flight waits, and its opening was the warning (gateway
            # client): a line per payment per try would bury it.
            level = logging.DEBUG if result.reason == CIRCUIT_OPEN else logging.WARNING
            log.log(level, "payment %s: the gateway could not %s it (%s, try %d); trying again in %.1f s",
                    command.order_id, planned.operation, result.reason, attempt, wait_s)
            await in_progress.pause(wait_s)
            delay, attempt = min(delay * 2, RETRY_MAX_S), attempt + 1

    async def handle(message: Message, event: Any) -> None:
        if not isinstance(message, PaymentCommand):
            raise FlowError(f"{type(message).__name__} on the payment commands topic")
        decision = await settle(message)
        await runtime.member()  # the gateway may have taken long enough for this worker to lose the partition
        refused(decision.rejected, message)
        payment = decision.state if decision.state is not None else table.get(message.order_id)
        if payment is not None:  # a redelivery stores it again (see agents/orders.py for why)
            table.put(message.order_id, payment)
        await runtime.emit(decision.messages, cause=event)

    async def payments_agent(stream: Any) -> None:
        # Its decisions rest on the gateway's answers and the deadline, not on its state and the message alone: a
        # redelivery after a crash that lost its state could be decided otherwise (an approval become a decline,
        # and a void) while the first decision's events were out. So its records leave after its state.
        await consume_concurrently(runtime, stream, handle, flow="payments", decides_alone=False)

    return runtime.app.agent(runtime.source(runtime.topics.payment_commands), name="payments")(payments_agent)
