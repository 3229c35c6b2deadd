"""A streamcart worker process: the faust app plus the HTTP API it serves (DESIGN.md §7)."""

from __future__ import annotations

import logging
from typing import Any

import faust
from aiohttp import web
from mode import Service

from agents.app import build_runtime, worker_view
from api.app import init_app
from schemas.codec import Codec
from streamcart.settings import Settings

log = logging.getLogger(__name__)


class ApiServer(Service):
    """Serves the aiohttp API from inside the worker, from the start (readiness answers 503 until ready)."""

    def __init__(self, app: web.Application, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.web_app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        self._runner = web.AppRunner(self.web_app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("API listening on http://%s:%s", self.host, self.port)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def run(settings: Settings, index: int) -> None:
    """Run worker ``index`` until it is stopped (SIGTERM/SIGINT stop it gracefully)."""
    codec = Codec.connect(settings)
    runtime = build_runtime(settings, codec, worker_index=index)
    api = init_app(settings, worker_view(runtime, index))
    runtime.app.add_dependency(ApiServer(api, settings.host, settings.worker_port(index)))
    worker = faust.Worker(runtime.app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
