"""`make monitoring-up` / `make monitoring-down` on a free port, as a user runs them.

Without a Docker engine (as here and in CI), `up` falls back to the local
Prometheus of the Debian package; where an engine answers, the test asks
for that fallback explicitly (AIML_MONITORING_BACKEND=local).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .conftest import free_port, http_ok, pid_alive, port_open, run_make, wait_for

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def pids_using(storage: Path) -> list[int]:
    """Processes whose command line names this Prometheus storage folder."""
    flag = f"--storage.tsdb.path={storage}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if flag in (proc / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture
def monitoring_env(tmp_path: Path) -> dict[str, str]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    env = dict(os.environ)
    env.update(AIML_LOG_DIR=str(tmp_path / "logs"), AIML_PROMETHEUS_PORT=str(free_port()))
    if docker_engine_answers():
        env["AIML_MONITORING_BACKEND"] = "local"
    return env


def test_monitoring_up_starts_one_prometheus_and_down_stops_exactly_it(
    monitoring_env: dict[str, str],
) -> None:
    logs = Path(monitoring_env["AIML_LOG_DIR"])
    port = int(monitoring_env["AIML_PROMETHEUS_PORT"])
    url = f"http://127.0.0.1:{port}"
    pid_file = logs / "prometheus.pid"
    first = run_make("monitoring-up", monitoring_env)
    pid = None
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        pid = int(pid_file.read_text())
        assert pid_alive(pid)
        assert url in first.stdout
        assert "Grafana needs docker" in first.stdout
        assert http_ok(f"{url}/-/ready")
        # It runs the repository's config, with both services' jobs.
        with urllib.request.urlopen(f"{url}/api/v1/status/config", timeout=5) as resp:
            config = json.load(resp)["data"]["yaml"]
        assert "job_name: pose_analyzer" in config and "job_name: gpu_optimizer" in config
        assert (logs / "prometheus-data").is_dir() and (logs / "prometheus.log").is_file()

        second = run_make("monitoring-up", monitoring_env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"already running (pid {pid})" in second.stdout
        assert int(pid_file.read_text()) == pid
        assert pids_using(logs / "prometheus-data") == [pid]  # nothing new was started
    finally:
        stopped = run_make("monitoring-down", monitoring_env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert pid is not None and f"stopped (pid {pid})" in stopped.stdout
    assert wait_for(lambda: not pid_alive(pid), 10)
    assert not pid_file.exists()
    assert not port_open(port)
    again = run_make("monitoring-down", monitoring_env)
    assert again.returncode == 0 and "not running" in again.stdout


def test_without_docker_or_prometheus_up_is_one_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty), AIML_LOG_DIR=str(tmp_path / "logs"))
    result = _script("up", env)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "docker" in line and "prometheus" in line
    assert not (tmp_path / "logs/prometheus.pid").exists()


def _fake_docker(bin_dir: Path, calls: Path, engine: bool) -> None:
    """A `docker` client that records its arguments; `docker info` fails without an engine."""
    script = bin_dir / "docker"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{calls}"\n'
        f'if [ "$1" = info ]; then exit {0 if engine else 1}; fi\n'
        "exit 0\n"
    )
    script.chmod(0o755)


def _script(action: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts/monitoring.py"), action],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_with_a_docker_engine_up_and_down_use_the_compose_file(tmp_path: Path) -> None:
    bin_dir, calls = tmp_path / "bin", tmp_path / "docker-calls.txt"
    bin_dir.mkdir()
    _fake_docker(bin_dir, calls, engine=True)
    env = dict(os.environ, PATH=str(bin_dir), AIML_LOG_DIR=str(tmp_path / "logs"))
    compose = f"compose -f {REPO / 'monitoring/docker-compose.yml'}"

    up = _script("up", env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert calls.read_text().splitlines()[-1] == f"{compose} up -d"
    assert "http://localhost:3000" in up.stdout
    assert not (tmp_path / "logs/prometheus.pid").exists()  # no local Prometheus
    assert _script("status", env).returncode == 0
    assert calls.read_text().splitlines()[-1] == f"{compose} ps"
    down = _script("down", env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert calls.read_text().splitlines()[-1] == f"{compose} down"
    before = calls.read_text()
    again = _script("down", env)
    assert again.returncode == 0 and "not running" in again.stdout
    assert calls.read_text() == before  # down stops only what up started


def test_a_docker_client_without_an_engine_is_not_used(tmp_path: Path) -> None:
    bin_dir, calls = tmp_path / "bin", tmp_path / "docker-calls.txt"
    bin_dir.mkdir()
    _fake_docker(bin_dir, calls, engine=False)
    env = dict(os.environ, PATH=str(bin_dir), AIML_LOG_DIR=str(tmp_path / "logs"))
    result = _script("up", env)
    assert result.returncode == 1
    assert "compose" in calls.read_text() and " up " not in calls.read_text()
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
