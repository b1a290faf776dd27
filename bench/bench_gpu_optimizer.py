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
3. Estimate time in-process per model (first call in the process, and warm:
   the median of 3 more), CLI start-up (``gpu-optimizer --help``, an argument
   error, a first estimate in a fresh process), and a warm estimate through the
   service (real uvicorn, POST /profiles then polling until done; median of 5
   after one warm-up job). Goals: --help and argument errors < 0.5 s, a warm
   service estimate < 1 s.
4. Only where CUDA is available: estimated vs measured max_memory_allocated
   (resnet50, yolo11n-pose at batch 8 and 32; goal <= 10% error), the finder's
   batch vs the predicted one under a 4 GiB budget, and the swapper's cost.

Single-threaded (torch and BLAS), so figures are comparable on a shared machine.

Usage: python bench/bench_gpu_optimizer.py [--repeats 3] [--batch 8] [--only-estimates]
Writes bench/results/gpu_optimizer.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
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


def bench_checkpointing(repeats: int, batch: int) -> dict[str, dict[str, object]]:
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


def bench_cuda() -> dict[str, object]:
    """Only with a CUDA GPU: estimate vs measured peak, finder vs prediction, swapper cost."""
    from gpu_optimizer.estimator import batch_memory_model, estimate
    from gpu_optimizer.finder import find_batch_size
    from gpu_optimizer.profiler import profile
    from gpu_optimizer.swapper import TensorSwapper

    out: dict[str, object] = {"device": torch.cuda.get_device_name(0)}
    errors = []
    for model, shape in (("resnet50", "3,224,224"), ("yolo11n-pose.yaml", "3,640,640")):
        for batch in (8, 32):
            predicted = estimate(model, shape, batch).to_dict()["predicted_cuda"]
            measured = profile(model, shape, batch, device="cuda")
            if not measured.ok or measured.allocator is None:
                errors.append({"model": model, "batch": batch, "error": measured.error})
                continue
            real = measured.allocator["max_memory_allocated_bytes"]
            errors.append(
                {
                    "model": model,
                    "batch": batch,
                    "predicted_max_allocated_bytes": predicted["max_memory_allocated_bytes"],
                    "measured_max_allocated_bytes": real,
                    "relative_error": round(predicted["max_memory_allocated_bytes"] / real - 1, 4),
                }
            )
    out["estimate_vs_measured"] = errors
    budget = 4 * 2**30
    found = find_batch_size("resnet50", "3,224,224", device="cuda", budget_bytes=budget)
    fitted = batch_memory_model("resnet50", "3,224,224", plans=("plain",))["plain"]
    out["finder_resnet50_4GiB_budget"] = {
        "found": found.batch_size,
        "predicted": fitted.max_batch(int(budget * 0.9)),
        "trials": len(found.trials),
    }
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
    out["swapper_mlp"] = {
        "plain_seconds": round(plain[0], 4),
        "swapped_seconds": round(swapped[0], 4),
        "time_overhead_ratio": round(swapped[0] / plain[0] - 1, 4),
        "plain_max_allocated_bytes": plain[1],
        "swapped_max_allocated_bytes": swapped[1],
    }
    return out


ESTIMATE_MODELS: tuple[tuple[str, tuple[int, ...], int], ...] = (
    ("resnet50", (3, 224, 224), 32),
    ("vit_b_16", (3, 224, 224), 32),
    ("yolo11n-pose.yaml", (3, 640, 640), 16),
    ("hf:gpt2", (512,), 8),
    (
        "hf:llama?hidden_size=2048&intermediate_size=5632&num_hidden_layers=8"
        "&num_attention_heads=32&num_key_value_heads=4&vocab_size=32000",
        (512,),
        8,
    ),
)


def bench_estimates() -> list[dict[str, object]]:
    """In-process estimate time per model: the first call (imports, construction) and warm."""
    import statistics

    from gpu_optimizer.estimator import estimate

    rows = []
    for model, shape, batch in ESTIMATE_MODELS:
        start = time.perf_counter()
        est = estimate(model, shape, batch)
        first = time.perf_counter() - start
        warm = []
        for _ in range(3):
            start = time.perf_counter()
            estimate(model, shape, batch)
            warm.append(time.perf_counter() - start)
        rows.append(
            {
                "model": model.split("?")[0],
                "input_shape": list(shape),
                "batch": batch,
                "peak_bytes": est.peak_bytes,
                "first_seconds": round(first, 3),
                "warm_median_seconds": round(statistics.median(warm), 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _timed_cli(args: list[str], repeats: int) -> float:
    import shutil
    import statistics
    import subprocess

    exe = shutil.which("gpu-optimizer") or str(Path(sys.executable).with_name("gpu-optimizer"))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([exe, *args], capture_output=True, check=False, timeout=600)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def bench_cli() -> dict[str, object]:
    """Wall time of fresh ``gpu-optimizer`` processes (medians)."""
    return {
        "help_seconds": _timed_cli(["--help"], 5),
        "argument_error_seconds": _timed_cli(["estimate", "resnet18", "--batch-size", "0"], 5),
        "first_estimate_resnet18_seconds": _timed_cli(
            ["estimate", "resnet18", "--input-shape", "3,224,224", "--batch-size", "8"], 3
        ),
        "first_estimate_hf_gpt2_seconds": _timed_cli(
            ["estimate", "hf:gpt2", "--seq-len", "512", "--batch-size", "8"], 1
        ),
        "goal_help_seconds": 0.5,
    }


def bench_service_estimate() -> dict[str, object]:
    """A warm estimate through the real service: POST /profiles, poll to the result."""
    import socket
    import statistics
    import subprocess

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    workdir = Path(tempfile.mkdtemp(prefix="bench_gpu_service_"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_OPT_")}
    env.pop("DATABASE_URL", None)
    env.update(
        {
            "GPU_OPT_DATA_DIR": str(workdir / "data"),
            "GPU_OPT_CACHE_DIR": str(workdir / "cache"),
            "GPU_OPT_RECOMMEND_AT_STARTUP": "false",
        }
    )
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "uvicorn", "gpu_optimizer.api:create_app", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = {"model": "resnet18", "input_shape": [3, 224, 224], "batch_size": 8}

    def one() -> float:
        start = time.perf_counter()
        job = httpx.post(f"{url}/profiles", json=body, timeout=60).json()
        while True:
            state = httpx.get(f"{url}/profiles/{job['id']}", timeout=30).json()["state"]
            if state not in ("queued", "running"):
                break
            time.sleep(0.02)
        if state != "succeeded":
            raise RuntimeError(f"service estimate ended {state}")
        return time.perf_counter() - start

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gpu_optimizer service did not start")
            time.sleep(0.2)
        first = one()
        warm = [one() for _ in range(5)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "model": "resnet18 (3,224,224) batch 8",
        "first_seconds": round(first, 3),
        "warm_median_seconds": round(statistics.median(warm), 3),
        "goal_warm_seconds": 1.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (best of)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the checkpointing runs")
    parser.add_argument(
        "--only-estimates", action="store_true", help="only estimate, CLI and service timings"
    )
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
        "estimates": bench_estimates(),
        "cli": bench_cli(),
        "service_estimate": bench_service_estimate(),
    }
    if args.only_estimates:
        previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        previous.update(results)
        results = previous
    else:
        results |= {
            "planning": bench_planning(),
            "checkpointing_cpu": bench_checkpointing(args.repeats, args.batch),
            "cuda": bench_cuda() if torch.cuda.is_available() else None,
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
