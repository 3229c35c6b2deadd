"""`streamcart restart`: the named processes are stopped and started again one by one, each waited on; the others
are left alone."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from streamcart import cli
from streamcart.settings import Settings
from streamcart.stack import Stack
from tests.unit.stack.test_stack_lifecycle import free_port, web_server


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    stack = Stack(Settings(home=tmp_path / "home"),
                  specs=[web_server(name, free_port()) for name in ("gateway", "worker-0", "worker-1")])
    monkeypatch.setattr(cli, "_stack", lambda **_: stack)
    for name in stack.names:  # one by one: `up` would register the schemas (a registry) once workers start
        stack.start(name)
    yield stack
    stack.down()


def pids(stack: Stack) -> dict[str, int | None]:
    return {name: record.pid if (record := stack.record(name)) else None for name in stack.names}


def restart(*args: str) -> Result:
    return CliRunner().invoke(cli.app, ["restart", *args])


def test_each_named_process_is_started_anew_and_ready_when_the_command_returns(stack: Stack) -> None:
    before = pids(stack)
    done = restart("worker-1", "gateway")
    assert done.exit_code == 0, done.output
    after = pids(stack)
    assert after["gateway"] != before["gateway"] and after["worker-1"] != before["worker-1"]
    assert after["worker-0"] == before["worker-0"]
    assert stack.probe("gateway").ok and stack.probe("worker-1").ok
    [gateway, worker] = done.stdout.splitlines()  # in the stack's start order, one line each
    assert re.fullmatch(r"gateway: restarted \(\d+\.\d s\)", gateway)
    assert re.fullmatch(r"worker-1: restarted \(\d+\.\d s\)", worker)


def test_workers_restarts_every_worker_and_nothing_else(stack: Stack) -> None:
    before = pids(stack)
    done = restart("--workers")
    assert done.exit_code == 0, done.output
    after = pids(stack)
    assert [name for name in stack.names if after[name] != before[name]] == ["worker-0", "worker-1"]
    assert all(stack.is_running(name) for name in stack.names)


def test_a_named_process_that_was_not_running_is_started(stack: Stack) -> None:
    stack.stop("worker-0")
    done = restart("worker-0")
    assert done.exit_code == 0, done.output
    assert re.fullmatch(r"worker-0: started \(\d+\.\d s\)\n", done.stdout)
    assert stack.probe("worker-0").ok


def test_an_unknown_name_restarts_nothing_and_lists_the_names(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    before = pids(stack)
    with pytest.raises(SystemExit) as exited:
        cli.main(["restart", "gateway", "brokr"])
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        "error: unknown process brokr; choose from gateway, worker-0, worker-1 or workers\n"
    )
    assert pids(stack) == before


def test_restart_without_a_name_is_a_usage_error(stack: Stack) -> None:
    before = pids(stack)
    done = restart()
    assert done.exit_code == 2
    assert "name at least one process, or --workers" in done.output
    assert pids(stack) == before
