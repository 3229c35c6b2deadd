"""Topic names, keys, partition counts and cleanup policies (DESIGN.md §2).

The stack creates exactly these topics before any worker starts; the broker never auto-creates one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamcart.domain.warehouse import TABLES as WAREHOUSE_TABLES
from streamcart.settings import Settings

DAY_MS = 24 * 60 * 60 * 1000

#: The largest record the dead-letter topics take (their ``max.message.bytes``), and so the largest a worker sends:
#: four times the broker's default limit for a record, so that any record it took elsewhere fits with the headers
#: naming its failure. A larger one is cut to fit (agents/runtime.py, ``Runtime.dead_letter``).
DEAD_LETTER_MAX_BYTES = 4 * 1024 * 1024
#: How long a compacted topic keeps a deletion's tombstone: a worker's local store older than that may have missed one.
TOMBSTONE_RETENTION_MS = 7 * DAY_MS

#: Where a compacted topic's segment closes at the latest (see ``topic_specs``).
COMPACTED_SEGMENT_BYTES = 64 * 2**20

#: Every table a worker declares (tables/declarations.py); each has a compacted changelog topic.
TABLE_NAMES = (
    "orders", "deadlines", "retention", "customer_orders", "catalog", "stock", "payments", "shipments", "analytics",
    "notified",
)


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog topic faust uses for ``table`` of app ``app_id``."""
    return f"{app_id}-{table}-changelog"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic as the stack creates it."""

    name: str
    partitions: int
    key: str
    config: dict[str, str] = field(default_factory=dict)


class Topics:
    """The names of every topic, all under one configurable prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.order_commands = f"{prefix}commands.orders"
        self.catalog_commands = f"{prefix}commands.catalog"
        self.inventory_commands = f"{prefix}commands.inventory"
        self.payment_commands = f"{prefix}commands.payments"
        self.shipping_commands = f"{prefix}commands.shipping"
        self.order_events = f"{prefix}events.orders"
        self.inventory_events = f"{prefix}events.inventory"
        self.payment_events = f"{prefix}events.payments"
        self.shipping_events = f"{prefix}events.shipping"
        self.notification_events = f"{prefix}events.notifications"
        self.analytics_revenue = f"{prefix}analytics.revenue"
        self.analytics_sku_units = f"{prefix}analytics.sku-units"
        self.analytics_outcomes = f"{prefix}analytics.outcomes"
        self.dlq = f"{prefix}dlq"
        #: Which dead letters `streamcart dlq replay` sent back, and when (keyed by their ``PARTITION:OFFSET``).
        self.dlq_replays = f"{prefix}dlq.replays"
        #: The warehouse sink topics (JSON with embedded schemas for Kafka Connect), by table name.
        self.warehouse = {table.name: f"{prefix}warehouse.{table.name}" for table in WAREHOUSE_TABLES}
        #: Where the warehouse sinks put records they cannot write (with Connect's error context headers).
        self.warehouse_dlq = f"{prefix}warehouse.dlq"

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        return cls(settings.topic_prefix)

    def worker_inputs(self) -> tuple[str, ...]:
        """Every topic the workers' flows consume (agents/*.py, ``runtime.source``)."""
        return (self.order_commands, self.catalog_commands, self.inventory_commands, self.payment_commands,
                self.shipping_commands, self.order_events, self.inventory_events, self.payment_events,
                self.shipping_events)


def keyed_by_order(topic: str) -> bool:
    """Whether ``topic`` (under any prefix) keys its records by the order id (:func:`topic_specs`)."""
    bare = Topics("")
    return topic.endswith((bare.order_commands, bare.payment_commands, bare.shipping_commands, bare.order_events,
                           bare.inventory_events, bare.payment_events, bare.shipping_events))


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the system needs, with its partition count and cleanup policy."""
    t = Topics.from_settings(settings)
    n = settings.partitions
    # Commands are inputs: kept a week. Events are the system of record: kept forever.
    commands = {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}
    events = {"cleanup.policy": "delete", "retention.ms": "-1"}
    # A window result is replaced by a later emission for the same window: keep the latest. Kafka compacts only
    # closed segments, and a segment closes at 1 GiB or after 7 days by default: a changelog (an order is written
    # some 8 times) would be read whole, every write of a week, by the recovery of a worker that did not stop
    # cleanly. Closing them every few minutes (or 64 MiB) lets the cleaner keep about one record per key. A record
    # stays at least as long again before it may be compacted away (a standby, a sink or a reader a little behind
    # still sees every version), and a deletion's tombstone a week (a worker stopped cleanly for less than that
    # still learns of every key deleted meanwhile when it resumes from its own store).
    latest = {
        "cleanup.policy": "compact",
        "segment.ms": str(settings.compacted_segment_ms),
        "segment.bytes": str(COMPACTED_SEGMENT_BYTES),
        "min.compaction.lag.ms": str(settings.compacted_segment_ms),
        "delete.retention.ms": str(TOMBSTONE_RETENTION_MS),
    }
    # A dead letter is the record that failed, headers added: one as large as a record the broker took elsewhere
    # (its message.max.bytes, 1 MiB by default) must fit, or the worker could not dead-letter it and would stop.
    dead_letters = {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS),
                    "max.message.bytes": str(DEAD_LETTER_MAX_BYTES)}
    return [
        TopicSpec(t.order_commands, n, "order_id", commands),
        TopicSpec(t.catalog_commands, n, "sku", commands),
        TopicSpec(t.inventory_commands, n, "sku", commands),
        TopicSpec(t.payment_commands, n, "order_id", commands),
        TopicSpec(t.shipping_commands, n, "order_id", commands),
        TopicSpec(t.order_events, n, "order_id", events),
        TopicSpec(t.inventory_events, n, "order_id", events),
        TopicSpec(t.payment_events, n, "order_id", events),
        TopicSpec(t.shipping_events, n, "order_id", events),
        TopicSpec(t.notification_events, n, "customer_id", events),
        TopicSpec(t.analytics_revenue, n, "window", latest),
        TopicSpec(t.analytics_sku_units, n, "window", latest),
        TopicSpec(t.analytics_outcomes, n, "window", latest),
        TopicSpec(t.dlq, n, "original key", dead_letters),
        # A mark per replayed letter, kept as long as any letter could be (an operator may keep the DLQ longer).
        TopicSpec(t.dlq_replays, 1, "dead letter's partition:offset", latest),
        # A warehouse record is rewritten by a later one with the same key (an order's newer state, a fact sent
        # again): compaction keeps what a sink replaying from the start needs.
        *(TopicSpec(topic, n, "primary key", latest) for topic in t.warehouse.values()),
        TopicSpec(t.warehouse_dlq, 1, "original key", dead_letters),
        # Created here rather than by faust on first start: a changelog that appears while the workers start is
        # missing from their consumers' metadata ("0 partitions"), and every write to its table then fails.
        *(TopicSpec(changelog_topic(settings.app_id, name), n, "table key", latest) for name in TABLE_NAMES),
    ]
