"""``streamcart drill``: customers shop while the stack's processes are killed, as a crash would (SIGKILL, process
group and all), and started again, one after the other; then ``streamcart audit`` checks that nothing was lost or
doubled (streamcart/audit.py), every order the shoppers saw accepted included.

It is the claim "killing any process at any instant loses nothing and duplicates no effect" run in front of you on
your own stack, with the dashboard open: the shoppers (streamcart/traffic.py) see what customers would (a refused
connection while the worker they called is down, a 503 while its partitions move), and the audit then looks at
what the system did with every order placed since the drill began.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from streamcart.audit import Report, audit, every
from streamcart.errors import StreamcartError
from streamcart.stack import Stack
from streamcart.traffic import Tally, run


@dataclass(frozen=True)
class Kill:
    """One process killed: when (seconds into the drill), and how long it took to be ready again."""

    name: str
    at_s: float
    back_after_s: float


@dataclass
class Drill:
    """What a drill did: the kills, what the shoppers saw, and the audit of the orders placed meanwhile."""

    kills: list[Kill] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    report: Report | None = None


def victims(stack: Stack, asked: Sequence[str], kills: int, rng: random.Random) -> list[str]:
    """Which process each of ``kills`` kills hits, in turn: ``asked`` (names, or ``workers``) or every process,
    shuffled, and round again when there are more kills than processes."""
    names = stack.select(list(asked)) if asked else list(stack.names)
    order: list[str] = []
    while len(order) < kills:
        cycle = list(names)
        rng.shuffle(cycle)
        if order and cycle[0] == order[-1] and len(cycle) > 1:  # not the same process twice in a row
            cycle.append(cycle.pop(0))
        order.extend(cycle)
    return order[:kills]


async def drill(stack: Stack, *, kills: int, every_s: float, down_s: float, rate: float, targets: Sequence[str] = (),
                skus: Sequence[str] = (), seed: int | None = None, audit_wait_s: float = 180.0,
                echo: Callable[[str], None] = print) -> Drill:
    """Shop at ``rate`` orders/s; every ``every_s`` seconds SIGKILL the next victim, start it again ``down_s`` later
    and wait until it is ready; stop placing orders ``every_s`` after the last one is back, let the shoppers finish,
    and audit every order placed since the start (of ``skus``, when they are named)."""
    settings = stack.settings
    not_running = [name for name in stack.names if not stack.is_running(name)]
    if not_running:
        raise StreamcartError(f"not running: {', '.join(not_running)}; a drill starts from a whole stack "
                              "(`streamcart up`)")
    rng = random.Random(seed)
    hits = victims(stack, targets, kills, rng)
    result = Drill()
    began = time.monotonic()
    since_ms = int(time.time() * 1000)
    echo(f"drill: {kills} kills, one every {every_s:g} s, each process down {down_s:g} s: {', '.join(hits)}")
    stop = asyncio.Event()
    loop, current = asyncio.get_running_loop(), asyncio.current_task()
    if current is not None:  # a SIGTERM ends the drill as Ctrl-C does: what it killed is started again first
        loop.add_signal_handler(signal.SIGTERM, current.cancel)
    shopping = asyncio.create_task(run(settings, rate=rate, seed=seed, echo=echo, tally=result.tally, skus=skus,
                                       stop=stop))
    down: str | None = None
    try:
        for name in hits:
            await _sleep_or_fail(every_s, shopping)
            at_s = time.monotonic() - began
            down = name
            await asyncio.to_thread(stack.kill, name)
            echo(f"{at_s:6.1f} s  SIGKILL {name}")
            await asyncio.sleep(down_s)
            started = time.monotonic()
            await asyncio.to_thread(stack.start, name)  # waits for its readiness check
            down = None
            back = time.monotonic() - started
            echo(f"{time.monotonic() - began:6.1f} s  {name} ready again ({back:.1f} s after its start)")
            result.kills.append(Kill(name, at_s, back))
        await _sleep_or_fail(every_s, shopping)  # orders placed after the last one is back count too
        stop.set()
        echo("no more orders; the shoppers follow theirs to the end")
        await shopping
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        shopping.cancel()
        with contextlib.suppress(BaseException):  # its outcome, if any, is told by the tally
            await asyncio.wait({shopping}, timeout=5)
        if down is not None:  # interrupted (Ctrl-C, SIGTERM) or failed while a process was down: left whole
            echo(f"starting {down} again")
            stack.start(down)
    echo("the shoppers are done: " + result.tally.line())
    echo("auditing every order placed since the drill began (waiting for the stack to be quiet) …")
    # Narrowed to the SKUs shopped when they were named: orders of other products placed meanwhile are not the
    # drill's (nor are orders some client timed later than the drill's start).
    result.report = await asyncio.to_thread(audit, settings, since_ms=since_ms, skus=list(skus) or None,
                                            expected=list(result.tally.status), wait_s=audit_wait_s,
                                            on_wait=every(10.0, lambda why: echo(f"  waiting: {why}")))
    return result


async def _sleep_or_fail(seconds: float, shopping: asyncio.Task[Tally]) -> None:
    """Sleep, unless the shoppers stop first with an error (raised here: e.g. no active product to shop)."""
    await asyncio.wait({shopping}, timeout=seconds)
    if shopping.done() and shopping.exception() is not None:
        raise shopping.exception()  # type: ignore[misc]

