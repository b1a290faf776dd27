"""Tensor swapper: same gradients, every tensor above the threshold packed and unpacked once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpu_optimizer.estimator import estimate
from gpu_optimizer.swapper import TensorSwapper
from gpu_optimizer.tracker import MemoryTracker

F32 = 4


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256))


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 10),
    )


def _grads(model: nn.Module, x: torch.Tensor, swapper: TensorSwapper | None = None) -> dict:  # type: ignore[type-arg]
    model.zero_grad(set_to_none=True)
    if swapper is None:
        loss = model(x).square().mean()
    else:
        with swapper:
            loss = model(x).square().mean()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(("factory", "shape"), [(mlp, (8, 256)), (small_cnn, (4, 3, 16, 16))])
def test_gradients_equal(factory, shape) -> None:  # type: ignore[no-untyped-def]
    model = factory()
    x = torch.randn(*shape)
    reference = _grads(model, x)
    swapper = TensorSwapper(threshold_bytes=0, model=model)
    swapped = _grads(model, x, swapper)
    for name, grad in reference.items():
        torch.testing.assert_close(swapped[name], grad, rtol=0, atol=0)
    assert swapper.stats.packed > 0
    assert swapper.stats.bytes_restored >= swapper.stats.bytes_offloaded


def test_every_tensor_above_threshold_is_packed_and_unpacked() -> None:
    """Batch 8: Linear1 saves x (8 KiB); ReLU saves its output r (32 KiB), which Linear2
    saves too (one copy, two slots); Linear2's weight view is a parameter and stays; the
    loss's square() saves the output y (8 KiB). With the threshold at 8 KiB: three tensors
    move, four slots use them, four unpack."""
    model = mlp()
    x = torch.randn(8, 256)
    swapper = TensorSwapper(threshold_bytes=8 * 256 * F32, model=model)
    _grads(model, x, swapper)
    stats = swapper.stats
    assert stats.packed == 3
    assert stats.bytes_offloaded == 8 * (256 + 1024 + 256) * F32
    assert stats.pack_calls == 4 and stats.unpack_calls == 4
    assert stats.bytes_restored == 8 * (256 + 2 * 1024 + 256) * F32  # r goes to two nodes
    # One byte more and only r (32 KiB) qualifies.
    swapper = TensorSwapper(threshold_bytes=8 * 256 * F32 + 1, model=model)
    _grads(model, x, swapper)
    assert swapper.stats.packed == 1 and swapper.stats.pack_calls == 2


def test_scoped_to_modules() -> None:
    model = mlp()
    x = torch.randn(8, 256)
    swapper = TensorSwapper(threshold_bytes=0, modules=[model[2]])
    reference = _grads(model, x)
    swapped = _grads(model, x, swapper)
    # Only the saves made inside Linear2 move: its input r (the weight is a parameter).
    assert swapper.stats.packed == 1 and swapper.stats.pack_calls == 1
    assert swapper.stats.bytes_offloaded == 8 * 1024 * F32
    for name, grad in reference.items():
        torch.testing.assert_close(swapped[name], grad, rtol=0, atol=0)


def test_simulated_offload_removes_saved_activations_from_the_device() -> None:
    model = mlp()
    with (
        MemoryTracker(model) as tracker,
        TensorSwapper(threshold_bytes=0, model=model, simulate=True),
    ):
        loss = model(torch.randn(64, 256)).sum()
        loss.backward()
    assert int(tracker.report().category_timeline["activations"].max()) == 0
    plain = estimate("resnet18", "3,64,64", 8, round_to=1)
    offload = estimate("resnet18", "3,64,64", 8, plan="offload", round_to=1)
    assert offload.report.category_timeline["activations"].max() == 0
    assert plain.report.category_timeline["activations"].max() > 0
    assert offload.report.phase_peaks["forward"] < plain.report.phase_peaks["forward"]


@pytest.mark.gpu
def test_cuda_offload_lowers_max_memory_allocated_and_keeps_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        *[nn.Sequential(nn.Linear(1024, 4096), nn.GELU()) for _ in range(8)]
    ).cuda()
    x = torch.randn(2048, 1024, device="cuda")

    def run(swapper: TensorSwapper | None) -> tuple[int, dict]:  # type: ignore[type-arg]
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        grads = _grads(model, x, swapper)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, grads

    plain_peak, reference = run(None)
    swapper = TensorSwapper(threshold_bytes=1 << 20, model=model)
    swap_peak, swapped = run(swapper)
    saved = swapper.stats.bytes_offloaded
    assert saved > 0
    assert plain_peak - swap_peak > 0.5 * saved
    for name, grad in reference.items():
        torch.testing.assert_close(swapped[name], grad)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    torch.manual_seed(1)
    for _ in range(steps):
        model(torch.randn(4, 256)).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_optimizer_state_offloader_gives_the_same_updates() -> None:
    from gpu_optimizer.swapper import OptimizerStateOffloader

    plain, offloaded = mlp(), mlp()
    opt_a = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    opt_b = torch.optim.AdamW(offloaded.parameters(), lr=1e-2)
    _train(plain, opt_a)
    with OptimizerStateOffloader(opt_b) as offloader:
        _train(offloaded, opt_b)
    for a, b in zip(plain.parameters(), offloaded.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert offloader.bytes_to_host == 0  # already on the CPU here: nothing to move
    assert not opt_b._optimizer_step_pre_hooks and not opt_b._optimizer_step_post_hooks


@pytest.mark.gpu
def test_optimizer_state_lives_on_the_host_between_steps() -> None:
    from gpu_optimizer.swapper import OptimizerStateOffloader

    model = mlp().cuda()
    opt = torch.optim.Adam(model.parameters())
    with OptimizerStateOffloader(opt) as offloader:
        for _ in range(2):
            model(torch.randn(4, 256, device="cuda")).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            for state in opt.state.values():
                assert state["exp_avg"].device.type == "cpu"
                assert state["exp_avg"].is_pinned()
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        assert offloader.bytes_to_host == 2 * 2 * param_bytes  # two buffers, two steps
    assert all(s["exp_avg"].is_cuda for s in opt.state.values())
