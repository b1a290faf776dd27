"""`make dev-session` with a real tmux server of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from .conftest import free_port, http_ok, port_open, wait_for

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


def tmux(socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True)


def test_dev_session_opens_pose_vram_monitor_windows_and_runs_the_services(
    tmp_path: Path,
) -> None:
    socket = f"aiml-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    env.update(
        AIML_TMUX_SOCKET=socket,
        AIML_TMUX_SESSION="devtest",
        POSE_PORT=str(free_port()),
        GPU_OPT_PORT=str(free_port()),
        AIML_LOG_DIR=str(tmp_path),
    )
    env.pop("TMUX", None)
    try:
        first = subprocess.run(
            ["make", "--no-print-directory", "dev-session"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        assert first.returncode == 0, first.stderr
        assert "created with windows: pose_analyzer, gpu_optimizer, monitor" in first.stdout
        windows = tmux(socket, "list-windows", "-t", "=devtest", "-F", "#W").stdout.split()
        assert windows == ["pose_analyzer", "gpu_optimizer", "monitor"]

        # The windows really run the services, on the ports given to the session.
        assert wait_for(lambda: http_ok(f"http://127.0.0.1:{env['POSE_PORT']}/health"), 120)
        assert wait_for(lambda: http_ok(f"http://127.0.0.1:{env['GPU_OPT_PORT']}/health"), 120)

        second = subprocess.run(
            ["bash", "scripts/dev_session.sh"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        assert second.returncode == 0
        assert "already exists" in second.stdout
        sessions = tmux(socket, "list-sessions", "-F", "#S").stdout.split()
        assert sessions == ["devtest"]

        if shutil.which("nvidia-smi") is None:
            # The monitor window falls back to the NVML terminal monitor.
            def monitor_says_no_gpu() -> bool:
                pane = tmux(socket, "capture-pane", "-p", "-t", "=devtest:monitor").stdout
                return "no nvidia gpu" in pane.lower()

            assert wait_for(monitor_says_no_gpu, 90), tmux(
                socket, "capture-pane", "-p", "-t", "=devtest:monitor"
            ).stdout
    finally:
        # Ctrl-C the foreground services (as a user would), then end the tmux server.
        for window in ("pose_analyzer", "gpu_optimizer", "monitor"):
            tmux(socket, "send-keys", "-t", f"=devtest:{window}", "C-c")
        wait_for(
            lambda: (
                not port_open(int(env["POSE_PORT"])) and not port_open(int(env["GPU_OPT_PORT"]))
            ),
            30,
        )
        tmux(socket, "kill-server")
    assert not port_open(int(env["POSE_PORT"]))
    assert not port_open(int(env["GPU_OPT_PORT"]))
