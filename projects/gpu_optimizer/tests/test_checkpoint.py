"""Checkpoint manager: same gradients; the activation peak drops by exactly what blocks held."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from gpu_optimizer.checkpointing import (
    CheckpointManager,
    auto_checkpoint,
    block_costs,
    discover_blocks,
    measure_checkpointing,
    select_blocks,
)
from gpu_optimizer.tracker import MemoryTracker

F32 = 4


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def deep_mlp(blocks: int = 4) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        *[
            nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU())
            for _ in range(blocks)
        ]
    )


def _activation_peak(model: nn.Module, x: torch.Tensor) -> int:
    with MemoryTracker(model) as tracker:
        with tracker.phase("forward"):
            loss = model(x).sum()
        with tracker.phase("backward"):
            loss.backward()
            del loss
    model.zero_grad(set_to_none=True)
    return int(tracker.report().category_timeline["activations"].max())


def _grads(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def test_discover_blocks() -> None:
    assert discover_blocks(deep_mlp()) == ["0", "1", "2", "3"]
    resnet = discover_blocks(torchvision.models.resnet18())
    assert resnet == [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    vit = discover_blocks(
        torchvision.models.VisionTransformer(32, 8, 4, 2, 64, 128, num_classes=10)
    )
    assert vit[:4] == [f"encoder.layers.encoder_layer_{i}" for i in range(4)]


def test_mlp_gradients_equal_and_activation_drop_is_exact() -> None:
    """Per block, without checkpointing: ReLU1's output (B x 1024) and ReLU2's output (B x 256,
    also the next block's input) are saved, plus the model input (B x 256). With every block
    checkpointed only each block's input (B x 256) is kept."""
    batch = 16
    model = deep_mlp()
    x = torch.randn(batch, 256)
    reference = _grads(model, x)
    plain_peak = _activation_peak(model, x)
    assert plain_peak == batch * F32 * (256 + 4 * (1024 + 256))
    with CheckpointManager(model) as manager:
        assert manager.apply_every(1) == ["0", "1", "2", "3"]
        ckpt_grads = _grads(model, x)
        ckpt_peak = _activation_peak(model, x)
    assert ckpt_peak == batch * F32 * (4 * 256)
    assert plain_peak - ckpt_peak == batch * F32 * 4 * 1024 + batch * F32 * 256
    for name, grad in reference.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=0, atol=0)
    # Removed: the model is back to plain.
    assert _activation_peak(model, x) == plain_peak
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_every_kth_and_pattern() -> None:
    model = deep_mlp()
    with CheckpointManager(model) as manager:
        assert manager.apply_every(2) == ["0", "2"]
    with CheckpointManager(model) as manager:
        assert manager.apply_pattern("[13]") == ["1", "3"]
        with pytest.raises(KeyError):
            manager.apply_pattern("nothing*")
        with pytest.raises(KeyError):
            manager.apply(["9"])


def test_resnet18_gradients_equal_and_drop_matches_block_contents() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(4, 3, 64, 64)
    blocks = discover_blocks(model)
    # Expected drop: everything saved inside the blocks, from one plain tracked run.
    expected = sum(c.activation_bytes for c in block_costs(model, lambda: model(x).sum(), blocks))
    # Train mode: BatchNorm normalises with batch statistics, identical in the recompute
    # (its running statistics are updated twice, which does not touch gradients).
    reference = _grads(model, x)
    plain_peak = _activation_peak(model, x)
    with CheckpointManager(model) as manager:
        manager.apply(blocks)
        ckpt_peak = _activation_peak(model, x)
        ckpt_grads = _grads(model, x)
    assert plain_peak - ckpt_peak == expected
    assert expected > 0.4 * plain_peak  # the stem (conv1 at full resolution) is not a block
    for name, grad in reference.items():
        torch.testing.assert_close(ckpt_grads[name], grad)


def test_auto_checkpoint_meets_budget_with_few_blocks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        *[
            nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 64), nn.ReLU())
            for _ in range(6)
        ]
    )
    x = torch.randn(512, 64)
    loss_fn = lambda: model(x).sum()  # noqa: E731
    with MemoryTracker(model) as tracker:
        loss_fn().backward()
    model.zero_grad(set_to_none=True)
    plain = tracker.report().peak_bytes
    per_block = 512 * F32 * 1024  # what checkpointing one block frees
    budget = plain - 2 * per_block - per_block // 2
    with CheckpointManager(model) as manager:
        report = auto_checkpoint(manager, loss_fn, budget)
        assert report.peak_after <= budget < report.peak_before
        assert manager.applied == report.blocks
        assert 0 < report.recompute_fraction < 1
    # Backward recomputes one block at a time, which takes one block's saving back at the
    # peak: 2.5 blocks' worth needs four blocks, and no fewer.
    assert len(report.blocks) == 4
    with CheckpointManager(model) as manager:
        manager.apply(report.blocks[:-1])
        with MemoryTracker(model) as tracker:
            loss_fn().backward()
        model.zero_grad(set_to_none=True)
        assert tracker.report().peak_bytes > budget
    with CheckpointManager(model) as manager:
        assert auto_checkpoint(manager, loss_fn, plain).blocks == []


def test_measure_checkpointing_reports_saving_and_time() -> None:
    model = deep_mlp()
    x = torch.randn(32, 256)
    report = measure_checkpointing(model, lambda: model(x).sum(), repeats=1)
    assert report.activation_saved_ratio > 0.7
    assert report.seconds_before and report.seconds_after
    assert report.time_overhead_ratio is not None
    assert set(report.to_dict()) >= {"activation_saved_bytes", "time_overhead_ratio"}


def test_select_blocks_prefers_bytes_per_flop() -> None:
    from gpu_optimizer.checkpointing import BlockCost

    costs = [
        BlockCost("a", activation_bytes=100, flops=1000),  # 0.1 B/FLOP
        BlockCost("b", activation_bytes=100, flops=100),  # 1 B/FLOP
        BlockCost("c", activation_bytes=50, flops=10),  # 5 B/FLOP
    ]
    assert select_blocks(costs, 50) == ["c"]
    assert select_blocks(costs, 120) == ["b", "c"]
    assert select_blocks(costs, 10_000) == ["a", "b", "c"]
    assert select_blocks(costs, 0) == []


def test_selective_policy_keeps_gradients_and_sits_between_plain_and_full() -> None:
    """Selective checkpointing keeps matmul outputs and recomputes the GELUs, so each
    block stops saving the first GELU's output (B x 1024): the forward peak lies between
    plain (everything saved) and full checkpointing (only block inputs)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        *[
            nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256), nn.GELU())
            for _ in range(4)
        ]
    )
    x = torch.randn(32, 256)
    reference = _grads(model, x)

    def forward_peak() -> int:
        with MemoryTracker(model) as tracker:
            with tracker.phase("forward"):
                loss = model(x).sum()
            with tracker.phase("backward"):
                loss.backward()
                del loss
        model.zero_grad(set_to_none=True)
        return tracker.report().phase_peaks["forward"]

    plain = forward_peak()
    peaks = {}
    for policy in ("full", "save-matmuls"):
        with CheckpointManager(model, policy=policy) as manager:
            manager.apply_every(1)
            peaks[policy] = forward_peak()
            grads = _grads(model, x)
        for name, grad in reference.items():
            torch.testing.assert_close(grads[name], grad, rtol=0, atol=0)
    assert peaks["full"] < peaks["save-matmuls"] < plain
    with pytest.raises(ValueError, match="policy"):
        CheckpointManager(model, policy="sometimes")


@pytest.mark.slow
def test_ultralytics_pose_model_checkpoints_in_place() -> None:
    """Ultralytics routes layers by attributes (m.f, m.i): wrapping forward in place keeps it."""
    from ultralytics.nn.tasks import PoseModel

    from gpu_optimizer.models import default_loss

    torch.manual_seed(0)
    model = PoseModel("yolo11n-pose.yaml", verbose=False)
    blocks = discover_blocks(model)
    assert blocks[0] == "model.0" and "model.23" in blocks  # the pose head is a block too
    x = torch.randn(2, 3, 64, 64)
    model.train()

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        default_loss(model(x), x).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = grads()
    with CheckpointManager(model) as manager:
        manager.apply(blocks)
        checkpointed = grads()
    assert checkpointed.keys() == reference.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=0)


@pytest.mark.slow
def test_checkpointed_batchnorm_updates_running_stats_once_per_step() -> None:
    """ResNet-50, 3 SGD steps, every block checkpointed: the recompute in backward runs each
    BatchNorm a second time, which must not move its statistics (it did: 1.9x the momentum,
    ``num_batches_tracked`` +2 a step). Compared with the same model trained without."""
    import copy

    torch.manual_seed(0)
    plain = torchvision.models.resnet50(weights=None)
    ckpt = copy.deepcopy(plain)
    batches = [
        torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)
    ]

    def train(model: nn.Module) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        model.train()
        for x in batches:
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    train(plain)
    with CheckpointManager(ckpt) as manager:
        manager.apply(discover_blocks(ckpt))
        assert len(manager.applied) == 16
        train(ckpt)
    norms = [(n, m) for n, m in plain.named_modules() if isinstance(m, nn.BatchNorm2d)]
    other = dict(ckpt.named_modules())
    assert len(norms) == 53
    for name, bn in norms:
        twin = other[name]
        assert int(twin.num_batches_tracked) == int(bn.num_batches_tracked) == 3, name
        torch.testing.assert_close(twin.running_mean, bn.running_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(twin.running_var, bn.running_var, rtol=0, atol=1e-6)
