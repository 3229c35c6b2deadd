"""The codec: round trips, the Confluent framing, schema evolution, and a typed error for every bad value."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from schemas.avro import AvroSchema, catalog
from schemas.codec import Codec
from schemas.errors import (
    DecodeError,
    EncodeError,
    InvalidMessage,
    MalformedMessage,
    RegistryUnavailable,
    UnknownMessageType,
    UnknownSchemaError,
)
from schemas.messages import (
    MAX_ADJUSTMENT,
    MAX_LINE_QUANTITY,
    MAX_ORDER_LINES,
    MAX_UNIT_PRICE_CENTS,
    MESSAGE_TYPES,
    AdjustStock,
    AuthorizePayment,
    CancelOrder,
    Message,
    OrderLine,
    PlaceOrder,
    ReserveStock,
    UpsertProduct,
)

Make = Callable[..., Any]
ALL_TYPES = pytest.mark.parametrize("message_type", MESSAGE_TYPES.values(), ids=MESSAGE_TYPES.keys())


def frame(schema_id: int, body: bytes) -> bytes:
    return struct.pack(">BI", 0, schema_id) + body


def avro_body(schema: AvroSchema, record: dict[str, object]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(schema), record)
    return out.getvalue()


def place_order_schema_with(change: str) -> AvroSchema:
    """PlaceOrder's schema as an older version (without ``webhook_url``) or a newer one (one field more)."""
    schema = copy.deepcopy(catalog()["PlaceOrder"].schema)
    if change == "older":
        schema["fields"] = [f for f in schema["fields"] if f["name"] != "webhook_url"]
    else:
        schema["fields"].append({"name": "added_later", "type": ["null", "string"], "default": None})
    return schema


# --- round trips --------------------------------------------------------------------------------------------

@ALL_TYPES
def test_every_message_type_round_trips_with_every_field_set(codec: Codec, make: Make, message_type):
    message = make(message_type)
    assert codec.decode(codec.encode(message)) == message


@ALL_TYPES
def test_every_message_type_round_trips_with_optional_fields_empty(codec: Codec, make: Make, message_type):
    message = make(message_type, with_optionals=False)
    assert codec.decode(codec.encode(message)) == message


def test_negative_and_64_bit_integers_round_trip(codec: Codec, make: Make):
    message = make(AdjustStock, delta=-7)
    assert codec.decode(codec.encode(message)) == message
    large = make(AuthorizePayment, amount_cents=2**63 - 1)
    assert codec.decode(codec.encode(large)) == large


def test_an_encoded_value_is_magic_byte_zero_then_the_registered_schema_id(codec: Codec, make, registry):
    data = codec.encode(make(PlaceOrder))
    schema_id = registry.register("streamcart.PlaceOrder", catalog()["PlaceOrder"].text)
    assert data[0] == 0
    assert int.from_bytes(data[1:5], "big") == schema_id


def test_encode_and_decode_never_ask_the_registry_once_prepared(codec: Codec, make: Make, registry):
    registry.available = False
    for message_type in MESSAGE_TYPES.values():
        message = make(message_type)
        assert codec.decode(codec.encode(message)) == message


def test_encoding_before_prepare_raises_encode_error(registry, make: Make):
    with pytest.raises(EncodeError, match=r"prepare\(\)"):
        Codec(registry).encode(make(PlaceOrder))


def test_an_integer_beyond_64_bits_raises_encode_error(codec: Codec, make: Make):
    with pytest.raises(EncodeError, match="AuthorizePayment"):
        codec.encode(make(AuthorizePayment, amount_cents=2**64))


# --- schema evolution ---------------------------------------------------------------------------------------

def test_a_value_written_by_an_older_schema_decodes_with_the_new_fields_defaults(codec, registry, make):
    older = place_order_schema_with("older")
    old_id = registry.register("streamcart.PlaceOrder", json.dumps(older))
    expected = make(PlaceOrder, with_optionals=False)
    record = expected.model_dump(exclude={"webhook_url"})

    assert codec.decode(frame(old_id, avro_body(older, record))) == expected


def test_a_value_written_by_a_newer_schema_decodes_without_the_fields_it_added(codec: Codec, registry, make):
    newer = place_order_schema_with("newer")
    new_id = registry.register("streamcart.PlaceOrder", json.dumps(newer))
    expected = make(PlaceOrder)

    data = frame(new_id, avro_body(newer, {**expected.model_dump(), "added_later": "happy birthday"}))

    assert codec.decode(data) == expected


def test_an_unseen_schema_id_is_fetched_once_then_served_from_the_cache(codec: Codec, registry, make):
    older = place_order_schema_with("older")
    old_id = registry.register("streamcart.PlaceOrder", json.dumps(older))
    data = frame(old_id, avro_body(older, make(PlaceOrder).model_dump(exclude={"webhook_url"})))
    codec.decode(data)

    registry.available = False

    assert isinstance(codec.decode(data), PlaceOrder)


def test_an_unseen_schema_id_while_the_registry_is_down_raises_registry_unavailable_not_a_decode_error(
    codec: Codec, registry, make
):
    older = place_order_schema_with("older")
    old_id = registry.register("streamcart.PlaceOrder", json.dumps(older))
    registry.available = False

    with pytest.raises(RegistryUnavailable) as raised:
        codec.decode(frame(old_id, avro_body(older, make(PlaceOrder).model_dump(exclude={"webhook_url"}))))
    assert not isinstance(raised.value, DecodeError)  # the value is fine: retry it, never dead-letter it


# --- bad values ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [None, b"", b"\x00", b"\x00\x00\x00\x00"], ids=["none", "0", "1", "4"])
def test_a_value_shorter_than_the_header_is_malformed(codec: Codec, data):
    with pytest.raises(MalformedMessage, match="header"):
        codec.decode(data)


def test_a_wrong_magic_byte_is_malformed(codec: Codec, make: Make):
    data = codec.encode(make(PlaceOrder))
    with pytest.raises(MalformedMessage, match="magic byte 123"):
        codec.decode(b"{" + data[1:])


def test_plain_json_is_malformed(codec: Codec):
    with pytest.raises(MalformedMessage):
        codec.decode(b'{"order_id": "o-1"}')


def test_an_unknown_schema_id_raises_unknown_schema_error(codec: Codec, make: Make):
    data = codec.encode(make(PlaceOrder))
    with pytest.raises(UnknownSchemaError, match="99999"):
        codec.decode(frame(99999, data[5:]))


def test_a_truncated_body_raises_invalid_message(codec: Codec, make: Make):
    data = codec.encode(make(PlaceOrder))
    with pytest.raises(InvalidMessage, match=r"PlaceOrder body .* does not parse"):
        codec.decode(data[:-3])


def test_bytes_left_over_after_the_body_raise_invalid_message(codec: Codec, make: Make):
    data = codec.encode(make(PlaceOrder))
    with pytest.raises(InvalidMessage, match="2 bytes left over"):
        codec.decode(data + b"\x00\x00")


def test_a_body_under_another_types_schema_id_raises_a_decode_error(codec: Codec, make: Make):
    place_order = codec.encode(make(PlaceOrder))
    adjust_stock_id = codec.encode(make(AdjustStock))[:5]
    with pytest.raises(DecodeError):
        codec.decode(adjust_stock_id + place_order[5:])


def test_a_record_that_breaks_the_python_types_rules_raises_invalid_message(codec: Codec, make: Make):
    data = codec.encode(make(PlaceOrder))
    record = make(PlaceOrder).model_dump()
    record["lines"] = [OrderLine(sku="sku-1", quantity=1).model_dump() | {"quantity": 0}]
    body = avro_body(catalog()["PlaceOrder"].schema, record)

    with pytest.raises(InvalidMessage, match="not a valid PlaceOrder"):
        codec.decode(data[:5] + body)


@pytest.mark.parametrize(
    ("message_type", "field", "value"),
    [
        (PlaceOrder, "lines", [{"sku": "sku-1", "quantity": MAX_LINE_QUANTITY + 1}]),
        (PlaceOrder, "lines", [{"sku": f"sku-{n}", "quantity": 1} for n in range(MAX_ORDER_LINES + 1)]),
        (PlaceOrder, "lines", [{"sku": "sku-1", "quantity": 600}, {"sku": "sku-2", "quantity": 1},
                               {"sku": "sku-1", "quantity": 401}]),
        (UpsertProduct, "unit_price_cents", 2**62),
        (AdjustStock, "delta", 2**63 - 1),
        (AdjustStock, "delta", -(2**63)),
        (ReserveStock, "quantity", MAX_LINE_QUANTITY + 1),
    ],
    ids=["line-quantity", "lines", "one-sku-over-its-lines", "price", "delta-up", "delta-down", "reserved-quantity"],
)
def test_a_command_asking_more_than_any_order_or_stock_may_hold_raises_invalid_message(
    codec: Codec, make: Make, message_type: type[Message], field: str, value: object
):
    """Written to Kafka by anyone, such values had made an order total Avro cannot hold and stock of 2**64 (found
    by fuzzing the topics): they are dead-lettered as the API refuses them."""
    data = codec.encode(make(message_type))
    record = make(message_type).model_dump() | {field: value}
    body = avro_body(catalog()[message_type.__name__].schema, record)
    with pytest.raises(InvalidMessage, match=f"not a valid {message_type.__name__}"):
        codec.decode(data[:5] + body)
    at_most = {"lines": [{"sku": "sku-1", "quantity": MAX_LINE_QUANTITY}], "unit_price_cents": MAX_UNIT_PRICE_CENTS,
               "delta": -MAX_ADJUSTMENT, "quantity": MAX_LINE_QUANTITY}[field]
    body = avro_body(catalog()[message_type.__name__].schema, record | {field: at_most})
    assert getattr(codec.decode(data[:5] + body), field) is not None  # the limit itself is fine


@pytest.mark.parametrize(
    ("message_type", "field", "value", "fine"),
    [
        (PlaceOrder, "customer_id", "KF2\x00\n\u202eevil", "ada@example.com"),
        (PlaceOrder, "order_id", "", "o-1"),
        (PlaceOrder, "order_id", "a/b", "o.1:2"),
        (PlaceOrder, "currency", "eur", "EUR"),
        (PlaceOrder, "occurred_at", 253_402_300_800_000, 32_503_680_000_000),  # year 10000 / year 3000
        (PlaceOrder, "occurred_at", -1, 0),
        (UpsertProduct, "name", "F\x00\x1b[2J", "Fïne name"),
        (AdjustStock, "reason", "\u202e", "delivery"),
        (CancelOrder, "reason", "evil\n", "customer_request"),
    ],
)
def test_a_command_from_outside_is_held_to_what_the_api_takes(
    codec: Codec, make: Make, message_type: type[Message], field: str, value: object, fine: object
):
    """A NUL in a customer id written to Kafka had stopped the warehouse's orders sink for good, an order id of ""
    held stock for ever, and a PlaceOrder of year 292278994 stayed PENDING (found by fuzzing the topics)."""
    data = codec.encode(make(message_type))
    record = make(message_type).model_dump()
    schema = catalog()[message_type.__name__].schema
    with pytest.raises(InvalidMessage, match=f"not a valid {message_type.__name__}: {field}"):
        codec.decode(data[:5] + avro_body(schema, record | {field: value}))
    assert getattr(codec.decode(data[:5] + avro_body(schema, record | {field: fine})), field) == fine


def test_a_schema_that_is_not_a_streamcart_record_raises_unknown_message_type(codec: Codec, registry):
    foreign = {"type": "record", "name": "Invoice", "namespace": "billing",
               "fields": [{"name": "id", "type": "int"}]}
    foreign_id = registry.register("billing.Invoice", json.dumps(foreign))

    with pytest.raises(UnknownMessageType, match=r"billing\.Invoice"):
        codec.decode(frame(foreign_id, avro_body(foreign, {"id": 1})))


def test_a_schema_that_is_not_avro_raises_unknown_message_type(codec: Codec, registry):
    proto_id = registry.register("streamcart.Proto", 'syntax = "proto3"; message Thing { string id = 1; }')
    with pytest.raises(UnknownMessageType, match="not an Avro schema"):
        codec.decode(frame(proto_id, b"\x02x"))


@ALL_TYPES
def test_corrupted_values_raise_only_decode_errors(codec: Codec, make: Make, message_type: type[Message]):
    rng = random.Random(message_type.__name__)  # deterministic per type, different across types
    valid = codec.encode(make(message_type))
    for _ in range(200):
        corrupt = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            corrupt[rng.randrange(5, len(corrupt))] = rng.randrange(256)
        cut = rng.choice([len(corrupt), rng.randrange(5, len(corrupt) + 1)])
        with contextlib.suppress(DecodeError):  # anything else escaping fails the test
            codec.decode(bytes(corrupt[:cut]))


def test_random_bytes_after_a_valid_header_raise_only_decode_errors(codec: Codec, make: Make):
    rng = random.Random(7)
    header = codec.encode(make(PlaceOrder))[:5]
    for _ in range(1000):
        with contextlib.suppress(DecodeError):
            codec.decode(header + rng.randbytes(rng.randrange(0, 80)))

