"""Errors of the schemas package.

The tree separates what a consumer must do about a failure: a :class:`DecodeError` means *this value* will
never decode (dead-letter it and go on); a :class:`RegistryUnavailable` means the value may be fine but the
registry cannot be asked right now (retry; never dead-letter for it).
"""

from __future__ import annotations

from streamcart.errors import StreamcartError


class SchemaError(StreamcartError):
    """Root of every error raised by the schemas package."""


class RegistryError(SchemaError):
    """The schema registry refused a request, e.g. a schema incompatible with earlier versions."""


class RegistryUnavailable(RegistryError):
    """The schema registry could not be reached or answered with a server error; worth retrying later."""


class EncodeError(SchemaError):
    """A message could not be encoded (codec not prepared, or a value Avro cannot hold)."""


class DecodeError(SchemaError):
    """A value can never be decoded into a message; dead-letter it."""


class MalformedMessage(DecodeError):
    """The bytes are not in Confluent wire format (too short or wrong magic byte)."""


class UnknownSchemaError(DecodeError):
    """The registry has no schema with the id the value names."""


class UnknownMessageType(DecodeError):
    """The writer schema is not one of streamcart's message records."""


class InvalidMessage(DecodeError):
    """The Avro body does not parse with its writer schema, or the result is not a valid message."""
