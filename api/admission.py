"""Whether the API takes a new order now: shedding load before the saga is too far behind to settle it in time.

The signal is how long records wait before this worker's saga flows handle them (:class:`QueueDelay`, the
longest of their sources' least waits of the last second). Refusing while it stands above ``max_delay_s`` is not
enough alone: the signal lags the load by a second or two, and clients that retry at once (or many of them) would
pour in, in the moments it reads low, far more orders than the saga settles, each moment's to time out together.
So the gate also paces what it takes, as TCP paces a connection: it starts at :data:`START_RATE` orders a second
and doubles the pace each second that asked for more (slow start), until the first second the queue stood too
long; that halves what was taken, and from then on each second that asked for more adds a tenth, at least
:data:`MIN_RATE` (additive increase, multiplicative decrease). A pace nobody asks for is kept: it is what this
worker has shown it settles.

The pace is shared fairly: a caller that has taken half the bucket's capacity in the second under way takes only
while the bucket holds more than half of it, so one customer's burst leaves the rest to the others (it alone still
gets the whole pace as the bucket refills).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

#: The pace (orders per second) a worker's API starts at: a client's checkout traffic passes from the start, a
#: flood onto a quiet stack is taken at 50, 100, 200… a second until the queue says it is too much.
START_RATE = 50.0
#: The slowest pace it keeps to, and its least step up.
MIN_RATE = 5.0


@dataclass(frozen=True)
class Refusal:
    """Why a new order is not taken now, and when to try again (s)."""

    behind_s: float | None  # the saga flows' queue, when that is the reason (else the pace)
    retry_after_s: int
    share: bool = False  # the pace left room, but for other callers: this one took its share of the second


class PlacementGate:
    """Takes or refuses new orders by the saga flows' queue (``behind``) and the pace learnt from it."""

    def __init__(self, max_delay_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_delay_s = max_delay_s
        self.clock = clock
        self.rate = START_RATE  # orders per second
        self.slow_start = True  # until the first overload
        self._second = clock()  # when the second under way began
        self._taken = 0  # in the second under way
        self._overloaded = False  # whether the queue stood too long in the second under way
        self._limited = False  # whether the pace refused an order in the second under way
        self._taken_before = 0  # in the second before it
        self._taken_by: dict[str, int] = {}  # in the second under way, by caller
        self._tokens = self._capacity()
        self._filled_at = self._second

    def refusal(self, behind: float | None, caller: str | None = None) -> Refusal | None:
        """``None`` when a new order may be taken now (and it counts as taken, for ``caller`` when named), else why
        not."""
        if not self.max_delay_s:
            return None
        now = self.clock()
        self._adjust(now)
        if behind is not None and behind > self.max_delay_s:
            self._overloaded = True
            return Refusal(behind, min(10, max(1, math.ceil(behind))))
        self._tokens = min(self._capacity(), self._tokens + (now - self._filled_at) * self.rate)
        self._filled_at = now
        share = caller is not None and self._taken_by.get(caller, 0) >= self._capacity() / 2
        if self._tokens < 1.0 + (self._capacity() / 2 if share else 0.0):
            self._limited = True
            return Refusal(None, 1, share=share and self._tokens >= 1.0)
        self._tokens -= 1.0
        self._taken += 1
        if caller is not None:
            self._taken_by[caller] = self._taken_by.get(caller, 0) + 1
        return None

    def _capacity(self) -> float:
        """Half a second's orders: the pace holds within the second, and a client's few at once pass."""
        return max(1.0, self.rate / 2)

    def _adjust(self, now: float) -> None:
        """Once a second, by the second that ended: halve what was taken if it was overloaded, else grow the pace
        if it refused an order (doubled in slow start, else by a tenth, at least :data:`MIN_RATE`)."""
        if now - self._second < 1.0:
            return
        taken, overloaded, limited = self._taken, self._overloaded, self._limited
        self._second, self._taken, self._overloaded, self._limited = now, 0, False, False
        self._taken_by.clear()
        if overloaded:
            self.slow_start = False
            self.rate = max(MIN_RATE, min(self.rate, max(taken, self._taken_before)) / 2)
            self._tokens = min(self._tokens, self._capacity())
        elif limited:
            self.rate = self.rate * 2 if self.slow_start else self.rate + max(MIN_RATE, self.rate / 10)
        self._taken_before = taken
