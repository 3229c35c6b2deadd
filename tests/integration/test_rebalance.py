"""A worker stopped in the middle of a burst (a rebalance): every order settles once (issue 5).

This once lost 2-3 orders in some runs: the stopped worker's agents were cancelled mid-message, and faust's stream
iteration acknowledges an event in a ``finally`` clause, so those messages were committed unprocessed. The agent
loops now acknowledge only handled events (agents/runtime.py, tests/unit/agents/test_consume.py).
"""

from __future__ import annotations

from collections import Counter

import pytest

from streamcart.stack import Stack
from tests.integration.support import http_json, wait_until_worker_0_owns_every_partition
from tests.integration.test_saga import Shop
from tests.integration.test_saga_failures import Burst, assert_a_fresh_order_confirms, settle_all


@pytest.fixture(scope="module")
def shop(stack, settings, codec) -> Shop:
    return Shop(settings, codec)


def test_a_worker_stopped_mid_burst_hands_its_partitions_over_and_every_order_settles_once(
    shop: Shop, stack: Stack
):
    burst = Burst.stocked(shop, plenty_stock=2_000, scarce_stock=20)
    try:
        burst.produce(600, disrupt_after=200, disrupt=lambda: stack.stop("worker-1"))
        assert not stack.is_running("worker-1")
        # The survivor takes every partition over.
        wait_until_worker_0_owns_every_partition(shop.settings)
        settled = settle_all(shop, burst.order_ids, timeout_s=240)
        print(f"600 orders terminal: {Counter(b['status'] + ':' + str(b['cancel_reason']) for b in settled.values())}")
        burst.check_invariants(settled)
        assert_a_fresh_order_confirms(shop)  # on the surviving worker alone
    finally:
        stack.start("worker-1")  # so later tests have both workers again
    assert http_json(f"{shop.settings.worker_url(1)}/readyz")[0] == 200


