"""The Grafana dashboards that ship in deploy/grafana query only metrics that exist, by labels they have, as
Prometheus's own PromQL parser reads each query (tools/promrules): a rate only of what counts up, a quantile over
buckets that kept their ``le``."""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path
from typing import Any

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


PROMRULES = ROOT / ".tools" / "bin" / "promrules"
#: Functions over a range of a series that only mean something for what counts up (a counter, a histogram's parts).
OVER_COUNTERS = {"rate", "irate", "increase"}


def promrules(path: Path) -> subprocess.CompletedProcess[str]:
    """tools/promrules on a rule file: Prometheus's own parsers, one JSON line per rule (what it selects, groups
    by, calls)."""
    assert PROMRULES.is_file(), f"{PROMRULES} is missing: `make setup` builds it from tools/promrules (needs Go)"
    return subprocess.run([str(PROMRULES), str(path)], capture_output=True, text=True, timeout=60, check=False)


def parsed(exprs: list[str], tmp_path: Path) -> list[dict[str, Any]]:
    """Each expression as Prometheus parses it (as a recording rule of a scratch rule file)."""
    rules = tmp_path / "queries.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": [
        {"record": f"query_{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}))
    checked = promrules(rules)
    assert checked.returncode == 0, checked.stderr
    return [json.loads(line) for line in checked.stdout.splitlines()]


def counting_series() -> set[str]:
    """The series that only count up: counters' ``_total``, histograms' and summaries' parts."""
    project_metrics()  # registers them
    counting = set()
    for family in REGISTRY.collect():
        if family.type in ("counter", "histogram", "summary"):
            counting |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return counting


def problems(rule: dict[str, Any], series: dict[str, set[str]], counting: set[str]) -> list[str]:
    """What is wrong with one parsed expression (tools/promrules's line): a series nothing exposes, a label a
    selector's series lacks, a grouping by labels none of them has, an on(...) by labels one side lacks, a rate of a
    gauge, a quantile of buckets whose ``le`` was summed away."""
    found = []
    if not rule["selects"]:
        found.append("selects no series")
    for selected in rule["selects"]:
        name = selected["metric"]
        if name not in series:
            found.append(f"selects {name}, which nothing exposes")
        elif missing := set(selected["labels"]) - series[name]:
            found.append(f"{name} has no {sorted(missing)}")
    available = set().union(*(series.get(s["metric"], set()) for s in rule["selects"]))
    if missing := set(rule["grouping"]) - available:
        found.append(f"groups or matches by {sorted(missing)}, which none of its series has")
    for matched in rule["matches"]:  # on(...): each side's series must have those labels
        for side in (matched["left"], matched["right"]):
            have = set().union(*(series.get(name, set()) for name in side))
            if missing := set(matched["labels"]) - have:
                found.append(f"matches on {sorted(missing)}, which {sorted(side)} lack")
    for call in rule["calls"]:
        if call["function"] in OVER_COUNTERS and (gauges := set(call["series"]) - counting):
            found.append(f"{call['function']}() of {sorted(gauges)}, which do not count up")
        if call["function"] == "histogram_quantile" and not {"le", "*"} & set(call.get("keeps", [])):
            found.append("histogram_quantile() of buckets without their le")
    return found


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
def test_every_query_selects_only_series_a_worker_exposes_by_labels_they_have(path, tmp_path):
    series, counting = exposed_series(), counting_series()
    exprs = expressions(load(path))
    assert exprs, f"{path.name} has no query"
    for expr, rule in zip(exprs, parsed(exprs, tmp_path), strict=True):
        assert not problems(rule, series, counting), f"{expr!r}: {problems(rule, series, counting)}"


@pytest.mark.parametrize(("expr", "complaint"), [
    ('rate(streamcart_saga_seconds_bucket{flow="x"}[5m])', "streamcart_saga_seconds_bucket has no ['flow']"),
    ("rate(streamcart_saga_seconds_count[5m]) / on (flow) rate(streamcart_messages_processed_total[5m])",
     "matches on ['flow'], which ['streamcart_saga_seconds_count'] lack"),
    ("rate(streamcart_dlq_records[5m])", "rate() of ['streamcart_dlq_records'], which do not count up"),
    ("histogram_quantile(0.99, sum by (outcome) (rate(streamcart_saga_seconds_bucket[5m])))",
     "histogram_quantile() of buckets without their le"),
    ("sum(rate(streamcart_no_such_thing_total[5m]))", "selects streamcart_no_such_thing_total, which nothing exposes"),
])
def test_the_checks_refuse_what_would_show_nothing_or_nonsense(tmp_path, expr, complaint):
    (rule,) = parsed([expr], tmp_path)
    assert any(complaint in found for found in problems(rule, exposed_series(), counting_series())), \
        problems(rule, exposed_series(), counting_series())


def test_every_metric_the_code_defines_is_on_a_dashboard(tmp_path):
    exprs = [expr for path in DASHBOARDS for expr in expressions(load(path))]
    queried = {selected["metric"] for rule in parsed(exprs, tmp_path) for selected in rule["selects"]}
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
