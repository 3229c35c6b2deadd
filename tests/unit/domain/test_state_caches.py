"""A read order is decoded and rendered once per stored version (GET /v1/orders/{id} answers from that)."""

from __future__ import annotations

import json

from domain_builders import place

from api.orders import RenderedOrders, order_json
from streamcart.domain.orders import decide


def test_an_order_is_rendered_once_per_stored_version_and_keeps_its_customer_for_the_access_check():
    order = decide(None, place(), saga_timeout_ms=30_000).state
    assert order is not None
    raw = order.model_dump_json().encode()
    rendered = RenderedOrders(size=1)
    customer, body = rendered.answer(raw)
    assert customer == order.customer_id
    assert json.loads(body) == json.loads(json.dumps(order_json(order)))
    assert rendered.answer(raw)[1] is body  # not rendered again
    newer = order.model_copy(update={"status": "CANCELLED"})
    assert json.loads(rendered.answer(newer.model_dump_json().encode())[1])["status"] == "CANCELLED"
    assert rendered.answer(raw)[1] is not body  # the oldest answer made room (size 1), so it is rendered anew
