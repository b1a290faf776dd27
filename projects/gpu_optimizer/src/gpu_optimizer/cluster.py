"""One way into Ray for both products: this machine alone, or a cluster of the user's machines.

``--cluster local`` (the default wherever a command runs things in parallel)
starts an in-process Ray with this machine's cores and needs nothing set up;
``--cluster ADDRESS`` or ``AIML_RAY_ADDRESS`` joins a cluster started with
``ray start --head`` / ``ray start --address`` (docs/cluster.md). Each GPU
machine advertises a custom resource named after its machine profile
(``rtx-4070-ti``: 1), so work can be aimed at one card by asking for it;
:func:`machine_resources` computes that resource set for the local machine.

Ray is imported lazily: the services and the other commands never pay for it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gpu_optimizer.machines import MachineProfile, match_profile

RAY_ADDRESS_ENV = "AIML_RAY_ADDRESS"
LOCAL = "local"
# A local Ray serves only this machine, so it listens on loopback. Ray rewrites
# 127.0.0.1 to the machine's network address; another address of the loopback
# range (127.0.0.0/8, answered by Linux and Windows alike) keeps it there.
LOCAL_NODE_IP = "127.0.0.2"
log = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """Ray could not be started or reached; the message says what to do."""


def cluster_address(cluster: str | None) -> str | None:
    """The address to join, or None for a local in-process Ray.

    An explicit ``--cluster`` wins over ``AIML_RAY_ADDRESS``; ``local`` always
    means this machine alone.
    """
    chosen = cluster if cluster is not None else os.environ.get(RAY_ADDRESS_ENV) or None
    if chosen is None or chosen.strip().lower() == LOCAL:
        return None
    return chosen.strip()


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return int(self.resources.get("GPU", 0))


@dataclass
class Cluster:
    """A connection to Ray; :meth:`close` shuts down only what :func:`connect` started."""

    address: str | None
    owned: bool

    @property
    def local(self) -> bool:
        return self.address is None

    def nodes(self) -> list[NodeInfo]:
        import ray

        return [
            NodeInfo(n["NodeID"], n.get("NodeManagerAddress", ""), dict(n.get("Resources", {})))
            for n in ray.nodes()
            if n.get("Alive")
        ]

    def resources(self) -> dict[str, float]:
        import ray

        return {k: float(v) for k, v in ray.cluster_resources().items()}

    def close(self) -> None:
        if self.owned:
            import ray

            ray.shutdown()
            self.owned = False


def connect(
    cluster: str | None = None,
    *,
    num_cpus: int | None = None,
    temp_dir: str | None = None,
) -> Cluster:
    """Start a local Ray (``num_cpus`` defaults to this machine's cores) or join ``cluster``.

    Reuses a Ray already initialised in this process (a test, a notebook), so a
    library call inside a driver that set Ray up does not start a second one.
    """
    import ray

    _no_uv_run_hook()
    address = cluster_address(cluster)
    if ray.is_initialized():
        return Cluster(address=address, owned=False)
    options: dict[str, Any] = {
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    try:
        if address is None:
            ray.init(
                num_cpus=num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                _node_ip_address=LOCAL_NODE_IP,
                _temp_dir=temp_dir,
                **options,
            )
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"the Ray cluster at {address!r}" if address else "a local Ray"
        hint = (
            "; start its head with `ray start --head` (docs/cluster.md), or use --cluster local"
            if address
            else ""
        )
        raise ClusterError(f"could not reach {where}: {first}{hint}") from None
    return Cluster(address=address, owned=True)


def _no_uv_run_hook() -> None:
    """Workers use the environment installed on their node, never one `uv run` builds.

    Ray detects a driver started by `uv run` (as `uv run pose-analyzer batch` is) and
    then uploads the current directory and runs every worker through `uv run`:
    minutes per worker, and a copy of the package without its data files.
    """
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    from ray._private import ray_constants

    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = os.environ[
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV"
    ].lower() in ("1", "true")


def machine_resources(
    gpu_names: Sequence[tuple[str, int | None]] | None = None,
    profiles: Sequence[MachineProfile] | None = None,
) -> dict[str, float]:
    """The custom resources this machine should advertise: one unit per GPU, by profile name.

    ``gpu_names`` is ``[(nvml name, total bytes)]``, read from NVML when None.
    A GPU with no profile gets none (plain ``GPU`` still schedules on it).
    """
    if gpu_names is None:
        from gpu_optimizer.nvml import read_gpus

        gpu_names = [(g.name, g.memory_total_bytes) for g in read_gpus()]
    out: dict[str, float] = {}
    for name, total in gpu_names:
        profile = match_profile(name, total, list(profiles) if profiles is not None else None)
        if profile is not None:
            out[profile.name] = out.get(profile.name, 0.0) + 1.0
    return out
