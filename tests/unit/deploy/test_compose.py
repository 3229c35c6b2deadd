"""docker-compose.yml cannot run here (no Docker engine): its wiring is checked against what the code reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from streamcart.cli import app as cli
from streamcart.connectors import load as load_connectors
from streamcart.settings import Settings
from streamcart.stack import props

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")
_REQUIRED = re.compile(r"\$\{(\w+):\?([^}]*)\}")
#: What the host sets for each variable Compose requires (``${NAME:?why}``).
HOST_SETS = {"STREAMCART_JWT_SECRET": "a-secret-the-user-made-of-32-or-more-bytes"}


def env(service: str) -> dict[str, str]:
    """A service's environment as the container sees it when the host sets only what Compose requires."""
    raw = SERVICES[service].get("environment", {})
    return {k: _REQUIRED.sub(lambda m: HOST_SETS[m.group(1)], _DEFAULTED.sub(lambda m: m.group(2), str(v)))
            for k, v in raw.items()}


def settings_of(service: str) -> Settings:
    """The settings a streamcart process of ``service`` reads (STREAMCART_* only, as load_settings does)."""
    values = {k.removeprefix("STREAMCART_").lower(): v for k, v in env(service).items() if k.startswith("STREAMCART_")}
    return Settings(**values)


def streamcart_services() -> list[str]:
    return [name for name, service in SERVICES.items() if service.get("build")]


def bindings(service: str) -> list[tuple[str, int, int]]:
    """Each published port as (host address, host port, container port); the address is "" when none is named
    (Docker then listens on every interface)."""
    rows = []
    for spec in SERVICES[service].get("ports", []):
        address, _, ports = str(spec).rpartition(":")
        address, _, host = address.rpartition(":")
        rows.append((address, int(host), int(ports)))
    return rows


def published(service: str) -> dict[int, int]:
    """Container port → host port."""
    return {container: host for _, host, container in bindings(service)}


def test_every_dependency_exists_and_is_waited_on_by_its_health_or_completion():
    for name, service in SERVICES.items():
        for target, rule in (service.get("depends_on") or {}).items():
            assert target in SERVICES, f"{name} depends on unknown {target}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{name} waits for {target}'s health; it has no check"
            else:
                assert rule["condition"] == "service_completed_successfully"
                assert SERVICES[target].get("restart") == "no", f"{target} must be a one-shot service"


def test_every_long_running_service_has_a_healthcheck():
    for name, service in SERVICES.items():
        if service.get("restart") != "no":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_every_published_port_listens_on_loopback_only():
    published_anywhere = {name: bindings(name) for name in SERVICES if SERVICES[name].get("ports")}
    assert len(published_anywhere) == 9  # kafka, registry, postgres, connect, gateway, 2 workers, prometheus, grafana
    for name, rows in published_anywhere.items():
        for address, host, _ in rows:
            assert address == "127.0.0.1", f"{name} publishes {host} on {address or 'every interface'}"


def test_kafka_advertises_its_published_listener_at_the_address_it_is_published_on():
    (address, host, container), = bindings("kafka")
    assert f"EXTERNAL://{address}:{host}" in env("kafka")["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"EXTERNAL://:{container}" in env("kafka")["KAFKA_LISTENERS"].split(",")


def test_the_design_topology_is_there():
    for name in ("kafka", "registry", "connect", "postgres", "gateway", "init", "prometheus", "grafana"):
        assert name in SERVICES
    workers = sorted(name for name in SERVICES if name.startswith("worker-"))
    assert workers == [f"worker-{i}" for i in range(settings_of("worker-0").workers)]
    assert len(workers) == 2


@pytest.mark.parametrize("service", streamcart_services())
def test_streamcart_processes_find_every_service_where_it_listens(service: str):
    s = settings_of(service)
    kafka = env("kafka")
    assert f"PLAINTEXT://{s.bootstrap_servers}" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f":{s.kafka_port}" in kafka["KAFKA_LISTENERS"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert (s.registry_host, s.registry_port) == ("registry", 8080) and 8080 in published("registry")
    assert s.connect_host == "connect" and s.connect_port in published("connect")
    assert s.postgres_host == "postgres" and s.postgres_port == 5432 and 5432 in published("postgres")
    assert s.gateway_host == "gateway" and s.gateway_port in published("gateway")
    pg = env("postgres")
    assert (pg["POSTGRES_USER"], pg["POSTGRES_DB"]) == (s.postgres_user, s.postgres_db)
    assert pg["POSTGRES_PASSWORD"] == s.postgres_password.get_secret_value()
    assert s.host == "0.0.0.0"  # reachable from the other containers


def test_each_worker_serves_the_api_on_its_published_port_and_every_worker_names_every_other_one():
    workers = sorted(n for n in SERVICES if n.startswith("worker-"))
    for index, name in enumerate(workers):
        s = settings_of(name)
        assert SERVICES[name]["command"] == ["worker", "--index", str(index)]
        assert s.workers == len(workers)
        # Lists, analytics and the dashboard are gathered from every worker: each must reach each by name.
        assert [s.worker_url(i) for i in range(s.workers)] == [f"http://{w}:8080" for w in workers]
        assert s.worker_port(index) in published(name)
        assert f"localhost:{s.worker_port(index)}/healthz" in " ".join(SERVICES[name]["healthcheck"]["test"])


def test_connect_uses_the_topics_partitions_and_converters_the_stack_creates():
    s, connect = settings_of("init"), env("connect")
    topics = props.connect_topics(s)
    assert (connect["CONFIG_STORAGE_TOPIC"], connect["OFFSET_STORAGE_TOPIC"], connect["STATUS_STORAGE_TOPIC"]) == (
        topics["config"], topics["offset"], topics["status"])
    assert int(connect["CONNECT_OFFSET_STORAGE_PARTITIONS"]) == props.CONNECT_TOPIC_PARTITIONS["offset"]
    assert int(connect["CONNECT_STATUS_STORAGE_PARTITIONS"]) == props.CONNECT_TOPIC_PARTITIONS["status"]
    assert connect["BOOTSTRAP_SERVERS"] == s.bootstrap_servers
    assert connect["VALUE_CONVERTER"] == "org.apache.kafka.connect.json.JsonConverter"


def test_connect_can_resolve_every_env_reference_of_the_sinks():
    connect = env("connect")
    assert connect["CONNECT_CONFIG_PROVIDERS"] == "env"
    in_repo = settings_of("init").model_copy(update={"connectors_dir": None})  # /app/connectors is the same folder
    wanted = {m for c in load_connectors(in_repo) for v in c.config.values()
              for m in re.findall(r"\$\{env:(\w+)\}", v)}
    assert wanted and wanted <= set(connect)
    assert connect["STREAMCART_POSTGRES_PASSWORD"] == settings_of("init").postgres_password.get_secret_value()


def test_the_registry_keeps_its_state_in_the_topics_the_stack_names():
    registry, s = env("registry"), settings_of("init")
    assert registry["APICURIO_STORAGE_KIND"] == "kafkasql"
    assert registry["APICURIO_KAFKASQL_BOOTSTRAP_SERVERS"] == s.bootstrap_servers
    assert registry["APICURIO_KAFKASQL_TOPIC"] == props.registry_topics(s)["journal"]


def test_init_runs_a_command_the_cli_has_against_every_service_it_prepares():
    assert SERVICES["init"]["command"] == ["init"]
    assert "init" in {c.name or c.callback.__name__ for c in cli.registered_commands}
    assert set(SERVICES["init"]["depends_on"]) >= {"kafka", "registry", "connect", "postgres"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert settings_of("init").connectors_dir == Path("/app/connectors")
    assert "WORKDIR /app" in dockerfile and "COPY connectors ./connectors" in dockerfile


def test_prometheus_scrapes_every_worker_where_it_listens():
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    workers = sorted(n for n in SERVICES if n.startswith("worker-"))
    assert targets == {f"{n}:{settings_of(n).worker_port(i)}" for i, n in enumerate(workers)}


def test_grafana_is_provisioned_with_the_dashboard_and_the_prometheus_datasource():
    mounts = " ".join(SERVICES["grafana"]["volumes"])
    assert "./deploy/grafana/provisioning:" in mounts and "./deploy/grafana/dashboards:" in mounts
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert (ROOT / "deploy/grafana/dashboards/streamcart.json").is_file()


def test_kafka_keeps_its_log_on_its_volume():
    """The image writes to /tmp/kraft-combined-logs unless told: every topic would go with the container."""
    (volume,) = SERVICES["kafka"]["volumes"]
    assert volume.split(":", 1)[1] == env("kafka")["KAFKA_LOG_DIRS"]


def test_the_gateway_keeps_its_ledger_on_a_named_volume_in_its_home():
    """`docker compose down && up` keeps it: a capture, void or refund then finds its authorization."""
    (volume,) = SERVICES["gateway"]["volumes"]
    name, path = volume.split(":", 1)
    assert name in COMPOSE["volumes"] and path == settings_of("gateway").home.as_posix()


def test_connect_saves_its_sinks_positions_as_often_as_the_local_stack():
    local = props.connect_worker_properties(settings_of("init"), Path("/plugins"))
    assert int(env("connect")["OFFSET_FLUSH_INTERVAL_MS"]) == local["offset.flush.interval.ms"]


def test_the_workers_secret_has_no_default_in_compose_and_would_be_refused_if_it_were_the_development_one():
    """Compose's workers listen on the network: with the development secret (in streamcart's source) anyone there
    could mint an admin token, so Compose asks the host for one and a worker started with it there refuses."""
    from streamcart.settings import DEVELOPMENT_JWT_SECRET

    required = {m.group(1) for m in _REQUIRED.finditer(yaml.safe_dump(COMPOSE))}
    assert required == {"STREAMCART_JWT_SECRET"}
    for service in streamcart_services():
        assert not settings_of(service).exposed_with_development_secret(), service
        exposed = settings_of(service).model_copy(update={"jwt_secret": SecretStr(DEVELOPMENT_JWT_SECRET)})
        assert exposed.exposed_with_development_secret(), service


def test_the_build_context_leaves_out_what_a_checkout_gathers_and_keeps_what_the_dockerfile_copies():
    """Without it `docker compose up --build` sends the virtualenv, caches and the local stack's state (GBs)."""
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".cache", ".tools", ".streamcart", ".git"} <= ignored
    copied = {word.rstrip("/") for line in (ROOT / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ") and "--from" not in line for word in line.split()[1:-1]}
    assert {"streamcart", "agents", "connectors"} <= copied and not copied & ignored
