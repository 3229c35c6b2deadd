"""Sending commands into the system from outside a worker (the CLI, the demo seed, tests).

Commands are produced with confluent-kafka through the same codec as the agents use, partitioned like faust
(murmur2) and acknowledged by the broker before :meth:`CommandSender.send` returns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from schemas.codec import Codec
from schemas.messages import IndexOrder, Message
from streamcart.dead_letters import Claim, ConnectHeader, DeadLetter, Replay, ReplayLog, SinkLetter
from streamcart.errors import StreamcartError
from streamcart.ids import new_id
from streamcart.settings import Settings
from streamcart.topics import Topics, changelog_topic
from streamcart.tracing import new_traceparent


class CommandNotSent(StreamcartError):
    """The broker did not acknowledge a command."""


def envelope(correlation_id: str, *, now_ms: int | None = None, event_id: str | None = None) -> dict[str, Any]:
    """The common fields of a command that starts here: a fresh id (or ``event_id``, one derived from a client's
    idempotency key), the time now, its own cause."""
    event_id = event_id if event_id is not None else new_id()
    return {
        "event_id": event_id,
        "occurred_at": now_ms if now_ms is not None else int(time.time() * 1000),
        "causation_id": event_id,
        "correlation_id": correlation_id,
    }


class CommandSender:
    """Produces commands and waits for the broker's acknowledgement."""

    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.codec = codec or Codec.connect(settings)
        self.producer = Producer({
            "bootstrap.servers": settings.bootstrap_servers,
            "partitioner": "murmur2_random",  # faust's partitioner: keys land where the tables expect them
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
        })

    def send(self, *messages: Message, timeout_s: float = 10.0) -> None:
        failures = [failure for failure in self._deliver(
            [{"topic": getattr(self.topics, message.TOPIC), "key": message.key.encode(),
              "value": self.codec.encode(message), "headers": [("traceparent", new_traceparent().encode())]}
             for message in messages],
            timeout_s,
        ) if failure is not None]
        if failures:
            raise CommandNotSent(f"the broker did not acknowledge {len(failures)} command(s): {failures[:5]}")

    def resend(self, *replays: Replay, timeout_s: float = 10.0) -> list[str | None]:
        """Produce dead letters back to the partitions they came from (``streamcart dlq replay``); for each, why the
        broker did not acknowledge it (``None``: it did)."""
        return self._deliver(
            [{"topic": r.topic, "partition": r.partition, "key": r.key, "value": r.value, "headers": list(r.headers)}
             for r in replays],
            timeout_s,
        )

    def claim(self, letters: list[DeadLetter], claim: Claim, timeout_s: float = 10.0) -> list[str | None]:
        """Note on the replays topic that ``claim``'s run is about to send ``letters`` (:func:`read_replays` reads
        it back)."""
        return self._deliver([{"topic": self.topics.dlq_replays, **claim_record(letter, claim)} for letter in letters],
                             timeout_s)

    def release(self, letters: list[DeadLetter], claim: Claim, timeout_s: float = 10.0) -> list[str | None]:
        """Note on the replays topic that ``claim``'s run let ``letters`` go without sending them (interrupted, or
        refused by the broker): another run may take them at once, not after the claim's TTL."""
        return self._deliver([{"topic": self.topics.dlq_replays, **release_record(letter, claim)}
                              for letter in letters], timeout_s)

    def mark_replayed(self, letters: list[DeadLetter], at_ms: int, timeout_s: float = 10.0) -> list[str | None]:
        """Note on the replays topic that ``letters`` were replayed (:func:`read_replays` reads it back)."""
        return self._deliver([{"topic": self.topics.dlq_replays, **mark_record(letter, at_ms)} for letter in letters],
                             timeout_s)

    def read_replays(self) -> ReplayLog | None:
        """The replays topic up to its end now (:func:`read_replays`)."""
        return read_replays(self.settings)

    def _deliver(self, records: list[dict[str, Any]], timeout_s: float) -> list[str | None]:
        """Produce ``records`` and wait for the broker; for each, why it was not acknowledged (``None``: it was).

        What is still unacknowledged after ``timeout_s`` is purged, so that it cannot arrive later unnoticed: one
        still queued was not sent; one in flight may have reached the broker (:data:`MAYBE_DELIVERED`).
        """
        outcomes: list[str | None] = ["not acknowledged"] * len(records)

        def on_delivery(index: int) -> Callable[[Any, Any], None]:
            def delivered(err: Any, _msg: Any) -> None:
                if err is None:
                    outcomes[index] = None
                elif err.code() == KafkaError._PURGE_INFLIGHT:
                    outcomes[index] = MAYBE_DELIVERED
                else:
                    outcomes[index] = str(err)
            return delivered

        for index, record in enumerate(records):
            try:
                self.producer.produce(**record, on_delivery=on_delivery(index))
            except Exception as exc:  # KafkaException, BufferError, or a partition beyond what librdkafka takes
                outcomes[index] = f"could not produce: {type(exc).__name__}: {exc}"
        if self.producer.flush(timeout_s):
            self.producer.purge(in_queue=True, in_flight=True)
            self.producer.flush(0)  # serves the purged records' callbacks
        return outcomes


#: Why a record is reported unacknowledged although it may have been written (purged while in flight).
MAYBE_DELIVERED = "not acknowledged in time: it may have been written all the same"


class TopicMissing(CommandNotSent):
    """The topic to read does not exist (on this stack, under these settings)."""


#: librdkafka's own log lines (a refused connection every 50 ms while the broker is away) are not for the
#: command line: a failure reaches the user as one error naming the broker (:func:`_unreachable`).
_KAFKA_LOG = logging.getLogger("streamcart.commands.librdkafka")
_KAFKA_LOG.addHandler(logging.NullHandler())
_KAFKA_LOG.propagate = False


def _reader(settings: Settings, purpose: str) -> Consumer:
    """A consumer that reads without committing (``purpose`` names its throwaway group), from the earliest offset,
    and says when it reaches a partition's end."""
    return Consumer({"bootstrap.servers": settings.bootstrap_servers, "enable.auto.commit": False,
                     "group.id": f"streamcart-{purpose}-{new_id()}", "auto.offset.reset": "earliest",
                     "enable.partition.eof": True}, logger=_KAFKA_LOG)


def _unreachable(settings: Settings, what: str, exc: KafkaException) -> CommandNotSent:
    error = exc.args[0] if exc.args else exc
    reason = error.str() if isinstance(error, KafkaError) else str(error)
    return CommandNotSent(f"cannot read {what} from Kafka at {settings.bootstrap_servers} ({reason}): is the stack "
                          f"up (`streamcart status`)?")


def read_to_end(settings: Settings, topic: str, on_record: Callable[[Any], None], *, purpose: str,
                since_ms: int | None = None, on_progress: Callable[[int], None] = lambda read: None) -> None:
    """Hand every record of ``topic`` to ``on_record`` (a confluent-kafka message), from each partition's start (or
    its first record written at ``since_ms`` or later) up to the end it had when the read began; committing nothing
    (``purpose`` names the throwaway consumer group)."""
    consumer = _reader(settings, purpose)
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException as exc:
            raise _unreachable(settings, topic, exc) from exc
        if metadata is None or metadata.error is not None:
            raise TopicMissing(f"no topic {topic}: is the stack up, with STREAMCART_APP_ID={settings.app_id}?")
        ends = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
        starts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends]
        if since_ms is not None and starts:  # the broker's time index: no need to read what came before
            starts = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in ends], timeout=10)
            for start in starts:
                if start.offset < 0:  # nothing written since then
                    del ends[start.partition]
            starts = [start for start in starts if start.offset >= 0]
        consumer.assign(starts)
        read = 0
        stalled_since = time.monotonic()

        def done(partition: int) -> None:  # read to its end: what is written to it since is not this read's
            del ends[partition]
            consumer.pause([TopicPartition(topic, partition)])

        while ends:
            progressed = False
            for record in consumer.consume(num_messages=1000, timeout=1.0):
                partition = record.partition()
                if (error := record.error()) is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise CommandNotSent(f"reading {topic}: {error}")
                    if partition is not None and partition in ends:  # compaction may have removed its last offsets
                        done(partition)
                    continue
                offset = record.offset()
                if partition in ends and offset is not None and offset < ends[partition]:
                    on_record(record)
                    read += 1
                    progressed = True
            for position in consumer.position([TopicPartition(topic, p) for p in ends]) if ends else ():
                if position.offset >= ends[position.partition]:
                    done(position.partition)
            if progressed:
                stalled_since = time.monotonic()
                on_progress(read)
            elif ends and time.monotonic() - stalled_since > 30:
                raise CommandNotSent(f"reading {topic}: nothing came for 30 s with partitions {sorted(ends)} unread")
    finally:
        consumer.close()


def stored_order_ids(settings: Settings, *, on_progress: Callable[[int], None] = lambda read: None) -> list[str]:
    """The id of every order the orders table holds now, read from its changelog (the latest record of each key;
    a tombstone: forgotten), up to the end it had when the read began."""
    live: dict[bytes, bool] = {}

    def note(record: Any) -> None:
        if (key := record.key()) is not None:
            live[key] = record.value() is not None

    read_to_end(settings, changelog_topic(settings.app_id, "orders"), note, purpose="reindex", on_progress=on_progress)
    return sorted(key.decode() for key, present in live.items() if present)


def reindex_orders(settings: Settings, *, on_progress: Callable[[str], None] = lambda line: None) -> int:
    """Send IndexOrder for every stored order (the orders flow files each in the customer index and the retention
    index; one filed already changes nothing); how many were sent."""
    order_ids = stored_order_ids(settings, on_progress=lambda read: on_progress(f"read {read} changelog records"))
    sender = CommandSender(settings)
    for start in range(0, len(order_ids), 1000):
        sender.send(*(IndexOrder(**envelope(order_id), order_id=order_id)
                      for order_id in order_ids[start:start + 1000]), timeout_s=30.0)
        on_progress(f"sent {min(start + 1000, len(order_ids))} of {len(order_ids)}")
    return len(order_ids)


def read_dead_letters(settings: Settings, codec: Codec | None, *, since_ms: int | None = None,
                      on_progress: Callable[[int], None] = lambda read: None) -> list[DeadLetter]:
    """Every record of the dead-letter topic (kept 30 days), or those written since ``since_ms``, oldest failure
    first, its value decoded where it can be (not without a ``codec``: its headers only). Raises
    :class:`~schemas.errors.RegistryUnavailable` when the schema registry cannot be asked."""
    letters: list[DeadLetter] = []
    decode = None if codec is None else codec.decode

    def note(record: Any) -> None:
        letters.append(DeadLetter.read(record.partition(), record.offset(), record.key(), record.value(),
                                       record.headers() or (), decode))

    read_to_end(settings, Topics.from_settings(settings).dlq, note, purpose="dlq", since_ms=since_ms,
                on_progress=on_progress)
    return _oldest_first(letters)


def _oldest_first(letters: list[DeadLetter]) -> list[DeadLetter]:
    return sorted(letters, key=lambda letter: (letter.failed_at_ms or 0, letter.partition, letter.offset))


def read_sink_letters(settings: Settings, *, since_ms: int | None = None,
                      on_progress: Callable[[int], None] = lambda read: None) -> list[DeadLetter]:
    """Every record of the warehouse's dead-letter topic (rows a sink could not take), or those written since
    ``since_ms``, oldest first."""
    letters: list[DeadLetter] = []
    read_to_end(settings, Topics.from_settings(settings).warehouse_dlq,
                lambda record: letters.append(_sink_letter(record, record.partition(), record.offset())),
                purpose="warehouse-dlq", since_ms=since_ms, on_progress=on_progress)
    return _oldest_first(letters)


def sink_letter_sources(settings: Settings) -> set[tuple[str, str, int, int]]:
    """``(group, topic, partition, offset)`` of every row a warehouse sink dead-lettered, as Connect's headers name
    it (the group being the sink's, ``connect-`` and its name)."""
    return {
        (f"connect-{connector}", letter.source_topic, letter.source_partition, letter.source_offset)
        for letter in read_sink_letters(settings)
        if (connector := letter.header(ConnectHeader.CONNECTOR)) and letter.source_topic
        and letter.source_partition is not None and letter.source_offset is not None
    }


def _sink_letter(record: Any, partition: int, offset: int) -> SinkLetter:
    kind, at = record.timestamp()
    return SinkLetter.read_row(partition, offset, record.key(), record.value(), record.headers() or (),
                               at if kind != TIMESTAMP_NOT_AVAILABLE else None)


def read_dead_letter(settings: Settings, codec: Codec, partition: int, offset: int, *,
                     warehouse: bool = False) -> DeadLetter | None:
    """The dead letter at ``partition``:``offset`` (of the warehouse's dead-letter topic with ``warehouse``), or
    ``None`` if there is none (any more)."""
    topics = Topics.from_settings(settings)
    topic = topics.warehouse_dlq if warehouse else topics.dlq
    consumer = _reader(settings, "dlq")
    try:
        try:
            known = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if known is not None and known.error is None and partition not in known.partitions:
                return None  # a partition the topic does not have holds no letter (the broker is there)
            marks = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        except KafkaException as exc:  # no broker
            raise _unreachable(settings, f"{topic}[{partition}]", exc) from exc
        if marks is None:
            raise CommandNotSent(f"reading {topic}[{partition}]: the broker did not answer in 10 s")
        low, high = marks
        if not low <= offset < high:
            return None
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            record: Any = consumer.poll(1.0)
            if record is None:
                continue
            if record.error() is not None:
                return None  # the end of the partition: that offset is gone
            if record.offset() == offset:
                if warehouse:
                    return _sink_letter(record, partition, offset)
                return DeadLetter.read(partition, offset, record.key(), record.value(), record.headers() or (),
                                       codec.decode)
            return None
        raise CommandNotSent(f"reading {topic}: nothing came for 30 s")
    finally:
        consumer.close()


def mark_record(letter: DeadLetter, at_ms: int) -> dict[str, bytes]:
    """The key and value of the replays topic's record noting that ``letter`` was replayed at ``at_ms``."""
    return {"key": letter.position.encode(),
            "value": json.dumps({"replayed_at_ms": at_ms, "flow": letter.flow, "letter": letter.identity}).encode()}


def claim_record(letter: DeadLetter, claim: Claim) -> dict[str, bytes]:
    """The key and value of the replays topic's record claiming ``letter`` for ``claim``'s run. Keyed apart from
    the letter's marks: compacted, the topic keeps a letter's last mark, whatever claims came after it."""
    return {"key": f"{letter.position}/claim".encode(),
            "value": json.dumps({"claimed_at_ms": claim.claimed_at_ms, "run": claim.run_id, "seen_to": claim.seen_to,
                                 "position": letter.position, "letter": letter.identity}).encode()}


def release_record(letter: DeadLetter, claim: Claim) -> dict[str, bytes]:
    """The key and value of the replays topic's record ending ``claim``'s hold on ``letter`` unsent (under the
    claim's key: compacted, the release is what stays)."""
    return {"key": f"{letter.position}/claim".encode(),
            "value": json.dumps({"released_at_ms": int(time.time() * 1000), "run": claim.run_id,
                                 "position": letter.position, "letter": letter.identity}).encode()}


def note_replay(log: ReplayLog, offset: int, key: bytes | None, value: bytes | None) -> None:
    """Add the replays topic's record at ``offset`` to ``log``: a mark or a claim (:func:`mark_record`,
    :func:`claim_record`); anything else this code did not write is passed over."""
    if key is None or value is None:
        return
    with contextlib.suppress(AttributeError, TypeError, ValueError, KeyError):
        note = json.loads(value)
        if "released_at_ms" in note:
            log.note_release(offset, str(note["position"]), str(note["run"]), str(note["letter"]))
        elif "claimed_at_ms" in note:
            claim = Claim(str(note["run"]), int(note["claimed_at_ms"]), int(note["seen_to"]))
            log.note_claim(offset, str(note["position"]), claim, str(note["letter"]))
        else:
            letter = note.get("letter")  # none on a mark of an older version: by position alone
            log.note_mark(offset, key.decode(), int(note["replayed_at_ms"]),
                          letter if isinstance(letter, str) else None)


def read_replays(settings: Settings) -> ReplayLog | None:
    """The replays topic up to the end it has now: the marks of the letters replayed so far and the claims of
    runs about to send some; ``None`` when that topic does not exist (a stack upgraded without ``streamcart
    init``)."""
    log = ReplayLog()
    try:
        read_to_end(settings, Topics.from_settings(settings).dlq_replays,
                    lambda record: note_replay(log, record.offset(), record.key(), record.value()),
                    purpose="dlq-replays")
    except TopicMissing:
        return None
    return log


def read_replayed(settings: Settings, letters: Iterable[DeadLetter] = ()) -> dict[str, int] | None:
    """When each dead letter replayed so far was (by its ``PARTITION:OFFSET``), from the replays topic
    (:meth:`ReplayLog.replayed`); ``None`` when that topic does not exist."""
    log = read_replays(settings)
    return None if log is None else log.replayed(letters)
