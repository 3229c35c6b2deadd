"""The warehouse sinks' keeper: restarts a Kafka Connect sink task that failed, with backoff, from every worker.

Kafka Connect never restarts a failed task by itself, and the Debezium JDBC sink fails one on any database error
it does not count as a connection error. The sinks' own retries (connectors/*.json: ``connection.restart.on.errors``,
``flush.max.retries``) carry them through a PostgreSQL outage, but not through the moment it comes back: while
PostgreSQL replays its log after a crash it answers "the database system is starting up", and a task that meets
that fails for good. Its records wait in Kafka, nothing is lost, but the warehouse stops until someone restarts it.

So the worker on duty (the one that owns partition 0 of the saga's topics: exactly one while the group is settled,
and another as soon as that one is gone) checks the sinks of ``connectors/`` every ``sink_keeper_interval_s`` and
restarts the failed instances (Connect's ``onlyFailed`` restart). A sink that fails again waits longer before each
next restart (the interval, then twice as long, up to :data:`MAX_BACKOFF_S`) until a check sees it running. While a
sink is failed the keeper also asks PostgreSQL: the first check that finds it answering after it did not restarts
every failed sink at once (after an outage of minutes the waits had grown to 5 minutes, and the warehouse stayed
stopped that long after PostgreSQL was back). A worker that cannot reach PostgreSQL at all (a network policy) never
sees it come back, and keeps to the backoff. Should
two workers restart the same task around a rebalance, no harm is done: a restart only touches what is failed when
Connect receives it, and the records are upserted by key (a batch written twice is the same rows).
"""

from __future__ import annotations

import asyncio
import logging
import random
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mode import Service

from streamcart import connectors
from streamcart.connectors import SinkState, sink_states
from streamcart.errors import StreamcartError
from streamcart.settings import Settings
from streamcart.stack.probes import Probe, postgres_probe
from streamcart.telemetry import SINK_RESTARTS

log = logging.getLogger(__name__)

#: The longest wait between two restarts of a sink that keeps failing.
MAX_BACKOFF_S = 300.0


@dataclass
class Backoff:
    """When to restart each sink: at once when it first fails, then after ``first_s``, doubling up to ``max_s``."""

    first_s: float
    max_s: float = MAX_BACKOFF_S
    _delay: dict[str, float] = field(default_factory=dict)
    _next: dict[str, float] = field(default_factory=dict)

    def due(self, sink: SinkState, now: float) -> bool:
        """Whether to restart ``sink`` now; a running sink starts over."""
        if not sink.failed:
            self._delay.pop(sink.name, None)
            self._next.pop(sink.name, None)
            return False
        return now >= self._next.get(sink.name, now)

    def reset(self) -> None:
        """Every sink starts over: due at once."""
        self._delay.clear()
        self._next.clear()

    def restarted(self, name: str, now: float) -> None:
        """``name`` was restarted at ``now``: the next restart waits (longer than the last time)."""
        delay = self._delay.get(name)
        self._delay[name] = self.first_s if delay is None else min(delay * 2, self.max_s)
        self._next[name] = now + self._delay[name]


class SinkKeeperError(StreamcartError):
    """Connect did not answer a status read or a restart."""


class SinkKeeper(Service):
    """Every ``settings.sink_keeper_interval_s``, restart the warehouse sinks Connect reports failed."""

    def __init__(self, settings: Settings, on_duty: Callable[[], bool] = lambda: True,
                 warehouse: Callable[[], Probe] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.on_duty = on_duty
        #: Whether PostgreSQL answers (asked only while a sink is failed), and whether it did at the last asking.
        self.warehouse = warehouse or (lambda: postgres_probe(settings))
        self._warehouse_was_down = False
        self.interval_s = settings.sink_keeper_interval_s
        self.backoff = Backoff(first_s=self.interval_s)
        self.names = [c.name for c in connectors.load(settings)]
        for name in self.names:  # from 0 on: a series that first appears at 1 has no increase() for Prometheus
            SINK_RESTARTS.labels(name)

    @Service.task
    async def _keep(self) -> None:
        # Workers started together check at different moments: one restart, not one per worker, per failure.
        await self.sleep(random.uniform(0, self.interval_s))
        while not self.should_stop:
            await self.sleep(self.interval_s)
            if self.should_stop:
                break
            try:
                await self.tick(self.loop.time())
            except SinkKeeperError as exc:  # Connect restarting or unreachable: the next check tries again
                log.warning("warehouse sinks not checked: %s", exc)
            except Exception:  # never the worker's end: an escaping error would crash the whole worker
                log.exception("warehouse sinks not checked")

    async def tick(self, now: float) -> list[str]:
        """:meth:`check` when this worker is on duty; another worker keeps the sinks (and its backoff counts)."""
        return await self.check(now) if self.on_duty() else []

    async def check(self, now: float) -> list[str]:
        """Restart the failed sinks that are due; returns their names. One refused restart spares the others."""
        statuses = await self._call("GET", "/connectors?expand=status")
        if not isinstance(statuses, dict):
            raise SinkKeeperError(f"Connect's status is not an object: {str(statuses)[:200]}")
        sinks = sink_states(self.names, statuses)
        if any(sink.failed for sink in sinks):
            warehouse = await asyncio.to_thread(self.warehouse)
            if not warehouse.ok and not self._warehouse_was_down:
                log.warning("warehouse sinks failed while PostgreSQL does not answer (%s): restarted on their "
                            "backoff, and at once when it answers", warehouse.detail)
            elif warehouse.ok and self._warehouse_was_down:
                log.warning("PostgreSQL answers again: restarting the failed warehouse sinks now")
                self.backoff.reset()
            self._warehouse_was_down = not warehouse.ok
        else:
            self._warehouse_was_down = False
        restarted = []
        for sink in sinks:
            if not self.backoff.due(sink, now):
                continue
            log.warning("restarting warehouse sink %s, failed: %s", sink.name, sink.reason or "no reason given")
            quoted = urllib.parse.quote(sink.name, safe="")
            try:
                await self._call("POST", f"/connectors/{quoted}/restart?includeTasks=true&onlyFailed=true")
            except SinkKeeperError as exc:  # e.g. 409 while Connect rebalances: tried again at the next check
                log.warning("warehouse sink %s not restarted: %s", sink.name, exc)
                continue
            self.backoff.restarted(sink.name, now)
            SINK_RESTARTS.labels(sink.name).inc()
            restarted.append(sink.name)
        return restarted

    async def _call(self, method: str, path: str) -> Any:
        """``connectors.request`` off the event loop; any answer but a 2xx is a :class:`SinkKeeperError`."""
        try:
            status, body = await asyncio.to_thread(connectors.request, self.settings, method, path)
        except connectors.ConnectError as exc:
            raise SinkKeeperError(str(exc)) from exc
        if status >= 300:
            raise SinkKeeperError(f"{method} {path}: HTTP {status} {body}")
        return body
