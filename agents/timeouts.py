"""Deadlines: a timer on every worker emits ExpireOrder for the pending orders of the partitions it owns.

The timer only *sends commands*; the orders flow decides what expiry means when it applies one. Each command is
named by its order and deadline, so a tick that runs twice (or on two workers around a rebalance) changes nothing.

An answer written to Kafka before an order's deadline still counts, however late it is handled (README, "How the
saga runs"). The orders flow reads its commands and the inventory's and payments' answers from different topics,
and nothing orders one topic's records against another's: an ExpireOrder sent while such an answer still waits
unhandled (the flow behind after a rebalance or a restart, its partition just taken over) could be handled first
and cancel the order as timed out, the answer then voided or released as a late one. So an order is expired only
once the orders flow has handled every answer of its partition written before its deadline
(:func:`answered_until`), and only :data:`LANDING_GRACE_MS` after its deadline: what the worker knows of an answer
topic's partition (its records' times, its end as last fetched) may not yet show an answer stamped just before the
deadline that is still on its way.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from faust.types import TP

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

#: How long after an order's deadline the timer waits before it may expire the order. An answer is stamped by the
#: clock of the worker that writes it, as it is produced: one stamped just before the deadline may land in its
#: partition after one stamped after it (two workers' produce requests in flight), or after the worker last
#: fetched that partition's end, and :func:`answered_until` would not see it coming. A write lands well within this
#: (milliseconds; a few hundred under load), and a timeout comes this much later: an answer written after the
#: deadline expires the order by itself (:func:`streamcart.domain.orders.decide`), at once.
LANDING_GRACE_MS = 2_000


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


def answered_until(runtime: Runtime, partition: int) -> float:
    """The record time up to which the orders flow of this worker has handled every answer (the inventory's and the
    payments' events) of ``partition``: the newest one it handled of each answer topic, or no limit (``inf``) for a
    topic with nothing of it left to handle (every record up to the end committed). An order of ``partition`` whose
    deadline is later than this may still have an answer written in time waiting for the flow."""
    until = math.inf
    for topic in (runtime.topics.inventory_events, runtime.topics.payment_events):
        if handled_to_end(runtime, topic, partition):
            continue  # nothing of it left to handle
        newest = runtime.orders_handled.newest(topic, partition)
        until = min(until, -math.inf if newest is None else newest)
    return until


def handled_to_end(runtime: Runtime, topic: str, partition: int) -> bool:
    """Whether this worker has handled (committed) every record of ``topic[partition]`` up to its end as the
    consumer last fetched it; ``False`` when that is not known (not assigned, or not fetched yet)."""
    consumer = runtime.app.consumer
    tp = TP(topic, partition)
    try:
        end = consumer.highwater(tp)
    except Exception:  # not assigned (any more), or not fetched yet: not known
        return False
    return end is not None and end <= (consumer._committed_offset.get(tp) or 0)


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
                (order_id, deadline, partition) for order_id, deadline in pending
                if deadline + LANDING_GRACE_MS <= now_ms
                and (partition := partition_for(order_id, settings.partitions)) in owned
            ]
            answered: dict[int, float] = {}  # partition -> answered_until, asked once a tick
            for order_id, deadline, partition in overdue:
                if not resends.due(order_id, now):
                    continue  # sent recently: don't even load the order
                if partition not in answered:
                    answered[partition] = answered_until(runtime, partition)
                if deadline > answered[partition]:
                    continue  # an answer written in time may still wait unhandled: it decides, not the timer
                order = tables.orders.get(order_id)
                if order is None:
                    continue
                for command in timeouts.due([order], now_ms):
                    resends.sent(order_id, now)
                    await runtime.send(command)
            resends.keep_only({order_id for order_id, _deadline, _partition in overdue})
        except Exception:
            log.exception("deadline scan failed; the next tick tries again")

    return runtime.app.timer(settings.timer_interval_s, name="deadlines")(expire_due_orders)
