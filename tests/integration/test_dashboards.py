"""The Grafana dashboard and Prometheus alert rules in contrib/ (README, Metrics): promtool
checks the rules, runs their unit tests and parses every panel's query, and every metric a
panel or an alert asks for is exported by a real router or node, scraped over HTTP."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import Cluster, Proc, start_cluster
from prometheus_client.parser import text_string_to_metric_families
from shardkv.v1 import kv_pb2, kv_pb2_grpc

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
DASHBOARD = CONTRIB / "grafana" / "shardkv.json"
RULES = CONTRIB / "prometheus" / "shardkv-alerts.yml"
RULE_TESTS = CONTRIB / "prometheus" / "shardkv-alerts.test.yml"
PROMETHEUS_CONFIG = CONTRIB / "prometheus" / "prometheus.yml"
METRICS = ["--metrics-listen", "127.0.0.1:0"]

# The alerts issue 17 asks for (more may exist).
REQUIRED_ALERTS = {
    "ShardkvNodeDown",
    "ShardkvQuorumFailures",
    "ShardkvHintsGrowing",
    "ShardkvStoreNearlyFull",
    "ShardkvMoveStalled",
    "ShardkvAntiEntropyNotCompleting",
    "ShardkvKVErrorRate",
}
# A metric name in PromQL; string literals (label values) are removed before looking.
METRIC_NAME = re.compile(r"(?<![\w:.])shardkv_[A-Za-z0-9_:]*")
STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# What a family of each type is queried as (prometheus_client's parser names counters
# without _total).
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make system-deps` installs it (Debian package prometheus)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def metric_names(promql: str) -> set[str]:
    """The shardkv_* metric names promql queries."""
    return set(METRIC_NAME.findall(STRING_LITERAL.sub('""', promql)))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """PromQL by where it is used: each panel's targets and each query variable."""
    queries: dict[str, list[str]] = {}
    for panel in panels(dashboard):
        if panel["type"] != "row":
            queries[f"panel {panel['title']!r}"] = [t["expr"] for t in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            queries[f"variable ${variable['name']}"] = [text]
    return queries


def alert_expressions(text: str) -> dict[str, str]:
    """The expr of each alert of a rules file laid out as contrib's is: `- alert: NAME`,
    then `expr:` with its value on the same line or indented below it (a block scalar or
    a plain multi-line scalar; the suite has no YAML parser)."""
    expressions: dict[str, str] = {}
    lines = text.splitlines()
    alert = None
    for index, line in enumerate(lines):
        if found := re.match(r"\s*- alert:\s*(\S+)", line):
            alert = found.group(1)
            continue
        found = re.match(r"(\s*)expr:\s*(.*)$", line)
        if found is None:
            continue
        assert alert is not None and alert not in expressions, f"line {index + 1}: {line}"
        indent, first = len(found.group(1)), found.group(2)
        body = [] if first in (">", ">-", "|", "|-") else [first]
        for following in lines[index + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following.strip())
        expressions[alert] = " ".join(body).strip()
    return expressions


def rules_found(result: subprocess.CompletedProcess[str]) -> int:
    counts = re.findall(r"SUCCESS: (\d+) rules found", result.stdout)
    assert len(counts) == 1, result.stdout + result.stderr
    return int(counts[0])


def test_promtool_checks_the_rules_and_the_example_config() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    expressions = alert_expressions(RULES.read_text())
    assert rules_found(result) == len(expressions), expressions.keys()
    assert REQUIRED_ALERTS <= expressions.keys()
    # The example scrape configuration loads the rules file too.
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert {"ShardkvNodeDown", "ShardkvStoreNearlyFull", "ShardkvStoreFull"} <= tested


def test_dashboard_is_importable_and_its_queries_parse(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard.get("id") is None
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    datasource = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert datasource["query"] == "prometheus"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["description"] and panel["targets"], panel["title"]
        for target in (panel, *panel["targets"]):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    # promtool has no command for a bare expression: it parses each one as a recording rule
    # (a JSON file is YAML), with Grafana's variables given values.
    grafana_variables = {"$__rate_interval": "5m", "$router": ".*", "$node": ".*"}
    rules = []
    for where, exprs in dashboard_queries(dashboard).items():
        if where.startswith("variable"):
            continue
        for expr in exprs:
            for variable, value in grafana_variables.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{where}: unknown variable in {expr}"
            rules.append({"record": f"dashboard:query:{len(rules)}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert rules_found(result) == len(rules)


def metrics_url(proc: Proc) -> str:
    """Where proc serves metrics, from its log (the last start's line)."""
    return re.findall(r"metrics_serving url=(\S+)", proc.log())[-1]


def exported(proc: Proc) -> set[str]:
    """Every series name proc's /metrics serves or declares: a labelled family with no
    series yet (a method never called) still counts, under the names it is queried by."""
    text = urllib.request.urlopen(metrics_url(proc), timeout=5).read().decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SERIES_SUFFIXES.get(family.type, ("",)))
    return names


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[Cluster]:
    """One node and one router serving metrics."""
    cluster = start_cluster(
        tmp_path,
        nodes=1,
        replication=1,
        read_quorum=1,
        write_quorum=1,
        router_extra=METRICS,
        node_extra=METRICS,
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.timeout(90)
def test_every_metric_of_the_dashboard_and_alerts_is_exported(scraped: Cluster) -> None:
    # Some traffic, so that the request histograms and coalesced-call tallies have series.
    with grpc.insecure_channel(scraped.router.address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        for i in range(5):
            kv.Put(kv_pb2.PutRequest(key=f"dash-{i}".encode(), value=b"v"), timeout=5)
        kv.Get(kv_pb2.GetRequest(key=b"dash-0"), timeout=5)
    router, node = exported(scraped.router), exported(scraped.node("n1"))
    assert "shardkv_router_node_up" in router and "shardkv_node_store_records" in node
    available = router | node

    uses = dashboard_queries(json.loads(DASHBOARD.read_text()))
    for alert, expr in alert_expressions(RULES.read_text()).items():
        uses[f"alert {alert}"] = [expr]
    missing = {}
    for where, exprs in uses.items():
        names = set().union(*(metric_names(expr) for expr in exprs))
        assert names, f"{where} queries no shardkv metric: {exprs}"
        if names - available:
            missing[where] = sorted(names - available)
    assert not missing, f"metrics neither the router nor the node exports: {missing}"
