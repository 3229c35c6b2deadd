"""`streamcart bench api`: drive the HTTP API from another process and report req/s and latency.

``get``: reads orders that the target worker itself owns (``X-Streamcart-Served-By`` says who answered), so the
figure is one worker answering from its table, not a forward. ``post``: places orders (each answered once the
broker acknowledged its PlaceOrder). Requests come from many customers' tokens so the per-token rate limit does
not cap the run. The requests are prepared here and sent by tools/loadgen (Go, built by setup): a Python client on
the same 2-core machine would use more CPU per request than the server it measures. Latency is per request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector

from api.auth import issue_token
from api.handling import SERVED_BY
from schemas.messages import AdjustStock, UpsertProduct
from streamcart.bench import BENCH_SKU_PREFIX
from streamcart.commands import CommandSender, envelope
from streamcart.ids import new_id
from streamcart.settings import Settings
from streamcart.stack.admin import consumer_lag


@dataclass
class ApiBenchResult:
    kind: str
    worker: int
    concurrency: int
    elapsed_s: float
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0  # requests that got no answer at all

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")

    def summary(self) -> dict[str, object]:
        return {
            "requests": len(self.latencies_ms),
            "worker": self.worker,
            "concurrency": self.concurrency,
            "elapsed (s)": round(self.elapsed_s, 2),
            "req/s": round(len(self.latencies_ms) / self.elapsed_s, 1) if self.elapsed_s else 0,
            "p50 (ms)": round(self.percentile(50), 2),
            "p99 (ms)": round(self.percentile(99), 2),
            "max (ms)": round(max(self.latencies_ms, default=float("nan")), 2),
            "statuses": dict(sorted(self.statuses.items())),
            "no answer": self.errors,
        }


def run_api_bench(settings: Settings, *, kind: str, seconds: float = 10.0, concurrency: int = 32, worker: int = 0,
                  echo: object = print) -> ApiBenchResult:
    return asyncio.run(_run(settings, kind, seconds, concurrency, worker, echo if callable(echo) else print))


async def _run(settings: Settings, kind: str, seconds: float, concurrency: int, worker: int,
               say: object) -> ApiBenchResult:
    assert callable(say)
    secret = settings.jwt_secret.get_secret_value()
    run = new_id()[:8]
    tokens = [issue_token(secret, f"c-bench-{run}-{i}", ["customer"], ttl_s=3600) for i in range(64)]
    base = settings.worker_url(worker)
    sku = f"{BENCH_SKU_PREFIX}API-{run}"
    CommandSender(settings).send(
        UpsertProduct(**envelope(sku), sku=sku, name=sku, unit_price_cents=500, currency="EUR"),
        AdjustStock(**envelope(sku), sku=sku, delta=10_000_000, reason="bench"),
    )
    body = {"lines": [{"sku": sku, "quantity": 1}], "payment": {"token": "tok_approve"}, "currency": "EUR"}
    connector = TCPConnector(limit=concurrency * 2)
    async with ClientSession(connector=connector, timeout=ClientTimeout(total=30)) as http:
        targets: list[tuple[str, str]] = []
        if kind == "get":
            say(f"placing orders to read, and keeping those worker {worker} owns …")
            placed: list[tuple[str, str]] = []
            while len(placed) < 200:
                token = tokens[len(placed) % len(tokens)]
                async with http.post(f"{base}/v1/orders", json=body,
                                     headers={"Authorization": f"Bearer {token}"}) as response:
                    answer = await response.json()
                    if response.status == 503:  # shed (README, "Overload"): as a client should, later
                        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                        continue
                    if response.status != 202:
                        raise RuntimeError(f"placing an order to read answered {response.status}: {answer}")
                    placed.append((answer["order_id"], token))
            for order_id, token in placed:
                async with http.get(f"{base}/v1/orders/{order_id}?wait=30",
                                    headers={"Authorization": f"Bearer {token}"}) as response:
                    if response.status == 200 and response.headers.get(SERVED_BY) == str(worker):
                        targets.append((order_id, token))
            if not targets:
                raise RuntimeError(f"worker {worker} owns none of the 200 orders placed")
            # The rest of those orders' saga (stock commits, shipping, warehouse rows, analytics) would otherwise
            # still run on the worker while it is measured.
            say("waiting for the workers to finish processing them …")
            await asyncio.to_thread(_wait_until_idle, settings)
            say(f"reading {len(targets)} orders owned by worker {worker} for {seconds:.0f} s, {concurrency} at once")
            requests: list[dict[str, object]] = [
                {"method": "GET", "url": f"{base}/v1/orders/{order_id}",
                 "headers": {"Authorization": f"Bearer {token}"}} for order_id, token in targets
            ]
        else:
            say(f"placing orders on worker {worker} for {seconds:.0f} s, {concurrency} at once")
            requests = [{"method": "POST", "url": f"{base}/v1/orders", "body": json.dumps(body),
                         "headers": {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}}
                        for token in tokens]
    report = await _loadgen(requests, concurrency, seconds)
    result = ApiBenchResult(kind=kind, worker=worker, concurrency=concurrency, elapsed_s=report["elapsed_s"],
                            statuses=Counter({int(k): v for k, v in report["statuses"].items()}),
                            latencies_ms=report["latencies_ms"], errors=report["errors"])
    if report["errors"]:
        say(f"{report['errors']} requests failed without an answer, the first: {report.get('first_error')}")
    return result


def _wait_until_idle(settings: Settings, timeout_s: float = 120.0) -> None:
    """Until the workers' consumer group has no lag (or ``timeout_s`` passed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and sum(consumer_lag(settings, settings.app_id).values()) > 0:
        time.sleep(0.5)


LOADGEN = Path(__file__).resolve().parents[1] / ".tools" / "bin" / "loadgen"


async def _loadgen(requests: list[dict[str, object]], concurrency: int, seconds: float) -> dict[str, Any]:
    """Run tools/loadgen (built by setup) over ``requests``: the measured part, in Go, so the client is cheap."""
    if not LOADGEN.exists():
        raise RuntimeError(f"{LOADGEN} is missing: `make setup` builds it from tools/loadgen (needs Go)")
    process = await asyncio.create_subprocess_exec(
        str(LOADGEN), "-c", str(concurrency), "-d", f"{seconds}s",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    lines = "".join(json.dumps(r) + "\n" for r in requests).encode()
    out, err = await process.communicate(lines)
    if process.returncode != 0:
        raise RuntimeError(f"loadgen failed ({process.returncode}): {err.decode().strip()}")
    report: dict[str, Any] = json.loads(out)
    return report
