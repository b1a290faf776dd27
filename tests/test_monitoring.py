"""monitoring/: Prometheus config, Grafana provisioning and dashboards against the real services.

Grafana is not packaged in Debian, so dashboards are checked against what they
query: every metric name in their PromQL must be one the two services export
(read from live servers' /metrics: gpu_optimizer, plus the gpu_* gauges its
collector exports with NVML answers recorded on real GPUs, since CI has none;
pose_analyzer while it replays a synthetic squat session, so that its labelled
per-stream, per-exercise and per-fault series exist), and a real Prometheus
must scrape both services, accept every expression and return data for every
pose pipeline query.
"""

from __future__ import annotations

import importlib.util
import json
import os
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
POSE_DASHBOARD = MONITORING / "grafana/dashboards/pose-pipeline.json"
POSE_SYNTHETIC = REPO / "projects/pose_analyzer/tests/synthetic.py"
# The replayed session: squats at 1.6 s a rep, the 7th to 9th too shallow (faults; and
# anomalies against the baseline of the clean reps before them, which holds even if a
# loaded machine drops frames of a rep); the clean reps after them keep the stream, and
# its per-stream series, running for about 80 s.
REPLAY_REPS = 48
SHALLOW_REPS = {7: "shallow", 8: "shallow", 9: "shallow"}
# Pose series that exist only after an event the replay does not cause: a WebSocket
# client the server disconnected for being too slow (the pose service's tests cover it).
POSE_MAY_BE_EMPTY = {"pose_websocket_disconnects_total"}
# Series Prometheus makes itself for every target, and the labels it adds to each.
PROMETHEUS_SERIES = {"up": {"instance", "job"}}
TARGET_LABELS = {"instance", "job", "machine"}
GRAFANA_VARIABLES = {
    "$instance": ".*",
    "$gpu": ".*",
    "$__rate_interval": "1m",
    "$__range": "1h",
}
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


def _synthetic() -> Any:
    """The pose tests' synthetic athlete (projects/pose_analyzer/tests/synthetic.py)."""
    spec = importlib.util.spec_from_file_location("pose_synthetic", POSE_SYNTHETIC)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pose_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """A pose server starting; requested before gpu_optimizer_url, both start together."""
    root = tmp_path_factory.mktemp("pose_analyzer")
    data = root / "data"
    data.mkdir()
    recording = _synthetic().make_recording(
        "squat", REPLAY_REPS, fps=30.0, tempo=(0.6, 0.1, 0.6, 0.3), faults=SHALLOW_REPS
    )
    recording.write(data / "squat.jsonl")
    port = free_port()
    log = root / "serve.log"
    env = dict(
        os.environ,
        POSE_DATA_DIR=str(data),
        POSE_DATABASE_URL=f"sqlite:///{root / 'pose.db'}",
        POSE_LOG_LEVEL="warning",
    )
    command = [sys.executable, "-m", "pose_analyzer.cli", "serve", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def pose_url(pose_server: tuple[subprocess.Popen[bytes], str, Path]) -> str:
    proc, url, log = pose_server
    wait_until(
        lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200,
        "pose_analyzer answers /health",
        proc,
        log,
        timeout_s=90,
    )
    return url


def _sample(exposition: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@pytest.fixture(scope="module")
def pose_stream(pose_url: str) -> Iterator[str]:
    """A real-time replay on the pose server, past its shallow reps; its /metrics text then."""
    response = httpx.post(
        f"{pose_url}/streams",
        json={"source": "squat.jsonl", "exercise": "squat", "realtime": True},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    stream_id = response.json()["id"]
    try:
        deadline = time.monotonic() + 60
        while True:
            text = httpx.get(f"{pose_url}/metrics", timeout=5).text
            faults = _sample(text, "pose_faults_total", code="insufficient_depth")
            if faults >= 1 and _sample(text, "pose_anomalies_total") >= 1:
                break
            assert time.monotonic() < deadline, f"no shallow-squat faults within 60 s:\n{text}"
            time.sleep(0.5)
        yield text
    finally:
        httpx.delete(f"{pose_url}/streams/{stream_id}", timeout=30)


def _labels_by_name(exposition: str) -> dict[str, set[str]]:
    # A labelled metric without children yet has only its "# TYPE name kind" line.
    names: dict[str, set[str]] = {n: set() for n in re.findall(r"^# TYPE (\S+) ", exposition, re.M)}
    for family in text_string_to_metric_families(exposition):
        names.setdefault(family.name, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


@pytest.fixture(scope="module")
def exported(pose_server: Any, gpu_optimizer_url: str, pose_stream: str) -> dict[str, set[str]]:
    """Metric name -> label names the two services export."""
    live = _labels_by_name(httpx.get(f"{gpu_optimizer_url}/metrics", timeout=10).text)
    registry = CollectorRegistry()
    registry.register(GpuCollector(NvmlReader(RecordedNvml.from_file(RECORDING))))
    recorded = _labels_by_name(generate_latest(registry).decode())
    assert set(recorded) <= set(live)  # the service registers the collector
    for name, labels in recorded.items():
        live[name] |= labels
    for name, labels in _labels_by_name(pose_stream).items():
        live[name] = live.get(name, set()) | labels
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


def _quantiles(exprs: list[str], histogram: str) -> set[float]:
    pattern = rf"histogram_quantile\(\s*([\d.]+)\s*,[^;]*?\b{histogram}_bucket\b"
    return {float(q) for expr in exprs for q in re.findall(pattern, expr)}


def test_pose_pipeline_dashboard_is_templated_on_machine() -> None:
    dashboard = json.loads(POSE_DASHBOARD.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["instance"]
    queries = dashboard_queries(dashboard)
    panels = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    pose = [e for e in panels if any(n.startswith("pose_") for n in metric_names(e))]
    assert pose
    for expr in pose:  # every pose selector of a panel is filtered on the machine variable
        for name, selector in re.findall(r"\b(pose_\w+)(\{[^}]*\})?", expr):
            assert 'instance=~"$instance"' in selector, f"{name} in {expr!r}"
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {
        "Processed fps per stream",
        "Drop ratio per stream",
        "Frame-to-publish latency",
        "Stage latency p50 / p99",
        "Active streams",
        "WebSocket clients",
        "WebSocket drops and disconnects",
        "Reps by exercise",
        "Faults by code",
        "Anomalous reps",
        "Rep score distribution",
        "Source reconnects",
    } <= titles
    assert _quantiles(queries, "pose_frame_to_publish_seconds") == {0.5, 0.95, 0.99}
    assert _quantiles(queries, "pose_stage_duration_seconds") == {0.5, 0.99}
    # The drop ratio is dropped over read, per stream.
    [drop] = [e for e in queries if "pose_frames_dropped_total" in metric_names(e)]
    assert re.search(r"pose_frames_dropped_total.*\)\s*/\s*sum by \(instance, stream\)", drop)
    assert "pose_frames_read_total" in metric_names(drop)


# --- Prometheus config and provisioning ----------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package prometheus)")
    return path


def test_promtool_accepts_the_prometheus_config() -> None:
    # The scrape credentials `make monitoring-up` writes (empty: the services' default).
    for job in ("pose_analyzer", "gpu_optimizer"):
        (MONITORING / "secrets" / f"{job}.key").touch(exist_ok=True)
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
    pose_server: Any, gpu_optimizer_url: str, pose_url: str, pose_stream: str, tmp_path: Path
) -> None:
    """Both services scraped; every pose query has data while the replay runs."""
    prometheus = _tool("prometheus")
    # The repository's config, with its file_sd lists pointed at the test server.
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s"})
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "targets").mkdir()
    (tmp_path / "secrets").mkdir()
    for job in ("pose_analyzer", "gpu_optimizer"):  # no keys: /metrics is open by default
        (tmp_path / "secrets" / f"{job}.key").write_text("")
    service = gpu_optimizer_url.removeprefix("http://")
    (tmp_path / "targets/gpu_optimizer.json").write_text(json.dumps([{"targets": [service]}]))
    pose = pose_url.removeprefix("http://")
    (tmp_path / "targets/pose_analyzer.json").write_text(json.dumps([{"targets": [pose]}]))
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
        response = httpx.get(api, params={"query": expr}, timeout=5)
        if response.status_code == 503:  # Prometheus is still starting: nothing to read yet
            return []
        body = response.json()
        assert body["status"] == "success", f"{expr!r}: {body}"
        return list(body["data"]["result"])

    pose_queries = [
        expr
        for expr in dashboard_queries(json.loads(POSE_DASHBOARD.read_text()))
        if not metric_names(expr) & POSE_MAY_BE_EMPTY
    ]

    def empty_pose_queries() -> list[str]:
        return [expr for expr in pose_queries if not query(substitute(expr))]

    try:
        wait_until(
            lambda: (
                [r["value"][1] for r in query('up{job="gpu_optimizer"}')] == ["1"]
                and [r["value"][1] for r in query('up{job="pose_analyzer"}')] == ["1"]
            ),
            "Prometheus reports up == 1 for gpu_optimizer and pose_analyzer",
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
        # Rates need two scrapes of a series: wait (bounded) until every pose query has data.
        deadline = time.monotonic() + 30
        while empty := empty_pose_queries():
            assert time.monotonic() < deadline, f"pose queries without data: {empty}"
            time.sleep(1)
        # What Prometheus holds matches the replayed session.
        [active] = query('pose_active_streams{job="pose_analyzer"}')
        assert float(active["value"][1]) == 1
        exported = httpx.get(f"{pose_url}/metrics", timeout=5).text
        [faults] = query('pose_faults_total{job="pose_analyzer", code="insufficient_depth"}')
        assert faults["metric"]["exercise"] == "squat"
        assert float(faults["value"][1]) == _sample(exported, "pose_faults_total") >= 1
        [anomalies] = query('pose_anomalies_total{job="pose_analyzer", exercise="squat"}')
        assert float(anomalies["value"][1]) == _sample(exported, "pose_anomalies_total") >= 1
        [fps] = query('pose_stream_processed_fps{job="pose_analyzer"}')
        assert fps["metric"]["stream"] == "0" and 5 < float(fps["value"][1]) <= 31
    finally:
        stop(proc)
