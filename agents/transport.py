"""faust's Kafka transport with fixes, all about never committing past a record that was not processed (and
about rebalances that never end). Besides the two below: a flush before each commit that really drains the buffered
table writes (:class:`ProducerBuffer`); rebalances and stops that wait only for the messages agents are handling
(:meth:`Consumer.wait_empty`); and records delivered to agents that faust then drops from their queues fetched
again (:class:`FlowControl`, and :meth:`Consumer._watch_hole` for whatever else could drop one).

**Commits stop at the first unprocessed record.** faust commits, per partition, the run of acknowledged offsets
that starts at the committed position, but its check lets one record through: with offset ``c`` committed (the
next to read) and ``c + 1`` acknowledged, it commits ``c + 2`` although ``c`` was never processed. It also
commits any run at all while it does not know the committed position, which is the case right after a rebalance
revoked the partition, when acknowledgements of records handled before the rebalance still arrive. And its fetch
loop records "gaps" (offsets it believes do not exist) over records it dropped itself while the flow was
suspended, and commits across them. Seen on the real stack: a worker stopped mid-burst committed past the first
one or two order commands of three partitions, which nobody processed. Here the committed run must start exactly
at the committed position (the partition's start when nothing is committed), acknowledgements below it are
forgotten, and the fetch loop is replaced by one that delivers in offset order and records no gaps: streamcart's
topics are neither compacted nor transactional, so their offsets have none.

**A partition that has no committed offset is rewound too.**

After a rebalance or a table recovery faust drops the records it had fetched but not yet processed and calls
``perform_seek`` to go back to the committed offsets. aiokafka's ``seek_to_committed`` only seeks partitions
whose committed offset is a positive number (``if offset and offset > 0``): a partition with nothing committed
yet keeps its fetch position, *past* the dropped records, and those records are never processed. Seen on the
real stack: a worker SIGKILLed a few seconds after start skipped 230 order commands on a fresh partition.

Here such a partition goes back to where a group with no commit starts (``consumer_auto_offset_reset``,
``earliest``): at-least-once, and the duplicate rule absorbs whatever is processed again. Changelog partitions
are not rewound to a commit (faust never commits them): after each clear of faust's changelog queue the fetch loop
seeks them back to the last offset the table recovery took (:class:`ChangelogQueue`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka import TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.producer.message_accumulator import MessageAccumulator
from aiokafka.protocol.offset import OffsetRequest
from faust.tables import TableManager as FaustTableManager
from faust.tables.recovery import RebalanceAgain
from faust.tables.recovery import Recovery as FaustRecovery
from faust.transport.consumer import CONSUMER_FETCHING, CONSUMER_WAIT_EMPTY
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer as FaustProducerBuffer
from faust.types import TP
from mode import Service
from mode.utils.queues import FlowControlEvent, ThrowableQueue
from yarl import URL

from agents.local_state import NOTE_EVERY_S, discard_directory, note_caught_up
from agents.state_first import HeldForever, Record, StateFirst
from streamcart.text import is_digits
from tables.store import HeldWritesStore

log = logging.getLogger(__name__)

#: How often the worker checks for partitions whose fetches or streams stalled (faust: every 0.5 s here).
LIVELOCK_CHECK_INTERVAL_S = 10.0
#: How long a seek waits for the start offsets of every partition it might rewind (a committed offset retention
#: deleted) before it rewinds only those with nothing committed.
LOG_STARTS_TIMEOUT_S = 5.0

#: How long a partition's position may stay unacknowledged, while later records are acknowledged and no agent holds
#: it, before it is delivered again (:meth:`Consumer._watch_hole`).
HOLE_GRACE_S = 5.0


class Yielded(BaseException):
    """Raised by :meth:`InProgress.pause` when a rebalance or a stop is waiting: leave the message unacknowledged.

    A BaseException, so that no ``except Exception`` on the way (the dead-letter path) takes it for a failure.
    """


class InProgress:
    """The messages agents have started handling and not yet acknowledged (a message counts once per agent).

    A rebalance or a stop has to wait for these before it commits, and for nothing else: see
    :meth:`Consumer.wait_empty`. A handler that waits to try something again (a payment gateway that is down)
    waits with :meth:`pause`, which gives the message back when a rebalance or a stop begins instead of holding
    it up: the message stays unacknowledged and is handled again by whoever owns its partition next.
    """

    def __init__(self) -> None:
        self._agents_on: Counter[Any] = Counter()  # message -> how many agents are handling it
        self._idle = asyncio.Event()
        self._idle.set()
        self._yield = asyncio.Event()  # set while a rebalance or a stop waits for the messages being handled
        self._waiting = 0  # how many such waits (a stop may begin during a rebalance's)

    async def pause(self, delay_s: float) -> None:
        """Sleep ``delay_s``; raise :class:`Yielded` at once if a rebalance or a stop is waiting, or begins to."""
        if not self._yield.is_set():
            try:
                await asyncio.wait_for(self._yield.wait(), delay_s)
            except TimeoutError:
                return
        raise Yielded

    def ask_to_yield(self, asked: bool = True) -> None:
        """Make every :meth:`pause`, now and until each such call is matched by one with ``False``, give its
        message back."""
        self._waiting += 1 if asked else -1
        if self._waiting > 0:
            self._yield.set()
        else:
            self._waiting = 0
            self._yield.clear()

    def __len__(self) -> int:
        return len(self._agents_on)

    def __contains__(self, message: object) -> bool:
        return message in self._agents_on

    def messages(self) -> list[Any]:
        """The messages being handled now."""
        return list(self._agents_on)

    def begin(self, message: Any) -> None:
        """One agent started handling ``message``."""
        self._agents_on[message] += 1
        self._idle.clear()

    def end(self, message: Any) -> None:
        """That agent acknowledged ``message``, or gave up on it."""
        self._agents_on[message] -= 1
        if self._agents_on[message] <= 0:
            del self._agents_on[message]
            if not self._agents_on:
                self._idle.set()

    @contextmanager
    def handling(self, message: Any) -> Iterator[None]:
        """While one agent handles ``message``."""
        self.begin(message)
        try:
            yield
        finally:
            self.end(message)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no message is being handled; False if some still are after ``timeout_s``."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


class Lease:
    """Whether this worker is still surely a member of its consumer group: the time of the group coordinator's last
    answer that said so (a heartbeat taken, a join completed), checked before a flow writes.

    Without transactions nothing stops a worker that lost its partitions from writing to them. One paused past its
    session (SIGSTOP, a host that froze, a loop blocked that long) is no longer a member when it wakes, but its
    handlers wake first: payments whose gateway answers waited in its sockets stored them and emitted their
    events into changelog partitions another worker had written meanwhile (seen on the real stack: refunds of
    orders captured by the other worker found no payment and were never made). A handler now writes only while
    the heartbeat last taken was sent less than :data:`LEASE_SHARE` of the session ago (:meth:`valid`: from when
    it was sent, not answered, since the answer may wait out a pause in the socket); otherwise it waits
    (:meth:`held`) for the next heartbeat, or gives its message back when the rebalance that follows begins. A join
    does not renew it (its answer's age is unknown): flows wait for their partitions' recovery after a join anyway,
    and the first heartbeat comes a heartbeat interval later. When the coordinator says this worker is no member
    (aiokafka resets its generation: an unknown member id, an old generation), the lease ends at once, and no answer
    to a heartbeat sent before that renews it.

    It holds for good until :meth:`watch` ties it to a group coordinator: a worker's consumer does as it starts
    (a test's agents, run without one, are never held up).

    It narrows the window, it is no fence: a write already on its way when the worker pauses still lands after it
    wakes. The store's side of that is in ``tables/store.py`` (no offset noted past another worker's records).
    """

    def __init__(self, session_timeout_s: float) -> None:
        self.session_timeout_s = session_timeout_s
        self.valid_for_s = math.inf  # until watch()
        self.renewed_at = time.monotonic()  # written by the consumer's thread, read by the agents' (floats)
        self.expired_at = -math.inf  # when the coordinator last said this worker is no member
        self._told = False  # whether the wait was logged since the lease last held

    def renew(self, asked_at: float | None = None) -> None:
        """The coordinator answered a heartbeat sent at ``asked_at`` (monotonic; now if not given): a member then."""
        at = time.monotonic() if asked_at is None else asked_at
        if at > self.expired_at:  # (an answer to one sent before the coordinator said otherwise is stale)
            self.renewed_at = max(self.renewed_at, at)
            self._told = False

    def expire(self) -> None:
        """The coordinator said this worker is no member: nothing is written until a heartbeat sent after this is
        taken (once it has joined again)."""
        self.renewed_at, self.expired_at = -math.inf, time.monotonic()

    def valid(self) -> bool:
        return time.monotonic() - self.renewed_at < self.valid_for_s

    async def held(self, in_progress: InProgress) -> None:
        """Return once the lease is valid; raise :class:`Yielded` if a rebalance or a stop begins first."""
        while not self.valid():
            if not self._told:  # once, not once per handler waiting
                self._told = True
                if self.renewed_at == -math.inf:
                    log.warning("the group coordinator no longer knows this worker as a member: its flows wait "
                                "until it has joined the group again before they write")
                else:
                    log.warning("no word from the group coordinator for %.1f s: this worker may have lost its "
                                "partitions; its flows wait for the next heartbeat before they write",
                                time.monotonic() - self.renewed_at)
            await in_progress.pause(LEASE_CHECK_S)

    def watch(self, coordinator: Any) -> None:
        """From now on, hold only while the heartbeats ``coordinator`` (aiokafka's ``GroupCoordinator``) sends are
        taken, and end when it resets its generation (its heartbeat routine calls ``self._do_heartbeat()`` and
        ``self.reset_generation()``: a test pins that)."""
        heartbeat, reset = coordinator._do_heartbeat, coordinator.reset_generation

        async def _do_heartbeat() -> bool:
            asked_at = time.monotonic()
            taken: bool = await heartbeat()
            if taken:
                self.renew(asked_at)
            return taken

        def reset_generation() -> Any:
            self.expire()
            return reset()

        coordinator._do_heartbeat, coordinator.reset_generation = _do_heartbeat, reset_generation
        self.renew()
        self.valid_for_s = self.session_timeout_s * LEASE_SHARE


#: The share of the group session a heartbeat's answer is trusted for: the broker drops a member a session after
#: the last heartbeat it received, and what remains covers a write on its way to the broker.
LEASE_SHARE = 0.7
#: How often a handler waiting for the lease looks again.
LEASE_CHECK_S = 0.1


class FlowControl(FlowControlEvent):
    """faust's flow control of the agents' queues, counting the times it emptied them.

    faust empties every agent's queue when a rebalance begins and again each time it resumes the flow (the queues
    are ``clear_on_resume``), and that second time the fetch loop has been delivering already: recovery resumes
    the partitions, seeks them to their committed offsets, then resumes the flow, and whatever was delivered in
    between is dropped. Those records had moved the fetch loop's position, so they would never come again. Seen on
    the real stack: a PlaceOrder delivered in that window, between records that were handled, stuck unhandled until
    the next rebalance. The fetch loop watches :attr:`clears` and seeks back to the committed offsets after each.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clears = 0

    def clear(self) -> None:
        super().clear()
        self.clears += 1


class Event(faust.Event):
    """faust's event, acknowledged only by the agent that handled it (through :meth:`Stream.ack`).

    faust's stream iteration drops an event it takes from its queue while the flow is suspended or that was
    fetched in an earlier generation of the group (around a rebalance), and acknowledges it on the way, even in a
    ``noack`` stream: the record would count as processed although no agent saw it, and a commit could pass it.
    Here that acknowledgement does nothing. The record stays unacknowledged, so nothing commits past it, and it
    is handled when it comes again: after the seek every rebalance ends with, or once
    :meth:`Consumer._watch_hole` notices it.
    """

    def ack(self) -> bool:
        return False  # faust's stream skipping the event, never an agent: agents acknowledge through Stream.ack

    def acknowledge(self) -> bool:
        """The agent handled the event (the message is acknowledged once every agent it went to has)."""
        return super().ack()


class Stream(faust.Stream[Any]):
    """faust's stream, acknowledging through :meth:`Event.acknowledge` (the agent loops' acknowledgement)."""

    async def ack(self, event: Any) -> bool:
        last_stream_to_ack: bool = event.acknowledge()
        message = event.message
        self._on_stream_event_out(message.tp, message.offset, self, event)
        if last_stream_to_ack:
            self._on_message_out(message.tp, message.offset, message)
        return last_stream_to_ack


class ChangelogQueue(ThrowableQueue[Any]):
    """faust's queue of changelog records for its recovery, taking only records fetched since it was last emptied.

    faust empties this queue with the agents' queues (it is ``clear_on_resume``): at each rebalance, and each time
    it resumes the flow, which its recovery does as it starts reading actives, as it starts reading standby copies
    and as it ends. Records waiting in it then are dropped, yet the fetch loop is past them, and nothing read the
    partition again from before them: the table missed them and later noted an offset past them. Worse, a record
    whose delivery was under way, waiting for room in a full queue or for the flow to resume, landed *after* the
    clear: the recovery then took an offset beyond those it had lost, and skipped them when faust sought the
    partition back (it applies only offsets above the last it took). Seen on the real stack, a worker's recovery
    cut by a rebalance: 135 of the 330 orders of one partition missing from its store (``streamcart
    check-stores``); and every standby copy faust kept missed some.

    Here the queue takes records only while :attr:`taking` is the flow control's count of clears: the fetch loop
    sets it once it has sought every changelog partition it reads back to the last offset the recovery took
    (:meth:`Consumer._read_changelogs_again`). A record fetched before a clear is dropped wherever it is, and read
    again. So is a record of a partition the recovery no longer reads, which faust would apply to whatever table
    its previous record belonged to.
    """

    def __init__(self, manager: Any, *, maxsize: int) -> None:
        super().__init__(maxsize=maxsize, flow_control=manager.app.flow_control, clear_on_resume=True)
        self._manager = manager
        #: The flow control's count of clears whose records the queue takes (none before the fetch loop's first seek).
        self.taking: int | None = None

    def takes(self, event: Any) -> bool:
        if self.taking != cast(FlowControl, self._flow_control).clears:
            return False
        recovery = self._manager.recovery
        tp = event.message.tp
        return tp in recovery.active_tps or tp in recovery.standby_tps

    def put_nowait(self, item: Any) -> None:
        if self.takes(item):
            super().put_nowait(item)

    def force_put_nowait(self, item: Any) -> None:
        if self.takes(item):
            super().force_put_nowait(item)


class Recovery(FaustRecovery):
    """faust's recovery, which never seeks a changelog partition whose offset it has not looked up.

    A rebalance replaces the partitions the recovery reads (``active_tps``, ``standby_tps``) in place, while the
    recovery of the generation before may still run: that one then sought partitions of the new generation whose
    offsets it never looked up (None), and crashed the worker (aiokafka: "Offset must be a positive integer"). Seen
    with standby copies on, a worker reading its partitions back, alone in the group, when the next one joined:
    its recovery ended and sought the standby partitions the new generation had just given it (`streamcart up`
    failed on 2026-12-04 with ``STREAMCART_STANDBY_REPLICAS=1``). Such a recovery now gives way to the new
    generation's, which looks the offsets up; a partition without one outside a rebalance has it looked up first.
    """

    async def _seek_offsets(self, consumer: Any, tps: set[TP], offsets: Counter[TP], title: str) -> None:
        unknown = {tp for tp in tps if offsets.get(tp) is None}
        if unknown:
            if self.signal_recovery_start.is_set():
                log.info("a rebalance gave %d %s partition(s) to read since this recovery began: it starts over",
                         len(unknown), title)
                raise RebalanceAgain()
            await self._build_offsets(consumer, unknown, offsets, title)
        await super()._seek_offsets(consumer, tps, offsets, title)


class TableManager(FaustTableManager):
    """faust's table manager with a :class:`ChangelogQueue` and its :class:`Recovery`."""

    @property
    def changelog_queue(self) -> ChangelogQueue:
        if self._changelog_queue is None:
            self._changelog_queue = ChangelogQueue(self, maxsize=self.app.conf.stream_buffer_maxsize)
        return cast(ChangelogQueue, self._changelog_queue)

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return cast(Recovery, self._recovery)


def changelog_positions(recovery: Any, assigned: set[Any]) -> dict[Any, int]:
    """Where to read each changelog partition the recovery reads (of those ``assigned``) from: the last offset it
    took (records not above it are skipped), or the start when it took none yet (-1). A partition whose offset it
    has not looked up yet is left out: faust seeks it once it has."""
    positions = {}
    for tps, taken in ((recovery.active_tps, recovery.active_offsets),
                       (recovery.standby_tps, recovery.standby_offsets)):
        for tp in tps & assigned:
            offset = taken.get(tp)
            if offset is not None:
                positions[tp] = max(offset, 0)
    return positions


#: How long a fetch waits for a first record while the worker is idle (aiokafka's long poll): a record that
#: arrives is answered at once, and an idle worker sends a fetch only this often.
IDLE_FETCH_MAX_WAIT_MS = 1500


def adapt_fetching(fetcher: Any, *, got_records: bool, min_bytes: int, max_wait_ms: int) -> None:
    """Set how the fetches after this one wait, from whether the worker just received records.

    While records flow, a fetch waits for ``min_bytes`` or ``max_wait_ms``, whichever comes first: each fetch request
    and response names every partition the worker holds (about 40 here; some 70 with standby copies), so a fetch
    per record costs more than the record. Once a fetch brings nothing, the worker goes back to a long poll that
    returns on the first record: idle, it costs almost nothing, and a lone record is not held back.
    """
    if got_records:
        fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = min_bytes, max_wait_ms
    else:
        fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = 1, max(max_wait_ms, IDLE_FETCH_MAX_WAIT_MS)


#: The connection group (aiokafka keeps one connection per broker and group) the consumer's offset lookups use.
OFFSET_LOOKUPS = "offset-lookups"


class OffsetLookupsApart:
    """The Kafka client as the consumer's fetcher sees it: offset lookups go over a connection of their own.

    A broker answers one connection's requests in order, and an idle worker's fetch holds its connection up to
    :data:`IDLE_FETCH_MAX_WAIT_MS` for a first record. Each offset lookup queued behind one: a table recovery makes
    three in a row (the changelogs' ends, then their starts for the active and the standby partitions), and a
    worker restarted after a kill spent 4.5 s of its recovery waiting on them. Everything else goes as before.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def send(self, node_id: Any, request: Any, **kwargs: Any) -> Any:
        if isinstance(request, OffsetRequest):
            kwargs["group"] = OFFSET_LOOKUPS
        return await self._client.send(node_id, request, **kwargs)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def on_start(self) -> None:
        await super().on_start()
        consumer = self._ensure_consumer()
        fetcher = consumer._fetcher  # aiokafka builds it as the consumer starts
        fetcher._client = OffsetLookupsApart(fetcher._client)
        if isinstance(consumer._coordinator, GroupCoordinator):  # (a consumer without a group owns what it reads)
            cast(Any, self.app).lease.watch(consumer._coordinator)

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust passes neither fetch setting; aiokafka hands them to its fetcher when the consumer starts. The
        # worker starts idle: a long poll, until records flow (adapt_fetching).
        adapt_fetching(consumer, got_records=False, min_bytes=1, max_wait_ms=cast(Any, self.app).fetch_max_wait_ms)
        return consumer

    async def _fetch_records(
        self, consumer: Any, active_partitions: Any, timeout: float | None = None, max_records: int | None = None  # noqa: ASYNC109 (faust's signature)
    ) -> Any:
        records = await super()._fetch_records(consumer, active_partitions, timeout, max_records)
        app = cast(Any, self.app)  # agents.app.App
        adapt_fetching(
            consumer._fetcher, got_records=bool(records), min_bytes=app.fetch_min_bytes,
            max_wait_ms=app.fetch_max_wait_ms,
        )
        return records

    async def seek_to_committed(self) -> Mapping[Any, int]:
        committed: Mapping[Any, int] = await self.call_thread(self._seek_to_committed_or_start)
        return committed

    async def _seek_to_committed_or_start(self) -> Mapping[Any, int]:
        consumer = self._ensure_consumer()
        committed: dict[Any, int] = dict(await consumer.seek_to_committed())
        acked = self.app.topics.acks_enabled_for
        partitions = [TopicPartition(tp.topic, tp.partition) for tp in committed if acked(tp.topic)]
        # A partition with nothing committed starts at its log's start. So does one whose committed offset the log
        # no longer holds (retention deleted records never handled, after a week or more without a commit): the
        # fetch would be reset to the start, and the delivery loop, waiting for the committed offset, would send
        # it back there for ever. Looked up and sought, rather than ``seek_to_beginning``: that leaves the position
        # unset until a reset completes, and faust's livelock check crashes the worker on an unset position
        # (AssertionError in ``TopicPartitionState.position``).
        try:
            starts = (await asyncio.wait_for(consumer.beginning_offsets(partitions), LOG_STARTS_TIMEOUT_S)
                      if partitions else {})
        except TimeoutError:  # a partition without a leader for now: do not hold the seek (and a recovery) up
            never_committed = [tp for tp in partitions if not committed.get(tp)]
            log.warning("the log starts of %d partition(s) did not come in %.0f s: rewinding only the %d with "
                        "nothing committed", len(partitions), LOG_STARTS_TIMEOUT_S, len(never_committed))
            starts = await consumer.beginning_offsets(never_committed) if never_committed else {}
        rewound = 0
        for tp, start in starts.items():
            offset = committed.get(tp)
            if offset and offset >= start:
                continue
            if offset:
                log.error("%s[%s]: committed offset %d is gone from the log, which starts at %d: records %d..%d "
                          "were deleted by retention before they were handled; resuming at %d",
                          tp.topic, tp.partition, offset, start, offset, start - 1, start)
            consumer.seek(tp, start)
            committed[tp] = start  # where processing starts: what the first commit must begin at
            rewound += 1
        if rewound:
            log.info("rewinding %d partition(s) with no committed offset (or one the log lost) to their start",
                     rewound)
        return committed


class Consumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_offset: dict[Any, int] = {}  # per partition of an acknowledged topic: the next to deliver
        # Partitions the fetch loop seeks back once its batch is done: to the offset (None: sought already).
        self._refetch: dict[Any, int | None] = {}
        self._seeks = 0  # bumped by every seek that resets positions: a delivery begun before one is not counted
        # Per partition: the unacknowledged position, since when, and how many times it was delivered again.
        self._holes: dict[Any, tuple[int, float, int]] = {}

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @Service.task
    async def _commit_livelock_detector(self) -> None:
        """faust's check for partitions whose fetches or streams stalled, every :data:`LIVELOCK_CHECK_INTERVAL_S`.

        faust runs it every 2.5 commit intervals (0.5 s here) and yields to the event loop once per partition, some
        70 of them: 1.4% of a worker's CPU, for warnings about partitions stalled for five minutes
        (``stream_processing_timeout``).
        """
        async for _ in self.itertimer(LIVELOCK_CHECK_INTERVAL_S, name="livelock"):
            if not self.app.rebalancing:
                await self.verify_all_partitions_active()

    def _new_offset(self, tp: Any) -> int | None:
        """The offset to commit for ``tp``: past the acknowledged run that starts at the committed position.

        Called at every commit for the partitions with acknowledgements pending, so it also watches for a hole:
        see :meth:`_watch_hole`.
        """
        committed = self._committed_offset[tp]
        offset = committable_offset(self._acked[tp], self._acked_index[tp], committed)
        # faust keeps a committed 0 as None; a partition this loop is delivering from is then at its start.
        position = committed if committed is not None else 0 if tp in self._next_offset else None
        if offset is None and position is not None and self._acked[tp]:
            self._watch_hole(tp, position)
        else:
            self._holes.pop(tp, None)
        return offset

    def _watch_hole(self, tp: Any, position: int) -> None:
        """Deliver the record at ``position`` again if it was lost between the fetch loop and the agents.

        Later records of the partition were acknowledged, so every agent consuming it is past ``position``
        (each handles its queue in offset order, and a record is acknowledged once all of them handled it), yet
        that record is not acknowledged, and it was delivered (the fetch position is past it). If no agent is
        handling it and no agent's queue still holds it, it was dropped on the way: seen on the real stack right
        after a rebalance, a PlaceOrder skipped while the records around it were handled, its order stuck until
        the next rebalance. Nothing can commit past it, so nothing is lost, but nothing of its partition commits
        either. Once that has held for :data:`HOLE_GRACE_S` (twice as long before each further try), the partition
        is fetched again from ``position``; the duplicate rule absorbs the records handled twice.
        """
        now = time.monotonic()
        hole = self._holes.get(tp)
        if hole is None or hole[0] != position:
            self._holes[tp] = (position, now, 0)
            return
        _, since, tries = hole
        delivered = self._next_offset.get(tp, position) > position
        if now - since < HOLE_GRACE_S * 2**tries or not delivered or self._holds(tp, position):
            return
        log.log(logging.ERROR if tries else logging.WARNING,
                "%s[%s]: offset %d was never handled though later ones were; delivering it again (time %d)",
                tp.topic, tp.partition, position, tries + 1)
        self._holes[tp] = (position, now, min(tries + 1, 4))  # each new try waits twice as long, up to 80 s
        self._seeks += 1  # a delivery under way must not move the position past it again
        self._next_offset[tp] = position
        self._refetch[tp] = position

    def _holds(self, tp: Any, offset: int) -> bool:
        """Whether an agent is handling the record at ``offset`` of ``tp``, or has it in its queue."""
        in_progress: InProgress = cast(Any, self.app).in_progress
        if any(m.tp == tp and m.offset == offset for m in in_progress.messages()):
            return True
        channels = cast(Any, self.app.topics)._tp_index.get(tp, ())  # the channels of the agents consuming tp
        return any(event.message.tp == tp and event.message.offset == offset
                   for channel in channels for event in channel.queue._queue)

    @faust_aiokafka.Consumer.transitions_to(CONSUMER_WAIT_EMPTY)
    async def wait_empty(self) -> None:
        """Wait for the messages agents are handling to be acknowledged, then commit.

        faust waits here at every rebalance and stop, but for every message a stream has taken that is not yet
        acknowledged by all the agents it was delivered to and is still referenced somewhere. A message of a
        topic several agents consume (the order events: analytics, notifications and shipping; the payment events
        too, when a warehouse agent consumed them) can be handled by one while faust drops it from another's
        queue at the suspension; it is then never acknowledged, and a reference to it can outlive the drop (the
        fetch loop keeps its last message in a local). Seen on the real stack
        after a worker restart: every agent idle, "wait_empty: Waiting for tasks [(1, <ConsumerMessage:
        ...commerce.events.payments...>)]" for minutes, the group waiting out its rebalance timeout and orders
        stalled on both workers. Such a message is not acknowledged, so no commit passes it, and the partition
        is read again from its committed offset after the rebalance: only what an agent is working on needs
        waiting for (:class:`InProgress`, kept by the agent loops).
        """
        in_progress: InProgress = cast(Any, self.app).in_progress  # agents.app.App's, kept by the agent loops
        waited_s = 0
        in_progress.ask_to_yield()  # handlers waiting to try again give their messages back (InProgress.pause)
        try:
            while not self.should_stop and not await in_progress.wait_idle(timeout_s=1.0):
                waited_s += 1
                if not waited_s % 10:
                    log.warning("waited %d s for %d message(s) agents are still handling; agents:\n%s", waited_s,
                                len(in_progress), self.app.agents.human_tracebacks())
                await self.commit()
        finally:
            in_progress.ask_to_yield(False)
        self._unacked_messages.clear()  # dropped from a queue by faust, never to be acknowledged (see above)
        await self.commit_and_end_transactions()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._seeks += 1
        for tp in revoked:
            for state in (self._next_offset, self._refetch, self._holes):
                state.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        self._seeks += 1
        self._next_offset = {tp: offset for tp, offset in self._read_offset.items() if offset is not None}
        self._refetch.clear()
        self._holes.clear()

    async def _read_changelogs_again(self) -> None:
        """Seek every changelog partition the recovery reads back to the last offset it took (see
        :class:`ChangelogQueue`); faust's seek notes the read position the fetch loop skips records below."""
        assigned = self.assignment()
        positions = changelog_positions(cast(Any, self.app.tables).recovery, assigned) if assigned else {}
        if positions:
            await self.seek_wait(positions)

    def _deliverable(self, tp: Any, offset: int) -> bool:
        """Whether a record of an acknowledged topic is the next to deliver. A record below the position was
        delivered already; one beyond it means records before it never were: ``_refetch`` notes where to seek
        (the fetch loop seeks once and leaves ``None`` until the missing record arrives)."""
        refetch = self._refetch
        expected = self._next_offset.get(tp)
        if expected is None or offset == expected:
            refetch.pop(tp, None)
            return True
        if offset > expected and tp not in refetch:
            log.warning("%s[%s]: offset %d arrived before %d..%d were delivered; fetching them again",
                        tp.topic, tp.partition, offset, expected, offset - 1)
            refetch[tp] = expected
        return False

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover (the real stack runs it)
        """faust's fetch loop, delivering every record of an acknowledged topic exactly in offset order.

        faust's own loop advances its read position over records it drops while the flow is suspended (around
        a rebalance) and then drops the same records, fetched again, as "already read"; it also records the jump
        as a gap and commits across it. Here the position moves only when a record was delivered, a record
        below it is dropped as a duplicate, and a record beyond it sends the partition back to fetch what is
        missing. Changelogs (read by recovery, without acknowledgements) are sought back to where the recovery stands
        after each clear of its queue and delivered in line only (:class:`ChangelogQueue`).
        """
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        acks_enabled_for = self.app.topics.acks_enabled_for
        read_offset = self._read_offset
        refetch = self._refetch
        flow_control = cast(FlowControl, self.app.flow_control)
        clears = flow_control.clears
        changelog_queue = cast(TableManager, self.app.tables).changelog_queue
        is_changelog = cast(Any, self.app.tables)._changelogs.__contains__
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if changelog_queue.taking != flow_control.clears and self.flow_active and flow_control.is_active():
                    # faust emptied the changelog queue: read the changelogs again from where the recovery stands
                    # (see ChangelogQueue). Not while the flow is suspended: faust seeks them itself meanwhile.
                    seen = flow_control.clears
                    try:
                        await self._read_changelogs_again()
                    except Exception as exc:  # e.g. the assignment changing under it: a rebalance began
                        log.warning("seeking the changelogs back to where the recovery stands failed (%s: %s); "
                                    "trying again", type(exc).__name__, exc)
                        await asyncio.sleep(0.5)
                        continue  # no changelog record is delivered before the seek succeeds
                    changelog_queue.taking = seen
                if clears != flow_control.clears and self.flow_active and not self.app.rebalancing:
                    # The agents' queues were emptied: what they held must come again (see FlowControl). Not
                    # before the rebalance is over: faust's recovery reads the changelogs through this loop (a seek
                    # in the middle of it stalled the recovery for good), and it empties the queues again as it
                    # ends. Meanwhile no record of an acknowledged topic is delivered (below).
                    seen = flow_control.clears
                    try:
                        if self.assignment():  # nothing to seek with no partitions (aiokafka asserts some)
                            await self.perform_seek()
                    except Exception as exc:  # e.g. the assignment changing under it: a rebalance began
                        log.warning("seeking back to the committed offsets failed (%s: %s); trying again",
                                    type(exc).__name__, exc)
                        await asyncio.sleep(0.5)
                        continue  # nothing is delivered before the seek succeeds
                    clears = seen
                self.diag.set_flag(CONSUMER_FETCHING)
                batch = self.getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in batch:
                        since_yield += 1
                        if since_yield > 100:
                            await asyncio.sleep(0)
                            since_yield = 0
                        offset = message.offset
                        if acks_enabled_for(message.topic):
                            changelog = False
                            if clears != flow_control.clears:
                                continue  # fetched again after the seek above
                            if not self._deliverable(tp, offset):
                                continue
                        else:
                            changelog = is_changelog(message.topic)
                            r_offset = read_offset[tp]
                            if r_offset is not None and offset < r_offset:
                                continue
                        if self._commit_every is not None and self._n_acked >= self._commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if changelog:
                            # Delivered in line only, with nothing awaited between this check and the delivery: a
                            # delivery left waiting for the flow could land after the changelogs were read again.
                            if not (self.flow_active and flow_control.is_active()):
                                changelog_queue.taking = None  # read it again once the flow runs (above)
                            if changelog_queue.taking != flow_control.clears:
                                continue  # fetched before a clear: it comes again from where recovery stands
                        seeks = self._seeks
                        if not await self._deliver(callback, message, flow_control):
                            if changelog:
                                changelog_queue.taking = None  # the records after it must not be taken before it
                            continue
                        if self._seeks != seeks:
                            # A seek reset the positions meanwhile (rebalances and recoveries seek while this loop
                            # runs): the record comes again from where the seek put the partition.
                            continue
                        read_offset[tp] = offset
                        self._next_offset[tp] = offset + 1
                    for partition, start in list(refetch.items()):
                        if start is not None:
                            refetch[partition] = None
                            await self.seek(partition, start)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                log.info("Consumer shutting down for user cancel.")
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _deliver(self, callback: Any, message: Any, flow_control: FlowControl) -> bool:
        """Hand ``message`` to the agents consuming its topic; False if it may not have reached all of them.

        While the flow runs, the delivery is awaited in line: it only waits for room in the agents' queues, and a
        rebalance that empties them lets it through (:class:`FlowControl` then has everything fetched again).
        Otherwise it runs as a task of its own that is never cancelled half-way: a record consumed by two agents
        would be in one stream and not the other. One still under way when the flow is suspended completes on
        its own, and the position does not move, so the record is fetched and delivered again later.

        A task and a shielded wait for every record cost about 60 µs of CPU and an event loop round each, and the
        agents ran after every record instead of after a run of them. Delivering in line, measured at 40 two-line
        orders/s offered on the local stack: 37-39 outcomes/s instead of 27.5, and 46-47 s of worker CPU for
        1,200 orders instead of 64.
        """
        try:
            if self.flow_active and flow_control.is_active():
                await callback(message)
                return True
            delivery = asyncio.ensure_future(callback(message))
            await self.wait_first(asyncio.shield(delivery), self.suspend_flow.wait())
            if not delivery.done() or delivery.cancelled():
                return False
            delivery.result()
            return True
        except Exception:
            log.exception("%s[%s]: offset %d could not be delivered; fetching it again", message.topic,
                          message.partition, message.offset)
            return False  # the position stays: the next record sends the partition back here


def committable_offset(acked: list[int], acked_index: set[int], committed: int | None) -> int | None:
    """The next offset to commit, given the acknowledged offsets of one partition, or ``None`` for none yet.

    ``committed`` is the partition's committed position, the next offset to read (``None``: nothing committed,
    the partition starts at offset 0). Only a run of consecutive acknowledged offsets starting exactly there can
    be committed; acknowledgements below it (records handled before a rebalance, processed again since) are
    forgotten. The committed run is removed from ``acked`` and ``acked_index``.
    """
    position = committed or 0
    acked.sort()
    stale = 0
    while stale < len(acked) and acked[stale] < position:
        stale += 1
    if stale:
        acked_index.difference_update(acked[:stale])
        del acked[:stale]
    if not acked or acked[0] != position:
        return None
    end = 1
    while end < len(acked) and acked[end] == acked[end - 1] + 1:
        end += 1
    acked_index.difference_update(acked[:end])
    next_offset = acked[end - 1] + 1
    del acked[:end]
    return next_offset


class ProducerBuffer(FaustProducerBuffer):
    """faust's buffer of table changelog writes, with a flush that waits until they were handed to Kafka.

    Every offset commit flushes the producer first, so that the state a message wrote is in its changelog before
    the message counts as processed. But faust's ``flush`` gives up as soon as one buffered write takes more than
    0.1 s to go out, which a busy event loop easily exceeds, and then flushes only what had reached the Kafka
    client: the commit could pass messages whose table writes were still buffered, and a worker killed then
    would lose that state for good (its messages are not delivered again). Here a flush waits until every write
    buffered when it began was handed over (not the ones agents buffer meanwhile: the offsets a commit writes
    were decided before its flush). One task hands the writes over, in order, so counts are enough. (Not for
    faust's ``producer_threaded``, which streamcart leaves off.)
    """

    #: Set by :class:`Producer`: what the flows send waits there for the writes buffered before it.
    state_first: StateFirst | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._put = 0  # writes buffered so far
        self._handed = 0  # of those, handed to the Kafka client

    def put(self, fut: Any) -> None:
        super().put(fut)
        self._put += 1
        if self.state_first is not None:
            self.state_first.note_write(fut)

    async def _send_pending(self, fut: Any) -> None:
        await super()._send_pending(fut)
        self._handed += 1  # only once it went: a failed hand-over crashes the buffer, and a flush then raises

    async def flush(self) -> None:
        if self.app is not None and self.app.conf.producer_threaded:  # another thread hands the writes over
            await super().flush()
            return
        target = self._put
        while self._handed < target:
            if self.state != "running":
                raise RuntimeError("Cannot flush: Producer not Running")
            self.message_sent.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)

    async def on_stop(self) -> None:
        # faust's sending task ends as soon as the stop begins; the producer hands everything over before it stops
        # (Producer.on_stop), so nothing should be left here.
        if self.size:
            log.warning("%d table write(s) still buffered when the producer stopped", self.size)


class DeliveryFailed(RuntimeError):
    """Kafka refused a record the worker sent, or never acknowledged it: no offset may be committed any more."""


class Deliveries:
    """Watches the delivery of every record a worker sends; once one failed, :meth:`check` raises for good.

    Every offset commit flushes the producer first, which waits for every record sent before it to be delivered
    or to fail. A failed record was an effect of a message (a table write, an event, a fact row) that is then about
    to count as processed: the commit must not happen, and neither may any later one, since they would pass it
    too. So the first failure stops all commits; the commit that raises crashes the worker (as Kafka Streams'
    default production handler does), and its messages since the last commit are delivered again to whoever owns
    their partitions next. Retriable errors never get here: the Kafka client retries them until faust's
    ``producer_request_timeout`` (an idempotent producer, for ever: :meth:`Producer._settings_extra`).
    """

    def __init__(self) -> None:
        self.failure: BaseException | None = None  # the first
        self.failures = 0

    def watch(self, delivery: asyncio.Future[Any], context: contextvars.Context | None = None) -> None:
        """Watch ``delivery``; a failure is logged in ``context`` (the sender's: its log fields), or the current."""
        delivery.add_done_callback(self._done, context=context)

    def _done(self, delivery: asyncio.Future[Any]) -> None:
        if delivery.cancelled() or (failure := delivery.exception()) is None:
            return
        self.failures += 1
        if self.failure is None:
            log.critical("Kafka did not take a record: %s: %s; no offset will be committed from now on, and the "
                         "worker stops at its next commit", type(failure).__name__, failure)
            self.failure = failure  # the later ones are counted (a failed batch fails each of its records)

    def check(self) -> None:
        """Raise :class:`DeliveryFailed` if any record failed."""
        if self.failure is not None:
            raise DeliveryFailed(
                f"{self.failures} record(s) not delivered, the first: {type(self.failure).__name__}: {self.failure}; "
                "nothing is committed past them"
            ) from self.failure


class NodeDrainingAccumulator(MessageAccumulator):  # type: ignore[misc]  # aiokafka has no type hints
    """aiokafka's accumulator of record batches, drained a broker at a time as Java's producer drains them.

    aiokafka sends a partition's batch only once that batch has lingered ``linger_ms``, so the many partitions a
    worker writes (its changelogs, the saga's topics, the warehouse's) each start their own clock, and their batches
    leave in a stream of small produce requests: in a profile of a worker at 100 orders/s, writing them took an
    eighth of its CPU. Here, as soon as one batch bound for a broker is due, every partition led by that broker
    sends its batch in the same request: one request per broker and linger period, and no batch waits longer than
    aiokafka would have made it wait (a broker with a request in flight gets the next one when it answers, as
    before). (Per partition nothing changes: one batch at a time, in order. faust's
    ``producer_threaded``, which streamcart leaves off, builds its Kafka client elsewhere and would not drain so.)

    An idempotent producer (``producer_idempotence``) numbers each partition's batches as aiokafka's drain takes
    them (``_pop_batch``, which the drain below still goes through): only a batch's linger changes here, never
    which batch of a partition goes first, and a batch sent again keeps its number.
    """

    def drain_by_nodes(self, ignore_nodes: Any, muted_partitions: Any = frozenset()) -> Any:
        leaders: dict[Any, Any] = {}
        due: set[Any] = set()
        for tp, batches in self._batches.items():
            if not batches or tp in muted_partitions:
                continue
            leader = leaders[tp] = self._cluster.leader_for_partition(tp)
            if leader not in (None, -1) and batches[0].remaining_linger() is None:
                due.add(leader)
        for tp, leader in leaders.items():
            if leader in due:
                self._batches[tp][0]._linger_time = 0  # due with the rest of its broker's batches
        return super().drain_by_nodes(ignore_nodes, muted_partitions)


def stores_caught_up(app: Any) -> bool:
    """Whether ``app``'s table stores are caught up with their changelogs: recovered, not rebalancing, standby copies
    included (they start reading only after the worker's own partitions are read back)."""
    recovery = app.tables.recovery
    return bool(recovery.completed.is_set() and not recovery.in_recovery and not app.rebalancing
                and recovery.standby_remaining_total() == 0)


class Producer(faust_aiokafka.Producer):
    """faust's aiokafka producer with :class:`ProducerBuffer`, drained before the Kafka client stops; the records of
    flows that read several topics wait there until the table writes before them are delivered (``send_after_state``,
    agents/state_first.py). Its flush waits for those too, and raises once a record it sent was not delivered
    (:class:`Deliveries`) or can no longer be sent (``HeldForever``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        buffer = ProducerBuffer(loop=self.loop, beacon=self.beacon)
        buffer.app = self.app
        self.deliveries = Deliveries()
        self.state_first = buffer.state_first = StateFirst(self._send_record)
        self.buffer = buffer
        self._caught_up_noted = -NOTE_EVERY_S

    def _settings_extra(self) -> Mapping[str, Any]:
        """faust's, and an idempotent producer where the settings ask for one (``producer_idempotence``).

        aiokafka then numbers each partition's batches and the broker writes a batch sent again (its acknowledgement
        lost with a connection) once, answering with its first offset, where the batch would otherwise be in the
        log twice (a table store's changelog then has a record between two of the store's own writes that the
        store never wrote, tables/store.py). It takes acks=all (faust's default anyway) and one produce request in
        flight per broker, which aiokafka's sender never exceeds. The broker keeps the last five batches of each
        producer and partition, and a partition only ever has one batch on its way, so a batch sent again is always
        among them. What changes besides: a batch that failed for a retriable reason is tried again until it is
        delivered, never expired after ``producer_request_timeout`` (only one whose partition has no leader that long
        still is); and once a batch failed for good, its
        partition's later batches fail as out of order (aiokafka never numbers them again), which changes nothing
        here since the first failure crashes the worker at its next commit (:class:`Deliveries`), and the worker
        that starts again has a producer id of its own.
        """
        extra = dict(super()._settings_extra())
        if getattr(self.app, "producer_idempotence", False):
            extra.update(acks="all", enable_idempotence=True)
        return extra

    def _new_producer(self, transactional_id: str | None = None) -> Any:
        producer = super()._new_producer(transactional_id)
        producer._message_accumulator.__class__ = NodeDrainingAccumulator
        return producer

    async def _send_record(self, record: Record, context: contextvars.Context) -> None:
        topic, key, value, headers = record
        delivery = await super().send(topic, key, value, None, None, headers or None)
        self.deliveries.watch(cast(asyncio.Future[Any], delivery), context)

    async def send_after_state(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None
    ) -> None:
        """Send a flow's record once the table writes buffered before it are in their changelogs
        (agents/state_first.py)."""
        await self.state_first.send((topic, key, value, headers))

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None, timestamp: float | None,
        headers: Any, *, transactional_id: str | None = None,
    ) -> Any:
        delivery = await super().send(
            topic, key, value, partition, timestamp, headers, transactional_id=transactional_id
        )
        self.deliveries.watch(cast(asyncio.Future[Any], delivery))
        return delivery

    async def flush(self) -> None:
        """Wait until every record sent so far, held ones included, was delivered; raise :class:`DeliveryFailed` or
        ``HeldForever`` (and crash the worker) if any ever failed."""
        try:
            await self.buffer.flush()
            await self.state_first.drain()
            await super().flush()
            self.deliveries.check()
        except (DeliveryFailed, HeldForever) as failure:
            # The worker crashes, whichever flush met the failure: a commit's, or a stop's (which would otherwise
            # end as a clean stop, and leave the consumer's thread running). A crashed worker exits non-zero; its
            # local stores never got the writes that failed, and its next start reads the changelogs after them.
            await self.crash(failure)
            raise
        for table in self.app.tables.values():
            if isinstance(table, Table):
                table.store_acknowledged()
        self._note_caught_up()

    def _note_caught_up(self) -> None:
        """Note, at most every :data:`NOTE_EVERY_S`, that the tables' stores are caught up with their changelogs,
        after a flush that succeeded (agents/local_state.py)."""
        app = cast(Any, self.app)
        if time.monotonic() - self._caught_up_noted < NOTE_EVERY_S or not app.conf.tabledir:
            return
        if not stores_caught_up(app):
            return
        self._caught_up_noted = time.monotonic()
        with contextlib.suppress(OSError):  # a unit test's app has no directory; an older note only errs to a rebuild
            note_caught_up(Path(app.conf.tabledir))

    async def on_stop(self) -> None:
        with contextlib.suppress(RuntimeError, HeldForever):  # a crash: what they held is lost either way
            await self.buffer.flush()
            await self.state_first.drain()
        await self.state_first.close()
        await super().on_stop()


class Table(faust.Table[Any, Any]):
    """faust's table on :class:`tables.store.HeldWritesStore` (its RocksDB store holds only what the changelog
    holds), and which deletes the stores of partitions it no longer holds.

    faust notes a changelog partition's offset in RocksDB as each record is acknowledged, one more RocksDB write
    (and a callback) per table write. The held-writes store notes it with each batch of writes it applies, so that
    one is left out. (Not for faust's ``exactly_once``, which streamcart does not use.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first_assignment = True
        #: The changelog partitions this worker holds (active or standby) since the last rebalance; None before one.
        self._held: set[int] | None = None

    def apply_changelog_batch(self, batch: Any) -> None:
        """faust's recovery applies the changelog records it buffered, leaving out those of partitions this worker
        no longer holds.

        faust applies its buffers when a rebalance revokes partitions, and again later (at the next revocation, at a
        stop), but it can take records of a revoked partition between the two: its recovery still reads the
        partition until the new assignment reaches it, after :meth:`on_rebalance` deleted the partition's store.
        Applied later, such a record created the store afresh holding that record alone, noting its offset as if
        every record before it were in. Seen on the real stack: a worker's ``shipments`` store of a partition it had
        lost in the rebalance that cut into its recovery, one key noting offset 116, 116 keys missing; had the
        partition come back, its recovery would have read on from there.
        """
        if self._held is not None:
            batch = [event for event in batch if event.message.partition in self._held]
        super().apply_changelog_batch(batch)

    def _new_store_by_url(self, url: Any) -> Any:
        if URL(str(url)).scheme != "rocksdb":  # the memory store of unit tests
            return super()._new_store_by_url(url)
        return HeldWritesStore(
            url, self.app, self, table_name=self.name, key_type=self.key_type, key_serializer=self.key_serializer,
            value_serializer=self.value_serializer, value_type=self.value_type, loop=self.loop, options=self.options,
        )

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        delivery = super().send_changelog(*args, **kwargs)
        if isinstance(self.data, HeldWritesStore):  # faust writes the store right after this
            self.data.expect_write(delivery)
        return delivery

    def _on_changelog_sent(self, fut: Any) -> None:
        """Nothing to note per record: the store notes the offset its writes reach."""

    def store_acknowledged(self) -> None:
        """Bring the local store up to what its changelog acknowledged (before an offset commit and at a stop)."""
        if isinstance(self.data, HeldWritesStore):
            self.data.apply_acknowledged()

    async def on_rebalance(self, assigned: set[Any], revoked: set[Any], newly_assigned: set[Any],
                           generation_id: int = 0) -> None:
        """A changelog partition this worker no longer holds at all (neither active nor standby: faust's
        ``revoked`` is the previous assignment less the new one) is deleted from its disk.

        faust keeps a revoked partition's RocksDB files, and when the partition comes back, weeks later perhaps,
        replays its changelog from the offset the files noted. Kafka keeps a tombstone a week
        (:data:`streamcart.topics.TOMBSTONE_RETENTION_MS`): a key deleted meanwhile, whose tombstone compaction
        has removed since, would come back (a forgotten order, a released reservation). Without the files the
        partition is rebuilt from its changelog alone (without standby copies, the default, a partition that moves
        to another worker is revoked here), which retention keeps to a week of orders. The recovery forgets the
        offsets it read the partition to, so that a partition coming back is read from its changelog's start.

        The first assignment of a run revokes nothing in faust's terms (there was no previous one), so then every
        partition store on disk that it does not hold is deleted: one kept by an earlier run of this worker
        (stopped cleanly, its files trusted) that held partitions it does not hold now.
        """
        topics = self.changelog_topic.topics
        self._held = {tp.partition for tp in assigned if tp.topic in topics}  # before any await: see above
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        gone = {tp.partition for tp in revoked if tp.topic in topics}
        if self._first_assignment:
            self._first_assignment = False
            gone |= stored_partitions(self.data) - self._held - set(getattr(self.data, "_dbs", ()))
        recovery = cast(Any, self.app.tables).recovery
        topic = self.changelog_topic.get_topic_name()
        for partition in gone:
            recovery.revoke(TP(topic, partition))  # faust skips it when the generation moved on meanwhile
        discarded = []
        for partition in sorted(gone):
            if (path := partition_path(self.data, partition)) is not None and path.exists():
                discard_directory(path)
                discarded.append(partition)
        if discarded:
            log.info("%s: partitions %s no longer held by this worker; their local stores are deleted (rebuilt from "
                     "the changelog if they come back)", self.changelog_topic.get_topic_name(), discarded)


def partition_path(store: Any, partition: int) -> Path | None:
    """Where ``store`` keeps ``partition`` on disk (``None`` for a store that keeps nothing there)."""
    path_of = getattr(store, "partition_path", None)
    return None if path_of is None else Path(path_of(partition))


def stored_partitions(store: Any) -> set[int]:
    """The partitions ``store`` has a directory for on disk (none for a store that keeps nothing there)."""
    if partition_path(store, 0) is None:
        return set()
    prefix = f"{store.basename}-"
    found = set()
    for path in Path(store.path).glob(f"{prefix}*.db"):
        number = path.name[len(prefix):-len(".db")]
        if is_digits(number) and Path(store.partition_path(int(number))) == path:
            found.add(int(number))
    return found


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer

