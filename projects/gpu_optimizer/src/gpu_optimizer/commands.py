"""The memory subcommands of ``gpu-optimizer``: estimate, profile, plan, batch-size.

Kept apart from ``cli.py`` (shared with the service and ``top``) so each
command is a plain function over the library. User mistakes (bad model spec,
shape, optimizer, machine file) print one line on stderr and exit 2, without
a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpu_optimizer.tracker import CATEGORIES, MemoryReport

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_size(text: str) -> int:
    """``"2GiB"``, ``"1.5GB"``, ``"512MiB"`` or plain bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"bad size {text!r}: use bytes or e.g. 512MiB, 2GiB, 1.5GB"
        )
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {text!r}")
    return value


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _emit(args: argparse.Namespace, data: dict[str, Any], text: Callable[[], str]) -> None:
    print(json.dumps(data, indent=2) if args.json else text())


def _breakdown_text(report: MemoryReport, top: int = 5) -> list[str]:
    lines = [f"peak {fmt_bytes(report.peak_bytes)} in {report.peak_phase}"]
    lines += [f"  {cat:<16} {fmt_bytes(report.breakdown[cat]):>12}" for cat in CATEGORIES]
    heavy = sorted(report.per_module.items(), key=lambda kv: sum(kv[1].values()), reverse=True)
    if heavy:
        lines.append(f"largest modules at the peak (--json has all {len(heavy)}):")
        lines += [f"  {name:<32} {fmt_bytes(sum(v.values())):>12}" for name, v in heavy[:top]]
    return lines


def _write_plots(report: MemoryReport, directory: str | None, title: str) -> list[str]:
    if not directory:
        return []
    from gpu_optimizer.plots import plot_modules, plot_timeline

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    return [
        str(plot_timeline(report, out / "memory_timeline.png", title)),
        str(plot_modules(report, out / "memory_modules.png", title=title)),
    ]


# -- commands -------------------------------------------------------------------


def _estimate(args: argparse.Namespace) -> int:
    from gpu_optimizer.estimator import estimate

    est = estimate(
        args.model,
        args.input_shape,
        args.batch_size,
        optimizer=args.optimizer,
        dtype=args.dtype,
        mode=args.mode,
        plan=args.plan,
    )
    data = est.to_dict()
    title = f"{args.model} batch {args.batch_size} ({args.plan}, estimated)"
    plots = _write_plots(est.report, args.plot, title)
    if plots:
        data["plots"] = plots

    def text() -> str:
        pred = data["predicted_cuda"]
        lines = [
            f"{args.model} {tuple(est.input_shape)} batch {args.batch_size}, "
            f"{est.optimizer}, {est.dtype}, {est.mode}, {est.plan} (estimated on fake tensors)",
            *_breakdown_text(est.report),
            "predicted CUDA: max_memory_allocated "
            f"{fmt_bytes(pred['max_memory_allocated_bytes'])}, "
            f"reserved {fmt_bytes(pred['reserved_bytes'])}, "
            f"card memory needed {fmt_bytes(pred['device_bytes'])}",
        ]
        lines += [f"plot: {p}" for p in plots]
        return "\n".join(lines)

    _emit(args, data, text)
    return 0


def _profile(args: argparse.Namespace) -> int:
    from gpu_optimizer.profiler import profile

    result = profile(
        args.model,
        args.input_shape,
        args.batch_size,
        device=args.device,
        optimizer=args.optimizer,
        dtype=args.dtype,
        mode=args.mode,
        snapshot_path=args.snapshot,
        budget_bytes=args.budget,
    )
    data = result.to_dict()
    plots: list[str] = []
    if result.report is not None:
        title = f"{args.model} batch {args.batch_size} on {result.device}"
        plots = _write_plots(result.report, args.plot, title)
        if plots:
            data["plots"] = plots

    def text() -> str:
        head = f"{args.model} batch {args.batch_size} on {result.device} (measured)"
        if not result.ok or result.report is None:
            return f"{head}\nOOM: {result.error}"
        lines = [head, *_breakdown_text(result.report)]
        if result.allocator:
            lines.append(
                "CUDA allocator: max_memory_allocated "
                f"{fmt_bytes(result.allocator['max_memory_allocated_bytes'])}, max reserved "
                f"{fmt_bytes(result.allocator['max_memory_reserved_bytes'])}"
            )
        if result.snapshot:
            lines.append(f"snapshot: {result.snapshot} (open at https://pytorch.org/memory_viz)")
        lines += [f"plot: {p}" for p in plots]
        return "\n".join(lines)

    _emit(args, data, text)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from gpu_optimizer.machines import load_machine_profiles
    from gpu_optimizer.models import parse_shape
    from gpu_optimizer.planning import Workload

    shape = parse_shape(args.input_shape)
    workload = Workload(args.model, args.model, shape, args.mode, args.optimizer, args.dtype)
    profiles = load_machine_profiles(args.machines)
    from gpu_optimizer.fleet import open_measurements, plan_with_measurements
    from gpu_optimizer.settings import get_settings

    rows = open_measurements(args.database_url or get_settings().sqlalchemy_url())
    planned = plan_with_measurements(workload, profiles, rows, safety_margin=args.safety_margin)
    data = {
        "model": args.model,
        "input_shape": list(shape),
        "optimizer": args.optimizer,
        "dtype": args.dtype,
        "mode": args.mode,
        "safety_margin": args.safety_margin,
        "machines": [
            {
                "name": p.machine.name,
                "gpu": p.machine.gpu,
                "vram_bytes": p.machine.vram_bytes,
                "compute_capability": p.machine.compute_capability,
                "batch_plain": p.recommendation.batch_plain,
                "batch_checkpointing": p.recommendation.batch_checkpointing,
                "batch_offload": p.recommendation.batch_offload,
                "recommended_batch": p.recommendation.recommended_batch,
                "recommended_plan": p.recommendation.recommended_plan,
                **extra,
            }
            for p, extra in planned
        ],
    }

    def text() -> str:
        lines = [
            f"{args.model} {shape} {args.mode}, {args.optimizer}, {args.dtype}, "
            f"safety margin {args.safety_margin:.0%}",
            f"{'machine':<14} {'VRAM':>10} {'plain':>7} {'ckpt':>7} {'offload':>8}  recommended",
        ]
        for m in data["machines"]:
            lines.append(
                f"{m['name']:<14} {fmt_bytes(m['vram_bytes']):>10} {m['batch_plain']:>7} "
                f"{m['batch_checkpointing']:>7} {m['batch_offload']:>8}  "
                f"{m['recommended_plan']} x{m['recommended_batch']}"
            )
            for f in m.get("measured", []):
                err = f" (estimate {f['error']:+.1%})" if "error" in f else ""
                got = fmt_bytes(f["measured_reserved_bytes"]) if f["ok"] else "OOM"
                lines.append(f"  measured batch {f['batch_size']}: reserved {got}{err}")
        return "\n".join(lines)

    _emit(args, data, text)
    return 0


def _batch_size(args: argparse.Namespace) -> int:
    from gpu_optimizer.finder import find_batch_size

    result = find_batch_size(
        args.model,
        args.input_shape,
        device=args.device,
        optimizer=args.optimizer,
        dtype=args.dtype,
        mode=args.mode,
        budget_bytes=args.budget,
        margin=args.margin,
        min_batch=args.min_batch,
        max_batch=args.max_batch,
        steps_per_trial=args.steps,
    )
    data = result.to_dict()
    data["model"] = args.model

    def text() -> str:
        lines = [
            f"{'batch':>6} {'result':<8} {'peak':>12} {'seconds':>8}",
            *(
                f"{t.batch_size:>6} {'ok' if t.ok else 'OOM':<8} "
                f"{fmt_bytes(t.peak_bytes) if t.peak_bytes is not None else '-':>12} "
                f"{t.seconds:>8.2f}"
                for t in result.trials
            ),
            f"largest batch size on {result.device}: {result.batch_size}",
        ]
        return "\n".join(lines)

    _emit(args, data, text)
    return 0


# -- wiring -----------------------------------------------------------------------


def _user_errors() -> tuple[type[BaseException], ...]:
    from gpu_optimizer.machines import MachineProfileError
    from gpu_optimizer.models import ModelSpecError

    return (ModelSpecError, MachineProfileError, ValueError, KeyError, RuntimeError)


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except _user_errors() as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"gpu-optimizer {args.command}: error: {message}", file=sys.stderr)
            return 2

    return run


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="torchvision name (resnet50), Ultralytics yaml (yolo11n-pose.yaml), "
        "file.py:factory or package.module:factory",
    )
    p.add_argument("--input-shape", required=True, help="one sample's shape, e.g. 3,224,224")
    p.add_argument("--optimizer", default="adamw", help="sgd (momentum), adam or adamw")
    p.add_argument("--dtype", default="fp32", help="fp32, or bf16/fp16 autocast")
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_memory_commands(sub: Any) -> None:
    """Register estimate, profile, plan and batch-size on the CLI's subparsers."""
    est = sub.add_parser("estimate", help="memory of one training step, without a GPU")
    _model_args(est)
    est.add_argument("--batch-size", type=_positive_int, required=True)
    est.add_argument("--plan", choices=("plain", "checkpointing", "offload"), default="plain")
    est.add_argument("--plot", metavar="DIR", help="write memory_timeline.png, memory_modules.png")
    est.set_defaults(func=_guarded(_estimate))

    prof = sub.add_parser("profile", help="measure one step on a real device")
    _model_args(prof)
    prof.add_argument("--batch-size", type=_positive_int, required=True)
    prof.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    prof.add_argument("--snapshot", metavar="FILE", help="CUDA memory snapshot (memory_viz)")
    prof.add_argument("--budget", type=parse_size, help="fail like an OOM above this, e.g. 2GiB")
    prof.add_argument("--plot", metavar="DIR", help="write memory_timeline.png, memory_modules.png")
    prof.set_defaults(func=_guarded(_profile))

    plan = sub.add_parser("plan", help="largest batch per machine profile: plain, ckpt, offload")
    _model_args(plan)
    plan.add_argument("--safety-margin", type=_fraction, default=0.1, help="VRAM kept free")
    plan.add_argument("--machines", metavar="FILE", help="machine profile TOML (default: packaged)")
    plan.add_argument("--database-url", help="measurements from measure-fleet (default: service's)")
    plan.set_defaults(func=_guarded(_plan))

    bs = sub.add_parser("batch-size", help="find the largest batch size by trial on a device")
    _model_args(bs)
    bs.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    bs.add_argument("--budget", type=parse_size, help="memory budget, e.g. 6GiB (needed on cpu)")
    bs.add_argument("--margin", type=_fraction, default=0.1, help="fraction kept free")
    bs.add_argument("--min-batch", type=_positive_int, default=1)
    bs.add_argument("--max-batch", type=_positive_int, default=4096)
    bs.add_argument("--steps", type=_positive_int, default=1, help="steps per trial")
    bs.set_defaults(func=_guarded(_batch_size))

    from gpu_optimizer.fleet_cli import add_fleet_commands

    add_fleet_commands(sub, _model_args, _guarded)
