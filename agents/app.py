"""The faust app factory: one wiring point per worker process."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

import faust

from agents import analytics, inventory, notifications, orders, payments, retention, shipping, timeouts
from agents.runtime import Runtime, Sink
from agents.transport import Event, FlowControl, InProgress, Lease, Stream, Table, TableManager, Transport
from schemas.codec import Codec
from streamcart.partitioning import CachingPartitioner
from streamcart.settings import Settings
from streamcart.topics import DEAD_LETTER_MAX_BYTES
from tables import declare_tables

FLOWS = (orders, inventory, payments, shipping, notifications, timeouts, retention, analytics)


class App(faust.App):
    """faust's app on :mod:`agents.transport` (rewinds partitions that have no committed offset yet).

    ``in_progress`` holds the messages the agent loops are handling: what a rebalance or a stop waits for.
    ``rebalance_ended`` callbacks run once a rebalance is over (faust signals its start and revocations only).
    ``fetch_min_bytes`` and ``fetch_max_wait_ms`` are the settings' (faust has no setting to carry them to aiokafka),
    and so is ``producer_idempotence``.
    """

    def __init__(self, *args: Any, fetch_min_bytes: int, fetch_max_wait_ms: int, producer_idempotence: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress = InProgress()
        #: Whether this worker is still surely a member of its group (checked before flows write).
        self.lease = Lease(self.conf.broker_session_timeout)
        #: Called when a rebalance has ended (the tables read back, the flows resumed).
        self.rebalance_ended: list[Callable[[], None]] = []
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_wait_ms = fetch_max_wait_ms
        #: Whether the Kafka producer is idempotent (agents/transport.py, ``Producer``; faust makes it so only for
        #: ``exactly_once``).
        self.producer_idempotence = producer_idempotence

    def on_rebalance_end(self) -> None:
        super().on_rebalance_end()
        for callback in self.rebalance_ended:
            callback()

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)

    @cached_property
    def flow_control(self) -> FlowControl:
        return FlowControl(loop=self.loop)


def create_faust_app(settings: Settings, *, worker_index: int = 0, store: str = "rocksdb://") -> App:
    """A faust app configured from ``settings`` for worker ``worker_index``.

    ``store`` is RocksDB in every real run (recovers from local state in well under a second); unit tests pass
    ``memory://``. The worker's stable ``consumer_group_instance_id`` (static membership) gets a restarted
    worker its partitions back in seconds instead of a session timeout (notes/faust.md).
    """
    return App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        store=store,
        datadir=str(settings.worker_data_dir(worker_index)),
        topic_partitions=settings.partitions,
        topic_allow_declare=True,
        consumer_group_instance_id=f"{settings.app_id}-worker-{worker_index}",
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        producer_linger=settings.producer_linger_ms / 1000,
        # faust's default (1,000,000 bytes) is below what the broker takes: a record of 1 MB that failed could not be
        # dead-lettered, and the worker stopped on it, and again on it after each restart (found by fuzzing).
        producer_max_request_size=DEAD_LETTER_MAX_BYTES,
        producer_partitioner=CachingPartitioner(),
        Event=Event,
        Stream=Stream,
        Table=Table,
        TableManager=TableManager,
        fetch_min_bytes=settings.consumer_fetch_min_bytes,
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        producer_idempotence=settings.producer_idempotence,
        # The API is served by our own aiohttp app (api/); the assignor still shares each worker's URL so
        # a request can be forwarded to the worker that owns its key.
        web_enabled=False,
        canonical_url=settings.worker_url(worker_index),
        web_port=settings.worker_port(worker_index),
        web_host=settings.host,
        autodiscover=False,
        # No standby copies of other workers' partitions unless asked for (STREAMCART_STANDBY_REPLICAS). faust's
        # standby reader lost the records waiting in its changelog queue when the flow resumed, and a copy promoted
        # to active then decided from older states (agents/local_state.py); the changelogs are now read again after
        # each clear (ChangelogQueue). Following every other worker's changelogs costs CPU: without copies, a
        # partition that moves is read from its changelog instead, slower to take over, never behind.
        table_standby_replicas=settings.standby_replicas,
        # What faust creates itself (its assignor's topic; a changelog `up`/`init` did not): as many replicas as the
        # topics streamcart creates, where a number is set (-1, the broker's default, is faust's 1).
        **({"topic_replication_factor": settings.topic_replication_factor}
           if settings.topic_replication_factor > 0 else {}),
    )


def build_runtime(
    settings: Settings,
    codec: Codec,
    *,
    worker_index: int = 0,
    store: str = "rocksdb://",
    sink: Sink | None = None,
) -> Runtime:
    """The app with its tables and every flow's agents declared (``sink`` replaces Kafka in component tests)."""
    app = create_faust_app(settings, worker_index=worker_index, store=store)
    tables = declare_tables(app, settings.partitions)
    runtime = Runtime(settings=settings, app=app, codec=codec, tables=tables, sink=sink)

    async def revoked(_app: Any, /, *_: Any, **__: Any) -> None:
        runtime.order_watch.rebalanced()  # a long-poll's order may be another worker's now

    app.on_partitions_revoked.connect(revoked)
    app.rebalance_ended.append(runtime.order_watch.settled)  # and then go on waiting if it stayed
    app.rebalance_ended.append(runtime.orders_handled.forget)  # the deadline timer's notes (agents/timeouts.py)
    for flow in FLOWS:
        if flow is analytics and not settings.analytics:
            continue
        if (declared := flow.register(runtime)) is not None:  # retention declares nothing when it is off
            runtime.agents[flow.__name__.rsplit(".", 1)[-1]] = declared
    return runtime


def worker_view(runtime: Runtime, index: int) -> Any:
    """The read-only view of this worker that the HTTP API needs (see :class:`agents.view.FaustWorkerView`)."""
    from agents.view import FaustWorkerView

    return FaustWorkerView(runtime, index)
