"""Deadlines: a timer on every worker emits ExpireOrder for the pending orders of the partitions it owns.

The timer only *sends commands*; the orders flow decides what expiry means when it applies one. Each command is
named by its order and deadline, so a tick that runs twice (or on two workers around a rebalance) changes nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from agents.runtime import Runtime
from streamcart.domain import timeouts
from streamcart.partitioning import partition_for

log = logging.getLogger(__name__)


#: A command already sent for an order is sent again only after this long without the order moving on (the
#: orders flow may be behind; a lost command must still be retried, but not once a tick for every overdue order),
#: and each further time after twice as long, up to :data:`RESEND_MAX_S`: behind a backlog, re-sending every few
#: seconds would only add to it.
RESEND_AFTER_S = 10.0
RESEND_MAX_S = 300.0


class Resends:
    """When each order's timer command was last sent, and how long to wait before sending it again."""

    def __init__(self) -> None:
        self._sent: dict[str, tuple[float, float]] = {}  # order id -> (last sent, monotonic; wait before the next)

    def due(self, order_id: str, now: float) -> bool:
        """Whether ``order_id``'s command may be sent at ``now``: never sent, or its wait is over."""
        last, wait = self._sent.get(order_id, (None, RESEND_AFTER_S))
        return last is None or now - last >= wait

    def sent(self, order_id: str, now: float) -> None:
        last, wait = self._sent.get(order_id, (None, RESEND_AFTER_S))
        self._sent[order_id] = (now, RESEND_AFTER_S if last is None else min(wait * 2, RESEND_MAX_S))

    def keep_only(self, order_ids: set[str]) -> None:
        """Forget what no longer needs a command (settled, forgotten, or owned by another worker now)."""
        for order_id in [o for o in self._sent if o not in order_ids]:
            del self._sent[order_id]


def owned_partitions(runtime: Runtime) -> set[int]:
    """The partitions of the order commands this worker owns now (those whose orders its timers look after)."""
    topic = runtime.topics.order_commands
    return {tp.partition for tp in runtime.app.assignor.assigned_actives() if tp.topic == topic}


def restoring(runtime: Runtime) -> bool:
    """Whether the worker is in a rebalance or still reading its tables back (faust's timers run meanwhile): what
    the tables hold then is not all there is."""
    app = runtime.app
    return bool(app.rebalancing or app.in_recovery or not app.tables.recovery.completed.is_set())


def register(runtime: Runtime) -> Any:
    """Declare the deadline timer on the runtime's app."""
    settings = runtime.settings
    tables = runtime.tables
    resends = Resends()

    async def expire_due_orders() -> None:
        # An exception escaping a faust timer kills the whole worker (notes/faust.md): never let one out.
        try:
            owned = owned_partitions(runtime)
            now_ms = int(time.time() * 1000)
            now = time.monotonic()
            pending = tables.deadlines.items()  # of the partitions this worker holds active (faust's RocksDB)
            if not restoring(runtime):
                runtime.telemetry.orders_pending(len(pending))  # not of tables still being read back: the last
            overdue = [
                order_id for order_id, deadline in pending
                if deadline <= now_ms and partition_for(order_id, settings.partitions) in owned
            ]
            for order_id in overdue:
                if not resends.due(order_id, now):
                    continue  # sent recently: don't even load the order
                order = tables.orders.get(order_id)
                if order is None:
                    continue
                for command in timeouts.due([order], now_ms):
                    resends.sent(order_id, now)
                    await runtime.send(command)
            resends.keep_only(set(overdue))
        except Exception:
            log.exception("deadline scan failed; the next tick tries again")

    return runtime.app.timer(settings.timer_interval_s, name="deadlines")(expire_due_orders)
