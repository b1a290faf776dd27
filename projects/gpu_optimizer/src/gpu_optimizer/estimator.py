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
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from gpu_optimizer.checkpointing import CheckpointManager, discover_blocks
from gpu_optimizer.cuda_kernels import (
    CUDNN_WORKSPACE_ALLOWANCE,
    CudaKernelMode,
    cublas_workspace_bytes,
)
from gpu_optimizer.finetune import TrainingSetup, apply_setup
from gpu_optimizer.hf import unpacked_batches
from gpu_optimizer.models import (
    DTYPES,
    ModelBundle,
    ModelSpecError,
    build_bundle,
    check_dtype,
    check_optimizer,
    describe_inputs,
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


def call_model(model: nn.Module, inputs: Any) -> Any:
    """A dict batch is keyword arguments (Hugging Face style), a tuple positional ones."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


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
    grad_accum: int = 1,
    eval_step: bool = False,
    on_inputs: Callable[[Any], None] | None = None,
) -> None:
    """One training step (forward, backward, optimizer step) or one inference forward.

    ``optimizer_step=False`` stops after backward and frees the gradients
    untracked: the estimator measures the (batch-independent) optimizer phase once.
    ``grad_accum > 1`` runs two micro-batches before the step: the second
    one's forward runs with the first one's gradients alive, and every later
    micro-batch repeats its memory. ``eval_step`` adds an evaluation forward
    (no grad, eval mode) after the step, while the optimizer state is alive,
    as a training loop's periodic evaluation does.
    """
    device = torch.device(device)
    phase: Callable[[str], Any] = tracker.phase if tracker is not None else _no_phase
    dt = check_dtype(dtype)
    amp_dtype = DTYPES[dt]
    cast = _HALF.get(dt.split("-")[0]) if "-" in dt else None

    def autocast() -> Any:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    def make() -> Any:
        inputs = _to_device(bundle.make_input(batch_size, input_shape), device, cast)
        if on_inputs is not None:
            on_inputs(inputs)
        return inputs

    model = bundle.model
    if mode == "infer":
        with phase("forward"):
            inputs = make()
            model.eval()
            with torch.no_grad(), autocast():
                out = call_model(model, inputs)
            del out, inputs
        return
    micro = 1 if grad_accum <= 1 else 2
    for _ in range(micro):
        with phase("forward"):
            inputs = make()
            model.train()
            with autocast():
                out = call_model(model, inputs)
                loss = bundle.loss_fn(out, inputs)
                if micro > 1:
                    loss = loss / grad_accum
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
    if eval_step:
        with phase("eval"):
            inputs = make()
            model.eval()
            with torch.no_grad(), autocast():
                out = call_model(model, inputs)
            del out, inputs
            model.train()


_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def _no_phase(_name: str) -> Any:
    yield


def _to_device(inputs: Any, device: torch.device, cast: torch.dtype | None = None) -> Any:
    if isinstance(inputs, torch.Tensor):
        if cast is not None and inputs.is_floating_point():
            return inputs.to(device, cast)
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: _to_device(v, device, cast) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(_to_device(i, device, cast) for i in inputs)
    return inputs


class _InputChecks(TorchDispatchMode):
    """The dtype checks a real kernel makes and a fake tensor's meta function skips.

    Fake tensors carry no values, and some meta functions accept what the CPU
    or CUDA kernel rejects (float token ids into ``nn.Embedding``): the
    estimate would silently describe another model. Raised as a spec error
    naming the inputs ``make_input`` produced.
    """

    _INDEX_OPS: ClassVar[dict[Any, tuple[int, tuple[torch.dtype, ...], str]]] = {
        torch.ops.aten.embedding.default: (1, (torch.int64, torch.int32), "token ids"),
        torch.ops.aten.nll_loss_forward.default: (1, (torch.int64,), "class labels"),
        torch.ops.aten.nll_loss2d_forward.default: (1, (torch.int64,), "class labels"),
        torch.ops.aten.gather.default: (2, (torch.int64,), "gather indices"),
        torch.ops.aten.index_select.default: (2, (torch.int64, torch.int32), "indices"),
    }

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.spec = spec
        self.inputs = "?"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        rule = self._INDEX_OPS.get(func)
        if rule is not None:
            pos, allowed, what = rule
            index = args[pos] if len(args) > pos else None
            if isinstance(index, torch.Tensor) and index.dtype not in allowed:
                names = "/".join(str(a).removeprefix("torch.") for a in allowed)
                raise ModelSpecError(
                    f"{self.spec}: {func.overloadpacket.__name__} got {what} of dtype "
                    f"{str(index.dtype).removeprefix('torch.')} (needs {names}), which a real "
                    f"step rejects; the input spec gave {self.inputs}: make_input must return "
                    "integer token ids / labels (for hf: models use --seq-len)"
                )
        return func(*args, **(kwargs or {}))


# -- estimation -----------------------------------------------------------------

Target = Literal["cuda", "cpu"]


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
    target: str = "cuda"
    setup: TrainingSetup = field(default_factory=TrainingSetup)
    notes: list[str] = field(default_factory=list)
    step_checks: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        return self.report.peak_bytes

    @property
    def activation_bytes_per_sample(self) -> int:
        """Activation peak over the (micro-)batch: one micro-batch's are alive at a time."""
        return self.report.activation_peak_bytes // max(self.batch_size, 1)

    def predicted_cuda(self) -> dict[str, int]:
        peak = max([self.report.peak_bytes, *self.step_checks.values()])
        return {
            "max_memory_allocated_bytes": peak + self.overhead.workspace_bytes,
            "reserved_bytes": self.overhead.reserved_bytes(peak),
            "device_bytes": self.overhead.device_bytes(peak),
            "workspace_bytes": self.overhead.workspace_bytes,
        }

    def to_dict(self, *, per_module: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "dtype": self.dtype,
            "mode": self.mode,
            "plan": self.plan,
            "target": self.target,
            "setup": self.setup.to_dict(),
        }
        out.update(self.report.to_dict(per_module=per_module))
        out["activation_peak"]["bytes_per_sample"] = self.activation_bytes_per_sample
        out["predicted_cuda"] = self.predicted_cuda()
        out["notes"] = list(self.notes)
        out["step_checks"] = dict(self.step_checks)
        out["warnings"] = list(self.warnings)
        return out


class _Session:
    """A model built once (fake or real) with its optimizer, reused across runs."""

    def __init__(
        self,
        spec: str,
        optimizer: str,
        mode: Mode,
        *,
        fake: bool,
        device: str = "cpu",
        dtype: str = "fp32",
        setup: TrainingSetup | None = None,
        target: Target | None = None,
        capability: tuple[int, int] | None = None,
        prime: bool = True,
    ) -> None:
        self.spec = spec
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
        self.device = torch.device(device)
        self.dtype = check_dtype(dtype)
        self.setup = setup or TrainingSetup()
        self.target: Target = target or ("cuda" if fake else "cpu")
        self.cuda_model = fake and self.target == "cuda"
        self.capability = capability
        self.notes: list[str] = []
        ctx = self.fake_mode if self.fake_mode is not None else contextlib.nullcontext()
        bundle = build_bundle(spec, fake_mode=self.fake_mode)
        bundle.model = apply_setup(bundle.model, self.setup, self.dtype, spec, self.fake_mode)
        self.bundle = bundle
        with ctx:
            if not fake:
                self.bundle.model.to(self.device)
            self.optimizer = None
            if mode == "train":
                self.optimizer = make_optimizer(
                    optimizer, self.bundle.model.parameters(), dtype=self.dtype
                )
                if prime:
                    prime_optimizer(self.bundle.model, self.optimizer)
        self.mode = mode
        self.has_conv = any(
            isinstance(m, nn.modules.conv._ConvNd) for m in self.bundle.model.modules()
        )

    def tracked_step(
        self,
        batch_size: int,
        input_shape: tuple[int, ...],
        dtype: str | None = None,
        *,
        plan: str,
        round_to: int,
        optimizer_step: bool = True,
        limit_bytes: int | None = None,
        eval_step: bool = False,
    ) -> MemoryReport:
        ctx = self.fake_mode if self.fake_mode is not None else contextlib.nullcontext()
        tracker = MemoryTracker(
            self.bundle.model,
            self.optimizer,
            device=self.device,
            round_to=round_to,
            limit_bytes=limit_bytes,
            host_step_scalars=self.cuda_model,
        )
        checks = _InputChecks(self.spec) if self.fake_mode is not None else None
        kernels = CudaKernelMode(self.capability) if self.cuda_model else None
        # The tracker goes outermost: saved-tensor hooks entered later (the plan's) take precedence.
        with (
            ctx,
            tracker,
            checks if checks is not None else contextlib.nullcontext(),
            kernels if kernels is not None else contextlib.nullcontext(),
            unpacked_batches(),
            _plan_context(plan, self.bundle.model, simulate=self.fake_mode is not None),
        ):
            try:
                run_step(
                    self.bundle,
                    self.optimizer,
                    batch_size,
                    input_shape,
                    mode=self.mode,
                    dtype=dtype or self.dtype,
                    tracker=tracker,
                    device=self.device,
                    optimizer_step=optimizer_step,
                    grad_accum=self.setup.grad_accum,
                    eval_step=eval_step,
                    on_inputs=(lambda i: setattr(checks, "inputs", describe_inputs(i)))
                    if checks is not None
                    else None,
                )
            except Exception as exc:
                if is_oom(exc) or isinstance(exc, ModelSpecError):
                    raise
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ModelSpecError(
                    f"{self.spec} failed at batch size {batch_size} with input shape "
                    f"{','.join(map(str, input_shape))}: {first_line}"
                ) from exc
        self.notes = kernels.summary() if kernels is not None else []
        return tracker.report()

    def overhead(self, base: CudaOverheadModel | None) -> CudaOverheadModel:
        """The overhead model for this step: cuBLAS handles used, cuDNN allowance if convs."""
        if base is not None:
            return base
        handles = 2 if self.mode == "train" else 1
        workspace = cublas_workspace_bytes(self.capability, handles)
        if self.has_conv:
            workspace += CUDNN_WORKSPACE_ALLOWANCE
        return dataclasses.replace(DEFAULT_OVERHEAD, workspace_bytes=workspace)


@contextlib.contextmanager
def _plan_context(plan: str, model: nn.Module, *, simulate: bool) -> Any:
    if plan == "plain":
        yield
    elif plan == "checkpointing":
        from gpu_optimizer.hf import disable_gradient_checkpointing, enable_gradient_checkpointing

        if enable_gradient_checkpointing(model):
            try:
                yield
            finally:
                disable_gradient_checkpointing(model)
            return
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
    overhead: CudaOverheadModel | None = None,
    setup: TrainingSetup | None = None,
    target: Target | None = None,
    compute_capability: tuple[int, int] | None = None,
    check_steps: bool = False,
) -> Estimate:
    """Breakdown of one step of ``model`` at ``batch_size``, without a GPU.

    ``fake=False`` runs the same step for real on the CPU, which is the ground
    truth the fake run is tested against. ``target`` ("cuda" by default for a
    fake run, "cpu" for a real one) selects whose kernels are modelled: for
    CUDA, attention and dropout as CUDA allocates them and Adam's step
    counters on the host (:mod:`gpu_optimizer.cuda_kernels`).

    ``check_steps`` also runs the two steps of a training loop that can set a
    higher peak than the steady step: an evaluation forward with the
    optimizer state alive, and the first step (optimizer state allocated
    while gradients are alive); their peaks go to ``step_checks`` and a
    warning names each that is above the steady step.
    """
    shape = parse_shape(input_shape)
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    opt = check_optimizer(optimizer)
    dt = check_dtype(dtype)
    setup = setup or TrainingSetup()
    common: dict[str, Any] = {
        "fake": fake,
        "dtype": dt,
        "setup": setup,
        "target": target,
        "capability": compute_capability,
    }
    session = _Session(model, opt, mode, **common)
    report = session.tracked_step(batch_size, shape, plan=plan, round_to=round_to)
    est = Estimate(
        model,
        shape,
        batch_size,
        opt,
        dt,
        mode,
        plan,
        report,
        session.overhead(overhead),
        session.target,
        setup,
        list(session.notes),
    )
    if session.has_conv and session.cuda_model and overhead is None:
        est.notes.append(
            "cuDNN convolution workspaces depend on the algorithm cuDNN picks on the card: "
            f"counted as a {CUDNN_WORKSPACE_ALLOWANCE >> 20} MiB allowance"
        )
    if check_steps and mode == "train":
        evaluated = session.tracked_step(
            batch_size, shape, plan=plan, round_to=round_to, eval_step=True
        )
        est.step_checks["eval"] = evaluated.phase_peaks.get("eval", 0)
        first = _Session(model, opt, mode, prime=False, **common)
        est.step_checks["first_step"] = first.tracked_step(
            batch_size, shape, plan=plan, round_to=round_to
        ).peak_bytes
        for name, peak in est.step_checks.items():
            if peak > report.peak_bytes:
                what = (
                    "an evaluation step (optimizer state alive)"
                    if name == "eval"
                    else "the first optimizer step (its state is allocated then)"
                )
                est.warnings.append(
                    f"{what} peaks at {peak} bytes, {peak - report.peak_bytes} above the "
                    "steady training step: plan for it"
                )
    return est


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
    setup: TrainingSetup | None = None,
) -> dict[str, BatchMemoryModel]:
    """Fit memory(batch) for each plan from two fake steps per plan, on one built model."""
    shape = parse_shape(input_shape)
    opt = check_optimizer(optimizer)
    dt = check_dtype(dtype)
    session = _Session(model, opt, mode, fake=True, dtype=dt, setup=setup)
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
