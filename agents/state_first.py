"""A worker's records leave only after the state that decided them is in its changelogs.

A flow stores its new state in a table, then sends what it decided (DESIGN.md §3, the duplicate rule). faust
buffers the table write and hands it to Kafka a little later, while a record sent straight to the producer could
reach Kafka first. A worker killed in between leaves the events out and the state lost: its restart rebuilds the
table from the changelog (agents/worker.py) and the messages since the last commit are delivered again. When they
come in the same order, each is decided the same way again and its events, with the same ids, are dropped by
their consumers. But a flow that reads several topics (orders reads four, inventory and shipping two) may get them
in another order after a restart: a CancelOrder before the PaymentAuthorized it followed, an AdjustStock before the
ReserveStock. The order would then be cancelled after its OrderConfirmed went out, a reservation refused after its
StockReserved did: two decisions for one state, each with its effects.

:class:`StateFirst` closes that window without blocking the flows: a record sent while table writes noted before
it are undelivered waits in a queue, and a task hands the queue over, in order, as their changelog records are
acknowledged. The flows go on deciding meanwhile; their records leave a changelog round trip later. An offset
commit waits for the queue (:meth:`StateFirst.drain`), as it waits for the rest of the producer. Flows that read
one topic send at once (agents/runtime.py, ``FaustSink``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from streamcart.errors import StreamcartError

log = logging.getLogger(__name__)

#: A record as the producer takes it: topic, key, value, headers.
Record = tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]

#: Hands a record to the Kafka client; the context is the sender's (its delivery is reported in it: log fields).
Send = Callable[[Record, contextvars.Context], Awaitable[Any]]

#: Records held at most; a flow that sends more waits until Kafka acknowledges the writes before them.
HOLD_LIMIT = 20_000


class HeldForever(StreamcartError):
    """Records cannot leave: a table write before them was not delivered, or the Kafka client refused a record."""


class StateFirst:
    """Sends records only once every table write noted before them was delivered to its changelog.

    ``send`` hands a record to the Kafka client. :meth:`note_write` is called for each table write as faust
    buffers it, with the future its delivery resolves. A held record waits for every earlier write, whatever its
    table or partition: what it depends on is not known here, and one changelog round trip covers them all.

    Failure policy, as for a record Kafka refuses (agents/transport.py, ``Deliveries``): once a table write fails or
    the Kafka client refuses a record, nothing held leaves any more and every :meth:`drain` raises, so the commit
    that meets it crashes the worker and its messages since the last commit are delivered again. The flows are not
    told (their records are accepted and dropped): whether a send went out at once or was held must not change
    what a flow does.
    """

    def __init__(self, send: Send, *, limit: int = HOLD_LIMIT) -> None:
        self._send = send
        self.limit = limit
        self._writes = 0  # table writes noted so far; the n-th has number n
        self._undelivered: dict[int, None] = {}  # numbers of the writes not delivered yet, in order
        self._records = 0  # records taken so far; the n-th has number n
        self._unfinished: dict[int, None] = {}  # numbers of the records not handed to the client yet, in order
        # (record number, writes noted before it, record, the sender's context)
        self._held: deque[tuple[int, int, Record, contextvars.Context]] = deque()
        self._progress = asyncio.Event()  # a write was delivered or a record held: the releaser looks again
        self._finished = asyncio.Event()  # records were handed over, or a failure came: drains look again
        self._releaser: asyncio.Task[None] | None = None
        self._closed = False
        self.failure: BaseException | None = None

    @property
    def held(self) -> int:
        """Records waiting for table writes to be delivered."""
        return len(self._held)

    def note_write(self, delivery: asyncio.Future[Any]) -> None:
        """Note a table write that records sent from now on must wait for; ``delivery`` resolves once it is in Kafka."""
        self._writes += 1
        self._undelivered[self._writes] = None
        delivery.add_done_callback(partial(self._delivered, self._writes))

    def _delivered(self, number: int, delivery: asyncio.Future[Any]) -> None:
        failure = asyncio.CancelledError() if delivery.cancelled() else delivery.exception()
        if failure is not None:
            self._give_up(failure)  # the write stays undelivered: whatever was sent after it stays held
            return
        del self._undelivered[number]
        self._progress.set()

    def _stored_through(self) -> int:
        """The highest n such that table writes 1..n were all delivered."""
        return next(iter(self._undelivered)) - 1 if self._undelivered else self._writes

    def _take(self) -> int:
        self._records += 1
        self._unfinished[self._records] = None
        return self._records

    def _finish(self, number: int) -> None:
        self._unfinished.pop(number, None)
        self._finished.set()

    async def send(self, record: Record) -> None:
        """Hand ``record`` to Kafka now if every table write noted so far was delivered, or queue it until they are."""
        if self._closed:
            raise HeldForever("the producer stopped")
        context = contextvars.copy_context()
        if not self._held and not self._undelivered and self.failure is None:
            number = self._take()
            try:
                await self._send(record, context)
            except Exception as exc:
                self._give_up(exc)
            finally:
                self._finish(number)
            return
        while len(self._held) >= self.limit and self.failure is None:
            self._finished.clear()
            await self._finished.wait()
        if self.failure is not None:
            return  # never sent: the next commit crashes the worker before it passes the message that sent it
        self._held.append((self._take(), self._writes, record, context))
        if self._releaser is None:  # in a context of its own, not that of the message that happened to start it
            self._releaser = asyncio.get_running_loop().create_task(self._release(), context=contextvars.Context())
        self._progress.set()

    async def _release(self) -> None:
        while True:
            await self._progress.wait()
            self._progress.clear()
            stored = self._stored_through()
            while self._held and self._held[0][1] <= stored:
                number, _, record, context = self._held[0]
                try:
                    await self._send(record, context)
                except Exception as exc:
                    self._give_up(exc)
                    return
                self._held.popleft()
                self._finish(number)

    def _give_up(self, failure: BaseException) -> None:
        if self.failure is None:
            log.critical("a record cannot be sent after the state that decided it: %s: %s; %d record(s) held stay "
                         "unsent, and the worker stops at its next commit", type(failure).__name__, failure,
                         len(self._held))
            self.failure = failure
        self._finished.set()

    async def drain(self) -> None:
        """Return once every record taken before the call was handed to the Kafka client.

        Raises :class:`HeldForever` once a record can never be (then nothing may be committed any more).
        """
        target = self._records
        while True:
            if self.failure is not None:
                raise HeldForever(f"records cannot be sent any more: {self.failure!r}") from self.failure
            if not self._unfinished or next(iter(self._unfinished)) > target:
                return
            self._finished.clear()
            await self._finished.wait()

    async def close(self) -> None:
        """Stop the releaser (after :meth:`drain`, or for good when the worker crashes); later sends raise."""
        self._closed = True
        if self._releaser is not None:
            self._releaser.cancel()
            await asyncio.gather(self._releaser, return_exceptions=True)
            self._releaser = None
