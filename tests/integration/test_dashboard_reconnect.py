"""The live dashboard reconnects by itself after its worker restarts (issue 7)."""

from __future__ import annotations

import json
import shutil

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from tests.integration.support import wait_until_worker_0_owns_every_partition
from tests.integration.test_dashboard import OrderFlow, _orders_placed, shop, skus  # noqa: F401 (fixtures)
from tests.integration.test_saga import Shop
from tests.integration.test_saga_failures import assert_a_fresh_order_confirms


def test_the_dashboard_reconnects_by_itself_after_its_worker_restarts(shop: Shop, settings, stack, skus):  # noqa: F811
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is missing: `streamcart setup` installs it (Debian's package)"
    # Orders flow until the end (a stop, a handover and a restart take longer than the default flow's 40 s on a
    # loaded machine; once it ran dry the figures had nothing left to move with).
    with OrderFlow(shop, skus, limit=100_000) as flow, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{settings.worker_url(1)}/dashboard#token={shop.token}")
            page.wait_for_selector("#connection.ok", timeout=20_000)
            try:
                stack.stop("worker-1")
                page.wait_for_selector("#connection.bad", timeout=20_000)  # it says it lost the stream
                last_tick = page.inner_text("#updated")  # the figures stay those of the last tick before the stop
                # A full handover before the restart (as after any stop): the survivor owns every partition.
                wait_until_worker_0_owns_every_partition(settings)
            finally:
                stack.start("worker-1")
            page.wait_for_selector("#connection.ok", timeout=60_000)  # and came back without a reload
            # A tick of the restarted worker's stream: the page keeps the last tick's figures until then, and the
            # new stream's totals hold worker-1's counts since its restart only (its earlier run's counts were
            # kept by the stream that ended with it; worker-0's stream keeps them).
            page.wait_for_function(f"document.getElementById('updated').textContent !== {json.dumps(last_tick)}",
                                   timeout=20_000)
            before, flowed = _orders_placed(page), len(flow.placed)
            try:
                page.wait_for_function(
                    f"parseInt(document.getElementById('orders-placed').textContent.replace(/,/g, '')) >= "
                    f"{before + 3}", timeout=60_000,
                )  # the figures move again
            except PlaywrightTimeout:
                raise AssertionError(
                    f"orders placed stayed near {before} for 60 s while the flow placed {len(flow.placed) - flowed} "
                    f"more (it failed: {flow.failed!r}); the dashboard said {page.inner_text('#connection')!r}, "
                    f"{page.inner_text('#updated')!r}, lag {page.inner_text('#lag')!r}"
                ) from None
        finally:
            browser.close()
    assert_a_fresh_order_confirms(shop)  # and the saga goes on with both workers
