"""GET /v1/stream: server-sent events for the live dashboard, gathered across the workers once a second.

Every worker measures itself (:class:`streamcart.telemetry.Telemetry`, consumer lag, table sizes) and answers
``/v1/internal/live``. The worker serving a stream asks every worker for that, and for the analytics windows of
the last minutes, and sends one ``tick`` event a second to each subscriber (one gathering per worker, however
many dashboards are open). The browser's EventSource reconnects by itself after a worker restart (``retry:``).

EventSource cannot send an ``Authorization`` header, so the stream also takes the token as ``?token=``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast

from aiohttp import web

from api import analytics, gather, handling
from api.auth import Principal, authenticate
from api.errors import Forbidden, Unavailable
from api.models import StreamQuery
from api.spec import Route
from streamcart.domain import analytics as windows
from streamcart.settings import Settings
from streamcart.telemetry import (
    CONSUMER_LAG,
    DEAD_LETTERS_SHOWN,
    DLQ_RECORDS,
    STANDBY_BEHIND,
    TABLE_KEYS,
    WAREHOUSE_DLQ_RECORDS,
    Telemetry,
)
from streamcart.topics import Topics

log = logging.getLogger(__name__)

TICK_S = 1.0
#: Analytics windows change by the minute: gathered every few ticks only.
ANALYTICS_EVERY = 3
#: Lag, DLQ depth and table sizes are read from Kafka and RocksDB this often.
OBSERVE_S = 3.0
RECONNECT_MS = 2000
#: Live streams one worker serves at once (each costs a queue and a write a second; dashboards are few).
MAX_STREAMS = 100
#: How long one write to a stream may wait for its client to read (ticks come every second).
WRITE_TIMEOUT_S = 30.0
REVENUE_MINUTES = 15
#: The saga's step rates are taken over this much of the recent past (a second alone is too jumpy to read).
STEP_RATE_S = 5.0
#: Runs of workers whose last counts are kept one by one (one per worker start); older ones are kept as one sum.
RUNS_KEPT = 1_000


class LiveSource(Protocol):
    """What this module needs of the worker view (agents/view.py)."""

    index: int
    telemetry: Telemetry

    def owned(self) -> dict[str, list[int]]: ...

    def copies(self) -> dict[tuple[str, int], tuple[str, int | None]]: ...

    def committed(self) -> dict[tuple[str, int], int]: ...

    async def end_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]: ...

    async def start_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]: ...

    def table_sizes(self) -> dict[str, int]: ...

    def ready(self) -> bool: ...


class Observer:
    """This worker's view of Kafka (lag of the group on its partitions, the depth of the DLQ and of the warehouse's)
    and of its tables.

    Kafka is asked through the worker's own consumer: committed positions are the ones it committed itself, and
    the end offsets come from the same client. (librdkafka's admin client, used here before, aborts the whole
    process on an assertion when the broker goes away during ListConsumerGroupOffsets: every worker died when
    Kafka restarted. confluentinc/librdkafka#4605, #3663.)
    """

    def __init__(self, settings: Settings, worker: LiveSource) -> None:
        self.settings = settings
        self.worker = worker
        self.topics = Topics.from_settings(settings)
        self.lag: dict[str, dict[int, int]] = {}
        self.dlq_records: int | None = None
        self.warehouse_dlq_records: int | None = None  # rows a Kafka Connect sink could not take
        self.table_sizes: dict[str, int] = {}
        self.standby_behind: dict[str, int] = {}  # per table: records its standby copies have yet to read

    async def run(self) -> None:
        while True:
            try:
                await self.observe()
            except Exception as exc:  # Kafka away for a moment: the figures are a little older, nothing more
                log.debug("observing lag and DLQ failed: %s", exc)
            await asyncio.sleep(OBSERVE_S)

    async def observe(self) -> None:
        if not self.worker.ready():
            # Its partitions are moving: the lag stays what it last saw (a partition that moved may be reported by
            # its next owner too meanwhile: the alert and Grafana take each partition's highest, never the sum).
            return
        read = await self._read_kafka(self.worker.owned(), self.worker.copies())
        self.lag, self.dlq_records, self.warehouse_dlq_records, self.standby_behind = read
        DLQ_RECORDS.set(self.dlq_records)
        WAREHOUSE_DLQ_RECORDS.set(self.warehouse_dlq_records)
        CONSUMER_LAG.clear()
        for topic, partitions in self.lag.items():
            for partition, behind in partitions.items():
                CONSUMER_LAG.labels(topic, str(partition)).set(behind)
        self.table_sizes = self.worker.table_sizes()
        for table, size in self.table_sizes.items():
            TABLE_KEYS.labels(table).set(size)
        for table in self.table_sizes.keys() | self.standby_behind.keys():  # 0 without copies: a series to watch
            STANDBY_BEHIND.labels(table).set(self.standby_behind.get(table, 0))

    async def _read_kafka(
        self, owned: dict[str, list[int]], copies: dict[tuple[str, int], tuple[str, int | None]]
    ) -> tuple[dict[str, dict[int, int]], int, int, dict[str, int]]:
        """The group's lag on ``owned``, the depths of the DLQ and of the warehouse's, and per table the records
        the standby ``copies`` (changelog partition: table, last offset taken) have yet to read."""
        tps = [(t, p) for t, ps in owned.items() for p in ps if not t.endswith("-changelog")]
        dlq = [(self.topics.dlq, p) for p in range(self.settings.partitions)]
        warehouse_dlq = [(self.topics.warehouse_dlq, 0)]  # one partition (streamcart/topics.py)
        positions = self.worker.committed()
        never_committed = [tp for tp in tps if tp not in positions]  # the group starts those at the log start
        never_copied = [tp for tp, (_, taken) in copies.items() if taken is None]  # read from the log start
        latest = await self.worker.end_offsets(tps + dlq + warehouse_dlq + list(copies))
        earliest = await self.worker.start_offsets(dlq + warehouse_dlq + never_committed + never_copied)
        lag: dict[str, dict[int, int]] = {}
        for tp in tps:
            lag.setdefault(tp[0], {})[tp[1]] = max(0, latest[tp] - positions.get(tp, earliest.get(tp, 0)))
        standby_behind: dict[str, int] = {}
        for tp, (table, taken) in copies.items():
            unread = max(0, latest[tp] - (earliest[tp] if taken is None else taken + 1))
            standby_behind[table] = standby_behind.get(table, 0) + unread

        def depth(partitions: list[tuple[str, int]]) -> int:
            return sum(latest[tp] - earliest[tp] for tp in partitions)

        return lag, depth(dlq), depth(warehouse_dlq), standby_behind


OBSERVER = web.AppKey("observer", Observer)


def latest_dead_letters(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The workers' latest dead letters together, newest first, each with the worker that sent it."""
    letters = [dict(letter, worker=answer["worker"]) for answer in answers
               for letter in answer["telemetry"].get("dead_letters", ())]
    return sorted(letters, key=lambda letter: letter["at"], reverse=True)[:DEAD_LETTERS_SHOWN]


class RunTotals:
    """Counts over every worker and every run of each, since this hub began: a worker's counters start from zero
    when it restarts, and what its earlier run counted stays counted (those orders were placed), as do the last
    counts of a worker that stopped answering (until it answers again, with counts that include them).

    A run is told by the ``run`` of a worker's telemetry (a worker of an older version does not say: its counts
    fall when it restarts, as they always did)."""

    def __init__(self, keep: int = RUNS_KEPT) -> None:
        self.keep = keep
        self._runs: OrderedDict[tuple[int, object], dict[str, int]] = OrderedDict()
        self._older: Counter[str] = Counter()  # the runs no longer kept one by one, summed

    def saw(self, worker: int, run: object, counts: dict[str, int]) -> None:
        """``worker``'s run ``run`` has counted ``counts`` so far."""
        self._runs[(worker, run)] = dict(counts)
        self._runs.move_to_end((worker, run))
        while len(self._runs) > self.keep:
            self._older.update(self._runs.popitem(last=False)[1])

    def totals(self) -> dict[str, int]:
        total = Counter(self._older)
        for counts in self._runs.values():
            total.update(counts)
        return dict(total)


class Hub:
    """Gathers a tick a second while anyone listens and hands it to every subscriber."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()  # None: the end of the stream
        self._task: asyncio.Task[None] | None = None
        self._step_counts: deque[tuple[float, dict[int, dict[str, int]]]] = deque()
        self._placed, self._outcomes, self._steps = RunTotals(), RunTotals(), RunTotals()
        self._analytics: dict[str, Any] = {}
        self._late: dict[str, int] = {}
        self._ticks = 0
        self.closed = False  # the server is shutting down: streams end

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=5)
        if self.closed:  # a stream opened while the server shuts down ends at once
            queue.put_nowait(None)
            return queue
        self.subscribers.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.subscribers.discard(queue)

    def end_streams(self) -> None:
        """Tell every open stream to finish, and any opened from now on (the server is shutting down; the browser
        reconnects elsewhere)."""
        self.closed = True
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    queue.get_nowait()
            queue.put_nowait(None)
        self.subscribers.clear()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while self.subscribers:
            started = time.monotonic()
            try:
                tick = await self.tick()
            except Exception as exc:
                tick = {"type": "unavailable", "reason": str(exc)[:200], "at": int(time.time() * 1000)}
            for queue in list(self.subscribers):
                if queue.full():  # a slow reader gets the latest, not a backlog
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                queue.put_nowait(tick)
            await asyncio.sleep(max(0.0, TICK_S - (time.monotonic() - started)))

    async def tick(self) -> dict[str, Any]:
        """One look at the whole system: every worker's live figures and, every few ticks, the windows."""
        answers = await gather.from_every_worker(self.app, self.settings, "/v1/internal/live")
        now = time.time()
        placed, outcomes = self.counters(now, answers)
        latencies: list[float] = []
        for answer in answers:
            latencies.extend(answer["telemetry"]["latencies"])
        steps = {a["worker"]: a["telemetry"].get("steps", {}) for a in answers}
        runs = {a["worker"]: a["telemetry"].get("run") for a in answers}
        saga = self.step_rates(now, steps, runs)  # per worker: one that missed a tick or restarted makes no jump
        if self._ticks % ANALYTICS_EVERY == 0:
            self._analytics = await self.recent_windows()
        self._ticks += 1
        lag: dict[str, int] = {}
        for answer in answers:  # a partition two workers report (one still holding its old figure): the larger
            for topic, parts in answer["lag"].items():
                for p, n in parts.items():
                    key = f"{topic.removeprefix(self.settings.topic_prefix)}/{p}"
                    lag[key] = max(lag.get(key, 0), n)
        top = self._analytics.get("top_skus", [])
        return {
            "type": "tick",
            "at": int(now * 1000),
            "workers": [
                {"worker": a["worker"], "breaker": a["telemetry"]["breaker"], "tables": a["tables"]} for a in answers
            ],
            "workers_expected": self.settings.workers,
            "orders_placed": placed,
            "orders_per_s": saga.get("PlaceOrder", {}).get("per_s", 0.0),
            "outcomes": outcomes,
            "saga_latency_ms": _quantiles(latencies),
            "saga_steps": saga,
            "in_flight": _in_flight(answers, saga),
            "dlq_records": max((a["dlq_records"] for a in answers if a["dlq_records"] is not None), default=None),
            "warehouse_dlq_records": max((a["warehouse_dlq_records"] for a in answers
                                          if a.get("warehouse_dlq_records") is not None), default=None),
            "dead_letters": latest_dead_letters(answers),
            "consumer_lag": {"total": sum(lag.values()), "by_partition": lag},
            "stock": await self.stock([s["sku"] for s in top[:5]]),
            **self._analytics,
        }

    def counters(self, now: float, answers: list[dict[str, Any]]) -> tuple[int, dict[str, int]]:
        """Orders placed and outcomes over every worker and each of its runs (:class:`RunTotals`): a worker that
        restarted, or did not answer this tick, takes nothing away."""
        for answer in answers:
            telemetry = answer["telemetry"]
            run = telemetry.get("run")
            self._placed.saw(answer["worker"], run, {"placed": telemetry["placed"]})
            self._outcomes.saw(answer["worker"], run, telemetry["outcomes"])
        return self._placed.totals().get("placed", 0), self._outcomes.totals()

    def step_rates(
        self, now: float, by_worker: dict[int, dict[str, int]], runs: dict[int, object] | None = None
    ) -> dict[str, dict[str, float]]:
        """Each saga step's count (over every worker and each of its runs, ``runs``: each worker's current one, as
        :class:`RunTotals`) and its rate over the last :data:`STEP_RATE_S`.

        Rates come from each worker's own counts, compared with that worker's earlier ones: a worker that missed a
        tick, or restarted and counts from zero again, adds nothing for that while instead of a jump.
        """
        for worker, steps in by_worker.items():
            self._steps.saw(worker, (runs or {}).get(worker), steps)
        history = self._step_counts
        history.append((now, by_worker))
        while len(history) > 2 and history[1][0] <= now - STEP_RATE_S:
            history.popleft()
        then, before = history[0]
        span = now - then
        totals = self._steps.totals()
        moved: dict[str, int] = {}
        for worker, steps in by_worker.items():
            earlier = before.get(worker)
            for name, n in steps.items():
                if earlier is not None and span > 0:
                    moved[name] = moved.get(name, 0) + max(0, n - earlier.get(name, 0))
        return {
            name: {"total": n, "per_s": round(moved.get(name, 0) / span, 2) if span > 0 else 0.0}
            for name, n in totals.items()
        }

    async def recent_windows(self) -> dict[str, Any]:
        """Revenue per minute and outcomes for the last minutes, and the top SKUs of the last 5 minutes (the
        5-minute window that ends next)."""
        now = int(time.time() * 1000)
        start = now - now % windows.MINUTE_MS - (REVENUE_MINUTES - 1) * windows.MINUTE_MS
        result: dict[str, Any] = {}
        try:
            revenue = await self.analytics("revenue", start)
            result["revenue_per_minute"] = [
                {"window_start": t.window.start, "final": t.final,
                 "by_currency": {k.split(".", 1)[1]: v for k, v in t.counts.items() if k.startswith("cents.")}}
                for t in revenue
            ]
            outcomes = await self.analytics("outcomes", start)
            result["outcomes_per_minute"] = [
                {"window_start": t.window.start, "confirmed": t.counts.get(windows.CONFIRMED, 0),
                 "cancelled": windows.cancelled_by_reason(t.counts)}
                for t in outcomes
            ]
            units = await self.analytics("sku-units", now - 5 * windows.MINUTE_MS)
            # The windows holding now, oldest first: the oldest has the last 4 to 5 minutes (the newest, seconds).
            current = [t for t in units if t.window.start <= now < t.window.end]
            result["top_skus"] = analytics.ranked(current[0].counts, 10) if current else []
            result["late_events"] = self._late
        except Unavailable as exc:
            result["analytics_unavailable"] = exc.message
        return result

    async def analytics(self, metric: str, start: int) -> list[windows.WindowTotal]:
        answers = await gather.from_every_worker(
            self.app, self.settings, f"/v1/internal/analytics/{metric}?from={start}&to={analytics.NO_END}"
        )
        parts = gather.by_partition(answers, self.settings.partitions)
        views = [windows.PartitionView.model_validate(p) for p in parts.values()]
        self._late = {**self._late, metric: sum(v.late.get(metric, 0) for v in views)}
        return windows.totals(views, metric, lateness_ms=int(self.settings.analytics_lateness_s * 1000))

    async def stock(self, skus: list[str]) -> list[dict[str, Any]]:
        """The stock of ``skus`` (the hottest), each read from the worker that owns it."""
        session = self.app[gather.PEERS]
        headers = self.app[gather.PEER_TOKEN].header()
        url = self.settings.worker_url(cast(LiveSource, self.app[handling.WORKER]).index)

        async def one(sku: str) -> dict[str, Any] | None:
            try:
                async with session.get(f"{url}/v1/stock/{sku}", headers=headers) as response:
                    return cast(dict[str, Any], await response.json()) if response.status == 200 else None
            except Exception:
                return None

        found = await asyncio.gather(*(one(sku) for sku in skus))
        return [
            {k: s[k] for k in ("sku", "on_hand", "reserved", "available")} for s in found if s is not None
        ]


HUB = web.AppKey("stream_hub", Hub)


def _in_flight(answers: list[dict[str, Any]], steps: dict[str, dict[str, float]]) -> int:
    """Orders placed that have no outcome yet: what each worker's deadline index holds, as its timer counted it.
    From a worker of an older version, which does not say, the counters since start are the estimate (a restarted
    worker counts from zero the outcomes of orders placed before: that one reads low). A confirmed order cancelled
    later (its shipment stopped first) has two outcome events: only its first counts."""
    counted = [a["telemetry"].get("pending") for a in answers]
    if answers and all(isinstance(n, int) for n in counted):
        return sum(counted)
    count = {name: int(s["total"]) for name, s in steps.items()}
    settled = count.get("OrderConfirmed", 0) + count.get("OrderCancelled", 0) - count.get("ShipmentCancelled", 0)
    return max(0, count.get("PlaceOrder", 0) - settled)


def _quantiles(latencies: list[float]) -> dict[str, Any]:
    """p50 and p99 in milliseconds of the last minute's place-to-outcome latencies, over every worker."""
    if len(latencies) < 2:
        only = round(latencies[0] * 1000, 1) if latencies else None
        return {"p50": only, "p99": only, "count": len(latencies)}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50": round(cuts[49] * 1000, 1), "p99": round(cuts[98] * 1000, 1), "count": len(latencies)}


def setup_routes(app: web.Application) -> None:
    gather.setup(app, app[handling.SETTINGS])
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_end_streams)


async def _end_streams(app: web.Application) -> None:
    """Open event streams never end by themselves: a shutdown would wait for them (aiohttp's shutdown timeout,
    a minute by default) and a stopping worker be killed instead of stopping cleanly."""
    app[HUB].end_streams()


async def _background(app: web.Application) -> AsyncIterator[None]:
    observer = Observer(app[handling.SETTINGS], cast(LiveSource, app[handling.WORKER]))
    app[OBSERVER] = observer
    app[HUB] = Hub(app, app[handling.SETTINGS])
    task = asyncio.create_task(observer.run())
    yield
    await app[HUB].close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _admin_from(request: web.Request, *, token: str | None = None) -> Principal:
    """The request's principal, who must be an admin; ``token`` (from the query) stands in for a missing header."""
    header = request.headers.get("Authorization")
    if header is None and token:
        header = f"Bearer {token}"
    principal = authenticate(header, request.app[handling.SETTINGS].jwt_secret.get_secret_value())
    if not principal.is_admin:
        raise Forbidden("the live stream is for admins")
    return principal


async def live(request: web.Request) -> web.Response:
    """This worker's own live figures (what every stream gathers from every worker)."""
    _admin_from(request)
    worker = cast(LiveSource, request.app[handling.WORKER])
    observer = request.app[OBSERVER]
    return web.json_response({
        "worker": worker.index,
        "telemetry": worker.telemetry.snapshot(),
        "lag": observer.lag,
        "dlq_records": observer.dlq_records,
        "warehouse_dlq_records": observer.warehouse_dlq_records,
        "tables": observer.table_sizes,
    })


async def stream(request: web.Request) -> web.StreamResponse:
    """``text/event-stream`` of one ``tick`` a second until the client goes away."""
    query = handling.parsed_query(request, StreamQuery)
    principal = _admin_from(request, token=query.token)
    hub = request.app[HUB]
    if len(hub.subscribers) >= MAX_STREAMS:
        raise Unavailable(f"this worker serves {MAX_STREAMS} live streams already; try another worker or later",
                          headers={"Retry-After": "5"})
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
    })
    queue = hub.subscribe()  # before the first byte: a client that read it counts among the streams
    try:
        await response.prepare(request)
        await response.write(f"retry: {RECONNECT_MS}\n\n".encode())
        # Until the token expires: the browser then reconnects, and is refused until it has a new one.
        while (left_s := principal.expires_at - time.time()) > 0:
            try:
                tick = await asyncio.wait_for(queue.get(), min(left_s, 3600.0))
            except TimeoutError:
                continue
            if tick is None:
                break
            await _send(response, f"event: {tick['type']}\ndata: {json.dumps(tick)}\n\n".encode())
        else:  # the dashboard asks for a new token instead of reconnecting with this one
            await _send(response, b'event: expired\ndata: {"reason": "token expired"}\n\n')
    except (ConnectionResetError, TimeoutError, asyncio.CancelledError):
        pass
    finally:
        hub.unsubscribe(queue)
    return response


async def _send(response: web.StreamResponse, data: bytes) -> None:
    """Write to a stream; a client that stopped reading (:data:`WRITE_TIMEOUT_S`) gives its place up."""
    async with asyncio.timeout(WRITE_TIMEOUT_S):
        await response.write(data)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/stream", stream, "the live figures as server-sent events, one `tick` a second (admin; the "
          "token may come as ?token= for EventSource)", "live", query=StreamQuery, responses={200: None},
          content_type="text/event-stream", errors=(403, 503)),
    Route("GET", "/v1/internal/live", live, "this worker's live figures (worker to worker)", "internal",
          in_schema=False),
)
