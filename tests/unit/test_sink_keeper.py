"""The warehouse sinks' keeper: which sinks count as failed, when each is restarted, and the calls it makes."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from streamcart.settings import Settings
from streamcart.sink_keeper import Backoff, SinkKeeper, SinkKeeperError, SinkState, root_cause, sink_states
from streamcart.telemetry import SINK_RESTARTS

TRACE = ("org.apache.kafka.connect.errors.ConnectException: Exiting WorkerSinkTask due to unrecoverable exception.\n"
         "\tat org.apache.kafka.connect.runtime.WorkerSinkTask.deliverMessages(WorkerSinkTask.java:658)\n"
         "Caused by: org.apache.kafka.connect.errors.ConnectException: JDBC sink connector failure\n"
         "\tat io.debezium.connector.jdbc.JdbcSinkConnectorTask.put(JdbcSinkConnectorTask.java:155)\n"
         "Caused by: org.postgresql.util.PSQLException: ERROR: permission denied for table shipments\n"
         "\t... 11 more")
CAUSE = "org.postgresql.util.PSQLException: ERROR: permission denied for table shipments"


def status(connector: str = "RUNNING", *tasks: str, trace: str = TRACE) -> dict:
    """One connector's entry in ``GET /connectors?expand=status``."""
    return {"status": {
        "connector": {"state": connector, **({"trace": trace} if connector == "FAILED" else {})},
        "tasks": [{"id": i, "state": s, **({"trace": trace} if s == "FAILED" else {})} for i, s in enumerate(tasks)],
    }}


def test_a_sink_failed_when_its_connector_or_any_task_failed_with_the_root_cause_of_the_trace():
    statuses = {
        "orders": status("RUNNING", "RUNNING"),
        "lines": status("RUNNING", "RUNNING", "FAILED"),
        "payments": status("FAILED"),
        "shipments": status("RUNNING", "UNASSIGNED"),
        "someone-elses": status("RUNNING", "FAILED"),
    }
    assert sink_states(["orders", "lines", "payments", "shipments", "missing"], statuses) == [
        SinkState("orders", False),
        SinkState("lines", True, CAUSE),
        SinkState("payments", True, CAUSE),
        SinkState("shipments", False),
    ]


def test_the_root_cause_is_the_innermost_cause_or_else_the_first_line_and_never_a_whole_page():
    assert root_cause(TRACE) == CAUSE
    assert root_cause("java.lang.IllegalStateException: stopped\n\tat x") == "java.lang.IllegalStateException: stopped"
    assert root_cause("") == ""
    long = root_cause("Caused by: " + "x" * 1000)
    assert len(long) == 300 and long.endswith("…")


def test_a_failed_sink_is_restarted_at_once_then_after_a_doubling_wait_until_it_runs_again():
    backoff = Backoff(first_s=10, max_s=35)
    failed, running = SinkState("s", True), SinkState("s", False)
    restarts = [t for t in range(0, 120) if backoff.due(failed, float(t))]
    assert restarts == [0, 10, 30, 65, 100]  # waits of 10, 20, then 35 (the cap)
    assert not backoff.due(running, 120.0)
    assert backoff.due(failed, 121.0)  # running again in between: the next failure is restarted at once
    assert not backoff.due(failed, 130.0)
    assert backoff.due(failed, 131.0)


def test_each_sink_has_its_own_backoff():
    backoff = Backoff(first_s=10)
    assert backoff.due(SinkState("a", True), 0.0)
    assert backoff.due(SinkState("b", True), 1.0)
    assert not backoff.due(SinkState("a", True), 2.0)


async def fake_connect(aiohttp_server: Any, statuses: dict, restarts: list[str], *, broken: bool = False) -> Settings:
    async def listed(request: web.Request) -> web.Response:
        assert request.query.get("expand") == "status"
        if broken:
            return web.json_response({"error_code": 500, "message": "rebalancing"}, status=500)
        return web.json_response(statuses)

    async def restart(request: web.Request) -> web.Response:
        if request.content_type != "application/json":  # as Connect answers
            return web.json_response({"error_code": 415, "message": "HTTP 415 Unsupported Media Type"}, status=415)
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
    keeper = SinkKeeper(await fake_connect(aiohttp_server, statuses, restarts))
    before = SINK_RESTARTS.labels("keeper-warehouse-orders")._value.get()
    await keeper.on_start()
    try:
        assert await keeper.check(now=0.0) == ["keeper-warehouse-orders"]
        assert restarts == ["keeper-warehouse-orders?includeTasks=true&onlyFailed=true"]
        assert await keeper.check(now=1.0) == []  # still failed, but not due yet
        assert SINK_RESTARTS.labels("keeper-warehouse-orders")._value.get() == before + 1
    finally:
        await keeper.on_stop()


async def test_a_connect_that_does_not_answer_is_an_error_the_next_check_gets_past(aiohttp_server):
    restarts: list[str] = []
    keeper = SinkKeeper(await fake_connect(aiohttp_server, {}, restarts, broken=True))
    await keeper.on_start()
    try:
        with pytest.raises(SinkKeeperError, match=r"HTTP 500.*rebalancing"):
            await keeper.check(now=0.0)
        assert restarts == []
    finally:
        await keeper.on_stop()
