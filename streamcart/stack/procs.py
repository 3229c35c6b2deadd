"""Operating-system primitives for supervising processes by pid: records, liveness, signals, memory, ports, the
stack's lock, log files.

A pid alone is not an identity: after a reboot or a long uptime the number can belong to another program.
A record therefore also keeps the process's start time in clock ticks since boot (``/proc/<pid>/stat``
field 22), and a pid counts as ours only while both match.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from streamcart.stack.errors import StackError


@dataclass(frozen=True)
class ProcessRecord:
    """What ``up`` remembers about a process it started (``run/<name>.json``)."""

    name: str
    pid: int
    start_ticks: int
    started_at: float  # wall clock, for uptime
    ports: tuple[int, ...]
    command: tuple[str, ...]
    #: The project processes' :func:`~streamcart.stack.code.code_version` at their start; "" for the others and
    #: in records of launchers that did not record it (unknown).
    code_version: str = ""

    def save(self, path: Path) -> None:
        """Write through a scratch file of this writer's own, renamed over ``path``: a reader never sees half a
        record, and two writers never write into (or rename away) the same scratch file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            with scratch.open("x") as handle:
                handle.write(json.dumps(asdict(self), indent=2))
            scratch.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                scratch.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        """The record at ``path``, or None when there is none (or it is unreadable, e.g. half-written)."""
        try:
            raw = json.loads(path.read_text())
            return cls(
                name=raw["name"],
                pid=int(raw["pid"]),
                start_ticks=int(raw["start_ticks"]),
                started_at=float(raw["started_at"]),
                ports=tuple(raw["ports"]),
                command=tuple(raw["command"]),
                code_version=str(raw.get("code_version", "")),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, start_ticks)`` of a live pid from ``/proc/<pid>/stat``, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat_fields(raw)
    return fields[0], int(fields[1]), int(fields[19])


def stat_fields(raw: str) -> list[str]:
    """The fields of a ``/proc/<pid>/stat`` line after the command name: the state (field 3) first."""
    # The command name (field 2) is in parentheses and may itself contain spaces or parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    stat = proc_stat(pid)
    return stat[2] if stat else None


def is_alive(record: ProcessRecord) -> bool:
    """True while the recorded process runs: same pid, same start time, and not a zombie."""
    stat = proc_stat(record.pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[2] == record.start_ticks


def has_exited(record: ProcessRecord) -> bool:
    """True once the recorded process has fully exited, all its threads included.

    A multi-threaded process (any JVM) shows its main thread as a zombie while the other threads are still
    exiting, and until the last one is gone its sockets stay open: a restart would find its port taken.
    """
    stat = proc_stat(record.pid)
    if stat is None or stat[2] != record.start_ticks:
        return True
    if stat[0] not in ("Z", "X"):
        return False
    try:
        return len(os.listdir(f"/proc/{record.pid}/task")) <= 1
    except FileNotFoundError:
        return True


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (e.g. PostgreSQL's backends under the postmaster)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat and stat[1] == pid:
                found.append(int(entry.name))
    return found


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (``VmRSS``), or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return 0  # a kernel thread or zombie has no VmRSS line


def tree_rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` plus its direct children (pages they share are counted in each of them)."""
    own = rss_bytes(pid)
    if own is None:
        return None
    return own + sum(rss_bytes(child) or 0 for child in children(pid))


def send_signal(record: ProcessRecord, signum: int, *, group: bool = False) -> bool:
    """Signal the recorded process (or its whole process group) if it is still the one we started."""
    if not is_alive(record):
        return False
    try:
        if group:
            os.killpg(record.pid, signum)
        else:
            os.kill(record.pid, signum)
    except ProcessLookupError:
        return False
    return True


def wait_gone(record: ProcessRecord, timeout_s: float, reap: bool = False) -> bool:
    """Wait until the recorded process has exited; True if it did within ``timeout_s``.

    ``reap`` collects the exit status when the process is our own child, so it does not linger as a zombie.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if reap:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(record.pid, os.WNOHANG)
        if has_exited(record):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def terminate(record: ProcessRecord, stop_signal: int, timeout_s: float) -> bool:
    """Stop gracefully with ``stop_signal``, then SIGKILL the whole group after ``timeout_s``.

    Returns True when the process had been running. The group is killed so nothing it forked outlives it.
    """
    if not send_signal(record, stop_signal):
        return False
    if not wait_gone(record, timeout_s, reap=True):
        send_signal(record, signal.SIGKILL, group=True)
        wait_gone(record, 5.0, reap=True)
    return True


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port`` (binding fails with EADDRINUSE).

    SO_REUSEADDR makes sockets left in TIME_WAIT by a process we just stopped not count as "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise StackError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): STREAMCART_HOST must be an "
                             "address of this machine") from exc
    return False


def wait_ports_free(host: str, ports: tuple[int, ...], timeout_s: float) -> bool:
    """Wait until nothing listens on ``ports`` any more; True if they were all free within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while any(port_in_use(host, port) for port in ports):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def lock_exclusive(path: Path, wait_s: float) -> int | None:
    """An exclusive ``flock`` on ``path`` (made if missing): the open descriptor, to close when done; None when
    another holder keeps it for ``wait_s``.

    The descriptor is not inherited (Python opens files non-inheritable), so a process started meanwhile does
    not hold the lock on after we are gone.
    """
    deadline = time.monotonic() + wait_s
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
        else:
            if _same_file(fd, path):
                return fd
            os.close(fd)  # got while `down --purge` deleted it: another may hold the file now at ``path``
            continue
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def rotate(path: Path, max_bytes: int, generations: int) -> None:
    """Move ``path`` to ``path.1`` once it is larger than ``max_bytes`` (``.1`` to ``.2`` and so on, dropping
    what was ``.<generations>``)."""
    try:
        if path.stat().st_size <= max_bytes:
            return
    except FileNotFoundError:
        return
    for generation in range(generations - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(f"{path.name}.{generation}").replace(path.with_name(f"{path.name}.{generation + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file (empty when it does not exist), read from the end."""
    if lines <= 0:
        return []
    try:
        with path.open("rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            start, data = end, b""
            # Read backwards in blocks until enough line breaks were seen (Java stack traces are long).
            while start > 0 and data.count(b"\n") <= lines:
                start = max(0, start - 64 * 1024)
                handle.seek(start)
                data = handle.read(end - start)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StackError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return data.decode("utf-8", errors="replace").splitlines()[-lines:] if lines else []
