"""The dashboard page in a real browser (chromium) against the API on a test server: what it does with a refused
token, where the revenue bars go, and what it says while the analytics are unavailable. The stream's events are fed
by hand through a stand-in EventSource (the real stream is the integration tests')."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, async_playwright

from api.app import init_app
from api.auth import issue_token
from tests.component.test_api_orders import SECRET, SETTINGS, FakeWorker

#: An EventSource whose events the test sends (``window.__sources``).
FAKE_EVENT_SOURCE = """
window.__sources = [];
class FakeEventSource extends EventTarget {
  constructor(url) { super(); this.url = url; this.readyState = 1; window.__sources.push(this); }
  close() { this.readyState = 2; }
  emit(type, data) { this.dispatchEvent(new MessageEvent(type, { data: JSON.stringify(data) })); }
}
FakeEventSource.CLOSED = 2;
window.EventSource = FakeEventSource;
"""


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    server = TestServer(init_app(SETTINGS, FakeWorker()))
    await server.start_server()
    try:
        yield str(server.make_url("/"))
    finally:
        await server.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is missing: `streamcart setup` installs it (Debian's package)"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


def tick(**fields: Any) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {"type": "tick", "at": now, "workers": [{"worker": 0, "breaker": "closed", "tables": {}}],
            "workers_expected": 1, "orders_placed": 10, "orders_per_s": 1.0, "outcomes": {"confirmed": 5},
            "saga_latency_ms": {"p50": 100, "p99": 200, "count": 5}, "saga_steps": {}, "in_flight": 0,
            "dlq_records": 0, "warehouse_dlq_records": 0, "dead_letters": [],
            "consumer_lag": {"total": 0, "by_partition": {}}, "stock": [], **fields}


async def emit(page: Page, kind: str, data: dict[str, Any]) -> None:
    await page.evaluate("([kind, data]) => window.__sources.at(-1).emit(kind, data)", [kind, data])


@pytest.mark.parametrize(("roles", "ttl_s", "badge"), [(["customer"], 3600, "not an admin"),
                                                       (["admin"], -60, "token refused")],
                         ids=["not-an-admin", "expired"])
async def test_a_token_the_stream_refuses_asks_for_another_instead_of_retrying_it(base_url, browser, roles, ttl_s,
                                                                                  badge):
    """Before, the page asked again with the same token every 2 s for ever, saying "reconnecting…"."""
    page = await browser.new_page()
    asked: list[int] = []
    page.on("response", lambda response: asked.append(response.status) if "/v1/stream" in response.url else None)
    await page.goto(f"{base_url}dashboard#token={issue_token(SECRET, 'c-1', roles, ttl_s=ttl_s)}")
    await page.wait_for_selector("#login:not([hidden])", timeout=15_000)
    assert await page.inner_text("#connection") == badge
    assert await page.evaluate("() => sessionStorage.getItem('streamcart-token')") is None
    settled = len(asked)
    await page.wait_for_timeout(2_500)  # longer than the page's reconnect pause: nothing more is asked
    assert len(asked) == settled <= 2


async def test_revenue_bars_stand_in_their_own_minute_and_currencies_are_never_added(base_url, browser):
    page = await browser.new_page()
    await page.add_init_script(FAKE_EVENT_SOURCE)
    await page.goto(f"{base_url}dashboard#token={issue_token(SECRET, 'ops', ['admin'])}")
    now = int(time.time() * 1000)
    minute = now - now % 60_000
    revenue = [{"window_start": minute - 12 * 60_000, "final": True, "by_currency": {"EUR": 100_000}},
               {"window_start": minute - 11 * 60_000, "final": True, "by_currency": {"USD": 250_000, "EUR": 5_000}}]
    await emit(page, "tick", tick(revenue_per_minute=revenue, at=now))
    bars = await page.eval_on_selector_all(
        "#revenue rect", "bars => bars.map(b => [Number(b.getAttribute('x')), b.querySelector('title').textContent])")
    slot = 600 / 15
    assert [x for x, _ in bars] == [2 * slot + 2, 3 * slot + 2, 3 * slot + 2]  # minutes 2 and 3 of the 15
    assert [title.split(": ", 1)[1] for _, title in bars] == ["1,000.00 EUR", "50.00 EUR", "2,500.00 USD"]
    legend = await page.inner_text("#revenue-legend")
    assert legend.startswith("this minute: nothing yet")  # 11 minutes ago is not this minute
    # Event times ahead of the clock (orders timed ahead): the slots end at the latest window.
    ahead = [{"window_start": minute + 3 * 60_000, "final": False, "by_currency": {"EUR": 700}}]
    await emit(page, "tick", tick(revenue_per_minute=[*revenue, *ahead], at=now))
    xs = await page.eval_on_selector_all("#revenue rect", "bars => bars.map(b => Number(b.getAttribute('x')))")
    assert xs == [2, 2, 14 * slot + 2]  # 12 minutes ago is out of the 15 up to 3 minutes ahead; 11 is the first


async def test_analytics_figures_of_an_earlier_tick_say_so_and_the_badge_comes_back_live(base_url, browser):
    page = await browser.new_page()
    await page.add_init_script(FAKE_EVENT_SOURCE)
    await page.goto(f"{base_url}dashboard#token={issue_token(SECRET, 'ops', ['admin'])}")
    await emit(page, "unavailable", {"type": "unavailable", "reason": "a peer did not answer", "at": 0})
    assert (await page.inner_text("#connection")).startswith("partial")
    await emit(page, "tick", tick(analytics_unavailable="no worker answered for partition(s) [3]"))
    assert await page.inner_text("#connection") == "live"
    stale = await page.inner_text("#analytics-stale")
    assert "analytics unavailable" in stale and "partition(s) [3]" in stale
    await emit(page, "tick", tick(revenue_per_minute=[], top_skus=[]))
    assert await page.is_hidden("#analytics-stale")


async def test_a_page_opened_without_a_token_says_so_and_asks_for_one(base_url, browser):
    """It said "connecting…" for ever (and the browser's console had a favicon 404)."""
    page = await browser.new_page()
    missing: list[str] = []
    page.on("response", lambda response: missing.append(response.url) if response.status == 404 else None)
    await page.goto(f"{base_url}dashboard")
    await page.wait_for_selector("#login:not([hidden])", timeout=15_000)
    assert await page.inner_text("#connection") == "no token"
    assert missing == []
