"""A streamcart worker process: the faust app plus the HTTP API it serves (DESIGN.md §7)."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Any

import faust
from aiohttp import web
from mode import Service

from agents.app import build_runtime, worker_view
from agents.local_state import claim_local_state, release_local_state
from agents.transport import stores_caught_up
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
            # Stopped before its recovery was done, its stores are as old as they were when it started.
            release_local_state(tabledir, caught_up=stores_caught_up(runtime.app))
        raise
    finally:
        if spans is not None:
            spans.shutdown()
