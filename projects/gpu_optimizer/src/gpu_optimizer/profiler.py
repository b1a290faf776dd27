"""Measured profiles: one real step on a device, tracked, with the CUDA allocator's own numbers.

An out-of-memory error is a result (``ok=False`` with the message), never a
crash: asking "does batch 96 fit?" must be answerable with "no".
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpu_optimizer.estimator import Mode, _Session
from gpu_optimizer.finetune import TrainingSetup
from gpu_optimizer.models import check_dtype, check_optimizer, parse_shape
from gpu_optimizer.tracker import MemoryReport, is_oom


@dataclass
class ProfileResult:
    model: str
    input_shape: tuple[int, ...]
    batch_size: int
    optimizer: str
    dtype: str
    mode: str
    device: str
    ok: bool
    error: str | None
    report: MemoryReport | None
    allocator: dict[str, int] | None
    snapshot: str | None = None

    def to_dict(self, *, per_module: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "dtype": self.dtype,
            "mode": self.mode,
            "device": self.device,
            "ok": self.ok,
            "error": self.error,
        }
        if self.report is not None:
            out.update(self.report.to_dict(per_module=per_module))
        if self.allocator is not None:
            out["allocator"] = dict(self.allocator)
        if self.snapshot is not None:
            out["snapshot"] = self.snapshot
        return out


def free_memory(device: torch.device) -> None:
    """What to do after an OOM: drop garbage, then the allocator's cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def allocator_stats(device: torch.device) -> dict[str, int]:
    """The CUDA caching allocator's view: peak allocated, reserved, and what reserve is unused."""
    peak_alloc = int(torch.cuda.max_memory_allocated(device))
    peak_reserved = int(torch.cuda.max_memory_reserved(device))
    return {
        "max_memory_allocated_bytes": peak_alloc,
        "max_memory_reserved_bytes": peak_reserved,
        "memory_reserved_bytes": int(torch.cuda.memory_reserved(device)),
        "fragmentation_bytes": peak_reserved - peak_alloc,
    }


def profile(
    model: str,
    input_shape: str | tuple[int, ...],
    batch_size: int,
    *,
    device: str = "cuda",
    optimizer: str = "adamw",
    dtype: str = "fp32",
    mode: Mode = "train",
    snapshot_path: str | Path | None = None,
    budget_bytes: int | None = None,
    setup: TrainingSetup | None = None,
) -> ProfileResult:
    """Run and track one real step on ``device``.

    ``budget_bytes`` makes the tracker fail the step like an OOM once its
    tensors pass that many bytes (a smaller device, on any device).

    ``snapshot_path`` (CUDA only) writes the allocator's history
    (``torch.cuda.memory._record_memory_history``) as a pickle loadable at
    https://pytorch.org/memory_viz, PyTorch's memory visualizer.
    """
    if snapshot_path is not None and torch.device(device).type != "cuda":
        raise ValueError("a memory snapshot records the CUDA allocator: it needs device cuda")
    shape = parse_shape(input_shape)
    opt = check_optimizer(optimizer)
    dt = check_dtype(dtype)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA GPU is available on this machine")
    result = ProfileResult(
        model, shape, batch_size, opt, dt, mode, str(dev), True, None, None, None
    )
    session: _Session | None = None
    try:
        session = _Session(model, opt, mode, fake=False, device=str(dev), dtype=dt, setup=setup)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            if snapshot_path is not None:
                torch.cuda.memory._record_memory_history(max_entries=200_000)
        report = session.tracked_step(
            batch_size, shape, dt, plan="plain", round_to=1, limit_bytes=budget_bytes
        )
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            result.allocator = allocator_stats(dev)
            report.allocator = result.allocator
            if snapshot_path is not None:
                torch.cuda.memory._dump_snapshot(str(snapshot_path))
                result.snapshot = str(snapshot_path)
        result.report = report
    except Exception as exc:
        if not is_oom(exc):
            raise
        result.ok = False
        result.error = f"out of memory at batch size {batch_size}: {str(exc).splitlines()[0]}"
        if dev.type == "cuda":
            result.allocator = allocator_stats(dev)
    finally:
        if dev.type == "cuda" and snapshot_path is not None:
            torch.cuda.memory._record_memory_history(enabled=None)
        del session
        free_memory(dev)
    return result
