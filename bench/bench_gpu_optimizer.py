#!/usr/bin/env python3
"""GPU optimizer on the CPU: planning time, and what checkpointing saves against what it costs.

1. Planning: ResNet-50 training (3x224x224, AdamW, fp32), every batch size
   1..512 under the three plans (plain, checkpointing, offload), on the three
   machine profiles. Timed cold (fake-tensor steps, empty plan cache) and warm
   (cached fit). Goal: <= 10 s cold.
2. Checkpointing, measured on real CPU tensors: tracked activation peak and
   best-of-N step time (forward + backward) without and with checkpointing, for
   ResNet-50 and a ViT (ViT-S/16 width, 6 layers): every discovered block
   ("all"), and the least-FLOP set of blocks predicted to free 55% of the
   activation peak ("selective", what auto mode would pick for that target).
   Step times on a shared 2-core machine are noisy: the variants alternate and
   the best of N is kept, but treat differences under ~10% as noise.
   Goal: >= 50% activation memory saved at <= 30% step-time overhead.

Single-threaded (torch and BLAS), so figures are comparable on a shared machine.

Usage: python bench/bench_gpu_optimizer.py [--repeats 3] [--batch 8]
Writes bench/results/gpu_optimizer.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402

from gpu_optimizer import planning  # noqa: E402
from gpu_optimizer.checkpointing import (  # noqa: E402
    block_costs,
    discover_blocks,
    measure_checkpointing,
    select_blocks,
)
from gpu_optimizer.estimator import DEFAULT_OVERHEAD, PLANS  # noqa: E402
from gpu_optimizer.machines import load_machine_profiles  # noqa: E402
from gpu_optimizer.tracker import MemoryTracker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_optimizer.json"
PLAN_GOAL_S = 10.0
SAVED_GOAL = 0.5
OVERHEAD_GOAL = 0.3
SELECTIVE_TARGET = 0.55


def bench_planning() -> dict[str, object]:
    workload = planning.Workload("resnet50-train", "resnet50", (3, 224, 224), "train", "adamw")
    profiles = load_machine_profiles()
    timings = {}
    answers: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as cache:
        os.environ[planning.CACHE_DIR_ENV] = cache
        for label in ("cold", "warm"):
            if label == "cold":
                planning._fitted.cache_clear()
            start = time.perf_counter()
            fitted = planning._fitted(workload)
            table = {
                m.name: {
                    plan: [
                        fitted[plan].peak_bytes(b)
                        <= DEFAULT_OVERHEAD.allocation_budget(m.vram_bytes, 0.1)
                        for b in range(1, 513)
                    ].count(True)
                    for plan in PLANS
                }
                for m in profiles
            }
            plans = planning.plan_for_machines(workload, profiles)
            timings[label] = time.perf_counter() - start
            answers = {
                p.machine.name: {
                    "batch_plain": p.recommendation.batch_plain,
                    "batch_checkpointing": p.recommendation.batch_checkpointing,
                    "batch_offload": p.recommendation.batch_offload,
                    "recommended": f"{p.recommendation.recommended_plan} "
                    f"x{p.recommendation.recommended_batch}",
                    "fitting_batches_1_to_512": table[p.machine.name],
                }
                for p in plans
            }
        os.environ.pop(planning.CACHE_DIR_ENV)
        planning._fitted.cache_clear()
    return {
        "workload": "resnet50 train 3x224x224 adamw fp32",
        "cold_seconds": round(timings["cold"], 2),
        "warm_seconds": round(timings["warm"], 4),
        "goal_seconds": PLAN_GOAL_S,
        "meets_goal": timings["cold"] <= PLAN_GOAL_S,
        "machines": answers,
    }


def small_vit() -> torch.nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=224,
        patch_size=16,
        num_layers=6,
        num_heads=6,
        hidden_dim=384,
        mlp_dim=1536,
        num_classes=1000,
    )


def bench_checkpointing(repeats: int, batch: int) -> dict[str, object]:
    cases = {
        "resnet50": (lambda: torchvision.models.resnet50(), (3, 160, 160)),
        "vit_s16_6layers": (small_vit, (3, 224, 224)),
    }
    out: dict[str, dict[str, object]] = {}
    for name, (factory, shape) in cases.items():
        torch.manual_seed(0)
        model = factory()
        x = torch.randn(batch, *shape)
        loss_fn = lambda m=model, x=x: m(x).sum()  # noqa: E731
        every = discover_blocks(model)
        costs = block_costs(model, loss_fn, every)
        with MemoryTracker(model) as tracker:
            loss_fn().backward()
        model.zero_grad(set_to_none=True)
        plain_activations = int(tracker.report().category_timeline["activations"].max())
        target = int(SELECTIVE_TARGET * plain_activations)
        variants = {"all": every, "selective": select_blocks(costs, target)}
        out[name] = {}
        for variant, blocks in variants.items():
            report = measure_checkpointing(model, loss_fn, blocks, repeats=repeats)
            data = report.to_dict()
            data.update(
                input_shape=list(shape),
                batch_size=batch,
                blocks_checkpointed=len(blocks),
                blocks_total=len(every),
                meets_goal=bool(
                    report.activation_saved_ratio >= SAVED_GOAL
                    and (report.time_overhead_ratio or 0.0) <= OVERHEAD_GOAL
                ),
            )
            data.pop("blocks")
            out[name][variant] = {
                k: round(v, 4) if isinstance(v, float) else v for k, v in data.items()
            }
            print(
                f"{name} {variant} ({len(blocks)}/{len(every)} blocks): saved "
                f"{report.activation_saved_ratio:.0%} of activations, "
                f"step time {report.time_overhead_ratio or 0:+.0%}",
                flush=True,
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (best of)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the checkpointing runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {
        "benchmark": "gpu_optimizer",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "planning": bench_planning(),
        "checkpointing_cpu": bench_checkpointing(args.repeats, args.batch),
        "goals": {
            "plan_seconds": PLAN_GOAL_S,
            "activation_saved_ratio": SAVED_GOAL,
            "time_overhead_ratio": OVERHEAD_GOAL,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
