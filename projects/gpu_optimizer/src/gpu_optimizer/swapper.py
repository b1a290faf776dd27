"""Tensor swapper: saved activations above a size threshold go to CPU memory until backward.

It is a pair of saved-tensor hooks. Packing copies the tensor into pinned
host memory on a side CUDA stream, so the copy overlaps compute and the
device block is freed as soon as the forward no longer uses it. Backward
consumes saved tensors in roughly reverse order, so unpacking one also starts
copying the previous one back (prefetch) on the side stream.

A tensor saved by several autograd nodes (a ReLU output that the next Linear
also saves) is copied once and restored once while any node still holds it.

``simulate=True`` is for the estimator: a packed tensor keeps only its shape
and dtype (no memory anywhere) and comes back as an empty tensor, which
reproduces the device-memory effect on fake tensors.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gpu_optimizer.tracker import notify_saved


@dataclass
class SwapStats:
    """What moved. ``packed``/``bytes_offloaded`` count distinct tensors copied to the host;
    ``pack_calls``/``unpack_calls`` count autograd's saved-tensor slots that used them."""

    packed: int = 0
    pack_calls: int = 0
    unpack_calls: int = 0
    kept: int = 0
    bytes_offloaded: int = 0
    bytes_restored: int = 0


class _Entry:
    """One offloaded tensor, shared by every saved slot that holds the same view."""

    __slots__ = ("device", "event", "host", "meta", "restored", "source", "users")

    def __init__(self, source: Any, device: torch.device) -> None:
        self.source = source  # weakref to the device storage: guards against id reuse
        self.device = device
        self.host: torch.Tensor | None = None
        self.meta: tuple[torch.Size, torch.dtype] | None = None
        self.restored: Any = None  # weakref to the device copy while autograd holds it
        self.event: Any = None
        self.users = 0


class _Handle:
    __slots__ = ("done", "entry", "index")

    def __init__(self, entry: _Entry, index: int) -> None:
        self.entry = entry
        self.index = index
        self.done = False


class TensorSwapper:
    """Context manager offloading saved tensors of at least ``threshold_bytes``.

    ``modules`` scopes it: only tensors saved while one of them runs forward
    move. Parameters of ``modules`` and ``model`` are never moved (they stay
    on the device anyway).
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
        self._entries: dict[tuple[Any, ...], _Entry] = {}
        self._hooks: list[Any] = []
        self._exclude: set[int] = set()
        self._stack = contextlib.ExitStack()
        self._stream: Any = None
        self._prefetched: torch.Tensor | None = None

    # -- hooks -------------------------------------------------------------

    def _active(self) -> bool:
        return self.modules is None or self._depth > 0

    def _pack(self, t: torch.Tensor) -> Any:
        nbytes = t.numel() * t.element_size()
        storage = t.untyped_storage()
        eligible = (
            self._active()
            and nbytes >= self.threshold_bytes
            and t.device.type not in ("meta",)
            and id(storage) not in self._exclude
            and not (t.is_leaf and t.requires_grad)
        )
        if not eligible:
            self.stats.kept += 1
            notify_saved(t)
            return t
        self.stats.pack_calls += 1
        key = (id(storage), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        entry = self._entries.get(key)
        if entry is None or entry.source() is not storage or entry.users == 0:
            entry = _Entry(weakref.ref(storage), t.device)
            self._copy_out(entry, t)
            self._entries[key] = entry
            self.stats.packed += 1
            self.stats.bytes_offloaded += nbytes
        entry.users += 1
        handle = _Handle(entry, len(self._handles))
        self._handles.append(handle)
        return handle

    def _copy_out(self, entry: _Entry, t: torch.Tensor) -> None:
        if self.simulate:
            entry.meta = (t.size(), t.dtype)
        elif t.device.type == "cuda":
            host = torch.empty(t.size(), dtype=t.dtype, device="cpu", pin_memory=self.pin_memory)
            stream = self._side_stream()
            stream.wait_stream(torch.cuda.current_stream(t.device))
            with torch.cuda.stream(stream):
                host.copy_(t, non_blocking=True)
            t.record_stream(stream)  # the block is not reused before the copy has read it
            entry.host = host
        else:
            entry.host = t.detach().clone()

    def _side_stream(self) -> Any:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def _restored(self, entry: _Entry) -> torch.Tensor | None:
        return entry.restored() if entry.restored is not None else None

    def _start_restore(self, entry: _Entry) -> torch.Tensor:
        """Device copy of ``entry``, reused while alive; on CUDA copied on the side stream."""
        out = self._restored(entry)
        if out is not None:
            return out
        if entry.meta is not None:
            size, dtype = entry.meta
            out = torch.empty(size, dtype=dtype, device=entry.device)
        elif entry.host is None:
            raise RuntimeError("tensor swapper: a saved tensor was unpacked after it was released")
        elif entry.device.type == "cuda":
            stream = self._side_stream()
            stream.wait_stream(torch.cuda.current_stream(entry.device))
            with torch.cuda.stream(stream):
                out = entry.host.to(entry.device, non_blocking=True)
                entry.event = torch.cuda.Event()
                entry.event.record(stream)
        else:
            out = entry.host
        entry.restored = weakref.ref(out)
        return out

    def _unpack(self, packed: Any) -> torch.Tensor:
        if not isinstance(packed, _Handle):
            return packed
        handle, entry = packed, packed.entry
        out = self._start_restore(entry)
        if self.prefetch and handle.index > 0:
            previous = self._handles[handle.index - 1].entry
            if previous.users > 0 and previous is not entry:
                self._prefetched = self._start_restore(previous)  # keep it alive until used
        if entry.event is not None:
            current = torch.cuda.current_stream(entry.device)
            current.wait_event(entry.event)
            out.record_stream(current)
            entry.event = None
        self.stats.unpack_calls += 1
        if not handle.done:
            handle.done = True
            entry.users -= 1
            self.stats.bytes_restored += out.numel() * out.element_size()
            if entry.users == 0:
                entry.host = None  # every slot has its copy back: free the host memory
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
        self._prefetched = None
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._depth = 0


class OptimizerStateOffloader:
    """Keeps an optimizer's state in (pinned) CPU memory between steps.

    Adam's two buffers are twice the parameters; outside ``optimizer.step()``
    they only take device memory. A step pre-hook copies them to their
    parameter's device and a post-hook copies them back, so forward and
    backward run with that memory free, at the cost of two transfers of the
    state per step. A context manager; on exit the state returns to the device.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, pin_memory: bool = True) -> None:
        self.optimizer = optimizer
        self.pin_memory = pin_memory
        self.bytes_to_host = 0
        self.bytes_to_device = 0
        self._hooks: list[Any] = []

    def _move(self, to_host: bool) -> None:
        for param, state in self.optimizer.state.items():
            target = torch.device("cpu") if to_host else param.device
            for key, value in list(state.items()):
                if not isinstance(value, torch.Tensor) or value.device == target:
                    continue
                if value.dim() == 0 and key == "step":
                    continue  # Adam keeps `step` on the CPU unless capturable
                nbytes = value.numel() * value.element_size()
                if to_host:
                    pinned = self.pin_memory and value.device.type == "cuda"
                    host = torch.empty_like(value, device="cpu", pin_memory=pinned)
                    host.copy_(value, non_blocking=pinned)
                    state[key] = host
                    self.bytes_to_host += nbytes
                else:
                    state[key] = value.to(target, non_blocking=True)
                    self.bytes_to_device += nbytes
        if to_host and torch.cuda.is_available():
            torch.cuda.current_stream().synchronize()  # host copies complete before reuse

    def __enter__(self) -> OptimizerStateOffloader:
        self._hooks.append(self.optimizer.register_step_pre_hook(lambda *_: self._move(False)))
        self._hooks.append(self.optimizer.register_step_post_hook(lambda *_: self._move(True)))
        self._move(True)
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._move(False)
