"""What an agent knows about the message it handles reaches its log lines and the records it sends."""

import io
import json
import logging

import pytest

from agents.app import build_runtime
from schemas.messages import OrderLine, PlaceOrder, ReserveStock
from streamcart.logs import JsonFormatter
from streamcart.settings import Settings
from streamcart.tracing import new_traceparent, trace_id


@pytest.fixture
def runtime(codec, sink, tmp_path):
    return build_runtime(Settings(home=tmp_path, partitions=4), codec, store="memory://", sink=sink)


@pytest.fixture
def json_lines():
    """Every record logged during the test, as the JSON objects a worker would print."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(level)


def place(order_id: str = "o-1") -> PlaceOrder:
    return PlaceOrder(
        event_id="e-1", occurred_at=1_000, causation_id="e-1", correlation_id=order_id, order_id=order_id,
        customer_id="c-1", lines=(OrderLine(sku="A", quantity=2),), currency="EUR", payment_token="tok_approve",
    )


async def test_a_log_line_written_while_a_message_is_handled_carries_its_ids(runtime, codec, json_lines):
    parent = new_traceparent()
    stray = ReserveStock(  # not an orders message: the flow fails on it and says so in the log
        event_id="e-9", occurred_at=1, causation_id="e-9", correlation_id="o-9", sku="A", order_id="o-9",
        quantity=1, currency="EUR",
    )
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(stray), key=b"o-9", headers={"traceparent": parent.encode()})
    about_it = [e for e in json_lines() if e["logger"] == "agents.runtime"]
    assert about_it, "the failure was not logged"
    for entry in about_it:
        assert (entry["order_id"], entry["event_id"], entry["flow"]) == ("o-9", "e-9", "orders")
        assert entry["trace_id"] == trace_id(parent)
    assert any("FlowError" in e.get("exception", "") for e in about_it)


async def test_nothing_of_a_handled_message_stays_in_the_context_after_it(runtime, codec, json_lines):
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place()), key=b"o-1", headers={"traceparent": new_traceparent().encode()})
    logging.getLogger("after").warning("later")
    (after,) = [e for e in json_lines() if e["logger"] == "after"]
    assert not {"order_id", "event_id", "trace_id", "flow"} & after.keys()


async def test_the_records_a_message_causes_continue_its_trace(runtime, codec, sink):
    parent = new_traceparent()
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place()), key=b"o-1", headers={"traceparent": parent.encode()})
    sent = [s.headers["traceparent"].decode() for s in sink.sent]
    assert len(sent) >= 2  # OrderPlaced and one ReserveStock (and the order's warehouse rows)
    assert {trace_id(t) for t in sent} == {trace_id(parent)}
    assert len(set(sent)) == 1 and parent not in sent  # their parent is the span that handled PlaceOrder
