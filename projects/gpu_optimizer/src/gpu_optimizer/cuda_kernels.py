"""What CUDA kernels allocate where the CPU would pick other ones (estimates for a CUDA target).

The fake-tensor step runs the CPU's kernels. Two differ in memory from
what CUDA runs, and this mode swaps them for stand-ins with CUDA's allocation
pattern (docs/gpu_optimizer.md, "CUDA overhead model"):

- ``scaled_dot_product_attention``. On CUDA, PyTorch 2.10 picks, in order,
  the flash kernel when: compute capability >= 8.0, fp16/bf16 inputs, no
  ``attn_mask`` (``is_causal`` is fine), head dim <= 256 and the same for
  q/k/v; else the memory-efficient kernel when: compute capability >= 5.0,
  fp32/fp16/bf16, head dim a multiple of 16 bytes (4 fp32 / 8 half
  elements) — a mask is allowed; else the math path. Flash and
  memory-efficient save q, k, v, the output and an fp32 logsumexp of
  ``(batch, heads, q_len)`` (the memory-efficient kernel pads q_len to a
  multiple of 32): no ``q_len x k_len`` matrix, dropout regenerated from
  the RNG seed instead of stored. Backward allocates dq, dk, dv, an fp32
  ``(batch, heads, q_len)`` delta, and for flash an fp32 dq accumulator the
  size of q. The math path stores the softmax (and dropout mask) at
  ``q_len x k_len``: it runs for real.
- ``dropout``: CUDA's fused kernel saves a bool mask (1 byte/element); the
  CPU's composite path saves a float one (4 bytes/element in fp32).

What cannot be known without the card is said in :attr:`CudaKernelMode.notes`
(on compute capability 9.0+ PyTorch may pick cuDNN attention, whose workspace
is not modelled; cuDNN convolution workspaces depend on the algorithm cuDNN
chooses).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MiB = 1 << 20
# cuBLAS workspace per handle (one per thread and stream that runs matmuls: the
# forward's thread and autograd's backward thread): PyTorch's default
# CUBLAS_WORKSPACE_CONFIG is ":4096:2:16:8" (2 x 4 MiB + 8 x 16 KiB) below
# compute capability 9.0 and ":4096:8" (32 MiB) on 9.x / 10.x.
CUBLAS_WORKSPACE_BYTES = 2 * 4096 * 1024 + 8 * 16 * 1024
CUBLAS_WORKSPACE_BYTES_SM90 = 8 * 4096 * 1024
# cuDNN convolution workspace allowance (algorithm-dependent, transient): calibrated by
# bench/gpu_check.py on a lent GPU; the estimate says it is an allowance.
CUDNN_WORKSPACE_ALLOWANCE = 32 * MiB
DEFAULT_CAPABILITY = (8, 6)  # RTX 30xx; every RTX 30/40/50 card is >= 8.6


def cublas_workspace_bytes(capability: tuple[int, int] | None, handles: int) -> int:
    major = (capability or DEFAULT_CAPABILITY)[0]
    per_handle = CUBLAS_WORKSPACE_BYTES_SM90 if major in (9, 10) else CUBLAS_WORKSPACE_BYTES
    return per_handle * handles


def parse_capability(text: str | None) -> tuple[int, int] | None:
    if text is None or text == "":
        return None
    major, _, minor = str(text).partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        raise ValueError(f"bad compute capability {text!r}: expected e.g. 8.6") from None


def sdpa_kernel_for(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, has_mask: bool, cap: tuple[int, int]
) -> str:
    """The kernel PyTorch 2.10 picks on CUDA for these inputs (flash, efficient or math)."""
    head = q.shape[-1]
    same_head = k.shape[-1] == head and v.shape[-1] == head
    half = q.dtype in (torch.float16, torch.bfloat16)
    four_d = q.dim() == 4
    if cap >= (8, 0) and half and not has_mask and head <= 256 and same_head and four_d:
        return "flash"
    align = 8 if half else 4
    dtype_ok = q.dtype in (torch.float32, torch.float16, torch.bfloat16)
    if cap >= (5, 0) and dtype_ok and head % align == 0 and v.shape[-1] % align == 0 and four_d:
        return "efficient"
    return "math"


class _O1Attention(torch.autograd.Function):
    """Flash / memory-efficient attention's memory: outputs and saved tensors, no T^2."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, flash: bool
    ) -> torch.Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        q_len = q.shape[-2] if flash else 32 * math.ceil(q.shape[-2] / 32)
        lse = q.new_empty((*q.shape[:-2], q_len), dtype=torch.float32)
        ctx.flash = flash
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        q, k, v, _out, _lse = ctx.saved_tensors
        delta = q.new_empty(q.shape[:-1], dtype=torch.float32)
        accum = q.new_empty(q.shape, dtype=torch.float32) if ctx.flash else None
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        del delta, accum
        return dq, dk, dv, None


class CudaKernelMode(TorchFunctionMode):
    """Swap SDPA and dropout for CUDA's memory behaviour while a fake step runs."""

    replay = True  # re-entered by checkpoint recomputes (gpu_optimizer.checkpointing)

    def __init__(self, capability: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.capability = capability or DEFAULT_CAPABILITY
        self.assumed_capability = capability is None
        self.kernels: dict[str, int] = {}
        self.notes: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._sdpa(*args, **kwargs)
        if func is F.dropout:
            return self._dropout(*args, **kwargs)
        return func(*args, **kwargs)

    def _sdpa(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        if torch.is_autocast_enabled(q.device.type):
            # CUDA autocast runs attention in the lower precision: the kernel sees half inputs.
            amp = torch.get_autocast_dtype(q.device.type)
            q, k, v = q.to(amp), k.to(amp), v.to(amp)
        kernel = sdpa_kernel_for(q, k, v, attn_mask is not None, self.capability)
        self.kernels[kernel] = self.kernels.get(kernel, 0) + 1
        if kernel == "math":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                return F.scaled_dot_product_attention(
                    q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
                )
        if enable_gqa and k.shape[-3] != q.shape[-3] and kernel == "efficient":
            # Flash handles GQA natively; memory-efficient takes expanded k/v (a copy).
            rep = q.shape[-3] // k.shape[-3]
            k = k.repeat_interleave(rep, dim=-3)
            v = v.repeat_interleave(rep, dim=-3)
        out: torch.Tensor = _O1Attention.apply(q, k, v, kernel == "flash")
        if attn_mask is not None and torch.is_grad_enabled():
            from gpu_optimizer.tracker import notify_saved

            notify_saved(attn_mask)  # the memory-efficient kernel keeps its bias for backward
        return out

    def _dropout(
        self, input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
    ) -> torch.Tensor:
        if not training or p == 0.0:
            return input
        out, _mask = torch.native_dropout(input, p, True)
        if inplace:
            return input.copy_(out)
        return out

    def summary(self) -> list[str]:
        notes = sorted(self.notes)
        if self.kernels:
            cap = ".".join(map(str, self.capability))
            used = ", ".join(f"{n} x{c}" for n, c in sorted(self.kernels.items()))
            notes.append(
                f"scaled_dot_product_attention modelled as CUDA picks it on compute capability "
                f"{cap}{' (assumed; pass --compute-capability)' if self.assumed_capability else ''}"
                f": {used}"
            )
            if self.capability >= (9, 0):
                notes.append(
                    "on compute capability 9.0+ PyTorch may pick cuDNN attention instead: "
                    "same O(seq_len) saved tensors, its workspace is not modelled"
                )
        return notes
