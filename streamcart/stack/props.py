"""Configuration files the Java processes read, rendered from Settings (pure functions, unit-tested)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from pathlib import Path

from streamcart.settings import Settings


def render_properties(values: Mapping[str, object]) -> str:
    """A Java ``.properties`` file, one ``key=value`` per line in the given order.

    Backslashes, and characters Java would read as separators or comments, are escaped.
    """
    lines = []
    for key, value in values.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        lines.append(f"{_escape(key, is_key=True)}={_escape(text, is_key=False)}")
    return "\n".join(lines) + "\n"


def _escape(text: str, *, is_key: bool) -> str:
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    if is_key:
        for char in (" ", "=", ":", "#", "!"):
            out = out.replace(char, "\\" + char)
    elif out.startswith(" "):
        out = "\\" + out
    return out


def new_cluster_id() -> str:
    """A KRaft cluster id: 22 characters of URL-safe base64 of a random UUID, as ``kafka-storage random-uuid``
    prints. Like Kafka's own generator it never starts with "-", which a command line would read as an option
    (one id in 64 otherwise)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


#: How long Kafka keeps a consumer group's committed offsets after the group was last active: ten years.
OFFSETS_RETENTION_MINUTES = 10 * 365 * 24 * 60


def kafka_server_properties(settings: Settings, log_dir: Path) -> dict[str, object]:
    """A single-node KRaft broker+controller on loopback (notes/kafka-stack.md)."""
    host = settings.host
    return {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.voters": f"1@{host}:{settings.controller_port}",
        "listeners": f"PLAINTEXT://{host}:{settings.kafka_port},CONTROLLER://{host}:{settings.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{settings.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": log_dir,
        # An auto-created topic gets 1 partition and silently breaks co-partitioning (DESIGN.md §2).
        "auto.create.topics.enable": False,
        "num.partitions": 1,
        "default.replication.factor": 1,
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "min.insync.replicas": 1,
        # Consumers join at once instead of waiting 3 s for more members.
        "group.initial.rebalance.delay.ms": 0,
        # A group's committed offsets outlive the records they point into (Kafka forgets them 7 days after the
        # group was last active): a stack stopped longer would otherwise read every topic again from its start,
        # and the event topics keep their records for ever.
        "offsets.retention.minutes": OFFSETS_RETENTION_MINUTES,
    }


def connect_topics(settings: Settings) -> dict[str, str]:
    """Connect's internal topics, named after the app so two stacks on one broker would not share them."""
    return {
        "config": f"{settings.app_id}.connect.configs",
        "offset": f"{settings.app_id}.connect.offsets",
        "status": f"{settings.app_id}.connect.status",
    }


CONNECT_TOPIC_PARTITIONS = {"config": 1, "offset": 5, "status": 2}


def connect_worker_properties(settings: Settings, plugin_path: Path) -> dict[str, object]:
    """A distributed Connect worker whose internal topics the stack creates (compacted) before it starts."""
    topics = connect_topics(settings)
    values: dict[str, object] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": f"{settings.app_id}.connect",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": True,
        "value.converter.schemas.enable": True,
        "plugin.path": plugin_path,
        # Scans only ServiceLoader manifests: REST answers in ~3 s instead of ~10 s.
        "plugin.discovery": "service_load",
        "listeners": f"http://{settings.host}:{settings.connect_port}",
        "rest.advertised.host.name": settings.host,
        "rest.advertised.port": settings.connect_port,
        # After a SIGKILL the restarted worker waits one session timeout for its old self (~43 s → ~9 s).
        "consumer.session.timeout.ms": 10000,
        "offset.flush.interval.ms": 1000,
        # Sink tasks fetch in batches instead of one poll per trickle of records: each batch is one statement
        # per table (the connectors' reduction buffer and UNNEST inserts), at most this long behind.
        "consumer.fetch.min.bytes": 65536,
        "consumer.fetch.max.wait.ms": 250,
        "consumer.max.poll.records": 2000,
        # Connector configs name secrets as ${env:STREAMCART_...}: resolved here, never stored in Connect's topics.
        "config.providers": "env",
        "config.providers.env.class": "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
    }
    for kind, topic in topics.items():
        values[f"{kind}.storage.topic"] = topic
        values[f"{kind}.storage.replication.factor"] = 1
        if kind != "config":
            values[f"{kind}.storage.partitions"] = CONNECT_TOPIC_PARTITIONS[kind]
    return values


def registry_topics(settings: Settings) -> dict[str, str]:
    """Apicurio's kafkasql topics, named after the app. Apicurio creates them itself (admin API)."""
    return {
        "journal": f"{settings.app_id}.registry.journal",
        "snapshots": f"{settings.app_id}.registry.snapshots",
        "events": f"{settings.app_id}.registry.events",
    }


def registry_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    """Environment of Apicurio Registry 3.x (Quarkus maps ``a.b-c`` properties to ``A_B_C`` variables)."""
    topics = registry_topics(settings)
    return {
        "QUARKUS_HTTP_HOST": settings.host,
        "QUARKUS_HTTP_PORT": str(settings.registry_port),
        "APICURIO_STORAGE_KIND": "kafkasql",
        "APICURIO_KAFKASQL_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "APICURIO_KAFKASQL_TOPIC": topics["journal"],
        "APICURIO_KAFKASQL_SNAPSHOTS_TOPIC": topics["snapshots"],
        "APICURIO_EVENTS_KAFKA_TOPIC": topics["events"],
        # At start it polls the (usually empty) snapshots topic until a poll comes back empty: at the default
        # 5 s per poll that was ~15 s of a ~29 s start. A missed snapshot only means replaying the journal.
        "APICURIO_KAFKASQL_CONSUMER_POLL_TIMEOUT": "1000",
        # Defaults are /tmp, shared by every registry on the machine.
        "APICURIO_STORAGE_SNAPSHOT_LOCATION": str(data_dir),
        "APICURIO_IMPORT_WORK_DIR": str(data_dir),
        # Quarkus' management interface (health, metrics) is built in and would listen on 0.0.0.0:9000, a
        # port no setting names: keep it on loopback and let the kernel pick a free port.
        "QUARKUS_MANAGEMENT_HOST": settings.host,
        "QUARKUS_MANAGEMENT_PORT": "0",
    }


LOG4J2_CONSOLE = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Everything to stdout: the stack sends each process's stdout to its own log file. -->
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d{ISO8601}] %-5p %m (%c{1.})%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="stdout"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <!-- One INFO line per partition per topic created or loaded: thousands at each start. -->
    <Logger name="kafka.cluster.Partition" level="WARN"/>
    <Logger name="org.apache.kafka.storage.internals.log" level="WARN"/>
    <Logger name="org.reflections" level="ERROR"/>
  </Loggers>
</Configuration>
"""
