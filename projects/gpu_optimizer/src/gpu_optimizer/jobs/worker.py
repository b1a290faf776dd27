"""What runs inside a job's worker process: library calls, results as plain JSON-able dicts.

The parent never runs model code itself; it forks (forkserver, with this
module and torch preloaded) or spawns one process per job or plan, so an OOM,
a crash or a runaway model costs only that process.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import torch

from gpu_optimizer import planning
from gpu_optimizer.estimator import estimate
from gpu_optimizer.finetune import TrainingSetup
from gpu_optimizer.models import ModelSpecError
from gpu_optimizer.profiler import profile

Progress = Callable[[float], None]


def setup_from(request: dict[str, Any]) -> TrainingSetup:
    return TrainingSetup(
        lora_r=int(request.get("lora_r") or 0),
        lora_targets=tuple(request.get("lora_targets") or ()),
        freeze=tuple(request.get("freeze") or ()),
        grad_accum=int(request.get("grad_accum") or 1),
    )


class MemoryBudgetExceeded(RuntimeError):
    """The job's peak is above the memory budget its request set."""


class OutOfMemory(RuntimeError):
    """A measured step ran out of device memory (the profiler reports it, we fail the job)."""


def run_profile(request: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """One profiling job: estimate on fake tensors, or measure one real step on a device."""
    progress(0.05)
    shape = tuple(request["input_shape"])
    common = {
        "optimizer": request.get("optimizer", "adamw"),
        "dtype": request.get("dtype", "fp32"),
        "setup": setup_from(request),
    }
    if request.get("mode", "estimate") == "estimate":
        result = estimate(request["model"], shape, int(request["batch_size"]), **common).to_dict()
    else:
        device = request.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        measured = profile(
            request["model"], shape, int(request["batch_size"]), device=device, **common
        )
        if not measured.ok:
            raise OutOfMemory(measured.error or "out of memory")
        result = measured.to_dict()
    progress(0.95)
    budget = request.get("memory_budget_bytes")
    if budget is not None and result["peak_bytes"] > budget:
        raise MemoryBudgetExceeded(
            f"peak {result['peak_bytes']} bytes exceeds memory_budget_bytes {budget}"
        )
    return result


def _recommendation(plan: planning.MachinePlan) -> dict[str, Any]:
    r = plan.recommendation
    m = plan.machine
    return {
        "machine": {
            "name": m.name,
            "gpu": m.gpu,
            "vram_bytes": m.vram_bytes,
            "compute_capability": m.compute_capability,
        },
        "batch_plain": r.batch_plain,
        "batch_checkpointing": r.batch_checkpointing,
        "batch_offload": r.batch_offload,
        "recommended_batch": r.recommended_batch,
        "recommended_plan": r.recommended_plan,
    }


def run_plan(request: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Largest batch per machine profile: plain, checkpointing, offload, and the recommendation."""
    progress(0.05)
    workload = planning.Workload(
        name=request["model"],
        model=request["model"],
        input_shape=tuple(request["input_shape"]),
        mode=request.get("mode", "train"),
        optimizer=request.get("optimizer", "adamw"),
        dtype=request.get("dtype", "fp32"),
        setup=setup_from(request),
    )
    measurements = request.get("measurements")
    if not measurements:
        return {"machines": [_recommendation(p) for p in planning.plan_for_machines(workload)]}
    from gpu_optimizer.fleet import plan_with_measurements
    from gpu_optimizer.machines import load_machine_profiles
    from gpu_optimizer.storage import MeasuredPeak

    rows = [MeasuredPeak(**m) for m in measurements]
    planned = plan_with_measurements(workload, load_machine_profiles(), rows, safety_margin=0.1)
    return {"machines": [_recommendation(p) | extra for p, extra in planned]}


def run_recommendations(request: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Recommended batch per machine for the planner's default workloads (for the metrics)."""
    wanted = request.get("workloads")
    workloads = [w for w in planning.DEFAULT_WORKLOADS if wanted is None or w.name in wanted]
    out = []
    for i, workload in enumerate(workloads):
        for plan in planning.plan_for_machines(workload):
            row = _recommendation(plan)
            row["workload"] = workload.name
            out.append(row)
        progress((i + 1) / max(len(workloads), 1))
    return {"recommendations": out}


TASKS: dict[str, Callable[[dict[str, Any], Progress], dict[str, Any]]] = {
    "profile": run_profile,
    "plan": run_plan,
    "recommend": run_recommendations,
}


def describe_error(exc: BaseException) -> str:
    """The message a user sees: ours verbatim, anything else with its type and origin."""
    if isinstance(exc, (ModelSpecError, MemoryBudgetExceeded, OutOfMemory)):
        return str(exc)
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        where = f" (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name})"
    return f"{type(exc).__name__}: {exc}{where}"


def _exit_with_owner(conn: Connection) -> None:
    """Exit when the service that reads our pipe is gone (killed): no orphaned workers.

    The service holds the only read end of the pipe; when it dies, the write end
    polls as an error. (The worker's parent is the forkserver, which outlives the
    service while its children run, so watching the parent pid would not do.)
    """
    if not hasattr(select, "poll"):
        return
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLERR | select.POLLHUP)

    def watch() -> None:
        while True:
            for _fd, events in poller.poll(1000):
                if events & (select.POLLERR | select.POLLHUP):
                    os._exit(70)
                if events & select.POLLNVAL:
                    return

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


def child_main(conn: Connection, kind: str, request: dict[str, Any]) -> None:
    """Entry point of a worker process: run one task, send progress and one result or error."""
    _exit_with_owner(conn)
    if kind == "recommend" and hasattr(os, "nice"):
        os.nice(10)  # background work for the metrics yields to jobs and plans
    preload = sys.modules.get("gpu_optimizer.jobs.preload")
    if preload is not None:
        torch.set_num_threads(preload.THREADS)
    try:
        result = TASKS[kind](request, lambda p: conn.send(("progress", float(p))))
        conn.send(("result", result))
    except BaseException as exc:
        conn.send(("error", describe_error(exc)))
    finally:
        conn.close()
