"""The one supervision path, driven with small Python processes instead of the Java ones."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from streamcart.settings import Settings
from streamcart.stack import NotReadyError, Stack, StackError, procs
from streamcart.stack.probes import Probe, http_probe
from streamcart.stack.specs import ProcessSpec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def web_server(name: str, port: int, needs: tuple[str, ...] = ()) -> ProcessSpec:
    """A process that serves HTTP on ``port`` and is ready when it answers."""
    return ProcessSpec(
        name,
        lambda: [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        partial(http_probe, f"http://127.0.0.1:{port}/", 1.0),
        (("api_port", port),),
        ready_timeout_s=15.0,
        needs=needs,
    )


@pytest.fixture
def port() -> int:
    return free_port()


MakeStack = Callable[..., Stack]


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[MakeStack]:
    stacks: list[Stack] = []

    def build(*specs: ProcessSpec) -> Stack:
        stack = Stack(Settings(home=tmp_path / "home"), specs=list(specs))
        stacks.append(stack)
        return stack

    yield build
    for stack in stacks:
        stack.down()


def test_start_waits_until_ready_and_records_the_process(make_stack: MakeStack, port: int) -> None:
    stack = make_stack(web_server("web", port))
    record = stack.start("web")
    assert stack.is_running("web")
    assert stack.probe("web").ok
    assert record.ports == (port,)
    assert stack.record("web") == record
    assert stack.log_path("web").read_text().startswith("\n--- streamcart: starting web")


def test_a_second_start_of_a_running_process_changes_nothing(make_stack: MakeStack, port: int) -> None:
    stack = make_stack(web_server("web", port))
    first = stack.start("web")
    assert stack.start("web") == first
    assert stack.up() == {}


def test_kill_then_restart_brings_it_back_with_a_new_pid(make_stack: MakeStack, port: int) -> None:
    stack = make_stack(web_server("web", port))
    first = stack.start("web")
    assert stack.kill("web")
    assert not procs.is_alive(first)
    assert not stack.is_running("web")
    second = stack.restart("web")
    assert second.pid != first.pid
    assert stack.probe("web").ok


def test_stop_ends_the_process_and_forgets_it(make_stack: MakeStack, port: int) -> None:
    stack = make_stack(web_server("web", port))
    record = stack.start("web")
    assert stack.stop("web")
    assert not procs.is_alive(record)
    assert stack.record("web") is None
    assert not stack.stop("web")


def test_status_reports_pid_memory_and_health_of_running_processes(make_stack: MakeStack, port: int) -> None:
    stack = make_stack(web_server("web", port), web_server("idle", free_port()))
    stack.start("web")
    web, idle = stack.status()
    assert web.running
    assert web.health is not None
    assert web.health.ok
    assert web.rss_bytes is not None
    assert web.rss_bytes > 0
    assert not idle.running
    assert idle.pid is None


def test_a_process_that_exits_early_fails_at_once_with_its_log(make_stack: MakeStack) -> None:
    crashing = ProcessSpec(
        "crasher",
        lambda: [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"],
        lambda: Probe(False, "never"),
        (),
        ready_timeout_s=30.0,
    )
    stack = make_stack(crashing)
    started = time.monotonic()
    with pytest.raises(NotReadyError, match=r"(?s)crasher exited before it was ready.*boom: bad config"):
        stack.start("crasher")
    assert time.monotonic() - started < 10


def test_a_process_that_never_gets_ready_times_out_naming_the_check(make_stack: MakeStack) -> None:
    sleeper = ProcessSpec(
        "sleeper",
        lambda: [sys.executable, "-c", "import time; time.sleep(60)"],
        lambda: Probe(False, "still warming up"),
        (),
        ready_timeout_s=0.5,
    )
    stack = make_stack(sleeper)
    with pytest.raises(NotReadyError, match=r"sleeper was not ready within 0 s \(still warming up\)"):
        stack.start("sleeper")


def test_a_process_refuses_to_start_before_what_it_needs(make_stack: MakeStack, port: int) -> None:
    stack = make_stack(web_server("base", free_port()), web_server("app", port, needs=("base",)))
    with pytest.raises(StackError, match="app needs base running and ready first"):
        stack.start("app")
    stack.up()
    assert stack.is_running("app")


def test_down_stops_everything_in_reverse_order(make_stack: MakeStack, port: int) -> None:
    stack = make_stack(web_server("first", port), web_server("second", free_port()))
    timings = stack.up()
    assert set(timings) == {"first", "second", "total"}
    assert stack.down() == ["second", "first"]
    assert not any(row.running for row in stack.status())


def test_status_shows_the_workers_the_last_up_started_with(
    tmp_path: Path, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Topics and schemas are for the real stack: these workers are plain web servers.
    monkeypatch.setattr(Stack, "_create_topics_once", lambda self, timings: None)
    monkeypatch.setattr(Stack, "_register_schemas", lambda self: None)
    home = tmp_path / "home"
    specs = [web_server("kafka", port), *(web_server(f"worker-{i}", free_port()) for i in range(3))]
    with_three = Stack(Settings(home=home, workers=3), specs=specs)  # what these settings name
    try:
        assert [row.name for row in with_three.status()] == ["kafka", "worker-0", "worker-1", "worker-2"]  # all down

        # `up` with STREAMCART_WORKERS=2, then status with three: worker-2 is not part of the stack.
        Stack(Settings(home=home, workers=2), specs=specs).up(["worker-0", "worker-1"])
        assert [(row.name, row.running) for row in with_three.status()] == [
            ("kafka", False), ("worker-0", True), ("worker-1", True)
        ]

        with_three.stop("worker-1")  # stopped, or killed: still part of the stack, and down
        with_three.kill("worker-0")
        assert [(row.name, row.running) for row in with_three.status()] == [
            ("kafka", False), ("worker-0", False), ("worker-1", False)
        ]
    finally:
        with_three.down()
