#!/usr/bin/env python3
"""GPU proof: the estimator against the CUDA caching allocator, on a lent GPU, in one command.

For each model at three batch sizes, in fp32 and bf16 (autocast), one real
training step (AdamW) is measured on CUDA (``max_memory_allocated`` and
``max_memory_reserved`` after a reset) and compared with the GPU-free
estimate for that card's compute capability:

- resnet50 and vit_b_16 (3x224x224), yolo11n-pose (3x640x640);
- GPT-2 small (``hf:gpt2``, 512 tokens);
- a LoRA (r=16 on q_proj, v_proj) Llama-style config (TinyLlama widths,
  8 layers, 512 tokens).

Also: the batch-size finder against the planner's prediction (4 GiB
budget), checkpointing savings (measured vs estimated, ResNet-50 and GPT-2),
and the swapper's throughput. Goal: |estimate - measured| <= 5% of the
measured peak on every row. Finishes in under 8 minutes on one GPU.

Usage: python bench/gpu_check.py [--quick]. Writes bench/results/gpu_check.json.
Without CUDA it exits at once with status 2 and says so.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"
GOAL = 0.05
LLAMA_LORA = (
    "hf:llama?hidden_size=2048&intermediate_size=5632&num_hidden_layers=8"
    "&num_attention_heads=32&num_key_value_heads=4&vocab_size=32000"
)
# (name, spec, input shape, batches, LoRA targets)
ROWS: tuple[tuple[str, str, tuple[int, ...], tuple[int, ...], tuple[str, ...]], ...] = (
    ("resnet50", "resnet50", (3, 224, 224), (8, 32, 64), ()),
    ("vit_b_16", "vit_b_16", (3, 224, 224), (8, 32, 64), ()),
    ("yolo11n-pose", "yolo11n-pose.yaml", (3, 640, 640), (4, 16, 32), ()),
    ("gpt2-small", "hf:gpt2", (512,), (2, 8, 16), ()),
    ("llama-lora-r16", LLAMA_LORA, (512,), (2, 8, 16), ("q_proj", "v_proj")),
)


def _rel(predicted: int, measured: int) -> float:
    return round(predicted / measured - 1.0, 4) if measured else float("nan")


def estimate_rows(capability: tuple[int, int], quick: bool) -> list[dict[str, Any]]:
    from gpu_optimizer.estimator import estimate
    from gpu_optimizer.finetune import TrainingSetup
    from gpu_optimizer.profiler import profile

    rows = []
    for name, spec, shape, batches, targets in ROWS:
        setup = TrainingSetup(lora_r=16, lora_targets=targets) if targets else TrainingSetup()
        for dtype in ("fp32", "bf16"):
            for batch in batches[:1] if quick else batches:
                row: dict[str, Any] = {"model": name, "dtype": dtype, "batch": batch}
                start = time.perf_counter()
                try:
                    est = estimate(
                        spec, shape, batch, dtype=dtype, setup=setup, compute_capability=capability
                    )
                    row["estimate_seconds"] = round(time.perf_counter() - start, 2)
                    measured = profile(spec, shape, batch, device="cuda", dtype=dtype, setup=setup)
                except Exception as exc:  # a row that cannot run is a result, not the end
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    continue
                pred = est.predicted_cuda()
                row["tracked_estimate_bytes"] = est.peak_bytes
                row["predicted_max_allocated_bytes"] = pred["max_memory_allocated_bytes"]
                row["predicted_reserved_bytes"] = pred["reserved_bytes"]
                row["notes"] = est.notes
                if not measured.ok or measured.allocator is None:
                    row["error"] = measured.error
                else:
                    alloc = measured.allocator["max_memory_allocated_bytes"]
                    reserved = measured.allocator["max_memory_reserved_bytes"]
                    row["measured_max_allocated_bytes"] = alloc
                    row["measured_max_reserved_bytes"] = reserved
                    row["measured_tracked_bytes"] = measured.report.peak_bytes  # type: ignore[union-attr]
                    row["allocated_error"] = _rel(pred["max_memory_allocated_bytes"], alloc)
                    row["reserved_error"] = _rel(pred["reserved_bytes"], reserved)
                    row["within_goal"] = abs(row["allocated_error"]) <= GOAL
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def finder_vs_prediction() -> dict[str, Any]:
    from gpu_optimizer.estimator import batch_memory_model
    from gpu_optimizer.finder import find_batch_size

    budget = 4 * 2**30
    found = find_batch_size("resnet50", "3,224,224", device="cuda", budget_bytes=budget)
    fitted = batch_memory_model("resnet50", "3,224,224", plans=("plain",))["plain"]
    return {
        "model": "resnet50",
        "budget_bytes": budget,
        "margin": 0.1,
        "found": found.batch_size,
        "predicted": fitted.max_batch(int(budget * 0.9)),
        "trials": len(found.trials),
    }


def checkpointing_savings(capability: tuple[int, int]) -> list[dict[str, Any]]:
    import torch

    from gpu_optimizer.estimator import _Session, estimate

    out = []
    for name, spec, shape, batch in (
        ("resnet50", "resnet50", (3, 224, 224), 32),
        ("gpt2-small", "hf:gpt2", (512,), 8),
    ):
        measured = {}
        for plan in ("plain", "checkpointing"):
            session = _Session(spec, "adamw", "train", fake=False, device="cuda")
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            session.tracked_step(batch, shape, plan=plan, round_to=512)
            torch.cuda.synchronize()
            measured[plan] = int(torch.cuda.max_memory_allocated())
            del session
            torch.cuda.empty_cache()
        predicted = {
            plan: estimate(
                spec, shape, batch, plan=plan, compute_capability=capability
            ).predicted_cuda()["max_memory_allocated_bytes"]
            for plan in ("plain", "checkpointing")
        }
        out.append(
            {
                "model": name,
                "batch": batch,
                "measured_bytes": measured,
                "predicted_bytes": predicted,
                "measured_saving": measured["plain"] - measured["checkpointing"],
                "predicted_saving": predicted["plain"] - predicted["checkpointing"],
            }
        )
    return out


def swapper_throughput() -> dict[str, Any]:
    import contextlib

    import torch

    from gpu_optimizer.swapper import TensorSwapper

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        *[torch.nn.Sequential(torch.nn.Linear(2048, 8192), torch.nn.GELU()) for _ in range(8)]
    ).cuda()
    x = torch.randn(4096, 2048, device="cuda")

    def step(swapper: TensorSwapper | None) -> tuple[float, int]:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with swapper if swapper is not None else contextlib.nullcontext():
            loss = net(x).float().square().mean()
        loss.backward()
        net.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return time.perf_counter() - start, int(torch.cuda.max_memory_allocated())

    step(None)
    plain = min(step(None) for _ in range(3))
    swapped = min(step(TensorSwapper(threshold_bytes=1 << 20, model=net)) for _ in range(3))
    # Every Linear input and GELU input is offloaded and fetched back: 2 x 8 x 4096 x
    # (2048 + 8192) x 4 bytes each way.
    moved = 2 * 2 * 8 * 4096 * (2048 + 8192) * 4
    extra = max(swapped[0] - plain[0], 1e-9)
    return {
        "plain_seconds": round(plain[0], 4),
        "swapped_seconds": round(swapped[0], 4),
        "time_overhead_ratio": round(swapped[0] / plain[0] - 1, 4),
        "plain_max_allocated_bytes": plain[1],
        "swapped_max_allocated_bytes": swapped[1],
        "bytes_moved_estimate": moved,
        "effective_gb_per_s_of_added_time": round(moved / extra / 1e9, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one batch size per model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU on this machine; run it where one is lent "
            "(bench/run_gpu_checks.sh). Nothing was written.",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    major, minor = torch.cuda.get_device_capability(0)
    capability = (major, minor)
    results: dict[str, Any] = {
        "benchmark": "gpu_check",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0),
            "compute_capability": f"{major}.{minor}",
            "total_memory_bytes": torch.cuda.get_device_properties(0).total_memory,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "goal_relative_error": GOAL,
    }
    results["estimate_vs_measured"] = rows = estimate_rows(capability, args.quick)
    for key, fn in (
        ("finder_vs_prediction", finder_vs_prediction),
        ("checkpointing", lambda: checkpointing_savings(capability)),
        ("swapper", swapper_throughput),
    ):
        try:
            results[key] = fn()
        except Exception as exc:
            results[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        print(json.dumps({key: results[key]}), flush=True)
    measured = [r for r in rows if "allocated_error" in r]
    results["summary"] = {
        "rows": len(rows),
        "measured_rows": len(measured),
        "within_goal": sum(bool(r["within_goal"]) for r in measured),
        "max_abs_allocated_error": max((abs(r["allocated_error"]) for r in measured), default=None),
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
