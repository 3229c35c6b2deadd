"""The warehouse sinks' keeper: which sinks count as failed, when each is restarted, and the calls it makes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from streamcart import connectors
from streamcart.connectors import SinkState, root_cause, sink_states, trouble
from streamcart.settings import Settings
from streamcart.sink_keeper import Backoff, SinkKeeper, SinkKeeperError
from streamcart.stack.probes import Probe
from streamcart.telemetry import SINK_RESTARTS

TRACE = ("org.apache.kafka.connect.errors.ConnectException: Exiting WorkerSinkTask due to unrecoverable exception.\n"
         "\tat org.apache.kafka.connect.runtime.WorkerSinkTask.deliverMessages(WorkerSinkTask.java:658)\n"
         "Caused by: org.apache.kafka.connect.errors.ConnectException: JDBC sink connector failure\n"
         "\tat io.debezium.connector.jdbc.JdbcSinkConnectorTask.put(JdbcSinkConnectorTask.java:155)\n"
         "Caused by: org.postgresql.util.PSQLException: ERROR: permission denied for table shipments\n"
         "\t... 11 more")
CAUSE = "org.postgresql.util.PSQLException: ERROR: permission denied for table shipments"


def ANSWERS() -> Probe:  # PostgreSQL answering
    return Probe(True, "accepts connections")


def status(connector: str = "RUNNING", *tasks: str, trace: str = TRACE) -> dict:
    """One connector's entry in ``GET /connectors?expand=status``."""
    return {"status": {
        "connector": {"state": connector, **({"trace": trace} if connector == "FAILED" else {})},
        "tasks": [{"id": i, "state": s, **({"trace": trace} if s == "FAILED" else {})} for i, s in enumerate(tasks)],
    }}


#: One sink of each kind: running, a failed task, a failed connector, an unassigned task, and someone else's.
MIXED = {
    "orders": status("RUNNING", "RUNNING"),
    "lines": status("RUNNING", "RUNNING", "FAILED"),
    "payments": status("FAILED"),
    "shipments": status("RUNNING", "UNASSIGNED"),
    "someone-elses": status("RUNNING", "FAILED"),
}


def test_a_sink_failed_when_its_connector_or_any_task_failed_with_the_root_cause_of_the_trace():
    assert sink_states(["orders", "lines", "payments", "shipments", "missing"], MIXED) == [
        SinkState("orders", False),
        SinkState("lines", True, CAUSE),
        SinkState("payments", True, CAUSE),
        SinkState("shipments", False),
    ]


def test_status_names_every_sink_not_fully_running_and_why_and_nothing_when_all_run():
    """What `streamcart status` shows on Connect's row: Connect answering is not enough, its sinks must run."""
    assert trouble(["orders"], MIXED) is None
    assert trouble(["orders", "lines", "payments", "shipments", "missing"], MIXED) == (
        f"lines: task 1 FAILED ({CAUSE}); payments: connector FAILED, no task ({CAUSE}); "
        "shipments: task 0 UNASSIGNED; missing not registered"
    )


def test_the_root_cause_is_the_innermost_cause_or_else_the_first_line_and_never_a_whole_page():
    assert root_cause(TRACE) == CAUSE
    assert root_cause("java.lang.IllegalStateException: stopped\n\tat x") == "java.lang.IllegalStateException: stopped"
    assert root_cause("") == ""
    long = root_cause("Caused by: " + "x" * 1000)
    assert len(long) == 300 and long.endswith("…")


def restarts_at(backoff: Backoff, sink: SinkState, times: range) -> list[int]:
    """When a keeper checking at ``times`` restarts ``sink`` (each restart succeeding)."""
    due = []
    for t in times:
        if backoff.due(sink, float(t)):
            backoff.restarted(sink.name, float(t))
            due.append(t)
    return due


def test_a_failed_sink_is_restarted_at_once_then_after_a_doubling_wait_until_it_runs_again():
    backoff = Backoff(first_s=10, max_s=35)
    failed, running = SinkState("s", True), SinkState("s", False)
    assert restarts_at(backoff, failed, range(0, 120)) == [0, 10, 30, 65, 100]  # waits of 10, 20, then 35 (the cap)
    assert not backoff.due(running, 120.0)
    assert restarts_at(backoff, failed, range(121, 132)) == [121, 131]  # running in between: starts over


def test_each_sink_has_its_own_backoff_and_only_a_restart_done_moves_it():
    backoff = Backoff(first_s=10)
    a, b = SinkState("a", True), SinkState("b", True)
    assert backoff.due(a, 0.0) and backoff.due(b, 0.0)
    backoff.restarted("a", 0.0)  # b's restart was refused: still due
    assert not backoff.due(a, 2.0) and backoff.due(b, 2.0)


async def fake_connect(
    aiohttp_server: Any, statuses: dict, restarts: list[str], *, broken: bool = False, listing: str | None = None,
    refusing: str | None = None,
) -> Settings:
    """Connect's REST API as the keeper uses it: ``broken`` answers 500, ``listing`` replaces the status body,
    ``refusing`` names a connector whose restart is refused (409, as during a rebalance)."""
    async def listed(request: web.Request) -> web.Response:
        assert request.query.get("expand") == "status"
        if broken:
            return web.json_response({"error_code": 500, "message": "rebalancing"}, status=500)
        if listing is not None:
            return web.Response(text=listing, content_type="text/html")
        return web.json_response(statuses)

    async def restart(request: web.Request) -> web.Response:
        if request.content_type != "application/json":  # as Connect answers
            return web.json_response({"error_code": 415, "message": "HTTP 415 Unsupported Media Type"}, status=415)
        if request.match_info["name"] == refusing:
            return web.json_response({"error_code": 409, "message": "Cannot complete request momentarily"},
                                     status=409)
        restarts.append(f"{request.match_info['name']}?{request.query_string}")
        return web.json_response({}, status=202)

    app = web.Application()
    app.router.add_get("/connectors", listed)
    app.router.add_post("/connectors/{name}/restart", restart)
    server = await aiohttp_server(app)
    return Settings(connect_host=server.host, connect_port=server.port, app_id="keeper")


async def test_the_keeper_restarts_only_its_own_failed_sinks_and_only_their_failed_instances(aiohttp_server):
    restarts: list[str] = []
    statuses = {
        "keeper-warehouse-orders": status("RUNNING", "FAILED"),
        "keeper-warehouse-payments": status("RUNNING", "RUNNING"),
        "someone-elses": status("FAILED"),
    }
    keeper = SinkKeeper(await fake_connect(aiohttp_server, statuses, restarts), warehouse=ANSWERS)
    before = SINK_RESTARTS.labels("keeper-warehouse-orders")._value.get()
    await keeper.on_start()
    try:
        assert await keeper.check(now=0.0) == ["keeper-warehouse-orders"]
        assert restarts == ["keeper-warehouse-orders?includeTasks=true&onlyFailed=true"]
        assert await keeper.check(now=1.0) == []  # still failed, but not due yet
        assert SINK_RESTARTS.labels("keeper-warehouse-orders")._value.get() == before + 1
    finally:
        await keeper.on_shutdown()


async def test_only_the_worker_on_duty_restarts_a_failed_sink(aiohttp_server):
    """One restart per failure, not one per worker: the keeper of a worker without partition 0 stands by."""
    restarts: list[str] = []
    duty = {"on": False}
    settings = await fake_connect(aiohttp_server, {"keeper-warehouse-orders": status("RUNNING", "FAILED")}, restarts)
    keeper = SinkKeeper(settings, on_duty=lambda: duty["on"], warehouse=ANSWERS)
    await keeper.on_start()
    try:
        assert await keeper.tick(now=0.0) == []
        assert restarts == []
        duty["on"] = True  # partition 0 moved here
        assert await keeper.tick(now=1.0) == ["keeper-warehouse-orders"]
        assert restarts == ["keeper-warehouse-orders?includeTasks=true&onlyFailed=true"]
    finally:
        await keeper.on_shutdown()


async def test_status_asks_connect_once_for_every_sink_and_says_so_when_connect_answers_nonsense(aiohttp_server):
    statuses = {"keeper-warehouse-orders": status("RUNNING", "FAILED"),
                "keeper-warehouse-payments": status("RUNNING", "RUNNING")}
    settings = await fake_connect(aiohttp_server, statuses, [])
    names = [c.name for c in connectors.load(settings)]
    problem = await asyncio.to_thread(connectors.sinks_trouble, settings)
    assert problem is not None and f"keeper-warehouse-orders: task 0 FAILED ({CAUSE})" in problem
    assert "keeper-warehouse-payments" not in problem
    assert all(f"{name} not registered" in problem for name in names if name not in statuses)
    broken = await fake_connect(aiohttp_server, {}, [], listing="<html>proxy error</html>")
    with pytest.raises(connectors.ConnectError, match="proxy error"):
        await asyncio.to_thread(connectors.sinks_trouble, broken)


async def test_a_connect_that_does_not_answer_is_an_error_the_next_check_gets_past(aiohttp_server):
    restarts: list[str] = []
    keeper = SinkKeeper(await fake_connect(aiohttp_server, {}, restarts, broken=True), warehouse=ANSWERS)
    await keeper.on_start()
    try:
        with pytest.raises(SinkKeeperError, match=r"HTTP 500.*rebalancing"):
            await keeper.check(now=0.0)
        assert restarts == []
    finally:
        await keeper.on_shutdown()


async def test_an_answer_that_is_not_json_is_an_error_the_next_check_gets_past(aiohttp_server):
    keeper = SinkKeeper(await fake_connect(aiohttp_server, {}, [], listing="<html>proxy error</html>"),
                        warehouse=ANSWERS)
    await keeper.on_start()
    try:
        with pytest.raises(SinkKeeperError):
            await keeper.check(now=0.0)
    finally:
        await keeper.on_shutdown()


async def test_a_refused_restart_spares_the_other_sinks_and_is_tried_again_at_the_next_check(aiohttp_server):
    restarts: list[str] = []
    statuses = {"keeper-warehouse-orders": status("RUNNING", "FAILED"),
                "keeper-warehouse-payments": status("RUNNING", "FAILED")}
    settings = await fake_connect(aiohttp_server, statuses, restarts, refusing="keeper-warehouse-orders")
    keeper = SinkKeeper(settings, warehouse=ANSWERS)
    await keeper.on_start()
    try:
        assert await keeper.check(now=0.0) == ["keeper-warehouse-payments"]
        assert keeper.backoff.due(SinkState("keeper-warehouse-orders", True), 1.0)  # refused: not waited on
        assert not keeper.backoff.due(SinkState("keeper-warehouse-payments", True), 1.0)
    finally:
        await keeper.on_shutdown()


async def test_while_postgres_does_not_answer_failed_sinks_wait_and_are_restarted_at_once_when_it_does(
        aiohttp_server, caplog):
    """A PostgreSQL outage of minutes failed every sink; the keeper's restarts meanwhile had grown its wait to 5
    minutes, and the warehouse stayed stopped that long after PostgreSQL was back. (Here the backoff grown before
    the outage would have kept the restart after it waiting until 70 s.)"""
    restarts: list[str] = []
    settings = await fake_connect(aiohttp_server, {"keeper-warehouse-orders": status("RUNNING", "FAILED")}, restarts)
    postgres = {"answers": True}
    keeper = SinkKeeper(settings, warehouse=lambda: Probe(postgres["answers"], "connection refused"))
    await keeper.on_start()
    try:
        # Failing with PostgreSQL up: restarted at 0, 10 and 30 s, the next restart due at 70 s.
        assert [await keeper.check(now=t) for t in (0.0, 10.0, 30.0, 35.0)] == [["keeper-warehouse-orders"]] * 3 + [[]]
        postgres["answers"] = False
        assert [await keeper.check(now=t) for t in (40.0, 50.0)] == [[], []]  # on its backoff meanwhile
        assert "while PostgreSQL does not answer (connection refused)" in caplog.text
        assert len(restarts) == 3
        postgres["answers"] = True
        assert await keeper.check(now=55.0) == ["keeper-warehouse-orders"]  # at once: its backoff started over
        assert "PostgreSQL answers again" in caplog.text
        assert await keeper.check(now=60.0) == []  # then the backoff as ever
        assert await keeper.check(now=65.0) == ["keeper-warehouse-orders"]
    finally:
        await keeper.on_shutdown()


async def test_a_worker_that_cannot_reach_postgres_keeps_restarting_on_the_backoff(aiohttp_server):
    """Where a network policy keeps the workers from PostgreSQL, its probe never answers: restarts go on as ever."""
    restarts: list[str] = []
    settings = await fake_connect(aiohttp_server, {"keeper-warehouse-orders": status("RUNNING", "FAILED")}, restarts)
    keeper = SinkKeeper(settings, warehouse=lambda: Probe(False, "no route to host"))
    await keeper.on_start()
    try:
        assert [len(await keeper.check(now=t)) for t in (0.0, 5.0, 10.0, 20.0, 30.0)] == [1, 0, 1, 0, 1]
    finally:
        await keeper.on_shutdown()
