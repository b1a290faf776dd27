"""Fine-tuning setups: frozen parameters, LoRA adapters, gradient accumulation, precisions,
and the optimizers whose state sizes the planner knows (including bitsandbytes' 8-bit AdamW).

Memory rules these follow (docs/gpu_optimizer.md):

- a frozen parameter (``requires_grad=False``) has no gradient and no
  optimizer state; it is not even handed to the optimizer;
- LoRA (through ``peft``) freezes the base model and adds ``r * (in + out)``
  trainable parameters per targeted linear layer;
- gradient accumulation over N micro-batches keeps the gradients alive
  through the forward of micro-batches 2..N; the estimate runs two
  micro-batches (all later ones repeat the second's memory);
- ``bf16``/``fp16``: autocast with fp32 parameters, which are the master
  weights (torch.amp); ``bf16-true``/``fp16-true``: parameters, gradients and
  optimizer state in half precision; ``bf16-master``/``fp16-master``: half
  parameters and gradients, the optimizer keeps an fp32 master copy
  (4 bytes/parameter) and fp32 state;
- ``adamw8bit``: the state bitsandbytes' ``AdamW8bit`` allocates (block-wise,
  blocksize 256): per parameter tensor of at least 4096 elements two uint8
  buffers (2 bytes/element) plus two fp32 absmax vectors of ceil(n/256)
  entries; smaller tensors keep two fp32 buffers (8 bytes/element); the two
  256-entry fp32 quantization maps are shared (2 KiB). Its update is one fused
  kernel: no temporaries.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gpu_optimizer.models import ModelSpecError

BNB_BLOCKSIZE = 256
BNB_MIN_8BIT_SIZE = 4096
BNB_QMAP_ENTRIES = 256
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainingSetup:
    """What a fine-tuning run changes about a model and its step (all optional)."""

    lora_r: int = 0
    lora_targets: tuple[str, ...] = ()
    lora_alpha: int | None = None
    freeze: tuple[str, ...] = ()  # glob patterns of parameter names
    grad_accum: int = 1

    def __post_init__(self) -> None:
        if self.lora_r < 0:
            raise ModelSpecError(f"lora_r must be >= 0, got {self.lora_r}")
        if self.grad_accum < 1:
            raise ModelSpecError(f"grad_accum must be >= 1, got {self.grad_accum}")

    @property
    def is_default(self) -> bool:
        return self == TrainingSetup()

    def to_dict(self) -> dict[str, Any]:
        return {
            "lora_r": self.lora_r,
            "lora_targets": list(self.lora_targets),
            "freeze": list(self.freeze),
            "grad_accum": self.grad_accum,
        }


def split_list(text: str | Iterable[str] | None) -> tuple[str, ...]:
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(i.strip() for i in items if i.strip())


def precision_parts(dtype: str) -> tuple[str, str]:
    """``"bf16-master"`` -> ``("bf16", "master")``; plain names are autocast (``"amp"``)."""
    base, _, kind = dtype.partition("-")
    return base, kind or ("fp32" if base == "fp32" else "amp")


def apply_setup(
    model: nn.Module,
    setup: TrainingSetup,
    dtype: str,
    spec: str,
    fake_mode: Any | None = None,
) -> nn.Module:
    """Freeze, add adapters and cast, in the order a fine-tuning script does.

    Called outside any fake mode: peft builds its (small) adapter layers for
    real and they are then turned into fake tensors with the rest, because
    ``Module.to`` cannot move fake parameters in place.
    """
    if setup.freeze:
        names = [n for n, _ in model.named_parameters()]
        for pattern in setup.freeze:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ModelSpecError(f"{spec}: --freeze {pattern!r} matches no parameter name")
        for name, p in model.named_parameters():
            if any(fnmatch.fnmatchcase(name, pat) for pat in setup.freeze):
                p.requires_grad_(False)
    if setup.lora_r:
        model = add_lora(model, setup, spec)
        if fake_mode is not None:
            from gpu_optimizer.models import to_fake

            to_fake(model, fake_mode)
    base, kind = precision_parts(dtype)
    if kind in ("true", "master"):
        cast_parameters(model, HALF[base], fake_mode)
    return model


def cast_parameters(model: nn.Module, dtype: torch.dtype, fake_mode: Any | None) -> None:
    """``model.to(dtype)`` for floating parameters and buffers, also on fake tensors, ties kept."""
    import contextlib

    memo: dict[int, torch.Tensor] = {}
    with fake_mode if fake_mode is not None else contextlib.nullcontext():
        for sub in model.modules():
            for key, p in list(sub._parameters.items()):
                if p is not None and p.is_floating_point():
                    if id(p) not in memo:
                        memo[id(p)] = nn.Parameter(
                            p.detach().to(dtype), requires_grad=p.requires_grad
                        )
                    sub._parameters[key] = memo[id(p)]  # type: ignore[assignment]
            for key, b in list(sub._buffers.items()):
                if b is not None and b.is_floating_point():
                    if id(b) not in memo:
                        memo[id(b)] = b.to(dtype)
                    sub._buffers[key] = memo[id(b)]


def add_lora(model: nn.Module, setup: TrainingSetup, spec: str) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelSpecError("--lora-r needs the peft package") from None
    targets = list(setup.lora_targets) or None
    if targets:
        leaf_names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in targets if t not in leaf_names]
        if missing:
            raise ModelSpecError(
                f"{spec}: --lora-targets {','.join(missing)} name no module; linear layers "
                f"here include {', '.join(sorted(_linear_names(model))[:8])}"
            )
    config = LoraConfig(
        r=setup.lora_r,
        lora_alpha=setup.lora_alpha or 2 * setup.lora_r,
        target_modules=targets,
        lora_dropout=0.0,
    )
    try:
        return get_peft_model(model, config)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise ModelSpecError(f"{spec}: LoRA cannot be applied: {exc}") from None


def _linear_names(model: nn.Module) -> set[str]:
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def lora_parameter_count(model: nn.Module, r: int, targets: Iterable[str]) -> int:
    """Hand count of adapter parameters: ``r * (in + out)`` per targeted nn.Linear."""
    wanted = set(targets)
    return sum(
        r * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in wanted
    )


# -- optimizers --------------------------------------------------------------------


class AdamW8bitPlan(torch.optim.Optimizer):
    """Stand-in for ``bitsandbytes.optim.AdamW8bit`` with its exact state sizes.

    A planning tool, not a trainer: the update is a plain in-place step (the
    fused 8-bit kernel needs a GPU and allocates nothing extra), but the state
    tensors are those bitsandbytes allocates, so memory is accounted exactly.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3) -> None:
        super().__init__(params, {"lr": lr})
        self._qmaps: tuple[torch.Tensor, torch.Tensor] | None = None

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        n = p.numel()
        if n < BNB_MIN_8BIT_SIZE:
            return {
                "step": 0,
                "state1": torch.zeros_like(p, dtype=torch.float32),
                "state2": torch.zeros_like(p, dtype=torch.float32),
            }
        if self._qmaps is None:
            self._qmaps = (
                torch.zeros(BNB_QMAP_ENTRIES, dtype=torch.float32, device=p.device),
                torch.zeros(BNB_QMAP_ENTRIES, dtype=torch.float32, device=p.device),
            )
        blocks = math.ceil(n / BNB_BLOCKSIZE)
        return {
            "step": 0,
            "state1": torch.zeros_like(p, dtype=torch.uint8),
            "state2": torch.zeros_like(p, dtype=torch.uint8),
            "qmap1": self._qmaps[0],
            "qmap2": self._qmaps[1],
            "absmax1": torch.zeros(blocks, dtype=torch.float32, device=p.device),
            "absmax2": torch.zeros(blocks, dtype=torch.float32, device=p.device),
        }

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p not in self.state or not self.state[p]:
                    self.state[p] = self._init_state(p)
                self.state[p]["step"] += 1
                p.add_(p.grad, alpha=-group["lr"])


def adamw8bit_state_bytes(numels: Iterable[int]) -> int:
    """Bytes of bitsandbytes AdamW8bit state for parameter tensors of these sizes."""
    total, any_8bit = 0, False
    for n in numels:
        if n < BNB_MIN_8BIT_SIZE:
            total += 8 * n
        else:
            any_8bit = True
            total += 2 * n + 2 * 4 * math.ceil(n / BNB_BLOCKSIZE)
    return total + (2 * 4 * BNB_QMAP_ENTRIES if any_8bit else 0)


class MasterWeightOptimizer(torch.optim.Optimizer):
    """Half-precision parameters, an fp32 master copy and fp32 state inside the optimizer.

    Each step casts the half gradient up onto the master copy, steps the inner
    optimizer on the masters and copies them back down. The master copies are
    listed in ``state`` (key ``master``) so they count as optimizer state.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        inner: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    ) -> None:
        plist = list(params)
        super().__init__(plist, {})
        self.masters = {p: p.detach().float().clone().requires_grad_(True) for p in plist}
        self.inner = inner(list(self.masters.values()))
        for p, m in self.masters.items():
            self.state[p] = {"master": m}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        for p, m in self.masters.items():
            m.grad = None if p.grad is None else p.grad.float()
        self.inner.step()
        for p, m in self.masters.items():
            if m.grad is not None:
                p.copy_(m)
                m.grad = None
            self.state[p] = {"master": m, **self.inner.state.get(m, {})}
