"""A real pose service on a free port, for the integration tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "data" / "samples" / "pose2sim"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_data_dir(root: Path) -> Path:
    """A data directory holding the four single-person views (copies: no symlink escapes)."""
    data = root / "data"
    (data / "samples").mkdir(parents=True)
    for cam in ("cam01", "cam02", "cam03", "cam04"):
        src = SAMPLES / "single" / f"{cam}.mp4"
        if not src.exists():
            raise RuntimeError(f"{src} missing: run `make fetch-samples`")
        shutil.copy(src, data / "samples" / f"{cam}.mp4")
    return data


class Server:
    def __init__(self, data_dir: Path, database_url: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.database_url = database_url
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 120.0) -> Server:
        env = dict(os.environ)
        env.update(
            {
                "POSE_DATA_DIR": str(self.data_dir),
                "POSE_DATABASE_URL": self.database_url,
                "POSE_LOG_LEVEL": "warning",
                **self.env,
            }
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pose_analyzer.cli", "serve", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.kill()  # never leave a half-started server behind
        raise RuntimeError(f"server did not come up: {self.log.read_text()[-3000:]}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def running_server(data_dir: Path, database_url: str, **env: str) -> Iterator[Server]:
    server = Server(data_dir, database_url, **env).start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(predicate: Any, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(k) == v for k, v in (labels or {}).items()
            ):
                return float(sample.value)
    return None
