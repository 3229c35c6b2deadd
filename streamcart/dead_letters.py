"""The dead-letter topic from outside the workers: what failed, where and why, and replaying what can succeed now.

A flow dead-letters a record it cannot process (invariant I8): the record's own key and value, its headers, and
headers naming where it came from and why (:class:`DlqHeader`). Most dead letters stay dead: a message that will
never decode or that its flow refuses. Some failed for a reason that passes: a customer's webhook that was down
for an hour, a schema registry that refused, a worker older than the command it was sent. Once the cause is
gone, ``streamcart dlq replay`` sends such a record back to the partition it came from, for the flow that failed
on it alone (:data:`DlqHeader.REPLAY_FLOW`: the other flows of that topic handled it the first time).

A replay is a redelivery, which the duplicate rule (DESIGN.md §3) makes harmless, with one exception it checks
for: an order is forgotten a retention after it settled (README, "Retention"), and a stock or payment message
of a forgotten order would act on an order nobody remembers (hold stock for it, for ever). So a record of an
order the API cannot find is replayed only if it is the order's own PlaceOrder, sent less than a retention ago
(an order is forgotten a retention after it was placed at the earliest): :func:`replay_refusal`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import RegistryUnavailable, SchemaError
from schemas.messages import Message, PlaceOrder


class DlqHeader:
    """Headers every dead-lettered record carries (invariant I8), and those of a replayed one."""

    SOURCE_TOPIC = "dlq.source.topic"
    SOURCE_PARTITION = "dlq.source.partition"
    SOURCE_OFFSET = "dlq.source.offset"
    ERROR_CLASS = "dlq.error.class"
    ERROR_MESSAGE = "dlq.error.message"
    FLOW = "dlq.flow"
    FAILED_AT = "dlq.failed.at"
    #: On a replayed record: the one flow that handles it (the ``dlq.flow`` it failed in); the others skip it.
    REPLAY_FLOW = "dlq.replay.flow"
    #: On a replayed record: the dead letter it came from, ``{dlq partition}:{offset}``.
    REPLAY_OF = "dlq.replay.of"


#: Headers that describe one dead-lettering, not the record: dropped when it is replayed.
_FAILURE_HEADERS = frozenset({
    DlqHeader.SOURCE_TOPIC, DlqHeader.SOURCE_PARTITION, DlqHeader.SOURCE_OFFSET, DlqHeader.ERROR_CLASS,
    DlqHeader.ERROR_MESSAGE, DlqHeader.FLOW, DlqHeader.FAILED_AT, DlqHeader.REPLAY_FLOW, DlqHeader.REPLAY_OF,
})


def replay_target(flow: str) -> str:
    """The flow (consumer) a replay of a record dead-lettered in ``flow`` is for: ``notifications.webhook`` (one
    channel of the notifications flow) is for ``notifications``."""
    return flow.split(".", 1)[0]


def replayed_channel(replay_flow: str | None) -> str | None:
    """The one notification channel a replayed record is for (``webhook`` of ``notifications.webhook``); ``None``
    when it is not a replay of one channel's give-up."""
    if replay_flow is None or "." not in replay_flow:
        return None
    return replay_flow.split(".", 1)[1]


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

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None

    @property
    def source_topic(self) -> str:
        return self.header(DlqHeader.SOURCE_TOPIC) or "?"

    @property
    def source_partition(self) -> int | None:
        value = self.header(DlqHeader.SOURCE_PARTITION)
        return int(value) if value is not None and value.isdigit() else None

    @property
    def source_offset(self) -> int | None:
        value = self.header(DlqHeader.SOURCE_OFFSET)
        return int(value) if value is not None and value.isdigit() else None

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
        value = self.header(DlqHeader.FAILED_AT)
        return int(value) if value is not None and value.isdigit() else None

    @property
    def replay_of(self) -> str | None:
        """The dead letter this record was a replay of, when its replay failed again."""
        return self.header(DlqHeader.REPLAY_OF)

    @property
    def order_id(self) -> str | None:
        return getattr(self.message, "order_id", None)

    @property
    def summary(self) -> str:
        """The message's type and key, or why it does not decode."""
        if self.message is None:
            return f"undecodable: {self.undecodable}"
        return f"{type(self.message).__name__} {self.message.key}"

    def as_json(self) -> dict[str, Any]:
        return {
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "failed_at_ms": self.failed_at_ms,
            "flow": self.flow,
            "source": {"topic": self.source_topic, "partition": self.source_partition, "offset": self.source_offset},
            "error": {"class": self.error_class, "message": self.error},
            "replay_of": self.replay_of,
            "key": None if self.key is None else self.key.decode(errors="replace"),
            "message_type": None if self.message is None else type(self.message).__name__,
            "message": None if self.message is None else self.message.model_dump(mode="json"),
            "undecodable": self.undecodable,
        }


def dead_letter(partition: int, offset: int, key: bytes | None, value: bytes | None,
                headers: Iterable[tuple[str, bytes | None]], decode: Callable[[bytes | None], Message]) -> DeadLetter:
    """Read one record of the dead-letter topic. ``decode`` may raise :class:`SchemaError` (the letter says why);
    :class:`RegistryUnavailable` passes through (nothing can be judged without the registry)."""
    kept = tuple((name, b"" if raw is None else bytes(raw)) for name, raw in headers)
    try:
        message = decode(value)
    except RegistryUnavailable:
        raise
    except SchemaError as exc:
        return DeadLetter(partition, offset, key, value, kept, undecodable=f"{type(exc).__name__}: {exc}")
    return DeadLetter(partition, offset, key, value, kept, message=message)


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
        if self.flows and flow not in self.flows and replay_target(flow) not in self.flows:
            return False
        if self.error_classes and letter.error_class not in self.error_classes:
            return False
        if self.topics and letter.source_topic not in self.topics:
            return False
        if self.order_id is not None and letter.order_id != self.order_id:
            return False
        if self.positions and letter.position not in self.positions:
            return False
        failed_at = letter.failed_at_ms
        return self.since_ms is None or (failed_at is not None and failed_at >= self.since_ms)


#: Whether the workers hold an order now: ``True``, ``False``, or why that cannot be told this moment.
OrderStored = bool | str


def replay_refusal(letter: DeadLetter, *, order_stored: OrderStored | None, now_ms: int,
                   retention_ms: int) -> str | None:
    """Why ``letter`` must not be replayed now, or ``None`` when it may.

    ``order_stored`` answers for the letter's order (``None`` when its message names none). A letter that does not
    decode would only be dead-lettered again; one of an order the workers do not hold is safe only as that order's
    PlaceOrder, sent less than a retention ago: an order is forgotten no sooner than a retention after it was
    placed, so such an order was never placed (its PlaceOrder is what failed).
    """
    if letter.message is None:
        return f"it does not decode ({letter.undecodable}): its flow would dead-letter it again"
    if letter.source_partition is None or letter.source_topic == "?":
        return "its headers do not name the partition it came from"
    if order_stored is None or order_stored is True:
        return None
    if isinstance(order_stored, str):
        return f"cannot tell now whether order {letter.order_id} is stored ({order_stored}); try again"
    if not isinstance(letter.message, PlaceOrder):
        return (f"order {letter.order_id} is not stored: it was never placed, or was forgotten after it settled; "
                f"a {type(letter.message).__name__} for it would act on an order nobody remembers")
    if retention_ms > 0 and now_ms - letter.message.occurred_at >= retention_ms:
        return (f"its order was placed {(now_ms - letter.message.occurred_at) / 86_400_000:.1f} days ago, more than "
                f"the order retention: it may have been placed and forgotten since, and would be placed again")
    return None


@dataclass(frozen=True)
class Replay:
    """Where a dead letter goes back to, and as what."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = field(default=())


def replay_of(letter: DeadLetter) -> Replay:
    """The record that replays ``letter``: its key, value and own headers (a trace's ``traceparent``…), to the
    partition it came from, marked for the flow that failed on it."""
    assert letter.source_partition is not None, "replay_refusal() first"
    headers = tuple((k, v) for k, v in letter.headers if k not in _FAILURE_HEADERS)
    marks = ((DlqHeader.REPLAY_FLOW, letter.flow.encode()), (DlqHeader.REPLAY_OF, letter.position.encode()))
    return Replay(letter.source_topic, letter.source_partition, letter.key, letter.value, headers + marks)


def parse_age(text: str) -> int:
    """``90s``, ``15m``, ``2h`` or ``7d`` in milliseconds."""
    units = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.replace(".", "", 1).isdigit():
        raise ValueError(f"{text!r}: expected a number and a unit, such as 90s, 15m, 2h or 7d")
    return round(float(number) * units[unit])



def plan_replays(letters: Iterable[DeadLetter], *, order_stored: Callable[[str], OrderStored], now_ms: int,
                 retention_ms: int, force: bool = False) -> list[tuple[DeadLetter, str | None]]:
    """Each letter with why it must not be replayed now (``None``: it may). ``order_stored`` is asked once per
    order; ``force`` replays every letter that names where it came from, whatever else holds."""
    answers: dict[str, OrderStored] = {}

    def stored(order_id: str | None) -> OrderStored | None:
        if order_id is None or force:
            return None
        if order_id not in answers:
            answers[order_id] = order_stored(order_id)
        return answers[order_id]

    plan: list[tuple[DeadLetter, str | None]] = []
    for letter in letters:
        if force:
            refusal = None if letter.source_partition is not None else "its headers do not name where it came from"
        else:
            refusal = replay_refusal(letter, order_stored=stored(letter.order_id), now_ms=now_ms,
                                     retention_ms=retention_ms)
        plan.append((letter, refusal))
    return plan
