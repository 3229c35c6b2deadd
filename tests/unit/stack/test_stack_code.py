"""Which code the project's processes run: the checkout's code version, recorded at their start and compared by
``status``."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from streamcart.settings import Settings
from streamcart.stack import Stack
from streamcart.stack.code import checkout_root, code_version
from streamcart.stack.probes import Probe
from streamcart.stack.stack import ProcessStatus
from streamcart.stack.views import older_code_line, status_json, status_table
from tests.unit.stack.test_stack_lifecycle import free_port, web_server


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A stand-in for the clone: a few sources of each package, and what is not a source beside them."""
    root = tmp_path / "checkout"
    for source, text in {
        "streamcart/__init__.py": "",
        "streamcart/stack/stack.py": "RECENT_S = 24 * 3600\n",
        "agents/worker.py": "def run(): ...\n",
        "api/app.py": "def init_app(): ...\n",
        "schemas/messages.py": "",
        "tables/__init__.py": "",
    }.items():
        (root / source).parent.mkdir(parents=True, exist_ok=True)
        (root / source).write_text(text)
    return root


def test_the_code_version_changes_with_a_sources_content_and_comes_back_with_it(checkout: Path) -> None:
    source = checkout / "streamcart/stack/stack.py"
    before = code_version(checkout)
    source.write_text("RECENT_S = 12 * 3600\n")
    edited = code_version(checkout)
    assert edited != before
    source.write_text("RECENT_S = 24 * 3600\n")
    assert code_version(checkout) == before


def test_a_source_added_removed_or_moved_changes_the_code_version(checkout: Path) -> None:
    before = code_version(checkout)
    added = checkout / "agents/shipping.py"
    added.write_text("")
    assert code_version(checkout) != before
    added.rename(checkout / "agents/shipping_moved.py")  # same (empty) content under another path
    with_moved = code_version(checkout)
    assert with_moved != before
    (checkout / "agents/shipping_moved.py").unlink()
    assert code_version(checkout) == before


def test_time_stamps_bytecode_and_files_outside_the_packages_do_not_change_the_code_version(checkout: Path) -> None:
    before = code_version(checkout)
    os.utime(checkout / "api/app.py", (0, 0))
    (checkout / "api/__pycache__").mkdir()
    (checkout / "api/__pycache__/app.cpython-311.pyc").write_bytes(b"\x00compiled")
    (checkout / "api/openapi.json").write_text("{}")
    (checkout / "tests").mkdir()
    (checkout / "tests/test_app.py").write_text("def test(): ...\n")
    (checkout / "conftest.py").write_text("")
    assert code_version(checkout) == before


def test_the_code_version_is_short_and_by_default_that_of_the_checkout_this_code_runs_from() -> None:
    assert (checkout_root() / "streamcart" / "stack" / "code.py").is_file()
    assert len(code_version()) == 12


@pytest.fixture
def stack(tmp_path: Path, checkout: Path) -> Iterator[Stack]:
    """A gateway that runs the (stand-in) checkout's code and a process that does not, as Kafka does."""
    project = replace(web_server("gateway", free_port()), runs_project_code=True)
    stack = Stack(Settings(home=tmp_path / "home"), specs=[web_server("web", free_port()), project],
                  checkout=checkout)
    yield stack
    stack.down()


def code_of(stack: Stack) -> dict[str, bool | None]:
    return {row.name: row.code_current for row in stack.status()}


def test_a_process_started_before_its_sources_changed_is_said_to_run_older_code(stack: Stack, checkout: Path) -> None:
    stack.up()
    assert code_of(stack) == {"web": None, "gateway": True}  # only the project's processes have a code version

    (checkout / "agents/worker.py").write_text("def run(): return 1\n")
    rows = stack.status()
    assert {row.name: row.code_current for row in rows} == {"web": None, "gateway": False}
    assert older_code_line(rows) == ("[yellow]gateway runs older code[/]: the sources changed since it started; "
                                     "`streamcart restart gateway` loads them")

    stack.restart("gateway")
    assert code_of(stack) == {"web": None, "gateway": True}


def test_a_process_recorded_without_a_code_version_is_not_said_to_run_older_code(
    stack: Stack, checkout: Path
) -> None:
    stack.up()
    record = stack.record("gateway")
    assert record is not None and record.code_version == code_version(checkout)
    replace(record, code_version="").save(stack.layout.record_path("gateway"))  # as an older launcher wrote it
    (checkout / "agents/worker.py").write_text("def run(): return 1\n")
    rows = stack.status()
    assert code_of(stack) == {"web": None, "gateway": None}
    assert older_code_line(rows) is None


def row(name: str, code_current: bool | None, running: bool = True) -> ProcessStatus:
    if not running:
        return ProcessStatus(name, False, None, (8080,), None, None, None, code_current=code_current)
    return ProcessStatus(name, True, 7, (8080,), Probe(True, "ready"), 1, 1.0, code_current=code_current)


def rendered_states(rows: list[ProcessStatus]) -> dict[str, str]:
    console = Console(file=io.StringIO(), width=200)
    console.print(status_table(rows))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return {r.name: next(line for line in text.splitlines() if f" {r.name} " in line) for r in rows}


def test_the_table_marks_older_code_in_the_state_column_and_the_line_names_every_such_process() -> None:
    rows = [row("kafka", None), row("gateway", False), row("worker-0", True), row("worker-1", False),
            row("worker-2", None)]
    states = rendered_states(rows)
    assert "up (older code)" in states["gateway"] and "up (older code)" in states["worker-1"]
    assert all("older code" not in states[name] for name in ("kafka", "worker-0", "worker-2"))
    assert older_code_line(rows) == ("[yellow]gateway, worker-1 run older code[/]: the sources changed since they "
                                     "started; `streamcart restart gateway worker-1` loads them")


def test_no_line_when_every_process_runs_current_or_unknown_code() -> None:
    assert older_code_line([row("gateway", True), row("worker-0", None), row("worker-1", False, running=False)]) is None


def test_the_json_says_whether_each_process_runs_the_checkouts_code() -> None:
    rows = status_json([row("kafka", None), row("gateway", False), row("worker-0", True)])
    assert [item["code_current"] for item in rows] == [None, False, True]
