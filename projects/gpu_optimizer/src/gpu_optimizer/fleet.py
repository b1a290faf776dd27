"""`gpu-optimizer measure-fleet`: measure a training step on every GPU of a Ray cluster.

One Ray task per node that has a GPU, pinned to that node and holding one
GPU, runs the real ``gpu-optimizer profile --device cuda`` (a fresh process
per batch size, as a user would run it, so one size's OOM or cached blocks
never colour the next). The peaks are stored keyed by GPU name and driver in
the gpu_optimizer database, next to the estimator's prediction of the same
step, and then used: :func:`fit_overhead` refits the CUDA overhead model
(cuBLAS/cuDNN workspace and allocator fragmentation) per card from them, and
:func:`measured_figures` gives a plan the measured figures and the estimate's
error. The CUDA context is outside the allocator, so ``profile`` cannot see
it; its default stays.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from gpu_optimizer.estimator import DEFAULT_OVERHEAD, CudaOverheadModel
from gpu_optimizer.machines import MachineProfile, _normalise, match_profile
from gpu_optimizer.storage import Database, MeasuredPeak

PROFILE_TIMEOUT_S = 900.0


class NoGpuInCluster(RuntimeError):
    """The cluster has no node with a GPU: nothing can be measured."""


@dataclass(frozen=True)
class FleetWorkload:
    model: str
    input_shape: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    optimizer: str = "adamw"
    dtype: str = "fp32"
    mode: str = "train"


def _profile_command(workload: FleetWorkload, batch_size: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gpu_optimizer.cli",
        "profile",
        workload.model,
        "--input-shape",
        ",".join(str(d) for d in workload.input_shape),
        "--batch-size",
        str(batch_size),
        "--device",
        "cuda",
        "--optimizer",
        workload.optimizer,
        "--dtype",
        workload.dtype,
        "--mode",
        workload.mode,
        "--json",
    ]


def measure_here(workload: FleetWorkload, timeout_s: float = PROFILE_TIMEOUT_S) -> dict[str, Any]:
    """On one GPU node (inside a task holding 1 GPU): its GPU, driver and one profile per size.

    Sizes run smallest first and stop at the first OOM: larger ones cannot fit.
    """
    import torch

    from gpu_optimizer.nvml import read_gpus

    gpus = read_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    index = int(visible.split(",")[0]) if visible.split(",")[0].strip().isdigit() else 0
    gpu = next((g for g in gpus if g.index == index), gpus[0] if gpus else None)
    out: dict[str, Any] = {
        "node": socket.gethostname(),
        "gpu_name": gpu.name if gpu else "unknown",
        "driver_version": (gpu.driver_version if gpu else None) or "unknown",
        "gpu_total_bytes": gpu.memory_total_bytes if gpu else None,
        "torch_version": torch.__version__,
        "runs": [],
    }
    for batch_size in sorted(workload.batch_sizes):
        proc = subprocess.run(
            _profile_command(workload, batch_size),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            run = {"batch_size": batch_size, "ok": False, "error": lines[-1] if lines else "failed"}
        else:
            data = json.loads(proc.stdout)
            allocator = data.get("allocator") or {}
            run = {
                "batch_size": batch_size,
                "ok": bool(data["ok"]),
                "error": data.get("error"),
                "peak_bytes": data.get("peak_bytes"),
                "max_allocated_bytes": allocator.get("max_memory_allocated_bytes"),
                "max_reserved_bytes": allocator.get("max_memory_reserved_bytes"),
            }
        out["runs"].append(run)
        if not run["ok"]:
            break
    return out


def measure_fleet(
    workload: FleetWorkload,
    *,
    cluster: str | None,
    database: Database,
    timeout_s: float = PROFILE_TIMEOUT_S,
) -> list[MeasuredPeak]:
    """Measure ``workload`` on every GPU node of ``cluster`` and store the peaks."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from gpu_optimizer.cluster import connect
    from gpu_optimizer.planning import Workload, predicted_peak_bytes

    conn = connect(cluster)
    try:
        nodes = conn.nodes()
        gpu_nodes = [n for n in nodes if n.gpus >= 1]
        if not gpu_nodes:
            where = "this machine's local Ray" if conn.local else f"the Ray cluster at {cluster}"
            raise NoGpuInCluster(
                f"{where} has no node with a GPU ({len(nodes)} node(s), none reports GPU "
                "resources); start each GPU machine's node with `ray start --address HEAD:6379` "
                "on a machine where `nvidia-smi` works (docs/cluster.md)"
            )
        remote: Any = ray.remote(measure_here)
        refs = {
            remote.options(
                num_gpus=1,
                max_retries=1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            ).remote(workload, timeout_s): node
            for node in gpu_nodes
        }
        results: list[dict[str, Any]] = []
        for ref, node in refs.items():
            try:
                results.append(ray.get(ref))
            except Exception as exc:
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                results.append({"node": node.address, "error": first, "runs": []})
    finally:
        conn.close()
    plan_workload = Workload(
        workload.model,
        workload.model,
        workload.input_shape,
        workload.mode,  # type: ignore[arg-type]
        workload.optimizer,
        workload.dtype,
    )
    rows: list[MeasuredPeak] = []
    for result in results:
        if "gpu_name" not in result:
            continue
        for run in result["runs"]:
            rows.append(
                MeasuredPeak(
                    gpu_name=result["gpu_name"],
                    driver_version=result["driver_version"],
                    gpu_total_bytes=result["gpu_total_bytes"],
                    node=str(result["node"])[:128],
                    model=workload.model,
                    input_shape=list(workload.input_shape),
                    batch_size=int(run["batch_size"]),
                    optimizer=workload.optimizer,
                    dtype=workload.dtype,
                    mode=workload.mode,
                    ok=bool(run["ok"]),
                    error=run.get("error"),
                    peak_bytes=run.get("peak_bytes"),
                    max_allocated_bytes=run.get("max_allocated_bytes"),
                    max_reserved_bytes=run.get("max_reserved_bytes"),
                    estimated_peak_bytes=predicted_peak_bytes(
                        plan_workload, int(run["batch_size"])
                    ),
                    torch_version=result["torch_version"],
                )
            )
    with database.session() as session:
        session.add_all(rows)
        session.commit()
    failed = [r for r in results if "gpu_name" not in r]
    if failed and not rows:
        raise RuntimeError(f"measuring failed on every GPU node: {failed[0]['error']}")
    return rows


# -- using the measurements ---------------------------------------------------------


def load_measurements(database: Database) -> list[MeasuredPeak]:
    with database.session() as session:
        return list(session.scalars(select(MeasuredPeak).order_by(MeasuredPeak.measured_at)))


def _usable(rows: Sequence[MeasuredPeak]) -> list[MeasuredPeak]:
    return [
        r
        for r in rows
        if r.ok
        and r.estimated_peak_bytes
        and r.max_allocated_bytes is not None
        and r.max_reserved_bytes is not None
    ]


def fit_overhead(
    rows: Sequence[MeasuredPeak], base: CudaOverheadModel = DEFAULT_OVERHEAD
) -> CudaOverheadModel | None:
    """The overhead model that best explains a card's measurements, or None without any.

    workspace = median(measured max_allocated - estimated tracked peak);
    fragmentation = median(measured max_reserved / (estimate + workspace) - 1).
    Medians, so one odd run (another process on the card) does not move the fit.
    """
    usable = _usable(rows)
    if not usable:
        return None
    workspace = max(
        0.0,
        statistics.median(
            float(r.max_allocated_bytes or 0) - float(r.estimated_peak_bytes or 0) for r in usable
        ),
    )
    fragmentation = max(
        0.0,
        statistics.median(
            float(r.max_reserved_bytes or 0) / (float(r.estimated_peak_bytes or 0) + workspace)
            - 1.0
            for r in usable
        ),
    )
    return dataclasses.replace(
        base, workspace_bytes=int(workspace), fragmentation=round(fragmentation, 4)
    )


def rows_for_profile(
    rows: Sequence[MeasuredPeak], profile: MachineProfile, profiles: Sequence[MachineProfile]
) -> list[MeasuredPeak]:
    """The measurements taken on the card a machine profile describes."""
    return [
        r
        for r in rows
        if (match := match_profile(r.gpu_name, r.gpu_total_bytes, list(profiles))) is not None
        and match.name == profile.name
    ]


def overheads_by_machine(
    rows: Sequence[MeasuredPeak], profiles: Sequence[MachineProfile]
) -> dict[str, CudaOverheadModel]:
    out: dict[str, CudaOverheadModel] = {}
    for profile in profiles:
        fitted = fit_overhead(rows_for_profile(rows, profile, profiles))
        if fitted is not None:
            out[profile.name] = fitted
    return out


def measured_figures(
    rows: Sequence[MeasuredPeak],
    *,
    model: str,
    input_shape: Sequence[int],
    optimizer: str,
    dtype: str,
    mode: str,
    refit: CudaOverheadModel | None = None,
) -> list[dict[str, Any]]:
    """Measured peaks of this workload, each with the estimate's error against it.

    ``error`` compares the reserved pool the estimator predicts with the default
    constants; ``error_refit`` with the card's refitted constants.
    """
    out = []
    for r in rows:
        if (r.model, list(r.input_shape), r.optimizer, r.dtype, r.mode) != (
            model,
            list(input_shape),
            optimizer,
            dtype,
            mode,
        ):
            continue
        figure: dict[str, Any] = {
            "gpu": r.gpu_name,
            "driver": r.driver_version,
            "batch_size": r.batch_size,
            "ok": r.ok,
            "measured_reserved_bytes": r.max_reserved_bytes,
            "measured_allocated_bytes": r.max_allocated_bytes,
            "measured_at": r.measured_at.isoformat() if r.measured_at else None,
        }
        if r.ok and r.estimated_peak_bytes and r.max_reserved_bytes:
            default = DEFAULT_OVERHEAD.reserved_bytes(r.estimated_peak_bytes)
            figure["estimated_reserved_bytes"] = default
            figure["error"] = round(default / r.max_reserved_bytes - 1.0, 4)
            if refit is not None:
                figure["error_refit"] = round(
                    refit.reserved_bytes(r.estimated_peak_bytes) / r.max_reserved_bytes - 1.0, 4
                )
        out.append(figure)
    return out


def same_gpu(a: str, b: str) -> bool:
    return _normalise(a).split() == _normalise(b).split()


def open_measurements(url: str) -> list[MeasuredPeak]:
    """Every stored measurement, or none where the database does not exist yet.

    Planning must not create a database file as a side effect, and a database
    it cannot read only costs the measured figures, never the plan.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and (
        not parsed.database or not os.path.exists(parsed.database)
    ):
        return []
    try:
        database = Database(url)
    except SQLAlchemyError as exc:
        print(f"gpu-optimizer: measurements unavailable ({type(exc).__name__})", file=sys.stderr)
        return []
    try:
        return load_measurements(database)
    finally:
        database.dispose()


def plan_with_measurements(
    workload: Any,
    profiles: Sequence[MachineProfile],
    rows: Sequence[MeasuredPeak],
    *,
    safety_margin: float,
) -> list[tuple[Any, dict[str, Any]]]:
    """One plan per machine, with that card's refitted overhead where it was measured.

    Each plan comes with extras: ``measured`` (this workload's measured figures
    on that card, with the estimate's error) and ``overhead`` (the refit).
    """
    from gpu_optimizer.planning import plan_for_machines

    overheads = overheads_by_machine(rows, profiles)
    out: list[tuple[Any, dict[str, Any]]] = []
    for machine in profiles:
        overhead = overheads.get(machine.name)
        (plan,) = plan_for_machines(
            workload, [machine], safety_margin=safety_margin, overhead=overhead or DEFAULT_OVERHEAD
        )
        extra: dict[str, Any] = {}
        mine = rows_for_profile(rows, machine, profiles)
        if mine:
            extra["measured"] = measured_figures(
                mine,
                model=workload.model,
                input_shape=workload.input_shape,
                optimizer=workload.optimizer,
                dtype=workload.dtype,
                mode=workload.mode,
                refit=overhead,
            )
        if overhead is not None:
            extra["overhead"] = {
                "workspace_bytes": overhead.workspace_bytes,
                "fragmentation": overhead.fragmentation,
                "context_bytes": overhead.context_bytes,
                "measurements": len(_usable(mine)),
            }
        out.append((plan, extra))
    return out
