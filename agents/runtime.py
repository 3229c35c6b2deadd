"""What every flow needs at run time, and the one place where failure policy lives.

:func:`consume` is the loop every agent runs: decode each raw value with the codec, hand it to the flow's
handler, and send anything that cannot be decoded or processed to the dead-letter topic with headers naming
where it came from and why. One bad message never restarts or stalls an agent (notes/faust.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Container
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from faust.streams import _current_event
from mode import Service
from pydantic import ValidationError

from agents.transport import InProgress, Yielded
from agents.watch import OrderWatch
from schemas.codec import Codec
from schemas.errors import RegistryUnavailable, SchemaError
from schemas.messages import Message
from streamcart import tracing
from streamcart.dead_letters import DlqHeader, replay_route
from streamcart.domain import warehouse
from streamcart.errors import StreamcartError
from streamcart.logs import log_context
from streamcart.settings import Settings
from streamcart.telemetry import Telemetry
from streamcart.topics import DEAD_LETTER_MAX_BYTES, Topics
from streamcart.tracing import child_traceparent, current_traceparent, span
from tables import StateTables

log = logging.getLogger(__name__)

T = TypeVar("T")

Handler = Callable[[Message, Any], Awaitable[None]]


class Sink(Protocol):
    """Where records go: Kafka in a worker, a recording fake in component tests (a value of ``None``: a dead
    letter of a record that had none)."""

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None: ...


#: Whether the records of the flow running in this task leave only after the table writes made before them
#: (agents/state_first.py). They must when a crash could make the flow decide a redelivered message otherwise than
#: the first time, with the first decision's records out and its state lost: when it reads several topics (after a
#: crash its messages may come back in another order), or when its decision rests on more than its state and the
#: message (payments: the gateway's answer, which a gateway down at the redelivery turns from an approval into a
#: decline, and the order's deadline). A flow reading one topic that decides from the message and its state alone
#: gets its messages back in the same order, decides the same again, and sends straight away (notifications,
#: analytics: one changelog round trip less per step).
_state_first: ContextVar[bool] = ContextVar("state_first", default=True)


def note_sources(stream: Any, *, decides_alone: bool = True) -> None:
    """Note, for the agent task consuming ``stream``, whether its records wait for its state: when it reads several
    topics, or does not decide from the message and its state alone (``decides_alone``)."""
    _state_first.set(len(getattr(stream.channel, "topics", ())) != 1 or not decides_alone)


class FaustSink:
    """Hands records to the faust app's producer; those of a flow that must send after its state (``_state_first``)
    once the table writes made before them are delivered (agents/state_first.py).

    Not through a faust ``Topic``: its ``send`` wraps each record in a future message, a channel hop and a
    completion callback, which cost more than the Kafka client's own work for these small records (about a third of
    each send). The producer watches every delivery: one that fails stops all commits (agents/transport.py,
    ``Deliveries``), and faust flushes it, held records included, before every offset commit.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        producer = await self.app.maybe_start_producer()
        if _state_first.get():
            await producer.send_after_state(topic, key, value, headers or None)
        else:
            await producer.send(topic, key, value, None, None, headers or None)


def raw_topic(app: Any, names: str | tuple[str, ...], partitions: int) -> Any:
    """A faust topic carrying raw bytes: the codec does the (de)serialisation, so nothing can fail before us."""
    names = (names,) if isinstance(names, str) else names
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=partitions
    )


class FlowError(StreamcartError):
    """A message a flow cannot process (dead-lettered with this reason)."""


def refused(
    rejected: str | None, message: Message, refusals: Container[str] = (), *, level: int = logging.INFO
) -> bool:
    """Whether a decision was refused for a business reason (logged; the caller emits nothing, and stores only what
    the decider noted of the refusal, if anything).

    ``rejected`` of ``None`` means the decision stands (``False``). A reason in ``refusals`` is a refusal the API
    reports before sending anything, so one that races past it is logged here, at ``level``. Any other reason is a
    message the flow cannot process: :class:`FlowError`, which dead-letters it.
    """
    if rejected is None:
        return False
    if rejected in refusals:
        log.log(level, "%s %s refused: %s", type(message).__name__, message.key, rejected)
        return True
    raise FlowError(rejected)


class ClosedAtStop(Service):
    """Runs ``close`` as it stops (:meth:`Runtime.close_at_stop`)."""

    def __init__(self, close: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._close = close

    async def on_stop(self) -> None:
        await self._close()


class HandledUpTo:
    """How far a flow has handled each partition of its source topics, by record time: the newest timestamp of
    the records it has handled there (a partition's records are handled in offset order, so every record written
    before that one was handled too). The deadline timer asks it of the orders flow's answer topics
    (:func:`agents.timeouts.answered_until`)."""

    def __init__(self) -> None:
        self._newest: dict[tuple[str, int], int] = {}

    def note(self, topic: str, partition: int, written_ms: int | None) -> None:
        """A record of ``topic[partition]`` written at ``written_ms`` was handled."""
        if written_ms is not None and written_ms > self._newest.get((topic, partition), -1):
            self._newest[(topic, partition)] = written_ms

    def forget(self) -> None:
        """Forget every note (at the end of a rebalance): a partition this worker lost and gets back may have records
        it handled before to handle again, from an older committed offset."""
        self._newest.clear()

    def newest(self, topic: str, partition: int) -> int | None:
        """The newest record time handled of ``topic[partition]`` (``None``: none handled by this worker yet)."""
        return self._newest.get((topic, partition))


@dataclass
class Runtime:
    """The app's shared parts, built once per worker and passed to every flow."""

    settings: Settings
    app: Any
    codec: Codec
    tables: StateTables
    sink: Sink | None = None
    topics: Topics = field(init=False)
    agents: dict[str, Any] = field(default_factory=dict)
    order_watch: OrderWatch = field(default_factory=OrderWatch)
    telemetry: Telemetry = field(default_factory=Telemetry)
    decoded: DecodedRecords = field(default_factory=lambda: DecodedRecords())
    #: What the orders flow has handled of each partition of its sources (the deadline timer's guard).
    orders_handled: HandledUpTo = field(default_factory=HandledUpTo)

    def __post_init__(self) -> None:
        self.topics = Topics.from_settings(self.settings)
        if self.sink is None:
            self.sink = FaustSink(self.app)

    def now_ms(self) -> int:
        """The wall clock in epoch milliseconds: the flows read it here, so that a test can stand it where its
        messages are dated."""
        return int(time.time() * 1000)

    def close_at_stop(self, close: Callable[[], Awaitable[None]]) -> None:
        """Have ``close`` run when the worker stops, after its agents have: for what a flow opens (an HTTP session).

        Called while the flows are declared, before the app starts: mode stops a service's children in the reverse
        order of their adding, and faust adds its agents, consumer and producer as the app starts, after this one.
        """
        self.app.add_dependency(ClosedAtStop(close))

    def made_on_first_use(self, make: Callable[[], T], close: Callable[[T], Awaitable[None]]) -> Callable[[], T]:
        """A getter of what ``make()`` returns, made on the first call (inside the running loop, where an HTTP
        session must be made) and closed with ``close`` when the worker stops (:meth:`close_at_stop`); a start after
        that stop makes another."""
        made: list[T] = []

        def get() -> T:
            if not made:
                made.append(make())
            return made[0]

        async def close_made() -> None:
            while made:
                await close(made.pop())

        self.close_at_stop(close_made)
        return get

    def source(self, *names: str) -> Any:
        """The faust topic(s) ``names`` for one agent to consume, as raw bytes."""
        return raw_topic(self.app, names, self.settings.partitions)

    def flows_reading(self, topic: str) -> frozenset[str]:
        """The flows (the app's agents, by name) that consume ``topic``."""
        return frozenset(name for name, agent in self.app.agents.items()
                         if topic in getattr(agent.channel, "topics", ()))

    async def member(self) -> None:
        """Return once this worker is surely still a member of its group, so what a handler writes next goes to
        partitions it still owns (:class:`agents.transport.Lease`); raise :class:`Yielded` if a rebalance or a stop
        begins first. Every message is checked before it is handled; a handler that waited on something slow (the
        payment gateway) checks again before it writes."""
        lease = self.app.lease
        if not lease.valid():
            await lease.held(self.app.in_progress)

    async def emit(self, messages: tuple[Message, ...], *, cause: Any) -> None:
        """Send a decision's messages in order, after its state was stored (DESIGN.md §3, the duplicate rule)."""
        for message in messages:
            await self.send(message, cause=cause)

    async def send(self, message: Message, *, cause: Any = None) -> None:
        """Encode and send ``message`` to its topic, keyed by its key, continuing the cause's trace."""
        await self.send_record(
            getattr(self.topics, message.TOPIC), message.key.encode(), self.codec.encode(message), cause=cause
        )

    async def send_rows(self, rows: list[warehouse.Row], *, cause: Any) -> None:
        """Send each warehouse row to its table's topic, keyed by its primary key."""
        for table, row in rows:
            key, value = table.record(row)
            await self.send_record(self.topics.warehouse[table.name], key, value, cause=cause)

    async def send_record(self, topic: str, key: bytes, value: bytes, *, cause: Any = None) -> None:
        """Send an already encoded record to ``topic`` in the trace of the span being handled (outside one, in the
        cause's trace)."""
        headers: list[tuple[str, bytes]] = []
        if tracing.enabled():
            traceparent = current_traceparent() or child_traceparent(header(cause, "traceparent") if cause else None)
            headers.append(("traceparent", traceparent.encode()))
        assert self.sink is not None
        await self.sink.send(topic, key, value, headers)

    async def dead_letter(self, event: Any, error: BaseException, flow: str) -> None:
        """Send the raw record of ``event`` to the DLQ with headers naming its origin and the error."""
        msg = event.message
        headers = dict(_headers(event))
        headers.update(
            {
                DlqHeader.SOURCE_TOPIC: str(msg.topic).encode(),
                DlqHeader.SOURCE_PARTITION: str(msg.partition).encode(),
                DlqHeader.SOURCE_OFFSET: str(msg.offset).encode(),
                DlqHeader.ERROR_CLASS: type(error).__name__.encode(),
                DlqHeader.ERROR_MESSAGE: str(error)[:1000].encode(),
                DlqHeader.FLOW: flow.encode(),
                DlqHeader.FAILED_AT: str(int(time.time() * 1000)).encode(),
            }
        )
        value = fitting_dead_letter(msg.key, msg.value, headers)
        log.warning(
            "dead-lettered %s[%s]@%s in %s: %s: %s",
            msg.topic, msg.partition, msg.offset, flow, type(error).__name__, error,
        )
        self.telemetry.dead_lettered(flow, error, f"{msg.topic}[{msg.partition}]@{msg.offset}", msg.key)
        assert self.sink is not None
        await self.sink.send(self.topics.dlq, msg.key, value, list(headers.items()))


#: Room left in a dead letter for the record's own framing (lengths, offsets, the batch it travels in).
DEAD_LETTER_FRAMING_BYTES = 64 * 1024


def fitting_dead_letter(key: bytes | None, value: bytes | None, headers: dict[str, bytes]) -> bytes | None:
    """The value a dead letter carries: the record's, or, when it and its headers would not fit in the dead-letter
    topic's records (:data:`~streamcart.topics.DEAD_LETTER_MAX_BYTES`, a source topic set to take larger ones), its
    first bytes, with ``headers`` noting how long it was (such a letter cannot be replayed: its value is not all
    there). A letter that cannot be sent stops the worker, the record undone, again at each restart."""
    if value is None:
        return None
    room = (DEAD_LETTER_MAX_BYTES - DEAD_LETTER_FRAMING_BYTES - len(key or b"")
            - sum(len(name) + len(raw) for name, raw in headers.items()))
    if len(value) <= room:
        return value
    headers[DlqHeader.VALUE_CUT] = str(len(value)).encode()
    return value[:max(0, room - len(DlqHeader.VALUE_CUT) - 20)]


def _headers(event: Any) -> list[tuple[str, bytes]]:
    raw = getattr(event, "headers", None) or {}
    items = raw.items() if isinstance(raw, dict) else raw
    return [(str(k), bytes(v) if v is not None else b"") for k, v in items]


def record_time_ms(event: Any) -> int | None:
    """When faust's ``event`` was written to Kafka: its record's timestamp in ms (``None`` if it has none; the same
    for a redelivered record)."""
    written_s = event.message.timestamp  # seconds (faust)
    return None if written_s is None else round(written_s * 1000)


def header(event: Any, name: str) -> str | None:
    """The text of the header ``name`` of faust's ``event`` (``None`` if it has none).

    Every flow asks each record for two (its trace and a replay's flow): one pass that copies nothing, not
    :func:`_headers`' copy of them all.
    """
    raw = getattr(event, "headers", None) or {}
    for key, value in raw.items() if isinstance(raw, dict) else raw:
        if str(key) == name:
            return "" if value is None else bytes(value).decode(errors="replace")
    return None


class DecodedRecords:
    """The messages of the records delivered last, decoded once for all the flows that consume them.

    An event topic feeds up to four flows of a worker, each handed the same record: the first to decode it keeps
    the message here under the record's (topic, partition, offset), and the others reuse it when the value is the
    same bytes (messages are frozen, so sharing one is safe). A value that fails to decode is not kept: every flow
    dead-letters it on its own (invariant I8 counts one DLQ record per consuming flow).
    """

    #: Records remembered: the flows of one worker handle a record within moments of each other.
    SIZE = 4096

    def __init__(self) -> None:
        self._messages: dict[tuple[str, int, int], tuple[bytes, Message]] = {}

    async def decode(self, codec: Codec, record: Any) -> Message:
        """The message of faust's ``record`` (its topic, partition, offset and value)."""
        where = (record.topic, record.partition, record.offset)
        kept = self._messages.get(where)
        if kept is not None and kept[0] == record.value:
            return kept[1]
        message = await _decode(codec, record.value)
        messages = self._messages
        if len(messages) >= self.SIZE:
            del messages[next(iter(messages))]
        messages[where] = (record.value, message)
        return message


async def _decode(codec: Codec, value: bytes) -> Message:
    """Decode ``value``; while the registry is unreachable, wait and retry (the record is fine, we are not)."""
    delay = 0.2
    while True:
        try:
            return codec.decode(value)
        except RegistryUnavailable as exc:
            log.warning("schema registry unavailable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


#: The flows an order waits for on its way to its outcome (and its shipment): how long their records wait is how
#: far behind the saga is (the API sheds new orders by it, api/admission.py). Notifications, analytics and the
#: warehouse rows may fall behind without an order waiting for them.
SAGA_FLOWS = frozenset({"orders", "inventory", "payments", "shipping"})


async def process(runtime: Runtime, event: Any, handler: Handler, flow: str) -> None:
    """Decode one event and hand it to ``handler``; dead-letter it if either step fails. Raises only
    :class:`Yielded` (the message given back for a rebalance or a stop).

    The event is handled as a span of the trace its ``traceparent`` header names, and everything logged meanwhile
    carries the flow, the trace id and, once decoded, the message's ``order_id`` (or ``sku``) and ``event_id``.
    """
    if flow in SAGA_FLOWS:
        runtime.telemetry.saga_queue.waited(f"{flow} {event.message.topic}", record_time_ms(event))
    replay_for = header(event, DlqHeader.REPLAY_FLOW)
    if replay_for is not None and (target := replay_route(replay_for)[0]) != flow:
        topic = event.message.topic
        if target in runtime.flows_reading(topic):
            log.debug("flow %s leaves a replay for %s alone", flow, replay_for)
            return  # a dead letter replayed for the flow that failed on it (streamcart dlq replay); this one had it
        # For no flow that reads it: every flow would leave it alone, and it would be gone without a trace. Each
        # dead-letters it instead, as each does a record it cannot decode.
        unrouted = FlowError(f"the record is a replay for {replay_for[:80]!r} ({DlqHeader.REPLAY_FLOW}), which is "
                             f"no flow reading {topic}")
        runtime.telemetry.failed(flow, unrouted)
        await runtime.dead_letter(event, unrouted, flow)
        return
    # Table writes go to the changelog partition of "the current event". faust sets it while a stream iterates
    # one event at a time, but not for events taken in batches: set it here for the event being handled (each
    # concurrently handled event runs in its own task, so each sees its own).
    _current_event.set(weakref.ref(event))
    with span(header(event, "traceparent"), flow, "consumer"), log_context(flow=flow):
        try:
            message = await runtime.decoded.decode(runtime.codec, event.message)
        except SchemaError as exc:  # undecodable, or the registry refused to say what its schema id is
            runtime.telemetry.failed(flow, exc)
            await runtime.dead_letter(event, exc, flow)
            return
        ids = {"order_id": getattr(message, "order_id", None), "sku": getattr(message, "sku", None)}
        with log_context(**ids, event_id=message.event_id):
            await runtime.member()  # (a worker that woke from a pause past its session is no member any more)
            failure = _misplaced(runtime, event, message) or await _handle(handler, message, event, flow)
            if failure is not None:
                log.error("flow %s failed on %s %s", flow, type(message).__name__, message.event_id,
                          exc_info=failure)
                runtime.telemetry.failed(flow, failure)
                await runtime.dead_letter(event, failure, flow)
            else:
                runtime.telemetry.processed(flow)


def _misplaced(runtime: Runtime, event: Any, message: Message) -> FlowError | None:
    """Why a message on a topic of the stack's that is not its own, or keyed otherwise than by its own key (its
    order id, SKU...), cannot be handled, else ``None``. On another topic it passes for what it is not (an
    UpsertProduct on the inventory commands took that topic's offset for its catalog position, and the product's
    real updates were taken for older ones; a ShipmentDelivered on the payment events delivered an order never
    dispatched). Under another key it sits in a partition that is not its key's, where the state it would write is
    not where the next message about the same order or SKU looks for it."""
    source, own = event.message.topic, getattr(runtime.topics, message.TOPIC)
    if source != own and source in runtime.topics.worker_inputs():
        return FlowError(f"{type(message).__name__} belongs on {own}, not on {source}")
    key = event.message.key
    if key == message.key.encode():
        return None
    shown = "no key" if key is None else f"the key {bytes(key)[:80].decode(errors='replace')!r}"
    return FlowError(f"{type(message).__name__} about {message.KEY} {message.key[:80]!r} came with {shown}: its "
                     f"partition is not that {message.KEY}'s")


#: Waits before trying a failed handler again. A failure that is the message's own (a refusal, an invalid
#: message) is dead-lettered at once; any other may be the moment's (a rebalance or a stop under way): the handler
#: is idempotent, so it is tried again first, and a stop cancels the wait, leaving the message unacknowledged for
#: whoever owns its partition next instead of dead-lettering a message that was fine.
HANDLER_RETRY_DELAYS_S = (0.2, 0.5, 1.0)


async def _handle(handler: Handler, message: Message, event: Any, flow: str) -> BaseException | None:
    """Run ``handler``; ``None`` when it succeeded, else the failure that should dead-letter the message."""
    for delay in (*HANDLER_RETRY_DELAYS_S, None):
        try:
            await handler(message, event)
            return None
        except (FlowError, ValidationError) as exc:
            return exc
        except Exception as exc:
            if delay is None:
                return exc
            log.warning("flow %s failed on %s %s (%s: %s); trying again in %.1f s", flow, type(message).__name__,
                        message.event_id, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
    return None


async def consume(runtime: Runtime, stream: Any, handler: Handler, *, flow: str, decides_alone: bool = True) -> None:
    """Run ``handler`` on every decodable message of ``stream``; dead-letter the rest and go on.

    An exception escaping an agent would skip the message *and* restart the agent, so none may escape: a value
    that does not decode, or that the flow cannot process, is dead-lettered with the reason.

    An event is acknowledged only once it was handled (or dead-lettered). faust's own iteration acknowledges an
    event in a ``finally`` clause, so an agent cancelled mid-handler by a stop would have its event committed, and
    the message lost to the partition's next owner; iterating without acks and acknowledging here prevents that.

    ``decides_alone``: whether the handler decides from the message and the flow's state alone (no outside call, no
    clock); if not, the flow's records leave after its state, as those of a flow reading several topics do.
    """
    note_sources(stream, decides_alone=decides_alone)
    runtime.telemetry.may_dead_letter(flow)
    events = stream.noack()
    in_progress = _in_progress(runtime)
    async for event in events.events():
        with in_progress.handling(event.message):
            try:
                await process(runtime, event, handler, flow)
            except Yielded:  # no longer surely a member, and a rebalance began: the partition's next owner has it
                log.info("flow %s gave a message of key %r back for a rebalance or a stop", flow, event.key)
                continue
            await events.ack(event)


def _in_progress(runtime: Runtime) -> InProgress:
    """The app's record of the messages being handled (what a rebalance or a stop waits for)."""
    in_progress: InProgress = runtime.app.in_progress
    return in_progress


#: How many messages one concurrently consuming agent handles at once.
CONCURRENT_MESSAGES = 256


async def consume_concurrently(
    runtime: Runtime, stream: Any, handler: Handler, *, flow: str, limit: int = CONCURRENT_MESSAGES,
    decides_alone: bool = True,
) -> None:
    """Like :func:`consume`, for flows that wait on slow calls: handle the messages of different keys at once.

    The messages of one key are handled one after the other in offset order; different keys run concurrently, up
    to ``limit`` messages in flight. Each event is acknowledged once handled; faust commits a partition's offsets
    only up to its first unacknowledged event (and flushes the producer first), so a crash or a stop replays what
    was unfinished and the duplicate rule absorbs what had been done. A stop cancels the messages in flight, which
    stay unacknowledged (faust's ``take_events`` would acknowledge a whole batch even then).

    A handler that waits to try something again does so with ``InProgress.pause``: when a rebalance or a stop
    begins, its message is given back unacknowledged instead of holding the group up, and so are the later messages
    of its key (after the rebalance, the partition is read again from its committed offset).
    """
    note_sources(stream, decides_alone=decides_alone)
    runtime.telemetry.may_dead_letter(flow)
    events = stream.noack()
    in_progress = _in_progress(runtime)
    slots = asyncio.Semaphore(limit)
    last_of_key: dict[bytes | None, asyncio.Task[bool]] = {}
    in_flight: dict[asyncio.Task[bool], tuple[bytes | None, Any]] = {}  # each task's key and message

    async def handle(event: Any, before: asyncio.Task[bool] | None) -> bool:
        """Handle ``event`` after the key's previous message; False if it was given back unhandled."""
        try:
            if before is not None:
                await asyncio.wait((before,))  # the key's previous message first; its failure is its own
                if not before.cancelled() and before.exception() is None and not before.result():
                    return False  # given back: so are the key's later messages, or they would overtake it
            await process(runtime, event, handler, flow)
            await events.ack(event)
            return True
        except Yielded:  # a rebalance or a stop came while it waited to try again: handled again afterwards
            log.info("flow %s gave a message of key %r back for a rebalance or a stop", flow, event.key)
            return False
        finally:
            slots.release()

    def done(task: asyncio.Task[bool]) -> None:  # also when cancelled before it ever ran
        key, message = in_flight.pop(task)
        in_progress.end(message)
        if last_of_key.get(key) is task:
            del last_of_key[key]
        if not task.cancelled() and (failure := task.exception()) is not None:
            # Not even dead-lettering worked: the event stays unacknowledged, so it is processed again after the
            # next restart or rebalance (its partition commits no further meanwhile).
            log.error("flow %s could not handle or dead-letter a message", flow, exc_info=failure)

    try:
        async for event in events.events():
            in_progress.begin(event.message)
            try:
                await slots.acquire()
            except BaseException:
                in_progress.end(event.message)
                raise
            key = event.key
            task = asyncio.ensure_future(handle(event, last_of_key.get(key)))
            last_of_key[key], in_flight[task] = task, (key, event.message)
            task.add_done_callback(done)
    finally:
        for task in list(in_flight):
            task.cancel()
