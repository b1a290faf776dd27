"""Batch-size finder on a real device: grow, then bisect, surviving every OOM.

Unlike finders that only catch the CUDA OOM, this one also takes an explicit
memory budget enforced by the tracker (an allocation past it raises like an
OOM), which both reserves room for what the device also runs and makes the
search testable on the CPU. On CUDA without a budget the safety margin is
enforced by the allocator itself (``set_per_process_memory_fraction``), so the
size found keeps that margin free instead of being the last one that
happened not to crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from gpu_optimizer.estimator import Mode, _Session
from gpu_optimizer.finetune import TrainingSetup
from gpu_optimizer.models import check_dtype, check_optimizer, parse_shape
from gpu_optimizer.profiler import free_memory
from gpu_optimizer.tracker import is_oom


@dataclass
class Trial:
    batch_size: int
    ok: bool
    peak_bytes: int | None
    seconds: float
    error: str | None = None


@dataclass
class FinderResult:
    batch_size: int
    device: str
    limit_bytes: int | None
    trials: list[Trial] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "device": self.device,
            "limit_bytes": self.limit_bytes,
            "trials": [asdict(t) for t in self.trials],
        }


def search(
    try_batch: Callable[[int], Trial], min_batch: int = 1, max_batch: int = 4096
) -> FinderResult:
    """Largest batch in [min_batch, max_batch] for which ``try_batch`` succeeds (0 if none).

    Doubles from ``min_batch`` until a failure or ``max_batch``, then bisects
    between the last success and the first failure. Assumes fitting is
    monotone in the batch size.
    """
    if min_batch < 1 or max_batch < min_batch:
        raise ValueError(f"need 1 <= min_batch <= max_batch, got {min_batch}, {max_batch}")
    trials: list[Trial] = []

    def attempt(b: int) -> bool:
        trial = try_batch(b)
        trials.append(trial)
        return trial.ok

    good, bad = 0, max_batch + 1
    b = min_batch
    while True:
        if attempt(b):
            good = b
            if b == max_batch:
                break
            b = min(b * 2, max_batch)
        else:
            bad = b
            break
    while bad - good > 1 and good >= min_batch:
        mid = (good + bad) // 2
        if attempt(mid):
            good = mid
        else:
            bad = mid
    return FinderResult(good, "", None, trials)


def find_batch_size(
    model: str,
    input_shape: str | tuple[int, ...],
    *,
    device: str = "cuda",
    optimizer: str = "adamw",
    dtype: str = "fp32",
    mode: Mode = "train",
    budget_bytes: int | None = None,
    margin: float = 0.1,
    min_batch: int = 1,
    max_batch: int = 4096,
    steps_per_trial: int = 1,
    setup: TrainingSetup | None = None,
) -> FinderResult:
    """Find the largest batch that runs ``steps_per_trial`` steps within the memory limit.

    The limit is ``budget_bytes * (1 - margin)`` when a budget is given
    (tracked bytes, any device); otherwise, on CUDA, ``1 - margin`` of the
    card's memory through the allocator.
    """
    shape = parse_shape(input_shape)
    opt = check_optimizer(optimizer)
    dt = check_dtype(dtype)
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA GPU is available on this machine")
    if budget_bytes is None and dev.type != "cuda":
        raise ValueError("on a non-CUDA device the finder needs an explicit memory budget")
    limit = int(budget_bytes * (1.0 - margin)) if budget_bytes is not None else None
    session = _Session(model, opt, mode, fake=False, device=str(dev), dtype=dt, setup=setup)
    round_to = 512 if dev.type == "cuda" else 1

    def try_batch(b: int) -> Trial:
        start = time.perf_counter()
        peak = 0
        try:
            for _ in range(steps_per_trial):
                report = session.tracked_step(
                    b, shape, dt, plan="plain", round_to=round_to, limit_bytes=limit
                )
                peak = max(peak, report.peak_bytes)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
        except Exception as exc:
            if not is_oom(exc):
                raise
            if session.optimizer is not None:
                session.optimizer.zero_grad(set_to_none=True)
            message = str(exc).splitlines()[0]
            del exc
            free_memory(dev)
            return Trial(b, False, None, time.perf_counter() - start, message)
        return Trial(b, True, peak, time.perf_counter() - start)

    restore_fraction = dev.type == "cuda" and budget_bytes is None
    if restore_fraction:
        torch.cuda.set_per_process_memory_fraction(1.0 - margin, dev)
    try:
        result = search(try_batch, min_batch, max_batch)
    finally:
        if restore_fraction:
            torch.cuda.set_per_process_memory_fraction(1.0, dev)
        free_memory(dev)
    result.device = str(dev)
    result.limit_bytes = limit
    return result
