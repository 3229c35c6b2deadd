"""Causes and derived envelopes: how every decider names and times the messages it emits.

A decider remembers, in its state, the :class:`Cause` of every transition that emitted something. The messages
of a transition are then a pure function of the state and that cause, so a redelivered message re-emits
byte-identical messages (DESIGN.md §3, the duplicate rule) without the state having to store them.
"""

from __future__ import annotations

from typing import TypedDict, TypeGuard

from pydantic import BaseModel, ConfigDict

from schemas.messages import Message
from streamcart.ids import derive_id


class Cause(BaseModel):
    """The message that made a decision: its ``event_id`` and its event time."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    at: int

    @classmethod
    def of(cls, message: Message) -> Cause:
        """The cause recorded when ``message`` is applied."""
        return cls(event_id=message.event_id, at=message.occurred_at)


class Envelope(TypedDict):
    """The envelope fields of a derived message (see :class:`schemas.messages.Message`)."""

    event_id: str
    occurred_at: int
    causation_id: str
    correlation_id: str


def derived(cause: Cause, correlation_id: str, kind: type[Message], *parts: str) -> Envelope:
    """The envelope of a ``kind`` message caused by ``cause``: ``derive_id(cause, "Kind", *parts)``, cause's time.

    ``parts`` tell apart several messages of one kind caused by the same message (e.g. one per SKU).
    """
    return Envelope(
        event_id=derive_id(cause.event_id, kind.__name__, *parts),
        occurred_at=cause.at,
        causation_id=cause.event_id,
        correlation_id=correlation_id,
    )


def caused(cause: Cause | None, event_id: str) -> TypeGuard[Cause]:
    """Whether the transition recorded as ``cause`` (``None``: it has not happened) was made by ``event_id``."""
    return cause is not None and cause.event_id == event_id
