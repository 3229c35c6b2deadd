"""The Grafana dashboards that ship in deploy/grafana query only metrics that exist, by labels they have."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PACKAGES = ("agents", "api", "schemas", "streamcart", "tables")

#: The series a metric of each type is exposed as (prometheus-client's text format).
SUFFIXES = {
    "counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count"),
    "info": ("_info",), "unknown": ("",),
}
#: Labels every scraped series has (Prometheus adds them), and the series Prometheus itself makes per target.
TARGET_LABELS = {"job", "instance"}
PROMETHEUS_SERIES = {"up"}
PROMQL_WORDS = {"and", "or", "unless", "on", "ignoring", "group_left", "group_right", "offset", "bool"}


def project_metrics() -> dict[str, MetricWrapperBase]:
    """The metrics the code defines, found by importing every module that uses prometheus-client."""
    metrics: dict[str, MetricWrapperBase] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "prometheus_client" in path.read_text():
                module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
                metrics.update({m._name: m for m in vars(module).values() if isinstance(m, MetricWrapperBase)})
    return metrics


def exposed_series() -> dict[str, set[str]]:
    """Every series a worker's /metrics can show (ours and prometheus-client's process/platform collectors), with
    the labels it can carry."""
    project_metrics()  # registers them
    series: dict[str, set[str]] = {name: set(TARGET_LABELS) for name in PROMETHEUS_SERIES}
    labels = {name: set(metric._labelnames) for name, metric in project_metrics().items()}
    for family in REGISTRY.collect():
        for suffix in SUFFIXES[family.type]:
            own = labels.get(family.name, set()) | {s for sample in family.samples for s in sample.labels}
            series[family.name + suffix] = own | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
    return series


def metric_names(expr: str) -> set[str]:
    """The series an expression selects: what is left once strings, matchers, ranges, grouping clauses, functions
    and numbers are taken out."""
    bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', " ", expr)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
    bare = re.sub(r"\b[a-zA-Z_]\w*\s*\(", "(", bare)
    return {word for word in re.findall(r"\b[a-zA-Z_:][\w:]*\b", bare) if word not in PROMQL_WORDS}


def used_labels(expr: str) -> set[str]:
    grouped = {label.strip() for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
               for label in clause.split(",") if label.strip()}
    filtered = {name for matchers in re.findall(r"\{([^}]*)\}", expr)
                for name in re.findall(r"(\w+)\s*!?[=~]", matchers)}
    return grouped | filtered


def panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found += [panel, *panel.get("panels", [])]
    return found


def expressions(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_selects_only_series_a_worker_exposes_by_labels_they_have(path):
    series = exposed_series()
    exprs = expressions(load(path))
    assert exprs, f"{path.name} has no query"
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= series.keys(), f"{expr!r} selects {sorted(names - series.keys())}, which nothing exposes"
        labels = set().union(*(series[name] for name in names))
        assert used_labels(expr) <= labels, f"{expr!r}: {sorted(used_labels(expr) - labels)} are not labels"


def test_the_query_parser_finds_metrics_and_labels():
    expr = 'histogram_quantile(0.99, sum by (le, stage) (rate(streamcart_saga_stage_seconds_bucket{stage="X"}[5m])))'
    assert metric_names(expr) == {"streamcart_saga_stage_seconds_bucket"}
    assert used_labels(expr) == {"le", "stage"}
    assert metric_names('rate(process_cpu_seconds_total{job="w"}[1m]) / up') == {"process_cpu_seconds_total", "up"}


def test_every_metric_the_code_defines_is_on_a_dashboard():
    queried = {name for path in DASHBOARDS for expr in expressions(load(path)) for name in metric_names(expr)}
    shown = {name for name, metric in project_metrics().items()
             if any(name + suffix in queried for suffix in SUFFIXES[metric._type])}
    assert shown == project_metrics().keys()


def test_the_dashboards_query_the_provisioned_datasource_and_have_their_own_uids():
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    provisioned = {d["uid"] for d in datasources["datasources"] if d["type"] == "prometheus"}
    for path in DASHBOARDS:
        used = {p["datasource"]["uid"] for p in panels(load(path)) if "datasource" in p}
        used |= {t["datasource"]["uid"] for p in panels(load(path)) for t in p.get("targets", []) if "datasource" in t}
        assert used <= provisioned, f"{path.name} queries {sorted(used - provisioned)}"
    uids = [load(path)["uid"] for path in DASHBOARDS]
    assert len(set(uids)) == len(uids) == len(DASHBOARDS) >= 2
