"""Measure jobs as Ray tasks: the service's hand-off to a cluster when AIML_RAY_ADDRESS is set.

A ``measure`` profiling job runs model code on a device, which is what the
cluster's GPU machines are for; ``estimate`` jobs and plans stay in local
worker processes. The task holds one GPU for a CUDA job (so Ray places it on a
node with a free card) and runs exactly what a local worker runs
(:func:`gpu_optimizer.jobs.worker.run_profile`). Ray retries it once if its
worker or node dies; cancellation and timeouts are ``ray.cancel(force=True)``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from gpu_optimizer.cluster import RAY_ADDRESS_ENV, cluster_address

_lock = threading.Lock()


def ray_address() -> str | None:
    """The cluster measure jobs go to, or None (local worker processes) when unset."""
    value = os.environ.get(RAY_ADDRESS_ENV)
    return cluster_address(value) if value else None


def measure(request: dict[str, Any]) -> dict[str, Any]:
    """Runs in a Ray worker on the chosen node."""
    import ray

    from gpu_optimizer.jobs.worker import describe_error, run_profile

    try:
        result = run_profile(request, lambda _p: None)
    except Exception as exc:
        raise RuntimeError(describe_error(exc)) from None
    result["ray_node_id"] = ray.get_runtime_context().get_node_id()
    return result


def submit(address: str, request: dict[str, Any]) -> Any:
    """Start ``request`` as a task on the cluster at ``address``; returns its ObjectRef."""
    import ray

    from gpu_optimizer.cluster import connect

    with _lock:
        if not ray.is_initialized():
            connect(address)
    device = str(request.get("device") or "cuda")
    remote: Any = ray.remote(measure)
    return remote.options(
        num_cpus=1,
        num_gpus=1 if device.startswith("cuda") else 0,
        max_retries=1,
        retry_exceptions=False,
    ).remote(request)


def ready(ref: Any, timeout: float) -> bool:
    import ray

    done, _ = ray.wait([ref], num_returns=1, timeout=timeout)
    return bool(done)


def outcome(ref: Any) -> tuple[str, Any]:
    """("result", dict) or ("error", message) of a finished task."""
    import ray

    try:
        return "result", ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        return "error", "cancelled"
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        text = str(cause) if cause is not None else str(exc).strip().splitlines()[-1]
        return "error", text
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return "error", f"the Ray task was lost: {first}"


def cancel(ref: Any) -> None:
    import ray

    ray.cancel(ref, force=True)
