"""Small builders for the domain tests: messages with a filled-in envelope, and a way to drive a decider.

``make(Kind, **fields)`` names a message by its kind and fields, so building the same message twice gives the same
``event_id`` (a redelivery); pass ``event_id=`` to build the same content under another id (a retry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from schemas.messages import Message, OrderLine, PlaceOrder
from streamcart.domain.decision import Decision

M = TypeVar("M", bound=Message)
S = TypeVar("S")

TIMEOUT_MS = 30_000
PLACED_AT = 1_000


def make(kind: type[M], *, event_id: str | None = None, at: int = 2_000, **fields: Any) -> M:
    """A ``kind`` message with ``fields``; its id is derived from them unless given."""
    name = event_id or ":".join([kind.__name__, *(f"{k}={v}" for k, v in sorted(fields.items()))])
    correlation = str(fields.get("order_id", fields.get("sku", "test")))
    return kind(event_id=name, occurred_at=at, causation_id="test", correlation_id=correlation, **fields)


def place(
    order_id: str = "o-1",
    lines: tuple[tuple[str, int], ...] = (("A", 2), ("B", 1)),
    *,
    event_id: str = "place-1",
    at: int = PLACED_AT,
    token: str = "tok_approve",
    currency: str = "EUR",
) -> PlaceOrder:
    return PlaceOrder(
        event_id=event_id, occurred_at=at, causation_id=event_id, correlation_id=order_id, order_id=order_id,
        customer_id="c-1", lines=tuple(OrderLine(sku=sku, quantity=qty) for sku, qty in lines), currency=currency,
        payment_token=token,
    )


def of_type(messages: tuple[Message, ...] | list[Message], kind: type[M]) -> list[M]:
    """The messages of one kind, in order."""
    return [m for m in messages if isinstance(m, kind)]


def kinds(messages: tuple[Message, ...] | list[Message]) -> list[str]:
    return [type(m).__name__ for m in messages]


def run(
    decide: Callable[[S | None, Message], Decision[S]], state: S | None, *messages: Message
) -> tuple[S, list[Message]]:
    """Apply ``messages`` in turn with ``decide``; the final state and everything emitted. Every step is accepted."""
    emitted: list[Message] = []
    for message in messages:
        decision = decide(state, message)
        assert decision.rejected is None, decision.rejected
        state = decision.state if decision.state is not None else state
        emitted.extend(decision.messages)
    assert state is not None
    return state, emitted
