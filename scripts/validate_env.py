#!/usr/bin/env python3
"""Check that this machine can run ai-ml-pipeline (`make validate`, `make validate-cuda`).

Prints a table (or JSON with --json) of: Python, torch and its CUDA build,
CUDA availability, each GPU (name, compute capability, memory, driver), the
critical packages, system RAM and free disk, provisioned models, and the
recommended batch sizes for the detected GPU from gpu_optimizer's planner
(for each machine profile when there is no GPU).

Exit status 0 when every required check passes. Without a GPU the GPU checks
are skipped (not failed), unless --require-cuda is given.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MIN_PYTHON = (3, 10)
EXPECTED_CUDA = "12.8"
# CUDA 12.8 needs a driver >= 570 (Linux 570.26); Blackwell cards (RTX 50xx) need it too.
MIN_DRIVER_MAJOR = 570
MIN_FREE_DISK_BYTES = 10 * 1024**3
MIN_RAM_BYTES = 8 * 1024**3

# (import name, distribution name, required)
PACKAGES: tuple[tuple[str, str, bool], ...] = (
    ("torch", "torch", True),
    ("torchvision", "torchvision", True),
    ("ultralytics", "ultralytics", True),
    ("mediapipe", "mediapipe", True),
    ("cv2", "opencv-contrib-python-headless", True),
    ("numpy", "numpy", True),
    ("scipy", "scipy", True),
    ("fastapi", "fastapi", True),
    ("uvicorn", "uvicorn", True),
    ("pydantic", "pydantic", True),
    ("prometheus_client", "prometheus-client", True),
    ("sqlalchemy", "sqlalchemy", True),
    ("pynvml", "nvidia-ml-py", True),
    ("pose_analyzer", "pose-analyzer", True),
    ("gpu_optimizer", "gpu-optimizer", True),
)

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass
class Check:
    group: str
    name: str
    status: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def _gib(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB"


def check_python() -> list[Check]:
    v = sys.version_info
    status = OK if (v.major, v.minor) >= MIN_PYTHON else FAIL
    return [
        Check(
            "system",
            "python",
            status,
            f"{platform.python_version()} ({sys.executable}); needs >= "
            f"{'.'.join(map(str, MIN_PYTHON))}",
            {"version": platform.python_version()},
        )
    ]


def check_packages() -> list[Check]:
    checks = []
    for module, dist, required in PACKAGES:
        try:
            mod = importlib.import_module(module)
            version = getattr(mod, "__version__", None) or md.version(dist)
            checks.append(Check("packages", dist, OK, str(version), {"version": str(version)}))
        except Exception as exc:  # any import failure is what this check reports
            checks.append(Check("packages", dist, FAIL if required else WARN, f"{exc}"))
    opencv = sorted(
        d.metadata["Name"]
        for d in md.distributions()
        if (d.metadata["Name"] or "").lower().startswith("opencv")
    )
    checks.append(
        Check(
            "packages",
            "one OpenCV distribution",
            OK if len(opencv) == 1 else FAIL,
            ", ".join(opencv) or "none installed",
            {"distributions": opencv},
        )
    )
    return checks


def check_torch(require_cuda: bool, readings: list[Any]) -> list[Check]:
    try:
        import torch
    except Exception as exc:
        return [Check("cuda", "torch", FAIL, f"torch does not import: {exc}")]
    built = torch.version.cuda
    checks = [
        Check(
            "cuda",
            "torch CUDA build",
            OK if built == EXPECTED_CUDA else WARN,
            f"torch {torch.__version__} built for CUDA {built or 'none (CPU build)'}"
            + ("" if built == EXPECTED_CUDA else f"; CUDA {EXPECTED_CUDA} expected"),
            {"torch": torch.__version__, "cuda_build": built},
        )
    ]
    available = torch.cuda.is_available()
    if available:
        checks.append(
            Check(
                "cuda",
                "CUDA available",
                OK,
                f"{torch.cuda.device_count()} device(s), runtime {built}",
                {"devices": torch.cuda.device_count()},
            )
        )
        for i in range(torch.cuda.device_count()):
            cc = torch.cuda.get_device_capability(i)
            arch_ok = f"sm_{cc[0]}{cc[1]}" in torch.cuda.get_arch_list() or any(
                a.startswith(f"sm_{cc[0]}") for a in torch.cuda.get_arch_list()
            )
            checks.append(
                Check(
                    "cuda",
                    f"cuda:{i} kernels",
                    OK if arch_ok else FAIL,
                    f"{torch.cuda.get_device_name(i)} sm_{cc[0]}{cc[1]}; torch ships "
                    f"{' '.join(torch.cuda.get_arch_list())}",
                )
            )
    else:
        why = "no NVIDIA GPU/driver found" if not readings else "torch cannot use the GPU"
        checks.append(
            Check(
                "cuda",
                "CUDA available",
                FAIL if require_cuda else SKIP,
                f"{why}; GPU checks skipped"
                + (" (--require-cuda: a usable CUDA GPU is required)" if require_cuda else ""),
            )
        )
    return checks


def check_gpus(readings: list[Any]) -> list[Check]:
    checks = []
    for r in readings:
        major = int((r.driver_version or "0").split(".")[0] or 0)
        driver_ok = major >= MIN_DRIVER_MAJOR
        total = r.memory_total_bytes or 0
        free = r.memory_free_bytes or 0
        checks.append(
            Check(
                "gpu",
                f"gpu {r.index}",
                OK if driver_ok else FAIL,
                f"{r.name}, compute {r.compute_capability or '?'}, {_gib(total)} total, "
                f"{_gib(free)} free, driver {r.driver_version or '?'}"
                + (
                    ""
                    if driver_ok
                    else f" (CUDA {EXPECTED_CUDA} needs driver >= {MIN_DRIVER_MAJOR}: update it)"
                ),
                {
                    "name": r.name,
                    "uuid": r.uuid,
                    "compute_capability": r.compute_capability,
                    "memory_total_bytes": total,
                    "memory_free_bytes": free,
                    "driver_version": r.driver_version,
                },
            )
        )
    return checks


def check_system() -> list[Check]:
    import psutil

    ram = psutil.virtual_memory().total
    disk = shutil.disk_usage(REPO).free
    return [
        Check(
            "system",
            "RAM",
            OK if ram >= MIN_RAM_BYTES else WARN,
            f"{_gib(ram)} total",
            {"bytes": ram},
        ),
        Check(
            "system",
            "free disk",
            OK if disk >= MIN_FREE_DISK_BYTES else WARN,
            f"{_gib(disk)} free where the repository lives",
            {"bytes": disk},
        ),
        Check(
            "system",
            "cpu",
            OK,
            f"{psutil.cpu_count(logical=True)} logical cores, {platform.machine()}",
            {"cores": psutil.cpu_count(logical=True)},
        ),
    ]


def check_models(models_dir: Path) -> list[Check]:
    checks = []
    for v in ("lite", "full", "heavy"):
        path = models_dir / f"pose_landmarker_{v}.task"
        checks.append(
            Check(
                "models",
                path.name,
                OK if path.exists() else WARN,
                "present" if path.exists() else "missing: run `make download-models`",
            )
        )
    yolo = models_dir / "yolo11n-pose.pt"
    checks.append(
        Check(
            "models",
            yolo.name,
            OK if yolo.exists() else WARN,
            "present"
            if yolo.exists()
            else "missing (needs internet; the YOLO backend is disabled without it)",
        )
    )
    return checks


def check_batch_sizes(readings: list[Any]) -> list[Check]:
    try:
        from gpu_optimizer.machines import load_machine_profiles
        from gpu_optimizer.planning import recommend_batch_sizes
    except Exception as exc:
        return [Check("batch sizes", "planner", FAIL, f"gpu_optimizer planner unavailable: {exc}")]
    if readings:
        targets = [(f"gpu {r.index} {r.name}", r.memory_total_bytes or 0) for r in readings]
    else:
        targets = [(f"profile {p.name}", p.vram_bytes) for p in load_machine_profiles()]
    checks = []
    for label, vram in targets:
        try:
            recs = recommend_batch_sizes(vram)
        except Exception as exc:
            checks.append(Check("batch sizes", label, FAIL, f"planning failed: {exc}"))
            continue
        detail = "; ".join(
            f"{r.workload.name}: {r.recommended_batch} ({r.recommended_plan})" for r in recs
        )
        data = {
            r.workload.name: {
                "plain": r.batch_plain,
                "checkpointing": r.batch_checkpointing,
                "offload": r.batch_offload,
                "recommended": r.recommended_batch,
                "plan": r.recommended_plan,
            }
            for r in recs
        }
        checks.append(Check("batch sizes", f"{label} ({_gib(vram)})", OK, detail, data))
    return checks


def run_checks(require_cuda: bool, models_dir: Path, nvml_recording: Path | None) -> list[Check]:
    from gpu_optimizer.nvml import RecordedNvml, read_gpus

    library = RecordedNvml.from_file(nvml_recording) if nvml_recording else None
    readings = read_gpus(library)
    checks = check_python() + check_system() + check_packages()
    checks += check_torch(require_cuda, readings)
    checks += check_gpus(readings)
    checks += check_models(models_dir)
    checks += check_batch_sizes(readings)
    return checks


def render(checks: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table

    style = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}
    table = Table(title="ai-ml-pipeline environment")
    table.add_column("group")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for c in checks:
        table.add_row(c.group, c.name, f"[{style[c.status]}]{c.status}[/]", c.detail)
    # Wide enough for the details when output goes to a file or a pipe (CI logs).
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    failed = [c for c in checks if c.status == FAIL]
    if failed:
        console.print(f"[bold red]{len(failed)} required check(s) failed[/]")
    else:
        console.print("[green]all required checks passed[/]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--require-cuda", action="store_true", help="fail unless a usable CUDA GPU is present"
    )
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument(
        "--nvml-recording",
        type=Path,
        default=None,
        help="replay recorded NVML readings instead of the real NVML (for tests and demos)",
    )
    args = parser.parse_args(argv)
    checks = run_checks(args.require_cuda, args.models_dir, args.nvml_recording)
    ok = not any(c.status == FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        render(checks)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
