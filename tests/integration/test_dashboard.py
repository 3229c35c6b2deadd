"""The live view on the real stack: /v1/stream delivers ticks that move while orders flow, and /dashboard in real
headless Chromium (Debian's package, driven by playwright) shows counters moving and one order's timeline.

The screenshot is kept as a test artifact: tests/artifacts/dashboard.png (git-ignored).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import sync_playwright

from api.auth import issue_token
from streamcart.ids import new_id
from tests.integration.support import poll
from tests.integration.test_saga import Shop

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def shop(stack, settings, codec) -> Shop:
    return Shop(settings, codec)


class OrderFlow:
    """Places orders in the background (a bounded number, one every ``every_s``) until stopped.

    Each order is queued in the producer without waiting for Kafka's acknowledgement (so the flow keeps its pace
    while the broker is away, as in a Kafka restart), and leaving the flow waits until every one was delivered.
    """

    def __init__(self, shop: Shop, skus: list[str], limit: int = 400, every_s: float = 0.1) -> None:
        self.shop, self.skus, self.limit, self.every_s = shop, skus, limit, every_s
        self.placed: list[str] = []
        self.failed: BaseException | None = None  # what stopped the flow early
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tokens = ["tok_approve", "tok_approve", "tok_approve", "tok_decline"]
        try:
            while not self._stop.is_set() and len(self.placed) < self.limit:
                i = len(self.placed)
                order = self.shop.place_order({self.skus[i % len(self.skus)]: 1 + i % 2},
                                              token=tokens[i % len(tokens)])
                self.shop.send_later(order)
                self.placed.append(order.order_id)
                self._stop.wait(self.every_s)
        except BaseException as exc:
            self.failed = exc
            raise

    def __enter__(self) -> OrderFlow:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.shop.flush(timeout_s=60)
        if self.failed is not None and exc[0] is None:
            raise AssertionError(f"the order flow stopped after {len(self.placed)} orders") from self.failed


@pytest.fixture(scope="module")
def skus(shop: Shop) -> list[str]:
    names = [f"DASH-{new_id()[:6]}" for _ in range(3)]
    for sku in names:
        shop.product(sku, price=1_999, stock=10_000)
    return names


def ticks(settings, token: str, worker: int = 0) -> Iterator[dict]:
    """The ``tick`` events of /v1/stream, as they come."""
    with requests.get(f"{settings.worker_url(worker)}/v1/stream", params={"token": token}, stream=True,
                      timeout=(5, 30)) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "tick":
                yield json.loads(line.removeprefix("data: "))


def test_the_stream_delivers_ticks_that_move_while_orders_flow(shop: Shop, settings, skus):
    with OrderFlow(shop, skus) as flow:
        stream = ticks(settings, shop.token, worker=1)
        first = next(stream)
        assert first["workers_expected"] == settings.workers
        seen = [first]
        deadline = time.monotonic() + 60
        for tick in stream:
            seen.append(tick)
            confirmed = tick["outcomes"].get("confirmed", 0) - first["outcomes"].get("confirmed", 0)
            if (tick["orders_placed"] >= first["orders_placed"] + 10 and confirmed >= 5
                    and any(t["orders_per_s"] > 0 for t in seen) and tick["saga_latency_ms"]["p50"] is not None):
                break
            assert time.monotonic() < deadline, f"the stream did not move in 60 s: {seen[-1]}"
    assert len(flow.placed) >= 10
    assert [w["worker"] for w in tick["workers"]] == list(range(settings.workers))
    assert {w["breaker"] for w in tick["workers"]} <= {"closed", "half-opened", "opened"}
    assert tick["dlq_records"] is not None and tick["consumer_lag"]["total"] >= 0
    assert tick["warehouse_dlq_records"] is not None
    assert tick["saga_latency_ms"]["p99"] >= tick["saga_latency_ms"]["p50"] > 0
    steps = tick["saga_steps"]
    assert steps["PlaceOrder"]["total"] >= 10 and steps["OrderConfirmed"]["total"] >= 5
    assert any(t["saga_steps"].get("PlaceOrder", {}).get("per_s", 0) > 0 for t in seen)
    assert tick["in_flight"] >= 0
    # A tick a second: the ticks seen span about as many seconds as there are ticks.
    assert seen[-1]["at"] - seen[0]["at"] >= (len(seen) - 2) * 900


def test_the_stream_needs_an_admin_token(settings):
    assert requests.get(f"{settings.worker_url(0)}/v1/stream", timeout=5).status_code == 401


def _orders_placed(page) -> int:
    return int(page.inner_text("#orders-placed").replace(",", "") or 0)


def test_the_dashboard_shows_counters_moving_and_an_order_timeline(shop: Shop, settings, skus):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is missing: `streamcart setup` installs it (Debian's package)"
    ARTIFACTS.mkdir(exist_ok=True)
    with OrderFlow(shop, skus) as flow, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{settings.worker_url(0)}/dashboard#token={shop.token}")
            page.wait_for_selector("#connection.ok", timeout=20_000)
            page.wait_for_function("/[0-9]/.test(document.getElementById('orders-placed').textContent)", timeout=20_000)
            before = _orders_placed(page)
            page.wait_for_function(
                f"parseInt(document.getElementById('orders-placed').textContent.replace(/,/g, '')) >= {before + 5}",
                timeout=30_000,
            )
            page.wait_for_selector("[data-outcome='confirmed']", timeout=30_000)
            page.wait_for_function("parseFloat(document.getElementById('orders-per-s').textContent) > 0",
                                   timeout=30_000)
            # The saga's flow: its steps have counts, and while orders are placed at least one has a rate.
            page.wait_for_function(
                "['PlaceOrder', 'StockReserved', 'PaymentAuthorized', 'OrderConfirmed'].every(step => "
                "/[1-9][0-9,]* in all/.test(document.querySelector(`#saga [data-step='${step}']`)?.textContent))"
                " && document.querySelector('#saga .stage.busy') !== null",
                timeout=30_000,
            )
            assert "orders in flight" in page.inner_text("#in-flight").lower()  # the heading is shown in capitals

            order_id = poll(lambda: next((o for o in flow.placed[:20] if (shop.order(o) or {}).get("status")
                                          == "CONFIRMED"), None), what="a confirmed order to look up")
            page.fill("#order-id", order_id)
            page.click("#search button")
            page.wait_for_selector("#timeline tbody tr:nth-child(4)", timeout=10_000)
            assert "CONFIRMED" in page.inner_text("#order-summary")
            events = page.locator("#timeline tbody tr td:first-child").all_inner_texts()
            assert events[0] == "OrderPlaced" and "PaymentAuthorized" in events and "OrderConfirmed" in events
            stages = page.locator("#timeline tbody tr td:nth-child(5)").all_inner_texts()
            assert any(s.startswith("+") and s.endswith(" ms") for s in stages), stages  # stage latencies shown
            page.wait_for_selector("#revenue rect", timeout=20_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def test_a_dashboard_whose_token_expires_asks_for_a_new_one_instead_of_reconnecting_with_it(settings):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is missing: `streamcart setup` installs it (Debian's package)"
    # Good for a second, plus the workers' 10 s leeway: the stream runs about 11 s, then ends.
    token = issue_token(settings.jwt_secret.get_secret_value(), "ops", ["admin"], ttl_s=1)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{settings.worker_url(0)}/dashboard#token={token}")
            page.wait_for_selector("#connection.ok", timeout=20_000)
            page.wait_for_selector("#login:not([hidden])", timeout=30_000)
            assert page.inner_text("#connection") == "token expired"
            assert "expired" in page.inner_text("#login-message")
            assert page.evaluate("sessionStorage.getItem('streamcart-token')") is None
            assert errors == []
        finally:
            browser.close()
