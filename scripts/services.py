#!/usr/bin/env python3
"""Start, stop and inspect the two services in the background (`make run-all` / `stop-all`).

Each service runs as its own process from this environment's Python, with
its PID in logs/<service>.pid and its output in logs/<service>.log
(<service>: pose_analyzer, gpu_optimizer). Starting
a service that already runs starts nothing; stopping stops exactly the PID
recorded (after checking that the PID still belongs to that service) and
removes its PID file.

Environment: POSE_PORT / GPU_OPT_PORT (ports), POSE_API_KEY / GPU_OPT_API_KEY (sent
with every request this script makes, so a service that requires its key for /metrics
or everything is still checked), AIML_LOG_DIR (PID and log folder).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEALTH_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Service:
    name: str
    module: str  # the CLI module started as `python -m MODULE serve`
    port_env: str
    default_port: int
    host_env: str
    key_env: str

    @property
    def port(self) -> int:
        return int(os.environ.get(self.port_env, self.default_port))

    @property
    def host(self) -> str:
        return os.environ.get(self.host_env, "127.0.0.1")

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.key_env) or None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


SERVICES = {
    "pose_analyzer": Service(
        "pose_analyzer", "pose_analyzer.cli", "POSE_PORT", 8001, "POSE_HOST", "POSE_API_KEY"
    ),
    "gpu_optimizer": Service(
        "gpu_optimizer",
        "gpu_optimizer.cli",
        "GPU_OPT_PORT",
        8002,
        "GPU_OPT_HOST",
        "GPU_OPT_API_KEY",
    ),
}


def log_dir() -> Path:
    path = Path(os.environ.get("AIML_LOG_DIR", REPO / "logs"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def pid_file(svc: Service) -> Path:
    return log_dir() / f"{svc.name}.pid"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not a running service.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def running_pid(svc: Service) -> int | None:
    """The recorded PID if it is alive and still runs this service, else None."""
    path = pid_file(svc)
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if _alive(pid) and (svc.module in _cmdline(pid) or not Path("/proc").exists()):
        return pid
    return None


def healthy(svc: Service, timeout: float = 2.0) -> bool:
    request = urllib.request.Request(f"{svc.url}/health")
    if svc.api_key:
        request.add_header("X-API-Key", svc.api_key)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status == 200 and json.load(resp).get("status") == "ok"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_in_use(svc: Service) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((svc.host, svc.port)) == 0


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start(svc: Service) -> bool:
    pid = running_pid(svc)
    if pid is not None:
        print(f"{svc.name}: already running (pid {pid}) at {svc.url}")
        return True
    pid_file(svc).unlink(missing_ok=True)
    if port_in_use(svc):
        print(
            f"{svc.name}: port {svc.port} is already in use by another program; "
            f"stop it or set {svc.port_env} to a free port",
            file=sys.stderr,
        )
        return False
    log = log_dir() / f"{svc.name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                svc.module,
                "serve",
                "--host",
                svc.host,
                "--port",
                str(svc.port),
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the terminal and make's process group
        )
    pid_file(svc).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pid_file(svc).unlink(missing_ok=True)
            print(f"{svc.name}: exited with code {proc.returncode}; last log lines:\n{_tail(log)}")
            return False
        if healthy(svc):
            print(f"{svc.name}: up (pid {proc.pid}) at {svc.url}  (log: {log})")
            return True
        time.sleep(0.25)
    print(f"{svc.name}: no healthy /health after {HEALTH_TIMEOUT_S:.0f} s; stopping it")
    stop(svc)
    print(_tail(log))
    return False


def stop(svc: Service) -> bool:
    path = pid_file(svc)
    pid = running_pid(svc)
    if pid is None:
        if path.exists():
            print(f"{svc.name}: stale PID file removed (process already gone)")
            path.unlink(missing_ok=True)
        else:
            print(f"{svc.name}: not running")
        return True
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        print(f"{svc.name}: did not stop within {STOP_TIMEOUT_S:.0f} s; sending SIGKILL")
        os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    print(f"{svc.name}: stopped (pid {pid})")
    return True


def status(svc: Service) -> bool:
    pid = running_pid(svc)
    state = "healthy" if pid and healthy(svc) else ("running, not healthy" if pid else "stopped")
    print(f"{svc.name}: {state}" + (f" (pid {pid}) at {svc.url}" if pid else ""))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("service", choices=(*SERVICES, "all"), nargs="?", default="all")
    args = parser.parse_args(argv)
    chosen = list(SERVICES.values()) if args.service == "all" else [SERVICES[args.service]]
    action = {"start": start, "stop": stop, "status": status}[args.action]
    ok = all([action(svc) for svc in chosen])
    if args.action == "start" and ok:
        print("\nservices:")
        for svc in chosen:
            key = "  (API key required)" if svc.api_key else ""
            print(
                f"  {svc.name:13s} {svc.url}  (docs {svc.url}/docs, metrics {svc.url}/metrics){key}"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
