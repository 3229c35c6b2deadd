"""Retention: a timer on every worker emits ForgetOrder for the settled orders of its partitions whose time came.

Like the deadline timer it only *sends commands* (:mod:`streamcart.domain.retention` names each by its order and
time, so a tick that runs twice changes nothing); the orders flow decides, when it applies one, whether the order
is forgotten. It reads the ``retention`` index oldest first and stops at the first order not due yet.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from agents.runtime import Runtime
from agents.timeouts import Resends, owned_partitions, restoring
from streamcart.domain import retention
from streamcart.partitioning import partition_for

log = logging.getLogger(__name__)

#: At most this many ForgetOrder commands a tick: a worker back after a long stop catches up over a few ticks
#: instead of sending a whole day's worth at once.
PER_TICK = 2_000

#: How often the scans start again from the first entry of each partition (``RetentionIndex.due`` remembers where
#: the due entries began): a safety net, should an entry ever be added before that point.
RESCAN_S = 600.0


def register(runtime: Runtime) -> Any:
    """Declare the retention timer on the runtime's app (none when orders are kept for ever)."""
    settings = runtime.settings
    if settings.order_retention_s <= 0:
        return None
    index = runtime.tables.retention
    resends = Resends()
    rescanned = time.monotonic()

    def partition_of(order_id: str) -> int:
        return partition_for(order_id, settings.partitions)

    async def forget_settled_orders() -> None:
        nonlocal rescanned
        # An exception escaping a faust timer kills the whole worker (notes/faust.md): never let one out.
        try:
            now = time.monotonic()
            if restoring(runtime):
                index.reset()  # partitions being restored: their entries come back in changelog order
                return
            if now - rescanned >= RESCAN_S:
                index.reset()
                rescanned = now
            due = index.due(owned_partitions(runtime), int(time.time() * 1000), limit=PER_TICK,
                            partition_of=partition_of)
            for order_id, at in due:
                if resends.due(order_id, now):
                    resends.sent(order_id, now)
                    await runtime.send(retention.forget_command(order_id, at))
            resends.keep_only({order_id for order_id, _ in due})
        except Exception:
            log.exception("retention scan failed; the next tick tries again")

    return runtime.app.timer(settings.timer_interval_s, name="retention")(forget_settled_orders)
