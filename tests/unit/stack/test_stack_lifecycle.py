"""The one supervision path, driven with small Python processes instead of the Java ones."""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from streamcart.settings import Settings
from streamcart.stack import NotReadyError, Stack, StackError, procs
from streamcart.stack import stack as stack_module
from streamcart.stack.probes import Probe, http_probe
from streamcart.stack.procs import ProcessRecord
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


def test_a_workers_restart_returns_once_the_other_workers_are_ready_again(make_stack: MakeStack) -> None:
    def worker(name: str, probe: Callable[[], Probe]) -> ProcessSpec:
        return ProcessSpec(name, lambda: [sys.executable, "-c", "import time; time.sleep(600)"], probe, ())

    answers: list[bool] = []

    def rebalancing_then_ready() -> Probe:
        """worker-1 as the group's rebalance finds it: recovering for three checks, then ready."""
        answers.append(len(answers) >= 3)
        return Probe(answers[-1], "" if answers[-1] else "rebalancing")

    stack = make_stack(worker("worker-0", lambda: Probe(True)), worker("worker-1", rebalancing_then_ready))
    stack.start("worker-0")
    stack.start("worker-1", wait=False)
    stack.restart("worker-0")
    assert answers == [False, False, False, True]
    assert stack.is_running("worker-0") and stack.is_running("worker-1")


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
    with pytest.raises(NotReadyError, match=r"(?s)crasher exited with status 3 before it was ready.*boom: bad config"):
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


def exiting(name: str, code: str, probe: Callable[[], Probe] = lambda: Probe(False, "never")) -> ProcessSpec:
    """A process that runs ``code`` (which ends it) and is never ready by default."""
    return ProcessSpec(name, lambda: [sys.executable, "-c", code], probe, (), ready_timeout_s=30.0)


def test_a_process_killed_by_a_signal_names_the_signal(make_stack: MakeStack) -> None:
    stack = make_stack(exiting("victim", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    with pytest.raises(NotReadyError, match="victim was killed by SIGKILL before it was ready"):
        stack.start("victim")


def test_a_passing_check_does_not_make_a_process_that_exited_ready(make_stack: MakeStack) -> None:
    # As for the loser of a race for its port: the port answers (for the winner) while this process has exited.
    def answered_by_another() -> Probe:
        record = stack.record("loser")
        assert record is not None
        procs.wait_gone(record, 10.0)
        return Probe(True, "answered by the winner")

    stack = make_stack(exiting("loser", "import sys; sys.exit(1)", answered_by_another))
    with pytest.raises(NotReadyError, match="loser exited with status 1 before it was ready"):
        stack.start("loser")


def test_a_process_dying_during_up_says_what_keeps_running_and_how_to_stop_it(make_stack: MakeStack) -> None:
    dying = ProcessSpec(
        "gamma",
        lambda: [sys.executable, "-c", "import sys; print('boom: cannot open database'); sys.exit(3)"],
        lambda: Probe(False, "never"),
        (),
        needs=("alpha",),
    )
    stack = make_stack(web_server("alpha", free_port()), web_server("beta", free_port()), dying)
    with pytest.raises(NotReadyError) as failed:
        stack.up()
    message = str(failed.value)
    assert "gamma exited with status 3 before it was ready" in message
    assert "boom: cannot open database" in message
    assert message.endswith(
        "what had started keeps running (alpha, beta); `streamcart status` shows it, `streamcart down` stops it"
    )
    assert stack.is_running("alpha")
    assert stack.is_running("beta")


@pytest.fixture
def brief_lock_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack_module, "LOCK_WAIT_S", 0.2)


@pytest.mark.usefixtures("brief_lock_wait")
def test_while_another_up_or_down_holds_the_stack_nothing_starts_or_stops(make_stack: MakeStack, port: int) -> None:
    stack = make_stack(web_server("web", port))
    record = stack.start("web")
    other = procs.lock_exclusive(stack.layout.lock_path, 0.0)  # as a second `streamcart up` would
    assert other is not None
    try:
        busy = f"another `streamcart up/down` is running on this stack \\({stack.layout.home}\\)"
        for action in (stack.up, stack.down, lambda: stack.stop("web"), lambda: stack.restart("web")):
            started = time.monotonic()
            with pytest.raises(StackError, match=busy):
                action()
            assert time.monotonic() - started < 5
        assert stack.record("web") == record
        assert procs.is_alive(record)
    finally:
        os.close(other)
    assert stack.stop("web")


def test_the_stack_is_free_again_once_up_returns_though_its_processes_run(make_stack: MakeStack, port: int) -> None:
    stack = make_stack(web_server("web", port))
    stack.up()
    lock = procs.lock_exclusive(stack.layout.lock_path, 0.0)  # not inherited by what was started
    assert lock is not None
    os.close(lock)


def test_a_port_changed_while_the_process_runs_fails_at_once_saying_to_run_down(make_stack: MakeStack) -> None:
    old_port, new_port = free_port(), free_port()
    make_stack(web_server("alpha", old_port)).up()
    changed = make_stack(web_server("alpha", new_port))
    started = time.monotonic()
    for action in (changed.up, lambda: changed.start("alpha")):
        with pytest.raises(
            StackError,
            match=f"alpha runs with port {old_port} from an earlier `up`; `streamcart down` first to start it with "
            f"{new_port}",
        ):
            action()
    assert time.monotonic() - started < 5


def test_an_unusable_home_is_one_error_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    home = tmp_path / "file" / "home"
    stack = Stack(Settings(home=home), specs=[web_server("web", free_port())])
    with pytest.raises(StackError, match=f"cannot prepare the stack's home: {home / 'run'}: Not a directory"):
        stack.up()


def test_a_log_that_cannot_be_opened_is_one_error_and_starts_nothing(make_stack: MakeStack, port: int) -> None:
    stack = make_stack(web_server("web", port))
    stack.log_path("web").mkdir(parents=True)
    with pytest.raises(StackError, match=f"cannot start web: {stack.log_path('web')}: Is a directory"):
        stack.start("web")
    assert stack.record("web") is None
    assert not procs.port_in_use("127.0.0.1", port)


def test_a_record_that_cannot_be_saved_stops_the_process_it_was_for(
    make_stack: MakeStack, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    unsaved: list[ProcessRecord] = []

    def disk_full(record: ProcessRecord, path: Path) -> None:
        unsaved.append(record)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ProcessRecord, "save", disk_full)
    stack = make_stack(web_server("web", port))
    record_path = stack.layout.record_path("web")
    with pytest.raises(StackError, match=f"cannot record web in {record_path}: No space left on device"):
        stack.start("web")
    [record] = unsaved
    assert procs.proc_stat(record.pid) is None  # killed and reaped: nothing runs unrecorded


def test_a_big_log_is_moved_aside_when_its_process_starts(make_stack: MakeStack, port: int) -> None:
    stack = make_stack(web_server("web", port))
    log = stack.log_path("web")
    log.parent.mkdir(parents=True)
    log.write_text("an earlier run\n")
    os.truncate(log, stack_module.LOG_ROTATE_BYTES + 1)  # sparse: takes no room
    stack.start("web")
    assert log.with_name("web.log.1").read_text().startswith("an earlier run\n")
    assert log.read_text().startswith("\n--- streamcart: starting web")


def test_a_worker_is_not_started_with_other_settings_than_the_running_workers_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A third worker started by `STREAMCART_WORKERS=3 streamcart up` was never asked for its partitions by the two
    running (lists and analytics 503 for good); the run refuses it, as it refuses a changed port."""
    monkeypatch.setattr(Stack, "_create_topics_once", lambda self, timings: None)
    monkeypatch.setattr(Stack, "_register_schemas", lambda self: None)
    ports = [free_port() for _ in range(3)]
    home = tmp_path / "home"
    two = Stack(Settings(home=home, workers=2), specs=[web_server(f"worker-{i}", ports[i]) for i in range(2)])
    two.up()
    try:
        three = Stack(Settings(home=home, workers=3), specs=[web_server(f"worker-{i}", ports[i]) for i in range(3)])
        for action in (three.up, lambda: three.start("worker-2")):
            with pytest.raises(StackError, match=r"worker-0, worker-1 run with other settings than these: "
                                                 r"STREAMCART_WORKERS=3 \(they run with 2\).*`streamcart down` first"):
                action()
        assert not three.is_running("worker-2")
        repartitioned = Stack(Settings(home=home, workers=2, partitions=4),
                              specs=[web_server(f"worker-{i}", ports[i]) for i in range(2)])
        with pytest.raises(StackError, match=r"STREAMCART_PARTITIONS=4 \(they run with 8\)"):
            repartitioned.up()
        assert two.up() == {}  # the same settings: nothing to do, as ever
    finally:
        two.down()
    Stack(Settings(home=home, workers=3), specs=[web_server(f"worker-{i}", ports[i]) for i in range(3)]).up()
    Stack(Settings(home=home, workers=3), specs=[web_server(f"worker-{i}", ports[i]) for i in range(3)]).down()


def test_a_restart_with_other_shared_settings_is_refused_before_it_stops_the_worker_and_notes_what_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`STREAMCART_WORKERS=3 streamcart restart --workers` stopped worker-0, then refused to start it (left down);
    and a worker restarted alone with new settings was not noted, so the next start was refused against the old."""
    monkeypatch.setattr(Stack, "_create_topics_once", lambda self, timings: None)
    monkeypatch.setattr(Stack, "_register_schemas", lambda self: None)
    ports = [free_port() for _ in range(3)]
    home = tmp_path / "home"

    def stack(**settings: int) -> Stack:
        count = settings.get("workers", 2)
        return Stack(Settings(home=home, **settings), specs=[web_server(f"worker-{i}", ports[i]) for i in range(count)])

    two = stack(workers=2)
    two.up()
    try:
        with pytest.raises(StackError, match=r"worker-1 run with other settings .*STREAMCART_WORKERS=3"):
            stack(workers=3).restart("worker-0")
        assert two.is_running("worker-0") and two.is_running("worker-1")  # refused before anything stopped

        two.stop("worker-1")
        stack(workers=1).restart("worker-0")  # alone: nothing to share with, and what it runs with is noted
        assert stack(workers=1).up() == {}  # was refused: "worker-0 run with … WORKERS=1 (they run with 2)"
        with pytest.raises(StackError, match=r"worker-0 run with other settings .*STREAMCART_WORKERS=2 \(they run "
                                             r"with 1\)"):
            two.start("worker-1")
    finally:
        two.down()


def test_a_hung_process_holds_back_only_what_needs_it(make_stack: MakeStack, port: int) -> None:
    """A gateway frozen (running, never answering its check) must not keep `up` from starting a worker that was
    killed meanwhile: no worker needs the gateway. What needs the hung process is not started, and said so."""
    hung = ProcessSpec(
        "gateway",
        lambda: [sys.executable, "-c", "import time; time.sleep(60)"],
        lambda: Probe(False, "timed out"),
        (),
        ready_timeout_s=0.5,
    )
    stack = make_stack(
        web_server("base", free_port()), hung, web_server("worker", port, needs=("base",)),
        web_server("shop", free_port(), needs=("gateway",)),
    )
    with pytest.raises(NotReadyError) as failed:
        stack.up()
    message = str(failed.value)
    assert "gateway was not ready within 0 s (timed out)" in message
    assert "not started, as what it needs is not ready: shop" in message
    assert stack.is_running("worker")
    assert not stack.is_running("shop")


def test_a_process_ready_once_and_not_when_its_wave_is_checked_again_holds_back_what_needs_it(
    make_stack: MakeStack, port: int
) -> None:
    """A wave is ready only when every process in it is ready at once: one that was ready and then is not (it died,
    or hangs) is said like one that never was, and what needs it is not started."""
    probes = iter([True])
    flaky = ProcessSpec(
        "flaky",
        lambda: [sys.executable, "-c", "import time; time.sleep(60)"],
        lambda: Probe(next(probes, False), "stopped answering"),
        (),
        ready_timeout_s=0.5,
    )
    stack = make_stack(flaky, web_server("base", port), web_server("after", free_port(), needs=("flaky",)))
    with pytest.raises(NotReadyError) as failed:
        stack.up()
    message = str(failed.value)
    assert "flaky was not ready within 0 s (stopped answering)" in message
    assert "not started, as what it needs is not ready: after" in message
    assert "up did not start everything" in message
    assert stack.is_running("base") and not stack.is_running("after")
