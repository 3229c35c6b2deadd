"""The Avro schemas generated from the Python types, and the committed ``.avsc`` files that match them."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.avro import AVRO_DIR, avro_schema, catalog, render, write_schemas
from schemas.messages import MESSAGE_TYPES, OrderLine, Record


def fields(record_name: str) -> dict[str, dict]:
    return {field["name"]: field for field in catalog()[record_name].schema["fields"]}


def test_committed_avsc_files_equal_what_the_generator_produces_now():
    committed = {path.stem: path.read_text(encoding="utf-8") for path in AVRO_DIR.glob("*.avsc")}
    generated = {name: render(entry.schema) for name, entry in catalog().items()}

    names = committed.keys() | generated.keys()
    stale = sorted(name for name in names if committed.get(name) != generated.get(name))

    assert not stale, f"schemas/avro/ is stale for {stale}: run `python -m schemas.avro` and commit it"


def test_every_message_type_has_a_record_schema_named_after_its_class_in_the_streamcart_namespace():
    assert catalog().keys() == MESSAGE_TYPES.keys()
    for name, entry in catalog().items():
        assert entry.schema["type"] == "record"
        assert (entry.schema["namespace"], entry.schema["name"]) == ("streamcart", name)
        assert entry.full_name == f"streamcart.{name}"


def test_the_class_docstring_becomes_the_record_doc_and_an_inherited_one_does_not():
    assert catalog()["PlaceOrder"].schema["doc"].startswith("A customer asks for an order.")
    assert "doc" not in catalog()["UpsertProduct"].schema  # its own class has no docstring


def test_python_types_map_to_avro_types():
    place_order = fields("PlaceOrder")
    assert place_order["order_id"]["type"] == "string"
    assert place_order["occurred_at"]["type"] == "long"
    assert place_order["lines"]["type"]["type"] == "array"
    assert place_order["lines"]["type"]["items"]["name"] == "OrderLine"
    assert fields("UpsertProduct")["active"]["type"] == "boolean"
    assert fields("OutcomeWindow")["cancelled_by_reason"]["type"] == {"type": "map", "values": "long"}


def test_an_optional_field_is_a_union_with_null_first_defaulting_to_null():
    webhook_url = {"name": "webhook_url", "type": ["null", "string"], "default": None}
    assert fields("PlaceOrder")["webhook_url"] == webhook_url


def test_a_python_default_becomes_the_avro_default():
    assert fields("CancelOrder")["reason"]["default"] == "customer_request"
    assert fields("UpsertProduct")["active"]["default"] is True
    assert "default" not in fields("PlaceOrder")["order_id"]


def test_a_field_description_becomes_the_field_doc():
    assert fields("PlaceOrder")["occurred_at"]["doc"] == "event time, epoch milliseconds"


class _TwoLists(Record):
    """A record using the same nested record twice."""

    wanted: tuple[OrderLine, ...]
    sent: tuple[OrderLine, ...]


def test_a_nested_record_is_defined_once_and_referenced_by_full_name_afterwards():
    schema = avro_schema(_TwoLists)
    wanted, sent = schema["fields"]

    assert wanted["type"]["items"]["name"] == "OrderLine"
    assert sent["type"]["items"] == "streamcart.OrderLine"


def test_a_nested_record_is_defined_again_in_each_message_that_uses_it():
    # Each .avsc stands alone: a registry or a consumer reads it without any other file.
    assert fields("PlaceOrder")["lines"]["type"]["items"]["type"] == "record"
    assert fields("OrderPlaced")["lines"]["type"]["items"]["type"] == "record"


def test_write_schemas_writes_one_sorted_pretty_file_per_message_and_removes_stale_ones(tmp_path: Path):
    (tmp_path / "Retired.avsc").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("kept\n")

    written = write_schemas(tmp_path)

    assert [path.name for path in written] == sorted(f"{name}.avsc" for name in MESSAGE_TYPES)
    assert {path.name for path in tmp_path.iterdir()} == {path.name for path in written} | {"notes.txt"}
    text = (tmp_path / "PlaceOrder.avsc").read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == catalog()["PlaceOrder"].schema


def test_the_registered_text_is_the_same_schema_as_the_committed_file():
    entry = catalog()["PlaceOrder"]
    assert json.loads(entry.text) == json.loads((AVRO_DIR / "PlaceOrder.avsc").read_text())
    assert "\n" not in entry.text


def test_every_schema_is_generated_and_parsed_once_per_process():
    assert catalog() is catalog()
    assert catalog()["PlaceOrder"].parsed["__fastavro_parsed"]
