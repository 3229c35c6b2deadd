"""Helpers for tests on the real local stack: a murmur2 confluent-kafka producer, topic readers, API polling."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from api.auth import issue_token
from api.handling import STORED_WAIT_S
from streamcart.ids import new_id
from streamcart.settings import Settings


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler for a test's own HTTP server (a customer's webhook) that does not log each request."""

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a free loopback port in a thread while the block runs; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()

def producer(settings: Settings) -> Producer:
    """A confluent-kafka producer partitioning like faust and the Java client (murmur2), acks from all."""
    return Producer({
        "bootstrap.servers": settings.bootstrap_servers,
        "partitioner": "murmur2_random",
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 2,
        "message.max.bytes": 1_048_588,  # what the broker takes (Kafka's default), above librdkafka's 1,000,000
    })


def produce(
    p: Producer, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None = None
) -> tuple[int, int]:
    """Send one record and wait for it; returns the (partition, offset) it was written at."""
    errors: list[Any] = []
    written: list[tuple[int, int]] = []

    def delivered(err: Any, msg: Any) -> None:
        if err:
            errors.append(err)
        else:
            written.append((msg.partition(), msg.offset()))

    p.produce(topic, key=key, value=value, headers=headers or [], on_delivery=delivered)
    p.flush(10)
    assert not errors, errors
    assert written, f"{topic}: no delivery report within 10 s"
    return written[0]


def read_topic(
    settings: Settings, topic: str, *, until: Callable[[list[Any]], bool], timeout_s: float = 30.0
) -> list[Any]:
    """Every record of ``topic`` from the beginning, read until ``until(records)`` holds (or fail on timeout)."""
    consumer = Consumer({
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": f"test-reader-{new_id()}",
        "enable.auto.commit": False,
    })
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        checked_at = 0.0
        while time.monotonic() < deadline:
            batch = consumer.consume(num_messages=500, timeout=0.2)
            records.extend(msg for msg in batch if msg.error() is None)
            # Asked once caught up, or each second meanwhile: asked after every batch, a condition that looks at
            # every record read would cost the square of a long topic's length.
            if batch and time.monotonic() - checked_at < 1.0:
                continue
            if until(records):
                return records
            checked_at = time.monotonic()
        if until(records):  # what the last second brought
            return records
        raise AssertionError(f"{topic}: condition not met within {timeout_s}s ({len(records)} records read)")
    finally:
        consumer.close()


def headers_of(msg: Any) -> dict[str, bytes]:
    return {k: v for k, v in (msg.headers() or [])}


def admin_token(settings: Settings) -> str:
    return issue_token(settings.jwt_secret.get_secret_value(), "ops", ["admin"])


#: Longer than a worker's wait for its table writes before it answers 503 (api/handling.py ``STORED_WAIT_S``), plus a
#: forward to the owner: a worker that is slow to have its writes acknowledged then answers 503 + Retry-After, which
#: callers retry, rather than the client giving up first with a socket timeout.
HTTP_TIMEOUT_S = STORED_WAIT_S + 10


def http_json(
    url: str, token: str | None = None, timeout_s: float = HTTP_TIMEOUT_S, body: Any = None
) -> tuple[int, Any]:
    """GET ``url``, or POST ``body`` as JSON to it: the status and the JSON answer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def poll(check: Callable[[], Any], *, timeout_s: float = 30.0, every_s: float = 0.05, what: str = "condition") -> Any:
    """Call ``check`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


def wait_until_worker_0_owns_every_partition(settings: Settings, timeout_s: float = 120) -> None:
    """The handover after worker-1 stopped: the survivor holds every partition (a stopped static member keeps
    its partitions until its session times out)."""
    poll(lambda: (r := http_json(f"{settings.worker_url(0)}/readyz"))[0] == 200
         and len(r[1]["assigned"]) == settings.partitions,
         timeout_s=timeout_s, every_s=0.5, what="worker-0 to own every partition")


def worker_metric(settings: Settings, name: str, **labels: str) -> float:
    """A metric summed over every worker's ``/metrics`` (the series ``name`` whose labels include ``labels``)."""
    return sum(one_workers_metric(settings, index, name, **labels) or 0.0 for index in range(settings.workers))


def one_workers_metric(settings: Settings, index: int, name: str, **labels: str) -> float | None:
    """The series ``name`` whose labels include ``labels``, summed, in worker ``index``'s ``/metrics`` (None: it
    has none)."""
    with urllib.request.urlopen(f"{settings.worker_url(index)}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
              if sample.name == name and labels.items() <= sample.labels.items()]
    return sum(values) if values else None



def last_run_log(log_path: Path, name: str) -> list[dict[str, Any]]:
    """The JSON log records of the last run of process ``name`` in its log (the stack marks each start)."""
    lines = log_path.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"--- streamcart: starting {name} ")]
    records = []
    for line in lines[starts[-1] + 1 if starts else 0:]:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return [record for record in records if isinstance(record, dict)]


def recovery_starts(records: list[dict[str, Any]], topic: str) -> dict[int, int]:
    """Where faust's first table recovery in ``records`` began reading each of ``topic``'s active partitions (-1:
    from its start), from the table it logs ("active offsets at start of reading")."""
    logged = [r["message"] for r in records if "active offsets at start of reading" in str(r.get("message"))]
    assert logged, "no table recovery was logged"
    message = logged[0]
    starts, current = {}, None
    for row in message.splitlines():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) != 3 or not cells[2].lstrip("-").isdigit():
            continue
        current = current if cells[0] == "\u3003" else cells[0]
        if current == topic:
            starts[int(cells[1])] = int(cells[2])
    return starts
