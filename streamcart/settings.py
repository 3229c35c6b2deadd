"""Settings, read once per process from ``STREAMCART_*`` variables and passed down.

No module reads ``os.environ`` on its own: the wiring point of each process calls :func:`load_settings` and hands
the frozen object to whatever needs it. Child processes started by the local stack get the same settings back as
environment variables (:meth:`Settings.to_env`).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: ``json``: one object per line, for machines (the stack's processes); ``text``: for a person at a terminal.
LogFormat = Literal["json", "text"]
#: A TCP port.
Port = Annotated[int, Field(ge=1, le=65535)]
#: A log level, in any case (``INFO`` is ``info``).
_LOG_LEVEL_ALIASES = {"warn": "warning", "fatal": "critical", "notset": "debug"}  # Python logging's other names


def _log_level(value: object) -> object:
    return _LOG_LEVEL_ALIASES.get(value.lower(), value.lower()) if isinstance(value, str) else value


LogLevel = Annotated[Literal["debug", "info", "warning", "error", "critical"], BeforeValidator(_log_level)]
#: HS256 keys shorter than its 32-byte hash are weaker than the signature (and PyJWT warns on every token).
MIN_JWT_SECRET_LENGTH = 32


def _checkout() -> Path:
    """The streamcart checkout this code runs from (an editable install, as ``make setup`` makes), else the current
    folder: a command run from a subfolder of the checkout finds the stack its ``up`` started, not an empty one."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "streamcart" / "settings.py").is_file() else Path()


#: The JWT secret a local stack signs with unless ``STREAMCART_JWT_SECRET`` says otherwise: it is in this source, so
#: whoever can reach an API signed with it can mint an admin token.
DEVELOPMENT_JWT_SECRET = "streamcart-local-development-secret"


class Settings(BaseSettings):
    """Every knob of a streamcart process. Defaults run the local stack of DESIGN.md §7."""

    # No NaN or infinity for any number: a duration of nan or inf passed the bounds and crashed whatever read it.
    model_config = SettingsConfigDict(env_prefix="STREAMCART_", frozen=True, extra="ignore", allow_inf_nan=False)

    # Where the local stack keeps all its state (data, logs, pids) and where downloaded artifacts are cached: by
    # default in the checkout streamcart runs from, whatever the current folder (a relative value set here is
    # taken from the current folder).
    home: Path = Field(default_factory=lambda: _checkout() / ".streamcart")
    cache_dir: Path = Field(default_factory=lambda: _checkout() / ".cache")

    # Where this process listens; also where it finds the others unless their ``*_host`` says otherwise (the local
    # stack runs everything on one loopback address; containers and Kubernetes name each service).
    host: str = "127.0.0.1"
    kafka_host: str | None = None
    registry_host: str | None = None
    connect_host: str | None = None
    postgres_host: str | None = None
    gateway_host: str | None = None
    #: How a worker is reached by the others, ``{index}`` standing for its index where each has an address of its
    #: own (containers: ``worker-{index}``; a StatefulSet's pods: ``<sts>-{index}.<service>.<namespace>.svc``);
    #: defaults to ``host``. Every worker must be able to name every other one: lists, analytics and the live
    #: dashboard are gathered from all of them.
    advertised_host: str | None = None
    kafka_port: Port = 9092
    controller_port: Port = 9093
    registry_port: Port = 8085
    connect_port: Port = 8083
    postgres_port: Port = 5433
    gateway_port: Port = 8090
    api_port: Port = Field(8080, description="worker i serves the HTTP API on api_port + i")
    #: False where every worker has an address of its own (containers, pods): then each listens on api_port.
    api_port_per_worker: bool = True
    workers: int = Field(2, ge=1, le=16)

    topic_prefix: str = "commerce."
    #: How long a compacted topic (a table's changelog, a warehouse topic) collects writes before Kafka may compact
    #: them: what a worker rebuilding a table from its changelog reads back beyond one record per key
    #: (streamcart/topics.py).
    compacted_segment_ms: int = Field(600_000, ge=1_000)
    partitions: int = Field(8, ge=1, description="one partition count for every saga topic")
    #: Replicas of each topic streamcart creates (`up`, `init`, and the workers' own topics); -1: the broker's
    #: ``default.replication.factor`` (1 on the local stack). A cluster whose topics need ``min.insync.replicas``
    #: of 2 refuses every write to a topic of one replica.
    topic_replication_factor: int = Field(-1, ge=-1)
    app_id: str = "streamcart"

    # Latency/throughput knobs (notes/faust.md: faust's defaults are hostile to this workload).
    #: How long a record waits for others bound for the same broker before the worker sends them in one request
    #: (agents/transport.py, NodeDrainingAccumulator); under load, the one request in flight per broker batches more.
    producer_linger_ms: int = Field(5, ge=0)
    #: Whether the workers' producer is idempotent (Kafka's producer id and per-partition sequence numbers, with
    #: acks=all): a send retried after its acknowledgement was lost is written once, not twice. Without it the
    #: duplicate sits in a changelog between two of a worker's own writes, and its table store notes an older
    #: offset until the next recovery (tables/store.py). Not faust's ``exactly_once``: no transactions.
    producer_idempotence: bool = True
    commit_interval_s: float = Field(0.2, gt=0)
    #: While records flow, a worker's fetches wait for this many bytes, or this long, whichever comes first: a
    #: fetch brings a batch instead of each record costing a fetch of its own (aiokafka's defaults are 1 byte).
    #: Idle, a fetch is a long poll that returns on the first record (agents/transport.py, adapt_fetching).
    consumer_fetch_min_bytes: int = Field(65536, ge=1)
    consumer_fetch_max_wait_ms: int = Field(30, ge=0)
    #: Workers collect garbage less often than CPython's defaults (agents/worker.py, GC_THRESHOLDS).
    gc_tuning: bool = True
    broker_session_timeout_s: float = Field(10.0, gt=0)
    broker_heartbeat_interval_s: float = Field(1.0, gt=0)

    #: How often each worker checks the warehouse sinks and restarts the ones Kafka Connect reports failed
    #: (streamcart/sink_keeper.py); 0 turns the keeper off.
    sink_keeper_interval_s: float = Field(10.0, ge=0)

    # The saga.
    saga_timeout_s: float = Field(30.0, gt=0)
    timer_interval_s: float = Field(1.0, gt=0)
    #: How long the workers' tables keep an order after its last step once it is settled for good (CANCELLED or
    #: DELIVERED, nothing in flight): then the order, its payment, shipment, reservations and analytics marks are
    #: forgotten (the warehouse keeps them). 0 keeps every order for ever. At least ``idempotency_ttl_s``: a key
    #: must find its order for as long as it names it.
    order_retention_s: float = Field(7 * 24 * 3600.0, ge=0)

    # Analytics (event time): how long after a window's end its events are still counted, and how long (in event
    # time) closed windows stay queryable.
    #: At most 5 minutes: each minute of lateness keeps one more 5-minute units window open in a partition's
    #: state, one table value under Kafka's 1 MB (see streamcart.domain.analytics.MAX_SKUS_PER_WINDOW).
    analytics_lateness_s: float = Field(30.0, ge=0, le=300)
    #: At most 3 days: a partition's list of the closed windows it keeps is one table value (under Kafka's 1 MB).
    analytics_retention_s: float = Field(24 * 60 * 60, gt=0, le=3 * 24 * 60 * 60)

    # The payment gateway client: each attempt's timeout, and how many attempts before "unavailable".
    gateway_attempt_timeout_s: float = Field(2.0, gt=0)
    gateway_attempts: int = Field(4, ge=1)
    #: How long a capture, void or refund the gateway cannot do is tried before it is dead-lettered with the reason,
    #: for a person to replay: long enough to outlast a gateway outage, short enough that a call the gateway always
    #: fails (a 500 for that one authorization) does not hold its order's commands, and its partition's commits, for
    #: good. (An authorization is tried until its order's deadline.)
    gateway_settle_for_s: float = Field(15 * 60.0, gt=0)

    # Notifications: webhooks to loopback/private addresses are refused unless allowed (local testing only).
    webhook_allow_private: bool = False

    # The HTTP API: requests per second per token (and the burst above it); how long an Idempotency-Key names
    # its order; origins allowed by CORS, comma-separated (empty: CORS off).
    rate_limit_per_s: float = Field(200.0, gt=0)
    rate_limit_burst: int = Field(400, ge=1)
    idempotency_ttl_s: float = Field(24 * 3600.0, gt=0)
    cors_origins: str = ""
    #: The API refuses a new order (503 ``overloaded``, with ``Retry-After``) while records of one of the saga's flows
    #: wait longer than this before the worker taking the request handles them (each source's least wait of the last
    #: second), and paces new orders by it (api/admission.py): an order waits in such queues at every step, so one
    #: accepted then would come near its deadline (``saga_timeout_s``), and the compensations of timed-out orders
    #: slow the saga further. 0: never.
    admission_max_delay_s: float = Field(2.0, ge=0)

    # Secrets.
    jwt_secret: SecretStr = SecretStr(DEVELOPMENT_JWT_SECRET)
    postgres_user: str = "streamcart"
    postgres_password: SecretStr = SecretStr("streamcart")
    postgres_db: str = "warehouse"

    log_level: LogLevel = "info"
    log_format: LogFormat = "json"
    # OpenTelemetry: where to export spans over OTLP/HTTP (e.g. http://127.0.0.1:4318); empty: no export, and
    # nothing of OpenTelemetry is loaded (it is the optional extra ``streamcart[otel]``).
    otel_endpoint: str = ""
    # Off switches, to measure what they cost (`streamcart bench saga` with each off): trace propagation (the
    # ``traceparent`` headers and spans of every message and request), and the analytics flow.
    tracing: bool = True
    analytics: bool = True
    #: Standby copies of each table partition on workers other than its owner (faust's ``table_standby_replicas``,
    #: at most one fewer than the workers; the group leader's decides): a partition that moves to a worker holding a
    #: copy is taken over at once instead of read back from its changelog, for the CPU of following those
    #: changelogs all along. Off by default (README, "Crash safety").
    standby_replicas: int = Field(0, ge=0, le=3)

    #: The Kafka Connect sink configurations (default: the repository's ``connectors/``).
    connectors_dir: Path | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.kafka_host or self.host}:{self.kafka_port}"

    @property
    def registry_url(self) -> str:
        """The Confluent-compatible API of the schema registry (Apicurio's ccompat v7)."""
        return f"http://{self.registry_host or self.host}:{self.registry_port}/apis/ccompat/v7"

    @property
    def connect_url(self) -> str:
        return f"http://{self.connect_host or self.host}:{self.connect_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host or self.host}:{self.gateway_port}"

    @property
    def postgres_dsn(self) -> str:
        return (
            f"postgresql://{self.postgres_user}:{self.postgres_password.get_secret_value()}"
            f"@{self.postgres_host or self.host}:{self.postgres_port}/{self.postgres_db}"
        )

    @property
    def jdbc_url(self) -> str:
        """The warehouse as Kafka Connect's JDBC sinks reach it (credentials travel separately)."""
        return f"jdbc:postgresql://{self.postgres_host or self.host}:{self.postgres_port}/{self.postgres_db}"

    def worker_port(self, index: int) -> int:
        return self.api_port + index if self.api_port_per_worker else self.api_port

    @model_validator(mode="after")
    def _worker_ports_are_free(self) -> Settings:
        """On one host the workers take api_port, api_port + 1, …: none may be another process's port (with the
        defaults, a fourth worker would get 8083, Kafka Connect's, and never start)."""
        if not self.api_port_per_worker:
            return self  # every worker has an address of its own
        if (last := self.worker_port(self.workers - 1)) > 65535:
            raise ValueError(f"worker {self.workers - 1}'s API port would be {last}, beyond 65535 (STREAMCART_WORKERS="
                             f"{self.workers} workers listen on STREAMCART_API_PORT={self.api_port} and up, one each)")
        others = {"kafka_port": self.kafka_port, "controller_port": self.controller_port,
                  "registry_port": self.registry_port, "connect_port": self.connect_port,
                  "postgres_port": self.postgres_port, "gateway_port": self.gateway_port}
        for index in range(self.workers):
            for name, port in others.items():
                if self.worker_port(index) == port:
                    raise ValueError(
                        f"worker {index}'s API port would be {port}, which is {name} (STREAMCART_WORKERS="
                        f"{self.workers} workers listen on STREAMCART_API_PORT={self.api_port} and up, one each): set "
                        f"STREAMCART_API_PORT to a free range, e.g. STREAMCART_API_PORT=8180, move "
                        f"STREAMCART_{name.upper()}, or run fewer workers"
                    )
        return self

    @model_validator(mode="after")
    def _workers_reach_each_other(self) -> Settings:
        """Where each worker has an address of its own, the others must be able to name it: lists, analytics and
        the live dashboard are gathered from every worker (one name for all made each ask itself twice)."""
        if not self.api_port_per_worker and self.workers > 1 and "{index}" not in (self.advertised_host or ""):
            raise ValueError(
                "with STREAMCART_API_PORT_PER_WORKER=false every worker has an address of its own: "
                "STREAMCART_ADVERTISED_HOST must name each worker by its index, e.g. worker-{index} (containers) or "
                "STATEFULSET-{index}.SERVICE.NAMESPACE.svc (a StatefulSet's pods)"
            )
        return self

    @model_validator(mode="after")
    def _replicas(self) -> Settings:
        if self.topic_replication_factor == 0:
            raise ValueError("STREAMCART_TOPIC_REPLICATION_FACTOR=0: a topic has at least one replica (-1: the "
                             "broker's default.replication.factor)")
        return self

    @model_validator(mode="after")
    def _standby_copies_on_other_workers(self) -> Settings:
        if self.standby_replicas >= self.workers:
            raise ValueError(
                f"STREAMCART_STANDBY_REPLICAS={self.standby_replicas} with STREAMCART_WORKERS={self.workers}: each "
                "standby copy of a table partition lives on a worker other than its owner, so at most one fewer "
                "than the workers"
            )
        return self

    @model_validator(mode="after")
    def _heartbeats_within_the_session(self) -> Settings:
        if self.broker_heartbeat_interval_s * 3 > self.broker_session_timeout_s:
            raise ValueError(
                f"STREAMCART_BROKER_HEARTBEAT_INTERVAL_S={self.broker_heartbeat_interval_s:g} is more than a third of "
                f"STREAMCART_BROKER_SESSION_TIMEOUT_S={self.broker_session_timeout_s:g}: a worker writes only within "
                "70% of a session after its last heartbeat (agents/transport.py, Lease), and Kafka asks for at most a "
                "third"
            )
        return self

    @model_validator(mode="after")
    def _orders_outlive_their_keys(self) -> Settings:
        if 0 < self.order_retention_s < self.idempotency_ttl_s:
            raise ValueError(
                f"STREAMCART_ORDER_RETENTION_S={self.order_retention_s:g} is shorter than STREAMCART_IDEMPOTENCY_TTL_S="
                f"{self.idempotency_ttl_s:g}: an Idempotency-Key would outlive its order and place it again; keep "
                f"orders at least as long (or 0: for ever)"
            )
        return self

    def weak_jwt_secret(self) -> str | None:
        """Why ``jwt_secret`` may not sign tokens (``None``: it may). Asked where tokens are signed or checked (a
        worker's start, ``up``, ``token``), not of every command: ``down`` or ``status`` of a stack started with
        an older, shorter secret must still work."""
        if len(self.jwt_secret.get_secret_value().encode()) < MIN_JWT_SECRET_LENGTH:
            return (f"STREAMCART_JWT_SECRET must be at least {MIN_JWT_SECRET_LENGTH} bytes (HS256 tokens are signed "
                    "with it; an empty or short one is guessable): e.g. STREAMCART_JWT_SECRET=$(openssl rand -hex 32)")
        return None

    def exposed_with_development_secret(self) -> bool:
        """Whether this process listens beyond loopback while tokens are signed with :data:`DEVELOPMENT_JWT_SECRET`."""
        return self.jwt_secret.get_secret_value() == DEVELOPMENT_JWT_SECRET and not _loopback(self.host)

    def worker_data_dir(self, index: int) -> Path:
        """Where worker ``index`` keeps its local state: faust's RocksDB stores (``check-stores`` reads them)."""
        return Path(self.home).resolve() / "data" / f"worker-{index}"

    def worker_url(self, index: int) -> str:
        """Where worker ``index`` answers HTTP."""
        host = (self.advertised_host or self.host).replace("{index}", str(index))
        return f"http://{host}:{self.worker_port(index)}"

    def to_env(self) -> dict[str, str]:
        """These settings as ``STREAMCART_*`` variables, for a child process to read back unchanged."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:  # unset: the child falls back to the same default
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"STREAMCART_{name.upper()}"] = str(value)
        return env


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: whatever it resolves to may be reachable


#: What Kubernetes sets for a Service named ``streamcart-…`` (``STREAMCART_API_SERVICE_HOST``,
#: ``STREAMCART_API_PORT_80_TCP_ADDR``): no typo of a setting.
_SERVICE_LINK = re.compile(r"_SERVICE_(HOST|PORT)(_\w+)?$|_PORT_\d+_(TCP|UDP|SCTP)(_\w+)?$")
#: ``STREAMCART_*`` variables that name no setting but are read elsewhere (by the integration tests).
OTHER_VARIABLES = frozenset({"STREAMCART_TEST_PORT_OFFSET", "STREAMCART_KEEP_TEST_STACK"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A line for each ``STREAMCART_*`` variable in ``environ`` that names no setting, with the setting it may have
    meant: a misspelt one is otherwise ignored without a word, its default taken."""
    names = [field.upper() for field in Settings.model_fields]
    lines = []
    for variable in sorted(environ):
        name = variable.removeprefix("STREAMCART_")
        if name == variable or name in names or variable in OTHER_VARIABLES or _SERVICE_LINK.search(name):
            continue
        close = difflib.get_close_matches(name, names, n=1)
        lines.append(f"{variable} is no setting" + (f" (did you mean STREAMCART_{close[0]}?)" if close else "")
                     + "; it is ignored")
    return lines


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment (and ``overrides``): call once, at a process's wiring point."""
    return Settings(**overrides)  # type: ignore[arg-type]
