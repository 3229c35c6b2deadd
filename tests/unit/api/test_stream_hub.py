"""A shutting-down worker ends its open event streams at once instead of waiting for them (issue 7)."""

from __future__ import annotations

from typing import Any

from api.stream import Hub
from streamcart.settings import Settings


async def test_ending_the_streams_gives_every_subscriber_the_end_even_a_slow_one_with_a_full_queue():
    hub = Hub(app=None, settings=Settings())  # type: ignore[arg-type]  # ending streams needs neither
    idle, slow = hub.subscribe(), hub.subscribe()
    hub._task.cancel()  # type: ignore[union-attr]  # no ticks here: the queues are filled by hand
    for n in range(slow.maxsize):
        slow.put_nowait({"type": "tick", "n": n})

    hub.end_streams()

    ends: list[Any] = [idle.get_nowait(), slow.get_nowait()]
    assert ends == [None, None]  # the stale ticks of the slow reader were dropped for the end
    assert idle.empty() and slow.empty()
    assert not hub.subscribers  # and the hub stops gathering ticks for nobody


async def test_a_stream_opened_after_the_end_ends_at_once():
    hub = Hub(app=None, settings=Settings())  # type: ignore[arg-type]
    hub.end_streams()
    late = hub.subscribe()
    assert late.get_nowait() is None
    assert not hub.subscribers and hub._task is None  # no ticks gathered for it
