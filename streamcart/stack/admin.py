"""Kafka administration the stack does itself: create topics, describe them, measure consumer lag."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition

# confluent-kafka re-exports these without marking them public; mypy then refuses the plain import.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from streamcart.settings import Settings
from streamcart.stack import props
from streamcart.stack.errors import StackError
from streamcart.stack.probes import admin_client
from streamcart.topics import TopicSpec, topic_specs

TIMEOUT_S = 15.0
EARLIEST: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
LATEST: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]


def stack_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic ``up`` creates: the saga's (DESIGN.md §2) and Kafka Connect's internal ones.

    Connect's topics must be compacted (it stores configs, offsets and statuses as latest-per-key), which its
    own auto-creation would do too; creating them here keeps every topic's shape in one place. Apicurio
    creates its kafkasql topics itself through the admin API (auto-creation off does not stop that).
    """
    connect = [
        TopicSpec(name, props.CONNECT_TOPIC_PARTITIONS[kind], "connect", {"cleanup.policy": "compact"})
        for kind, name in props.connect_topics(settings).items()
    ]
    return [*topic_specs(settings), *connect]


@dataclass(frozen=True)
class EnsuredTopics:
    """What :func:`ensure_topics` changed: the topics it created, and those it gave settings they lacked."""

    created: list[str]
    reconfigured: list[str]

    def summary(self) -> str:
        if not self.created and not self.reconfigured:
            return "all present"
        parts = [f"created {len(self.created)} topics"] if self.created else []
        if self.reconfigured:
            parts.append(f"updated the settings of {len(self.reconfigured)}")
        return ", ".join(parts)


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec]) -> EnsuredTopics:
    """Create the missing topics, and give existing ones the settings their spec names that they do not set
    themselves (an older streamcart created them without). An existing topic with another partition count fails:
    keys would no longer land where the co-partitioned tables expect them."""
    admin = admin_client(settings)
    wanted = {spec.name: spec for spec in specs}
    try:
        existing = admin.list_topics(timeout=TIMEOUT_S).topics
    except KafkaException as exc:  # `init` before Kafka is up (a Compose or Helm one-shot job's usual first try)
        raise _unanswered(settings, exc) from exc
    wrong = [
        f"{name} has {len(existing[name].partitions)} partitions, expected {spec.partitions}"
        for name, spec in wanted.items()
        if name in existing and len(existing[name].partitions) != spec.partitions
    ]
    if wrong:
        raise StackError(
            "existing topics disagree with the settings: "
            + "; ".join(wrong)
            + " (change STREAMCART_PARTITIONS back, or `streamcart down --purge` to start afresh)"
        )
    missing = [
        NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=settings.topic_replication_factor,
                 config=dict(spec.config))
        for name, spec in wanted.items()
        if name not in existing
    ]
    for name, future in (admin.create_topics(missing, request_timeout=TIMEOUT_S) if missing else {}).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StackError(f"cannot create topic {name}: {exc.args[0].str()}") from exc
    present = [spec for name, spec in wanted.items() if name in existing and spec.config]
    reconfigured = _add_missing_settings(admin, present)
    return EnsuredTopics(created=[topic.topic for topic in missing], reconfigured=reconfigured)


def _add_missing_settings(admin: AdminClient, specs: list[TopicSpec]) -> list[str]:
    """Give each topic the settings of its spec that it does not set itself (an older streamcart created it without
    them). A setting the topic does set stays as it is, even when it differs: an operator may have changed it on
    purpose (a longer retention), and setting it back could delete what they meant to keep."""
    if not specs:
        return []
    described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, s.name) for s in specs],
                                       request_timeout=TIMEOUT_S)
    now = {resource.name: _result(future, f"cannot read the settings of topic {resource.name}")
           for resource, future in described.items()}
    changes = []
    for spec in specs:
        unset = {key: value for key, value in spec.config.items()
                 if (entry := now[spec.name].get(key)) is None
                 or (entry.source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value and entry.value != value)}
        if unset:
            changes.append(ConfigResource(ResourceType.TOPIC, spec.name, incremental_configs=[
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET) for key, value in unset.items()
            ]))
    altered = admin.incremental_alter_configs(changes, request_timeout=TIMEOUT_S) if changes else {}
    for resource, future in altered.items():
        _result(future, f"cannot set the settings of topic {resource.name}")
    return sorted(resource.name for resource in changes)


def _result(future: Any, failure: str) -> Any:
    try:
        return future.result()
    except KafkaException as exc:
        raise StackError(f"{failure}: {exc.args[0].str()}") from exc


@dataclass(frozen=True)
class TopicInfo:
    """One row of ``streamcart topics``."""

    name: str
    partitions: int
    cleanup_policy: str
    messages: int  # high minus low watermark, summed over partitions (compaction makes it an upper bound)


def describe_topics(settings: Settings, include_internal: bool = False) -> list[TopicInfo]:
    """Partitions, cleanup policy and message count of every topic on the broker."""
    admin = admin_client(settings)
    try:
        metadata = admin.list_topics(timeout=TIMEOUT_S)
    except KafkaException as exc:
        raise _unanswered(settings, exc) from exc
    names = sorted(n for n in metadata.topics if include_internal or not n.startswith("__"))
    if not names:
        return []
    policies = _cleanup_policies(admin, names)
    partitions = [TopicPartition(n, p) for n in names for p in metadata.topics[n].partitions]
    low = _offsets(admin, partitions, EARLIEST)
    high = _offsets(admin, partitions, LATEST)
    return [
        TopicInfo(
            name=name,
            partitions=len(metadata.topics[name].partitions),
            cleanup_policy=policies.get(name, "?"),
            messages=sum(high[(name, p)] - low[(name, p)] for p in metadata.topics[name].partitions),
        )
        for name in names
    ]


def _cleanup_policies(admin: AdminClient, names: list[str]) -> dict[str, str]:
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    policies = {}
    for resource, future in admin.describe_configs(resources, request_timeout=TIMEOUT_S).items():
        entry = future.result().get("cleanup.policy")
        policies[resource.name] = entry.value if entry is not None else "?"
    return policies


def _offsets(admin: AdminClient, partitions: list[TopicPartition], spec: OffsetSpec) -> dict[tuple[str, int], int]:
    futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=TIMEOUT_S)
    return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}


def consumer_lag(settings: Settings, group: str) -> dict[tuple[str, int], int]:
    """Lag per (topic, partition) of ``group``: high watermark minus committed offset.

    Partitions without a committed offset are left out (nothing consumed there yet). Empty when the group
    does not exist.
    """
    admin = admin_client(settings)
    request = [ConsumerGroupTopicPartitions(group)]
    try:
        committed = admin.list_consumer_group_offsets(request, request_timeout=TIMEOUT_S)[group].result()
    except KafkaException as exc:
        if exc.args[0].code() in (KafkaError.GROUP_ID_NOT_FOUND, KafkaError.COORDINATOR_NOT_AVAILABLE):
            return {}
        raise StackError(f"cannot read the offsets of group {group}: {exc.args[0].str()}") from exc
    positions = {(tp.topic, tp.partition): tp.offset for tp in committed.topic_partitions or [] if tp.offset >= 0}
    if not positions:
        return {}
    high = _offsets(admin, [TopicPartition(t, p) for t, p in positions], LATEST)
    return {key: max(0, high[key] - offset) for key, offset in positions.items()}


def backlogs(settings: Settings, groups: dict[str, Collection[str]]) -> dict[tuple[str, str, int], tuple[int, int]]:
    """(where the group is, high watermark) for every partition of the topics each group (name → topics) reads:
    its committed offset, or the partition's start where it has committed none (both the workers and the sinks
    start from the earliest record), so that records a group has not consumed are seen on partitions it never
    committed on too. Unlike :func:`consumer_lag`, any failure to answer raises :class:`StackError` (the
    caller cannot tell "nothing behind" from "no answer")."""
    admin = admin_client(settings)
    try:
        metadata = admin.list_topics(timeout=TIMEOUT_S)
        wanted = {t for topics in groups.values() for t in topics}
        partitions = [TopicPartition(t, p) for t in sorted(wanted) if t in metadata.topics
                      for p in metadata.topics[t].partitions]
        if not partitions:
            return {}
        low = _offsets(admin, partitions, EARLIEST)
        high = _offsets(admin, partitions, LATEST)
        out: dict[tuple[str, str, int], tuple[int, int]] = {}
        for group, topics in groups.items():
            mine = [tp for tp in partitions if tp.topic in topics]
            try:
                answer = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, mine)],
                                                           request_timeout=TIMEOUT_S)[group].result()
                committed = {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions or []
                             if tp.offset >= 0}
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
                    raise
                committed = {}
            for tp in mine:
                key = (tp.topic, tp.partition)
                out[(group, *key)] = (committed.get(key, low[key]), high[key])
        return out
    except KafkaException as exc:
        raise StackError(f"Kafka at {settings.bootstrap_servers} did not answer: {exc.args[0].str()}") from exc


@dataclass(frozen=True)
class Depth:
    """How many records a topic holds, and how many of them were written since a time (by their timestamps)."""

    records: int
    recent: int


def depths(settings: Settings, topics: Collection[str], since_ms: int) -> dict[str, Depth]:
    """Each of ``topics`` that exists: its records (high minus low watermark, summed over partitions) and those
    written at ``since_ms`` or later (from the broker's time index: no record is read)."""
    admin = admin_client(settings)
    try:
        metadata = admin.list_topics(timeout=TIMEOUT_S)
    except KafkaException as exc:
        raise _unanswered(settings, exc) from exc
    partitions = [TopicPartition(t, p) for t in topics if t in metadata.topics for p in metadata.topics[t].partitions]
    if not partitions:
        return {}
    try:
        low = _offsets(admin, partitions, EARLIEST)
        high = _offsets(admin, partitions, LATEST)
        since = _offsets(admin, partitions, OffsetSpec.for_timestamp(since_ms))
    except KafkaException as exc:
        raise StackError(f"cannot read the offsets of {', '.join(sorted(set(topics)))}: {exc.args[0]}") from exc
    found: dict[str, Depth] = {}
    for tp in partitions:
        key = (tp.topic, tp.partition)
        # -1: nothing written since. The time index is read after the end offsets: a record written in between
        # may put it past them (and Connect's dead letters keep their rows' times, which need not grow).
        first_recent = min(since[key] if since[key] >= 0 else high[key], high[key])
        depth = found.get(tp.topic, Depth(0, 0))
        found[tp.topic] = Depth(depth.records + high[key] - low[key],
                                depth.recent + high[key] - max(first_recent, low[key]))
    return found


def _unanswered(settings: Settings, exc: KafkaException) -> StackError:
    error = exc.args[0] if exc.args else exc
    reason = error.str() if hasattr(error, "str") else str(error)
    return StackError(f"Kafka at {settings.bootstrap_servers} does not answer ({reason}): is the stack up "
                      "(`streamcart status`)?")
