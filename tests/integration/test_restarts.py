"""Workers and Kafka stopped and started again while orders flow (issues 5 and 7).

Each restart once stalled orders on both workers for one to two minutes in some runs: the survivor's rebalance
waited forever for a message faust had dropped from one agent's queue (agents/transport.py,
``Consumer.wait_empty``), and an open event stream held the stopping worker until it was killed (api/stream.py).
"""

from __future__ import annotations

import time
from collections import Counter

from tests.integration.support import wait_until_worker_0_owns_every_partition
from tests.integration.test_dashboard import OrderFlow, shop, skus  # noqa: F401 (fixtures)
from tests.integration.test_saga import Shop
from tests.integration.test_saga_failures import (
    OUTCOMES,
    assert_a_fresh_order_confirms,
    assert_money_nets_out,
    events_of,
    settle_all,
)

ROUNDS = 3


def test_a_worker_restarted_again_and_again_while_orders_flow_stalls_nothing_and_every_order_settles_once(
    shop: Shop, settings, stack, skus  # noqa: F811
):
    # A steady trickle: enough to cross every restart, not so much that the backlog of a 10 s handover (the
    # stopped static member's session timeout) is what a fresh order waits for.
    with OrderFlow(shop, skus, limit=100_000, every_s=0.4) as flow:
        for round_ in range(ROUNDS):
            stack.stop("worker-1")
            wait_until_worker_0_owns_every_partition(settings)
            stack.start("worker-1")
            started = time.monotonic()
            assert_a_fresh_order_confirms(shop)  # within its deadline: nothing stalls after the restart
            print(f"round {round_}: a fresh order confirmed {time.monotonic() - started:.1f} s after the restart")
    settled = settle_all(shop, flow.placed, timeout_s=120)
    print(f"{len(flow.placed)} orders placed meanwhile: {Counter(o['status'] for o in settled.values())}")
    for order_id, order in settled.items():
        events = events_of(order)
        assert events.count("OrderPlaced") == 1, (order_id, events)
        assert sum(events.count(e) for e in OUTCOMES) == 1, (order_id, events)


def test_kafka_restarted_then_killed_while_orders_flow_loses_no_worker_and_every_order_settles_once(
    shop: Shop, settings, stack, skus  # noqa: F811
):
    """Every worker once aborted when Kafka went away: librdkafka's admin client, which read the consumer lag,
    fails an assertion when the broker drops a ListConsumerGroupOffsets request (api/stream.py, Observer).

    The first round stops Kafka gracefully; the second SIGKILLs it, as a crash would: requests in flight are lost
    and sent again (the workers' producers are not idempotent, so a record may land twice: consumers drop it)."""
    with OrderFlow(shop, skus, limit=100_000, every_s=0.4) as flow:
        for round_ in range(2):
            if round_ == 0:
                stack.restart("kafka")
            else:
                stack.kill("kafka")
                stack.start("kafka")
            assert_a_fresh_order_confirms(shop)
            alive = {name: stack.is_running(name) for name in ("worker-0", "worker-1")}
            assert all(alive.values()), f"after Kafka's restart {round_ + 1}: {alive}"
    settled = settle_all(shop, flow.placed, timeout_s=120)
    outcomes = Counter(o["status"] for o in settled.values())
    print(f"{len(flow.placed)} orders placed across two Kafka restarts: {outcomes}")
    for order_id, order in settled.items():
        events = events_of(order)
        assert events.count("OrderPlaced") == 1, (order_id, events)
        assert sum(events.count(e) for e in OUTCOMES) == 1, (order_id, events)
    assert_money_nets_out(shop, settled)
