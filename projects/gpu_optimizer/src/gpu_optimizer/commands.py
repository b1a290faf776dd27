"""The memory subcommands of ``gpu-optimizer``: estimate, profile, plan, batch-size.

Kept apart from ``cli.py`` (shared with the service and ``top``) so each
command is a plain function over the library. User mistakes (bad model spec,
shape, optimizer, machine file) print one line on stderr and exit 2, without
a traceback.

Nothing here imports torch at module level: ``--help`` and argument errors
answer in a fraction of a second, and each command imports what it runs.
A new subcommand is a ``_name(args)`` function plus a few lines in
:func:`add_memory_commands`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpu_optimizer.estimator import Estimate
    from gpu_optimizer.finetune import TrainingSetup
    from gpu_optimizer.tracker import MemoryReport

# Same order as gpu_optimizer.tracker.CATEGORIES (tests check they agree).
CATEGORIES: tuple[str, ...] = (
    "parameters",
    "gradients",
    "optimizer_state",
    "activations",
    "temporary",
)

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


def int_range(text: str) -> tuple[int, int]:
    """``"64"`` -> ``(64, 64)``; ``"128..2048"`` -> ``(128, 2048)``."""
    lo_text, sep, hi_text = text.partition("..")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
    except ValueError:
        lo = hi = 0
    if lo < 1 or hi < lo:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer or a range LOW..HIGH such as 128..2048, got {text!r}"
        )
    return lo, hi


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


def _breakdown_text(report: MemoryReport, batch_size: int | None = None, top: int = 5) -> list[str]:
    lines = [f"peak {fmt_bytes(report.peak_bytes)} in {report.peak_phase}"]
    lines += [f"  {cat:<16} {fmt_bytes(report.breakdown[cat]):>12}" for cat in CATEGORIES]
    phases = ", ".join(f"{p} {fmt_bytes(v)}" for p, v in report.phase_peaks.items())
    lines.append(f"peak per phase: {phases}")
    if report.activation_peak_bytes:
        per_sample = (
            f" ({fmt_bytes(report.activation_peak_bytes / batch_size)} per sample)"
            if batch_size
            else ""
        )
        lines.append(
            f"activation peak {fmt_bytes(report.activation_peak_bytes)}{per_sample} "
            f"in {report.activation_peak_phase}, "
            f"{fmt_bytes(sum(report.activation_peak_breakdown.values()))} live then"
        )
        lines.append(
            f"top modules by activations (--json has {len(report.top_activation_modules)}):"
        )
        lines += [
            f"  {name:<32} {fmt_bytes(b):>12}" for name, b in report.top_activation_modules[:top]
        ]
    heavy = sorted(report.per_module.items(), key=lambda kv: sum(kv[1].values()), reverse=True)
    if heavy:
        lines.append(f"largest modules at the peak (--json has all {len(heavy)}):")
        lines += [f"  {name:<32} {fmt_bytes(sum(v.values())):>12}" for name, v in heavy[:top]]
    return lines


def _write_tensorboard(report: MemoryReport, directory: str | None, tag: str) -> str | None:
    if not directory:
        return None
    from gpu_optimizer.plots import write_tensorboard

    return str(write_tensorboard(report, Path(directory), tag))


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


def _setup(args: argparse.Namespace) -> TrainingSetup:
    from gpu_optimizer.finetune import TrainingSetup, split_list

    return TrainingSetup(
        lora_r=getattr(args, "lora_r", 0) or 0,
        lora_targets=split_list(getattr(args, "lora_targets", None)),
        freeze=split_list(getattr(args, "freeze", None)),
        grad_accum=getattr(args, "grad_accum", 1) or 1,
    )


def _shape(args: argparse.Namespace) -> tuple[int, ...]:
    """One sample's shape: ``--seq-len`` (its largest value) for token models, else
    ``--input-shape``, else what an ``hf:`` image model's config says."""
    from gpu_optimizer.models import ModelSpecError, parse_shape

    seq = getattr(args, "seq_len", None)
    if seq is not None:
        if args.input_shape:
            raise ModelSpecError("give --seq-len or --input-shape, not both")
        return (seq[1],)
    if args.input_shape:
        return parse_shape(args.input_shape)
    if args.model.strip().startswith("hf:"):
        from gpu_optimizer.hf import default_input_shape

        shape = default_input_shape(args.model)
        if shape is not None:
            return shape
        raise ModelSpecError(f"{args.model} is a token model: give --seq-len N (e.g. 512)")
    raise ModelSpecError("--input-shape is required (one sample, e.g. 3,224,224)")


def _batch(args: argparse.Namespace) -> tuple[int, int]:
    value = args.batch_size
    return value if isinstance(value, tuple) else (value, value)


def _ranged(args: argparse.Namespace) -> bool:
    seq = getattr(args, "seq_len", None)
    lo, hi = _batch(args)
    return lo != hi or (seq is not None and seq[0] != seq[1])


def _estimate(args: argparse.Namespace) -> int:
    from gpu_optimizer.cuda_kernels import parse_capability
    from gpu_optimizer.estimator import batch_memory_model, estimate

    shape = _shape(args)
    setup = _setup(args)
    lo, hi = _batch(args)
    batch = hi
    capability = parse_capability(args.compute_capability)
    chosen_by_budget = False
    if lo != hi and args.budget is not None:
        # Largest batch in the range whose predicted card memory fits the budget.
        fitted = batch_memory_model(
            args.model,
            shape,
            optimizer=args.optimizer,
            dtype=args.dtype,
            mode=args.mode,
            plans=(args.plan,),
            setup=setup,
        )[args.plan]
        probe = estimate(
            args.model,
            shape,
            lo,
            optimizer=args.optimizer,
            dtype=args.dtype,
            mode=args.mode,
            plan=args.plan,
            setup=setup,
            compute_capability=capability,
        )
        budget = probe.overhead.allocation_budget(args.budget)
        batch = min(hi, fitted.max_batch(budget, limit=hi))
        chosen_by_budget = True
        if batch < lo:
            raise ValueError(
                f"{args.model}: not even batch size {lo} fits {fmt_bytes(args.budget)} "
                f"(batch {lo} needs {fmt_bytes(probe.predicted_cuda()['device_bytes'])})"
            )

    def run(b: int) -> Estimate:
        return estimate(
            args.model,
            shape,
            b,
            optimizer=args.optimizer,
            dtype=args.dtype,
            mode=args.mode,
            plan=args.plan,
            setup=setup,
            target=args.target,
            compute_capability=capability,
            check_steps=args.check_steps or _ranged(args),
        )

    est = run(batch)
    # The fit covers the steady step; an eval or first step above it lowers the batch.
    while chosen_by_budget and batch > lo and est.predicted_cuda()["device_bytes"] > args.budget:
        batch -= 1
        est = run(batch)
    data = est.to_dict()
    if _ranged(args):
        data["ranges"] = {
            "batch_size": [lo, hi],
            "seq_len": list(args.seq_len) if args.seq_len else None,
            "planned_batch_size": batch,
            "chosen_by_budget": chosen_by_budget,
        }
    title = f"{args.model} batch {batch} ({args.plan}, estimated)"
    plots = _write_plots(est.report, args.plot, title)
    if plots:
        data["plots"] = plots
    board = _write_tensorboard(est.report, args.tensorboard, f"estimate/{args.model}")
    if board:
        data["tensorboard"] = board

    def text() -> str:
        return "\n".join(_estimate_lines(args, est, data, plots))

    _emit(args, data, text)
    return 0


def _estimate_lines(
    args: argparse.Namespace, est: Estimate, data: dict[str, Any], plots: list[str]
) -> list[str]:
    pred = data["predicted_cuda"]
    setup = est.setup
    extra = []
    if setup.lora_r:
        extra.append(f"LoRA r={setup.lora_r}")
    if setup.freeze:
        extra.append(f"frozen {','.join(setup.freeze)}")
    if setup.grad_accum > 1:
        extra.append(f"grad accumulation x{setup.grad_accum}")
    lines = [
        f"{args.model} {tuple(est.input_shape)} batch {est.batch_size}, "
        f"{est.optimizer}, {est.dtype}, {est.mode}, {est.plan}"
        + (f", {', '.join(extra)}" if extra else "")
        + f" (estimated on fake tensors for {est.target})",
        *_breakdown_text(est.report, est.batch_size),
    ]
    if est.target == "cuda":
        lines.append(
            "predicted CUDA: max_memory_allocated "
            f"{fmt_bytes(pred['max_memory_allocated_bytes'])}, "
            f"reserved {fmt_bytes(pred['reserved_bytes'])}, "
            f"card memory needed {fmt_bytes(pred['device_bytes'])}"
        )
    for name, peak in est.step_checks.items():
        lines.append(f"{name.replace('_', ' ')} step peak {fmt_bytes(peak)}")
    lines += [f"note: {n}" for n in est.notes]
    lines += [f"warning: {w}" for w in est.warnings]
    lines += [f"plot: {p}" for p in plots]
    if data.get("tensorboard"):
        lines.append(f"tensorboard: {data['tensorboard']} (tensorboard --logdir ...)")
    return lines


def _profile(args: argparse.Namespace) -> int:
    from gpu_optimizer.profiler import profile

    if args.memory_snapshot and not str(args.device).startswith("cuda"):
        raise ValueError("--memory-snapshot records the CUDA allocator: it needs --device cuda")
    lo, hi = _batch(args)
    if lo != hi:
        raise ValueError("profile measures one batch size: give --batch-size N")
    result = profile(
        args.model,
        _shape(args),
        hi,
        device=args.device,
        optimizer=args.optimizer,
        dtype=args.dtype,
        mode=args.mode,
        snapshot_path=args.memory_snapshot,
        budget_bytes=args.budget,
        setup=_setup(args),
    )
    data = result.to_dict()
    plots: list[str] = []
    if result.report is not None:
        title = f"{args.model} batch {hi} on {result.device}"
        plots = _write_plots(result.report, args.plot, title)
        if plots:
            data["plots"] = plots
        board = _write_tensorboard(result.report, args.tensorboard, f"profile/{args.model}")
        if board:
            data["tensorboard"] = board

    def text() -> str:
        head = f"{args.model} batch {hi} on {result.device} (measured)"
        if not result.ok or result.report is None:
            return f"{head}\nOOM: {result.error}"
        lines = [head, *_breakdown_text(result.report, hi)]
        if result.allocator:
            lines.append(
                "CUDA allocator: max_memory_allocated "
                f"{fmt_bytes(result.allocator['max_memory_allocated_bytes'])}, max reserved "
                f"{fmt_bytes(result.allocator['max_memory_reserved_bytes'])}"
            )
        if result.snapshot:
            lines.append(f"snapshot: {result.snapshot} (open at https://pytorch.org/memory_viz)")
        lines += [f"plot: {p}" for p in plots]
        if data.get("tensorboard"):
            lines.append(f"tensorboard: {data['tensorboard']}")
        return "\n".join(lines)

    _emit(args, data, text)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from gpu_optimizer.machines import load_machine_profiles
    from gpu_optimizer.planning import Workload

    shape = _shape(args)
    setup = _setup(args)
    lo, hi = _batch(args) if args.batch_size is not None else (1, None)
    workload = Workload(
        args.model, args.model, shape, args.mode, args.optimizer, args.dtype, setup=setup
    )
    profiles = load_machine_profiles(args.machines)
    from gpu_optimizer.fleet import open_measurements, plan_with_measurements
    from gpu_optimizer.settings import get_settings

    rows = open_measurements(args.database_url or get_settings().sqlalchemy_url())
    planned = plan_with_measurements(workload, profiles, rows, safety_margin=args.safety_margin)

    def clamp(n: int) -> int:
        return 0 if n < lo else (min(n, hi) if hi is not None else n)

    machines: list[dict[str, Any]] = []
    for p, extra in planned:
        r = p.recommendation
        rec_plan = r.recommended_plan if clamp(r.recommended_batch) else "does-not-fit"
        machines.append(
            {
                "name": p.machine.name,
                "gpu": p.machine.gpu,
                "vram_bytes": p.machine.vram_bytes,
                "compute_capability": p.machine.compute_capability,
                "batch_plain": clamp(r.batch_plain),
                "batch_checkpointing": clamp(r.batch_checkpointing),
                "batch_offload": clamp(r.batch_offload),
                "recommended_batch": clamp(r.recommended_batch),
                "recommended_plan": rec_plan,
                **extra,
            }
        )
    data: dict[str, Any] = {
        "model": args.model,
        "input_shape": list(shape),
        "optimizer": args.optimizer,
        "dtype": args.dtype,
        "mode": args.mode,
        "safety_margin": args.safety_margin,
        "setup": setup.to_dict(),
        "machines": machines,
        "warnings": [],
    }
    if _ranged(args) or args.seq_len is not None:
        data["ranges"] = {
            "batch_size": [lo, hi],
            "seq_len": list(args.seq_len) if args.seq_len else None,
        }
    fitting = [m for m in machines if m["recommended_batch"]]
    if args.mode == "train" and fitting and (_ranged(args) or args.check_steps):
        from gpu_optimizer.estimator import estimate

        worst = max(fitting, key=lambda m: m["recommended_batch"])
        plan_name = worst["recommended_plan"]
        est = estimate(
            args.model,
            shape,
            worst["recommended_batch"],
            optimizer=args.optimizer,
            dtype=args.dtype,
            plan=plan_name,
            setup=setup,
            check_steps=True,
        )
        data["step_checks"] = {"batch_size": worst["recommended_batch"], **est.step_checks}
        data["warnings"] = [f"at batch {worst['recommended_batch']}: {w}" for w in est.warnings]

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
        lines += [f"warning: {w}" for w in data["warnings"]]
        return "\n".join(lines)

    _emit(args, data, text)
    return 0


def _batch_size(args: argparse.Namespace) -> int:
    from gpu_optimizer.finder import find_batch_size

    result = find_batch_size(
        args.model,
        _shape(args),
        device=args.device,
        optimizer=args.optimizer,
        dtype=args.dtype,
        mode=args.mode,
        budget_bytes=args.budget,
        margin=args.margin,
        min_batch=args.min_batch,
        max_batch=args.max_batch,
        steps_per_trial=args.steps,
        setup=_setup(args),
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


OPTIMIZER_HELP = "sgd (momentum), adam, adamw, or adamw8bit (bitsandbytes' state sizes)"
DTYPE_HELP = (
    "fp32; bf16/fp16 (autocast, fp32 master weights); bf16-true/fp16-true (all half); "
    "bf16-master/fp16-master (half weights, fp32 master copy in the optimizer)"
)


def _model_args(p: argparse.ArgumentParser, *, ranges: bool = False) -> None:
    p.add_argument(
        "model",
        help="torchvision name (resnet50), Ultralytics yaml (yolo11n-pose.yaml), "
        "hf:ARCH or hf:path/config.json (transformers, e.g. hf:gpt2, "
        "hf:llama?hidden_size=2048&num_hidden_layers=16), "
        "file.py:factory or package.module:factory",
    )
    p.add_argument("--input-shape", help="one sample's shape, e.g. 3,224,224")
    p.add_argument(
        "--seq-len",
        type=int_range,
        help="tokens per sample for token models (hf:...), or a range 128..2048 (plans the largest)"
        if ranges
        else "tokens per sample for token models (hf:...)",
    )
    p.add_argument("--optimizer", default="adamw", help=OPTIMIZER_HELP)
    p.add_argument("--dtype", default="fp32", help=DTYPE_HELP)
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--lora-r", type=_positive_int, help="LoRA rank (peft); freezes the base model")
    p.add_argument("--lora-targets", help="comma-separated module names, e.g. q_proj,v_proj")
    p.add_argument("--freeze", help="comma-separated globs of parameter names to freeze")
    p.add_argument("--grad-accum", type=_positive_int, default=1, help="micro-batches per step")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_memory_commands(sub: Any) -> None:
    """Register estimate, profile, plan and batch-size on the CLI's subparsers."""
    add_estimate(sub)
    add_profile(sub)
    add_plan(sub)
    add_batch_size(sub)


def add_estimate(sub: Any) -> None:
    est = sub.add_parser("estimate", help="memory of one training step, without a GPU")
    _model_args(est, ranges=True)
    est.add_argument(
        "--batch-size",
        type=int_range,
        required=True,
        help="N, or a range 1..64: the largest (that fits --budget, if given)",
    )
    est.add_argument("--plan", choices=("plain", "checkpointing", "offload"), default="plain")
    est.add_argument("--target", choices=("cuda", "cpu"), default="cuda", help="whose kernels")
    est.add_argument("--compute-capability", help="CUDA card, e.g. 8.6 (default: assume 8.6)")
    est.add_argument("--budget", type=parse_size, help="card memory for a batch range, e.g. 12GiB")
    est.add_argument(
        "--check-steps",
        action="store_true",
        help="also an eval step and the first optimizer step (always with a range)",
    )
    est.add_argument("--plot", metavar="DIR", help="write memory_timeline.png, memory_modules.png")
    est.add_argument(
        "--tensorboard", metavar="DIR", help="write the timeline as TensorBoard scalars"
    )
    est.set_defaults(func=_guarded(_estimate))


def add_profile(sub: Any) -> None:
    prof = sub.add_parser("profile", help="measure one step on a real device")
    _model_args(prof)
    prof.add_argument("--batch-size", type=int_range, required=True)
    prof.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    prof.add_argument(
        "--memory-snapshot",
        "--snapshot",
        dest="memory_snapshot",
        metavar="FILE",
        help="CUDA allocator history pickle (open at pytorch.org/memory_viz); --device cuda",
    )
    prof.add_argument("--budget", type=parse_size, help="fail like an OOM above this, e.g. 2GiB")
    prof.add_argument("--plot", metavar="DIR", help="write memory_timeline.png, memory_modules.png")
    prof.add_argument(
        "--tensorboard", metavar="DIR", help="write the timeline as TensorBoard scalars"
    )
    prof.set_defaults(func=_guarded(_profile))


def add_plan(sub: Any) -> None:
    plan = sub.add_parser("plan", help="largest batch per machine profile: plain, ckpt, offload")
    _model_args(plan, ranges=True)
    plan.add_argument("--batch-size", type=int_range, help="limit the plan to a range, e.g. 1..64")
    plan.add_argument("--safety-margin", type=_fraction, default=0.1, help="VRAM kept free")
    plan.add_argument("--machines", metavar="FILE", help="machine profile TOML (default: packaged)")
    plan.add_argument(
        "--check-steps", action="store_true", help="warn if an eval or first step peaks higher"
    )
    plan.add_argument("--database-url", help="measurements from measure-fleet (default: service's)")
    plan.set_defaults(func=_guarded(_plan))


def add_batch_size(sub: Any) -> None:
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
