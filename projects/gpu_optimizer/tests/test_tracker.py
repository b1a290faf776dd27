"""Memory tracker against hand-computed ground truth, and fake tensors against the real CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpu_optimizer.estimator import estimate
from gpu_optimizer.tracker import CATEGORIES, MemoryTracker, round_up

F32 = 4


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def two_layer_mlp(d0: int = 100, d1: int = 50, d2: int = 10) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d0, d1), nn.ReLU(), nn.Linear(d1, d2))


def test_parameters_gradients_and_adam_state_exact_to_the_byte() -> None:
    model = two_layer_mlp()
    opt = torch.optim.Adam(model.parameters(), foreach=False)
    param_bytes = (100 * 50 + 50 + 50 * 10 + 10) * F32  # 22_240
    with MemoryTracker(model, opt) as tracker:
        with tracker.phase("forward"):
            loss = model(torch.randn(8, 100)).sum()
        with tracker.phase("backward"):
            loss.backward()
        with tracker.phase("optimizer"):
            opt.step()
    final = tracker.report().final_breakdown
    assert final["parameters"] == param_bytes == 22_240
    assert final["gradients"] == param_bytes
    # exp_avg + exp_avg_sq per parameter, plus one float32 `step` scalar per parameter tensor.
    assert final["optimizer_state"] == 2 * param_bytes + 4 * F32


def test_existing_optimizer_state_is_counted_from_the_start() -> None:
    model = two_layer_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 100)).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    with MemoryTracker(model, opt) as tracker:
        pass
    report = tracker.report()
    param_bytes = 22_240
    assert report.final_breakdown["optimizer_state"] == param_bytes  # one momentum buffer each
    assert report.final_breakdown["parameters"] == param_bytes
    assert report.peak_bytes == 2 * param_bytes


@pytest.mark.parametrize("batch", [1, 8, 33])
def test_mlp_saved_activations_match_hand_count(batch: int) -> None:
    """Linear1 saves its input x (B x 100); ReLU saves its output r (B x 50), which Linear2
    saves too (same storage, counted once). The pre-ReLU output and Linear2's output are not
    saved. So activations = B * (100 + 50) * 4 bytes, exactly."""
    model = two_layer_mlp()
    with MemoryTracker(model) as tracker:
        with tracker.phase("forward"):
            loss = model(torch.randn(batch, 100)).sum()
        with tracker.phase("backward"):
            loss.backward()
    report = tracker.report()
    assert int(report.category_timeline["activations"].max()) == batch * (100 + 50) * F32
    # All activations are released by the end of backward.
    assert report.final_breakdown["activations"] == 0
    # Activations are attributed to the module whose forward created them.
    fwd_end = report.timeline_phases.index("backward")
    assert int(report.category_timeline["activations"][fwd_end - 1]) == batch * 150 * F32


def test_allocator_rounding_is_per_storage() -> None:
    model = nn.Linear(3, 5)  # weight 60 bytes, bias 20 bytes
    with MemoryTracker(model, round_to=512) as tracker:
        pass
    assert tracker.report().final_breakdown["parameters"] == 2 * 512
    assert (
        round_up(1) == 512 and round_up(512) == 512 and round_up(513) == 1024 and round_up(0) == 0
    )


def test_peak_phase_per_module_and_timeline_are_consistent() -> None:
    model = two_layer_mlp(256, 512, 256)
    with MemoryTracker(model) as tracker:
        with tracker.phase("forward"):
            loss = model(torch.randn(64, 256)).sum()
        with tracker.phase("backward"):
            loss.backward()
    report = tracker.report()
    assert report.peak_bytes == int(report.timeline.max())
    assert report.peak_bytes == sum(report.breakdown.values())
    assert report.peak_phase in ("forward", "backward")
    assert set(report.phase_peaks) >= {"setup", "forward", "backward"}
    assert max(report.phase_peaks.values()) == report.peak_bytes
    # Per-module parameters are exactly each Linear's own parameters.
    assert report.per_module["0"]["parameters"] == (256 * 512 + 512) * F32
    assert report.per_module["2"]["parameters"] == (512 * 256 + 256) * F32
    total = {c: sum(m[c] for m in report.per_module.values()) for c in CATEGORIES}
    assert total == report.breakdown
    json_ready = report.to_dict()
    assert set(json_ready["breakdown"]) == set(CATEGORIES)


def test_tracker_is_released_after_exit_while_the_model_lives() -> None:
    import gc
    import weakref

    model = two_layer_mlp()
    with MemoryTracker(model) as tracker:
        model(torch.randn(4, 100)).sum().backward()
    report = tracker.report()
    ref = weakref.ref(tracker)
    del tracker
    gc.collect()
    assert ref() is None  # parameters' finalizers no longer point at it
    assert report.final_breakdown["parameters"] == 22_240


def test_only_the_tracked_device_counts() -> None:
    with MemoryTracker(device="meta") as tracker:
        a = torch.empty(1000, device="meta")
        b = torch.empty(1000)  # CPU: not counted
        del b
    assert tracker.report().peak_bytes == 4000
    del a


@pytest.mark.parametrize(
    ("model", "shape", "batch", "optimizer"),
    [
        ("resnet18", "3,64,64", 4, "adamw"),
        ("mobilenet_v3_small", "3,96,96", 3, "sgd"),
    ],
)
def test_fake_estimate_equals_cpu_measurement(model: str, shape: str, batch: int, optimizer: str):
    # target="cpu": the fake run models the CPU's kernels, which the real CPU step runs.
    fake = estimate(model, shape, batch, optimizer=optimizer, fake=True, round_to=1, target="cpu")
    real = estimate(model, shape, batch, optimizer=optimizer, fake=False, round_to=1)
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=0.01)
    for category in CATEGORIES:
        assert fake.report.breakdown[category] == pytest.approx(
            real.report.breakdown[category], rel=0.01, abs=1024
        ), category
    assert fake.report.peak_phase == real.report.peak_phase


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("model", "shape"), [("resnet50", "3,224,224"), ("yolo11n-pose.yaml", "3,640,640")]
)
@pytest.mark.parametrize("batch", [4, 16])
def test_estimate_matches_cuda_max_memory_allocated(model: str, shape: str, batch: int) -> None:
    from gpu_optimizer.profiler import profile

    predicted = estimate(model, shape, batch)
    measured = profile(model, shape, batch, device="cuda")
    assert measured.ok, measured.error
    allocated = measured.allocator["max_memory_allocated_bytes"]
    assert predicted.to_dict()["predicted_cuda"]["max_memory_allocated_bytes"] == pytest.approx(
        allocated, rel=0.10
    )


def test_saved_tensor_notices_stay_on_their_thread() -> None:
    import threading

    from gpu_optimizer.tracker import notify_saved

    with MemoryTracker(device="cpu") as tracker:
        mine = torch.empty(100)
        other = threading.Thread(target=lambda: notify_saved(torch.empty(1000)))
        other.start()
        other.join()
        notify_saved(mine)
    report = tracker.report()
    assert int(report.category_timeline["activations"].max()) == 400
