"""Sending commands into the system from outside a worker (the CLI, the demo seed, tests).

Commands are produced with confluent-kafka through the same codec as the agents use, partitioned like faust
(murmur2) and acknowledged by the broker before :meth:`CommandSender.send` returns.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaException, Producer

from schemas.codec import Codec
from schemas.messages import Message
from streamcart.errors import StreamcartError
from streamcart.ids import new_id
from streamcart.settings import Settings
from streamcart.topics import Topics
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
        failures: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        try:
            for message in messages:
                self.producer.produce(
                    getattr(self.topics, message.TOPIC),
                    key=message.key.encode(),
                    value=self.codec.encode(message),
                    headers=[("traceparent", new_traceparent().encode())],
                    on_delivery=on_delivery,
                )
        except (KafkaException, BufferError) as exc:
            raise CommandNotSent(f"could not produce: {exc}") from exc
        left = self.producer.flush(timeout_s)
        if left or failures:
            raise CommandNotSent(f"the broker did not acknowledge {left or len(failures)} command(s): {failures}")
