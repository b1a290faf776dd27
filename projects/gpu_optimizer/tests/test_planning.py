"""Batch-size planning: the answer is the largest batch whose estimated step fits, per plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gpu_optimizer.estimator import CudaOverheadModel, estimate
from gpu_optimizer.machines import MachineProfile
from gpu_optimizer.models import ModelSpecError
from gpu_optimizer.planning import (
    DEFAULT_WORKLOADS,
    SMALL_BATCH,
    Workload,
    choose_plan,
    plan_for_machines,
    predicted_peak_bytes,
    recommend_batch_sizes,
)

MiB = 2**20
NO_OVERHEAD = CudaOverheadModel(context_bytes=0, workspace_bytes=0, fragmentation=0.0)


def deep_mlp() -> nn.Module:
    """Four transformer-style MLP blocks (256 -> 1024 -> 256); checkpointing drops the inside."""
    torch.manual_seed(0)
    return nn.Sequential(
        *[
            nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU())
            for _ in range(4)
        ]
    )


SPEC = f"{Path(__file__)}:deep_mlp"
TRAIN = Workload("mlp-train", SPEC, (256,), "train", "adam")
INFER = Workload("mlp-infer", SPEC, (256,), "infer")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_plain_batch_is_exactly_the_largest_that_fits() -> None:
    vram = 64 * MiB
    margin = 0.1
    (rec,) = recommend_batch_sizes(vram, [TRAIN], safety_margin=margin, overhead=NO_OVERHEAD)
    budget = vram * (1 - margin)
    b = rec.batch_plain
    assert 16 < b < 4096
    assert estimate(SPEC, (256,), b, optimizer="adam").peak_bytes <= budget
    assert estimate(SPEC, (256,), b + 1, optimizer="adam").peak_bytes > budget
    assert predicted_peak_bytes(TRAIN, b) == estimate(SPEC, (256,), b, optimizer="adam").peak_bytes


def test_checkpointing_and_offload_fit_more_than_plain() -> None:
    (rec,) = recommend_batch_sizes(64 * MiB, [TRAIN], overhead=NO_OVERHEAD)
    assert rec.batch_checkpointing > 1.5 * rec.batch_plain
    assert rec.batch_offload > rec.batch_plain
    assert rec.recommended_plan == "plain"
    assert rec.recommended_batch == rec.batch_plain
    # Each plan's batch is also exactly the largest one fitting under that plan.
    budget = 64 * MiB * 0.9
    b = rec.batch_checkpointing
    ckpt = [
        estimate(SPEC, (256,), n, optimizer="adam", plan="checkpointing").peak_bytes
        for n in (b, b + 1)
    ]
    assert ckpt[0] <= budget < ckpt[1]


def test_more_memory_never_means_a_smaller_batch() -> None:
    batches = [
        recommend_batch_sizes(v * MiB, [TRAIN], overhead=NO_OVERHEAD)[0].batch_plain
        for v in (48, 64, 128)
    ]
    assert batches == sorted(batches)
    assert batches[0] < batches[2]


def test_inference_has_no_backward_so_all_plans_agree() -> None:
    (rec,) = recommend_batch_sizes(48 * MiB, [INFER], overhead=NO_OVERHEAD)
    assert rec.batch_plain == rec.batch_checkpointing == rec.batch_offload > 0
    (train,) = recommend_batch_sizes(48 * MiB, [TRAIN], overhead=NO_OVERHEAD)
    assert rec.batch_plain > train.batch_plain


def test_too_small_a_card_does_not_fit() -> None:
    (rec,) = recommend_batch_sizes(16 * MiB, [TRAIN], overhead=NO_OVERHEAD)
    assert (rec.batch_plain, rec.batch_checkpointing, rec.batch_offload) == (0, 0, 0)
    assert (rec.recommended_plan, rec.recommended_batch) == ("does-not-fit", 0)
    # The default overhead model reserves a CUDA context bigger than this card.
    (rec,) = recommend_batch_sizes(256 * MiB, [TRAIN])
    assert rec.recommended_plan == "does-not-fit"


@pytest.mark.parametrize(
    ("batches", "expected"),
    [
        ((64, 200, 300), ("plain", 64)),
        ((SMALL_BATCH, 100, 100), ("plain", SMALL_BATCH)),
        ((4, 7, 50), ("plain", 4)),
        ((4, 8, 50), ("checkpointing", 8)),
        ((0, 3, 50), ("checkpointing", 3)),
        ((0, 0, 5), ("offload", 5)),
        ((0, 0, 0), ("does-not-fit", 0)),
    ],
)
def test_choose_plan(batches: tuple[int, int, int], expected: tuple[str, int]) -> None:
    assert choose_plan(*batches) == expected


def test_plan_for_machines_answers_per_profile_in_order() -> None:
    profiles = [
        MachineProfile("big", "g", 128 * MiB, "8.6"),
        MachineProfile("small", "g", 48 * MiB, "8.6"),
    ]
    plans = plan_for_machines(TRAIN, profiles, overhead=NO_OVERHEAD)
    assert [p.machine.name for p in plans] == ["big", "small"]
    assert plans[0].recommendation.batch_plain > plans[1].recommendation.batch_plain
    assert plans[1].recommendation.vram_bytes == 48 * MiB


def test_bad_workloads_are_rejected() -> None:
    with pytest.raises(ModelSpecError, match="unknown optimizer"):
        recommend_batch_sizes(MiB, [Workload("x", SPEC, (256,), "train", "lamb")])
    with pytest.raises(ValueError, match="safety_margin"):
        recommend_batch_sizes(MiB, [TRAIN], safety_margin=1.5)
    with pytest.raises(ValueError, match="mode"):
        recommend_batch_sizes(MiB, [Workload("x", SPEC, (256,), "eval")])  # type: ignore[arg-type]


@pytest.mark.slow
def test_default_workloads_on_the_three_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real answer for the user's machines: sane sizes, ordered by VRAM and by plan."""
    from gpu_optimizer import planning

    monkeypatch.setenv(planning.CACHE_DIR_ENV, str(tmp_path))  # computed here, not read back
    planning._fitted.cache_clear()
    by_vram = {v: recommend_batch_sizes(v * 2**30) for v in (8, 12, 16)}
    for recs in by_vram.values():
        assert [r.workload for r in recs] == list(DEFAULT_WORKLOADS)
        resnet, yolo_train, yolo_infer = recs
        assert resnet.batch_checkpointing > resnet.batch_plain > 0
        assert resnet.batch_offload > resnet.batch_plain
        assert yolo_infer.batch_plain > yolo_train.batch_plain > 0
    # ResNet-50 fp32 + AdamW needs roughly 80-100 MB per sample: 8 GiB fits a few dozen.
    assert 40 <= by_vram[8][0].batch_plain <= 120
    assert by_vram[8][0].batch_plain < by_vram[12][0].batch_plain < by_vram[16][0].batch_plain


def test_named_models_are_cached_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpu_optimizer import planning

    monkeypatch.setenv(planning.CACHE_DIR_ENV, str(tmp_path))
    workload = Workload("tiny-resnet", "resnet18", (3, 32, 32), "train", "sgd")
    first = recommend_batch_sizes(2**30, [workload])
    files = list(tmp_path.glob("plan-*.json"))
    assert len(files) == 1
    planning._fitted.cache_clear()
    assert recommend_batch_sizes(2**30, [workload]) == first  # answered from the file
    files[0].write_text("{not json")
    planning._fitted.cache_clear()
    assert recommend_batch_sizes(2**30, [workload]) == first  # damaged entry recomputed
    # User factories are never cached on disk.
    recommend_batch_sizes(64 * MiB, [TRAIN], overhead=NO_OVERHEAD)
    assert len(list(tmp_path.glob("plan-*.json"))) == 1
