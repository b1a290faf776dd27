"""A real multi-node Ray cluster on this machine, for tests: `ray start` processes we own by PID.

Every node is a `ray start --block` process (its GCS, raylet and agents are its
children), on free ports of the loopback address LOOPBACK (Ray rewrites 127.0.0.1
to the machine's network address, so the cluster uses another address of the
loopback range: no test traffic goes to a network address), with its session files in a temporary
directory and its own authentication token, so the cluster shares nothing
with any other Ray on the machine. Teardown kills exactly those process trees;
`ray stop` is never used (it stops every Ray of the user).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.2"  # gpu_optimizer.cluster.LOCAL_NODE_IP
RAY = str(Path(sys.executable).with_name("ray"))


def free_port(avoid: set[int] | None = None) -> int:
    """A port free on LOOPBACK now and not in `avoid` (ports this cluster already gave out)."""
    avoid = avoid or set()
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise RuntimeError("no free port on the loopback address")


def free_port_range(avoid: set[int], width: int = 64) -> tuple[int, int]:
    """A run of free ports for a node's workers (checked, not reserved), clear of `avoid`."""
    for _ in range(50):
        start = free_port(avoid) // width * width
        if start + width > 65000 or avoid & set(range(start, start + width)):
            continue
        ok = True
        for port in range(start, start + width):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex((LOOPBACK, port)) == 0:
                    ok = False
                    break
        if ok:
            return start, start + width - 1
    raise RuntimeError("no free port range for Ray workers")


@dataclass
class RayNode:
    process: subprocess.Popen[bytes]
    resources: dict[str, float]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def raylet(self) -> psutil.Process:
        for p in self.processes():
            try:
                if p.name() == "raylet":
                    return p
            except psutil.NoSuchProcess:
                continue
        raise RuntimeError(f"node {self.pid} has no raylet")

    def kill(self) -> None:
        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=10)
        self.process.wait(timeout=10)


@dataclass
class RayCluster:
    root: Path
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    port: int = field(default_factory=free_port)
    nodes: list[RayNode] = field(default_factory=list)
    # Every port given to a component of this cluster: Ray refuses to start a node
    # whose ports collide (a worker range overlapping an agent's port, say).
    used: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.used.add(self.port)

    def _port(self) -> int:
        port = free_port(self.used)
        self.used.add(port)
        return port

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def env(self) -> dict[str, str]:
        """What every process of this cluster (nodes and drivers) needs in its environment."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
            # Workers use this environment, not one `uv run` (pytest's parent) would build.
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
            # A dead node is noticed in ~3 s instead of ~30 s.
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }

    def _start(self, args: list[str], resources: dict[str, float], name: str) -> RayNode:
        low, high = free_port_range(self.used)
        self.used.update(range(low, high + 1))
        log = self.root / f"{name}.log"
        cmd = [
            RAY,
            "start",
            "--block",
            "--disable-usage-stats",
            f"--temp-dir={self.root / 'ray'}",
            f"--min-worker-port={low}",
            f"--max-worker-port={high}",
            f"--node-manager-port={self._port()}",
            f"--object-manager-port={self._port()}",
            f"--dashboard-agent-listen-port={self._port()}",
            f"--dashboard-agent-grpc-port={self._port()}",
            f"--runtime-env-agent-port={self._port()}",
            f"--metrics-export-port={self._port()}",
            "--object-store-memory=200000000",
            f"--node-ip-address={LOOPBACK}",
            *args,
        ]
        if resources:
            import json

            cmd.append(f"--resources={json.dumps(resources)}")
        env = {**os.environ, **self.env()}
        with log.open("wb") as fh:
            process = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=self.root
            )
        node = RayNode(process, resources, log)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int = 1, resources: dict[str, float] | None = None) -> RayNode:
        self.root.mkdir(parents=True, exist_ok=True)
        return self._start(
            [
                "--head",
                f"--port={self.port}",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                "--include-dashboard=false",
                f"--dashboard-port={self._port()}",
                f"--ray-client-server-port={self._port()}",
            ],
            resources or {},
            "head",
        )

    def add_node(
        self, num_cpus: int = 1, resources: dict[str, float] | None = None, timeout: float = 90
    ) -> RayNode:
        node = self._start(
            [f"--address={self.address}", f"--num-cpus={num_cpus}", "--num-gpus=0"],
            resources or {},
            f"node{len(self.nodes)}",
        )
        self.wait_nodes(len(self.nodes), timeout)
        return node

    def remove_node(self, node: RayNode) -> None:
        """Kill a node (what is left of it after a test killed its raylet) and forget it,
        so the next add_node waits for the nodes that are meant to be alive."""
        node.kill()
        self.nodes.remove(node)

    def alive_nodes(self) -> list[dict[str, object]]:
        import ray

        return [n for n in ray.nodes() if n.get("Alive")]

    def wait_nodes(self, count: int, timeout: float) -> None:
        """Until ``count`` nodes are alive, as the driver (this process, connected) sees them."""
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ray.is_initialized() and len(self.alive_nodes()) == count:
                return
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise RuntimeError(f"ray node died at start:\n{node.log.read_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{count} Ray nodes not alive after {timeout} s")

    def connect(self, timeout: float = 90) -> None:
        """Connect this process as a driver, with the cluster's environment."""
        os.environ.update(self.env())
        import ray
        from ray._private import ray_constants

        ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False  # if Ray was imported before

        deadline = time.monotonic() + timeout
        self._wait_for_head(deadline)
        while True:
            try:
                ray.init(address=self.address, log_to_driver=False)
                return
            except ConnectionError:
                if time.monotonic() > deadline or self.nodes[0].process.poll() is not None:
                    raise
                time.sleep(0.5)

    def _wait_for_head(self, deadline: float) -> None:
        """Until the head's GCS accepts connections; a head that died says why at once
        (ray.init would otherwise wait a long time on an address nobody serves)."""
        head = self.nodes[0]
        while True:
            if head.process.poll() is not None:
                raise RuntimeError(f"ray head died at start:\n{head.log.read_text()[-3000:]}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex((LOOPBACK, self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"ray head not listening on {self.address}")
            time.sleep(0.2)

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for node in reversed(self.nodes):
            node.kill()
        for key in self.env():
            os.environ.pop(key, None)
        shutil.rmtree(self.root / "ray", ignore_errors=True)
