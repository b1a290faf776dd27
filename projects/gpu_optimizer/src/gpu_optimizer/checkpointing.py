"""Checkpoint manager: non-reentrant activation checkpointing applied to chosen submodules.

A checkpointed module keeps only its inputs for backward and recomputes its
inside during backward: memory of its internal activations traded for one
more forward of that module. Norm layers' running statistics move once per
step, as without checkpointing (:func:`running_stats_frozen`). The wrapper is an instance attribute
``forward`` (the module object, its attributes and hooks stay as they are),
so models that inspect their own layers, such as Ultralytics' routing by
``m.f``/``m.i``, keep working, and removal is deleting that attribute.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.overrides import _get_current_function_mode_stack
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint

from gpu_optimizer.tracker import notify_saved


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def discover_blocks(model: nn.Module, *, max_fraction: float = 0.5) -> list[str]:
    """Names of the natural checkpoint segments of a model ("blocks").

    Containers of non-leaf modules (a ResNet stage, a ViT encoder's layers, an
    Ultralytics ``model.model``) are opened so each block becomes a segment; a
    module holding more than ``max_fraction`` of the parameters is opened too,
    so no single segment recomputes most of the network. Leaves are never
    segments: checkpointing one conv saves nothing.
    """
    total = max(_param_count(model), 1)
    blocks: list[str] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            kids = list(child.children())
            if not kids:
                continue
            container_of_blocks = isinstance(child, (nn.ModuleList, nn.ModuleDict)) or (
                isinstance(child, nn.Sequential) and all(list(k.children()) for k in kids)
            )
            if container_of_blocks or _param_count(child) > max_fraction * total:
                walk(f"{path}.", child)
            else:
                blocks.append(path)

    walk("", model)
    return blocks


# Selective (op-level) policy: keep the outputs of the expensive ops (matmuls,
# convolutions, attention), recompute the cheap ones (norms, activations,
# elementwise) in backward. Saves less than full checkpointing, costs almost nothing.
_EXPENSIVE_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
    torch.ops.aten.convolution.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
}
POLICIES: tuple[str, ...] = ("full", "save-matmuls")


def _save_matmuls(_ctx: Any, op: Any, *_args: Any, **_kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    if op in _EXPENSIVE_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context() -> Any:
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_save_matmuls)


@contextlib.contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Let norm layers in ``module`` run in training mode without moving their running stats.

    The recompute of a checkpointed block is the block's forward a second
    time; left alone, every BatchNorm in it would update ``running_mean`` /
    ``running_var`` and ``num_batches_tracked`` twice per step (1.9x the
    momentum, 2 batches counted): not the training the user asked for. During
    the recompute the buffers are swapped for throw-away copies, so the ops (and
    the tensors the backward needs) are exactly those of the first forward.
    """
    swapped: list[tuple[nn.Module, str, torch.Tensor]] = []
    for m in module.modules():
        if isinstance(m, _NormBase) and m.training and m.track_running_stats:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                buf = getattr(m, name, None)
                if isinstance(buf, torch.Tensor):
                    swapped.append((m, name, buf))
                    setattr(m, name, buf.clone())
    try:
        yield
    finally:
        for m, name, buf in swapped:
            setattr(m, name, buf)


def _owner(function: Callable[..., Any]) -> nn.Module | None:
    target = getattr(function, "func", function)  # functools.partial of a bound method
    owner = getattr(target, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def checkpoint_keeping_stats(
    function: Callable[..., Any],
    *args: Any,
    use_reentrant: bool = False,
    context_fn: Callable[[], Any] | None = None,
    **kwargs: Any,
) -> Any:
    """``torch.utils.checkpoint.checkpoint`` (non-reentrant) that recomputes without side effects.

    The first call of ``function`` is the forward; any later call is the
    recompute in backward, run with :func:`running_stats_frozen`. The inputs
    are reported to active trackers as activations (the checkpoint keeps them).
    ``use_reentrant`` is accepted for signature compatibility and ignored.
    """
    del use_reentrant
    for leaf in tree_leaves((args, kwargs)):
        if isinstance(leaf, torch.Tensor):
            notify_saved(leaf)  # the checkpoint keeps its inputs alive for the recompute
    module = _owner(function)
    # Function modes that change which kernels run (the CUDA model) must also be on
    # during the recompute, which autograd runs without the forward's mode stack.
    replay = [m for m in _get_current_function_mode_stack() if getattr(m, "replay", False)]
    calls = 0

    def run(*a: Any, **k: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            return function(*a, **k)
        with contextlib.ExitStack() as stack:
            active = _get_current_function_mode_stack()
            for mode in replay:
                if all(mode is not m for m in active):
                    stack.enter_context(mode)
            if module is not None:
                stack.enter_context(running_stats_frozen(module))
            return function(*a, **k)

    if context_fn is not None:
        return checkpoint(run, *args, use_reentrant=False, context_fn=context_fn, **kwargs)
    return checkpoint(run, *args, use_reentrant=False, **kwargs)


def _checkpointed_forward(
    original: Callable[..., Any], policy: str, *args: Any, **kwargs: Any
) -> Any:
    if not torch.is_grad_enabled():
        return original(*args, **kwargs)
    context = _selective_context if policy == "save-matmuls" else None
    return checkpoint_keeping_stats(original, *args, context_fn=context, **kwargs)


@dataclass
class CheckpointManager:
    """Applies and removes checkpointing on a model's submodules.

    Choose modules by exact names (:meth:`apply`), a glob pattern
    (:meth:`apply_pattern`), every k-th block (:meth:`apply_every`), or to
    meet a memory budget (:func:`auto_checkpoint`). ``policy="save-matmuls"``
    uses PyTorch's selective checkpointing: inside a block, matmul and
    convolution outputs stay saved and only the cheap ops are recomputed.
    Usable as a context manager that removes everything on exit.
    """

    model: nn.Module
    policy: str = "full"
    applied: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(
                f"unknown checkpoint policy {self.policy!r}; expected one of {POLICIES}"
            )

    def _modules(self) -> dict[str, nn.Module]:
        return dict(self.model.named_modules())

    def apply(self, names: Iterable[str]) -> list[str]:
        modules = self._modules()
        done = []
        for name in names:
            module = modules.get(name)
            if module is None:
                raise KeyError(f"no submodule named {name!r} in {type(self.model).__name__}")
            if name in self.applied:
                continue
            if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
                raise ValueError(f"{name!r} is a {type(module).__name__}, which has no forward")
            original = module.forward
            module.forward = functools.partial(_checkpointed_forward, original, self.policy)  # type: ignore[method-assign]
            self.applied.append(name)
            done.append(name)
        return done

    def apply_pattern(self, pattern: str) -> list[str]:
        """Checkpoint every module whose dotted name matches a glob (``layer*.?``)."""
        names = [n for n in self._modules() if n and fnmatch.fnmatchcase(n, pattern)]
        if not names:
            raise KeyError(f"no submodule name matches {pattern!r}")
        return self.apply(names)

    def apply_every(self, k: int = 1, blocks: Sequence[str] | None = None) -> list[str]:
        """Checkpoint every k-th block (blocks default to :func:`discover_blocks`)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        chosen = list(blocks) if blocks is not None else discover_blocks(self.model)
        return self.apply(chosen[::k])

    def remove(self) -> None:
        modules = self._modules()
        for name in self.applied:
            module = modules.get(name)
            if module is not None and "forward" in module.__dict__:
                del module.forward
        self.applied.clear()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


# -- measuring and choosing -------------------------------------------------------

LossFn = Callable[[], torch.Tensor]


@dataclass
class BlockCost:
    name: str
    activation_bytes: int  # saved inside the block at the end of forward: what checkpointing frees
    flops: int  # forward + backward flops attributed to the block: proxy for its recompute cost


@dataclass
class CheckpointReport:
    """Effect of checkpointing ``blocks``: tracked memory and step time, before and after."""

    blocks: list[str]
    activation_peak_before: int
    activation_peak_after: int
    peak_before: int
    peak_after: int
    # Share of the model's FLOPs inside the checkpointed blocks: the recompute costs
    # about this share of one forward pass.
    recompute_fraction: float
    seconds_before: float | None = None
    seconds_after: float | None = None

    @property
    def activation_saved_bytes(self) -> int:
        return self.activation_peak_before - self.activation_peak_after

    @property
    def activation_saved_ratio(self) -> float:
        return self.activation_saved_bytes / max(self.activation_peak_before, 1)

    @property
    def time_overhead_ratio(self) -> float | None:
        if not self.seconds_before or self.seconds_after is None:
            return None
        return self.seconds_after / self.seconds_before - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocks": list(self.blocks),
            "activation_peak_before_bytes": self.activation_peak_before,
            "activation_peak_after_bytes": self.activation_peak_after,
            "activation_saved_bytes": self.activation_saved_bytes,
            "activation_saved_ratio": self.activation_saved_ratio,
            "peak_before_bytes": self.peak_before,
            "peak_after_bytes": self.peak_after,
            "recompute_fraction": self.recompute_fraction,
            "seconds_before": self.seconds_before,
            "seconds_after": self.seconds_after,
            "time_overhead_ratio": self.time_overhead_ratio,
        }


def _tracked(
    model: nn.Module,
    loss_fn: LossFn,
    keep: dict[str, list[Any]] | None = None,
    infos: dict[str, list[Any]] | None = None,
) -> Any:
    """One tracked forward+backward; ``infos`` receives, per name in ``keep``, the tracker's
    view of the still-live storages (weakrefs) that block returned."""
    from gpu_optimizer.tracker import MemoryTracker

    with MemoryTracker(model) as tracker:
        with tracker.phase("forward"):
            loss = loss_fn()
        # What each watched block returned and is still alive after forward, deduplicated.
        for name, refs in (keep or {}).items():
            seen: dict[int, Any] = {}
            for ref in refs:
                storage = ref()
                if storage is not None and id(storage) not in seen:
                    seen[id(storage)] = tracker.storage_info(storage)
            if infos is not None:
                infos[name] = [i for i in seen.values() if i is not None]
        with tracker.phase("backward"):
            loss.backward()
            del loss
    model.zero_grad(set_to_none=True)
    return tracker


def _activation_peak(tracker: Any) -> int:
    curve = tracker.report().category_timeline["activations"]
    return int(curve.max()) if len(curve) else 0


def block_costs(
    model: nn.Module, loss_fn: LossFn, blocks: Sequence[str] | None = None
) -> list[BlockCost]:
    """Memory each block would free when checkpointed, and its compute, from one tracked step."""
    from torch.utils.flop_counter import FlopCounterMode

    names = list(blocks) if blocks is not None else discover_blocks(model)
    modules = dict(model.named_modules())
    outputs: dict[str, list[Any]] = {name: [] for name in names}
    output_infos: dict[str, list[Any]] = {}
    hooks = []
    for name in names:

        def keep_output(_m: nn.Module, _a: Any, out: Any, name: str = name) -> None:
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    outputs[name].append(weakref.ref(leaf.untyped_storage()))

        hooks.append(modules[name].register_forward_hook(keep_output))
    try:
        with FlopCounterMode(display=False) as counter:
            tracker = _tracked(model, loss_fn, keep=outputs, infos=output_infos)
    finally:
        for h in hooks:
            h.remove()
    per_module = tracker.live_at(tracker.phase_end("forward"))
    counts = counter.get_flop_counts()
    root = type(model).__name__
    costs = []
    for name in names:
        inside = [m for m in per_module if m.startswith(f"{name}.")]
        act = sum(per_module[m]["activations"] for m in inside)
        # The block's output stays saved if a layer after the block saved it too.
        act -= sum(
            nbytes
            for module, category, nbytes, saved_by in output_infos.get(name, [])
            if category == "activations"
            and module.startswith(f"{name}.")
            and any(m != name and not m.startswith(f"{name}.") for m in saved_by)
        )
        flops = sum(counts.get(f"{root}.{name}", {}).values())
        costs.append(BlockCost(name, int(act), int(flops)))
    return costs


def select_blocks(costs: Sequence[BlockCost], target_bytes: int) -> list[str]:
    """Fewest FLOPs' worth of blocks predicted to free ``target_bytes`` (greedy, bytes per FLOP).

    Returned in model order; all blocks if even they cannot free that much.
    """
    ranked = sorted(costs, key=lambda c: (c.flops + 1) / max(c.activation_bytes, 1))
    chosen: set[str] = set()
    freed = 0
    for cost in ranked:
        if freed >= target_bytes:
            break
        chosen.add(cost.name)
        freed += cost.activation_bytes
    return [c.name for c in costs if c.name in chosen]


def _total_flops(model: nn.Module, loss_fn: LossFn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss_fn().backward()
    model.zero_grad(set_to_none=True)
    return max(int(counter.get_total_flops()), 1)


def auto_checkpoint(
    manager: CheckpointManager,
    loss_fn: LossFn,
    budget_bytes: int,
    *,
    blocks: Sequence[str] | None = None,
) -> CheckpointReport:
    """Checkpoint the fewest FLOPs' worth of blocks that brings the tracked peak under budget.

    Blocks are ranked by bytes freed per FLOP recomputed (a greedy knapsack),
    taken until the predicted peak fits, then the real peak is re-measured and
    more blocks are added while it is still over. If even every block is not
    enough, all are left applied and the report shows the remaining excess.
    """
    model = manager.model
    before = _tracked(model, loss_fn)
    base_peak = before.report().peak_bytes
    base_act = _activation_peak(before)
    costs = block_costs(model, loss_fn, blocks)
    total = _total_flops(model, loss_fn)
    ranked = sorted(costs, key=lambda c: (c.flops + 1) / max(c.activation_bytes, 1))
    chosen: list[BlockCost] = []
    predicted = base_peak
    for cost in ranked:
        if predicted <= budget_bytes:
            break
        chosen.append(cost)
        predicted -= cost.activation_bytes
    manager.apply([c.name for c in chosen])
    after = _tracked(model, loss_fn)
    for cost in ranked[len(chosen) :]:
        if after.report().peak_bytes <= budget_bytes:
            break
        chosen.append(cost)
        manager.apply([cost.name])
        after = _tracked(model, loss_fn)
    return CheckpointReport(
        blocks=[c.name for c in chosen],
        activation_peak_before=base_act,
        activation_peak_after=_activation_peak(after),
        peak_before=base_peak,
        peak_after=after.report().peak_bytes,
        recompute_fraction=sum(c.flops for c in chosen) / total,
    )


def _time_steps(model: nn.Module, loss_fn: LossFn, repeats: int) -> float:
    import time

    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        loss_fn().backward()
        model.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def measure_checkpointing(
    model: nn.Module, loss_fn: LossFn, blocks: Sequence[str] | None = None, *, repeats: int = 3
) -> CheckpointReport:
    """Tracked memory and best-of-``repeats`` step time, without and with ``blocks``.

    Timed steps alternate between the two variants, so load from other
    processes on a shared machine hits both alike.
    """
    names = list(blocks) if blocks is not None else discover_blocks(model)
    before = _tracked(model, loss_fn)
    costs = block_costs(model, loss_fn, names)
    total = _total_flops(model, loss_fn)
    with CheckpointManager(model) as manager:
        manager.apply(names)
        after = _tracked(model, loss_fn)
    _time_steps(model, loss_fn, 1)  # warm-up
    seconds_before = seconds_after = float("inf")
    for _ in range(repeats):
        seconds_before = min(seconds_before, _time_steps(model, loss_fn, 1))
        with CheckpointManager(model) as manager:
            manager.apply(names)
            seconds_after = min(seconds_after, _time_steps(model, loss_fn, 1))
    return CheckpointReport(
        blocks=names,
        activation_peak_before=_activation_peak(before),
        activation_peak_after=_activation_peak(after),
        peak_before=before.report().peak_bytes,
        peak_after=after.report().peak_bytes,
        recompute_fraction=sum(c.flops for c in costs) / total,
        seconds_before=seconds_before,
        seconds_after=seconds_after,
    )
