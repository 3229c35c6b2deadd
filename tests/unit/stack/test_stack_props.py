"""The configuration files the stack's Java processes read, rendered from Settings."""

from __future__ import annotations

import re
from pathlib import Path

from streamcart.settings import Settings
from streamcart.stack import props


def parse_properties(text: str) -> dict[str, str]:
    """Just enough of java.util.Properties to read back what render_properties writes."""
    values = {}
    for line in text.splitlines():
        key, _, value = re.split(r"(?<!\\)(=)", line, maxsplit=1)
        values[re.sub(r"\\(.)", r"\1", key)] = value.replace("\\n", "\n").replace("\\\\", "\\")
    return values


def test_properties_keep_order_and_render_booleans_the_java_way() -> None:
    text = props.render_properties({"b.key": True, "a.key": 3, "c.key": False})
    assert text == "b.key=true\na.key=3\nc.key=false\n"


def test_properties_escape_separators_in_keys_and_backslashes_and_newlines_in_values() -> None:
    values = {"odd key=with:separators": "C:\\data\\kafka", "multi": "line one\nline two"}
    text = props.render_properties(values)
    assert len(text.splitlines()) == 2
    assert parse_properties(text) == values


def test_kafka_listens_on_the_configured_loopback_ports_and_never_auto_creates_topics() -> None:
    settings = Settings(kafka_port=19092, controller_port=19093)
    rendered = parse_properties(props.render_properties(props.kafka_server_properties(settings, Path("/x"))))
    assert rendered["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert rendered["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert rendered["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert rendered["auto.create.topics.enable"] == "false"
    assert rendered["group.initial.rebalance.delay.ms"] == "0"
    assert rendered["offsets.topic.replication.factor"] == "1"
    assert rendered["log.dirs"] == "/x"
    # A group's positions outlive every record they point into (the event topics keep theirs for ever).
    assert int(rendered["offsets.retention.minutes"]) >= 10 * 365 * 24 * 60


def test_connect_worker_uses_its_own_port_and_topics_named_after_the_app() -> None:
    settings = Settings(connect_port=18083, kafka_port=19092, app_id="itest")
    rendered = parse_properties(props.render_properties(props.connect_worker_properties(settings, Path("/plugins"))))
    assert rendered["listeners"] == "http://127.0.0.1:18083"
    assert rendered["bootstrap.servers"] == "127.0.0.1:19092"
    assert rendered["config.storage.topic"] == "itest.connect.configs"
    assert rendered["offset.storage.topic"] == "itest.connect.offsets"
    assert rendered["status.storage.topic"] == "itest.connect.status"
    assert rendered["group.id"] == "itest.connect"
    assert rendered["plugin.path"] == "/plugins"
    assert rendered["consumer.session.timeout.ms"] == "10000"
    assert rendered["value.converter.schemas.enable"] == "true"


def test_connect_sink_tasks_fetch_in_batches() -> None:
    rendered = parse_properties(props.render_properties(props.connect_worker_properties(Settings(), Path("/p"))))
    assert int(rendered["consumer.fetch.min.bytes"]) > 1
    assert 0 < int(rendered["consumer.fetch.max.wait.ms"]) <= 500  # what a warehouse row may wait for its batch


def test_registry_keeps_its_state_in_kafka_on_the_configured_port_and_loopback_only() -> None:
    settings = Settings(registry_port=18085, kafka_port=19092, app_id="itest")
    env = props.registry_env(settings, Path("/data/registry"))
    assert env["APICURIO_STORAGE_KIND"] == "kafkasql"
    assert env["APICURIO_KAFKASQL_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"
    assert env["QUARKUS_HTTP_PORT"] == "18085"
    assert env["QUARKUS_HTTP_HOST"] == "127.0.0.1"
    assert env["QUARKUS_MANAGEMENT_HOST"] == "127.0.0.1"
    assert env["APICURIO_KAFKASQL_TOPIC"] == "itest.registry.journal"
    assert env["APICURIO_STORAGE_SNAPSHOT_LOCATION"] == "/data/registry"


def test_cluster_ids_are_22_url_safe_characters_unique_and_never_look_like_an_option() -> None:
    # One random id in 64 would start with "-": 2000 draws all but certainly meet one if it can happen.
    ids = {props.new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id) for cluster_id in ids)
