"""Estimator: the breakdown contract, model specs, dtypes, modes, the batch fit and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gpu_optimizer.estimator import (
    CudaOverheadModel,
    batch_memory_model,
    estimate,
)
from gpu_optimizer.models import ModelSpecError, parse_shape
from gpu_optimizer.tracker import CATEGORIES

HERE = Path(__file__)
MiB = 2**20


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 4)
        self.b = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) * self.b(y)


def two_inputs() -> dict[str, object]:
    return {
        "model": TwoInputs(),
        "make_input": lambda batch, shape: (torch.randn(batch, 8), torch.randn(batch, 6)),
        "loss": lambda out, inputs: (out**2).mean(),
    }


def not_a_model() -> int:
    return 3


def test_breakdown_contract() -> None:
    est = estimate(f"{HERE}:small_cnn", "3,32,32", 4)
    data = est.to_dict()
    assert set(data["breakdown"]) == set(CATEGORIES)
    assert data["peak_bytes"] == sum(data["breakdown"].values())
    assert data["breakdown"]["parameters"] > 0 and data["breakdown"]["activations"] >= 0
    assert set(data["predicted_cuda"]) == {
        "max_memory_allocated_bytes",
        "reserved_bytes",
        "device_bytes",
        "workspace_bytes",
    }
    assert data["predicted_cuda"]["device_bytes"] > data["peak_bytes"]
    per_module = data["per_module"]
    assert per_module["0"]["parameters"] == 2048 + 512  # weight 1728 B and bias 64 B, rounded
    assert {k for m in per_module.values() for k in m} == set(CATEGORIES)


def test_module_factory_and_dict_factory() -> None:
    tv = estimate("torchvision.models:resnet18", "3,32,32", 2, round_to=1)
    direct = estimate("resnet18", "3,32,32", 2, round_to=1)
    assert tv.peak_bytes == direct.peak_bytes
    two = estimate(f"{HERE}:two_inputs", "1", 5, optimizer="sgd", round_to=1)
    params = (8 * 4 + 4 + 6 * 4 + 4) * 4
    assert two.report.final_breakdown["parameters"] == params
    assert two.report.breakdown["optimizer_state"] in (0, params)  # depends on where the peak is


def test_inference_keeps_no_gradients_or_state() -> None:
    est = estimate(f"{HERE}:small_cnn", "3,32,32", 8, mode="infer", round_to=1)
    assert est.report.breakdown["gradients"] == 0
    assert est.report.breakdown["optimizer_state"] == 0
    assert est.report.breakdown["activations"] == 0
    train = estimate(f"{HERE}:small_cnn", "3,32,32", 8, round_to=1)
    assert est.peak_bytes < train.peak_bytes


def test_bf16_autocast_shrinks_activations() -> None:
    fp32 = estimate(f"{HERE}:small_cnn", "3,64,64", 8, dtype="fp32", round_to=1)
    bf16 = estimate(f"{HERE}:small_cnn", "3,64,64", 8, dtype="bf16", round_to=1)
    # Parameters stay fp32 under autocast; conv activations are stored in bf16.
    assert bf16.report.final_breakdown["parameters"] == fp32.report.final_breakdown["parameters"]
    assert bf16.report.category_timeline["activations"].max() < (
        0.75 * fp32.report.category_timeline["activations"].max()
    )


def test_batch_fit_predicts_other_batch_sizes_exactly() -> None:
    models = batch_memory_model(f"{HERE}:small_cnn", "3,32,32", plans=("plain", "checkpointing"))
    for plan, model in models.items():
        assert model.exact
        for batch in (1, 7, 40):
            assert (
                model.peak_bytes(batch)
                == estimate(f"{HERE}:small_cnn", "3,32,32", batch, plan=plan).peak_bytes
            )


def test_overhead_model_budget_inverts_device_bytes() -> None:
    overhead = CudaOverheadModel(
        context_bytes=300 * MiB, workspace_bytes=32 * MiB, fragmentation=0.1
    )
    budget = overhead.allocation_budget(8 * 2**30, safety_margin=0.1)
    assert overhead.device_bytes(int(budget)) == pytest.approx(8 * 2**30 * 0.9, abs=2)
    assert overhead.reserved_bytes(100 * MiB) == pytest.approx(132 * MiB * 1.1, abs=1)


@pytest.mark.slow
def test_ultralytics_yaml_builds_and_estimates() -> None:
    train = estimate("yolo11n-pose.yaml", "3,128,128", 2)
    infer = estimate("yolo11n-pose.yaml", "3,128,128", 2, mode="infer")
    params = train.report.final_breakdown["parameters"]
    assert 2_500_000 * 4 < params < 3_500_000 * 4 + 400 * 512  # yolo11n-pose: ~2.9M parameters
    assert train.report.category_timeline["activations"].max() > 0
    assert infer.peak_bytes < train.peak_bytes


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: estimate("resnet9000", "3,32,32", 1), "unknown model 'resnet9000'"),
        (lambda: estimate("resnet18", "3,-2,32", 1), "bad input shape"),
        (lambda: estimate("resnet18", "3,32,32", 1, optimizer="lamb"), "unknown optimizer 'lamb'"),
        (lambda: estimate("resnet18", "3,32,32", 1, dtype="int8"), "unknown dtype 'int8'"),
        (lambda: estimate("nope.py:f", "3,32,32", 1), "file nope.py not found"),
        (lambda: estimate("no_such_pkg.mod:f", "3,32,32", 1), "cannot import no_such_pkg.mod"),
        (lambda: estimate(f"{HERE}:missing", "3,32,32", 1), "no callable 'missing'"),
        (lambda: estimate(f"{HERE}:not_a_model", "3,32,32", 1), "returned int"),
        (lambda: estimate(f"{HERE}:small_cnn", "5,32,32", 1), "failed at batch size 1"),
        (lambda: estimate("missing-model.yaml", "3,32,32", 1), "missing-model.yaml"),
    ],
)
def test_clear_errors(call, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelSpecError) as info:
        call()
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_shape() -> None:
    assert parse_shape("3,224,224") == (3, 224, 224)
    assert parse_shape(" 3, 640 ,640") == (3, 640, 640)
    assert parse_shape("3x32x32") == (3, 32, 32)
    assert parse_shape((1, 2)) == (1, 2)
    for bad in ("", "3,,4", "a", "0,3", "3.5"):
        with pytest.raises(ModelSpecError):
            parse_shape(bad)
