"""Checkpoint manager: non-reentrant activation checkpointing applied to chosen submodules.

A checkpointed module keeps only its inputs for backward and recomputes its
inside during backward: memory of its internal activations traded for one
more forward of that module. The wrapper is an instance attribute
``forward`` (the module object, its attributes and hooks stay as they are),
so models that inspect their own layers, such as Ultralytics' routing by
``m.f``/``m.i``, keep working, and removal is deleting that attribute.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint

from gpu_optimizer.tracker import notify_saved


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def discover_blocks(model: nn.Module, *, max_fraction: float = 0.25) -> list[str]:
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


def _checkpointed_forward(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return original(*args, **kwargs)
    for leaf in tree_leaves((args, kwargs)):
        if isinstance(leaf, torch.Tensor):
            notify_saved(leaf)  # the checkpoint keeps its inputs alive for the recompute
    return checkpoint(original, *args, use_reentrant=False, **kwargs)


@dataclass
class CheckpointManager:
    """Applies and removes checkpointing on a model's submodules.

    Choose modules by exact names (:meth:`apply`), a glob pattern
    (:meth:`apply_pattern`), every k-th block (:meth:`apply_every`), or to
    meet a memory budget (:func:`gpu_optimizer.estimator.auto_checkpoint`).
    Usable as a context manager that removes everything on exit.
    """

    model: nn.Module
    applied: list[str] = field(default_factory=list)

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
            module.forward = functools.partial(_checkpointed_forward, original)  # type: ignore[method-assign]
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
