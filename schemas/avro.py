"""Avro schemas derived from the message types of :mod:`schemas.messages`.

The Python types are the source of truth; ``schemas/avro/<RecordName>.avsc`` are committed artefacts that
``python -m schemas.avro`` regenerates (a unit test fails when they are stale). Every schema is parsed once
with fastavro and kept in :func:`catalog`.

Mapping: ``str`` → string, ``int`` → long, ``bool`` → boolean, ``X | None`` → union with null, a nested
:class:`~schemas.messages.Record` → a record defined once and referenced by its full name afterwards,
``tuple[X, ...]`` → array, ``dict[str, X]`` → map. A Python default becomes the Avro default, which is what
lets a newer reader fill in a field an older writer did not have.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from pydantic.fields import FieldInfo

from schemas.messages import MESSAGE_TYPES, NAMESPACE, Message, Record

#: Where the committed ``.avsc`` files live.
AVRO_DIR = Path(__file__).with_name("avro")

AvroSchema = dict[str, Any]

_PRIMITIVES: dict[object, str] = {str: "string", int: "long", bool: "boolean"}


@dataclass(frozen=True, slots=True)
class MessageSchema:
    """One message type with its Avro schema in every form the codec and the registry need."""

    type: type[Message]
    #: The schema as JSON data.
    schema: AvroSchema
    #: Compact, key-sorted JSON text: what is registered, so re-registering is always the same text.
    text: str
    #: fastavro's parsed form, reused for every read and write.
    parsed: AvroSchema

    @property
    def name(self) -> str:
        """The record name, which is also the key of :data:`schemas.messages.MESSAGE_TYPES`."""
        return self.type.__name__

    @property
    def full_name(self) -> str:
        """The namespaced record name, e.g. ``streamcart.PlaceOrder``."""
        return f"{NAMESPACE}.{self.name}"


def full_name(record_type: type[Record]) -> str:
    """The Avro full name of ``record_type``."""
    return f"{NAMESPACE}.{record_type.__name__}"


def avro_schema(record_type: type[Record]) -> AvroSchema:
    """The Avro record schema of ``record_type``, nested records defined inline the first time they occur."""
    return _define(record_type, defined=set())


@cache
def catalog() -> Mapping[str, MessageSchema]:
    """Every message schema by record name, generated and parsed once per process."""
    entries: dict[str, MessageSchema] = {}
    for name in sorted(MESSAGE_TYPES):
        message_type = MESSAGE_TYPES[name]
        schema = avro_schema(message_type)
        entries[name] = MessageSchema(
            type=message_type,
            schema=schema,
            text=json.dumps(schema, sort_keys=True, separators=(",", ":")),
            # A record schema parses to a dict (fastavro's signature allows any schema form).
            parsed=typing.cast(AvroSchema, parse_schema(schema)),
        )
    return types.MappingProxyType(entries)


def render(schema: AvroSchema) -> str:
    """``schema`` as the text of a committed ``.avsc`` file: indented, keys sorted, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path = AVRO_DIR) -> list[Path]:
    """Write one ``<RecordName>.avsc`` per message into ``directory`` and drop ``.avsc`` files of no message.

    Returns the paths written, sorted by name.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, entry in catalog().items():
        path = directory / f"{name}.avsc"
        path.write_text(render(entry.schema), encoding="utf-8")
        written.append(path)
    for stale in set(directory.glob("*.avsc")) - set(written):
        stale.unlink()
    return written


def _define(record_type: type[Record], defined: set[str]) -> AvroSchema:
    defined.add(full_name(record_type))
    schema: AvroSchema = {"type": "record", "name": record_type.__name__, "namespace": NAMESPACE}
    # Only the class's own docstring: an inherited one describes the base, not this record.
    doc = record_type.__dict__.get("__doc__")
    if doc:
        schema["doc"] = inspect.cleandoc(doc)
    schema["fields"] = [_field(field, info, defined) for field, info in record_type.model_fields.items()]
    return schema


def _field(name: str, info: FieldInfo, defined: set[str]) -> AvroSchema:
    if info.default_factory is not None:
        raise TypeError(f"field {name!r}: a default_factory has no Avro equivalent; use a plain default")
    field: AvroSchema = {"name": name}
    if info.description:
        field["doc"] = info.description
    avro_type = _avro_type(info.annotation, defined)
    if not info.is_required():
        default = info.default
        if isinstance(avro_type, list) and default is not None:
            # An Avro union's default must match its first branch.
            avro_type = [branch for branch in avro_type if branch != "null"] + ["null"]
        field["default"] = list(default) if isinstance(default, tuple) else default  # an array's default is a list
    field["type"] = avro_type
    return field


def _avro_type(annotation: Any, defined: set[str]) -> Any:
    if typing.get_origin(annotation) is typing.Annotated:  # a constrained type (``Plain | None``): its base type
        annotation = typing.get_args(annotation)[0]
    if annotation in _PRIMITIVES:
        return _PRIMITIVES[annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        if len(present) != 1 or len(args) != 2:
            raise TypeError(f"only `X | None` unions map to Avro here, not {annotation!r}")
        return ["null", _avro_type(present[0], defined)]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": _avro_type(args[0], defined)}
    if origin is dict and args and args[0] is str:
        return {"type": "map", "values": _avro_type(args[1], defined)}
    if isinstance(annotation, type) and issubclass(annotation, Record):
        name = full_name(annotation)
        # Avro allows a named type to be defined only once per schema; later uses refer to it by name.
        return name if name in defined else _define(annotation, defined)
    raise TypeError(f"no Avro mapping for {annotation!r}")


def main() -> None:
    """``python -m schemas.avro``: regenerate the committed ``.avsc`` files."""
    paths = write_schemas()
    print(f"wrote {len(paths)} schemas to {AVRO_DIR}")


if __name__ == "__main__":
    main()
