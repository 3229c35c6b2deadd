"""Where a benchmark's CPU went: each stack process with its descendants, and the machine (streamcart/stack/cpu.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamcart.stack import cpu

TICKS = os.sysconf("SC_CLK_TCK")


def write_process(proc: Path, pid: int, ppid: int, ticks: tuple[int, int, int, int], comm: str = "python") -> None:
    """A ``/proc/<pid>/stat`` line with utime, stime, cutime and cstime (fields 14-17) as given."""
    utime, stime, cutime, cstime = ticks
    fields = ["S", ppid, pid, pid, 0, -1, 0, 0, 0, 0, 0, utime, stime, cutime, cstime, 20, 0, 1, 0, 12345]
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) " + " ".join(map(str, fields)) + "\n")


def write_machine(proc: Path, user: int, system: int, idle: int, iowait: int) -> None:
    steal = 77  # time the hypervisor gave another machine: not ours
    (proc / "stat").write_text(f"cpu  {user} 0 {system} {idle} {iowait} 0 0 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "self").mkdir()  # not a pid: ignored
    write_machine(proc, user=1000, system=500, idle=9000, iowait=300)
    write_process(proc, 1, 0, (5, 5, 0, 0), comm="init")
    write_process(proc, 100, 1, (40, 10, 7, 3))  # a worker, with exited children's 10 ticks
    write_process(proc, 200, 1, (100, 0, 0, 0), comm="postgres")  # the postmaster...
    write_process(proc, 201, 200, (20, 5, 0, 0), comm="postgres: walwriter")  # ...its backends...
    write_process(proc, 202, 201, (5, 0, 0, 0), comm="a (strange) name")  # ...and theirs
    write_process(proc, 300, 1, (999, 0, 0, 0), comm="unrelated")
    return proc


def test_a_process_counts_its_threads_its_descendants_and_its_exited_children(proc: Path) -> None:
    taken = cpu.snapshot({"worker-0": 100, "postgres": 200}, proc)
    assert taken.groups == {"worker-0": 60 / TICKS, "postgres": 130 / TICKS}
    assert taken.machine_busy_s == 1500 / TICKS  # user + system: not idle, waiting for I/O or stolen


def test_a_process_that_is_gone_is_left_out(proc: Path) -> None:
    assert cpu.snapshot({"worker-1": 4242}, proc).groups == {}


def test_usage_is_the_difference_busiest_first_then_the_machine(proc: Path) -> None:
    before = cpu.snapshot({"worker-0": 100, "postgres": 200}, proc)
    for pid in (100, 200, 201, 202):
        (proc / str(pid) / "stat").unlink()
        (proc / str(pid)).rmdir()
    write_process(proc, 100, 1, (40 + 3 * TICKS, 10, 7, 3))  # 3 s more
    write_process(proc, 200, 1, (100, 0, 25 + TICKS, 5))  # 201 and 202 exited: their 30 ticks, and 1 s more
    write_machine(proc, user=1000 + 4 * TICKS, system=500 + TICKS, idle=9100, iowait=300)
    after = cpu.snapshot({"worker-0": 100, "postgres": 200}, proc)

    uses = cpu.usage(before, after, wall_s=2.0)

    assert [use.name for use in uses] == ["worker-0", "postgres", "machine"]
    assert [round(use.seconds, 6) for use in uses] == [3.0, 1.0, 5.0]
    assert [round(use.cores, 6) for use in uses] == [1.5, 0.5, 2.5]
