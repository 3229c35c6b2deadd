"""The Stack object without starting anything: selection, port clashes, status of a stack that is down."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamcart.settings import Settings
from streamcart.stack import Stack, StackError
from streamcart.stack.stack import parse_assigned


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    # Free ports: a developer's stack may well be running on the default ones.
    settings = Settings(
        home=tmp_path / "home",
        cache_dir=tmp_path / "cache",
        workers=2,
        kafka_port=free_port(),
        controller_port=free_port(),
        registry_port=free_port(),
        connect_port=free_port(),
    )
    return Stack(settings)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_processes_start_in_the_order_of_the_design(stack: Stack) -> None:
    assert stack.names == ["kafka", "postgres", "registry", "connect", "gateway", "worker-0", "worker-1"]


def test_only_the_gateway_and_the_workers_are_recorded_with_the_code_they_run(stack: Stack) -> None:
    assert [name for name in stack.names if stack.spec(name).runs_project_code] == ["gateway", "worker-0", "worker-1"]


def test_paths_are_made_absolute_so_children_agree_on_them(tmp_path: Path) -> None:
    stack = Stack(Settings(home=Path("relative-home")))
    assert stack.settings.home.is_absolute()
    assert stack.settings.to_env()["STREAMCART_HOME"] == str(stack.settings.home)


def test_an_unknown_process_is_refused_with_the_known_names(stack: Stack) -> None:
    with pytest.raises(StackError, match=r"no process named 'brokr'.*kafka"):
        stack.start("brokr")
    with pytest.raises(StackError, match="unknown process brokr"):
        stack.up(["kafka", "brokr"])


def test_a_port_held_by_another_program_names_the_variable_to_change(tmp_path: Path, taken_port: int) -> None:
    stack = Stack(Settings(home=tmp_path / "home", cache_dir=tmp_path / "cache", registry_port=taken_port))
    with pytest.raises(StackError, match=f"{taken_port} \\(registry: STREAMCART_REGISTRY_PORT\\)"):
        stack.start("registry")
    assert stack.record("registry") is None


def test_missing_java_artifacts_say_to_run_setup(stack: Stack) -> None:
    with pytest.raises(StackError, match="make setup"):
        stack.start("kafka")


def test_a_stack_that_never_ran_is_all_down(stack: Stack) -> None:
    rows = stack.status()
    assert [row.name for row in rows] == stack.names
    assert not any(row.running for row in rows)
    assert stack.down() == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([3, 1, 2], (1, 2, 3)),
        ([{"topic": "t", "partition": 4}, {"topic": "u", "partition": 4}], (4,)),
        ([["t", 0], "t:5", "garbage", None, True], (0, 5)),
        (None, ()),
    ],
)
def test_assigned_partitions_are_read_from_any_reasonable_readyz_shape(raw: object, expected: tuple[int, ...]) -> None:
    assert parse_assigned(raw) == expected
