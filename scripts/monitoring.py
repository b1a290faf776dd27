#!/usr/bin/env python3
"""Start, stop and inspect Prometheus and Grafana (`make monitoring-up` / `monitoring-down`).

With a working Docker engine and the compose plugin (`docker compose version`
and `docker info` succeed), `up` is `docker compose -f
monitoring/docker-compose.yml up -d`: Prometheus on :9090 and Grafana on
:3000 with the provisioning in monitoring/grafana/. Without them, `up` starts
the local `prometheus` (Debian package) in the background with
monitoring/prometheus.yml on 127.0.0.1, its storage in
logs/prometheus-data/, its PID in logs/prometheus.pid and its output in
logs/prometheus.log; Grafana then needs docker, or a local Grafana given
that provisioning.

`up` twice starts nothing new; `down` stops exactly what `up` started: the
recorded PID (after checking it still runs this Prometheus), or the compose
project `up` started (recorded in logs/monitoring-compose.started).

Environment: AIML_PROMETHEUS_PORT (the local Prometheus port, default 9090),
AIML_LOG_DIR (PID, log and storage folder), AIML_MONITORING_BACKEND (auto,
docker or local; default auto).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from services import _alive, _cmdline, _tail, log_dir

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"
COMPOSE_FILE = MONITORING / "docker-compose.yml"
CONFIG = MONITORING / "prometheus.yml"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
DOCKER_TIMEOUT_S = 20.0
GRAFANA_HINT = (
    "Grafana needs docker (with a Docker engine, `make monitoring-up` starts it on "
    "http://localhost:3000), or a local Grafana given monitoring/grafana/provisioning "
    "(datasource uid `prometheus`) and the dashboards in monitoring/grafana/dashboards."
)


def port() -> int:
    return int(os.environ.get("AIML_PROMETHEUS_PORT", "9090"))


def url() -> str:
    return f"http://127.0.0.1:{port()}"


def pid_file() -> Path:
    return log_dir() / "prometheus.pid"


def storage() -> Path:
    return log_dir() / "prometheus-data"


def compose_marker() -> Path:
    return log_dir() / "monitoring-compose.started"


# --- which backend -------------------------------------------------------------------


def _succeeds(command: list[str]) -> bool:
    try:
        result = subprocess.run(command, capture_output=True, timeout=DOCKER_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def docker_works() -> bool:
    """A Docker engine answers and the compose plugin is installed."""
    if shutil.which("docker") is None:
        return False
    return _succeeds(["docker", "compose", "version"]) and _succeeds(["docker", "info"])


def backend() -> str | None:
    """'docker', 'local' (prometheus on PATH) or None when neither is usable."""
    chosen = os.environ.get("AIML_MONITORING_BACKEND", "auto")
    if chosen not in ("auto", "docker", "local"):
        raise SystemExit(f"error: AIML_MONITORING_BACKEND={chosen!r}; use auto, docker or local")
    if chosen in ("auto", "docker") and docker_works():
        return "docker"
    if chosen in ("auto", "local") and shutil.which("prometheus"):
        return "local"
    return None


# --- the local Prometheus ------------------------------------------------------------


def running_pid() -> int | None:
    """The recorded PID if it is alive and still this Prometheus (same storage), else None."""
    try:
        pid = int(pid_file().read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if _alive(pid) and f"--storage.tsdb.path={storage()}" in _cmdline(pid):
        return pid
    return None


def ready(timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url()}/-/ready", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def port_in_use() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port())) == 0


def start_local() -> bool:
    pid = running_pid()
    if pid is not None:
        print(f"prometheus: already running (pid {pid}) at {url()}")
        return True
    pid_file().unlink(missing_ok=True)
    if port_in_use():
        print(
            f"prometheus: port {port()} is already in use by another program; "
            "stop it or set AIML_PROMETHEUS_PORT to a free port",
            file=sys.stderr,
        )
        return False
    binary = shutil.which("prometheus")
    assert binary is not None  # backend() checked
    log = log_dir() / "prometheus.log"
    command = [
        binary,
        f"--config.file={CONFIG}",
        f"--storage.tsdb.path={storage()}",
        "--storage.tsdb.retention.time=30d",
        f"--web.listen-address=127.0.0.1:{port()}",
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the terminal and make's process group
        )
    pid_file().write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pid_file().unlink(missing_ok=True)
            print(f"prometheus: exited with code {proc.returncode}; last log lines:\n{_tail(log)}")
            return False
        if ready():
            print(f"prometheus: up (pid {proc.pid}) at {url()}  (log: {log})")
            return True
        time.sleep(0.25)
    print(f"prometheus: not ready after {READY_TIMEOUT_S:.0f} s; stopping it")
    stop_local()
    print(_tail(log))
    return False


def stop_local() -> None:
    path = pid_file()
    pid = running_pid()
    if pid is None:
        if path.exists():
            print("prometheus: stale PID file removed (process already gone)")
            path.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        print(f"prometheus: did not stop within {STOP_TIMEOUT_S:.0f} s; sending SIGKILL")
        os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    print(f"prometheus: stopped (pid {pid})")


# --- docker compose ------------------------------------------------------------------


def compose(*args: str) -> int:
    command = ["docker", "compose", "-f", str(COMPOSE_FILE), *args]
    print("$ " + " ".join(command), flush=True)
    return subprocess.run(command, cwd=REPO).returncode


# --- actions -------------------------------------------------------------------------

# Scrape credentials prometheus.yml reads (credentials_file), one per job.
SECRETS = {"pose_analyzer": "POSE_API_KEY", "gpu_optimizer": "GPU_OPT_API_KEY"}


def write_credentials(directory: Path | None = None) -> None:
    """secrets/<job>.key from the services' key variables (empty when unset), mode 0600."""
    directory = directory or MONITORING / "secrets"
    directory.mkdir(parents=True, exist_ok=True)
    for job, variable in SECRETS.items():
        path = directory / f"{job}.key"
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(os.environ.get(variable, ""))


def up() -> int:
    write_credentials()
    if running_pid() is not None:  # a local Prometheus from an earlier `up`
        start_local()
        print(GRAFANA_HINT)
        return 0
    chosen = backend()
    if chosen is None:
        print(
            "error: neither a working Docker engine with the compose plugin "
            "(`docker compose version` and `docker info`) nor `prometheus` on PATH; "
            "install Docker, or Prometheus (Debian/Ubuntu: apt-get install prometheus)",
            file=sys.stderr,
        )
        return 1
    if chosen == "docker":
        if compose("up", "-d") != 0:
            return 1
        compose_marker().write_text(f"{COMPOSE_FILE}\n")
        print(
            "\nmonitoring:\n  prometheus http://localhost:9090\n  grafana    http://localhost:3000"
        )
        return 0
    if not start_local():
        return 1
    print(f"\nmonitoring:\n  prometheus {url()}  (targets: {MONITORING / 'targets'})")
    print(GRAFANA_HINT)
    return 0


def down() -> int:
    stopped = False
    if pid_file().exists():
        stop_local()
        stopped = True
    if compose_marker().exists():
        if shutil.which("docker") is None or compose("down") != 0:
            print("error: `docker compose down` failed; the containers may still run")
            return 1
        compose_marker().unlink()
        stopped = True
    if not stopped:
        print("monitoring: not running (nothing started by `make monitoring-up`)")
    return 0


def status() -> int:
    pid = running_pid()
    if pid is not None:
        state = "ready" if ready() else "running, not ready"
        print(f"prometheus: {state} (pid {pid}) at {url()}")
    elif compose_marker().exists():
        return compose("ps")
    else:
        print("monitoring: stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("action", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    return {"up": up, "down": down, "status": status}[args.action]()


if __name__ == "__main__":
    sys.exit(main())
