"""The one codec of streamcart: messages to Confluent wire-format bytes and back.

Wire format: magic byte 0, the writer schema's registry id (4 bytes, big-endian), then the Avro binary body
without a container header. Any Kafka client or Connect converter with access to the registry reads what this
writes, and this reads what they write for streamcart's records. The faust agents and the confluent-kafka
producers share this class, so there is one encoding, not two that agree by luck.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import SchemaParseException
from pydantic import ValidationError

from schemas.avro import AvroSchema, catalog
from schemas.errors import EncodeError, InvalidMessage, MalformedMessage, UnknownMessageType
from schemas.messages import NAMESPACE, Message
from schemas.registry import ConfluentRegistry, Registry, register_schemas
from streamcart.settings import Settings

MAGIC_BYTE = 0
_HEADER = struct.Struct(">BI")


@dataclass(frozen=True, slots=True)
class _Writer:
    """How to encode one message type: its ready-made 5-byte header and parsed schema."""

    header: bytes
    schema: AvroSchema


@dataclass(frozen=True, slots=True)
class _Reader:
    """How to decode one schema id: the writer schema, and the reader schema if the two differ."""

    type: type[Message]
    writer: AvroSchema
    # None when the writer schema is our own: fastavro then skips schema resolution entirely.
    reader: AvroSchema | None


class Codec:
    """Encodes messages to Confluent wire format and decodes them back, against one registry.

    Call :meth:`prepare` once before use: it registers every message schema and caches the ids, so
    :meth:`encode` never calls the registry and :meth:`decode` calls it only for an id it has not seen (a
    schema written by an older or newer version of streamcart), once per id.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._writers: dict[type[Message], _Writer] = {}
        self._readers: dict[int, _Reader] = {}

    @classmethod
    def connect(cls, settings: Settings) -> Codec:
        """A prepared codec against the registry named by ``settings``."""
        codec = cls(ConfluentRegistry.from_settings(settings))
        codec.prepare()
        return codec

    def prepare(self) -> None:
        """Register every message schema (a no-op for those already registered) and cache their ids.

        Raises :class:`~schemas.errors.RegistryError` if the registry refuses a schema, e.g. as incompatible
        with an earlier version, or :class:`~schemas.errors.RegistryUnavailable` if it cannot be reached.
        """
        schemas = catalog()
        for name, schema_id in register_schemas(self._registry).items():
            entry = schemas[name]
            self._writers[entry.type] = _Writer(_HEADER.pack(MAGIC_BYTE, schema_id), entry.parsed)
            self._readers[schema_id] = _Reader(entry.type, entry.parsed, None)

    def encode(self, message: Message) -> bytes:
        """``message`` in Confluent wire format, under the id of its current schema.

        Raises :class:`~schemas.errors.EncodeError` if the codec is not prepared or a value does not fit its
        Avro type (e.g. an int beyond 64 bits).
        """
        writer = self._writers.get(type(message))
        if writer is None:
            raise EncodeError(f"no schema id for {type(message).__name__}: call Codec.prepare() first")
        out = BytesIO()
        out.write(writer.header)
        try:
            schemaless_writer(out, writer.schema, message.model_dump())
        except (ValueError, TypeError, OverflowError) as exc:
            raise EncodeError(f"cannot encode {type(message).__name__}: {exc}") from exc
        return out.getvalue()

    def decode(self, data: bytes | None) -> Message:
        """The message in ``data`` (Confluent wire format), as the current Python type of its record.

        A value written with an older or newer schema version is resolved against the current one. Raises a
        :class:`~schemas.errors.DecodeError` when the value can never decode (dead-letter it), or
        :class:`~schemas.errors.RegistryUnavailable` when its schema cannot be fetched right now (retry it).
        """
        if data is None or len(data) < _HEADER.size:
            size = "no value" if data is None else f"{len(data)} bytes"
            raise MalformedMessage(f"{size}: shorter than the {_HEADER.size}-byte Confluent header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise MalformedMessage(f"magic byte {magic}, expected {MAGIC_BYTE}: not Confluent wire format")
        reader = self._readers.get(schema_id) or self._fetch(schema_id)
        body = BytesIO(data)
        body.seek(_HEADER.size)
        try:
            record = schemaless_reader(body, reader.writer, reader.reader)
        except Exception as exc:
            # Corrupt input makes fastavro raise whatever its reading step hits (EOFError, IndexError,
            # UnicodeDecodeError, SchemaResolutionError, ...); for untrusted bytes each means the same thing.
            raise InvalidMessage(
                f"{reader.type.__name__} body (schema id {schema_id}) does not parse: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if body.tell() != len(data):
            # The writer schema consumed less than the whole value: the id does not belong to these bytes.
            raise InvalidMessage(
                f"{reader.type.__name__} body (schema id {schema_id}) has "
                f"{len(data) - body.tell()} bytes left over"
            )
        try:
            return reader.type.model_validate(record)
        except ValidationError as exc:
            faults = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the record'}: {e['msg']} (got {e['input']!r:.60})"
                               for e in exc.errors(include_url=False))
            raise InvalidMessage(f"not a valid {reader.type.__name__}: {faults}") from exc

    def _fetch(self, schema_id: int) -> _Reader:
        """Ask the registry for a schema id not seen yet, and cache how to read it."""
        text = self._registry.schema_by_id(schema_id)
        try:
            writer: Any = parse_schema(json.loads(text))
        except (ValueError, TypeError, KeyError, SchemaParseException) as exc:
            raise UnknownMessageType(f"schema id {schema_id} is not an Avro schema: {exc}") from exc
        name = writer.get("name", "") if isinstance(writer, dict) and writer.get("type") == "record" else ""
        namespace, _, record_name = name.rpartition(".")
        entry = catalog().get(record_name) if namespace == NAMESPACE else None
        if entry is None:
            what = name or "not a record"
            raise UnknownMessageType(f"schema id {schema_id} is {what}, not a streamcart message")
        reader = _Reader(entry.type, writer, None if writer == entry.parsed else entry.parsed)
        self._readers[schema_id] = reader
        return reader
