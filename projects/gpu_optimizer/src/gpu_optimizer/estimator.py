"""GPU-free estimator: one training step on fake tensors, tracked, plus a CUDA overhead model.

Fake tensors (``FakeTensorMode``) carry shapes, dtypes and strides but no
data, so a ResNet-50 step at batch 512 costs the same second of CPU as at
batch 1, and needs no memory. The tracker's accounting on them equals the
accounting on real tensors (tested against the CPU to within 1%).

Batch-size dependence. Running the same step at two batch sizes ``b1`` and
``b2`` gives two event logs with the same sequence of allocations, where
every live total ``L_t`` is linear in the batch: ``L_t(b) = A_t + C_t * b``.
So ``peak(b) = max_t (A_t + C_t * b)`` for every ``b`` from two runs, and the
largest batch under a budget is a closed form (:class:`BatchMemoryModel`).
When the two runs do not line up (a model whose op sequence depends on the
batch) the two peaks are fitted with a line instead.

Limits of the model, stated: fake tensors live on the CPU device (the
autograd engine will not run backward on fake CUDA tensors without a GPU), so
bf16/fp16 use CPU autocast, whose cast lists are close to CUDA's but not
identical; the optimizer runs with ``foreach=True`` as PyTorch does on CUDA;
Adam's 4-byte ``step`` scalars are counted although CUDA keeps them on the host.

CUDA overhead model (:class:`CudaOverheadModel`), added on top of the
tracked bytes, which the allocator's ``max_memory_allocated`` would report:

- every block is rounded up to 512 bytes (the caching allocator's granule);
- ``workspace_bytes`` for cuBLAS workspaces and cuDNN convolution workspaces,
  which go through the allocator but belong to no tensor of the model;
- ``fragmentation``: reserved/allocated - 1 for a steady training loop;
- ``context_bytes``: the CUDA context and lazily loaded kernels, outside the
  allocator but inside the card's memory.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from gpu_optimizer.checkpointing import CheckpointManager, discover_blocks
from gpu_optimizer.models import (
    DTYPES,
    ModelBundle,
    ModelSpecError,
    build_bundle,
    check_dtype,
    check_optimizer,
    make_optimizer,
    parse_shape,
)
from gpu_optimizer.swapper import TensorSwapper
from gpu_optimizer.tracker import CUDA_BLOCK_BYTES, MemoryReport, MemoryTracker, is_oom

Mode = Literal["train", "infer"]
Plan = Literal["plain", "checkpointing", "offload"]
PLANS: tuple[str, ...] = ("plain", "checkpointing", "offload")
MiB = 1 << 20


@dataclass(frozen=True)
class CudaOverheadModel:
    """Memory a CUDA process needs beyond its tensors (defaults: torch 2.x on consumer cards)."""

    context_bytes: int = 512 * MiB
    workspace_bytes: int = 64 * MiB
    fragmentation: float = 0.05
    block_bytes: int = CUDA_BLOCK_BYTES

    def reserved_bytes(self, allocated_peak: int) -> int:
        return math.ceil((allocated_peak + self.workspace_bytes) * (1.0 + self.fragmentation))

    def device_bytes(self, allocated_peak: int) -> int:
        """Card memory a step needs: reserved pool plus the context."""
        return self.reserved_bytes(allocated_peak) + self.context_bytes

    def allocation_budget(self, vram_bytes: int, safety_margin: float = 0.0) -> float:
        """Largest tracked (allocated) peak that fits ``vram_bytes`` with the margin."""
        usable = vram_bytes * (1.0 - safety_margin) - self.context_bytes
        return usable / (1.0 + self.fragmentation) - self.workspace_bytes


DEFAULT_OVERHEAD = CudaOverheadModel()


# -- running one step ---------------------------------------------------------


def prime_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer state before measuring, as in every step after the first."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_step(
    bundle: ModelBundle,
    optimizer: torch.optim.Optimizer | None,
    batch_size: int,
    input_shape: tuple[int, ...],
    *,
    mode: Mode = "train",
    dtype: str = "fp32",
    tracker: MemoryTracker | None = None,
    device: torch.device | str = "cpu",
    optimizer_step: bool = True,
) -> None:
    """One training step (forward, backward, optimizer step) or one inference forward.

    ``optimizer_step=False`` stops after backward and frees the gradients
    untracked: the estimator measures the (batch-independent) optimizer phase once.
    """
    device = torch.device(device)
    phase: Callable[[str], Any] = tracker.phase if tracker is not None else _no_phase
    amp_dtype = DTYPES[check_dtype(dtype)]
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    model = bundle.model
    with phase("forward"):
        inputs = _to_device(bundle.make_input(batch_size, input_shape), device)
        if mode == "infer":
            model.eval()
            with torch.no_grad(), autocast:
                out = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
            del out, inputs
            return
        model.train()
        with autocast:
            out = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
            loss = bundle.loss_fn(out, inputs)
        del out, inputs
    with phase("backward"):
        loss.backward()
        del loss
    if optimizer is not None and optimizer_step:
        with phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    elif optimizer is not None:
        with phase("cleanup"):
            optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _no_phase(_name: str) -> Any:
    yield


def _to_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, (tuple, list)):
        return tuple(_to_device(i, device) for i in inputs)
    return inputs


# -- estimation -----------------------------------------------------------------


@dataclass
class Estimate:
    """Tracked breakdown of one step plus the CUDA prediction for it."""

    model: str
    input_shape: tuple[int, ...]
    batch_size: int
    optimizer: str
    dtype: str
    mode: str
    plan: str
    report: MemoryReport
    overhead: CudaOverheadModel

    @property
    def peak_bytes(self) -> int:
        return self.report.peak_bytes

    def to_dict(self, *, per_module: bool = True) -> dict[str, Any]:
        out = {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "dtype": self.dtype,
            "mode": self.mode,
            "plan": self.plan,
        }
        out.update(self.report.to_dict(per_module=per_module))
        out["predicted_cuda"] = {
            "max_memory_allocated_bytes": self.report.peak_bytes + self.overhead.workspace_bytes,
            "reserved_bytes": self.overhead.reserved_bytes(self.report.peak_bytes),
            "device_bytes": self.overhead.device_bytes(self.report.peak_bytes),
        }
        return out


class _Session:
    """A model built once (fake or real) with its optimizer, reused across runs."""

    def __init__(
        self, spec: str, optimizer: str, mode: Mode, *, fake: bool, device: str = "cpu"
    ) -> None:
        self.spec = spec
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
        self.device = torch.device(device)
        ctx = self.fake_mode if self.fake_mode is not None else contextlib.nullcontext()
        self.bundle = build_bundle(spec, fake_mode=self.fake_mode)
        with ctx:
            if not fake:
                self.bundle.model.to(self.device)
            self.optimizer = None
            if mode == "train":
                self.optimizer = make_optimizer(optimizer, self.bundle.model.parameters())
                prime_optimizer(self.bundle.model, self.optimizer)
        self.mode = mode

    def tracked_step(
        self,
        batch_size: int,
        input_shape: tuple[int, ...],
        dtype: str,
        *,
        plan: str,
        round_to: int,
        optimizer_step: bool = True,
        limit_bytes: int | None = None,
    ) -> MemoryReport:
        ctx = self.fake_mode if self.fake_mode is not None else contextlib.nullcontext()
        tracker = MemoryTracker(
            self.bundle.model,
            self.optimizer,
            device=self.device,
            round_to=round_to,
            limit_bytes=limit_bytes,
        )
        # The tracker goes outermost: saved-tensor hooks entered later (the plan's) take precedence.
        with (
            ctx,
            tracker,
            _plan_context(plan, self.bundle.model, simulate=self.fake_mode is not None),
        ):
            try:
                run_step(
                    self.bundle,
                    self.optimizer,
                    batch_size,
                    input_shape,
                    mode=self.mode,
                    dtype=dtype,
                    tracker=tracker,
                    device=self.device,
                    optimizer_step=optimizer_step,
                )
            except Exception as exc:
                if is_oom(exc) or isinstance(exc, ModelSpecError):
                    raise
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ModelSpecError(
                    f"{self.spec} failed at batch size {batch_size} with input shape "
                    f"{','.join(map(str, input_shape))}: {first_line}"
                ) from exc
        return tracker.report()


@contextlib.contextmanager
def _plan_context(plan: str, model: nn.Module, *, simulate: bool) -> Any:
    if plan == "plain":
        yield
    elif plan == "checkpointing":
        with CheckpointManager(model) as manager:
            manager.apply(discover_blocks(model))
            yield
    elif plan == "offload":
        # Threshold 0: every saved activation moves. A size threshold would make the
        # set of moved tensors depend on the batch, breaking the two-run line-up.
        with TensorSwapper(threshold_bytes=0, model=model, simulate=simulate):
            yield
    else:
        raise ValueError(f"unknown plan {plan!r}; expected one of {PLANS}")


def estimate(
    model: str,
    input_shape: str | tuple[int, ...],
    batch_size: int,
    *,
    optimizer: str = "adamw",
    dtype: str = "fp32",
    mode: Mode = "train",
    plan: str = "plain",
    fake: bool = True,
    round_to: int = CUDA_BLOCK_BYTES,
    overhead: CudaOverheadModel = DEFAULT_OVERHEAD,
) -> Estimate:
    """Breakdown of one step of ``model`` at ``batch_size``, without a GPU.

    ``fake=False`` runs the same step for real on the CPU, which is the ground
    truth the fake run is tested against.
    """
    shape = parse_shape(input_shape)
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    opt = check_optimizer(optimizer)
    dt = check_dtype(dtype)
    session = _Session(model, opt, mode, fake=fake)
    report = session.tracked_step(batch_size, shape, dt, plan=plan, round_to=round_to)
    return Estimate(model, shape, batch_size, opt, dt, mode, plan, report, overhead)


# -- batch-size model -------------------------------------------------------------


@dataclass(frozen=True)
class BatchMemoryModel:
    """Tracked peak as a function of batch size: ``max(floor, max_t(A_t + C_t * b))``.

    ``floor_bytes`` is the batch-independent optimizer-phase peak.
    """

    intercepts: np.ndarray
    slopes: np.ndarray
    exact: bool
    floor_bytes: int = 0

    def peak_bytes(self, batch_size: int) -> int:
        return max(self.floor_bytes, int(np.max(self.intercepts + self.slopes * batch_size)))

    def max_batch(self, budget_bytes: float, *, limit: int = 1 << 16) -> int:
        """Largest batch whose tracked peak fits ``budget_bytes`` (0 if none, at most ``limit``)."""
        if budget_bytes <= 0 or self.floor_bytes > budget_bytes:
            return 0
        if np.any((self.slopes <= 0) & (self.intercepts > budget_bytes)):
            return 0
        growing = self.slopes > 0
        if not np.any(growing):
            return limit
        bound = (budget_bytes - self.intercepts[growing]) / self.slopes[growing]
        best = int(min(math.floor(float(np.min(bound)) + 1e-9), limit))
        while best >= 1 and self.peak_bytes(best) > budget_bytes:  # float safety
            best -= 1
        return max(best, 0)


def _before_optimizer(report: MemoryReport) -> np.ndarray:
    phases = report.timeline_phases
    after = [i for i, p in enumerate(phases) if p not in ("setup", "forward", "backward")]
    cut = after[0] if after else len(phases)
    return report.timeline[:cut].astype(np.float64)


def _upper_envelope(intercepts: np.ndarray, slopes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop lines that never give the maximum for b >= 1 (both intercept and slope are beaten).

    Thousands of events shrink to a handful of lines, small enough to cache on disk.
    """
    at_one = intercepts + slopes
    order = np.lexsort((-at_one, -slopes))  # steepest first, then highest at b = 1
    keep = []
    best_at_one = -np.inf
    for i in order:
        if at_one[i] > best_at_one:
            keep.append(i)
            best_at_one = at_one[i]
    idx = np.array(sorted(keep), dtype=np.int64)
    return intercepts[idx], slopes[idx]


def fit_batch_model(
    first: MemoryReport, second: MemoryReport, b1: int, b2: int, *, floor_bytes: int = 0
) -> BatchMemoryModel:
    """Line up two runs' live-byte curves up to the optimizer phase, else fit the two peaks."""
    t1, t2 = _before_optimizer(first), _before_optimizer(second)
    if len(t1) == len(t2) and len(t1) > 0:
        slopes = (t2 - t1) / (b2 - b1)
        intercepts, slopes = _upper_envelope(t1 - slopes * b1, slopes)
        return BatchMemoryModel(intercepts, slopes, exact=True, floor_bytes=floor_bytes)
    p1, p2 = float(t1.max(initial=0)), float(t2.max(initial=0))
    slope = (p2 - p1) / (b2 - b1)
    return BatchMemoryModel(
        np.array([p1 - slope * b1]), np.array([slope]), exact=False, floor_bytes=floor_bytes
    )


def batch_memory_model(
    model: str,
    input_shape: str | tuple[int, ...],
    *,
    optimizer: str = "adamw",
    dtype: str = "fp32",
    mode: Mode = "train",
    plans: tuple[str, ...] = PLANS,
    batches: tuple[int, int] = (2, 4),
) -> dict[str, BatchMemoryModel]:
    """Fit memory(batch) for each plan from two fake steps per plan, on one built model."""
    shape = parse_shape(input_shape)
    opt = check_optimizer(optimizer)
    dt = check_dtype(dtype)
    session = _Session(model, opt, mode, fake=True)
    b1, b2 = batches
    fitted: dict[str, BatchMemoryModel] = {}
    floor = 0
    for i, plan in enumerate(plans):
        # The optimizer phase does not depend on the batch or the plan: measure it once.
        r1 = session.tracked_step(
            b1, shape, dt, plan=plan, round_to=CUDA_BLOCK_BYTES, optimizer_step=i == 0
        )
        if i == 0:
            floor = r1.phase_peaks.get("optimizer", 0)
        r2 = session.tracked_step(
            b2, shape, dt, plan=plan, round_to=CUDA_BLOCK_BYTES, optimizer_step=False
        )
        fitted[plan] = fit_batch_model(r1, r2, b1, b2, floor_bytes=floor)
    return fitted
