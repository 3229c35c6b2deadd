"""What each process of the local stack is: its command, ports, environment and readiness check.

One :class:`ProcessSpec` per process and one generic supervision path in :mod:`streamcart.stack.stack`;
nothing here starts anything.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from streamcart.settings import Settings
from streamcart.stack import postgres, probes, props
from streamcart.stack.errors import SetupError, StackError
from streamcart.stack.layout import JavaArtifacts, StackLayout, java_executable
from streamcart.stack.probes import Probe

RUN_SETUP = "run `make setup` (or `streamcart setup`) first"


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised process.

    ``prepare`` writes whatever the process needs on disk (configs, a formatted log dir, an initialised
    database), checks its artifacts are installed, and returns the command line; it runs before every start
    and must be idempotent.
    """

    name: str
    prepare: Callable[[], Sequence[str]]
    probe: Callable[[], Probe]
    ports: tuple[tuple[str, int], ...]  # (setting name, port): a clash names the setting to change
    env: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None  # run as this system user (PostgreSQL refuses root)
    ready_timeout_s: float = 60.0
    stop_signal: int = signal.SIGTERM
    needs: tuple[str, ...] = ()  # processes that must answer their checks before this one can start
    #: Runs the checkout's Python code (the gateway, the workers): it is recorded with the code's version, and
    #: ``status`` says when the sources have changed since it started.
    runs_project_code: bool = False


def build_specs(settings: Settings, layout: StackLayout, artifacts: JavaArtifacts) -> list[ProcessSpec]:
    """Every process of the stack, in start order (``down`` stops them in reverse)."""
    python_env = {"PYTHONUNBUFFERED": "1"}
    specs = [
        ProcessSpec(
            "kafka",
            partial(_prepare_kafka, settings, layout, artifacts),
            partial(probes.kafka_probe, settings),
            (("kafka_port", settings.kafka_port), ("controller_port", settings.controller_port)),
            ready_timeout_s=90.0,
        ),
        ProcessSpec(
            "postgres",
            partial(_prepare_postgres, settings, layout),
            partial(probes.postgres_probe, settings),
            (("postgres_port", settings.postgres_port),),
            user=postgres.PG_USER,
            ready_timeout_s=60.0,
            # SIGTERM is PostgreSQL's "smart" shutdown (waits for every client to leave); SIGINT is "fast".
            stop_signal=signal.SIGINT,
        ),
        ProcessSpec(
            "registry",
            partial(_prepare_registry, artifacts),
            partial(probes.registry_probe, settings),
            (("registry_port", settings.registry_port),),
            env=props.registry_env(settings, layout.data_dir("registry")),
            ready_timeout_s=180.0,
            needs=("kafka",),
        ),
        ProcessSpec(
            "connect",
            partial(_prepare_connect, settings, layout, artifacts),
            partial(probes.connect_probe, settings),
            (("connect_port", settings.connect_port),),
            ready_timeout_s=180.0,
            needs=("kafka", "postgres"),  # its sinks write there
        ),
        ProcessSpec(
            "gateway",
            lambda: _python_command("gateway"),
            partial(probes.gateway_probe, settings),
            (("gateway_port", settings.gateway_port),),
            env=python_env,
            ready_timeout_s=60.0,
            runs_project_code=True,
        ),
    ]
    for index in range(settings.workers):
        specs.append(
            ProcessSpec(
                worker_name(index),
                partial(_python_command, "worker", "--index", str(index)),
                partial(probes.worker_probe, settings, index),
                (("api_port", settings.worker_port(index)),),
                env=python_env,
                ready_timeout_s=180.0,
                needs=("kafka", "registry"),
                runs_project_code=True,
            )
        )
    return specs


def worker_name(index: int) -> str:
    return f"worker-{index}"


def _python_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamcart.cli", *args]


def _java(heap: Sequence[str], *args: str) -> list[str]:
    return [str(java_executable()), *heap, "-XX:+UseG1GC", "-Djava.awt.headless=true", *args]


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir() or not any(path.iterdir()):
        raise SetupError(f"{what} is missing ({path}): {RUN_SETUP}")


def _write_log4j(layout: StackLayout) -> Path:
    path = layout.conf_dir / "log4j2.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(props.LOG4J2_CONSOLE)
    return path


def _prepare_kafka(settings: Settings, layout: StackLayout, artifacts: JavaArtifacts) -> list[str]:
    _require_dir(artifacts.kafka_libs, "Apache Kafka")
    data = layout.data_dir("kafka")
    log_dir = data / "logs"
    config = layout.conf_dir / "kafka.properties"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(props.render_properties(props.kafka_server_properties(settings, log_dir)))
    log4j = _write_log4j(layout)
    classpath = ["-cp", f"{artifacts.kafka_libs}/*", f"-Dlog4j2.configurationFile={log4j}"]
    if not (log_dir / "meta.properties").is_file():
        _format_kafka_storage(data, config, classpath)
    return _java(["-Xms256m", "-Xmx1g"], *classpath, "kafka.Kafka", str(config))


def _format_kafka_storage(data: Path, config: Path, classpath: list[str]) -> None:
    """KRaft needs its log dir formatted once with a cluster id; the id is kept so a re-format matches."""
    data.mkdir(parents=True, exist_ok=True)
    id_file = data / "cluster-id"
    if not id_file.is_file():
        id_file.write_text(props.new_cluster_id())
    command = _java(
        ["-Xmx256m"], *classpath, "kafka.tools.StorageTool",
        "format", "--ignore-formatted", f"--cluster-id={id_file.read_text().strip()}", "--config", str(config),
    )  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise StackError(f"formatting Kafka's storage failed (exit {done.returncode}):\n{tail}")


def _prepare_postgres(settings: Settings, layout: StackLayout) -> list[str]:
    bindir = postgres.find_bindir()
    if bindir is None:
        raise SetupError(f"PostgreSQL's server (initdb, postgres) is not installed: {RUN_SETUP}")
    if not postgres.postgres_user_exists():
        raise SetupError(f"the system user 'postgres' does not exist: {RUN_SETUP}")
    data = layout.postgres_dir
    postgres.initialize(bindir, data, settings)
    return postgres.server_command(bindir, data, settings)


def _prepare_registry(artifacts: JavaArtifacts) -> list[str]:
    jar = artifacts.apicurio_jar()
    if jar is None:
        raise SetupError(f"Apicurio Registry is missing ({artifacts.apicurio_dir}): {RUN_SETUP}")
    return _java(["-Xmx384m"], "-jar", str(jar))


def _prepare_connect(settings: Settings, layout: StackLayout, artifacts: JavaArtifacts) -> list[str]:
    _require_dir(artifacts.kafka_libs, "Apache Kafka")
    _require_dir(artifacts.connect_plugins, "the Debezium JDBC sink")
    config = layout.conf_dir / "connect.properties"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(props.render_properties(props.connect_worker_properties(settings, artifacts.connect_plugins)))
    log4j = _write_log4j(layout)
    return _java(
        ["-Xms128m", "-Xmx512m"],
        "-cp", f"{artifacts.kafka_libs}/*", f"-Dlog4j2.configurationFile={log4j}",
        "org.apache.kafka.connect.cli.ConnectDistributed", str(config),
    )  # fmt: skip
