"""monitoring/: Prometheus config, Grafana provisioning and dashboards against the real services.

Grafana is not packaged in Debian, so dashboards are checked against what they
query: every metric name in their PromQL must be one the gpu_optimizer service
exports (read from a live server's /metrics, plus the gpu_* gauges its
collector exports with NVML answers recorded on real GPUs, since CI has none),
and a real Prometheus must scrape the service and accept every expression.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpu_optimizer.metrics import GpuCollector
from gpu_optimizer.nvml import NvmlReader, RecordedNvml, default_reader

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
RECORDING = REPO / "projects/gpu_optimizer/tests/data/nvml_rtx4070ti_rtx3070ti.json"
# Series Prometheus makes itself for every target, and the labels it adds to each.
PROMETHEUS_SERIES = {"up": {"instance", "job"}}
TARGET_LABELS = {"instance", "job", "machine"}
GRAFANA_VARIABLES = {"$instance": ".*", "$gpu": ".*", "$__rate_interval": "1m"}
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "bool", "offset", "inf", "nan",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(
    ok: Any, what: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ok():
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s; log:\n{log.read_text()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def gpu_optimizer_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("gpu_optimizer") / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "gpu_optimizer.api:create_app", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200,
            "gpu_optimizer answers /health",
            proc,
            log,
            timeout_s=30,
        )
        yield url
    finally:
        stop(proc)


def _labels_by_name(exposition: str) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        names.setdefault(family.name, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


@pytest.fixture(scope="module")
def exported(gpu_optimizer_url: str) -> dict[str, set[str]]:
    """Metric name -> label names the gpu_optimizer service exports."""
    live = _labels_by_name(httpx.get(f"{gpu_optimizer_url}/metrics", timeout=10).text)
    registry = CollectorRegistry()
    registry.register(GpuCollector(NvmlReader(RecordedNvml.from_file(RECORDING))))
    recorded = _labels_by_name(generate_latest(registry).decode())
    assert set(recorded) <= set(live)  # the service registers the collector
    for name, labels in recorded.items():
        live[name] |= labels
    return live


# --- PromQL in dashboards ------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions or keywords."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[a-zA-Z_:][\w:]*", expr):
        rest = expr[match.end() :].lstrip()
        if not rest.startswith("(") and match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def matcher_labels(expr: str) -> dict[str, set[str]]:
    """Label names each `name{...}` selector matches on."""
    found: dict[str, set[str]] = {}
    for name, body in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))
        found.setdefault(name, set()).update(labels)
    return found


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and the selectors of query variables."""
    queries = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
        assert match, f"variable {variable['name']}: expected label_values(selector, label)"
        queries.append(match.group(1))
    return queries


def substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (instance) (rate(foo_total{a="b{c}", gpu=~"$gpu"}[5m] offset 1h)) '
        '/ on(instance) group_left(name) bar:ratio * 1e3 > bool 0.5 and up{job="x"}'
    )
    assert metric_names(expr) == {"foo_total", "bar:ratio", "up"}
    assert matcher_labels('a{x="1", y=~"$y"} / b{z!="2"}') == {"a": {"x", "y"}, "b": {"z"}}


def test_there_is_a_gpu_fleet_dashboard() -> None:
    assert "gpu-fleet.json" in {path.name for path in DASHBOARDS}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_uses_only_metrics_the_service_exports(
    path: Path, exported: dict[str, set[str]]
) -> None:
    dashboard = json.loads(path.read_text())
    queries = dashboard_queries(dashboard)
    assert queries
    known = {**exported, **PROMETHEUS_SERIES}
    for expr in queries:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= set(known), f"{expr!r} uses {sorted(names - set(known))}"
        for name, labels in matcher_labels(expr).items():
            allowed = known[name] | TARGET_LABELS
            assert labels <= allowed, f"{expr!r}: {name} has no label {sorted(labels - allowed)}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_panels_use_the_provisioned_datasource(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    datasources = yaml.safe_load(
        (MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    uids = {ds["uid"] for ds in datasources}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]


def test_gpu_fleet_dashboard_is_templated_on_machine_and_gpu() -> None:
    dashboard = json.loads((MONITORING / "grafana/dashboards/gpu-fleet.json").read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["instance", "gpu"]
    per_gpu = [
        expr
        for expr in dashboard_queries(dashboard)
        if metric_names(expr) & {"gpu_memory_used_bytes", "gpu_temperature_celsius"}
    ]
    assert per_gpu
    assert all('instance=~"$instance"' in e and 'gpu=~"$gpu"' in e for e in per_gpu)
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Memory used / total", "Utilization", "Temperature", "Power vs limit"} <= titles


# --- Prometheus config and provisioning ----------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package prometheus)")
    return path


def test_promtool_accepts_the_prometheus_config() -> None:
    result = subprocess.run(
        [_tool("promtool"), "check", "config", str(MONITORING / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_prometheus_scrapes_both_services_on_localhost_by_default() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"pose_analyzer", "gpu_optimizer"}
    for job, port in (("pose_analyzer", 8001), ("gpu_optimizer", 8002)):
        files = [f for sd in jobs[job]["file_sd_configs"] for f in sd["files"]]
        assert all(f.startswith("targets/") and f.endswith(".json") for f in files)
        targets = [
            target
            for pattern in files
            for path in MONITORING.glob(pattern)
            for group in json.loads(path.read_text())
            for target in group["targets"]
        ]
        assert targets == [f"localhost:{port}"]


def test_compose_mounts_the_provisioning_grafana_reads() -> None:
    compose = yaml.safe_load((MONITORING / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"prometheus", "grafana"}
    mounts = {}
    for service in services.values():
        for volume in service["volumes"]:
            source, target, *_ = volume.split(":")
            if source.startswith("./"):
                assert (MONITORING / source).exists(), source
                mounts[source] = target
    providers = yaml.safe_load(
        (MONITORING / "grafana/provisioning/dashboards/dashboards.yml").read_text()
    )["providers"]
    assert [p["options"]["path"] for p in providers] == [mounts["./grafana/dashboards"]]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./targets"] == "/etc/prometheus/targets"


# --- a real Prometheus ---------------------------------------------------------------


@pytest.mark.integration
def test_real_prometheus_scrapes_the_service_and_accepts_every_dashboard_query(
    gpu_optimizer_url: str, tmp_path: Path
) -> None:
    prometheus = _tool("prometheus")
    # The repository's config, with its file_sd lists pointed at the test server.
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s"})
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "targets").mkdir()
    service = gpu_optimizer_url.removeprefix("http://")
    (tmp_path / "targets/gpu_optimizer.json").write_text(json.dumps([{"targets": [service]}]))
    (tmp_path / "targets/pose_analyzer.json").write_text("[]")
    port = free_port()
    log = tmp_path / "prometheus.log"
    command = [
        prometheus,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1/query"

    def query(expr: str) -> list[dict[str, Any]]:
        body = httpx.get(api, params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", f"{expr!r}: {body}"
        return list(body["data"]["result"])

    try:
        wait_until(
            lambda: [r["value"][1] for r in query('up{job="gpu_optimizer"}')] == ["1"],
            "Prometheus reports up == 1 for gpu_optimizer",
            proc,
            log,
            timeout_s=45,
        )
        [gpu_count] = query('gpu_count{job="gpu_optimizer"}')
        assert float(gpu_count["value"][1]) == len(default_reader().read())
        for path in DASHBOARDS:
            for expr in dashboard_queries(json.loads(path.read_text())):
                result = query(substitute(expr))
                if metric_names(expr) <= {"up", "gpu_count", "gpu_nvml_available"}:
                    assert result, f"{path.name}: {expr!r} returned no data"
    finally:
        stop(proc)
