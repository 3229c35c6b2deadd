"""A stored state is decoded once per stored value and an answered order rendered once per version."""

from __future__ import annotations

import json

from domain_builders import place

from api.app import RenderedOrders, order_json
from streamcart.domain.catalog import ProductState
from streamcart.domain.orders import decide
from tables.typed import ModelTable


def test_one_decoded_instance_per_stored_value_and_a_new_one_when_it_changes():
    table = ModelTable({}, ProductState)
    table.table["KB-1"] = (b'{"sku": "KB-1", "name": "Keyboard", "unit_price_cents": 100, "currency": "EUR", '
                           b'"active": true, "updated": {"event_id": "e-1", "at": 1}}')
    first = table.get("KB-1")
    assert first is not None and first.unit_price_cents == 100
    assert table.get("KB-1") is first
    changed = first.model_copy(update={"unit_price_cents": 200})
    table.put("KB-1", changed)
    assert table.get("KB-1") is changed  # what was just written, without decoding it again
    assert table.get("missing") is None


def test_an_order_is_rendered_once_per_version():
    order = decide(None, place(), saga_timeout_ms=30_000).state
    assert order is not None
    rendered = RenderedOrders(size=2)
    body = rendered.body(order)
    assert json.loads(body) == json.loads(json.dumps(order_json(order)))
    assert rendered.body(order) is body
    newer = order.model_copy(update={"status": "CANCELLED"})
    assert json.loads(rendered.body(newer))["status"] == "CANCELLED"
