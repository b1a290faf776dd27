"""The batch size the pose service asks gpu_optimizer for (planning.pose_inference_batch_size)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_optimizer import planning

GiB = 1 << 30


@pytest.fixture(autouse=True)
def private_plan_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(planning.CACHE_DIR_ENV, str(tmp_path))


@pytest.mark.parametrize("vram", [None, 0, -1])
def test_without_a_gpu_the_cpu_batch(vram: int | None) -> None:
    assert planning.pose_inference_batch_size(vram) == planning.CPU_POSE_BATCH == 1
    assert planning.pose_inference_batch_size(vram, cpu_batch=3) == 3


def test_on_a_gpu_the_planners_yolo11n_pose_inference_recommendation() -> None:
    pytest.importorskip("ultralytics")
    assert planning.POSE_INFERENCE_WORKLOAD.model == "yolo11n-pose.yaml"
    assert planning.POSE_INFERENCE_WORKLOAD.mode == "infer"
    big = 10**6
    for vram in (8 * GiB, 12 * GiB):
        (rec,) = planning.recommend_batch_sizes(vram, [planning.POSE_INFERENCE_WORKLOAD])
        assert planning.pose_inference_batch_size(vram, limit=big) == rec.recommended_batch
    assert planning.pose_inference_batch_size(12 * GiB, limit=big) > (
        planning.pose_inference_batch_size(8 * GiB, limit=big)
    )
    assert planning.pose_inference_batch_size(8 * GiB) == planning.POSE_BATCH_LIMIT
    assert planning.pose_inference_batch_size(8 * GiB, limit=5) == 5
    # A card too small for even one frame still gets 1: the service then reports the OOM.
    assert planning.pose_inference_batch_size(600 << 20) == 1
