"""scripts/validate_env.py on this CPU-only machine and with recorded GPUs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "validate_env.py"
RECORDING = REPO / "projects" / "gpu_optimizer" / "tests" / "data" / "nvml_rtx4070ti_rtx3070ti.json"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


@pytest.fixture(scope="module")
def cpu_report() -> tuple[int, dict]:
    proc = run("--json")
    return proc.returncode, json.loads(proc.stdout)


def test_passes_here_and_skips_gpu_checks(cpu_report: tuple[int, dict]) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the CPU-only behaviour is not observable")
    rc, report = cpu_report
    assert rc == 0 and report["ok"] is True
    checks = by_name(report)
    assert checks["CUDA available"]["status"] == "skip"
    assert "GPU checks skipped" in checks["CUDA available"]["detail"]
    assert checks["torch CUDA build"]["data"]["cuda_build"] == "12.8"
    assert checks["python"]["status"] == "ok"
    assert checks["one OpenCV distribution"]["data"]["distributions"] == [
        "opencv-contrib-python-headless"
    ]
    for package in ("torch", "ultralytics", "mediapipe", "nvidia-ml-py", "sqlalchemy"):
        assert checks[package]["status"] == "ok", checks[package]


def test_without_gpu_batch_sizes_are_planned_for_each_machine_profile(
    cpu_report: tuple[int, dict],
) -> None:
    from gpu_optimizer.machines import load_machine_profiles
    from gpu_optimizer.planning import recommend_batch_sizes

    _, report = cpu_report
    planned = [c for c in report["checks"] if c["group"] == "batch sizes"]
    profiles = load_machine_profiles()
    assert len(planned) == len(profiles)
    for check, profile in zip(planned, profiles, strict=True):
        assert profile.name in check["name"]
        expected = {
            r.workload.name: r.recommended_batch for r in recommend_batch_sizes(profile.vram_bytes)
        }
        assert {k: v["recommended"] for k, v in check["data"].items()} == expected


def test_require_cuda_fails_clearly_without_a_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run("--require-cuda")
    assert proc.returncode == 1
    assert "a usable CUDA GPU is required" in proc.stdout
    assert "required check(s) failed" in proc.stdout


def test_table_output_lists_the_groups() -> None:
    proc = run()
    assert proc.returncode in (0, 1)
    for word in ("python", "torch", "mediapipe", "RAM", "free disk", "batch sizes"):
        assert word in proc.stdout


def test_recorded_gpus_are_reported_with_their_batch_sizes() -> None:
    proc = run("--json", "--nvml-recording", str(RECORDING))
    report = json.loads(proc.stdout)
    checks = by_name(report)
    assert checks["gpu 0"]["data"]["name"] == "NVIDIA GeForce RTX 4070 Ti"
    assert checks["gpu 0"]["data"]["memory_total_bytes"] == 12878610432
    assert checks["gpu 1"]["data"]["compute_capability"] == "8.6"
    assert checks["gpu 0"]["status"] == "ok"  # driver 570 drives CUDA 12.8
    planned = [c for c in report["checks"] if c["group"] == "batch sizes"]
    assert [c["name"].split(" (")[0] for c in planned] == [
        "gpu 0 NVIDIA GeForce RTX 4070 Ti",
        "gpu 1 NVIDIA GeForce RTX 3070 Ti",
    ]
    # More memory never means a smaller batch.
    big, small = planned[0]["data"], planned[1]["data"]
    for workload in big:
        assert big[workload]["plain"] >= small[workload]["plain"]


def test_an_old_driver_fails_the_gpu_check(tmp_path: Path) -> None:
    recording = json.loads(RECORDING.read_text())
    recording["driver_version"] = "535.183.01"  # the original plan's driver
    path = tmp_path / "old-driver.json"
    path.write_text(json.dumps(recording))
    proc = run("--json", "--nvml-recording", str(path))
    assert proc.returncode == 1
    gpu = by_name(json.loads(proc.stdout))["gpu 0"]
    assert gpu["status"] == "fail"
    assert "needs driver >= 570" in gpu["detail"]
