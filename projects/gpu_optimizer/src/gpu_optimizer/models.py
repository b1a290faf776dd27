"""MODEL specs: turn a CLI or API string into a model, an input maker and a loss.

Accepted specs (docs/api.md, the gpu_optimizer CLI in README.md):

- a torchvision model name (``resnet50``), built without weights;
- an Ultralytics model yaml (``yolo11n-pose.yaml``), built with the task's
  model class from ``ultralytics.nn.tasks`` (random weights);
- ``path/to/file.py:factory`` or ``package.module:factory``, where the factory
  returns an ``nn.Module`` or a dict ``{"model": ..., "make_input": ...,
  "loss": ...}``; ``make_input`` may return a tensor, a tuple (positional
  arguments) or a dict (keyword arguments, as Hugging Face batches are);
- ``hf:ARCH`` or ``hf:path/to/config.json`` (see :mod:`gpu_optimizer.hf`).

When the model's output carries a ``loss`` (a dict or a transformers
``ModelOutput``), that is the loss. Otherwise the default loss is the sum of
every floating-point output. It is not a real training loss, but it sends a
dense gradient into every output, which is what decides backward memory; real
losses add only output-sized temporaries.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw", "adamw8bit")
# Autocast dtype per precision: plain bf16/fp16 are autocast over fp32 weights (the
# master weights); "-true" and "-master" cast the model itself (gpu_optimizer.finetune).
DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "bf16-true": None,
    "fp16-true": None,
    "bf16-master": None,
    "fp16-master": None,
}


class ModelSpecError(ValueError):
    """A MODEL spec, input shape, optimizer or dtype the user gave cannot be used."""


MakeInput = Callable[[int, tuple[int, ...]], Any]
LossFn = Callable[[Any, Any], torch.Tensor]


def default_make_input(batch_size: int, input_shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(batch_size, *input_shape)


def default_loss(output: Any, _inputs: Any) -> torch.Tensor:
    """The model's own ``loss`` if it returned one, else the sum of all floating outputs.

    The sum sends a dense gradient into every output, as a real loss does.
    """
    own = output.get("loss") if isinstance(output, dict) else None
    if isinstance(own, torch.Tensor) and own.is_floating_point():
        return own
    leaves = [
        t for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]
    if not leaves:
        raise ModelSpecError("the model returned no floating-point tensor to build a loss from")
    total = leaves[0].float().sum()
    for t in leaves[1:]:
        total = total + t.float().sum()
    return total


@dataclass
class ModelBundle:
    """A model with what it takes to run one step on it."""

    model: nn.Module
    make_input: MakeInput = default_make_input
    loss_fn: LossFn = default_loss


def parse_shape(text: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """``"3,224,224"`` -> ``(3, 224, 224)``; every dimension must be a positive integer."""
    if isinstance(text, (tuple, list)):
        parts = [str(p) for p in text]
    else:
        parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ModelSpecError(
            f"bad input shape {text!r}: expected positive integers separated by commas, "
            "such as 3,224,224"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise ModelSpecError(
            f"bad input shape {text!r}: expected positive integers separated by commas, "
            "such as 3,224,224"
        )
    return dims


def check_optimizer(name: str) -> str:
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ModelSpecError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return key


def check_dtype(name: str) -> str:
    key = name.lower()
    if key not in DTYPES:
        raise ModelSpecError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return key


def make_optimizer(
    name: str, params: Any, *, foreach: bool | None = True, dtype: str = "fp32"
) -> torch.optim.Optimizer:
    """The optimizers we plan for. SGD means SGD with momentum (one state buffer per parameter).

    ``foreach=True`` by default because it is what PyTorch picks on CUDA, and its
    grouped kernels allocate temporaries the per-tensor loop does not. Only
    parameters that require a gradient are handed over (frozen ones get no
    state). ``adamw8bit`` is bitsandbytes' state layout (gpu_optimizer.finetune);
    a ``-master`` dtype wraps the optimizer so it keeps fp32 master weights.
    """
    key = check_optimizer(name)
    trainable = [p for p in params if p.requires_grad]
    if check_dtype(dtype).endswith("-master"):
        from gpu_optimizer.finetune import MasterWeightOptimizer

        return MasterWeightOptimizer(
            trainable, lambda masters: make_optimizer(key, masters, foreach=foreach)
        )
    params = trainable
    if key == "adamw8bit":
        from gpu_optimizer.finetune import AdamW8bitPlan

        return AdamW8bitPlan(params)
    if key == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=foreach)
    if key == "adam":
        return torch.optim.Adam(params, lr=1e-3, foreach=foreach)
    return torch.optim.AdamW(params, lr=1e-3, foreach=foreach)


# -- spec resolution ------------------------------------------------------------


def _torchvision_builder(name: str) -> Callable[[], nn.Module] | None:
    import torchvision

    if name.lower() not in set(torchvision.models.list_models()):
        return None
    return functools.partial(torchvision.models.get_model, name.lower(), weights=None)


def _ultralytics_builder(spec: str) -> Callable[[], nn.Module]:
    try:
        from ultralytics.nn import tasks
    except ImportError:
        raise ModelSpecError(
            f"{spec!r} looks like an Ultralytics model yaml but ultralytics is not installed"
        ) from None
    try:
        tasks.yaml_model_load(spec)
    except Exception as exc:
        raise ModelSpecError(f"cannot read Ultralytics model yaml {spec!r}: {exc}") from None
    task = tasks.guess_model_task(spec)
    classes = {
        "pose": tasks.PoseModel,
        "detect": tasks.DetectionModel,
        "segment": tasks.SegmentationModel,
        "classify": tasks.ClassificationModel,
        "obb": tasks.OBBModel,
    }
    cls = classes.get(task, tasks.DetectionModel)
    return functools.partial(cls, spec, verbose=False)


def _load_factory(spec: str) -> Callable[[], Any]:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ModelSpecError(f"bad model spec {spec!r}: expected file.py:factory or module:factory")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ModelSpecError(f"bad model spec {spec!r}: file {target} not found")
        mod_name = f"_gpu_optimizer_user_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ModelSpecError(f"bad model spec {spec!r}: cannot import {target}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelSpecError(
                f"bad model spec {spec!r}: importing {target} failed: {exc}"
            ) from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise ModelSpecError(
                f"bad model spec {spec!r}: cannot import {target}: {exc}"
            ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelSpecError(f"bad model spec {spec!r}: {target} has no callable {attr!r}")
    return factory


def _as_bundle(spec: str, made: Any) -> ModelBundle:
    if isinstance(made, nn.Module):
        return ModelBundle(made)
    if isinstance(made, dict) and isinstance(made.get("model"), nn.Module):
        unknown = sorted(set(made) - {"model", "make_input", "loss"})
        if unknown:
            raise ModelSpecError(
                f"factory of {spec!r} returned unknown key(s) {unknown}; "
                "allowed: model, make_input, loss"
            )
        return ModelBundle(
            made["model"],
            made.get("make_input") or default_make_input,
            made.get("loss") or default_loss,
        )
    raise ModelSpecError(
        f"factory of {spec!r} returned {type(made).__name__}; "
        "expected an nn.Module or a dict with 'model'"
    )


def resolve_builder(spec: str) -> Callable[[], ModelBundle]:
    """A zero-argument function building a fresh bundle for ``spec`` (raises ModelSpecError)."""
    spec = spec.strip()
    if not spec:
        raise ModelSpecError("empty model spec")
    if spec.startswith("hf:"):
        from gpu_optimizer.hf import hf_builder

        return hf_builder(spec)
    if spec.endswith((".yaml", ".yml")):
        build = _ultralytics_builder(spec)
        return lambda: ModelBundle(build())
    if ":" in spec:
        factory = _load_factory(spec)
        return lambda: _as_bundle(spec, factory())
    build_tv = _torchvision_builder(spec)
    if build_tv is None:
        raise ModelSpecError(
            f"unknown model {spec!r}: not a torchvision model name, an Ultralytics .yaml, "
            "or file.py:factory / package.module:factory"
        )
    return lambda: ModelBundle(build_tv())


@functools.lru_cache(maxsize=8)
def _real_model(spec: str) -> ModelBundle:
    return resolve_builder(spec)()


def to_fake(module: nn.Module, fake_mode: Any) -> nn.Module:
    """Replace a real module's parameters and buffers by fake tensors, in place.

    A parameter shared by several modules (tied embedding and output layer)
    becomes one fake parameter shared the same way: one gradient, one
    optimizer state, as in the real model.
    """
    from torch._subclasses.fake_tensor import FakeTensor

    memo: dict[int, torch.Tensor] = {}
    for sub in module.modules():
        for key, p in list(sub._parameters.items()):
            if p is not None and not isinstance(p, FakeTensor):
                if id(p) not in memo:
                    memo[id(p)] = nn.Parameter(
                        fake_mode.from_tensor(p), requires_grad=p.requires_grad
                    )
                sub._parameters[key] = memo[id(p)]  # type: ignore[assignment]
        for key, b in list(sub._buffers.items()):
            if b is not None and not isinstance(b, FakeTensor):
                if id(b) not in memo:
                    memo[id(b)] = fake_mode.from_tensor(b)
                sub._buffers[key] = memo[id(b)]
        # Plain tensor attributes (Ultralytics' ``stride``) become fake constants: their
        # values stay readable, which code computing shapes from them needs.
        for key, value in list(vars(sub).items()):
            if (
                isinstance(value, torch.Tensor)
                and not key.startswith("_")
                and not isinstance(value, FakeTensor)
            ):
                converter = fake_mode.fake_tensor_converter
                setattr(sub, key, converter.from_real_tensor(fake_mode, value, make_constant=True))
    return module


def build_bundle(spec: str, *, fake_mode: Any | None = None) -> ModelBundle:
    """Build the bundle, on fake tensors when ``fake_mode`` is given.

    Construction under fake mode is cheapest; models whose constructor reads
    tensor values (Ultralytics' stride probe, bias init) are built once for
    real, cached, and copied onto fake tensors.
    """
    if fake_mode is None:
        return resolve_builder(spec)()
    if not spec.endswith((".yaml", ".yml")):
        builder = resolve_builder(spec)
        try:
            with fake_mode:
                return builder()
        except ModelSpecError:
            raise
        except Exception:
            pass
    real = _real_model(spec)
    return ModelBundle(to_fake(copy.deepcopy(real.model), fake_mode), real.make_input, real.loss_fn)


def describe_inputs(inputs: Any) -> str:
    """``input_ids: float32[2, 16], labels: int64[2, 16]``: the input spec, for error messages."""

    def one(t: Any) -> str:
        if isinstance(t, torch.Tensor):
            return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
        return type(t).__name__

    if isinstance(inputs, dict):
        return ", ".join(f"{k}: {one(v)}" for k, v in inputs.items())
    if isinstance(inputs, (tuple, list)):
        return ", ".join(f"arg{i}: {one(v)}" for i, v in enumerate(inputs))
    return f"input: {one(inputs)}"
