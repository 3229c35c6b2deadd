"""A streamcart worker process: the faust app plus the HTTP API it serves (DESIGN.md §7)."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import faust
from aiohttp import web
from mode import Service

from agents.app import build_runtime, worker_view
from agents.transport import discard_directory
from api.app import init_app
from api.commands import KafkaCommands
from api.errors import JsonErrorsRunner
from schemas.codec import Codec
from streamcart import tracing
from streamcart.errors import ConfigurationError
from streamcart.logs import configure_logging, logging_config
from streamcart.otel import start_export
from streamcart.settings import Settings, unknown_variables
from streamcart.sink_keeper import SinkKeeper
from streamcart.topics import TOMBSTONE_RETENTION_MS

log = logging.getLogger(__name__)


#: How long a stopping worker lets the API's running requests finish (aiohttp's default is a minute, longer than
#: ``streamcart down`` waits before it kills).
SHUTDOWN_TIMEOUT_S = 3.0


class ApiServer(Service):
    """Serves the aiohttp API from inside the worker, from the start (readiness answers 503 until ready)."""

    def __init__(self, app: web.Application, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.web_app = app
        self.host = host
        self.port = port
        self._runner: JsonErrorsRunner | None = None

    async def on_start(self) -> None:
        # Requests still running at a stop get a few seconds (open event streams are ended at once, api.stream).
        self._runner = JsonErrorsRunner(self.web_app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("API listening on http://%s:%s", self.host, self.port)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


#: The garbage collector's generation thresholds in a worker (CPython's are 700, 10, 10). A worker allocates
#: thousands of short-lived objects per message (decoded records, models, futures), so the default runs a
#: young-generation pass every few messages and a full pass, through everything the tables' caches and faust
#: hold, every few hundred. Measured without Kafka (one agent, 4,000 PlaceOrders): 791 µs of CPU per message
#: with the defaults, 643 µs with no collection at all, 592 µs with these.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect less often, and never walk what exists at start again (it lives as long as the process)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


#: Present while a worker runs; still there at start when the last run did not stop cleanly.
RUNNING_MARKER = "RUNNING"
#: Written by a clean stop: when (epoch seconds). A store stopped longer ago than Kafka keeps tombstones may have
#: missed deletions (a forgotten order, a released reservation) whose tombstones were compacted away meanwhile.
STOPPED_MARKER = "STOPPED"
#: Present in a store written only with what its changelogs acknowledged (tables/store.py). A store without it was
#: written by an earlier streamcart, whose tables reached the disk before their changelogs: after a kill it could be
#: ahead of them, and is rebuilt.
HELD_WRITES_MARKER = "HELD_WRITES"
#: A store stopped cleanly this long ago is rebuilt from the changelogs too: a day less than the tombstones stay.
STALE_AFTER_S = TOMBSTONE_RETENTION_MS / 1000 - 24 * 3600


def claim_local_state(tabledir: Path, *, now: float | None = None) -> bool:
    """Mark ``tabledir`` in use; wipe it first if it was last used more than :data:`STALE_AFTER_S` ago, or killed
    while an earlier streamcart wrote it. Returns whether it was wiped.

    A killed worker keeps its store: each table partition's store holds a prefix of its changelog (tables/store.py)
    and notes the offset it reaches, so the recovery reads only the records after it. When it was last used is the
    time of its clean stop (``STOPPED``), or after a kill the time of its last write to disk: an idle worker killed
    days later counts as gone since its last write, which only errs towards a rebuild.
    """
    marker = tabledir / RUNNING_MARKER
    # The store and its marker go away together (discard_directory). Deleted in place, the marker could go before
    # some stores, and a kill in between would leave those stores, unmarked, to be kept.
    discarded = tabledir.with_name(f"{tabledir.name}.discarded")
    if discarded.exists():  # a wipe that a kill interrupted
        shutil.rmtree(discarded)
    now = time.time() if now is None else now
    killed = marker.exists()
    unheld = killed and not (tabledir / HELD_WRITES_MARKER).exists()
    idle_s = _last_written_s(tabledir, now) if killed else _stopped_for_s(tabledir, now)
    if unheld:
        log.warning("the last run of this worker did not stop cleanly and wrote its tables before their changelogs: "
                    "rebuilding them from the changelogs")
    elif idle_s is not None and idle_s > STALE_AFTER_S:
        log.warning("this worker's tables were last used %.1f days ago, longer than Kafka keeps the tombstones of "
                    "deleted keys: rebuilding them from the changelogs", idle_s / 86_400)
    elif killed:
        log.warning("the last run of this worker did not stop cleanly: its tables hold what their changelogs had "
                    "acknowledged, and recovery reads the rest")
    wiped = unheld or (idle_s is not None and idle_s > STALE_AFTER_S)
    if wiped:
        discard_directory(tabledir)
    tabledir.mkdir(parents=True, exist_ok=True)
    marker.touch()
    (tabledir / HELD_WRITES_MARKER).touch()
    (tabledir / STOPPED_MARKER).unlink(missing_ok=True)
    return wiped


def _stopped_for_s(tabledir: Path, now: float) -> float | None:
    """How long ago the store was stopped cleanly (``None``: not known, as for a store older than the marker)."""
    try:
        return now - float((tabledir / STOPPED_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _last_written_s(tabledir: Path, now: float) -> float | None:
    """How long ago anything in the store was last written (``None``: nothing there but the markers)."""
    markers = {RUNNING_MARKER, STOPPED_MARKER, HELD_WRITES_MARKER}
    times = [path.stat().st_mtime for path in tabledir.rglob("*") if path.is_file() and path.name not in markers]
    return now - max(times) if times else None


def release_local_state(tabledir: Path, *, now: float | None = None) -> None:
    """Mark ``tabledir`` as consistent with the changelogs (after a clean stop), as of now."""
    (tabledir / STOPPED_MARKER).write_text(f"{time.time() if now is None else now:.0f}")
    (tabledir / RUNNING_MARKER).unlink(missing_ok=True)


def run(settings: Settings, index: int) -> None:
    """Run worker ``index`` until it is stopped (SIGTERM/SIGINT stop it gracefully)."""
    configure_logging(settings)
    for line in unknown_variables(os.environ):
        log.warning("%s", line)
    if (weak := settings.weak_jwt_secret()) is not None:
        raise ConfigurationError(weak)
    if settings.exposed_with_development_secret():
        raise ConfigurationError(
            f"the API would listen on {settings.host} and sign tokens with the development JWT secret, which is in "
            "streamcart's source: anyone who could reach it could mint an admin token. Set STREAMCART_JWT_SECRET "
            "(e.g. $(openssl rand -hex 32)), or listen on loopback (STREAMCART_HOST=127.0.0.1)"
        )
    tracing.set_enabled(settings.tracing)
    spans = start_export(settings, f"{settings.app_id}-worker-{index}")
    codec = Codec.connect(settings)
    runtime = build_runtime(settings, codec, worker_index=index)
    commands = KafkaCommands(settings, codec)
    view = worker_view(runtime, index)
    api = init_app(settings, view, commands)
    runtime.app.add_dependency(ApiServer(api, settings.host, settings.worker_port(index)))
    if settings.sink_keeper_interval_s > 0:
        runtime.app.add_dependency(SinkKeeper(settings, on_duty=lambda: 0 in view.assigned()))
    # faust sets logging up again when it starts: with the same config, so its records are formatted like ours
    # (a fresh copy: dictConfig consumes parts of the dict it is given).
    worker = faust.Worker(
        runtime.app, loglevel=settings.log_level, quiet=True,
        logging_config=logging_config(settings.log_format, settings.log_level),
    )
    tabledir = Path(runtime.app.conf.tabledir)
    claim_local_state(tabledir)
    if settings.gc_tuning:
        tune_gc()
    try:
        worker.execute_from_commandline()
    except SystemExit as stop:
        if stop.code in (0, None) and not worker.crash_reason:
            release_local_state(tabledir)
        raise
    finally:
        if spans is not None:
            spans.shutdown()
