"""NVML readings and the GPU collector, from NVML answers recorded on real GeForce cards."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpu_optimizer.metrics import GPU_LABELS, GpuCollector, create_registry
from gpu_optimizer.nvml import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_NOT_SUPPORTED,
    GpuProcess,
    GpuReading,
    NvmlReader,
    RecordedNvml,
    read_gpus,
    record_nvml,
)

RECORDING = Path(__file__).parent / "data" / "nvml_rtx4070ti_rtx3070ti.json"
UUID_4070 = "GPU-5e0b2f6c-8b1a-4f7e-9d3c-2a41c7e9b810"
UUID_3070 = "GPU-a17c93d2-44e0-6b5f-0c8e-7f1d2b3e4a56"
NAME_4070 = "NVIDIA GeForce RTX 4070 Ti"
NAME_3070 = "NVIDIA GeForce RTX 3070 Ti"

EXPECTED = [
    GpuReading(
        index=0,
        uuid=UUID_4070,
        name=NAME_4070,
        memory_total_bytes=12_878_610_432,
        memory_used_bytes=3_342_467_072,
        memory_free_bytes=9_536_143_360,
        utilization_ratio=0.37,
        memory_copy_utilization_ratio=0.21,
        temperature_celsius=56.0,
        power_watts=141.237,
        power_limit_watts=285.0,
        sm_clock_hertz=2_730_000_000,
        memory_clock_hertz=10_501_000_000,
        pcie_tx_bytes_per_second=8734 * 1024,
        pcie_rx_bytes_per_second=152_340 * 1024,
        processes=(
            GpuProcess(pid=1834, used_memory_bytes=268_435_456),
            GpuProcess(pid=2271, used_memory_bytes=100_663_296),
            GpuProcess(pid=48213, used_memory_bytes=2_870_083_584),
        ),
        driver_version="570.133.07",
        cuda_driver_version="12.8",
        compute_capability="8.9",
    ),
    GpuReading(
        index=1,
        uuid=UUID_3070,
        name=NAME_3070,
        memory_total_bytes=8_589_934_592,
        memory_used_bytes=734_003_200,
        memory_free_bytes=7_855_931_392,
        utilization_ratio=0.0,
        memory_copy_utilization_ratio=0.0,
        temperature_celsius=41.0,
        power_watts=21.874,
        power_limit_watts=290.0,
        sm_clock_hertz=210_000_000,
        memory_clock_hertz=405_000_000,
        pcie_tx_bytes_per_second=None,  # recorded "Not Supported"
        pcie_rx_bytes_per_second=None,
        processes=(),
        driver_version="570.133.07",
        cuda_driver_version="12.8",
        compute_capability="8.6",
    ),
]


def recording() -> dict[str, Any]:
    return json.loads(RECORDING.read_text())


def unsupported() -> dict[str, int]:
    return {"error": NVML_ERROR_NOT_SUPPORTED}


def test_recorded_readings_become_gpu_readings() -> None:
    assert read_gpus(RecordedNvml(recording())) == EXPECTED


def test_recording_round_trips_through_record_nvml() -> None:
    assert record_nvml(RecordedNvml(recording())) == recording()


@pytest.mark.parametrize(
    ("recorded_key", "none_fields"),
    [
        ("memory", {"memory_total_bytes", "memory_used_bytes", "memory_free_bytes"}),
        ("utilization_percent", {"utilization_ratio", "memory_copy_utilization_ratio"}),
        ("temperature_celsius", {"temperature_celsius"}),
        ("power_milliwatts", {"power_watts"}),
        ("power_limit_milliwatts", {"power_limit_watts"}),
        ("compute_capability", {"compute_capability"}),
    ],
)
def test_an_unsupported_query_leaves_only_its_fields_none(
    recorded_key: str, none_fields: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    data = recording()
    data["devices"][0][recorded_key] = unsupported()
    with caplog.at_level(logging.WARNING):
        got = read_gpus(RecordedNvml(data))[0]
    expected = {f: None if f in none_fields else v for f, v in vars(EXPECTED[0]).items()}
    assert vars(got) == expected
    assert caplog.records == []  # "not supported" is a normal answer, not a warning


def test_one_unsupported_clock_leaves_the_other() -> None:
    data = recording()
    data["devices"][0]["clocks_mhz"]["memory"] = unsupported()
    got = read_gpus(RecordedNvml(data))[0]
    assert (got.sm_clock_hertz, got.memory_clock_hertz) == (2_730_000_000, None)


def test_processes_merge_compute_and_graphics_and_none_when_both_unsupported() -> None:
    data = recording()
    data["devices"][0]["graphics_processes"].append({"pid": 48213, "usedGpuMemory": None})
    data["devices"][1]["compute_processes"] = unsupported()
    data["devices"][1]["graphics_processes"] = unsupported()
    first, second = read_gpus(RecordedNvml(data))
    assert first.processes == EXPECTED[0].processes  # pid 48213 once, with its known memory
    assert first.processes_memory_used_bytes == 3_239_182_336
    assert second.processes is None
    assert second.processes_memory_used_bytes is None


def test_real_pynvml_errors_are_handled_like_recorded_ones() -> None:
    pynvml = pytest.importorskip("pynvml")

    class GeForce(RecordedNvml):
        def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    got = read_gpus(GeForce(recording()))
    assert [g.power_watts for g in got] == [None, None]
    assert [g.temperature_celsius for g in got] == [56.0, 41.0]


def test_an_unexpected_nvml_error_leaves_the_field_none_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = recording()
    data["devices"][1]["temperature_celsius"] = {"error": 15}  # GPU is lost
    reader = NvmlReader(RecordedNvml(data))
    with caplog.at_level(logging.WARNING, logger="gpu_optimizer.nvml"):
        reader.read()
        readings = reader.read()
    assert [g.temperature_celsius for g in readings] == [56.0, None]
    assert len(caplog.records) == 1
    assert "temperature of GPU 1" in caplog.records[0].getMessage()


@pytest.mark.parametrize("code", [12, NVML_ERROR_DRIVER_NOT_LOADED])
def test_no_nvml_is_a_normal_state(code: int, caplog: pytest.LogCaptureFixture) -> None:
    class NoDriver(RecordedNvml):
        def nvmlInit(self) -> None:
            from gpu_optimizer.nvml import NvmlError

            raise NvmlError(code)

    reader = NvmlReader(NoDriver(recording()))
    with caplog.at_level(logging.WARNING):
        assert reader.read() == []
    assert caplog.records == []
    assert not reader.available
    assert reader.unavailable_reason is not None
    assert "no NVIDIA driver" in reader.unavailable_reason


def test_a_broken_driver_reads_no_gpu_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    class Mismatch(RecordedNvml):
        def nvmlInit(self) -> None:
            from gpu_optimizer.nvml import NvmlError

            raise NvmlError(18, "RM has detected an NVML/RM version mismatch.")

    reader = NvmlReader(Mismatch(recording()))
    with caplog.at_level(logging.WARNING, logger="gpu_optimizer.nvml"):
        assert reader.read() == reader.read() == []
    assert [r.getMessage() for r in caplog.records] == [
        "NVML failed to initialise: RM has detected an NVML/RM version mismatch."
    ]
    assert reader.unavailable_reason == (
        "NVML failed to initialise: RM has detected an NVML/RM version mismatch."
    )


def test_an_old_driver_without_a_process_query_leaves_processes_none() -> None:
    pynvml = pytest.importorskip("pynvml")

    class OldDriver(RecordedNvml):
        def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
            raise pynvml.NVMLLibraryMismatchError("Unversioned function called")

        def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[Any]:
            raise pynvml.NVMLLibraryMismatchError("Unversioned function called")

    assert [g.processes for g in read_gpus(OldDriver(recording()))] == [None, None]


def test_no_gpus_is_a_normal_state() -> None:
    data = recording()
    data["devices"] = []
    reader = NvmlReader(RecordedNvml(data))
    assert reader.read() == []
    assert reader.available
    assert reader.unavailable_reason == "NVML found no GPU"


def test_this_machine_without_a_driver_reads_no_gpu(caplog: pytest.LogCaptureFixture) -> None:
    reader = NvmlReader()  # the real pynvml
    with caplog.at_level(logging.WARNING):
        readings = reader.read()
    if reader.available:
        pytest.skip("this machine has an NVIDIA driver; the gpu tests cover it")
    assert readings == []
    assert caplog.records == []


def test_cuda_device_order_is_pci_bus_id() -> None:
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_readings_are_cached_for_max_age_and_serialized() -> None:
    class Counting(RecordedNvml):
        calls = 0
        inside = 0
        overlapped = False

        def nvmlDeviceGetCount(self) -> int:
            type(self).calls += 1
            type(self).inside += 1
            if type(self).inside > 1:
                type(self).overlapped = True
            time.sleep(0.005)
            type(self).inside -= 1
            return super().nvmlDeviceGetCount()

    reader = NvmlReader(Counting(recording()))
    assert reader.read(max_age_s=60) == reader.read(max_age_s=60) == EXPECTED
    assert Counting.calls == 1
    threads = [threading.Thread(target=reader.read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counting.calls == 9
    assert not Counting.overlapped


# --- the collector --------------------------------------------------------------

PER_GPU = {
    "gpu_memory_total_bytes": (12_878_610_432, 8_589_934_592),
    "gpu_memory_used_bytes": (3_342_467_072, 734_003_200),
    "gpu_memory_free_bytes": (9_536_143_360, 7_855_931_392),
    "gpu_utilization_ratio": (0.37, 0.0),
    "gpu_memory_copy_utilization_ratio": (0.21, 0.0),
    "gpu_temperature_celsius": (56.0, 41.0),
    "gpu_power_watts": (141.237, 21.874),
    "gpu_power_limit_watts": (285.0, 290.0),
    "gpu_sm_clock_hertz": (2.73e9, 2.1e8),
    "gpu_memory_clock_hertz": (1.0501e10, 4.05e8),
    "gpu_pcie_tx_bytes_per_second": (8734 * 1024, None),
    "gpu_pcie_rx_bytes_per_second": (152_340 * 1024, None),
    "gpu_processes": (3, 0),
    "gpu_processes_memory_used_bytes": (3_239_182_336, 0),
}
GPU_IDS = (("0", UUID_4070, NAME_4070), ("1", UUID_3070, NAME_3070))
ALL_NAMES = {"gpu_nvml_available", "gpu_count", "gpu_driver_info", *PER_GPU}


def exposition(data: dict[str, Any] | None) -> dict[str, Any]:
    registry = CollectorRegistry()
    registry.register(GpuCollector(NvmlReader(RecordedNvml(data))))
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_collector_exports_the_recorded_readings() -> None:
    families = exposition(recording())
    assert set(families) == ALL_NAMES
    assert {f.type for f in families.values()} == {"gauge"}
    assert [(s.name, s.labels, s.value) for s in families["gpu_count"].samples] == [
        ("gpu_count", {}, 2)
    ]
    assert families["gpu_nvml_available"].samples[0].value == 1
    assert [(s.labels, s.value) for s in families["gpu_driver_info"].samples] == [
        ({"driver_version": "570.133.07", "cuda_driver_version": "12.8"}, 1)
    ]
    for name, values in PER_GPU.items():
        samples = {
            tuple(s.labels[label] for label in GPU_LABELS): s.value for s in families[name].samples
        }
        assert all(s.name == name for s in families[name].samples)
        assert all(set(s.labels) == set(GPU_LABELS) for s in families[name].samples)
        expected = {ids: v for ids, v in zip(GPU_IDS, values, strict=True) if v is not None}
        assert samples == pytest.approx(expected), name


def test_collector_without_nvml_says_zero_gpus() -> None:
    families = exposition(None)
    assert set(families) == ALL_NAMES
    assert families["gpu_count"].samples[0].value == 0
    assert families["gpu_nvml_available"].samples[0].value == 0
    assert all(families[name].samples == [] for name in (*PER_GPU, "gpu_driver_info"))


def test_registering_the_collector_does_not_touch_nvml() -> None:
    class Counting(RecordedNvml):
        inits = 0

        def nvmlInit(self) -> None:
            type(self).inits += 1

    registry = create_registry(NvmlReader(Counting(recording())))
    assert Counting.inits == 0
    assert registry.get_sample_value("gpu_count") == 2
    assert Counting.inits == 1


def test_service_registry_exports_the_collector() -> None:
    registry = create_registry(NvmlReader(RecordedNvml(recording())))
    labels = dict(zip(GPU_LABELS, GPU_IDS[1], strict=True))
    assert registry.get_sample_value("gpu_count") == 2
    assert registry.get_sample_value("gpu_memory_total_bytes", labels) == 8_589_934_592


# --- a real GPU -----------------------------------------------------------------


@pytest.mark.gpu
def test_real_gpu_readings_agree_with_cuda() -> None:
    import torch

    readings = NvmlReader().read()
    assert len(readings) == torch.cuda.device_count() > 0
    for reading in readings:
        props = torch.cuda.get_device_properties(reading.index)
        assert reading.name == props.name
        assert reading.uuid.removeprefix("GPU-") == str(props.uuid).removeprefix("GPU-")
        assert reading.compute_capability == f"{props.major}.{props.minor}"
        assert reading.memory_total_bytes is not None
        assert reading.memory_total_bytes >= props.total_memory
        assert reading.memory_used_bytes is not None and reading.memory_free_bytes is not None
        assert reading.memory_used_bytes + reading.memory_free_bytes <= reading.memory_total_bytes
        assert reading.driver_version
    families = {
        f.name: f
        for f in text_string_to_metric_families(generate_latest(create_registry()).decode())
    }
    assert families["gpu_count"].samples[0].value == len(readings)
    assert len(families["gpu_memory_total_bytes"].samples) == len(readings)
