"""The registry wrappers: subject naming, the in-memory fake, and how the real client's failures are typed.

The real client is exercised against a tiny local HTTP server that answers like a Confluent registry, so its
error wrapping is tested without a registry running.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from schemas.avro import catalog
from schemas.errors import DecodeError, RegistryError, RegistryUnavailable, UnknownSchemaError
from schemas.messages import MESSAGE_TYPES
from schemas.registry import (
    FULL_TRANSITIVE,
    ConfluentRegistry,
    InMemoryRegistry,
    register_schemas,
    subject_for,
)

NO_RETRIES = {"max.retries": 0}


def test_subjects_follow_the_record_name_strategy():
    assert subject_for("PlaceOrder") == "streamcart.PlaceOrder"


def test_register_schemas_registers_every_message_under_its_record_name_subject(registry: InMemoryRegistry):
    ids = register_schemas(registry)

    assert ids.keys() == MESSAGE_TYPES.keys()
    assert len(set(ids.values())) == len(ids)
    assert registry.subjects == {f"streamcart.{name}": [schema_id] for name, schema_id in ids.items()}
    assert registry.compatibility == {}


def test_register_schemas_is_idempotent(registry: InMemoryRegistry):
    assert register_schemas(registry) == register_schemas(registry)


def test_register_schemas_sets_each_subjects_compatibility_when_asked(registry: InMemoryRegistry):
    register_schemas(registry, compatibility=FULL_TRANSITIVE)
    assert registry.compatibility == {f"streamcart.{name}": FULL_TRANSITIVE for name in MESSAGE_TYPES}


def test_the_in_memory_registry_gives_one_schema_the_same_id_under_any_subject(registry: InMemoryRegistry):
    text = catalog()["PlaceOrder"].text
    assert registry.register("a", text) == registry.register("b", text)
    assert registry.schema_by_id(registry.register("a", text)) == text


def test_the_in_memory_registry_raises_unknown_schema_error_for_an_unknown_id(registry: InMemoryRegistry):
    with pytest.raises(UnknownSchemaError, match="42"):
        registry.schema_by_id(42)


def test_an_unavailable_in_memory_registry_raises_registry_unavailable(registry: InMemoryRegistry):
    registry.available = False
    with pytest.raises(RegistryUnavailable):
        registry.register("streamcart.PlaceOrder", catalog()["PlaceOrder"].text)


# --- the real client against a scripted HTTP server ---------------------------------------------------------

class _Scripted(BaseHTTPRequestHandler):
    """Answers every request with the status and JSON body the test put on the server."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.requests.append((self.command, self.path, self.rfile.read(length)))  # type: ignore[attr-defined]
        status, body = self.server.answer  # type: ignore[attr-defined]
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()  # bytes: sent as they are
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[HTTPServer]:
    httpd = HTTPServer(("127.0.0.1", 0), _Scripted)
    httpd.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def client(server: HTTPServer) -> ConfluentRegistry:
    return ConfluentRegistry(f"http://127.0.0.1:{server.server_port}/apis/ccompat/v7", NO_RETRIES)


def test_register_posts_the_avro_schema_to_the_subject_and_returns_its_id(server):
    server.answer = (200, {"id": 7})
    with client(server) as registry:
        assert registry.register("streamcart.PlaceOrder", catalog()["PlaceOrder"].text) == 7

    method, path, body = server.requests[0]
    assert method == "POST"
    assert path.split("?")[0] == "/apis/ccompat/v7/subjects/streamcart.PlaceOrder/versions"
    assert json.loads(json.loads(body)["schema"]) == catalog()["PlaceOrder"].schema


def test_schema_by_id_returns_the_schema_text(server):
    server.answer = (200, {"schema": catalog()["PlaceOrder"].text})
    with client(server) as registry:
        assert registry.schema_by_id(3) == catalog()["PlaceOrder"].text


def test_an_unknown_schema_id_at_the_registry_raises_unknown_schema_error(server):
    server.answer = (404, {"error_code": 40403, "message": "Schema not found"})
    with client(server) as registry, pytest.raises(UnknownSchemaError, match="id 12"):
        registry.schema_by_id(12)


def test_an_incompatible_schema_raises_registry_error_naming_the_subject(server):
    server.answer = (409, {"error_code": 409, "message": "Incompatible schema"})
    with client(server) as registry, pytest.raises(RegistryError, match=r"streamcart\.PlaceOrder") as raised:
        registry.register("streamcart.PlaceOrder", catalog()["PlaceOrder"].text)
    assert not isinstance(raised.value, RegistryUnavailable)


def test_set_compatibility_puts_the_level_on_the_subject(server):
    server.answer = (200, {"compatibility": FULL_TRANSITIVE})
    with client(server) as registry:
        registry.set_compatibility("streamcart.PlaceOrder", FULL_TRANSITIVE)

    method, path, body = server.requests[0]
    assert (method, path) == ("PUT", "/apis/ccompat/v7/config/streamcart.PlaceOrder")
    assert json.loads(body) == {"compatibility": FULL_TRANSITIVE}


def test_a_server_error_raises_registry_unavailable_and_is_not_a_decode_error(server):
    server.answer = (503, {"error_code": 50003, "message": "storage not ready"})
    with client(server) as registry, pytest.raises(RegistryUnavailable, match="503") as raised:
        registry.schema_by_id(1)
    assert not isinstance(raised.value, DecodeError)


def test_a_registry_nobody_listens_on_raises_registry_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    registry = ConfluentRegistry(f"http://127.0.0.1:{port}", NO_RETRIES)
    with registry, pytest.raises(RegistryUnavailable,
                                 match=rf"the schema registry at http://127.0.0.1:{port} does not answer .*is the "
                                       r"stack up \(`streamcart status`\)\?"):
        registry.schema_by_id(1)


def test_a_registry_that_accepts_connections_but_never_answers_is_unavailable_after_the_timeout(monkeypatch):
    import time

    import schemas.registry

    monkeypatch.setattr(schemas.registry, "TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections are taken (by the kernel) and never answered
        registry = ConfluentRegistry(f"http://127.0.0.1:{silent.getsockname()[1]}", NO_RETRIES)
        started = time.monotonic()
        with registry, pytest.raises(RegistryUnavailable):
            registry.schema_by_id(1)
        assert time.monotonic() - started < 5  # without a timeout the client waits for ever


@pytest.mark.parametrize("answer", [(200, b"<html>gateway</html>"), (200, b""), (200, b"[]"), (200, {"schema": 3})],
                         ids=["html", "empty", "list", "not-text"])
def test_an_answer_that_is_no_schema_is_the_registrys_trouble_not_the_messages(server, answer):
    """A proxy's page or an empty 200: raised as anything else, it escaped the flows' guard (the agent crashed);
    unavailable, the flow waits for the registry."""
    server.answer = answer
    with client(server) as registry, pytest.raises(RegistryUnavailable) as raised:
        registry.schema_by_id(5)
    assert not isinstance(raised.value, DecodeError)
