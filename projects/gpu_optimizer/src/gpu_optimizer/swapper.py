"""Tensor swapper: saved activations above a size threshold go to CPU memory until backward.

It is a pair of saved-tensor hooks. Packing copies the tensor into pinned
host memory on a side CUDA stream, so the copy overlaps compute and the
device block is freed as soon as the forward no longer uses it. Backward
consumes saved tensors in roughly reverse order, so unpacking one also starts
copying the previous one back (prefetch) on the side stream.

``simulate=True`` is for the estimator: packed tensors move to the meta device
(no data, no memory on the tracked device) and come back as empty tensors,
which reproduces the device-memory effect on fake tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gpu_optimizer.tracker import notify_saved


@dataclass
class SwapStats:
    packed: int = 0
    unpacked: int = 0
    kept: int = 0
    bytes_offloaded: int = 0
    bytes_restored: int = 0
    packed_sizes: list[int] = field(default_factory=list)


class _Handle:
    __slots__ = ("device", "event", "host", "index", "ready", "restored")

    def __init__(self, host: torch.Tensor, device: torch.device, index: int) -> None:
        self.host = host
        self.device = device
        self.index = index
        self.restored: torch.Tensor | None = None
        self.event: Any = None
        self.ready = False


class TensorSwapper:
    """Context manager offloading saved tensors of at least ``threshold_bytes``.

    ``modules`` scopes it: only tensors saved while one of them runs forward
    move. Parameters are never moved (they stay on the device anyway).
    """

    def __init__(
        self,
        threshold_bytes: int = 1 << 20,
        *,
        modules: Iterable[nn.Module] | None = None,
        model: nn.Module | None = None,
        pin_memory: bool = True,
        prefetch: bool = True,
        simulate: bool = False,
    ) -> None:
        self.threshold_bytes = int(threshold_bytes)
        self.modules = list(modules) if modules is not None else None
        self.model = model
        self.pin_memory = pin_memory
        self.prefetch = prefetch
        self.simulate = simulate
        self.stats = SwapStats()
        self._depth = 0
        self._handles: list[_Handle] = []
        self._hooks: list[Any] = []
        self._exclude: set[int] = set()
        self._stack = contextlib.ExitStack()
        self._stream: Any = None

    # -- hooks -------------------------------------------------------------

    def _active(self) -> bool:
        return self.modules is None or self._depth > 0

    def _pack(self, t: torch.Tensor) -> Any:
        nbytes = t.numel() * t.element_size()
        eligible = (
            self._active()
            and nbytes >= self.threshold_bytes
            and t.device.type != "meta"
            and id(t.untyped_storage()) not in self._exclude
            and not (t.is_leaf and t.requires_grad)
        )
        if not eligible:
            self.stats.kept += 1
            notify_saved(t)
            return t
        self.stats.packed += 1
        self.stats.bytes_offloaded += nbytes
        self.stats.packed_sizes.append(nbytes)
        if self.simulate:
            host = t.detach().to("meta")
        elif t.device.type == "cuda":
            host = torch.empty(t.size(), dtype=t.dtype, device="cpu", pin_memory=self.pin_memory)
            stream = self._side_stream()
            stream.wait_stream(torch.cuda.current_stream(t.device))
            with torch.cuda.stream(stream):
                host.copy_(t, non_blocking=True)
            t.record_stream(stream)
        else:
            host = t.detach().clone()
        handle = _Handle(host, t.device, len(self._handles))
        self._handles.append(handle)
        return handle

    def _side_stream(self) -> Any:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def _start_restore(self, handle: _Handle) -> None:
        if handle.restored is not None or handle.host is None:
            return
        if self.simulate:
            handle.restored = torch.empty(
                handle.host.size(), dtype=handle.host.dtype, device=handle.device
            )
        elif handle.device.type == "cuda":
            stream = self._side_stream()
            with torch.cuda.stream(stream):
                handle.restored = handle.host.to(handle.device, non_blocking=True)
                handle.event = torch.cuda.Event()
                handle.event.record(stream)
        else:
            handle.restored = handle.host

    def _unpack(self, packed: Any) -> torch.Tensor:
        if not isinstance(packed, _Handle):
            return packed
        handle = packed
        self._start_restore(handle)
        if self.prefetch and handle.index > 0:
            self._start_restore(self._handles[handle.index - 1])
        out = handle.restored
        assert out is not None
        if handle.event is not None:
            torch.cuda.current_stream(handle.device).wait_event(handle.event)
            out.record_stream(torch.cuda.current_stream(handle.device))
            handle.event = None
        if not handle.ready:
            handle.ready = True
            self.stats.unpacked += 1
            self.stats.bytes_restored += out.numel() * out.element_size()
        # Drop our references: autograd holds the restored tensor from here on.
        handle.restored = None
        handle.host = None  # type: ignore[assignment]
        return out

    # -- scoping -----------------------------------------------------------

    def _enter_module(self, *_: Any) -> None:
        self._depth += 1

    def _leave_module(self, *_: Any) -> None:
        self._depth -= 1

    def __enter__(self) -> TensorSwapper:
        owners = list(self.modules or []) + ([self.model] if self.model is not None else [])
        for owner in owners:
            for p in owner.parameters():
                self._exclude.add(id(p.untyped_storage()))
        for module in self.modules or []:
            self._hooks.append(module.register_forward_pre_hook(self._enter_module))
            self._hooks.append(module.register_forward_hook(self._leave_module, always_call=True))
        self._stack.enter_context(
            torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._depth = 0
