"""The schema registry: a thin wrapper over confluent-kafka's client, and an in-memory fake for tests.

Subjects follow the RecordNameStrategy (``streamcart.PlaceOrder``), so one topic can carry several message
types and any Confluent-style consumer resolves a value by the schema id in its header. Both implementations
satisfy :class:`Registry`, which is all the codec needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

# The client raises httpx2's or httpx's network errors, whichever it picked; its own shim names that one.
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError

from schemas.avro import catalog
from schemas.errors import RegistryError, RegistryUnavailable, UnknownSchemaError
from streamcart.settings import Settings

#: Every message schema must stay readable by every older and newer version of itself.
FULL_TRANSITIVE = "FULL_TRANSITIVE"

#: How long one HTTP attempt to the registry may wait (seconds); with the client's default 3 retries and their
#: backoff, a call to a registry that never answers gives up after about 45 s.
TIMEOUT_S = 10

# HTTP statuses after which the same request may well succeed later.
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class Registry(Protocol):
    """What streamcart asks of a schema registry."""

    def register(self, subject: str, schema_json: str) -> int:
        """Register an Avro schema under ``subject`` (a no-op if it already is) and return its id."""
        ...

    def schema_by_id(self, schema_id: int) -> str:
        """The schema text registered under ``schema_id``; :class:`UnknownSchemaError` if there is none."""
        ...

    def set_compatibility(self, subject: str, level: str) -> None:
        """Make the registry reject new versions of ``subject`` that are not ``level``-compatible."""
        ...


def subject_for(record_name: str) -> str:
    """The subject of a message type under the RecordNameStrategy, e.g. ``streamcart.PlaceOrder``."""
    return catalog()[record_name].full_name


def register_schemas(registry: Registry, *, compatibility: str | None = None) -> dict[str, int]:
    """Register every message schema; return record name → schema id.

    With ``compatibility``, each subject's compatibility level is set too, after registering: a registry may
    keep a rule only for a subject that exists (Apicurio's ccompat API does). The first version has nothing to
    be compatible with, and every later one is checked against the level set on the run that registered it.
    """
    ids: dict[str, int] = {}
    for name, entry in catalog().items():
        ids[name] = registry.register(entry.full_name, entry.text)
        if compatibility is not None:
            registry.set_compatibility(entry.full_name, compatibility)
    return ids


def register_all(settings: Settings) -> dict[str, int]:
    """Register every message schema with the registry of ``settings``, FULL_TRANSITIVE; name → schema id."""
    with ConfluentRegistry(settings.registry_url) as registry:
        return register_schemas(registry, compatibility=FULL_TRANSITIVE)


class ConfluentRegistry:
    """A Confluent-compatible registry (the real one, or Apicurio's ccompat API) via confluent-kafka's client.

    The client caches ids and schemas itself, so asking twice costs one HTTP request.
    """

    def __init__(self, url: str, conf: Mapping[str, Any] | None = None) -> None:
        """``conf``: further ``SchemaRegistryClient`` settings, e.g. ``{"max.retries": 0, "timeout": 5}``.

        Each HTTP attempt waits :data:`TIMEOUT_S` at most unless ``conf`` says otherwise (the client then retries,
        3 times by default, so a call gives up after about 45 s). The client's own default is no limit: a registry
        that accepts connections but never answers held ``streamcart up`` (or a worker's event loop, decoding a
        schema id it had not seen) for ever. A timeout is :class:`RegistryUnavailable`, tried again like any
        outage."""
        self.url = url
        self._client = SchemaRegistryClient({"timeout": TIMEOUT_S, **(conf or {}), "url": url})

    @classmethod
    def from_settings(cls, settings: Settings) -> ConfluentRegistry:
        return cls(settings.registry_url)

    def register(self, subject: str, schema_json: str) -> int:
        try:
            return self._client.register_schema(subject, Schema(schema_json, schema_type="AVRO"))
        except (SchemaRegistryError, httpx.TransportError) as exc:
            raise _wrap(exc, f"registering {subject}", self.url) from exc

    def schema_by_id(self, schema_id: int) -> str:
        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaError(f"the registry has no schema with id {schema_id}") from exc
            raise _wrap(exc, f"fetching schema id {schema_id}", self.url) from exc
        except httpx.TransportError as exc:
            raise _wrap(exc, f"fetching schema id {schema_id}", self.url) from exc
        except Exception as exc:  # a 2xx that is no registry's answer (a proxy's page, an empty body)
            raise RegistryUnavailable(f"schema registry answered no schema for id {schema_id}: "
                                      f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(getattr(schema, "schema_str", None), str):
            raise RegistryUnavailable(f"schema registry answered id {schema_id} without its text")
        return str(schema.schema_str)

    def set_compatibility(self, subject: str, level: str) -> None:
        try:
            self._client.set_compatibility(subject, level)
        except (SchemaRegistryError, httpx.TransportError) as exc:
            raise _wrap(exc, f"setting {subject} to {level}", self.url) from exc

    def close(self) -> None:
        """Close the HTTP session."""
        self._client.close()

    def __enter__(self) -> ConfluentRegistry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _wrap(exc: Exception, doing: str, url: str) -> RegistryError:
    if isinstance(exc, SchemaRegistryError):
        if exc.http_status_code in _TRANSIENT_STATUSES:
            return RegistryUnavailable(f"schema registry failed {doing}: {exc}")
        return RegistryError(f"schema registry refused {doing}: {exc}")
    # (Not the schema first: every command registers them all, so the first one's name says nothing of the cause.)
    return RegistryUnavailable(f"the schema registry at {url} does not answer ({exc}; {doing}): is the stack up "
                               "(`streamcart status`)?")


class InMemoryRegistry:
    """A registry held in a dict, for tests: same interface and id semantics as a Confluent registry.

    The same schema text gets the same id whichever subject registers it. Set ``available = False`` to make
    every call fail as an unreachable registry would.
    """

    def __init__(self, first_id: int = 1) -> None:
        self.available = True
        self.subjects: dict[str, list[int]] = {}
        self.compatibility: dict[str, str] = {}
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, str] = {}
        self._next_id = first_id

    def register(self, subject: str, schema_json: str) -> int:
        self._check_available()
        schema_id = self._ids.get(schema_json)
        if schema_id is None:
            schema_id = self._ids[schema_json] = self._next_id
            self._schemas[schema_id] = schema_json
            self._next_id += 1
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    def schema_by_id(self, schema_id: int) -> str:
        self._check_available()
        try:
            return self._schemas[schema_id]
        except KeyError:
            raise UnknownSchemaError(f"the registry has no schema with id {schema_id}") from None

    def set_compatibility(self, subject: str, level: str) -> None:
        self._check_available()
        self.compatibility[subject] = level

    def _check_available(self) -> None:
        if not self.available:
            raise RegistryUnavailable("in-memory registry set unavailable")
