"""The alerting rules in deploy/prometheus/alerts.yml load as Prometheus loads them (tools/promrules: Prometheus's
own rule-file and PromQL parsers, built by `make setup`), select only series a worker exposes, by labels they
have, and are loaded by both Prometheus configurations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_grafana_dashboard import counting_series, exposed_series, problems, promrules

ROOT = Path(__file__).resolve().parents[3]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
#: The scrape job the rules' `up` selector names, in both configurations.
JOB = "streamcart-workers"


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    checked = promrules(ALERTS)
    assert checked.returncode == 0, checked.stderr
    return [json.loads(line) for line in checked.stdout.splitlines()]


def test_every_rule_is_an_alert_with_a_severity_a_summary_and_what_to_do(rules):
    assert len(rules) >= 5
    names = [rule["alert"] for rule in rules]
    assert len(set(names)) == len(names) and all(name.startswith("Streamcart") for name in names)
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 40, rule


def test_every_rule_selects_only_series_a_worker_exposes_by_labels_they_have(rules):
    series, counting = exposed_series(), counting_series()
    for rule in rules:  # and rates only what counts up, takes quantiles of buckets that kept their le
        assert not problems(rule, series, counting), f"{rule['alert']}: {problems(rule, series, counting)}"


@pytest.mark.parametrize(("rule", "complaints"), [
    ({"alert": "A", "expr": "sum(rate(streamcart_orders_placed_total[5m])", "annotations": {"summary": "{{ $value"}},
     ["could not parse expression", "unclosed action"]),
    ({"alert": "B", "expr": "up == 0", "forr": "1m"}, ["field forr not found"]),
])
def test_the_checker_refuses_what_prometheus_would_not_load(tmp_path, rule, complaints):
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [rule]}]}))
    checked = promrules(broken)
    assert checked.returncode == 1
    assert all(complaint in checked.stderr for complaint in complaints), checked.stderr


def test_both_prometheus_configurations_load_the_rules_and_scrape_the_job_they_name():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    for config in (ROOT / "deploy" / "prometheus" / "prometheus.yml", ROOT / "observability" / "prometheus.yml"):
        loaded = yaml.safe_load(config.read_text())
        assert [(config.parent / f).resolve() for f in loaded["rule_files"]] == [ALERTS], config
        assert [job["job_name"] for job in loaded["scrape_configs"]] == [JOB], config


def test_the_worker_down_alert_watches_the_scrape_job(rules):
    (down,) = [rule for rule in rules if rule["alert"] == "StreamcartWorkerDown"]
    assert down["expr"] == f'up{{job="{JOB}"}} == 0'


def test_every_rule_watches_its_scrape_job_alone_and_keeps_it_in_what_it_adds_up(rules):
    """Two stacks one Prometheus scrapes under jobs of their own (the chart's job per release) alert apart: no sum
    adds one stack's dead letters, lag or timeouts to the other's."""
    for rule in rules:
        assert rule["expr"].count(f'job="{JOB}"') == len(rule["selects"]), rule["expr"]
        for aggregation in rule["aggregations"]:  # each of them, nested ones too, whatever the operator
            kept = "job" not in aggregation["grouping"] if aggregation["without"] else "job" in aggregation["grouping"]
            assert kept, f"{rule['alert']}: {aggregation['op']} drops job in {rule['expr']!r}"
