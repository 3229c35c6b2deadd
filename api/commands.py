"""Sending commands from the API: acknowledged by the broker before the client hears 202, or 503 in time.

A worker's API produces with confluent-kafka (idempotent, ``acks=all``, murmur2 like faust) from its own
producer, not faust's: a command must be acknowledged before the answer goes out, and faust's buffered producer
gives no per-record acknowledgement. Delivery reports are polled on a thread and resolve asyncio futures.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer

from api.errors import OutcomeUnknown, Unavailable
from schemas.codec import Codec
from schemas.errors import SchemaError
from schemas.messages import Message
from streamcart import tracing
from streamcart.settings import Settings
from streamcart.topics import Topics
from streamcart.tracing import outgoing_traceparent

#: How long a command may wait for the broker's acknowledgement before the client gets 503.
ACK_TIMEOUT_S = 5.0
RETRY_AFTER_S = "2"
#: How often a worker's API asks the broker for the order topic's metadata, and how long it waits for it.
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 2.0
#: How many probes in a row that go unanswered make the broker unreachable (one slow answer is no outage).
PROBE_FAILURES = 2
#: What a command the broker did not confirm in time is told as (a stalled broker may have written it all the same:
#: an order placed so was confirmed and captured while its client was told the broker refused it).
UNCONFIRMED = "the broker did not confirm the command in time; it may have been written all the same"


class CommandPort(Protocol):
    """Where the API sends commands (Kafka in a worker, a recording fake in component tests)."""

    async def send(self, message: Message, *, traceparent: str | None = None) -> None: ...


def reachable(commands: CommandPort | None) -> bool:
    """Whether ``commands`` reaches its broker, as far as it knows (a port that cannot tell is taken to)."""
    probe = getattr(commands, "reachable", None)
    return True if probe is None else bool(probe())


class KafkaCommands:
    """A confluent-kafka producer whose :meth:`send` returns once the broker acknowledged the record."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.topics = Topics.from_settings(settings)
        self.codec = codec
        self.producer = Producer({
            "bootstrap.servers": settings.bootstrap_servers,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
            # The client's answer waits on this: give up (and answer 503) rather than hang.
            "message.timeout.ms": int(ACK_TIMEOUT_S * 1000),
            "socket.connection.setup.timeout.ms": 2000,
        })
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="api-command-acks", daemon=True)
        self._poller.start()
        # Whether the broker answers, from a metadata request every PROBE_EVERY_S on a thread of its own (the acks'
        # thread must not wait on it): a stopped or killed broker otherwise shows only as each order's 5 s wait and
        # an "outcome unknown" answer, while /readyz says ready.
        self._failures = 0
        self._down_since: float | None = None
        self._prober = threading.Thread(target=self._probe, name="api-broker-probe", daemon=True)
        self._prober.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def _probe(self) -> None:
        while not self._stop.is_set():
            try:
                self.producer.list_topics(self.topics.order_commands, timeout=PROBE_TIMEOUT_S)
            except Exception:  # KafkaException, or a producer closing under it
                self._failures += 1
                if self._failures >= PROBE_FAILURES and self._down_since is None:
                    self._down_since = time.monotonic()
            else:
                self._failures, self._down_since = 0, None
            self._stop.wait(PROBE_EVERY_S)

    def reachable(self) -> bool:
        """``False`` once the broker left PROBE_FAILURES metadata requests in a row unanswered, until it answers one."""
        return self._down_since is None

    def down_for_s(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    async def send(self, message: Message, *, traceparent: str | None = None) -> None:
        if not self.reachable():
            # Refused before anything is sent (so a retry is safe with or without an Idempotency-Key), at once
            # rather than after ACK_TIMEOUT_S and an "outcome unknown".
            raise Unavailable(f"Kafka does not answer this worker (for {self.down_for_s():.0f} s): nothing was sent; "
                              "retry later", headers={"Retry-After": RETRY_AFTER_S})
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: Any, _record: Any) -> None:
            loop.call_soon_threadsafe(_settle, acked, err)

        try:
            value = self.codec.encode(message)
        except SchemaError as exc:
            raise Unavailable(f"the schema registry is unavailable: {exc}",
                              headers={"Retry-After": RETRY_AFTER_S}) from exc
        headers: list[tuple[str, str | bytes | None]] = []
        if tracing.enabled():
            headers.append(("traceparent", (traceparent or outgoing_traceparent()).encode()))
        try:
            self.producer.produce(
                getattr(self.topics, message.TOPIC), key=message.key.encode(), value=value, headers=headers,
                on_delivery=on_delivery,
            )
        except (KafkaException, BufferError) as exc:
            raise Unavailable(f"could not queue the command: {exc}", headers={"Retry-After": RETRY_AFTER_S}) from exc
        try:
            await asyncio.wait_for(asyncio.shield(acked), ACK_TIMEOUT_S + 1)
        except TimeoutError as exc:
            raise OutcomeUnknown(UNCONFIRMED, headers={"Retry-After": RETRY_AFTER_S}) from exc

    def close(self) -> None:
        self._stop.set()
        self._poller.join(timeout=2)
        self._prober.join(timeout=PROBE_TIMEOUT_S + 1)
        self.producer.flush(2)


def _settle(future: asyncio.Future[None], err: Any) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    elif err.code() == KafkaError._MSG_TIMED_OUT:  # sent, maybe written, not confirmed: no refusal
        future.set_exception(OutcomeUnknown(f"{UNCONFIRMED} ({err.str()})", headers={"Retry-After": RETRY_AFTER_S}))
    else:
        future.set_exception(Unavailable(f"the broker refused the command: {err}",
                                         headers={"Retry-After": RETRY_AFTER_S}))
