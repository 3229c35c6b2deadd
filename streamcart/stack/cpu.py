"""CPU time spent by the local stack's processes (Linux ``/proc``): where a benchmark's work went.

A process's time includes all its threads (Kafka's JVM, librdkafka's), its live descendants (PostgreSQL's
backends, which leave their parent's process group) and what its exited children left in its ``cutime`` and
``cstime``. The machine's busy time (every process, the benchmark's own included) comes from ``/proc/stat``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from streamcart.stack.procs import stat_fields

PROC = Path("/proc")


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far, per named process (with its descendants) and by the whole machine."""

    groups: dict[str, float]
    machine_busy_s: float


@dataclass(frozen=True)
class CpuUse:
    """What one named process (or the machine, ``name="machine"``) used between two snapshots."""

    name: str
    seconds: float
    cores: float  # seconds of CPU per second of wall time


def snapshot(leaders: Mapping[str, int], proc: Path = PROC) -> CpuSnapshot:
    """The CPU seconds of each named process with its descendants (by its pid) and the machine's busy seconds, now.

    A process that is gone is left out.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    used: dict[int, int] = {}  # each live process's own ticks, and what its exited children left it
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = stat_fields((entry / "stat").read_text())
        except (OSError, ValueError):
            continue  # exited meanwhile
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)  # ppid, field 4
        used[pid] = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime: fields 14-17

    def tree_ticks(root: int) -> int:
        total, pending = 0, [root]
        while pending:
            pid = pending.pop()
            total += used[pid]
            pending.extend(children.get(pid, ()))
        return total

    groups = {name: tree_ticks(pid) / ticks for name, pid in leaders.items() if pid in used}
    return CpuSnapshot(groups=groups, machine_busy_s=_machine_busy_ticks(proc) / ticks)


def usage(before: CpuSnapshot, after: CpuSnapshot, wall_s: float) -> list[CpuUse]:
    """Each named process's use between the snapshots (busiest first), then the machine's."""
    uses = [
        CpuUse(name, after.groups[name] - spent, (after.groups[name] - spent) / wall_s if wall_s else 0.0)
        for name, spent in before.groups.items()
        if name in after.groups
    ]
    uses.sort(key=lambda use: -use.seconds)
    machine = after.machine_busy_s - before.machine_busy_s
    return [*uses, CpuUse("machine", machine, machine / wall_s if wall_s else 0.0)]


def _machine_busy_ticks(proc: Path) -> int:
    """Ticks the CPUs spent running something here: not idling, not waiting for I/O, not taken by the hypervisor
    (steal), from the first line of ``/proc/stat``."""
    first = (proc / "stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in first[1:8])
    return user + nice + system + irq + softirq
