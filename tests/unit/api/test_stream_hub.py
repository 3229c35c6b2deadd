"""The live stream's hub: a shutting-down worker ends its open event streams at once instead of waiting for them
(issue 7), the saga's step counts and rates, and the latest dead letters."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import REGISTRY

from agents.orders import _cancelled_after_confirmation, _outcome
from api.stream import Hub, _in_flight, latest_dead_letters
from streamcart.settings import Settings
from streamcart.telemetry import DEAD_LETTERS_SHOWN, Telemetry
from tests.component.test_api_orders import an_order


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


def test_a_saga_steps_rate_is_its_count_over_the_last_seconds_and_a_restarted_worker_never_makes_it_negative():
    hub = Hub(app=None, settings=Settings())  # type: ignore[arg-type]  # the rates need neither
    assert hub.step_rates(100.0, {0: {"PlaceOrder": 10}}) == {"PlaceOrder": {"total": 10, "per_s": 0.0}}
    hub.step_rates(101.0, {0: {"PlaceOrder": 20}})
    assert hub.step_rates(102.0, {0: {"PlaceOrder": 40, "OrderConfirmed": 6}}) == {
        "PlaceOrder": {"total": 40, "per_s": 15.0}, "OrderConfirmed": {"total": 6, "per_s": 3.0}}
    # Past the window only the latest counts are compared: nothing moved since.
    assert hub.step_rates(110.0, {0: {"PlaceOrder": 40}})["PlaceOrder"]["per_s"] == 0.0
    # A worker restarted and its counts started again from zero: the rate stays at zero. Told which runs the
    # counts are of, the total keeps what the earlier run counted; not told (an older worker), it falls.
    assert hub.step_rates(111.0, {0: {"PlaceOrder": 5}})["PlaceOrder"] == {"total": 5, "per_s": 0.0}
    runs = Hub(app=None, settings=Settings())  # type: ignore[arg-type]
    runs.step_rates(100.0, {0: {"PlaceOrder": 40}}, {0: "a"})
    assert runs.step_rates(101.0, {0: {"PlaceOrder": 5}}, {0: "b"})["PlaceOrder"] == {"total": 45, "per_s": 0.0}


def test_a_worker_missing_from_a_tick_adds_nothing_to_the_rate_instead_of_its_whole_count():
    hub = Hub(app=None, settings=Settings())  # type: ignore[arg-type]
    hub.step_rates(100.0, {0: {"PlaceOrder": 100}})  # worker 1 did not answer in time
    rates = hub.step_rates(102.0, {0: {"PlaceOrder": 110}, 1: {"PlaceOrder": 5_000}})
    assert rates["PlaceOrder"] == {"total": 5_110, "per_s": 5.0}


def test_orders_in_flight_are_what_each_workers_deadline_index_holds():
    """A restarted worker counts from zero, yet settles orders placed before its restart: counters since start
    would read low for good (and 0 once clamped); the tables do not."""
    steps = {name: {"total": n, "per_s": 0.0} for name, n in {"PlaceOrder": 10, "OrderConfirmed": 300}.items()}
    answers = [{"worker": 0, "telemetry": {"pending": 100}}, {"worker": 1, "telemetry": {"pending": 7}}]
    assert _in_flight(answers, steps) == 107


def test_orders_in_flight_of_workers_that_do_not_say_count_a_confirmed_order_cancelled_later_once():
    steps = {name: {"total": n, "per_s": 0.0} for name, n in
             {"PlaceOrder": 10, "OrderConfirmed": 6, "OrderCancelled": 3, "ShipmentCancelled": 1}.items()}
    older = [{"worker": 0, "telemetry": {}}, {"worker": 1, "telemetry": {"pending": None}}]
    assert _in_flight(older, steps) == 10 - 6 - (3 - 1)


def test_a_confirmed_order_cancelled_later_is_neither_a_second_outcome_nor_a_saga_latency():
    """Its saga ended when it was confirmed; measured at the refund hours later it made p99 hours long (and fired
    the slow-saga alert) and counted the order twice in the outcome mix."""
    telemetry = Telemetry(clock=lambda: 100.0)
    pending = an_order()
    confirmed = pending.model_copy(update={"status": "CONFIRMED"})
    refunded = confirmed.model_copy(update={"status": "CANCELLED", "cancel_reason": "customer_request"})
    before = REGISTRY.get_sample_value("streamcart_orders_cancelled_after_confirmation_total") or 0.0
    placed = SimpleNamespace(event_id="e1", occurred_at=99_000)
    for before_state, after_state, late in ((pending, confirmed, 99_000), (confirmed, refunded, -10_800_000)):
        telemetry.order_step("o-1", _named("Step", placed), late, _outcome(before_state, after_state),
                             cancelled_after_confirmation=_cancelled_after_confirmation(before_state, after_state))
    assert dict(telemetry.outcomes) == {"confirmed": 1}
    assert telemetry.recent_latencies() == [1.0]
    assert REGISTRY.get_sample_value("streamcart_orders_cancelled_after_confirmation_total") == before + 1
    timed_out = pending.model_copy(update={"status": "CANCELLED", "cancel_reason": "timeout"})
    assert _outcome(pending, timed_out) == "cancelled:timeout" and not _cancelled_after_confirmation(pending, timed_out)
    assert _outcome(None, confirmed) == "confirmed"


def test_telemetry_counts_each_message_the_orders_flow_applied_and_emitted():
    telemetry = Telemetry(clock=lambda: 100.0)
    placed = SimpleNamespace(event_id="e1", occurred_at=99_000)
    telemetry.order_step("o-1", _named("PlaceOrder", placed), 99_000, None,
                         (_named("ReserveStock", placed), _named("ReserveStock", placed)))
    telemetry.order_step("o-1", _named("PaymentAuthorized", placed), 99_000, "confirmed",
                         (_named("OrderConfirmed", placed),))
    assert telemetry.snapshot()["steps"] == {"PlaceOrder": 1, "ReserveStock": 2, "PaymentAuthorized": 1,
                                             "OrderConfirmed": 1}


def _named(name: str, fields: SimpleNamespace) -> Any:
    """A stand-in message whose type is called ``name`` (telemetry goes by the type's name)."""
    return type(name, (), {"event_id": fields.event_id, "occurred_at": fields.occurred_at})()


def test_a_worker_shows_its_latest_dead_letters_with_where_they_came_from_and_why():
    now = [100.0]
    telemetry = Telemetry(clock=lambda: now[0])
    counted = REGISTRY.get_sample_value("streamcart_dead_letters_total", {"flow": "orders"}) or 0.0
    for i in range(DEAD_LETTERS_SHOWN + 2):
        now[0] += 1
        telemetry.dead_lettered("orders", ValueError(f"bad {i}"), f"commands.orders[3]@{i}", b"o-1")
    shown = telemetry.snapshot()["dead_letters"]
    assert len(shown) == DEAD_LETTERS_SHOWN
    assert REGISTRY.get_sample_value("streamcart_dead_letters_total", {"flow": "orders"}) == counted + 12  # alerted on
    assert shown[-1] == {"at": 112_000, "flow": "orders", "source": "commands.orders[3]@11", "key": "o-1",
                         "error": "ValueError: bad 11"}


def test_a_webhook_token_in_a_dead_letters_error_is_not_shown():
    telemetry = Telemetry(clock=lambda: 1.0)
    telemetry.dead_lettered("notifications.webhook", RuntimeError("POST https://shop.example/hook?token=s3cret failed"),
                            "events.orders[0]@1", None)
    (shown,) = telemetry.snapshot()["dead_letters"]
    assert shown["error"] == "RuntimeError: POST https://shop.example/hook?… failed" and shown["key"] is None


def test_the_dashboard_shows_the_newest_dead_letters_of_every_worker_first():
    def answer(worker: int, *ats: int) -> dict:
        return {"worker": worker, "telemetry": {"dead_letters": [{"at": at, "flow": "orders"} for at in ats]}}

    merged = latest_dead_letters([answer(0, 1, 5, 9), answer(1, *range(2, 20, 2))])
    assert [(d["at"], d["worker"]) for d in merged[:4]] == [(18, 1), (16, 1), (14, 1), (12, 1)]
    assert len(merged) == DEAD_LETTERS_SHOWN and (9, 0) in [(d["at"], d["worker"]) for d in merged]
    assert latest_dead_letters([{"worker": 0, "telemetry": {}}]) == []  # a worker of an older version


def live(worker: int, run: str | None, placed: int, **outcomes: int) -> dict:
    telemetry = {"placed": placed, "outcomes": outcomes}
    return {"worker": worker, "telemetry": telemetry if run is None else {"run": run, **telemetry}}


def test_a_worker_missing_from_a_tick_or_stopped_counts_with_its_last_figures():
    """The totals halved for the tick a worker missed (a 5 s peer timeout), and fell for good when one stopped."""
    hub = Hub(app=None, settings=Settings())  # type: ignore[arg-type]
    one, other = live(0, "a", 100, confirmed=90), live(1, "b", 50, confirmed=40, timeout=2)
    assert hub.counters(100.0, [one, other]) == (150, {"confirmed": 130, "timeout": 2})
    assert hub.counters(101.0, [one]) == (150, {"confirmed": 130, "timeout": 2})
    assert hub.counters(130.0, [one]) == (150, {"confirmed": 130, "timeout": 2})  # its orders were placed
    # Back, in the same run: its counts include what was counted before, once.
    assert hub.counters(131.0, [one, live(1, "b", 60, confirmed=45, timeout=2)]) == (
        160, {"confirmed": 135, "timeout": 2})


def test_a_restarted_worker_counting_from_zero_again_takes_nothing_from_the_totals():
    """A drill's kill of a worker made the dashboard's orders placed fall by all that worker had counted."""
    hub = Hub(app=None, settings=Settings())  # type: ignore[arg-type]
    assert hub.counters(100.0, [live(0, "a", 100, confirmed=90), live(1, "b", 50, confirmed=40)])[0] == 150
    placed, outcomes = hub.counters(110.0, [live(0, "a", 120, confirmed=100), live(1, "c", 3, confirmed=1)])
    assert (placed, outcomes) == (173, {"confirmed": 141})
    assert hub.counters(111.0, [live(0, "a", 121, confirmed=101), live(1, "c", 9, confirmed=4)])[0] == 180
    # A worker of an older version does not say which run: its counts restart with it, as they always did.
    older = Hub(app=None, settings=Settings())  # type: ignore[arg-type]
    older.counters(100.0, [live(0, None, 100)])
    assert older.counters(110.0, [live(0, None, 3)])[0] == 3


def test_the_runs_kept_one_by_one_are_bounded_and_the_older_still_count():
    from api.stream import RunTotals

    totals = RunTotals(keep=3)
    for run in range(10):
        totals.saw(0, run, {"placed": 10})
    totals.saw(0, 9, {"placed": 15})  # the current run goes on counting
    assert totals.totals() == {"placed": 105}
    assert len(totals._runs) == 3


async def test_a_tick_keeps_a_restarted_workers_earlier_counts_in_every_total(monkeypatch):
    """The tick hands each worker's run to the step counts too: without it the saga's step totals fell again."""
    import api.stream as stream

    hub = Hub(app=None, settings=Settings())  # type: ignore[arg-type]  # gathering is stubbed below

    def answer(run: str, placed: int) -> dict:
        telemetry = {"run": run, "placed": placed, "outcomes": {"confirmed": placed}, "steps": {"PlaceOrder": placed},
                     "latencies": [], "breaker": "closed", "dead_letters": [], "pending": 0}
        return {"worker": 1, "telemetry": telemetry, "lag": {}, "dlq_records": 0, "warehouse_dlq_records": 0,
                "tables": {}}

    answers = [answer("a", 40)]

    async def gathered(app: Any, settings: Any, path_qs: str) -> list[dict]:
        return answers

    async def nothing(*_: Any) -> Any:
        return {}

    monkeypatch.setattr(stream.gather, "from_every_worker", gathered)
    monkeypatch.setattr(hub, "recent_windows", nothing)
    monkeypatch.setattr(hub, "stock", nothing)
    await hub.tick()
    answers[:] = [answer("b", 3)]  # restarted: counting from zero again
    tick = await hub.tick()
    assert tick["orders_placed"] == 43 and tick["outcomes"] == {"confirmed": 43}
    assert tick["saga_steps"]["PlaceOrder"]["total"] == 43
