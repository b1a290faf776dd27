"""CLI: estimate / profile / plan / batch-size, JSON output, plots, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gpu_optimizer.cli import main
from gpu_optimizer.commands import parse_size
from gpu_optimizer.tracker import CATEGORIES

HERE = Path(__file__)
SPEC = f"{HERE}:tiny"


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU()),
        nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU()),
    )


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:  # type: ignore[type-arg]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_estimate_json_and_plots(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["estimate", SPEC, "--input-shape", "32", "--batch-size", "16", "--json"]
    data = _json(capsys, [*argv, "--plot", str(tmp_path)])
    assert set(data["breakdown"]) == set(CATEGORIES)
    assert data["peak_bytes"] == sum(data["breakdown"].values())
    assert "0.0" in data["per_module"]
    assert (tmp_path / "memory_timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "memory_modules.png").stat().st_size > 1000
    ckpt = _json(capsys, [*argv, "--plan", "checkpointing"])
    assert ckpt["plan"] == "checkpointing"


def test_estimate_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", SPEC, "--input-shape", "32", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "peak" in out and "activations" in out and "predicted CUDA" in out


def test_profile_cpu_matches_estimate_breakdown(capsys: pytest.CaptureFixture[str]) -> None:
    base = [SPEC, "--input-shape", "32", "--batch-size", "8", "--json"]
    measured = _json(capsys, ["profile", *base, "--device", "cpu"])
    assert measured["ok"] is True and measured["error"] is None
    estimated = _json(capsys, ["estimate", *base])
    assert set(measured["breakdown"]) == set(estimated["breakdown"])


def test_profile_oom_is_a_result(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["profile", SPEC, "--input-shape", "32", "--batch-size", "4096", "--device", "cpu"]
    data = _json(capsys, [*argv, "--budget", "256KiB", "--json"])
    assert data["ok"] is False
    assert "out of memory at batch size 4096" in data["error"]
    assert main([*argv, "--budget", "256KiB"]) == 0
    assert "OOM" in capsys.readouterr().out


def test_plan_json_per_machine(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    machines = tmp_path / "m.toml"
    machines.write_text(
        '[[machine]]\nname = "a"\ngpu = "G"\nvram_bytes = 4294967296\ncompute_capability = "8.6"\n'
        '[[machine]]\nname = "b"\ngpu = "G"\nvram_bytes = 2147483648\ncompute_capability = "8.6"\n'
    )
    data = _json(
        capsys, ["plan", SPEC, "--input-shape", "32", "--machines", str(machines), "--json"]
    )
    assert [m["name"] for m in data["machines"]] == ["a", "b"]
    for m in data["machines"]:
        assert m["batch_checkpointing"] >= m["batch_plain"] > 0
        assert m["recommended_plan"] in ("plain", "checkpointing", "offload")
    assert main(["plan", SPEC, "--input-shape", "32", "--machines", str(machines)]) == 0
    assert "recommended" in capsys.readouterr().out


def test_batch_size_with_budget_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["batch-size", SPEC, "--input-shape", "32", "--device", "cpu", "--budget", "2MiB"]
    data = _json(capsys, [*argv, "--optimizer", "sgd", "--max-batch", "4096", "--json"])
    assert data["batch_size"] > 1
    assert data["limit_bytes"] == int(2 * 2**20 * 0.9)
    trials = {t["batch_size"]: t for t in data["trials"]}
    assert trials[data["batch_size"]]["ok"] and not trials[data["batch_size"] + 1]["ok"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["estimate", "resnet9000", "--input-shape", "3,8,8", "--batch-size", "1"],
            "unknown model",
        ),
        (
            ["estimate", "resnet18", "--input-shape", "3,a,8", "--batch-size", "1"],
            "bad input shape",
        ),
        (
            [
                "estimate",
                "resnet18",
                "--input-shape",
                "3,8,8",
                "--batch-size",
                "1",
                "--optimizer",
                "lamb",
            ],
            "unknown optimizer",
        ),
        (["plan", SPEC, "--input-shape", "32", "--machines", "/nonexistent/m.toml"], "not found"),
        (["batch-size", SPEC, "--input-shape", "32", "--device", "cpu"], "budget"),
    ],
)
def test_user_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_console_entry_point_exit_status() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpu_optimizer.cli",
            "estimate",
            "nosuch",
            "--input-shape",
            "3",
            "--batch-size",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("gpu-optimizer estimate: error: unknown model 'nosuch'")


def test_parse_size() -> None:
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("512") == 512
    with pytest.raises(Exception, match="bad size"):
        parse_size("2 parsecs")
