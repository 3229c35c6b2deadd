"""Readiness checks: each asks the process a real question (metadata, an HTTP resource, a SQL query)."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streamcart.settings import Settings


@dataclass(frozen=True)
class Probe:
    """One readiness check's answer: ``ok``, a short ``detail`` for humans, any JSON the process returned."""

    ok: bool
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def quiet_logger() -> logging.Logger:
    """A logger for librdkafka that drops its connection-refused chatter while a broker is still starting."""
    logger = logging.getLogger("streamcart.stack.librdkafka")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
    return logger


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.bootstrap_servers}, logger=quiet_logger())


def kafka_probe(settings: Settings, timeout_s: float = 2.0) -> Probe:
    """Ready when the broker answers a metadata request (a port that accepts connections is not enough)."""
    try:
        metadata = admin_client(settings).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        return Probe(False, f"no metadata: {exc.args[0]}")
    return Probe(True, f"{len(metadata.brokers)} broker, {len(metadata.topics)} topics")


def postgres_probe(settings: Settings, timeout_s: float = 2.0) -> Probe:
    """Ready when the application role can log into its database and run a query."""
    try:
        with psycopg.connect(settings.postgres_dsn, connect_timeout=max(1, int(timeout_s))) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        return Probe(False, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return Probe(True, "accepts connections")


def http_get_json(url: str, timeout_s: float, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET ``url`` → (status, parsed JSON or None). Connection problems raise ``OSError``."""
    request = urllib.request.Request(url, headers={"Accept": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, None


def http_probe(url: str, timeout_s: float = 2.0, accept: Callable[[Any], str | None] | None = None) -> Probe:
    """Ready when ``url`` answers 200 and ``accept`` (if given) finds nothing wrong in the JSON body."""
    try:
        status, body = http_get_json(url, timeout_s)
    except OSError as exc:
        return Probe(False, f"{url}: {getattr(exc, 'reason', exc)}")
    if status != 200:
        return Probe(False, f"{url} answered {status}")
    problem = accept(body) if accept else None
    if problem:
        return Probe(False, problem)
    return Probe(True, "ok", body if isinstance(body, dict) else {})


def registry_probe(settings: Settings, timeout_s: float = 2.0) -> Probe:
    return http_probe(f"{settings.registry_url}/subjects", timeout_s)


JDBC_SINK_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"


def connect_probe(settings: Settings, timeout_s: float = 2.0) -> Probe:
    """Ready when the REST API lists connectors *and* the Debezium JDBC sink plugin was loaded."""
    listed = http_probe(f"{settings.connect_url}/connectors", timeout_s)
    if not listed.ok:
        return listed

    def has_jdbc_sink(body: Any) -> str | None:
        classes = {plugin.get("class") for plugin in body or [] if isinstance(plugin, dict)}
        return None if JDBC_SINK_CLASS in classes else f"plugin {JDBC_SINK_CLASS} not loaded"

    return http_probe(f"{settings.connect_url}/connector-plugins", timeout_s, has_jdbc_sink)


def gateway_probe(settings: Settings, timeout_s: float = 2.0) -> Probe:
    return http_probe(f"{settings.gateway_url}/healthz", timeout_s)


def worker_probe(settings: Settings, index: int, timeout_s: float = 2.0) -> Probe:
    """Ready when the worker has recovered its tables and got partitions (``/readyz`` says ``ready``)."""

    def says_ready(body: Any) -> str | None:
        if isinstance(body, dict) and body.get("ready") is True:
            return None
        return f"not ready yet: {body!r}"

    probe = http_probe(f"{settings.worker_url(index)}/readyz", timeout_s, says_ready)
    if probe.ok:
        return Probe(True, f"{len(probe.data.get('assigned') or [])} partitions", probe.data)
    return probe
