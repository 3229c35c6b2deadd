"""What a decider returns: the new state (or ``None`` when nothing changes) and the messages to send."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from schemas.messages import Message

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Decision(Generic[S]):
    """The outcome of applying one message to one piece of state.

    ``state`` is ``None`` when the state must not be written (e.g. a duplicate); ``messages`` are sent in
    order, after the state is stored. A duplicate yields the same messages as the first time, so a crash
    between storing and sending heals on redelivery (DESIGN.md §3, the duplicate rule).
    """

    state: S | None
    messages: tuple[Message, ...] = field(default=())
    rejected: str | None = None

    @property
    def changed(self) -> bool:
        return self.state is not None
