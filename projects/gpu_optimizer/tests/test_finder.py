"""Batch-size finder: exact answer under a tracked budget, every trial reported, OOM recovery."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gpu_optimizer.finder import Trial, find_batch_size, search
from gpu_optimizer.profiler import profile

HERE = Path(__file__)
MiB = 2**20


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def linear_mlp() -> nn.Module:
    """No BatchNorm and no data-dependent ops: tracked memory is exactly a + c * batch."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8)
    )


SPEC = f"{HERE}:linear_mlp"


def _fits_below(limit: int):  # type: ignore[no-untyped-def]
    def try_batch(b: int) -> Trial:
        return Trial(b, b <= limit, b if b <= limit else None, 0.0)

    return try_batch


@pytest.mark.parametrize(
    ("limit", "max_batch"), [(1, 64), (37, 64), (64, 64), (100, 64), (0, 64), (513, 4096)]
)
def test_search_finds_the_boundary(limit: int, max_batch: int) -> None:
    result = search(_fits_below(limit), 1, max_batch)
    assert result.batch_size == min(limit, max_batch)
    tried = [t.batch_size for t in result.trials]
    assert len(tried) == len(set(tried))  # nothing tried twice
    if 0 < limit < max_batch:
        assert limit in tried and limit + 1 in tried  # the boundary itself was tested
    # Grow phase doubles: at most log2 growth steps plus log2 bisection steps.
    assert len(tried) <= 2 * math.ceil(math.log2(max_batch)) + 2


def test_search_respects_min_batch() -> None:
    result = search(_fits_below(40), 8, 64)
    assert result.batch_size == 40
    assert result.trials[0].batch_size == 8
    assert search(_fits_below(3), 8, 64).batch_size == 0
    with pytest.raises(ValueError):
        search(_fits_below(3), 0, 64)


def test_finder_with_budget_finds_exactly_the_largest_fitting_batch() -> None:
    # Ground truth: measured peaks at two batch sizes give the line a + c * b.
    # (Above a few hundred samples one moment of the step is always the peak.)
    p1 = profile(SPEC, "64", 1000, device="cpu", optimizer="sgd").report
    p2 = profile(SPEC, "64", 2000, device="cpu", optimizer="sgd").report
    assert p1 is not None and p2 is not None
    slope = (p2.peak_bytes - p1.peak_bytes) / 1000
    intercept = p1.peak_bytes - 1000 * slope
    p3 = profile(SPEC, "64", 1537, device="cpu", optimizer="sgd").report
    assert p3 is not None and p3.peak_bytes == intercept + 1537 * slope  # linear indeed
    budget = 4 * MiB
    margin = 0.1
    limit = int(budget * (1 - margin))
    expected = math.floor((limit - intercept) / slope)
    result = find_batch_size(
        SPEC, "64", device="cpu", optimizer="sgd", budget_bytes=budget, margin=margin
    )
    assert result.batch_size == expected
    assert result.limit_bytes == limit
    by_batch = {t.batch_size: t for t in result.trials}
    assert by_batch[expected].ok and by_batch[expected].peak_bytes <= limit
    assert not by_batch[expected + 1].ok and "out of memory" in by_batch[expected + 1].error
    # The search recovered from every OOM: successes come after failures.
    first_failure = next(i for i, t in enumerate(result.trials) if not t.ok)
    assert any(t.ok for t in result.trials[first_failure + 1 :])
    data = result.to_dict()
    assert data["batch_size"] == expected and len(data["trials"]) == len(result.trials)


def test_finder_needs_a_budget_off_cuda() -> None:
    with pytest.raises(ValueError, match="budget"):
        find_batch_size(SPEC, "64", device="cpu")


@pytest.mark.gpu
def test_finder_on_cuda_matches_the_estimate_within_ten_percent() -> None:
    from gpu_optimizer.estimator import batch_memory_model

    total = torch.cuda.get_device_properties(0).total_memory
    budget = min(total, 4 * 2**30)
    found = find_batch_size(
        "resnet18", "3,224,224", device="cuda", budget_bytes=budget, max_batch=1024
    )
    model = batch_memory_model("resnet18", "3,224,224", plans=("plain",))["plain"]
    predicted = model.max_batch(int(budget * 0.9))
    # Both count tracked tensor bytes (512-byte blocks) against the same limit.
    assert found.batch_size == pytest.approx(predicted, rel=0.10)
