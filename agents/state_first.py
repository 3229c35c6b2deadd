"""A worker's records leave only after the state that decided them is in its changelogs.

A flow stores its new state in a table, then sends what it decided (DESIGN.md §3, the duplicate rule). faust
buffers the table write and hands it to Kafka a little later, while a record sent straight to the producer could
reach Kafka first. A worker killed in between leaves the events out and the state lost: its restart finds the
table as its changelog has it (tables/store.py) and the messages since the last commit are delivered again. When they
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

The API reads the same tables, and answers what it read only once the writes noted before the read are delivered
(:meth:`StateFirst.stored`): a state it shows can no longer be lost to a crash. Read as soon as it was written, an
order answered CONFIRMED came back PENDING after its worker was killed, and timed out.
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


class _Numbered:
    """Things numbered 1, 2, … as they come, and which of them are still outstanding (ended in any order)."""

    def __init__(self) -> None:
        self.count = 0
        self._outstanding: dict[int, None] = {}  # insertion order is number order

    def __bool__(self) -> bool:
        """Whether any is outstanding."""
        return bool(self._outstanding)

    def add(self) -> int:
        self.count += 1
        self._outstanding[self.count] = None
        return self.count

    def end(self, number: int) -> None:
        self._outstanding.pop(number, None)

    def ended_through(self) -> int:
        """The highest n such that 1..n have all ended."""
        return next(iter(self._outstanding)) - 1 if self._outstanding else self.count


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
        self._writes = _Numbered()  # table writes noted; outstanding: not delivered yet
        self._records = _Numbered()  # records taken; outstanding: not handed to the Kafka client yet
        # (record number, writes noted before it, record, the sender's context)
        self._held: deque[tuple[int, int, Record, contextvars.Context]] = deque()
        self._progress = asyncio.Event()  # a write was delivered or a record held: the releaser looks again
        self._finished = asyncio.Event()  # records were handed over, or a failure came: drains look again
        self._stored = asyncio.Event()  # a write was delivered, or a failure came: readers (stored) look again
        self._releaser: asyncio.Task[None] | None = None
        self._closed = False
        self.failure: BaseException | None = None

    @property
    def held(self) -> int:
        """Records waiting for table writes to be delivered."""
        return len(self._held)

    def written(self) -> int:
        """How many table writes were noted so far: a mark for :meth:`stored`."""
        return self._writes.count

    def is_stored(self, mark: int) -> bool:
        """Whether the first ``mark`` table writes noted were all delivered to their changelogs."""
        return self._writes.ended_through() >= mark

    async def stored(self, mark: int) -> None:
        """Return once the first ``mark`` table writes noted (:meth:`written`) were all delivered to their changelogs:
        what was read of the tables when the mark was taken can no longer be lost to a crash.

        Raises :class:`HeldForever` once a write or a record failed (the worker stops at its next commit), or once
        the producer stopped (:meth:`close`) with the writes still undelivered.
        """
        while not self.is_stored(mark):
            if self.failure is not None:
                raise HeldForever(f"table writes cannot be stored any more: {self.failure!r}") from self.failure
            if self._closed:
                raise HeldForever("the producer stopped before the table writes were delivered")
            self._stored.clear()
            await self._stored.wait()

    def note_write(self, delivery: asyncio.Future[Any]) -> None:
        """Note a table write that records sent from now on must wait for; ``delivery`` resolves once it is in Kafka."""
        delivery.add_done_callback(partial(self._delivered, self._writes.add()))

    def _delivered(self, number: int, delivery: asyncio.Future[Any]) -> None:
        failure = asyncio.CancelledError() if delivery.cancelled() else delivery.exception()
        if failure is not None:
            self._give_up(failure)  # the write stays undelivered: whatever was sent after it stays held
            return
        self._writes.end(number)
        self._progress.set()
        self._stored.set()

    def _finish(self, number: int) -> None:
        self._records.end(number)
        self._finished.set()

    async def send(self, record: Record) -> None:
        """Hand ``record`` to Kafka now if every table write noted so far was delivered, or queue it until they are."""
        if self._closed:
            raise HeldForever("the producer stopped")
        context = contextvars.copy_context()
        if not self._held and not self._writes and self.failure is None:
            number = self._records.add()
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
        self._held.append((self._records.add(), self._writes.count, record, context))
        if self._releaser is None:  # in a context of its own, not that of the message that happened to start it
            self._releaser = asyncio.get_running_loop().create_task(self._release(), context=contextvars.Context())
        self._progress.set()

    async def _release(self) -> None:
        while True:
            await self._progress.wait()
            self._progress.clear()
            stored = self._writes.ended_through()
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
        self._stored.set()

    async def drain(self) -> None:
        """Return once every record taken before the call was handed to the Kafka client.

        Raises :class:`HeldForever` once a record can never be (then nothing may be committed any more).
        """
        target = self._records.count
        while True:
            if self.failure is not None:
                raise HeldForever(f"records cannot be sent any more: {self.failure!r}") from self.failure
            if self._records.ended_through() >= target:
                return
            self._finished.clear()
            await self._finished.wait()

    async def close(self) -> None:
        """Stop the releaser (after :meth:`drain`, or for good when the worker crashes); later sends raise, and readers
        still waiting for writes (:meth:`stored`) are told at once that they will not see them delivered here."""
        self._closed = True
        self._stored.set()
        if self._releaser is not None:
            self._releaser.cancel()
            await asyncio.gather(self._releaser, return_exceptions=True)
            self._releaser = None
