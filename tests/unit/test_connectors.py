"""The warehouse sink configurations and their registration through Connect's REST API (a fake Connect here)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from streamcart import connectors
from streamcart.connectors import ConnectError
from streamcart.domain.warehouse import TABLES
from streamcart.settings import Settings
from streamcart.topics import Topics

SETTINGS = Settings(topic_prefix="shop.", app_id="sc", postgres_host="db", postgres_port=5432)


def test_there_is_one_sink_per_warehouse_table_writing_its_topic_into_its_table():
    loaded = connectors.load(SETTINGS)
    topics = Topics.from_settings(SETTINGS)
    by_topic = {c.config["topics"]: c for c in loaded}
    assert sorted(by_topic) == sorted(topics.warehouse.values())
    for table in TABLES:
        assert by_topic[topics.warehouse[table.name]].config["collection.name.format"] == table.name


def test_every_sink_upserts_by_record_key_evolves_the_schema_and_dead_letters_with_context():
    for connector in connectors.load(SETTINGS):
        config = connector.config
        assert config["connector.class"] == "io.debezium.connector.jdbc.JdbcSinkConnector"
        assert (config["insert.mode"], config["primary.key.mode"], config["schema.evolution"]) == (
            "upsert", "record_key", "basic")
        assert config["errors.tolerance"] == "all"
        assert config["errors.deadletterqueue.topic.name"] == Topics.from_settings(SETTINGS).warehouse_dlq
        assert config["errors.deadletterqueue.context.headers.enable"] == "true"
        assert config["connection.url"] == "jdbc:postgresql://db:5432/warehouse"
        assert config["connection.password"] == "${env:STREAMCART_POSTGRES_PASSWORD}"  # resolved by Connect
        assert connector.name.startswith("sc-warehouse-")


def test_every_sink_writes_a_batch_as_one_statement_with_the_last_state_of_each_row():
    for connector in connectors.load(SETTINGS):
        config = connector.config
        assert config["use.reduction.buffer"] == "true"  # one upsert per primary key and batch: its last state
        assert config["dialect.postgres.unnest.insert.enabled"] == "true"  # the batch as one INSERT ... UNNEST
        assert int(config["batch.size"]) >= 500


def test_an_unknown_placeholder_fails_before_anything_reaches_connect(tmp_path: Path):
    (tmp_path / "bad.json").write_text('{"name": "x", "config": {"topics": "{{nope}}"}}')
    with pytest.raises(ConnectError, match="nope"):
        connectors.load(SETTINGS.model_copy(update={"connectors_dir": tmp_path}))


class FakeConnect(BaseHTTPRequestHandler):
    """Connect's config endpoints: GET and PUT ``/connectors/{name}/config``."""

    configs: dict[str, dict[str, str]] = {}
    puts: list[str] = []

    def do_GET(self) -> None:
        name = self.path.split("/")[2]
        if name in self.configs:
            self._answer(200, {**self.configs[name], "name": name})
        else:
            self._answer(404, {"error_code": 404, "message": f"Connector {name} not found"})

    def do_PUT(self) -> None:
        name = self.path.split("/")[2]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        created = name not in self.configs
        self.configs[name] = body
        self.puts.append(name)
        self._answer(201 if created else 200, {"name": name, "config": body})

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def connect() -> Iterator[Settings]:
    FakeConnect.configs, FakeConnect.puts = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeConnect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield SETTINGS.model_copy(update={"connect_host": "127.0.0.1", "connect_port": server.server_address[1]})
    finally:
        server.shutdown()


def test_applying_creates_the_sinks_then_changes_nothing_then_updates_a_changed_one(connect: Settings):
    first = connectors.apply(connect)
    assert set(first.values()) == {"created"} and len(first) == len(TABLES)
    assert set(connectors.apply(connect).values()) == {"unchanged"}
    assert len(FakeConnect.puts) == len(TABLES)  # the second run sent nothing
    name = next(iter(first))
    FakeConnect.configs[name]["tasks.max"] = "3"  # changed by hand in Connect
    assert connectors.apply(connect)[name] == "updated"


def test_an_unreachable_connect_is_one_clear_error():
    with pytest.raises(ConnectError, match="does not answer"):
        connectors.apply(SETTINGS.model_copy(update={"connect_host": "127.0.0.1", "connect_port": 1}))


def test_a_sink_counts_as_past_the_rows_it_dead_lettered_at_the_end_of_a_partition():
    offsets = {
        ("connect-a", "t", 0): (5, 7),  # the last two rows dead-lettered: caught up
        ("connect-a", "t", 1): (5, 7),  # the first of the two dead-lettered, the second not written yet: behind
        ("connect-a", "t", 2): (3, 3),  # caught up
        ("connect-b", "t", 0): (5, 7),  # another sink reading the same rows: those letters are not its own
    }
    letters = {("connect-a", "t", 0, 5), ("connect-a", "t", 0, 6), ("connect-a", "t", 1, 5),
               ("connect-a", "t", 2, 3)}  # an older letter, before the sink's position
    assert connectors.past_dead_letters(offsets, letters) == {
        ("connect-a", "t", 0): (7, 7),
        ("connect-a", "t", 1): (6, 7),
        ("connect-a", "t", 2): (3, 3),
        ("connect-b", "t", 0): (5, 7),
    }
    assert connectors.past_dead_letters(offsets, set()) == offsets
