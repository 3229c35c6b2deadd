"""Supervision by pid: records, liveness (pid *and* start time), ports in use, log tails."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamcart.stack import procs
from streamcart.stack.procs import ProcessRecord


def record_for(pid: int, ticks: int | None = None) -> ProcessRecord:
    start = procs.start_ticks(pid) if ticks is None else ticks
    assert start is not None
    return ProcessRecord("test", pid, start, time.time(), (1234,), ("sleep", "60"))


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    yield child
    if child.poll() is None:
        child.kill()
        child.wait()


def test_a_record_survives_a_round_trip_through_its_file(tmp_path: Path) -> None:
    record = record_for(os.getpid())
    record.save(tmp_path / "run" / "test.json")
    assert ProcessRecord.load(tmp_path / "run" / "test.json") == record


def test_a_record_keeps_the_code_version_its_process_started_from(tmp_path: Path) -> None:
    record = ProcessRecord("worker-0", os.getpid(), 5, time.time(), (8080,), ("python",), code_version="0a1b2c3d4e5f")
    record.save(tmp_path / "worker-0.json")
    assert ProcessRecord.load(tmp_path / "worker-0.json") == record


def test_a_record_written_before_code_versions_were_recorded_loads_with_none(tmp_path: Path) -> None:
    (tmp_path / "worker-0.json").write_text(
        '{"name": "worker-0", "pid": 10178, "start_ticks": 92736, "started_at": 1796204869.65, "ports": [8080], '
        '"command": ["python", "-m", "streamcart.cli", "worker", "--index", "0"]}'
    )
    record = ProcessRecord.load(tmp_path / "worker-0.json")
    assert record is not None
    assert (record.pid, record.ports, record.code_version) == (10178, (8080,), "")


def test_writers_saving_one_record_at_once_all_succeed_and_leave_a_whole_one(tmp_path: Path) -> None:
    path = tmp_path / "run" / "test.json"
    records = [ProcessRecord("test", 1000 + i, 5, time.time(), (1234,), ("x",) * 50) for i in range(4)]
    failures: list[BaseException] = []

    def write(record: ProcessRecord) -> None:
        for _ in range(100):
            try:
                record.save(path)
            except OSError as exc:
                failures.append(exc)

    writers = [threading.Thread(target=write, args=(record,)) for record in records]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert failures == []
    assert ProcessRecord.load(path) in records
    assert os.listdir(path.parent) == ["test.json"]  # no scratch file left behind


def test_a_record_that_cannot_be_written_leaves_no_scratch_file(tmp_path: Path) -> None:
    (tmp_path / "test.json").mkdir()  # the rename over it fails
    with pytest.raises(IsADirectoryError):
        record_for(os.getpid()).save(tmp_path / "test.json")
    assert os.listdir(tmp_path) == ["test.json"]


def test_a_missing_or_half_written_record_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"name": "kafka", "pid"')
    assert ProcessRecord.load(tmp_path / "broken.json") is None
    assert ProcessRecord.load(tmp_path / "absent.json") is None


def test_a_running_process_with_its_recorded_start_time_is_alive(sleeper: subprocess.Popen[bytes]) -> None:
    assert procs.is_alive(record_for(sleeper.pid))


def test_a_reused_pid_with_another_start_time_is_not_ours(sleeper: subprocess.Popen[bytes]) -> None:
    ticks = procs.start_ticks(sleeper.pid)
    assert ticks is not None
    stale = record_for(sleeper.pid, ticks=ticks - 1)
    assert not procs.is_alive(stale)
    assert not procs.send_signal(stale, signal.SIGTERM)
    assert sleeper.poll() is None  # the stranger was left alone


def test_an_exited_process_is_not_alive_even_before_it_is_reaped(sleeper: subprocess.Popen[bytes]) -> None:
    record = record_for(sleeper.pid)
    os.kill(sleeper.pid, signal.SIGKILL)
    assert procs.wait_gone(record, timeout_s=5)  # a zombie counts as gone
    sleeper.wait()
    assert not procs.is_alive(record)


def test_terminate_escalates_to_sigkill_when_the_process_ignores_sigterm() -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert stubborn.stdout is not None
    assert stubborn.stdout.readline() == b"ready\n"
    record = record_for(stubborn.pid)
    started = time.monotonic()
    assert procs.terminate(record, signal.SIGTERM, timeout_s=0.5)
    # It ignores SIGTERM, so only the SIGKILL after the grace period can have ended it.
    assert not procs.is_alive(record)
    assert 0.5 <= time.monotonic() - started < 5


def test_terminating_a_process_that_is_gone_reports_it_was_not_running(
    sleeper: subprocess.Popen[bytes],
) -> None:
    record = record_for(sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    assert not procs.terminate(record, signal.SIGTERM, timeout_s=0.5)


def test_a_port_with_a_listener_is_in_use_and_free_once_it_closes() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    assert procs.port_in_use("127.0.0.1", port)
    listener.close()
    assert not procs.port_in_use("127.0.0.1", port)


def test_a_listener_on_every_interface_also_blocks_the_loopback_port() -> None:
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        assert procs.port_in_use("127.0.0.1", listener.getsockname()[1])


def test_resident_memory_is_read_from_proc() -> None:
    rss = procs.rss_bytes(os.getpid())
    assert rss is not None
    assert rss > 1_000_000
    assert (procs.tree_rss_bytes(os.getpid()) or 0) >= rss


def test_tail_returns_the_last_lines_of_a_long_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i} " + "x" * 900 + "\n" for i in range(100)))
    last = procs.tail(log, 3)
    assert [line.split()[1] for line in last] == ["97", "98", "99"]
    assert procs.tail(tmp_path / "missing.log", 3) == []


def test_a_log_over_the_limit_moves_aside_and_the_oldest_of_three_generations_goes(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    for name, text in [("web.log", "now" * 20), ("web.log.1", "one"), ("web.log.2", "two"), ("web.log.3", "three")]:
        (tmp_path / name).write_text(text)
    procs.rotate(log, max_bytes=30, generations=3)
    assert not log.exists()
    assert [(tmp_path / f"web.log.{n}").read_text() for n in (1, 2, 3)] == ["now" * 20, "one", "two"]


def test_a_log_within_the_limit_or_missing_stays_as_it_is(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    procs.rotate(log, max_bytes=30, generations=3)
    log.write_text("x" * 30)
    procs.rotate(log, max_bytes=30, generations=3)
    assert os.listdir(tmp_path) == ["web.log"]


def test_the_lock_is_refused_while_another_holds_it_and_granted_once_released(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    first = procs.lock_exclusive(path, 0.0)
    assert first is not None
    started = time.monotonic()
    assert procs.lock_exclusive(path, 0.3) is None
    assert time.monotonic() - started >= 0.3  # it waited a little before giving up
    os.close(first)
    second = procs.lock_exclusive(path, 0.0)
    assert second is not None
    os.close(second)


def test_another_process_holding_the_lock_keeps_it_from_us(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        assert procs.lock_exclusive(path, 0.1) is None
    finally:
        holder.kill()
        holder.wait()
    granted = procs.lock_exclusive(path, 1.0)
    assert granted is not None
    os.close(granted)


def test_a_lock_on_a_file_that_down_purge_deleted_is_no_lock(tmp_path):
    """A command that waited on run/.lock while `down --purge` deleted the folder would hold a lock on a file no
    one else can see: it takes the lock of the file now at the path instead."""
    from streamcart.stack.procs import _same_file, lock_exclusive

    path = tmp_path / "run" / ".lock"
    held = lock_exclusive(path, 0.1)
    assert held is not None and _same_file(held, path)
    path.unlink()  # purged
    assert not _same_file(held, path)
    again = lock_exclusive(path, 0.5)  # the old file's lock is no obstacle: a new file is locked
    assert again is not None and _same_file(again, path)
    os.close(held)
    os.close(again)
