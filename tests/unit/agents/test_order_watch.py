"""The long-poll's wake-up: a change wakes every waiter of that order at once, and only of that order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

from faust.types import TP

from agents.runtime import Runtime
from agents.view import FaustWorkerView
from agents.watch import OrderWatch
from streamcart.domain.order_state import OrderState
from streamcart.partitioning import partition_for
from streamcart.settings import Settings
from tests.component.test_api_orders import an_order

SETTINGS = Settings()


async def test_a_change_wakes_the_waiters_of_that_order_and_no_other():
    watch = OrderWatch()
    mine = asyncio.create_task(watch.next_change("o-1", 5))
    also_mine = asyncio.create_task(watch.next_change("o-1", 5))
    other = asyncio.create_task(watch.next_change("o-2", 0.2))
    await asyncio.sleep(0)
    watch.changed("o-1")
    assert await mine is True and await also_mine is True
    assert await other is False
    assert len(watch) == 0  # nobody is left registered


async def test_a_wait_that_times_out_leaves_nothing_behind():
    watch = OrderWatch()
    assert await watch.next_change("o-1", 0.01) is False
    assert len(watch) == 0


async def test_a_rebalance_wakes_every_waiter_and_counts():
    watch = OrderWatch()
    waiters = [asyncio.create_task(watch.next_change(order_id, 5)) for order_id in ("o-1", "o-2", "o-2")]
    await asyncio.sleep(0)
    watch.rebalanced()
    assert [await w for w in waiters] == [True, True, True]
    assert watch.rebalances == 1
    assert len(watch) == 0


class Rebalancing:
    """What the view reads of a faust app in a rebalance: the flag, the recovery, the orders partitions held."""

    def __init__(self, watch: OrderWatch, held: set[int]) -> None:
        self.watch, self.held = watch, held
        self.rebalancing = False
        self.tables = SimpleNamespace(recovery=SimpleNamespace(completed=SimpleNamespace(is_set=lambda: True)))
        self.assignor = SimpleNamespace(assigned_actives=lambda: {TP("commands.orders", p) for p in self.held})

    def begin(self) -> None:
        self.rebalancing = True
        self.watch.rebalanced()

    def end(self, held: set[int]) -> None:
        self.held, self.rebalancing = held, False
        self.watch.settled()


def a_view(orders: dict[str, OrderState]) -> tuple[FaustWorkerView, Rebalancing]:
    watch = OrderWatch()
    app = Rebalancing(watch, set(range(SETTINGS.partitions)))
    runtime = SimpleNamespace(order_watch=watch, app=app, settings=SETTINGS,
                              topics=SimpleNamespace(order_commands="commands.orders"),
                              tables=SimpleNamespace(orders=SimpleNamespace(get=orders.get)))
    return FaustWorkerView(cast(Runtime, runtime), 0), app


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_long_poll_whose_order_moves_in_a_rebalance_stops_waiting_when_it_ends():
    """Its order is another worker's now, whose flow never wakes this one: the API checks who owns it."""
    orders = {"o-1": an_order()}
    view, app = a_view(orders)
    waiting = asyncio.create_task(view.wait_settled("o-1", 30))
    await settle()
    view.runtime.order_watch.changed("o-1")  # a step that does not settle it: it waits on
    app.begin()
    await settle()
    assert not waiting.done()  # what the table says in a rebalance is no answer
    app.end(held=set(range(SETTINGS.partitions)) - {partition_for("o-1", SETTINGS.partitions)})
    assert await asyncio.wait_for(waiting, 5) == orders["o-1"]
    assert len(view.runtime.order_watch) == 0


async def test_a_long_poll_whose_order_stays_waits_on_through_a_rebalance():
    """A rebalance moves some partitions, not all: a client waiting on an order that stayed gets its outcome."""
    orders = {"o-1": an_order()}
    view, app = a_view(orders)
    waiting = asyncio.create_task(view.wait_settled("o-1", 30))
    await settle()
    app.begin()
    app.end(held={partition_for("o-1", SETTINGS.partitions)})
    await settle()
    assert not waiting.done()
    orders["o-1"] = orders["o-1"].model_copy(update={"status": "CONFIRMED"})
    view.runtime.order_watch.changed("o-1")
    assert (await asyncio.wait_for(waiting, 5)).status == "CONFIRMED"


async def test_a_long_poll_answers_at_its_deadline_when_the_rebalance_lasts_longer():
    orders = {"o-1": an_order()}
    view, app = a_view(orders)
    waiting = asyncio.create_task(view.wait_settled("o-1", 0.2))
    await settle()
    app.begin()
    assert await asyncio.wait_for(waiting, 5) == orders["o-1"]  # the API then answers 503: still rebalancing
    assert app.rebalancing and len(view.runtime.order_watch) == 0


async def test_a_rebalance_that_ended_before_its_waiter_looked_is_over():
    watch = OrderWatch()
    watch.settled()  # nobody waits: nothing to wake
    assert await watch.rebalance_over(lambda: True, 5) is True
    assert await watch.rebalance_over(lambda: False, 0.01) is False
    assert len(watch) == 0


async def test_an_order_settled_as_a_rebalance_begins_is_answered_once_it_is_over_if_it_stayed():
    """faust sets its rebalancing flag, then waits for the messages in hand: one of them may settle the order
    before the revocation wakes anyone. Its table is no answer until the rebalance is over."""
    orders = {"o-1": an_order()}
    view, app = a_view(orders)
    waiting = asyncio.create_task(view.wait_settled("o-1", 30))
    await settle()
    app.rebalancing = True
    orders["o-1"] = orders["o-1"].model_copy(update={"status": "CONFIRMED"})
    view.runtime.order_watch.changed("o-1")
    await settle()
    assert not waiting.done()
    app.end(held={partition_for("o-1", SETTINGS.partitions)})
    assert (await asyncio.wait_for(waiting, 5)).status == "CONFIRMED"


def test_a_rebalance_ending_wakes_the_long_polls_waiting_for_it(tmp_path):
    """The wiring: faust's end of a rebalance reaches the order watch (else every wait ran to its deadline)."""
    from agents.app import build_runtime
    from schemas.codec import Codec
    from schemas.registry import InMemoryRegistry

    runtime = build_runtime(Settings(home=tmp_path, partitions=4), Codec(InMemoryRegistry()), store="memory://")
    woken: list[str] = []
    runtime.order_watch.settled = lambda: woken.append("settled")  # type: ignore[method-assign]
    runtime.app.rebalance_ended[:] = [lambda: runtime.order_watch.settled()]
    runtime.app.on_rebalance_end()
    assert woken == ["settled"]
    fresh = build_runtime(Settings(home=tmp_path, partitions=4), Codec(InMemoryRegistry()), store="memory://")
    assert fresh.order_watch.settled in fresh.app.rebalance_ended


async def test_waiting_for_an_order_to_be_stored_ends_when_the_flow_stores_it():
    """A cancel sent right after placing waits for the order instead of answering 404 (api/orders.py cancel_order)."""
    orders: dict[str, OrderState] = {}
    view, _ = a_view(orders)
    waiting = asyncio.create_task(view.wait_stored("o-1", 30))
    await settle()
    assert not waiting.done()
    orders["o-1"] = an_order()
    view.runtime.order_watch.changed("o-1")
    assert await asyncio.wait_for(waiting, 5) == orders["o-1"]
    assert len(view.runtime.order_watch) == 0


async def test_waiting_for_an_order_never_stored_ends_at_the_timeout_or_a_rebalance():
    view, app = a_view({})
    assert await view.wait_stored("o-1", 0.05) is None
    waiting = asyncio.create_task(view.wait_stored("o-1", 30))
    await settle()
    app.begin()
    assert await asyncio.wait_for(waiting, 5) is None
    assert len(view.runtime.order_watch) == 0
