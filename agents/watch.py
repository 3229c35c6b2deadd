"""Waiting for an order to change, for the API's long-poll (``GET /v1/orders/{id}?wait=S``).

The orders flow calls :meth:`OrderWatch.changed` after it stores an order; a request waiting on that order wakes
at once. Event-driven, not a sleep loop: a long-poll answers within milliseconds of the event that settles it. A
rebalance wakes every waiter (:meth:`OrderWatch.rebalanced`): its order may have moved to another worker, whose
flow will never wake it here. The waiter then waits for the rebalance to end (:meth:`OrderWatch.settled`,
:meth:`OrderWatch.rebalance_over`) and goes on waiting if its order stayed on this worker.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable


class OrderWatch:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        #: How many rebalances took this worker's partitions back so far: a waiter that sees it move looks again.
        self.rebalances = 0
        self._settled: set[asyncio.Future[None]] = set()

    def rebalanced(self) -> None:
        """Wake everyone: this worker's partitions were taken back in a rebalance (call when they are revoked)."""
        self.rebalances += 1
        for order_id in list(self._waiters):
            self.changed(order_id)

    def settled(self) -> None:
        """Wake those waiting for a rebalance to end (call when it has: the tables read back, the flows resumed)."""
        for waiter in self._settled:
            if not waiter.done():
                waiter.set_result(None)
        self._settled.clear()

    async def rebalance_over(self, over: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``over()`` (checked at each :meth:`settled`) or ``timeout_s`` passes; whether it is over."""
        deadline = time.monotonic() + timeout_s
        while not over():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._settled.add(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except TimeoutError:
                return over()
            finally:
                self._settled.discard(waiter)
        return True

    def changed(self, order_id: str) -> None:
        """Wake everyone waiting on ``order_id`` (call after the new state is stored)."""
        for waiter in self._waiters.pop(order_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def next_change(self, order_id: str, timeout_s: float) -> bool:
        """Wait until ``order_id`` changes or ``timeout_s`` passes; whether it changed."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[order_id].add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(order_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[order_id]

    def __len__(self) -> int:
        return sum(len(w) for w in self._waiters.values()) + len(self._settled)
