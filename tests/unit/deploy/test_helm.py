"""The Helm chart, rendered with ``helm template`` for a few value sets; every manifest is validated against the
Kubernetes schemas (kubernetes-validate) and its settings against what the code reads."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamcart.settings import DEVELOPMENT_JWT_SECRET, Settings
from tests.unit.deploy.test_alerts import promrules

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "deploy" / "helm" / "streamcart"
KUBERNETES = "1.33.0"
SECRETS = {"secrets.jwtSecret": "jwt-secret-of-the-helm-test-0123456789", "secrets.postgresPassword": "pw"}
STRIMZI = {
    "secrets.existingSecret": "streamcart-secrets",
    "kafka.host": "shop-kafka-bootstrap.kafka.svc",
    "kafka.port": "9092",
    "connect.host": "shop-connect-api.kafka.svc",
    "registry.host": "apicurio.registry.svc",
    "warehouse.host": "warehouse-rw.db.svc",
    "gateway.deploy": "false",
    "gateway.host": "payments.example.internal",
    "workers.replicas": "4",
    "workers.persistence.storageClassName": "fast",
}


def helm() -> str:
    found = shutil.which("helm", path=str(ROOT / ".tools" / "bin")) or shutil.which("helm")
    if found is None:
        pytest.fail("helm is not installed: `make setup` builds it into .tools/bin (go install)")
    return found


def render(values: dict[str, str], namespace: str = "shop") -> subprocess.CompletedProcess[str]:
    sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    return subprocess.run([helm(), "template", "t", str(CHART), "--namespace", namespace, *sets],
                          capture_output=True, text=True, check=False, timeout=60)


def manifests(values: dict[str, str]) -> list[dict[str, Any]]:
    done = render(values)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def settings_from(env: dict[str, Any]) -> Settings:
    plain = {k.removeprefix("STREAMCART_").lower(): v for k, v in env.items()
             if k.startswith("STREAMCART_") and isinstance(v, str)}
    return Settings(**plain)


@pytest.mark.parametrize("values", [SECRETS, STRIMZI, {**SECRETS, "init.enabled": "false", "metrics.scrape": "false"}],
                         ids=["defaults", "strimzi", "minimal"])
def test_every_manifest_is_valid_kubernetes(values: dict[str, str]):
    docs = manifests(values)
    assert {"StatefulSet", "Service"} <= {doc["kind"] for doc in docs}  # it rendered the chart, not nothing
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_workers_are_a_stateful_set_with_a_volume_each_probes_and_a_stable_index():
    docs = manifests(SECRETS)
    (workers,) = of_kind(docs, "StatefulSet")
    pod = workers["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert workers["spec"]["replicas"] == 2
    assert workers["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": str(Settings(home=Path("/var/lib/streamcart")).home)} in \
        container["volumeMounts"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--index \"${HOSTNAME##*-}\"" in container["command"][-1]  # pod ordinal = worker index
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"


def test_every_setting_the_chart_passes_is_one_the_code_reads():
    docs = manifests(SECRETS)
    fields = set(Settings.model_fields)
    for doc in of_kind(docs, "StatefulSet") + of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            names = {k.removeprefix("STREAMCART_").lower() for k in env_of(container) if k.startswith("STREAMCART_")}
            assert names <= fields, names - fields


@pytest.mark.parametrize("values", [SECRETS, STRIMZI], ids=["defaults", "strimzi"])
def test_every_streamcart_container_gets_settings_it_accepts_naming_every_worker(values: dict[str, str]):
    """The init Job, each worker's init container and the gateway read the same settings as the workers: one they
    refuse keeps its pod from ever running."""
    docs = manifests(values)
    (workers,) = of_kind(docs, "StatefulSet")
    pods = [f"{workers['metadata']['name']}-{i}.{workers['spec']['serviceName']}.shop.svc"
            for i in range(workers["spec"]["replicas"])]
    checked = 0
    for doc in of_kind(docs, "StatefulSet") + of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        spec = doc["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            settings = settings_from(env_of(container))
            assert [settings.worker_url(i) for i in range(settings.workers)] == [f"http://{p}:8080" for p in pods]
            checked += 1
    assert checked == (4 if values is SECRETS else 3)  # the gateway is not deployed against an existing cluster


def test_workers_listen_where_the_services_and_probes_point_and_name_each_other_by_pod():
    docs = manifests(SECRETS)
    (workers,) = of_kind(docs, "StatefulSet")
    (container,) = workers["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    settings = settings_from(env)
    assert settings.worker_port(1) == container["ports"][0]["containerPort"] == 8080  # the same port on every pod
    # Worker i is the StatefulSet's pod i behind its headless service: every worker names every other one.
    service, pod = workers["spec"]["serviceName"], workers["metadata"]["name"]
    assert [settings.worker_url(i) for i in range(settings.workers)] == [
        f"http://{pod}-{i}.{service}.shop.svc:8080" for i in range(workers["spec"]["replicas"])]
    pod_labels = workers["spec"]["template"]["metadata"]["labels"]
    for service in of_kind(docs, "Service"):
        if "worker" in service["metadata"]["name"] or service["metadata"]["name"].endswith("-api"):
            assert service["spec"]["selector"].items() <= pod_labels.items()


def test_secrets_come_from_a_secret_never_from_plain_values():
    docs = manifests(STRIMZI)
    assert of_kind(docs, "Secret") == []  # an existing Secret is used as it is
    (workers,) = of_kind(docs, "StatefulSet")
    env = env_of(workers["spec"]["template"]["spec"]["containers"][0])
    for name, key in (("STREAMCART_JWT_SECRET", "jwt-secret"), ("STREAMCART_POSTGRES_PASSWORD", "postgres-password")):
        assert env[name] == {"secretKeyRef": {"name": "streamcart-secrets", "key": key}}


def test_against_an_existing_cluster_the_settings_name_its_services():
    docs = manifests(STRIMZI)
    (workers,) = of_kind(docs, "StatefulSet")
    settings = settings_from(env_of(workers["spec"]["template"]["spec"]["containers"][0]))
    assert settings.bootstrap_servers == "shop-kafka-bootstrap.kafka.svc:9092"
    assert settings.connect_url == "http://shop-connect-api.kafka.svc:8083"
    assert settings.jdbc_url == "jdbc:postgresql://warehouse-rw.db.svc:5432/warehouse"
    assert settings.gateway_url == "http://payments.example.internal:8090"
    assert of_kind(docs, "Deployment") == []  # no test gateway when a real provider is named
    assert workers["spec"]["replicas"] == 4
    assert workers["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"


def test_the_deployed_gateway_is_the_one_the_workers_call():
    docs = manifests(SECRETS)
    (gateway,) = of_kind(docs, "Deployment")
    service = next(s for s in of_kind(docs, "Service") if s["metadata"]["name"].endswith("-gateway"))
    (workers,) = of_kind(docs, "StatefulSet")
    settings = settings_from(env_of(workers["spec"]["template"]["spec"]["containers"][0]))
    assert settings.gateway_url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert gateway["spec"]["template"]["spec"]["containers"][0]["args"] == ["gateway"]
    # Its ledger outlives the pod (an upgrade, a reschedule): captures, voids and refunds find their authorization.
    (claim,) = of_kind(docs, "PersistentVolumeClaim")
    (volume,) = gateway["spec"]["template"]["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (mount,) = gateway["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert (mount["name"], mount["mountPath"]) == (volume["name"], settings.home.as_posix())
    assert gateway["spec"]["strategy"] == {"type": "Recreate"}  # one pod at a time holds the volume
    security = gateway["spec"]["template"]["spec"]["securityContext"]
    assert security["fsGroup"] == security["runAsUser"]  # a new volume is root's: the gateway could not write


def test_the_init_job_prepares_topics_schemas_and_sinks_and_each_worker_waits_for_its_topics():
    docs = manifests(SECRETS)
    (job,) = of_kind(docs, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["init"]
    # The Job may not have run when a worker starts (nothing orders them): a worker's topics are made first.
    (workers,) = of_kind(docs, "StatefulSet")
    (first,) = workers["spec"]["template"]["spec"]["initContainers"]
    assert first["args"] == ["init", "--no-connectors"]
    assert env_of(first).items() <= env_of(workers["spec"]["template"]["spec"]["containers"][0]).items()
    assert "initContainers" not in of_kind(manifests({**SECRETS, "init.enabled": "false"}), "StatefulSet")[0][
        "spec"]["template"]["spec"]


def test_an_external_gateway_must_be_named():
    unnamed = render({**SECRETS, "gateway.deploy": "false"})
    assert unnamed.returncode != 0 and "gateway.host is required" in unnamed.stderr


def test_whole_numbers_from_a_values_file_reach_the_settings_as_whole_numbers(tmp_path):
    """A values file's numbers are floats to Helm: 1048576 would render "1.048576e+06", refused by the settings."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"partitions": 12, "workers": {"replicas": 3, "consumerFetchMinBytes": 1048576,
                                                                    "producerLingerMs": 5}}))
    done = subprocess.run([helm(), "template", "t", str(CHART), "--namespace", "shop", "-f", str(values),
                           *(arg for k, v in SECRETS.items() for arg in ("--set", f"{k}={v}"))],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    (workers,) = of_kind([d for d in yaml.safe_load_all(done.stdout) if d], "StatefulSet")
    settings = settings_from(env_of(workers["spec"]["template"]["spec"]["containers"][0]))
    assert (settings.partitions, settings.workers, settings.consumer_fetch_min_bytes) == (12, 3, 1048576)


def test_a_long_release_name_still_makes_pods():
    """A StatefulSet name over 52 characters cannot make pods (its controller-revision-hash label passes 63)."""
    done = subprocess.run([helm(), "template", "a" * 53, str(CHART), "--namespace", "shop",
                           *(arg for k, v in SECRETS.items() for arg in ("--set", f"{k}={v}"))],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    (workers,) = of_kind([d for d in yaml.safe_load_all(done.stdout) if d], "StatefulSet")
    assert len(workers["metadata"]["name"]) <= 52


def test_no_workers_more_than_partitions_or_the_cap_too_many_copies_or_no_secrets_refuse_to_render():
    none = render({**SECRETS, "workers.replicas": "0"})  # the init Job and the gateway would refuse STREAMCART_WORKERS
    assert none.returncode != 0 and "kubectl scale statefulset t-streamcart-worker --replicas=0" in none.stderr
    too_many = render({**SECRETS, "workers.replicas": "9", "partitions": "8"})
    assert too_many.returncode != 0 and "may not exceed partitions" in too_many.stderr
    beyond_the_cap = render({**SECRETS, "workers.replicas": "17", "partitions": "32"})
    assert beyond_the_cap.returncode != 0 and "may not exceed 16" in beyond_the_cap.stderr
    copies = render({**SECRETS, "workers.replicas": "2", "workers.standbyReplicas": "2"})
    assert copies.returncode != 0 and "must be fewer than workers.replicas" in copies.stderr
    at_the_limits = {**SECRETS, "workers.replicas": "16", "partitions": "16", "workers.standbyReplicas": "3"}
    assert render(at_the_limits).returncode == 0
    no_secrets = render({})
    assert no_secrets.returncode != 0 and "secrets.existingSecret" in no_secrets.stderr
    short = render({**SECRETS, "secrets.jwtSecret": "jwt"})  # the workers would refuse it and never start
    assert short.returncode != 0 and "at least 32 bytes" in short.stderr
    development = render({**SECRETS, "secrets.jwtSecret": DEVELOPMENT_JWT_SECRET})  # in the source: anyone's
    assert development.returncode != 0 and "development secret" in development.stderr


def worker_env(values: dict[str, str]) -> dict[str, Any]:
    (workers,) = of_kind(manifests(values), "StatefulSet")
    return env_of(workers["spec"]["template"]["spec"]["containers"][0])


def test_by_default_the_workers_fetch_with_the_projects_defaults():
    env = worker_env(SECRETS)
    assert "STREAMCART_CONSUMER_FETCH_MIN_BYTES" not in env and "STREAMCART_CONSUMER_FETCH_MAX_WAIT_MS" not in env
    defaults = Settings()
    settings = settings_from(env)
    assert (settings.consumer_fetch_min_bytes, settings.consumer_fetch_max_wait_ms) == (
        defaults.consumer_fetch_min_bytes, defaults.consumer_fetch_max_wait_ms)


def test_fetch_settings_a_user_sets_reach_the_workers_even_zero():
    env = worker_env({**SECRETS, "workers.consumerFetchMinBytes": "1024", "workers.consumerFetchMaxWaitMs": "0"})
    settings = settings_from(env)
    assert (settings.consumer_fetch_min_bytes, settings.consumer_fetch_max_wait_ms) == (1024, 0)


def test_the_alerting_rules_come_as_a_prometheus_rule_only_when_asked_with_the_releases_scrape_job(tmp_path):
    assert of_kind(manifests(SECRETS), "PrometheusRule") == []
    docs = manifests({**SECRETS, "metrics.prometheusRule.enabled": "true", "metrics.prometheusRule.job": "kube-sc",
                      "metrics.prometheusRule.labels.release": "kps"})
    (rule,) = of_kind(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kps"
    # The very rules of deploy/prometheus/alerts.yml, their `up` on this release's job; Prometheus's own parsers
    # still take them (tools/promrules), {{ $labels }} templates included.
    alerts = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    assert rule["spec"] == yaml.safe_load(alerts.replace('job="streamcart-workers"', 'job="kube-sc"'))
    assert 'up{job="kube-sc"}' in yaml.safe_dump(rule["spec"])
    rendered = tmp_path / "rules.yml"
    rendered.write_text(yaml.safe_dump(rule["spec"]))
    checked = promrules(rendered)
    assert checked.returncode == 0, checked.stderr
    for doc in docs:
        if doc["kind"] != "PrometheusRule":  # the operator's CRD: not in Kubernetes' own schemas
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_a_pod_monitor_scrapes_the_workers_under_the_alerts_job_only_when_asked():
    assert of_kind(manifests(SECRETS), "PodMonitor") == []
    docs = manifests({**SECRETS, "metrics.podMonitor.enabled": "true", "metrics.prometheusRule.job": "kube-sc",
                      "metrics.podMonitor.labels.release": "kps"})
    (monitor,) = of_kind(docs, "PodMonitor")
    (workers,) = of_kind(docs, "StatefulSet")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"] == workers["spec"]["template"]["metadata"]["labels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (container,) = workers["spec"]["template"]["spec"]["containers"]
    assert endpoint["port"] in {port["name"] for port in container["ports"]} and endpoint["path"] == "/metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "kube-sc"} in endpoint["relabelings"]
    (numeric,) = of_kind(manifests({**SECRETS, "metrics.podMonitor.enabled": "true",
                                    "metrics.prometheusRule.job": "2024"}), "PodMonitor")
    assert numeric["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["replacement"] == "2024"  # a string still


def test_the_topics_get_the_brokers_default_replicas_unless_the_values_name_a_number():
    """Where min.insync.replicas is 2, a topic of one replica refuses every write: the init Job and the workers
    create topics with the replicas the values ask for, else the brokers' default.replication.factor."""
    assert settings_from(worker_env(SECRETS)).topic_replication_factor == -1
    docs = manifests({**SECRETS, "kafka.replicationFactor": "3"})
    (job,) = of_kind(docs, "Job")
    (workers,) = of_kind(docs, "StatefulSet")
    for container in (job["spec"]["template"]["spec"]["containers"][0],
                      workers["spec"]["template"]["spec"]["containers"][0]):
        assert settings_from(env_of(container)).topic_replication_factor == 3


def test_by_default_each_release_scrapes_and_alerts_under_a_job_of_its_own():
    """Two releases one Prometheus scrapes: each one's rules select its own workers (deploy/prometheus/alerts.yml
    keeps `job` in every sum), not the sum of both."""
    docs = manifests({**SECRETS, "metrics.podMonitor.enabled": "true", "metrics.prometheusRule.enabled": "true"})
    (monitor,) = of_kind(docs, "PodMonitor")
    (rule,) = of_kind(docs, "PrometheusRule")
    job = "t-streamcart-workers"  # the release is `t`
    assert monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["replacement"] == job
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    assert exprs and all(f'job="{job}"' in expr and 'job="streamcart-workers"' not in expr for expr in exprs)
    (unset,) = of_kind(manifests({**SECRETS, "metrics.podMonitor.enabled": "true",
                                  "metrics.prometheusRule.job": "null"}), "PodMonitor")
    assert unset["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["replacement"] == job  # not "<nil>"


def test_no_pod_gets_the_services_environment_variables():
    """Kubernetes would give every pod STREAMCART_API_PORT=tcp://… for a release named streamcart (its Service
    streamcart-api): a setting's name, with what is no port."""
    docs = manifests({**SECRETS, "init.enabled": "true"})
    pods = [doc["spec"]["template"]["spec"] for doc in docs if doc["kind"] in ("StatefulSet", "Deployment", "Job")]
    assert len(pods) >= 3 and all(pod.get("enableServiceLinks") is False for pod in pods)


def test_only_the_workers_and_the_init_job_get_the_secrets():
    """The gateway (a test double) and the topics step sign no token and write no connector config."""
    docs = manifests({**SECRETS, "init.enabled": "true"})
    secret_names = {"STREAMCART_JWT_SECRET", "STREAMCART_POSTGRES_PASSWORD"}
    given = {}
    for doc in docs:
        if doc["kind"] in ("StatefulSet", "Deployment", "Job"):
            pod = doc["spec"]["template"]["spec"]
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                given[f"{doc['kind']}/{container['name']}"] = secret_names <= set(env_of(container))
                assert secret_names & set(env_of(container)) in (set(), secret_names)
    assert given == {"StatefulSet/topics": False, "StatefulSet/worker": True, "Deployment/gateway": False,
                     "Job/init": True}
