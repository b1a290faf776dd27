"""Memory tracker: accounts every tensor storage a training step creates.

It sits in the dispatcher (a ``TorchDispatchMode``) so it sees every aten op,
including the ones autograd runs in backward and the optimizer's foreach
kernels, and it works the same on CUDA, on the CPU and on fake tensors
(``FakeTensorMode``), which is what lets us estimate a GPU's memory on a
machine without one.

Each storage is counted once, when an op first returns it, and released by a
weakref finalizer when Python frees it. Its category is settled at report
time, because several are only known later: a tensor becomes an *activation*
when autograd saves it for backward (saved-tensor pack hook), a *gradient*
when it is accumulated into ``param.grad``, *optimizer state* when it ends up
in ``optimizer.state``. Everything else is *temporary*. Parameters and
buffers are *parameters*.

The event log (one signed size per allocation/free) is kept so the live set
at the peak, and the curve over the step, can be replayed afterwards at
O(events) cost instead of snapshotting on every new peak.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CATEGORIES: tuple[str, ...] = (
    "parameters",
    "gradients",
    "optimizer_state",
    "activations",
    "temporary",
)
PHASES: tuple[str, ...] = ("setup", "forward", "backward", "optimizer")
_PRIORITY = {c: i for i, c in enumerate(CATEGORIES)}

# The CUDA caching allocator hands out blocks in multiples of 512 bytes.
CUDA_BLOCK_BYTES = 512

# Trackers entered on this thread (saved-tensor hooks run on the forward's thread), so
# concurrent steps in other threads never report into each other's trackers.
_LOCAL = threading.local()


def _active() -> list[MemoryTracker]:
    if not hasattr(_LOCAL, "trackers"):
        _LOCAL.trackers = []
    return _LOCAL.trackers  # type: ignore[no-any-return]


class MemoryBudgetExceeded(RuntimeError):
    """Raised at the allocation that takes a tracker past its ``limit_bytes``.

    The message contains "out of memory" so code handling a real CUDA OOM
    handles this the same way: a budget below the device's capacity behaves
    like a smaller device, which makes OOM handling testable on the CPU.
    """


def is_oom(exc: BaseException) -> bool:
    """CUDA OOM, the CPU allocator failing, or a tracker's budget being exceeded."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def notify_saved(tensor: torch.Tensor) -> None:
    """Tell active trackers that ``tensor`` is kept for backward.

    Checkpointing and the swapper install their own saved-tensor hooks, which
    hide the tracker's; they call this so kept tensors still count as
    activations.
    """
    for tracker in _active():
        tracker.mark_saved(tensor)


def round_up(nbytes: int, block: int = CUDA_BLOCK_BYTES) -> int:
    return int(math.ceil(nbytes / block) * block) if nbytes > 0 else 0


@dataclass
class _Storage:
    nbytes: int
    category: str
    module: str
    phase: str
    counted: bool
    saved_by: set[str] = field(default_factory=set)


@dataclass
class MemoryReport:
    """Breakdown of one tracked run; all sizes in bytes of the tracked device."""

    device: str
    peak_bytes: int
    peak_phase: str
    peak_module: str
    peak_event: int
    breakdown: dict[str, int]
    per_module: dict[str, dict[str, int]]
    phase_peaks: dict[str, int]
    final_bytes: int
    final_breakdown: dict[str, int]
    timeline: np.ndarray = field(repr=False)
    timeline_phases: list[str] = field(repr=False)
    category_timeline: dict[str, np.ndarray] = field(repr=False)
    allocator: dict[str, int] | None = None
    # The activation peak (the end of forward, for a training step): live bytes per
    # category then, and the modules holding the most activations.
    activation_peak_bytes: int = 0
    activation_peak_phase: str = ""
    activation_peak_breakdown: dict[str, int] = field(default_factory=dict)
    top_activation_modules: list[tuple[str, int]] = field(default_factory=list)

    def to_dict(self, *, per_module: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device": self.device,
            "peak_bytes": self.peak_bytes,
            "peak_phase": self.peak_phase,
            "peak_module": self.peak_module,
            "breakdown": dict(self.breakdown),
            "phase_peaks": dict(self.phase_peaks),
            "activation_peak": {
                "bytes": self.activation_peak_bytes,
                "phase": self.activation_peak_phase,
                "breakdown": dict(self.activation_peak_breakdown),
                "top_modules": [
                    {"module": m, "activation_bytes": b} for m, b in self.top_activation_modules
                ],
            },
        }
        if per_module:
            out["per_module"] = {m: dict(v) for m, v in self.per_module.items()}
        if self.allocator is not None:
            out["allocator"] = dict(self.allocator)
        return out


class _Mode(TorchDispatchMode):
    def __init__(self, tracker: MemoryTracker) -> None:
        super().__init__()
        self.tracker = tracker

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                self.tracker._observe(t)
        return out


class MemoryTracker:
    """Context manager that tracks the storages a model's step creates.

    ``device`` selects what counts: only storages of tensors on that device
    (default: the device of the model's first parameter). ``round_to`` models
    allocator rounding (use 512 for CUDA). ``limit_bytes`` makes the tracker
    raise :class:`MemoryBudgetExceeded` when live bytes go above it.
    ``host_step_scalars`` leaves out the optimizers' ``step`` counters, which
    CUDA keeps on the host (estimates for CUDA run on the CPU, where they
    would count).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        device: torch.device | str | None = None,
        round_to: int = 1,
        limit_bytes: int | None = None,
        host_step_scalars: bool = False,
    ) -> None:
        self.model = model
        self.host_step_scalars = host_step_scalars
        self.optimizer = optimizer
        if device is None and model is not None:
            first = next(itertools.chain(model.parameters(), model.buffers()), None)
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device if device is not None else "cpu")
        self.round_to = max(1, int(round_to))
        self.limit_bytes = limit_bytes
        self._storages: dict[int, _Storage] = {}
        self._refs: dict[int, Any] = {}
        self._events: list[tuple[_Storage, int]] = []
        self._event_phase: list[str] = []
        self._live = 0
        self._peak = 0
        self._peak_event = -1
        self._phase = "setup"
        self._phase_peaks: dict[str, int] = {}
        self._module_stack: list[str] = []
        self._handles: list[Any] = []
        self._stack = contextlib.ExitStack()
        self._param_modules: dict[int, str] = {}
        self._report: MemoryReport | None = None

    # -- bookkeeping ---------------------------------------------------------

    def _counts(self, t: torch.Tensor) -> bool:
        dev = t.device
        if dev.type != self.device.type:
            return False
        return self.device.index is None or dev.index in (None, self.device.index)

    def _size(self, nbytes: int) -> int:
        return round_up(nbytes, self.round_to) if self.round_to > 1 else nbytes

    def _record(self, info: _Storage, delta: int) -> None:
        if not info.counted or delta == 0:
            return
        self._events.append((info, delta))
        self._event_phase.append(self._phase)
        self._live += delta
        if self._live > self._phase_peaks.get(self._phase, 0):
            self._phase_peaks[self._phase] = self._live
        if self._live > self._peak:
            self._peak = self._live
            self._peak_event = len(self._events) - 1
        if self.limit_bytes is not None and delta > 0 and self._live > self.limit_bytes:
            raise MemoryBudgetExceeded(
                f"out of memory: tracked budget of {self.limit_bytes} bytes exceeded "
                f"({self._live} bytes live in {self._phase})"
            )

    def _release(self, key: int) -> None:
        info = self._storages.pop(key, None)
        self._refs.pop(key, None)
        if info is not None:
            self._record(info, -info.nbytes)

    def _observe(self, t: torch.Tensor, category: str = "temporary", module: str | None = None):
        storage = t.untyped_storage()
        key = id(storage)
        nbytes = self._size(storage.nbytes())
        info = self._storages.get(key)
        if info is not None:
            if info.nbytes != nbytes:  # resized in place (resize_, out= ops)
                delta = nbytes - info.nbytes
                info.nbytes = nbytes
                self._record(info, delta)
            if _PRIORITY[category] < _PRIORITY[info.category]:
                info.category = category
            return info
        where = (
            module if module is not None else (self._module_stack[-1] if self._module_stack else "")
        )
        info = _Storage(nbytes, category, where, self._phase, self._counts(t))
        self._storages[key] = info
        self._refs[key] = weakref.finalize(storage, self._release, key)
        self._record(info, nbytes)
        return info

    def _classify(self, t: torch.Tensor, category: str, module: str | None = None) -> None:
        info = self._observe(t, category, module)
        if module is not None and _PRIORITY[category] <= _PRIORITY[info.category]:
            info.module = module

    def mark_saved(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage as an activation (kept for backward)."""
        if isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided:
            self._classify(tensor, "activations")
            info = self._storages[id(tensor.untyped_storage())]
            info.saved_by.add(self._module_stack[-1] if self._module_stack else "")

    def track(self, tensor: torch.Tensor, category: str = "temporary") -> None:
        """Register a tensor created before tracking started (e.g. an input batch)."""
        if category not in _PRIORITY:
            raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
        self._classify(tensor, category)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute allocations in this block to a phase (forward, backward, optimizer)."""
        previous, self._phase = self._phase, name
        try:
            yield
        finally:
            self._phase = previous

    # -- hooks ---------------------------------------------------------------

    def _install_model_hooks(self, model: nn.Module) -> None:
        for name, module in model.named_modules():
            path = name or "<root>"

            def pre(_m: nn.Module, _args: Any, path: str = path) -> None:
                self._module_stack.append(path)

            def post(_m: nn.Module, _args: Any, _out: Any, path: str = path) -> None:
                if self._module_stack and self._module_stack[-1] == path:
                    self._module_stack.pop()

            self._handles.append(module.register_forward_pre_hook(pre))
            self._handles.append(module.register_forward_hook(post, always_call=True))
            for pname, p in module.named_parameters(recurse=False):
                self._param_modules[id(p)] = path
                self._classify(p, "parameters", path)
                if p.grad is not None:
                    self._classify(p.grad, "gradients", path)
                if p.requires_grad:
                    self._handles.append(p.register_post_accumulate_grad_hook(self._on_grad))
                del pname
            for b in module.buffers(recurse=False):
                self._classify(b, "parameters", path)

    def _on_grad(self, p: torch.Tensor) -> None:
        if p.grad is not None:
            self._classify(p.grad, "gradients", self._param_modules.get(id(p), ""))

    def _scan_optimizer(self) -> None:
        if self.optimizer is None:
            return
        for p, state in self.optimizer.state.items():
            owner = self._param_modules.get(id(p), "")
            if self.host_step_scalars and isinstance(state, dict):
                step = state.get("step")
                if isinstance(step, torch.Tensor) and step.numel() == 1:
                    self._uncount(step)
                state = {k: v for k, v in state.items() if k != "step"}
            for value in tree_leaves(state):
                if isinstance(value, torch.Tensor):
                    self._classify(value, "optimizer_state", owner)

    def _uncount(self, t: torch.Tensor) -> None:
        """Stop counting a storage (a host-side scalar): its bytes leave the live total."""
        info = self._observe(t)
        if info.counted:
            self._record(info, -info.nbytes)
            info.counted = False

    def _scan_grads(self) -> None:
        if self.model is None:
            return
        for p in self.model.parameters():
            if p.grad is not None:
                self._classify(p.grad, "gradients", self._param_modules.get(id(p), ""))

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.mark_saved(t)
        return t

    # -- context manager -----------------------------------------------------

    def __enter__(self) -> MemoryTracker:
        self._report = None
        if self.model is not None:
            self._install_model_hooks(self.model)
        self._scan_optimizer()
        if self.optimizer is not None:
            self._handles.append(
                self.optimizer.register_step_post_hook(lambda *_: self._scan_optimizer())
            )
        self._stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, _identity))
        self._stack.enter_context(_Mode(self))
        _active().append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _active().remove(self)
        self._stack.close()
        self._scan_grads()
        self._scan_optimizer()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._module_stack.clear()
        # Tracking stops here: storages that outlive the tracker (parameters) must not
        # keep it, and its event log, alive through their finalizers.
        for ref in self._refs.values():
            ref.detach()
        self._refs.clear()
        self._storages.clear()

    # -- results -------------------------------------------------------------

    def storage_info(
        self, storage: torch.UntypedStorage
    ) -> tuple[str, str, int, frozenset[str]] | None:
        """(module, category, bytes, modules that saved it) of a tracked live storage, or None."""
        info = self._storages.get(id(storage))
        if info is None:
            return None
        return info.module, info.category, info.nbytes, frozenset(info.saved_by)

    def live_at(self, event: int) -> dict[str, dict[str, int]]:
        """Bytes per module and category live just after ``event`` (negative: before any)."""
        live: dict[int, _Storage] = {}
        for info, delta in self._events[: event + 1]:
            if delta > 0 and id(info) not in live:
                live[id(info)] = info
            elif delta < 0 and info.nbytes + delta <= 0:
                live.pop(id(info), None)
        per_module: dict[str, dict[str, int]] = {}
        for info in live.values():
            # A resized storage's size is approximated by its final size.
            mod = per_module.setdefault(info.module or "<none>", dict.fromkeys(CATEGORIES, 0))
            mod[info.category] += info.nbytes
        return dict(sorted(per_module.items()))

    def phase_end(self, phase: str) -> int:
        """Index of the last event of ``phase`` (-1 if it had none)."""
        last = -1
        for i, p in enumerate(self._event_phase):
            if p == phase:
                last = i
        return last

    def report(self, allocator: dict[str, int] | None = None) -> MemoryReport:
        """Replay the event log: totals at the peak, per module, and the curves over time."""
        if self._report is not None and allocator is None:
            return self._report
        deltas = np.fromiter((d for _, d in self._events), dtype=np.int64, count=len(self._events))
        timeline = np.cumsum(deltas) if len(deltas) else np.zeros(0, dtype=np.int64)
        category_timeline = {}
        for cat in CATEGORIES:
            mask = np.fromiter(
                (info.category == cat for info, _ in self._events),
                dtype=bool,
                count=len(self._events),
            )
            category_timeline[cat] = np.cumsum(np.where(mask, deltas, 0))
        per_module = self.live_at(self._peak_event)
        breakdown = {c: sum(m[c] for m in per_module.values()) for c in CATEGORIES}
        acts = category_timeline["activations"]
        act_event = int(np.argmax(acts)) if len(acts) and acts.max() > 0 else -1
        at_act = self.live_at(act_event) if act_event >= 0 else {}
        top = sorted(
            ((m, v["activations"]) for m, v in at_act.items() if v["activations"] > 0),
            key=lambda kv: kv[1],
            reverse=True,
        )[:20]
        final_breakdown = {
            cat: int(curve[-1]) if len(curve) else 0 for cat, curve in category_timeline.items()
        }
        peak_info = self._events[self._peak_event][0] if self._peak_event >= 0 else None
        report = MemoryReport(
            device=str(self.device),
            peak_bytes=int(self._peak),
            peak_phase=self._event_phase[self._peak_event] if self._peak_event >= 0 else "setup",
            peak_module=peak_info.module if peak_info is not None else "",
            peak_event=self._peak_event,
            breakdown=breakdown,
            per_module=per_module,
            phase_peaks={p: int(v) for p, v in self._phase_peaks.items()},
            final_bytes=int(self._live),
            final_breakdown=final_breakdown,
            timeline=timeline,
            timeline_phases=list(self._event_phase),
            category_timeline=category_timeline,
            allocator=allocator,
            activation_peak_bytes=int(acts[act_event]) if act_event >= 0 else 0,
            activation_peak_phase=self._event_phase[act_event] if act_event >= 0 else "",
            activation_peak_breakdown={c: sum(m[c] for m in at_act.values()) for c in CATEGORIES},
            top_activation_modules=top,
        )
        if allocator is None:
            self._report = report
        return report


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t
