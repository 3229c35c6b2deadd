"""The notifications flow: order events → the customer's channels, with retries; give-ups go to the DLQ.

It consumes ``events.orders`` (keyed by order_id, so the order's own record, with its webhook URL, email address
and phone number, is in this worker's orders table) and reports each delivery on ``events.notifications``. What
it delivered is noted in the ``notified`` table (keyed by order_id like its source, so in the event's partition)
as each delivery succeeds, and a redelivered event delivers only what was not (a give-up, dead-lettered and not
noted). A give-up replayed from the dead-letter topic (``streamcart dlq replay``) goes to the channel that gave up
alone. The orders flow forgets the notes with the order (agents/orders.py).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from agents.runtime import Runtime, consume_concurrently, header
from schemas.messages import Message, OrderEvent
from streamcart.dead_letters import DlqHeader, replay_route
from streamcart.domain import notifications
from streamcart.domain.notifications import Channel, Contact, Notification
from streamcart.notify.delivery import Deliverer, DeliveryFailed, default_providers

log = logging.getLogger(__name__)


def register(runtime: Runtime, worker_index: int = 0) -> Any:
    """Declare the notifications agent on the runtime's app."""
    outbox = Path(runtime.settings.home).resolve() / "data" / "notifications" / "outbox.jsonl"

    def new_deliverer() -> Deliverer:
        allow_private = runtime.settings.webhook_allow_private
        return Deliverer(default_providers(outbox, allow_private=allow_private), sleep=runtime.app.in_progress.pause)

    channels = runtime.made_on_first_use(new_deliverer, Deliverer.close)
    notified = runtime.tables.notified

    async def deliver(notification: Notification, event: Any, *, replayed: bool) -> Message:
        try:
            attempts = await channels().deliver(notification, replayed=replayed)
        except Exception as exc:  # a give-up, or a provider bug: either way this channel failed, not the others
            await runtime.dead_letter(event, exc, f"notifications.{notification.channel}")
            # (A provider's own error, not a failed delivery, is not tried again: its one attempt.)
            made = exc.attempts if isinstance(exc, DeliveryFailed) and exc.attempts is not None else 1
            return notifications.failed(notification, attempts=made, reason=str(exc))
        # Noted at once, not once the others are done: a rebalance that takes the event back meanwhile (Yielded)
        # has it handled again, and what was delivered is not delivered twice.
        order_id = notification.order_id
        notified.put(order_id, notifications.noted(notified.get(order_id), notification, attempts=attempts))
        return notifications.sent(notification, attempts=attempts)

    async def handle(message: Message, event: Any) -> None:
        if not isinstance(message, OrderEvent):
            return
        order = runtime.tables.orders.get(message.order_id)
        contact = Contact() if order is None else Contact(order.webhook_url, order.email, order.phone)
        replay = header(event, DlqHeader.REPLAY_FLOW)  # a channel's give-up, replayed: for that channel alone
        planned = notifications.plan(message, contact, only=None if replay is None else replay_route(replay)[1])
        if not planned:  # most order events notify nobody: no read of the notes for them
            return
        pending, delivered = notifications.split(planned, notified.get(message.order_id))
        deliveries = [asyncio.ensure_future(deliver(n, event, replayed=replay is not None)) for n in pending]
        try:
            outcomes = await asyncio.gather(*deliveries)
        except BaseException:  # a rebalance or a stop took the message back (Yielded): the others stop too
            for delivery in deliveries:
                delivery.cancel()
            raise
        await runtime.emit((*delivered, *outcomes), cause=event)

    async def notifications_agent(stream: Any) -> None:
        each_channel = (Channel.WEBHOOK, Channel.EMAIL, Channel.SMS)  # a channel's give-up is a flow of its own
        runtime.telemetry.may_dead_letter(*(f"notifications.{channel}" for channel in each_channel))
        await consume_concurrently(runtime, stream, handle, flow="notifications")

    source = runtime.source(runtime.topics.order_events)
    return runtime.app.agent(source, name="notifications")(notifications_agent)
