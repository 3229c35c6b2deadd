"""The dead-letter topic from outside the workers: what failed, where and why, and replaying what can succeed now.

A flow dead-letters a record it cannot process (invariant I8): the record's own key and value, its headers, and
headers naming where it came from and why (:class:`DlqHeader`). Most dead letters stay dead: a message that will
never decode or that its flow refuses. Some failed for a reason that passes: a customer's webhook that was down
for an hour, a schema registry that refused, a bug fixed since. Once the cause is gone, ``streamcart dlq replay``
sends such a record back to the partition it came from, for the flow that failed on it alone
(:data:`DlqHeader.REPLAY_FLOW`: the other flows of that topic handled it the first time), and notes on the
``dlq.replays`` topic that it did, so that the next replay does not send it again.

A replay is a redelivery, which the duplicate rule (DESIGN.md §3) makes harmless, except where the order it is
about is not what it was: an order is forgotten a retention after it settled (README, "Retention"), and a stock
or payment command of a forgotten order, or of a settled one about to be, would act on an order nobody remembers
(hold stock for it, for ever). :func:`replay_refusal` keeps those, but the steps a settled order still owes
(:func:`still_owed`: such an order is never forgotten).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from schemas.errors import RegistryUnavailable, SchemaError
from schemas.messages import (
    CapturePayment,
    CommitStock,
    InventoryCommand,
    Message,
    PlaceOrder,
    RefundPayment,
    ReleaseStock,
    RestockItems,
    UpdateShipment,
    VoidPayment,
)
from streamcart.domain.order_state import LineStatus, OrderStatus, PaymentStatus
from streamcart.domain.retention import FINAL
from streamcart.domain.shipping import SHIPMENT_CANCELLED
from streamcart.text import is_digits
from streamcart.topics import keyed_by_order

#: The flows a dead letter can be replayed for (the agents' names, and the ``dlq.flow`` before any ``.channel``).
FLOWS = frozenset({"orders", "inventory", "payments", "shipping", "analytics", "notifications"})


class DlqHeader:
    """Headers every dead-lettered record carries (invariant I8), and those of a replayed one."""

    SOURCE_TOPIC = "dlq.source.topic"
    SOURCE_PARTITION = "dlq.source.partition"
    SOURCE_OFFSET = "dlq.source.offset"
    ERROR_CLASS = "dlq.error.class"
    ERROR_MESSAGE = "dlq.error.message"
    FLOW = "dlq.flow"
    FAILED_AT = "dlq.failed.at"
    #: On a letter whose record was too large for the dead-letter topic: the record value's length in bytes (the
    #: letter keeps its first bytes; agents/runtime.py, ``fitting_dead_letter``).
    VALUE_CUT = "dlq.value.cut"
    #: On a replayed record: the one flow that handles it (the ``dlq.flow`` it failed in); the others skip it.
    REPLAY_FLOW = "dlq.replay.flow"
    #: On a replayed record: the dead letter it came from, ``{dlq partition}:{offset}``.
    REPLAY_OF = "dlq.replay.of"
    #: On a replayed record: the offset its message first had in the partition it is sent back to (a replay of a
    #: replay keeps the first), where a flow that orders by position places it (the catalog's updates).
    REPLAY_POSITION = "dlq.replay.position"


#: Headers that describe one dead-lettering, not the record: dropped when it is replayed.
_FAILURE_HEADERS = frozenset({
    DlqHeader.SOURCE_TOPIC, DlqHeader.SOURCE_PARTITION, DlqHeader.SOURCE_OFFSET, DlqHeader.ERROR_CLASS,
    DlqHeader.ERROR_MESSAGE, DlqHeader.FLOW, DlqHeader.FAILED_AT, DlqHeader.REPLAY_FLOW, DlqHeader.REPLAY_OF,
    DlqHeader.REPLAY_POSITION, DlqHeader.VALUE_CUT,
})


def replay_route(replay_flow: str) -> tuple[str, str | None]:
    """The flow a replay marked ``replay_flow`` is for, and the one notification channel, if it names one:
    ``notifications.webhook`` is for the notifications flow's webhook alone, ``orders`` for the orders flow."""
    flow, _, channel = replay_flow.partition(".")
    return flow, channel or None


def _kept(headers: Iterable[tuple[str, bytes | None]]) -> tuple[tuple[str, bytes], ...]:
    """A record's headers as a letter keeps them (a header without a value: empty bytes)."""
    return tuple((name, b"" if raw is None else bytes(raw)) for name, raw in headers)


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic, its headers read, its value decoded where it can be."""

    partition: int  # of the dead-letter topic
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    message: Message | None = None
    #: Why :attr:`message` is ``None``: the decoding error.
    undecodable: str | None = None

    #: The headers naming the topic, partition and offset the record came from.
    SOURCE_HEADERS: ClassVar[tuple[str, str, str]] = (
        DlqHeader.SOURCE_TOPIC, DlqHeader.SOURCE_PARTITION, DlqHeader.SOURCE_OFFSET,
    )

    @classmethod
    def read(cls, partition: int, offset: int, key: bytes | None, value: bytes | None,
             headers: Iterable[tuple[str, bytes | None]],
             decode: Callable[[bytes | None], Message] | None) -> DeadLetter:
        """One record of the dead-letter topic. ``decode`` may raise :class:`SchemaError` (the letter says why);
        :class:`RegistryUnavailable` passes through (nothing can be judged without the registry). Without
        ``decode``, the value is left as it is (only the headers are read)."""
        kept = _kept(headers)
        if decode is None:
            return cls(partition, offset, key, value, kept)
        try:
            message = decode(value)
        except RegistryUnavailable:
            raise
        except SchemaError as exc:
            return cls(partition, offset, key, value, kept, undecodable=f"{type(exc).__name__}: {exc}")
        return cls(partition, offset, key, value, kept, message=message)

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None

    def _number(self, name: str) -> int | None:
        value = self.header(name)
        return int(value) if value is not None and is_digits(value) else None

    @property
    def source_topic(self) -> str | None:
        return self.header(self.SOURCE_HEADERS[0]) or None

    @property
    def source_partition(self) -> int | None:
        return self._number(self.SOURCE_HEADERS[1])

    @property
    def source_offset(self) -> int | None:
        return self._number(self.SOURCE_HEADERS[2])

    @property
    def flow(self) -> str:
        return self.header(DlqHeader.FLOW) or "?"

    @property
    def error_class(self) -> str:
        return self.header(DlqHeader.ERROR_CLASS) or "?"

    @property
    def error(self) -> str:
        return self.header(DlqHeader.ERROR_MESSAGE) or ""

    @property
    def failed_at_ms(self) -> int | None:
        return self._number(DlqHeader.FAILED_AT)

    @property
    def replay_of(self) -> str | None:
        """The dead letter this record was a replay of, when its replay failed again."""
        return self.header(DlqHeader.REPLAY_OF)

    @property
    def first_offset(self) -> int | None:
        """The offset its message first had in its source partition: a replay that failed again says so
        (``dlq.replay.position``), a first failure's source offset is it."""
        first = self._number(DlqHeader.REPLAY_POSITION)
        return first if first is not None else self.source_offset

    @property
    def identity(self) -> str:
        """What tells this letter from another at its position in a DLQ topic made again: where its record came
        from and when it failed."""
        return (f"{self.source_topic}[{self.header(self.SOURCE_HEADERS[1])}]@{self.header(self.SOURCE_HEADERS[2])}"
                f"/{self.header(DlqHeader.FAILED_AT)}")

    @property
    def order_id(self) -> str | None:
        return getattr(self.message, "order_id", None)

    @property
    def about_order(self) -> str | None:
        """The order the letter is about: its message's, or for one that does not decode, its key where its topic
        is keyed by the order (what ``--order`` selects by)."""
        if (found := self.order_id) is not None or self.message is not None:
            return found
        if self.key and self.source_topic is not None and keyed_by_order(self.source_topic):
            return self.key.decode(errors="replace")
        return None

    @property
    def summary(self) -> str:
        """The message's type and key, or why it does not decode."""
        if self.message is None:
            return f"undecodable: {self.undecodable}"
        return f"{type(self.message).__name__} {self.message.key}"

    @property
    def unreplayable(self) -> str | None:
        """Why this record can never be sent back (whatever ``--force`` says), or ``None``."""
        if self.source_topic is None or self.source_partition is None:
            return "its headers do not name the topic and partition it came from"
        if replay_route(self.flow)[0] not in FLOWS:
            return f"it failed in {self.flow!r}, not in a flow that could take it again"
        if (cut := self.header(DlqHeader.VALUE_CUT)) is not None:
            return f"it keeps only the first bytes of its record ({cut} bytes, too large for the dead-letter topic)"
        return None

    def as_json(self, replayed_at_ms: int | None = None) -> dict[str, Any]:
        return {
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "failed_at_ms": self.failed_at_ms,
            "flow": self.flow,
            "source": {"topic": self.source_topic, "partition": self.source_partition, "offset": self.source_offset},
            "error": {"class": self.error_class, "message": self.error},
            "replay_of": self.replay_of,
            "replayed_at_ms": replayed_at_ms,
            "key": None if self.key is None else self.key.decode(errors="replace"),
            "message_type": None if self.message is None else type(self.message).__name__,
            "message": None if self.message is None else self.message.model_dump(mode="json"),
            "undecodable": self.undecodable,
        }


class ConnectHeader:
    """Headers Kafka Connect puts on a record its sink could not take (``errors.deadletterqueue.context.headers``)."""

    TOPIC = "__connect.errors.topic"
    PARTITION = "__connect.errors.partition"
    OFFSET = "__connect.errors.offset"
    CONNECTOR = "__connect.errors.connector.name"
    STAGE = "__connect.errors.stage"
    EXCEPTION_CLASS = "__connect.errors.exception.class.name"
    EXCEPTION_MESSAGE = "__connect.errors.exception.message"
    STACKTRACE = "__connect.errors.exception.stacktrace"


@dataclass(frozen=True)
class SinkLetter(DeadLetter):
    """A record of the warehouse's dead-letter topic: a row a Kafka Connect sink could not take, with Connect's
    headers naming where it came from and why.

    Connect dead-letters what fails in its converter or its transforms (a row that is not JSON, or not the schema
    and payload a row is); a row PostgreSQL refuses stops the sink's task instead, and the workers restart it
    (README, "The warehouse"). Connect keeps the row's own time on the record: it stands for when it failed, since
    a sink takes a row within moments of its writing. Such a row is never replayed: it would fail again, and the
    next write of its key replaces it in the warehouse anyway.
    """

    #: The record's time (ms): when the worker wrote the row.
    written_at_ms: int | None = None

    SOURCE_HEADERS: ClassVar[tuple[str, str, str]] = (
        ConnectHeader.TOPIC, ConnectHeader.PARTITION, ConnectHeader.OFFSET,
    )

    @classmethod
    def read_row(cls, partition: int, offset: int, key: bytes | None, value: bytes | None,
                 headers: Iterable[tuple[str, bytes | None]], written_at_ms: int | None) -> SinkLetter:
        return cls(partition, offset, key, value, _kept(headers), written_at_ms=written_at_ms)

    @property
    def flow(self) -> str:
        """The sink, as ``warehouse:{connector}``."""
        return f"warehouse:{self.header(ConnectHeader.CONNECTOR) or '?'}"

    @property
    def error_class(self) -> str:
        """The exception's class without its package (``DataException``)."""
        return (self.header(ConnectHeader.EXCEPTION_CLASS) or "?").rsplit(".", 1)[-1]

    @property
    def error(self) -> str:
        """The exception's message, its root cause (Connect's messages often end in ``error: ``, the cause in its
        stack trace) and the stage that failed."""
        message = (self.header(ConnectHeader.EXCEPTION_MESSAGE) or "").strip()
        causes = [line[len("Caused by: "):] for line in (self.header(ConnectHeader.STACKTRACE) or "").splitlines()
                  if line.startswith("Caused by: ")]
        if causes:
            root_class, _, root_message = causes[-1].partition(": ")
            cause = f"{root_class.rsplit('.', 1)[-1]}: {root_message}".rstrip(": ")
            message = f"{message.removesuffix(':')}; caused by {cause}" if message else cause
        stage = self.header(ConnectHeader.STAGE)
        return f"{message} (in {stage.lower()})" if stage else message

    @property
    def failed_at_ms(self) -> int | None:
        return self.written_at_ms

    @property
    def replay_of(self) -> str | None:
        return None

    @property
    def order_id(self) -> str | None:
        """The order the row is about, when its key names one."""
        try:
            payload = json.loads(self.key or b"").get("payload")
        except (AttributeError, ValueError, RecursionError):
            return None
        order_id = payload.get("order_id") if isinstance(payload, dict) else None
        return order_id if isinstance(order_id, str) else None

    @property
    def summary(self) -> str:
        """The row's table and primary key (the payload of its key)."""
        table = (self.source_topic or "?").rsplit(".", 1)[-1]
        try:
            key = json.loads(self.key or b"")
            shown = json.dumps(key.get("payload", key) if isinstance(key, dict) else key, separators=(",", ":"))
        except (ValueError, RecursionError):
            shown = repr(self.key)
        return f"{table} row {shown}"

    @property
    def unreplayable(self) -> str | None:
        return "a warehouse row a sink could not take would fail again; the next write of its key replaces it"

    def as_json(self, replayed_at_ms: int | None = None) -> dict[str, Any]:
        value = (self.value or b"").decode(errors="replace")
        try:
            row: Any = json.loads(value)
        except (ValueError, RecursionError):
            row = None
        return {
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "written_at_ms": self.written_at_ms,
            "connector": self.header(ConnectHeader.CONNECTOR),
            "flow": self.flow,  # as --flow selects it
            "source": {"topic": self.source_topic, "partition": self.source_partition, "offset": self.source_offset},
            # ``class`` as the table shows it and --error selects it; ``java_class`` in full.
            "error": {"class": self.error_class, "java_class": self.header(ConnectHeader.EXCEPTION_CLASS),
                      "message": self.error},
            "key": None if self.key is None else self.key.decode(errors="replace"),
            "row": row,
            "value": value if row is None else None,
        }


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command is about; an empty selection is every one."""

    flows: frozenset[str] = frozenset()
    error_classes: frozenset[str] = frozenset()
    topics: frozenset[str] = frozenset()
    order_id: str | None = None
    positions: frozenset[str] = frozenset()  # "{partition}:{offset}"
    since_ms: int | None = None

    @property
    def empty(self) -> bool:
        return self == Selection()

    def __contains__(self, letter: object) -> bool:
        if not isinstance(letter, DeadLetter):
            return False
        flow = letter.flow
        if self.flows and flow not in self.flows and replay_route(flow)[0] not in self.flows:
            return False
        if self.error_classes and letter.error_class not in self.error_classes:
            return False
        if self.topics and letter.source_topic not in self.topics:
            return False
        if self.order_id is not None and letter.about_order != self.order_id:
            return False
        if self.positions and letter.position not in self.positions:
            return False
        failed_at = letter.failed_at_ms
        return self.since_ms is None or (failed_at is not None and failed_at >= self.since_ms)


@dataclass(frozen=True)
class OrderSeen:
    """What the workers hold of a letter's order now: its status (``None``: no such order), or why that cannot
    be told this moment; and, for a settled order's owed steps, where its payment (``payment``, the order's view of
    it) and each line's stock (``lines``, by SKU) stand."""

    status: str | None = None
    unknown: str | None = None
    payment: str | None = None
    lines: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> OrderSeen:
        """From the order as ``GET /v1/orders/{id}`` answers it."""
        payment = body.get("payment")
        lines = body.get("lines")
        return cls(
            status=str(body["status"]),
            payment=str(payment["status"]) if isinstance(payment, dict) and "status" in payment else None,
            lines={str(line["sku"]): str(line["status"]) for line in lines if isinstance(line, dict)
                   and "sku" in line and "status" in line} if isinstance(lines, list) else {},
        )


@dataclass(frozen=True)
class Limits:
    """The stack's settings a replay is judged by (in ms): the order retention (0: orders are kept for ever), how
    long a client may retry a placement with its Idempotency-Key, and the saga's deadline after a placement."""

    retention_ms: int
    idempotency_ttl_ms: int
    saga_timeout_ms: int

    @property
    def forget_safe_ms(self) -> int:
        """How long after a PlaceOrder its order, not stored, certainly was never placed (rather than forgotten).

        An order is forgotten a retention after it was placed at the earliest, and placed by its first PlaceOrder:
        a client's retry with the same key (and order id) can come an idempotency TTL after that first one.
        """
        if self.retention_ms <= 0:
            return self.idempotency_ttl_ms
        return max(0, self.retention_ms - self.idempotency_ttl_ms)


def replay_refusal(letter: DeadLetter, *, order: OrderSeen | None, now_ms: int, limits: Limits) -> str | None:
    """Why ``letter`` must not be replayed now, or ``None`` when it may.

    ``order`` is what the workers hold of the letter's order (``None`` when its message names no order). A letter
    that does not decode would only be dead-lettered again. A letter of an order the workers do not hold may only
    be that order's PlaceOrder, recent enough that the order certainly was never placed
    (:attr:`Limits.forget_safe_ms`) and still before its deadline (after it, the order would only time out). A
    command (not an event) for a settled order would reopen it, and may land after the order was forgotten, but
    for a step it still owes (:func:`still_owed`).
    """
    if (never := letter.unreplayable) is not None:
        return never
    message = letter.message
    if message is None:
        return f"it does not decode ({letter.undecodable}): its flow would dead-letter it again"
    if isinstance(message, UpdateShipment) and SHIPMENT_CANCELLED in letter.error:
        return ("a customer's cancel stopped this shipment before it was reported "
                f"{message.status}: the goods may have left while the order was refunded, which a person sorts out "
                "(with the carrier and the customer); nothing to replay")
    if order is None:
        return None
    if order.unknown is not None:
        return f"cannot tell now whether order {letter.order_id} is stored ({order.unknown}); try again"
    if order.status is None:
        if not isinstance(message, PlaceOrder):
            return (f"order {letter.order_id} is not stored: it was never placed, or was forgotten after it "
                    f"settled; a {type(message).__name__} for it would act on an order nobody remembers")
        age_ms = now_ms - message.occurred_at
        if age_ms >= limits.forget_safe_ms:
            return (f"its order was placed {age_ms / 3_600_000:.1f} h ago: it may have been placed and forgotten "
                    f"since, and would be placed again")
        if age_ms >= limits.saga_timeout_ms:  # the deadline is the placement's time plus the saga timeout
            return (f"its deadline passed {(age_ms - limits.saga_timeout_ms) / 1000:.0f} s ago: placed now, it would "
                    f"be cancelled as timed out (its customer should order again)")
        return None
    if order.status in FINAL and message.TOPIC.endswith("_commands"):
        if (owed := still_owed(order, message)) is None:
            return (f"order {letter.order_id} is {order.status}: a {type(message).__name__} now would reopen a "
                    f"settled order (which may be forgotten before it lands)")
        if not owed:
            return (f"order {letter.order_id} is {order.status} and owes no {type(message).__name__} any more "
                    f"(its payment is {order.payment}, its lines {dict(order.lines)}): nothing to replay")
    return None


def still_owed(order: OrderSeen, message: Message) -> bool | None:
    """Whether the settled ``order`` still owes the step ``message`` takes; ``None`` when it is no step a settled
    order of that status can owe (a command that would reopen it).

    A DELIVERED order owes its capture and each line's commitment until they are done; a CANCELLED one its void
    (a void by key may be owed even when the order saw the payment declined: the gateway may have authorized it
    unseen), its refund, and each line's release (while reserved) or restock (while sold). These are what the
    payments flow dead-letters for a person to replay when the gateway could not do them for 15 minutes, and the
    stock steps of a cancel or a delivery. An order that owes one is never forgotten
    (:func:`streamcart.domain.retention.quiet`), and a step once done is refused here: so a replay never lands
    after its order was forgotten, and a capture never reaches a cancelled order.
    """
    line = order.lines.get(message.sku) if isinstance(message, InventoryCommand) else None
    if order.status == OrderStatus.DELIVERED:
        if isinstance(message, CapturePayment):
            return order.payment != PaymentStatus.CAPTURED
        if isinstance(message, CommitStock):
            return line != LineStatus.COMMITTED
    elif order.status == OrderStatus.CANCELLED:
        if isinstance(message, VoidPayment):
            return order.payment not in (PaymentStatus.VOIDED, PaymentStatus.REFUNDED)
        if isinstance(message, RefundPayment):
            return order.payment in (PaymentStatus.CAPTURED, PaymentStatus.REFUND_REQUESTED)
        if isinstance(message, ReleaseStock):
            return line in (LineStatus.PENDING, LineStatus.RESERVED)
        if isinstance(message, RestockItems):
            return line == LineStatus.COMMITTED
    return None


@dataclass(frozen=True)
class Replay:
    """Where a dead letter goes back to, and as what."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def replay_of(letter: DeadLetter) -> Replay:
    """The record that replays ``letter``: its key, value and own headers (a trace's ``traceparent``…), to the
    partition it came from, marked for the flow that failed on it."""
    assert letter.source_topic is not None and letter.source_partition is not None, "unreplayable"
    headers = tuple((k, v) for k, v in letter.headers if k not in _FAILURE_HEADERS)
    marks: tuple[tuple[str, bytes], ...] = ((DlqHeader.REPLAY_FLOW, letter.flow.encode()),
                                            (DlqHeader.REPLAY_OF, letter.position.encode()))
    if (first := letter.first_offset) is not None:  # where its message first was
        marks += ((DlqHeader.REPLAY_POSITION, str(first).encode()),)
    return Replay(letter.source_topic, letter.source_partition, letter.key, letter.value, headers + marks)


def superseded(letters: Iterable[DeadLetter]) -> dict[str, str]:
    """The letters whose replay failed again, each with the newest letter that stands for it now."""
    newer: dict[str, str] = {}
    for letter in letters:  # oldest failure first: a chain's newest letter wins
        if letter.replay_of is not None:
            newer[letter.replay_of] = letter.position
    for old, new in list(newer.items()):
        while new in newer:  # A replayed as B, B replayed as C: A stands for C
            new = newer[new]
        newer[old] = new
    return newer


#: How long a claim keeps other runs off its letter: far longer than a run takes from its claims to its marks (a
#: read of the replays topic, at most 30 s for the broker to take the replays and 10 s the marks), so that only
#: a run that died in between is outlived, and its letters go with a later run.
CLAIM_TTL_MS = 5 * 60_000


@dataclass(frozen=True)
class Claim:
    """A run's note on the replays topic, before it sends a letter, that it is about to (:class:`ReplayLog`)."""

    run_id: str
    claimed_at_ms: int
    #: The end of the replays topic as the run read it to plan: a mark from there on came after it looked.
    seen_to: int

    def live(self, now_ms: int) -> bool:
        """Whether its run may still be sending (one older than :data:`CLAIM_TTL_MS` died)."""
        return now_ms - self.claimed_at_ms <= CLAIM_TTL_MS


@dataclass(frozen=True)
class _Note:
    """A record of the replays topic about one letter: a mark (``replayed_at_ms``) or a claim."""

    offset: int
    letter: str | None  # the letter's identity; None: an older version's mark, by position alone
    replayed_at_ms: int | None = None
    claim: Claim | None = None
    released: bool = False  # the claim's run ends its hold without a mark (it did not send, or was interrupted)


class ReplayLog:
    """The replays topic (one partition) as read: by each letter's position, the marks of the runs that replayed
    it and the claims of the runs about to.

    Two runs that both read a letter unmarked must not both send it. Each claims what it is about to send, then
    reads the topic to its end: of the claims of a letter, the first since its last mark holds it (the others
    lose), unless its run had not seen that mark when it planned (it planned to send what was replayed since), or
    unless it comes more than :data:`CLAIM_TTL_MS` after a holder whose run died. A mark ends a hold: its run is
    done. Every run reads the same log, so all agree on which claim holds.
    """

    def __init__(self) -> None:
        self._notes: dict[str, list[_Note]] = {}
        #: The offset after the last record read: what a run that plans with this log has seen.
        self.end = 0

    def note_mark(self, offset: int, position: str, replayed_at_ms: int, letter: str | None) -> None:
        self._note(position, _Note(offset, letter, replayed_at_ms=replayed_at_ms))

    def note_claim(self, offset: int, position: str, claim: Claim, letter: str) -> None:
        self._note(position, _Note(offset, letter, claim=claim))

    def note_release(self, offset: int, position: str, run_id: str, letter: str) -> None:
        self._note(position, _Note(offset, letter, claim=Claim(run_id, 0, 0), released=True))

    def _note(self, position: str, note: _Note) -> None:
        self._notes.setdefault(position, []).append(note)
        self.end = max(self.end, note.offset + 1)

    def replayed(self, letters: Iterable[DeadLetter] = ()) -> dict[str, int]:
        """When each letter replayed so far was, by position. A mark names the letter it was made for: one of
        ``letters`` now at its position that is another letter (the DLQ topic was made again, its offsets start
        over) is not marked by it."""
        made_for = {letter.position: letter.identity for letter in letters}
        return {position: marks[-1] for position in self._notes
                if (marks := [note.replayed_at_ms for note in self._about(position, made_for.get(position))
                              if note.replayed_at_ms is not None])}

    def holder(self, letter: DeadLetter, now_ms: int) -> Claim | None:
        """The claim of a run sending ``letter`` now, if any."""
        holder, _ = self._claims(letter)
        return holder if holder is not None and holder.live(now_ms) else None

    def lost(self, letter: DeadLetter, run_id: str) -> str | None:
        """Why the claim of run ``run_id`` on ``letter`` does not let it send (``None``: it holds it)."""
        return self._claims(letter)[1].get(run_id, "its claim is not on the replays topic; try again")

    def _claims(self, letter: DeadLetter) -> tuple[Claim | None, dict[str, str | None]]:
        """The claim that holds ``letter`` after the last record, and each claiming run's outcome (as :meth:`lost`)."""
        holder: Claim | None = None
        marked_at = -1  # the offset of its last mark
        outcomes: dict[str, str | None] = {}
        for note in self._about(letter.position, letter.identity):
            claim = note.claim
            if claim is None:  # a mark: its run is done
                holder, marked_at = None, note.offset
            elif note.released:  # its run let go without sending: the next claim may hold it
                if holder is not None and holder.run_id == claim.run_id:
                    holder = None
            elif marked_at >= claim.seen_to:
                outcomes[claim.run_id] = f"{ALREADY} by another run since this one looked"
            elif holder is not None and holder.live(claim.claimed_at_ms):
                outcomes[claim.run_id] = CLAIMED
            else:
                holder, outcomes[claim.run_id] = claim, None
        return holder, outcomes

    def _about(self, position: str, identity: str | None) -> list[_Note]:
        return [note for note in self._notes.get(position, ())
                if identity is None or note.letter is None or note.letter == identity]


def plan_replays(letters: Iterable[DeadLetter], *, order_seen: Callable[[str], OrderSeen], now_ms: int,
                 limits: Limits, replayed: Mapping[str, int] | None = None,
                 replaced: Mapping[str, str] | None = None, claimed: Collection[str] = frozenset(),
                 every: Iterable[DeadLetter] | None = None, running: frozenset[str] = FLOWS, force: bool = False,
                 again: bool = False, topics: Mapping[str, int] | None = None) -> list[tuple[DeadLetter, str | None]]:
    """Each letter with why it must not be replayed now (``None``: it may).

    ``order_seen`` is asked once per order. ``replayed`` holds when each letter replayed already was; ``again``
    sends those once more, unless their replay failed again (``replaced``, from :func:`superseded`: the newer
    letter stands for them). ``claimed`` are the letters another run is replaying now (:meth:`ReplayLog.holder`).
    ``every`` is every letter read, oldest failure first, ``letters`` among them (default: ``letters`` alone):
    whether a letter was replayed already as another letter of its message, or another stands for it, does not
    depend on which were selected. ``running`` are the flows the stack runs; ``topics`` its topics with their
    partition counts (a letter naming another topic or partition is kept). ``force`` skips the checks of
    :func:`replay_refusal` but these.
    """
    seen: dict[str, OrderSeen] = {}

    def order_of(order_id: str | None) -> OrderSeen | None:
        if order_id is None:
            return None
        if order_id not in seen:
            seen[order_id] = order_seen(order_id)
        return seen[order_id]

    letters = list(letters)
    # One message dead-lettered twice by one flow (redelivered after a crash between the letter and the commit, or
    # replayed twice and failing each time) is sent back once: as its newest letter, if any of them was not yet.
    newest: dict[tuple[object, ...], DeadLetter] = {}
    went: dict[tuple[object, ...], tuple[str, int]] = {}  # a letter of the message replayed already, and when
    going: set[tuple[object, ...]] = set()  # a letter of the message is being replayed by another run
    for letter in letters if every is None else every:  # oldest failure first
        newest[_message_of(letter)] = letter
        # (One whose replay failed again went, but did not get through: its newer letter stands for it.)
        if (at := (replayed or {}).get(letter.position)) is not None and letter.position not in (replaced or {}):
            went[_message_of(letter)] = (letter.position, at)
        if letter.position in claimed:
            going.add(_message_of(letter))
    plan: list[tuple[DeadLetter, str | None]] = []
    selected = {letter.position for letter in letters}
    for letter in letters:
        refusal = letter.unreplayable
        if refusal is None and (newer := (replaced or {}).get(letter.position)) is not None:
            refusal = f"{SUPERSEDED}, as {newer}: that letter stands for it"
        if refusal is None and (twin := newest[_message_of(letter)]) is not letter:
            if twin.position in selected or _message_of(letter) in went or _message_of(letter) in going:
                refusal = f"{DUPLICATE}, {twin.position}, which stands for it"
            else:  # the newer letter was not selected, nor replayed: this replay did not do the message's work
                refusal = (f"a newer letter of the same message, {twin.position}, stands for it: replay that one "
                           f"(--at {twin.position})")
        if refusal is None and topics is not None and not _in_stack(letter, topics):
            refusal = (f"{letter.source_topic}[{letter.source_partition}] is no partition of a topic of this stack "
                       f"(a letter of another stack, or of a topic made again)")
        if refusal is None and (flow := replay_route(letter.flow)[0]) not in running:
            refusal = f"the {flow} flow does not run on this stack"
        if refusal is None and _message_of(letter) in going:
            refusal = CLAIMED
        if refusal is None and not again and (sent := went.get(_message_of(letter))) is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sent[1] / 1000))
            as_ = "" if sent[0] == letter.position else f" as {sent[0]}"
            refusal = f"{ALREADY}{as_} (at {when}); --again sends it once more"
        if refusal is None and not force:
            refusal = replay_refusal(letter, order=order_of(letter.order_id), now_ms=now_ms, limits=limits)
        plan.append((letter, refusal))
    return plan


#: How the refusals of letters replayed before begin: the replay's work is done (it went, or a newer letter
#: stands for it), so ``streamcart dlq replay`` does not count them as failures.
ALREADY = "replayed already"
SUPERSEDED = "its replay failed again"
DUPLICATE = "the same message as a newer letter"
CLAIMED = "being replayed by another run"


def replayed_before(refusal: str) -> bool:
    """Whether ``refusal`` keeps a letter because it was replayed before, or another letter of its message is
    replayed instead, or another run is replaying it now (no failure of this replay)."""
    return refusal.startswith((ALREADY, SUPERSEDED, DUPLICATE, CLAIMED))


def in_log_order(letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    """``letters`` in the order their messages first had in their partitions (their first positions), which the
    letters' failure times need not keep (workers' clocks, a replay failing later than a newer message): a key's
    messages go back in the order they were first written."""
    def first(letter: DeadLetter) -> tuple[str, int, int]:
        offset = letter.first_offset
        return (letter.source_topic or "", letter.source_partition or 0, -1 if offset is None else offset)
    return sorted(letters, key=first)


def _in_stack(letter: DeadLetter, topics: Mapping[str, int]) -> bool:
    """Whether the partition ``letter`` came from is one of ``topics`` (name: partition count)."""
    count = topics.get(letter.source_topic or "")
    return count is not None and letter.source_partition is not None and 0 <= letter.source_partition < count


def _message_of(letter: DeadLetter) -> tuple[object, ...]:
    """What names the message a letter holds for its flow: where it first was in the log, and its bytes."""
    return (letter.source_topic, letter.source_partition, letter.first_offset, letter.flow, letter.key, letter.value)


#: The longest age ``--since`` takes: further back than any topic here keeps a record (and than Kafka's clock).
MAX_AGE_MS = 100 * 365 * 86_400_000


def parse_age(text: str) -> int:
    """``90s``, ``15m``, ``2h`` or ``7d`` in milliseconds (at most :data:`MAX_AGE_MS`)."""
    units = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not is_digits(number.replace(".", "", 1)):
        raise ValueError(f"{text!r}: expected a number and a unit, such as 90s, 15m, 2h or 7d")
    age = float(number) * units[unit]
    if age > MAX_AGE_MS:  # also what float() makes infinite
        raise ValueError(f"{text!r}: at most 100 years back ({MAX_AGE_MS // 86_400_000}d)")
    return round(age)
