"""`streamcart bench saga`: place a burst (or a paced stream) of orders and measure them end to end.

Latency is from producing PlaceOrder to seeing the order's outcome (OrderConfirmed or OrderCancelled) on
``events.orders``, both read on this machine's clock. Throughput is outcomes per second over the whole run.
With ``warehouse=True`` it also watches PostgreSQL (a query every 20 ms) and reports the delay from each
OrderConfirmed record (its Kafka timestamp, set by the worker that wrote it) to that order's confirmed row being
visible in the warehouse, both on this machine's wall clock.

When the local stack runs on this machine, it also reports the CPU each of its processes used from the first order
produced until the last outcome was seen (and the machine's total, this benchmark included): what limits the
figures.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from schemas.codec import Codec
from schemas.messages import AdjustStock, OrderCancelled, OrderConfirmed, OrderLine, PlaceOrder, UpsertProduct
from streamcart.commands import CommandSender, envelope
from streamcart.ids import new_id
from streamcart.settings import Settings
from streamcart.stack import cpu
from streamcart.topics import Topics

#: What the benchmarks' products are named by (`streamcart traffic` leaves them alone).
BENCH_SKU_PREFIX = "BENCH-"


@dataclass
class BenchResult:
    orders: int
    lines: int
    skus: int
    offered_rate: float | None
    produced_s: float
    elapsed_s: float
    confirmed: int
    cancelled: int
    missing: int
    latencies_ms: list[float] = field(default_factory=list)
    warehouse_delays_ms: list[float] | None = None  # confirmation on Kafka -> confirmed row in PostgreSQL
    cpu: list[cpu.CpuUse] = field(default_factory=list)  # per stack process, then the machine ("machine")

    @property
    def throughput(self) -> float:
        return (self.confirmed + self.cancelled) / self.elapsed_s if self.elapsed_s else 0.0

    def percentile(self, p: float, values: list[float] | None = None) -> float:
        values = self.latencies_ms if values is None else values
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> dict[str, float | int | None]:
        return {
            "orders": self.orders,
            "lines per order": self.lines,
            "SKUs": self.skus,
            "offered rate (orders/s)": self.offered_rate,
            "produce time (s)": round(self.produced_s, 2),
            "elapsed (s)": round(self.elapsed_s, 2),
            "outcomes/s": round(self.throughput, 1),
            "confirmed": self.confirmed,
            "cancelled": self.cancelled,
            "missing": self.missing,
            "p50 (ms)": round(self.percentile(50), 1),
            "p95 (ms)": round(self.percentile(95), 1),
            "p99 (ms)": round(self.percentile(99), 1),
            "max (ms)": round(max(self.latencies_ms, default=float("nan")), 1),
            "mean (ms)": round(statistics.fmean(self.latencies_ms), 1) if self.latencies_ms else None,
            **({} if self.warehouse_delays_ms is None else {
                "warehouse rows of confirmed orders": len(self.warehouse_delays_ms),
                "confirmed → warehouse row p50 (ms)": round(self.percentile(50, self.warehouse_delays_ms), 1),
                "confirmed → warehouse row p99 (ms)": round(self.percentile(99, self.warehouse_delays_ms), 1),
            }),
        }


class _Outcomes(threading.Thread):
    """Reads events.orders from its current end and notes when each wanted order's outcome arrives."""

    def __init__(self, settings: Settings, codec: Codec, topic: str) -> None:
        super().__init__(daemon=True)
        self.codec = codec
        self.seen: dict[str, tuple[float, str]] = {}
        self.confirmed_at: dict[str, float] = {}  # the OrderConfirmed record's timestamp (epoch seconds)
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.consumer = Consumer({
            "bootstrap.servers": settings.bootstrap_servers, "group.id": f"bench-{new_id()}",
            "enable.auto.commit": False, "fetch.wait.max.ms": 10,
        })
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [TopicPartition(topic, p, self.consumer.get_watermark_offsets(TopicPartition(topic, p))[1])
                for p in partitions]
        self.consumer.assign(ends)

    def run(self) -> None:
        self.ready.set()
        while not self.stop.is_set():
            for msg in self.consumer.consume(num_messages=1000, timeout=0.05):
                if msg.error() is not None:
                    continue
                now = time.perf_counter()
                try:
                    event = self.codec.decode(msg.value())
                except Exception:  # another writer's record: not ours to judge here
                    continue
                if isinstance(event, OrderConfirmed | OrderCancelled):
                    self.seen.setdefault(event.order_id, (now, type(event).__name__))
                if isinstance(event, OrderConfirmed):
                    self.confirmed_at.setdefault(event.order_id, msg.timestamp()[1] / 1000)
        self.consumer.close()


class _WarehouseRows(threading.Thread):
    """Every 20 ms, looks up in the warehouse's ``orders`` table the orders confirmed on Kafka whose row it has not
    seen yet, and notes when (epoch seconds) each is first seen confirmed (or later: shipped, delivered).

    A row is looked for once this benchmark has read the order's OrderConfirmed from Kafka, so a delay is never
    shorter than that read (tens of milliseconds); the rows arrive later than that anyway (Connect's fetch wait and
    batch). Only those orders, by primary key: a scan of every row of the run (``LIKE 'prefix%'`` cannot use the
    key's index) cost PostgreSQL a fifth of a core, which the benchmark then took away from the system it measures.
    """

    def __init__(self, settings: Settings, confirmed: dict[str, float]) -> None:
        super().__init__(daemon=True)
        self.settings, self.confirmed = settings, confirmed
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        s = self.settings
        with psycopg.connect(host=s.postgres_host or s.host, port=s.postgres_port, dbname=s.postgres_db,
                             user=s.postgres_user, password=s.postgres_password.get_secret_value(),
                             autocommit=True) as pg:
            while not self.stop.wait(0.02):
                waiting = list(self.confirmed.keys() - self.seen.keys())  # a copy: the other thread adds to it
                if not waiting:
                    continue
                rows = pg.execute("SELECT order_id FROM orders WHERE order_id = ANY(%s) AND status IN "
                                  "('CONFIRMED', 'SHIPPED', 'DELIVERED')", (waiting,)).fetchall()
                now = time.time()
                for (order_id,) in rows:
                    self.seen.setdefault(order_id, now)


def run_saga_bench(
    settings: Settings, *, orders: int, lines: int = 2, rate: float | None = None, timeout_s: float = 300.0,
    warehouse: bool = False, skus: int = 8, echo: object = print,
) -> BenchResult:
    """Seed ``skus`` SKUs with enough stock, place ``orders`` orders (as fast as possible, or at ``rate``/s), wait.

    Order ``i`` takes the SKUs ``i``, ``i + 1``, … (modulo ``skus``): a large catalog spreads the orders thin."""
    say = echo if callable(echo) else print
    codec = Codec.connect(settings)
    sender = CommandSender(settings, codec)
    run = new_id()[:8]
    catalog = [f"{BENCH_SKU_PREFIX}{run}-{i}" for i in range(max(lines, skus))]
    say(f"seeding {len(catalog)} SKUs")
    for first in range(0, len(catalog), 500):
        sender.send(*(
            message
            for sku in catalog[first:first + 500]
            for message in (
                UpsertProduct(**envelope(sku), sku=sku, name=sku, unit_price_cents=1000, currency="EUR"),
                AdjustStock(**envelope(sku), sku=sku, delta=orders * lines + 1000, reason="bench"),
            )
        ), timeout_s=30)
    outcomes = _Outcomes(settings, codec, Topics.from_settings(settings).order_events)
    outcomes.start()
    outcomes.ready.wait()
    rows = _WarehouseRows(settings, outcomes.confirmed_at) if warehouse else None
    if rows is not None:
        rows.start()
    say(f"placing {orders} orders of {lines} lines" + (f" at {rate}/s" if rate else " as fast as possible"))
    placed_at: dict[str, float] = {}
    producer = sender.producer
    topic = sender.topics.order_commands
    leaders = _stack_leaders(settings)
    cpu_before = cpu.snapshot(leaders)
    start = time.perf_counter()
    for i in range(orders):
        if rate:
            due = start + i / rate
            while (wait := due - time.perf_counter()) > 0:
                time.sleep(min(wait, 0.01))
        order_id = f"o-bench-{run}-{i}"
        order_lines = tuple(OrderLine(sku=catalog[(i + k) % len(catalog)], quantity=1) for k in range(lines))
        order = PlaceOrder(**envelope(order_id), order_id=order_id, customer_id=f"c-bench-{i % 50}",
                           lines=order_lines, currency="EUR", payment_token="tok_approve")
        placed_at[order_id] = time.perf_counter()
        producer.produce(topic, key=order_id.encode(), value=codec.encode(order))
        producer.poll(0)
    producer.flush(30)
    produced = time.perf_counter() - start
    deadline = time.monotonic() + timeout_s
    last_report = 0.0
    while time.monotonic() < deadline:
        done = sum(1 for order_id in placed_at if order_id in outcomes.seen)
        if done == orders:
            break
        if time.monotonic() - last_report > 2:
            say(f"  {done}/{orders} orders settled")
            last_report = time.monotonic()
        time.sleep(0.05)
    cpu_after, cpu_wall_s = cpu.snapshot(leaders), time.perf_counter() - start
    outcomes.stop.set()
    outcomes.join(5)
    ours = {oid: outcomes.seen[oid] for oid in placed_at if oid in outcomes.seen}
    delays: list[float] | None = None
    if rows is not None:
        confirmed = {oid: outcomes.confirmed_at[oid] for oid in ours if oid in outcomes.confirmed_at}
        while time.monotonic() < deadline and not confirmed.keys() <= rows.seen.keys():
            say(f"  {len(confirmed.keys() & rows.seen.keys())}/{len(confirmed)} confirmed orders in the warehouse")
            time.sleep(1)
        rows.stop.set()
        rows.join(5)
        delays = [(rows.seen[oid] - at) * 1000 for oid, at in confirmed.items() if oid in rows.seen]
    finished = max((at for at, _ in ours.values()), default=start)
    return BenchResult(
        orders=orders, lines=lines, skus=len(catalog), offered_rate=rate, produced_s=produced,
        elapsed_s=finished - start,
        confirmed=sum(1 for _, kind in ours.values() if kind == "OrderConfirmed"),
        cancelled=sum(1 for _, kind in ours.values() if kind == "OrderCancelled"),
        missing=orders - len(ours),
        latencies_ms=[(at - placed_at[oid]) * 1000 for oid, (at, _) in ours.items()],
        warehouse_delays_ms=delays,
        cpu=cpu.usage(cpu_before, cpu_after, cpu_wall_s),
    )


def _stack_leaders(settings: Settings) -> dict[str, int]:
    """The pid of each running process of the local stack these settings name (none when it runs elsewhere)."""
    from streamcart.stack import Stack

    stack = Stack(settings)
    return {name: record.pid for name in stack.names if stack.is_running(name) and (record := stack.record(name))}
