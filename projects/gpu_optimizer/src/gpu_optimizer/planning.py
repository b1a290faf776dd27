"""Batch-size planning: the largest batch per GPU, plain, with checkpointing, with offload.

Computed, not tabulated: each workload's step runs twice on fake tensors per
plan (see :mod:`gpu_optimizer.estimator`), which gives its tracked peak as an
exact function of the batch size; the CUDA overhead model turns a card's VRAM
into a budget for that peak. The fitted models are cached per workload, so
planning for more machines or margins afterwards is instant. Workloads naming
a torchvision model or an Ultralytics yaml are also cached on disk
(``GPU_OPT_CACHE_DIR``, default ``~/.cache/gpu_optimizer``), keyed by the
workload and the torch, ultralytics and gpu_optimizer versions, so the
services and ``scripts/validate_env.py`` answer at once after the first run.
User factories (``file.py:factory``) are never cached on disk: their code may
change under the same name.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from gpu_optimizer import __version__
from gpu_optimizer.estimator import (
    DEFAULT_OVERHEAD,
    PLANS,
    BatchMemoryModel,
    CudaOverheadModel,
    batch_memory_model,
)
from gpu_optimizer.finetune import TrainingSetup
from gpu_optimizer.machines import MachineProfile, load_machine_profiles
from gpu_optimizer.models import check_dtype, check_optimizer, parse_shape

MAX_BATCH = 4096
# Below this many samples per step, checkpointing is worth its ~30% recompute
# if it at least doubles the batch.
SMALL_BATCH = 16


@dataclass(frozen=True)
class Workload:
    name: str
    model: str
    input_shape: tuple[int, ...]
    mode: Literal["train", "infer"]
    optimizer: str = "adamw"
    dtype: str = "fp32"
    setup: TrainingSetup = field(default_factory=TrainingSetup)


DEFAULT_WORKLOADS: tuple[Workload, ...] = (
    Workload("resnet50-train", "resnet50", (3, 224, 224), "train", "adamw"),
    Workload("yolo11n-pose-train", "yolo11n-pose.yaml", (3, 640, 640), "train", "adamw"),
    # The pose service batches frames across its streams.
    Workload("yolo11n-pose-infer", "yolo11n-pose.yaml", (3, 640, 640), "infer"),
)


@dataclass(frozen=True)
class Recommendation:
    workload: Workload
    vram_bytes: int
    batch_plain: int
    batch_checkpointing: int
    batch_offload: int
    recommended_batch: int
    recommended_plan: str  # "plain" | "checkpointing" | "offload" | "does-not-fit"


@dataclass(frozen=True)
class MachinePlan:
    machine: MachineProfile
    recommendation: Recommendation


CACHE_DIR_ENV = "GPU_OPT_CACHE_DIR"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "gpu_optimizer")


def _versions(*names: str) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "none"
    return out


def _cache_file(workload: Workload) -> Path | None:
    builtin_hf = (
        workload.model.startswith("hf:")
        and not workload.model.split("?")[0].endswith(".json")
        and "/" not in workload.model
    )
    if ":" in workload.model and not builtin_hf:
        return None
    try:
        ultralytics_version = importlib.metadata.version("ultralytics")
    except importlib.metadata.PackageNotFoundError:
        ultralytics_version = "none"
    key = json.dumps(
        {
            "workload": dataclasses.asdict(workload),
            "torch": torch.__version__,
            "ultralytics": ultralytics_version,
            "gpu_optimizer": __version__,
            **_versions("transformers", "peft"),
            "format": 3,
        },
        sort_keys=True,
    )
    return cache_dir() / f"plan-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _dump(models: dict[str, BatchMemoryModel]) -> dict[str, Any]:
    return {
        plan: {
            "intercepts": m.intercepts.tolist(),
            "slopes": m.slopes.tolist(),
            "exact": m.exact,
            "floor_bytes": m.floor_bytes,
        }
        for plan, m in models.items()
    }


def _load(data: dict[str, Any]) -> dict[str, BatchMemoryModel]:
    return {
        plan: BatchMemoryModel(
            np.asarray(m["intercepts"], dtype=np.float64),
            np.asarray(m["slopes"], dtype=np.float64),
            bool(m["exact"]),
            int(m["floor_bytes"]),
        )
        for plan, m in data.items()
    }


@functools.lru_cache(maxsize=32)
def _fitted(workload: Workload) -> dict[str, BatchMemoryModel]:
    file = _cache_file(workload)
    if file is not None and file.is_file():
        try:
            return _load(json.loads(file.read_text()))
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is recomputed and rewritten
    plans = PLANS if workload.mode == "train" else ("plain",)
    fitted = batch_memory_model(
        workload.model,
        workload.input_shape,
        optimizer=workload.optimizer,
        dtype=workload.dtype,
        mode=workload.mode,
        plans=plans,
        setup=workload.setup,
    )
    if file is not None:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=file.parent, delete=False) as tmp:
                json.dump(_dump(fitted), tmp)
            os.replace(tmp.name, file)
        except OSError:
            pass  # a read-only home only costs the recomputation next time
    return fitted


def _validate(workload: Workload) -> Workload:
    if workload.mode not in ("train", "infer"):
        raise ValueError(
            f"workload {workload.name!r}: mode must be train or infer, got {workload.mode!r}"
        )
    shape = parse_shape(workload.input_shape)
    check_optimizer(workload.optimizer)
    check_dtype(workload.dtype)
    return workload if shape == tuple(workload.input_shape) else _replace_shape(workload, shape)


def _replace_shape(workload: Workload, shape: tuple[int, ...]) -> Workload:
    return dataclasses.replace(workload, input_shape=shape)


def choose_plan(plain: int, checkpointing: int, offload: int) -> tuple[str, int]:
    """Cheapest plan giving a useful batch.

    Plain costs nothing; checkpointing costs one extra forward of the
    checkpointed blocks, so it is chosen when plain fits fewer than
    ``SMALL_BATCH`` samples and checkpointing at least doubles that; offload
    costs PCIe traffic every step, so it is the last resort.
    """
    if plain >= 1 and not (plain < SMALL_BATCH and checkpointing >= 2 * plain):
        return "plain", plain
    if checkpointing >= 1:
        return "checkpointing", checkpointing
    if offload >= 1:
        return "offload", offload
    return "does-not-fit", 0


def _recommend(
    workload: Workload, vram_bytes: int, safety_margin: float, overhead: CudaOverheadModel
) -> Recommendation:
    fitted = _fitted(workload)
    budget = overhead.allocation_budget(vram_bytes, safety_margin)
    plain = fitted["plain"].max_batch(budget, limit=MAX_BATCH)
    if workload.mode == "train":
        ckpt = max(plain, fitted["checkpointing"].max_batch(budget, limit=MAX_BATCH))
        offload = max(plain, fitted["offload"].max_batch(budget, limit=MAX_BATCH))
    else:
        # Without backward nothing is saved, so neither technique changes memory.
        ckpt = offload = plain
    plan, batch = choose_plan(plain, ckpt, offload)
    return Recommendation(workload, vram_bytes, plain, ckpt, offload, batch, plan)


def recommend_batch_sizes(
    vram_bytes: int,
    workloads: Sequence[Workload] = DEFAULT_WORKLOADS,
    *,
    safety_margin: float = 0.1,
    overhead: CudaOverheadModel = DEFAULT_OVERHEAD,
) -> list[Recommendation]:
    """Largest batch per workload on a GPU of ``vram_bytes``, keeping ``safety_margin`` free."""
    if vram_bytes <= 0:
        raise ValueError(f"vram_bytes must be positive, got {vram_bytes}")
    if not 0.0 <= safety_margin < 1.0:
        raise ValueError(f"safety_margin must be in [0, 1), got {safety_margin}")
    return [_recommend(_validate(w), int(vram_bytes), safety_margin, overhead) for w in workloads]


def plan_for_machines(
    workload: Workload,
    profiles: Sequence[MachineProfile] | None = None,
    *,
    safety_margin: float = 0.1,
    overhead: CudaOverheadModel = DEFAULT_OVERHEAD,
) -> list[MachinePlan]:
    """One recommendation per machine profile (default: the profile file's machines)."""
    machines = list(profiles) if profiles is not None else load_machine_profiles()
    return [
        MachinePlan(
            m,
            recommend_batch_sizes(
                m.vram_bytes, [workload], safety_margin=safety_margin, overhead=overhead
            )[0],
        )
        for m in machines
    ]


def predicted_peak_bytes(workload: Workload, batch_size: int, plan: str = "plain") -> int:
    """Tracked (allocator-level) peak of ``workload`` at ``batch_size`` under ``plan``."""
    fitted = _fitted(_validate(workload))
    return fitted.get(plan, fitted["plain"]).peak_bytes(batch_size)


POSE_INFERENCE_WORKLOAD = next(w for w in DEFAULT_WORKLOADS if w.name == "yolo11n-pose-infer")
# Frames per forward without a GPU: the CPU gains little from batching and each
# frame's latency grows with the batch.
CPU_POSE_BATCH = 1
# More frames per forward than a few streams deliver at once only adds latency.
POSE_BATCH_LIMIT = 32


def pose_inference_batch_size(
    vram_bytes: int | None,
    *,
    limit: int = POSE_BATCH_LIMIT,
    cpu_batch: int = CPU_POSE_BATCH,
    safety_margin: float = 0.1,
) -> int:
    """Frames per YOLO11-pose inference for the pose service, across its streams.

    ``vram_bytes`` is the GPU memory the service may use (NVML's total, or its
    free memory on a shared card); None or 0 means no GPU, which gives
    ``cpu_batch``. Otherwise it is the planner's recommendation for the
    ``yolo11n-pose-infer`` workload, capped at ``limit`` and at least 1.
    """
    if not vram_bytes or vram_bytes <= 0:
        return max(1, cpu_batch)
    recommendation = recommend_batch_sizes(
        vram_bytes, [POSE_INFERENCE_WORKLOAD], safety_margin=safety_margin
    )[0]
    return max(1, min(limit, recommendation.recommended_batch))
