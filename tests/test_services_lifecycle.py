"""`make run-all` / `make stop-all` on real ports, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import free_port, http_ok, pid_alive, port_open, run_make, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def service_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        POSE_PORT=str(free_port()),
        GPU_OPT_PORT=str(free_port()),
        AIML_LOG_DIR=str(tmp_path / "logs"),
    )
    return env


def test_run_all_starts_both_once_and_stop_all_stops_exactly_them(
    service_env: dict[str, str],
) -> None:
    # With API keys set: /health and /metrics stay open, so run-all, status and
    # Prometheus keep working, and everything else wants the key.
    service_env.update(POSE_API_KEY="k", GPU_OPT_API_KEY="k")
    logs = Path(service_env["AIML_LOG_DIR"])
    pose_port, vram_port = int(service_env["POSE_PORT"]), int(service_env["GPU_OPT_PORT"])
    first = run_make("run-all", service_env)
    pids: dict[str, int] = {}
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        pids = {
            svc: int((logs / f"{svc}.pid").read_text())
            for svc in ("pose_analyzer", "gpu_optimizer")
        }
        assert f"http://127.0.0.1:{pose_port}" in first.stdout
        assert f"http://127.0.0.1:{vram_port}" in first.stdout
        for port, service in ((pose_port, "pose_analyzer"), (vram_port, "gpu_optimizer")):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                assert json.load(resp)["service"] == service
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            assert "process_resident_memory_bytes" in text
            assert ("pose_build_info" if service == "pose_analyzer" else "gpu_build_info") in text
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=5)
            assert refused.value.code == 401

        second = run_make("run-all", service_env)
        assert second.returncode == 0, second.stderr
        assert second.stdout.count("already running") == 2
        again = {
            svc: int((logs / f"{svc}.pid").read_text())
            for svc in ("pose_analyzer", "gpu_optimizer")
        }
        assert again == pids  # nothing new was started

        status = run_make("status", service_env)
        assert status.stdout.count("healthy") == 2
    finally:
        stopped = run_make("stop-all", service_env)
    assert stopped.returncode == 0, stopped.stderr
    for svc, pid in pids.items():
        assert wait_for(lambda pid=pid: not pid_alive(pid), 20), f"{svc} (pid {pid}) still runs"
        assert not (logs / f"{svc}.pid").exists()
    assert not port_open(pose_port) and not port_open(vram_port)
    assert (logs / "pose_analyzer.log").exists() and (logs / "gpu_optimizer.log").exists()


def test_stop_all_without_services_and_with_a_stale_pid_file(
    service_env: dict[str, str],
) -> None:
    logs = Path(service_env["AIML_LOG_DIR"])
    logs.mkdir(parents=True)
    # A PID that belongs to some other program must never be signalled.
    other = subprocess.Popen(["sleep", "60"])
    try:
        (logs / "pose_analyzer.pid").write_text(f"{other.pid}\n")
        result = run_make("stop-all", service_env)
        assert result.returncode == 0
        assert "stale PID file removed" in result.stdout
        assert "gpu_optimizer: not running" in result.stdout
        assert other.poll() is None, "stop-all killed a process that is not ours"
        assert not (logs / "pose_analyzer.pid").exists()
    finally:
        other.kill()
        other.wait()


def test_run_all_reports_a_port_taken_by_another_program(service_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", int(service_env["POSE_PORT"])))
        blocker.listen()
        result = run_make("run-all", service_env)
    try:
        assert result.returncode != 0
        assert f"port {service_env['POSE_PORT']} is already in use" in result.stderr
    finally:
        run_make("stop-all", service_env)
    assert http_ok(f"http://127.0.0.1:{service_env['GPU_OPT_PORT']}/health") is False
