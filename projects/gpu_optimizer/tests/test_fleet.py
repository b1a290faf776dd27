"""measure-fleet: measured peaks stored per GPU, the overhead refit, and plans that use them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_optimizer.cli import main
from gpu_optimizer.estimator import DEFAULT_OVERHEAD
from gpu_optimizer.fleet import fit_overhead, load_measurements
from gpu_optimizer.planning import Workload, predicted_peak_bytes
from gpu_optimizer.storage import Database, MeasuredPeak

MiB = 1 << 20
MODEL, SHAPE = "resnet18", (3, 224, 224)


def _row(
    gpu: str, batch: int, estimated: int, workspace: int, fragmentation: float
) -> MeasuredPeak:
    """A measurement built from a known overhead: what the card would report."""
    allocated = estimated + workspace
    return MeasuredPeak(
        gpu_name=gpu,
        driver_version="570.133.07",
        gpu_total_bytes=12878610432,
        node="box-4070",
        model=MODEL,
        input_shape=list(SHAPE),
        batch_size=batch,
        optimizer="adamw",
        dtype="fp32",
        mode="train",
        ok=True,
        error=None,
        peak_bytes=estimated,
        max_allocated_bytes=allocated,
        max_reserved_bytes=round(allocated * (1 + fragmentation)),
        estimated_peak_bytes=estimated,
        torch_version="2.10.0",
    )


def test_fit_overhead_recovers_the_constants_the_measurements_were_made_with() -> None:
    rows = [
        _row("NVIDIA GeForce RTX 4070 Ti", b, e, 160 * MiB, 0.25)
        for b, e in ((8, 900 * MiB), (16, 1700 * MiB), (32, 3300 * MiB))
    ]
    fitted = fit_overhead(rows)
    assert fitted is not None
    assert fitted.workspace_bytes == 160 * MiB
    assert fitted.fragmentation == pytest.approx(0.25, abs=1e-4)
    assert fitted.context_bytes == DEFAULT_OVERHEAD.context_bytes  # not measurable by profile
    # An OOM run says nothing about the overhead; no usable run gives no fit.
    failed = _row("NVIDIA GeForce RTX 4070 Ti", 64, 6000 * MiB, 0, 0.0)
    failed.ok, failed.max_reserved_bytes = False, None
    assert fit_overhead([failed]) is None


def test_plan_reports_measured_figures_and_plans_the_measured_card_with_its_refit(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("GPU_OPT_CACHE_DIR", str(tmp_path / "cache"))
    url = f"sqlite:///{tmp_path / 'gpu.db'}"
    workload = Workload(MODEL, MODEL, SHAPE, "train", "adamw", "fp32")
    # A card with much more fragmentation than the default model assumes.
    rows = [
        _row("NVIDIA GeForce RTX 4070 Ti", b, predicted_peak_bytes(workload, b), 100 * MiB, 0.6)
        for b in (8, 16)
    ]
    db = Database(url)
    with db.session() as session:
        session.add_all(rows)
        session.commit()
    db.dispose()
    args = ["plan", MODEL, "--input-shape", "3,224,224", "--json"]
    assert main([*args, "--database-url", f"sqlite:///{tmp_path / 'none.db'}"]) == 0
    default = {m["name"]: m for m in json.loads(capsys.readouterr().out)["machines"]}
    assert not (tmp_path / "none.db").exists()  # planning creates no database
    assert main([*args, "--database-url", url]) == 0
    measured = {m["name"]: m for m in json.loads(capsys.readouterr().out)["machines"]}
    card = measured["rtx-4070-ti"]
    assert card["overhead"]["workspace_bytes"] == 100 * MiB
    assert card["overhead"]["fragmentation"] == pytest.approx(0.6, abs=1e-4)
    assert card["overhead"]["measurements"] == 2
    assert card["batch_plain"] < default["rtx-4070-ti"]["batch_plain"]
    for figure, row in zip(card["measured"], rows, strict=True):
        assert figure["batch_size"] == row.batch_size
        assert figure["measured_reserved_bytes"] == row.max_reserved_bytes
        expected = DEFAULT_OVERHEAD.reserved_bytes(row.estimated_peak_bytes or 0)
        error = expected / (row.max_reserved_bytes or 1) - 1
        assert figure["error"] == pytest.approx(error, abs=1e-4)
        assert abs(figure["error_refit"]) < 0.01 < abs(figure["error"])
    for name in ("rtx-5070-ti", "rtx-3070-ti"):  # not measured: the estimate alone, unchanged
        assert "measured" not in measured[name] and "overhead" not in measured[name]
        assert measured[name]["batch_plain"] == default[name]["batch_plain"]
    assert main(["plan", MODEL, "--input-shape", "3,224,224", "--database-url", url]) == 0
    text = capsys.readouterr().out
    assert "measured batch 8: reserved" in text and "(estimate " in text


@pytest.mark.slow
@pytest.mark.integration
def test_plans_endpoint_reports_the_measured_figures(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_api_jobs import start_server

    workload = Workload(MODEL, MODEL, SHAPE, "train", "adamw", "fp32")
    rows = [
        _row("NVIDIA GeForce RTX 4070 Ti", b, predicted_peak_bytes(workload, b), 100 * MiB, 0.6)
        for b in (8, 16)
    ]
    db = Database(f"sqlite:///{tmp_path / 'data' / 'gpu_optimizer.db'}")
    with db.session() as session:
        session.add_all(rows)
        session.commit()
    db.dispose()
    env = {
        "GPU_OPT_DATA_DIR": str(tmp_path / "data"),
        "GPU_OPT_RECOMMEND_AT_STARTUP": "false",
        "GPU_OPT_CACHE_DIR": str(tmp_path / "cache"),
    }
    server = start_server(env, tmp_path / "server.log")
    try:
        body = {"model": MODEL, "input_shape": list(SHAPE)}
        response = server.post("/plans", body)
        assert response.status_code == 200, response.text
        machines = {m["machine"]["name"]: m for m in response.json()["machines"]}
    finally:
        server.stop()
    card = machines["rtx-4070-ti"]
    assert [f["batch_size"] for f in card["measured"]] == [8, 16]
    assert [f["measured_reserved_bytes"] for f in card["measured"]] == [
        r.max_reserved_bytes for r in rows
    ]
    assert card["overhead"]["fragmentation"] == pytest.approx(0.6, abs=1e-4)
    assert all(abs(f["error_refit"]) < 0.01 < abs(f["error"]) for f in card["measured"])
    assert machines["rtx-3070-ti"]["measured"] is None
    assert machines["rtx-3070-ti"]["overhead"] is None


@pytest.mark.slow
@pytest.mark.integration
def test_measure_fleet_on_a_cluster_without_gpus_says_so(ray_cluster, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gpu.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "gpu_optimizer.cli", "measure-fleet", MODEL, "--input-shape",
         "3,32,32", "--cluster", ray_cluster.address, "--database-url", url],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, **ray_cluster.env()},
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gpu-optimizer measure-fleet: error: ")
    assert "has no node with a GPU (2 node(s)" in last and "Traceback" not in proc.stderr
    assert load_measurements(Database(url)) == []


@pytest.mark.gpu
@pytest.mark.slow
def test_measure_fleet_measures_the_gpu_and_plan_uses_it(tmp_path: Path, capsys) -> None:
    """On a machine with a GPU: a local Ray, the real profile on the card, stored, planned."""
    import torch

    from gpu_optimizer.nvml import read_gpus

    url = f"sqlite:///{tmp_path / 'gpu.db'}"
    (gpu,) = read_gpus()[:1]
    machines = tmp_path / "machines.toml"
    machines.write_text(
        f'[[machine]]\nname = "this-card"\ngpu = "{gpu.name}"\n'
        f'vram_bytes = {gpu.memory_total_bytes}\ncompute_capability = "{gpu.compute_capability}"\n'
    )
    rc = main(["measure-fleet", MODEL, "--input-shape", "3,64,64", "--batch-sizes", "4,8",
               "--cluster", "local", "--database-url", url, "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and [r["batch_size"] for r in out] == [4, 8]
    for r in out:
        assert r["gpu"] == gpu.name and r["ok"]
        assert r["max_reserved_bytes"] >= r["max_allocated_bytes"] > 0
        # The allocator's peak is the tracked tensors plus workspaces: above the estimate.
        assert r["max_allocated_bytes"] >= 0.9 * r["estimated_peak_bytes"]
    assert torch.cuda.is_available()
    assert main(["plan", MODEL, "--input-shape", "3,64,64", "--json", "--machines",
                 str(machines), "--database-url", url]) == 0  # fmt: skip
    (machine,) = json.loads(capsys.readouterr().out)["machines"]
    assert [f["batch_size"] for f in machine["measured"]] == [4, 8]
    assert machine["overhead"]["measurements"] == 2
    print(json.dumps(machine, indent=2), file=sys.stderr)


def test_each_gpu_advertises_its_machine_profile_as_a_ray_resource() -> None:
    from gpu_optimizer.cluster import machine_resources

    found = machine_resources(
        [
            ("NVIDIA GeForce RTX 4070 Ti", 12878610432),
            ("NVIDIA GeForce RTX 3070 Ti", 8589934592),
            ("NVIDIA GeForce RTX 3070 Ti", 8589934592),
            ("NVIDIA H200", 150754820096),  # no profile: schedulable by GPU only
        ]
    )
    assert found == {"rtx-4070-ti": 1.0, "rtx-3070-ti": 2.0}


def test_cluster_address_prefers_the_flag_then_the_environment(monkeypatch) -> None:
    from gpu_optimizer.cluster import RAY_ADDRESS_ENV, cluster_address

    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    assert cluster_address(None) is None
    monkeypatch.setenv(RAY_ADDRESS_ENV, "10.0.0.5:6379")
    assert cluster_address(None) == "10.0.0.5:6379"
    assert cluster_address("local") is None
    assert cluster_address(" 10.0.0.9:6379 ") == "10.0.0.9:6379"
