"""The local stack: start, check, stop and inspect its processes, all by recorded pid.

Used by the CLI (``streamcart up/down/status``) and by the integration tests, which run a second stack on
other ports and another home through the very same code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamcart.settings import Settings
from streamcart.stack import code, procs
from streamcart.stack.admin import Depth, consumer_lag, depths, ensure_topics, stack_topics
from streamcart.stack.errors import NotReadyError, StackError
from streamcart.stack.layout import JavaArtifacts, StackLayout
from streamcart.stack.probes import Probe
from streamcart.stack.procs import ProcessRecord
from streamcart.stack.specs import ProcessSpec, build_specs, worker_name
from streamcart.topics import Topics

STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 25
#: How long a second `up`/`down` waits for the first to finish before it gives up.
LOCK_WAIT_S = 3.0
#: A log larger than this is moved aside when its process starts; so many moved ones are kept.
LOG_ROTATE_BYTES = 50 * 1024 * 1024
LOG_GENERATIONS = 3
#: What ``status`` counts as a recent dead letter.
RECENT_S = 24 * 3600
#: The settings every worker must share with the others: a worker started with other values would not be asked for
#: its partitions by them (workers), or would read other partitions, topics or a group of its own.
SHARED_BY_WORKERS = ("workers", "partitions", "app_id", "topic_prefix")


@dataclass(frozen=True)
class ProcessStatus:
    """One row of ``streamcart status``."""

    name: str
    running: bool
    pid: int | None
    ports: tuple[int, ...]
    health: Probe | None  # None when not running
    rss_bytes: int | None
    uptime_s: float | None
    assigned: tuple[int, ...] | None = None  # workers only: partition numbers (of every co-partitioned topic)
    lag: int | None = None  # workers only: the group's lag summed over those partitions of every topic
    #: Kafka only: the records of each dead-letter topic (the flows' and the warehouse sinks'), and those of the
    #: last :data:`RECENT_S`.
    dead_letters: dict[str, Depth] | None = None
    #: Project processes only: whether it runs the checkout's code as it is now (False: the sources changed since
    #: it started; None: not running, or started by a launcher that did not record its code).
    code_current: bool | None = None


class Stack:
    """The processes of DESIGN.md §7, supervised from the files under ``settings.home``.

    ``echo`` receives one line per step (the CLI prints them; tests may log them). ``specs`` replaces the
    processes of the design with others, supervised the same way (for testing the supervision itself), and
    ``checkout`` the folder whose sources the project processes are said to run (default: this code's checkout).
    """

    def __init__(
        self,
        settings: Settings,
        echo: Callable[[str], None] | None = None,
        specs: list[ProcessSpec] | None = None,
        checkout: Path | None = None,
    ) -> None:
        # Absolute paths, so children (which get these settings as STREAMCART_* variables) and later
        # invocations from another working directory agree on where everything is.
        self.settings = settings.model_copy(
            update={"home": settings.home.resolve(), "cache_dir": settings.cache_dir.resolve()}
        )
        self.layout = StackLayout(self.settings.home)
        self.artifacts = JavaArtifacts(self.settings.cache_dir / "java")
        if specs is None:
            specs = build_specs(self.settings, self.layout, self.artifacts)
        self._specs = {spec.name: spec for spec in specs}
        self._echo = echo or (lambda _line: None)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock_fd: int | None = None  # while this object holds run/.lock
        self._checkout = checkout

    # -- single processes --------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Every process name, in start order."""
        return list(self._specs)

    def spec(self, name: str) -> ProcessSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise StackError(f"no process named {name!r}; the stack has {', '.join(self._specs)}") from None

    def record(self, name: str) -> ProcessRecord | None:
        """What was recorded when ``name`` was last started (it may have died since)."""
        return ProcessRecord.load(self.layout.record_path(name))

    def is_running(self, name: str) -> bool:
        record = self.record(name)
        return record is not None and procs.is_alive(record)

    def probe(self, name: str) -> Probe:
        """Run ``name``'s readiness check once, now."""
        return self.spec(name).probe()

    def log_path(self, name: str) -> Path:
        return self.layout.log_path(name)

    def start(self, name: str, *, wait: bool = True) -> ProcessRecord:
        """Start ``name`` detached unless it runs already; with ``wait``, return once its check passes."""
        spec = self.spec(name)
        with self._exclusive():
            self._check_unchanged([name])
            record = self.record(name)
            if record is None or not procs.is_alive(record):
                self._check_ports([spec])
                self._check_needs(spec)
                record = self._spawn(spec)
            if wait:
                self.wait_ready(name)
            return record

    def wait_ready(self, name: str, timeout_s: float | None = None) -> Probe:
        """Poll ``name``'s readiness check until it passes while the recorded process runs; fail early if it exits.

        A passing check alone is not enough: what answers on the port may be another process (one that won the
        port from ours).
        """
        spec = self.spec(name)
        limit = timeout_s if timeout_s is not None else spec.ready_timeout_s
        deadline = time.monotonic() + limit
        while True:
            probe = spec.probe()
            record = self.record(name)
            if record is None or not procs.is_alive(record):
                raise NotReadyError(f"{name} {self._how_it_ended(name)} before it was ready.{self._log_tail(name)}")
            if probe.ok:
                return probe
            if time.monotonic() >= deadline:
                raise NotReadyError(
                    f"{name} was not ready within {limit:.0f} s ({probe.detail}).{self._log_tail(name)}"
                )
            time.sleep(0.25)

    def stop(self, name: str, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop ``name`` gracefully (then forcibly after ``timeout_s``); True if it was running."""
        with self._exclusive():
            record = self.record(name)
            if record is None:
                return False
            spec = self._specs.get(name)
            stopped = procs.terminate(record, spec.stop_signal if spec else signal.SIGTERM, timeout_s)
            self._forget(record, wait_for_ports=stopped)
            return stopped

    def kill(self, name: str) -> bool:
        """SIGKILL ``name`` and its process group, as a crash would; True if it was running."""
        with self._exclusive():
            record = self.record(name)
            if record is None:
                return False
            killed = procs.send_signal(record, signal.SIGKILL, group=True)
            procs.wait_gone(record, 5.0, reap=True)
            self._forget(record, wait_for_ports=killed)
            return killed

    def restart(self, name: str, *, wait: bool = True) -> ProcessRecord:
        """Stop (if running) and start again: a project process then runs the checkout's code as it is now.

        With ``wait``, a worker's restart returns once every running worker is ready, not only this one: its
        return to the group moves partitions to it, and the others may still be reading theirs back. So a rolling
        restart (``restart --workers``) stops the next worker only when the group has settled, never while the
        only other worker is still recovering, which would leave partitions nobody serves.
        """
        with self._exclusive():
            if self._workers_selected([name]):  # refused before the stop, not after it (the worker left down)
                self._check_workers_share(excluding=name)
            self.stop(name)
            record = self.start(name, wait=wait)
            if wait and self._workers_selected([name]):
                for other in self.names:
                    if other != name and self._workers_selected([other]) and self.is_running(other):
                        self.wait_ready(other)
            return record

    # -- the whole stack ------------------------------------------------------------------------------

    def up(self, only: Collection[str] | None = None) -> dict[str, float]:
        """Start the processes (all, or ``only`` these; ``workers`` means every worker), each waited on by its
        readiness check, and return seconds per step (empty when everything was already up and healthy).

        Processes start in waves: all whose ``needs`` are ready start together (Kafka, PostgreSQL and the
        gateway; then the registry and Connect; then the workers). Topics are created as soon as Kafka
        answers, the schemas are registered before any worker starts, and the warehouse sinks are applied as
        soon as Connect is ready.
        """
        selected = self.select(only)
        with self._exclusive():
            self._check_unchanged(selected)
            if self._workers_selected(selected):
                with _on_disk("cannot prepare the stack's home", self._workers_file):
                    self._workers_file.write_text(f"{self.settings.workers}\n")
            if all(self.is_running(name) and self.probe(name).ok for name in selected):
                self._echo(f"already up: {', '.join(selected)} (nothing to do)")
                return {}
            self._check_ports([self._specs[n] for n in selected if not self.is_running(n)])
            timings: dict[str, float] = {}
            started = time.monotonic()
            # A process that is not ready (one that died on the way, or one running but hung: a gateway frozen)
            # holds back only what needs it, not every later wave: a worker killed while the gateway hangs is
            # started again, since no worker needs the gateway.
            failed: dict[str, NotReadyError] = {}
            try:
                for wave in self._waves(selected):
                    wave = [name for name in wave if not self._needs_failed(name, failed)]
                    if not wave:
                        continue
                    self._create_topics_once(timings)
                    if self._workers_selected(wave) and "schemas" not in timings:
                        # Workers (and the producers feeding them) find their schema ids in the registry.
                        self._timed(timings, "schemas", self._register_schemas)
                    failed.update(self._start_together(wave, timings))
                    if "connect" in wave and "connect" not in failed:
                        self._timed(timings, "connectors", self._apply_connectors)
                if failed:
                    raise NotReadyError("\n".join(str(exc) for exc in failed.values()))
            except StackError as exc:
                running = [name for name in self.names if self.is_running(name)]
                if not running:
                    raise
                # (Another step's failure after a process was not ready: both are said.)
                earlier = [str(e) for e in failed.values() if str(e) not in str(exc)]
                skipped = [name for name in selected if name not in failed and self._needs_failed(name, failed)]
                not_started = f"\nnot started, as what it needs is not ready: {', '.join(skipped)}" if skipped else ""
                said = "\n".join([*earlier, str(exc)])
                raise type(exc)(f"{said}{not_started}\nup did not start everything: {keeps_running(running)}") from exc
            self._create_topics_once(timings)
            if "registry" in selected and "schemas" not in timings:
                self._timed(timings, "schemas", self._register_schemas)
            timings["total"] = time.monotonic() - started
            return timings

    def down(self, purge: bool = False) -> list[str]:
        """Stop every recorded process, workers first and Kafka last; with ``purge`` delete the home folder.

        Returns the names of the processes that were running.
        """
        if not purge and not self.layout.run_dir.is_dir():
            return []  # nothing was ever started in this home (and `down` makes no folders)
        with self._exclusive():
            recorded = {path.stem for path in self.layout.run_dir.glob("*.json")}
            # Processes recorded but unknown to these settings (e.g. workers of a run with more of them) go first.
            order = sorted(recorded - set(self._specs)) + [n for n in reversed(self.names) if n in recorded]
            stopped = []
            for name in order:
                if self.stop(name):
                    stopped.append(name)
                    self._echo(f"stopped {name}")
            if purge:
                still = [name for name in order if self.is_running(name)]
                if still:
                    raise StackError(f"not purging {self.layout.home}: {', '.join(still)} still running")
                shutil.rmtree(self.layout.postgres_dir, ignore_errors=True)  # outside the home on some machines
                shutil.rmtree(self.layout.home, ignore_errors=True)
                self._echo(f"deleted {self.layout.home}")
            return stopped

    def status(self) -> list[ProcessStatus]:
        """Every process (and leftover recorded ones): pid, ports, health now, memory, uptime, lag."""
        recorded = {path.stem for path in self.layout.run_dir.glob("*.json")}
        # The workers are those the last `up` started with (STREAMCART_WORKERS then, not necessarily now): one that
        # is not running is down; one these settings name beyond them is not part of the stack.
        started = self._workers_at_up()
        beyond = {worker_name(i) for i in range(started, self.settings.workers)} if started is not None else set()
        names = [n for n in self.names if n not in beyond]
        current = code.code_version(self._checkout)
        rows = [
            self._with_sinks(self._status_of(name, current)) for name in [*names, *sorted(recorded - set(names))]
        ]
        workers = [row for row in rows if row.assigned is not None]
        kafka_ok = any(row.name == "kafka" and row.health is not None and row.health.ok for row in rows)
        if not kafka_ok:
            return rows
        rows = [self._with_dead_letters(row) if row.name == "kafka" else row for row in rows]
        if not workers:
            return rows
        lag = consumer_lag(self.settings, self.settings.app_id)
        with_lag = {
            row.name: sum(behind for (_topic, p), behind in lag.items() if p in (row.assigned or ())) for row in workers
        }
        return [replace(row, lag=with_lag[row.name]) if row.name in with_lag else row for row in rows]

    # -- internals -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold ``run/.lock`` while starting or stopping processes: two `up`s at once would race for the ports,
        and each would record only its own process. Re-entrant (``up`` starts, ``restart`` stops and starts)."""
        if self._lock_fd is not None:
            yield
            return
        with _on_disk("cannot prepare the stack's home", self.layout.lock_path):
            self.layout.run_dir.mkdir(parents=True, exist_ok=True)
            fd = procs.lock_exclusive(self.layout.lock_path, LOCK_WAIT_S)
        if fd is None:
            raise StackError(
                f"another `streamcart up/down` is running on this stack ({self.layout.home}); "
                "let it finish (or interrupt it) first"
            )
        self._lock_fd = fd
        try:
            yield
        finally:
            self._lock_fd = None
            os.close(fd)

    @property
    def _workers_file(self) -> Path:
        return self.layout.run_dir / "workers"

    @property
    def _shared_file(self) -> Path:
        return self.layout.run_dir / "workers-share"  # (not .json: run/*.json are the process records)

    def _shared_now(self) -> dict[str, object]:
        return {name: getattr(self.settings, name) for name in SHARED_BY_WORKERS}

    def _workers_at_up(self) -> int | None:
        """How many workers the last `up` that started workers was configured with (``None``: never, or unreadable)."""
        try:
            return int(self._workers_file.read_text())
        except (OSError, ValueError):
            return None

    def _with_dead_letters(self, row: ProcessStatus) -> ProcessStatus:
        topics = Topics.from_settings(self.settings)
        since_ms = int((time.time() - RECENT_S) * 1000)
        try:
            found = depths(self.settings, (topics.dlq, topics.warehouse_dlq), since_ms)
        except StackError:  # Kafka stopped answering since its probe: the row says what the probe saw
            return row
        return replace(row, dead_letters=found)

    def _with_sinks(self, row: ProcessStatus) -> ProcessStatus:
        """Connect's row is only healthy when the warehouse sinks run too: a failed task stops the warehouse while
        Connect itself answers fine (and Connect never restarts it; the workers' sink keeper does)."""
        if row.name != "connect" or row.health is None or not row.health.ok:
            return row
        from streamcart import connectors

        try:
            problem = connectors.sinks_trouble(self.settings)
        except connectors.ConnectError as exc:
            problem = f"sinks unknown: {exc}"
        if problem is None:
            return row
        return replace(row, health=Probe(False, f"{problem} (`streamcart connectors status`)"))

    def _status_of(self, name: str, current_code: str) -> ProcessStatus:
        """``name``'s row; ``current_code``: the checkout's code version now."""
        record = self.record(name)
        if record is None or not procs.is_alive(record):
            ports = tuple(port for _setting, port in self._specs[name].ports) if name in self._specs else ()
            return ProcessStatus(name, False, None, ports, None, None, None)
        health = self.probe(name) if name in self._specs else Probe(False, "not part of these settings")
        assigned = parse_assigned(health.data.get("assigned")) if name.startswith("worker-") else None
        return ProcessStatus(
            name=name,
            running=True,
            pid=record.pid,
            ports=record.ports,
            health=health,
            rss_bytes=procs.tree_rss_bytes(record.pid),
            uptime_s=time.time() - record.started_at,
            assigned=assigned,
            code_current=record.code_version == current_code if record.code_version else None,
        )

    def select(self, only: Collection[str] | None) -> list[str]:
        """The processes ``only`` names (all when empty; ``workers`` means every worker), in start order; an unknown
        name is refused with the known ones."""
        if not only:
            return self.names
        wanted = set(only)
        if "workers" in wanted:
            wanted.discard("workers")
            wanted.update(n for n in self.names if n.startswith("worker-"))
        unknown = wanted - set(self._specs)
        if unknown:
            raise StackError(
                f"unknown process {', '.join(sorted(unknown))}; choose from {', '.join(self.names)} or workers"
            )
        return [name for name in self.names if name in wanted]

    @staticmethod
    def _workers_selected(names: list[str]) -> bool:
        return any(name.startswith("worker-") for name in names)

    def _waves(self, selected: list[str]) -> list[list[str]]:
        """``selected`` grouped by depth in the ``needs`` graph, in start order."""

        def depth(name: str) -> int:
            needs = [n for n in self._specs[name].needs if n in self._specs]
            return 1 + max(map(depth, needs)) if needs else 0

        waves: dict[int, list[str]] = {}
        for name in selected:
            waves.setdefault(depth(name), []).append(name)
        return [waves[level] for level in sorted(waves)]

    def _needs_failed(self, name: str, failed: Collection[str]) -> bool:
        """Whether ``name`` needs, directly or not, a process in ``failed``."""
        needs = [n for n in self._specs[name].needs if n in self._specs]
        return any(n in failed or self._needs_failed(n, failed) for n in needs)

    def _start_together(self, names: list[str], timings: dict[str, float]) -> dict[str, NotReadyError]:
        """Spawn every process of a wave, then wait for each; a time is counted from the wave's start. Returns
        the processes that did not get ready, with why (the others of the wave are waited for all the same)."""
        began = time.monotonic()
        was_running = {name for name in names if self.is_running(name)}
        for name in names:
            self.start(name, wait=False)
        failed: dict[str, NotReadyError] = {}
        for name in names:
            try:
                self.wait_ready(name)
            except NotReadyError as exc:
                failed[name] = exc
                continue
            timings[name] = time.monotonic() - began
            note = "already running" if name in was_running else "ready"
            self._echo(f"{name}: {note} ({timings[name]:.1f} s)")
        # A worker that was ready first is rebalancing again once the next one joins its group: the wave is
        # ready only when every member is ready at the same time.
        for name in names[:-1]:
            if name not in failed:
                try:
                    self.wait_ready(name)
                except NotReadyError as exc:  # (it died since, or hangs now)
                    failed[name] = exc
        return failed

    def _timed(self, timings: dict[str, float], step: str, action: Callable[[], str]) -> None:
        began = time.monotonic()
        detail = action()
        timings[step] = time.monotonic() - began
        self._echo(f"{step}: {detail} ({timings[step]:.1f} s)")

    def _check_ports(self, specs: list[ProcessSpec]) -> None:
        """Refuse to start when a port is held by something we did not start: say which setting to change."""
        clashes = [
            f"{port} ({spec.name}: STREAMCART_{setting.upper()})"
            for spec in specs
            for setting, port in spec.ports
            if procs.port_in_use(self.settings.host, port)
        ]
        if clashes:
            raise StackError(
                f"ports already in use by other programs: {', '.join(clashes)}; "
                "stop those programs or set the named variables to free ports"
            )

    def _check_unchanged(self, names: list[str]) -> None:
        """Refuse to go on with a process that runs on other ports than the settings now name: it would be
        waited on, in vain, on the new ones. (Its command is not compared: knowing it means running ``prepare``,
        and the interpreter's path alone differs between `.venv/bin/streamcart` and `python -m`.)"""
        if self._workers_selected(names):
            self._check_workers_share()
        for name in names:
            record = self.record(name)
            wanted = tuple(port for _setting, port in self._specs[name].ports)
            if record is not None and record.ports != wanted and procs.is_alive(record):
                raise StackError(
                    f"{name} runs with {_ports(record.ports)} from an earlier `up`; "
                    f"`streamcart down` first to start it with {', '.join(map(str, wanted))}"
                )

    def _check_workers_share(self, excluding: str | None = None) -> None:
        """Refuse to start a worker with other :data:`SHARED_BY_WORKERS` than the workers running (but
        ``excluding``) started with (a third worker the two running never ask for its partitions: lists and
        analytics were 503 for good). What they started with is noted as each worker starts (:meth:`_spawn`)."""
        running = sorted(path.stem for path in self.layout.run_dir.glob("worker-*.json")
                         if path.stem != excluding and self.is_running(path.stem))
        try:
            then = json.loads(self._shared_file.read_text())
        except (OSError, ValueError):
            return  # never recorded (workers started by an older streamcart): nothing to compare with
        changed = {name: (then.get(name), value) for name, value in self._shared_now().items()
                   if then.get(name) != value}
        if running and changed:
            differences = ", ".join(f"STREAMCART_{name.upper()}={new} (they run with {old})"
                                    for name, (old, new) in changed.items())
            raise StackError(f"{', '.join(running)} run with other settings than these: {differences}; every worker "
                             "must share them. `streamcart down` first to start the stack with them")

    def _check_needs(self, spec: ProcessSpec) -> None:
        missing = [name for name in spec.needs if not (self.is_running(name) and self.probe(name).ok)]
        if missing:
            raise StackError(
                f"{spec.name} needs {', '.join(missing)} running and ready first "
                f"(streamcart up --only {','.join([*missing, spec.name])})"
            )

    def _spawn(self, spec: ProcessSpec) -> ProcessRecord:
        log_path = self.layout.log_path(spec.name)
        # Configs and data are written under the home too: a full disk shows here first.
        with _on_disk(f"cannot start {spec.name}", self.layout.home):
            command = list(spec.prepare())
            # data/<name> is also the working directory, so stray relative files land there.
            data_dir = self.layout.data_dir(spec.name)
            data_dir.mkdir(parents=True, exist_ok=True)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            procs.rotate(log_path, LOG_ROTATE_BYTES, LOG_GENERATIONS)
        if self._workers_selected([spec.name]):  # (checked against the running ones first: _check_workers_share)
            with _on_disk(f"cannot start {spec.name}", self._shared_file):
                self._shared_file.write_text(json.dumps(self._shared_now()) + "\n")
        env = {**os.environ, **self.settings.to_env(), **spec.env}
        # Hashed just before the start: the process reads the sources as they are from here on.
        version = code.code_version(self._checkout) if spec.runs_project_code else ""
        with _on_disk(f"cannot start {spec.name}", log_path), log_path.open("ab") as log:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"\n--- streamcart: starting {spec.name} at {stamp}: {' '.join(command)}\n".encode())
            log.flush()
            try:
                child = subprocess.Popen(
                    command,
                    cwd=data_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # survives the CLI; its own process group for kill()
                    user=spec.user,
                    group=spec.user,
                    extra_groups=[] if spec.user else None,
                )
            except OSError as exc:
                raise StackError(f"cannot start {spec.name} ({command[0]}): {exc}") from exc
        ticks = procs.start_ticks(child.pid)
        record = ProcessRecord(
            name=spec.name,
            pid=child.pid,
            start_ticks=ticks if ticks is not None else -1,
            started_at=time.time(),
            ports=tuple(port for _setting, port in spec.ports),
            command=tuple(command),
            code_version=version,
        )
        path = self.layout.record_path(spec.name)
        try:
            record.save(path)
        except OSError as exc:
            # Unrecorded, no `down` could find it: it goes again (group and all) before we say why.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise StackError(
                f"cannot record {spec.name} in {exc.filename or path}: {exc.strerror or exc}; "
                "it was stopped again, since no `down` could have found it"
            ) from exc
        self._children[spec.name] = child
        return record

    def _how_it_ended(self, name: str) -> str:
        """How ``name`` ended: "exited with status 3" or "was killed by SIGKILL" for a child this object started
        (collecting its exit status, so it does not stay a zombie), just "exited" for another's."""
        child = self._children.get(name)
        returncode = child.poll() if child is not None else None
        if returncode is None:
            return "exited"
        del self._children[name]
        if returncode >= 0:
            return f"exited with status {returncode}"
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"

    def _forget(self, record: ProcessRecord, wait_for_ports: bool) -> None:
        """Drop a stopped process's record, once the kernel has released its ports for the next start."""
        if wait_for_ports:
            procs.wait_ports_free(self.settings.host, record.ports, timeout_s=5.0)
        child = self._children.pop(record.name, None)
        if child is not None:
            child.poll()  # collects the exit status if nobody did
        self.layout.record_path(record.name).unlink(missing_ok=True)

    def _log_tail(self, name: str) -> str:
        lines = procs.tail(self.layout.log_path(name), LOG_TAIL_LINES)
        if not lines:
            return f" Its log ({self.layout.log_path(name)}) is empty."
        return f"\nLast lines of {self.layout.log_path(name)}:\n" + "\n".join(lines)

    def _create_topics_once(self, timings: dict[str, float]) -> None:
        """Create the topics as soon as Kafka runs (Connect and the workers need theirs before they start)."""
        if "topics" not in timings and "kafka" in self._specs and self.is_running("kafka"):
            self._timed(timings, "topics", self._create_topics)

    def _create_topics(self) -> str:
        return ensure_topics(self.settings, stack_topics(self.settings)).summary()

    def _apply_connectors(self) -> str:
        """Register the warehouse sinks with Connect (unchanged ones are left alone)."""
        from streamcart import connectors

        outcomes = connectors.apply(self.settings)
        changed = [f"{name} {outcome}" for name, outcome in outcomes.items() if outcome != "unchanged"]
        return "; ".join(changed) if changed else f"{len(outcomes)} unchanged"

    def _register_schemas(self) -> str:
        """Register every Avro schema with the registry, so producers and workers find their ids."""
        from schemas.registry import register_all  # the schemas package is not needed to supervise processes

        return f"registered {len(register_all(self.settings))} schemas"


def keeps_running(names: Collection[str] = ()) -> str:
    """What a failed or interrupted ``up`` leaves behind, in the same words for both."""
    which = f" ({', '.join(names)})" if names else ""
    return f"what had started keeps running{which}; `streamcart status` shows it, `streamcart down` stops it"


def _ports(ports: tuple[int, ...]) -> str:
    return f"port {ports[0]}" if len(ports) == 1 else f"ports {', '.join(map(str, ports))}"


@contextlib.contextmanager
def _on_disk(doing: str, where: Path) -> Iterator[None]:
    """A full disk or a read-only or unwritable home is the user's to fix: say which file and what the system
    said, not a traceback. ``where`` is named when the error does not name a file (a failed write)."""
    try:
        yield
    except OSError as exc:
        raise StackError(f"{doing}: {exc.filename or where}: {exc.strerror or exc}") from exc


def parse_assigned(raw: Any) -> tuple[int, ...]:
    """The partition numbers a worker owns, from its ``/readyz`` JSON ``assigned`` list.

    Workers report plain partition numbers: faust assigns co-partitioned topics together, so partition
    ``p`` of every saga topic goes to the same worker. ``{"topic": t, "partition": p}`` objects, ``[t, p]``
    pairs and ``"t:p"`` strings are understood too.
    """
    found: set[int] = set()
    for item in raw or []:
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            found.add(item)
        elif isinstance(item, dict) and isinstance(item.get("partition"), int):
            found.add(item["partition"])
        elif isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[1], int):
            found.add(item[1])
        elif isinstance(item, str) and item.rpartition(":")[2].isdigit():
            found.add(int(item.rpartition(":")[2]))
    return tuple(sorted(found))
