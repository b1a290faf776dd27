"""The one Prometheus registry of the GPU optimizer service, chosen here, injected elsewhere."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from gpu_optimizer import __version__
from gpu_optimizer.nvml import GpuReading, NvmlReader, default_reader


def create_registry(gpu_reader: NvmlReader | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(GpuCollector(gpu_reader or default_reader()))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    Info("gpu_build", "Build information of the GPU optimizer service", registry=registry).info(
        {"version": __version__}
    )
    return registry


GPU_LABELS = ("gpu", "uuid", "name")

# (metric name, help, value of one reading); a None value exports no sample for that GPU.
_GPU_GAUGES: tuple[tuple[str, str, Callable[[GpuReading], float | None]], ...] = (
    ("gpu_memory_total_bytes", "Total GPU memory", lambda r: r.memory_total_bytes),
    (
        "gpu_memory_used_bytes",
        "Used GPU memory (NVML v1: reserved included)",
        lambda r: r.memory_used_bytes,
    ),
    ("gpu_memory_free_bytes", "Free GPU memory", lambda r: r.memory_free_bytes),
    (
        "gpu_utilization_ratio",
        "Fraction of the last sample period a kernel ran",
        lambda r: r.utilization_ratio,
    ),
    (
        "gpu_memory_copy_utilization_ratio",
        "Fraction of the last sample period device memory was read or written",
        lambda r: r.memory_copy_utilization_ratio,
    ),
    ("gpu_temperature_celsius", "GPU core temperature", lambda r: r.temperature_celsius),
    ("gpu_power_watts", "Power draw of the board", lambda r: r.power_watts),
    ("gpu_power_limit_watts", "Enforced power limit", lambda r: r.power_limit_watts),
    ("gpu_sm_clock_hertz", "Current SM clock", lambda r: r.sm_clock_hertz),
    ("gpu_memory_clock_hertz", "Current memory clock", lambda r: r.memory_clock_hertz),
    (
        "gpu_pcie_tx_bytes_per_second",
        "PCIe transmit throughput",
        lambda r: r.pcie_tx_bytes_per_second,
    ),
    (
        "gpu_pcie_rx_bytes_per_second",
        "PCIe receive throughput",
        lambda r: r.pcie_rx_bytes_per_second,
    ),
    (
        "gpu_processes",
        "Processes using the GPU (compute and graphics); per-process detail is in GET /gpus",
        lambda r: None if r.processes is None else len(r.processes),
    ),
    (
        "gpu_processes_memory_used_bytes",
        "GPU memory used by all its processes together (pids would be unbounded labels)",
        lambda r: r.processes_memory_used_bytes,
    ),
)


class GpuCollector(Collector):
    """NVML gauges, read on scrape.

    `/metrics` is a sync route, so a scrape runs in the threadpool, never on the
    event loop; the reader serializes NVML access with a lock and serves
    readings younger than `max_age_s` from cache, so concurrent scrapes cost
    one NVML pass (a few milliseconds for a handful of GPUs).
    """

    def __init__(self, reader: NvmlReader, max_age_s: float = 1.0) -> None:
        self._reader = reader
        self._max_age_s = max_age_s

    def describe(self) -> Iterator[Metric]:
        # Names only, so registering does not touch NVML.
        yield from self._families([], nvml_available=False)

    def collect(self) -> Iterator[Metric]:
        readings = self._reader.read(max_age_s=self._max_age_s)
        yield from self._families(readings, nvml_available=self._reader.available)

    def _families(self, readings: list[GpuReading], *, nvml_available: bool) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "gpu_nvml_available",
            "1 if NVML (the NVIDIA driver) answers on this machine, else 0",
            value=1 if nvml_available else 0,
        )
        yield GaugeMetricFamily("gpu_count", "GPUs NVML sees on this machine", value=len(readings))
        for name, documentation, value_of in _GPU_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=GPU_LABELS)
            for reading in readings:
                value = value_of(reading)
                if value is not None:
                    family.add_metric([str(reading.index), reading.uuid, reading.name], value)
            yield family
        driver = InfoMetricFamily(
            "gpu_driver",
            "NVIDIA driver and the CUDA version it supports",
            labels=("driver_version", "cuda_driver_version"),
        )
        versions = {(r.driver_version or "", r.cuda_driver_version or "") for r in readings}
        for driver_version, cuda_driver_version in sorted(versions - {("", "")}):
            driver.add_metric(
                [], {"driver_version": driver_version, "cuda_driver_version": cuda_driver_version}
            )
        yield driver


JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")


class JobMetrics:
    """Profiling job and planner metrics, registered in the service's one registry.

    ``gpu_profile_peak_bytes`` keeps at most ``max_models`` model label values
    (least recently profiled dropped first): specs of user files are free text.
    """

    def __init__(self, registry: CollectorRegistry, *, max_models: int = 64) -> None:
        self.jobs = Counter(
            "gpu_profiling_jobs",
            "Profiling jobs that entered each state",
            ["state"],
            registry=registry,
        )
        for state in JOB_STATES:
            self.jobs.labels(state)
        self.duration = Histogram(
            "gpu_profiling_job_duration_seconds",
            "Wall time of a profiling job from its start to its end, by final state",
            ["state"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
            registry=registry,
        )
        self.peak = Gauge(
            "gpu_profile_peak_bytes",
            "Peak bytes of one training step from the last successful job per model and mode",
            ["model", "mode"],
            registry=registry,
        )
        self.recommended = Gauge(
            "gpu_recommended_batch_size",
            "Largest recommended batch of a planner workload on a machine profile",
            ["machine", "workload"],
            registry=registry,
        )
        self._max_models = max_models
        self._models: OrderedDict[tuple[str, str], None] = OrderedDict()

    def entered(self, state: str) -> None:
        self.jobs.labels(state).inc()

    def finished(self, state: str, seconds: float) -> None:
        self.entered(state)
        self.duration.labels(state).observe(seconds)

    def observed_peak(self, model: str, mode: str, peak_bytes: float) -> None:
        key = (model, mode)
        self._models[key] = None
        self._models.move_to_end(key)
        self.peak.labels(model, mode).set(peak_bytes)
        while len(self._models) > self._max_models:
            old, _ = self._models.popitem(last=False)
            self.peak.remove(*old)

    def recommended_batch(self, machine: str, workload: str, batch: int) -> None:
        self.recommended.labels(machine, workload).set(batch)
