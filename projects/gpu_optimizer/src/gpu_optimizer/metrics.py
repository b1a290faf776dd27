"""The one Prometheus registry of the GPU optimizer service, chosen here and injected everywhere else."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Info, PlatformCollector, ProcessCollector

from gpu_optimizer import __version__


def create_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    Info("gpu_build", "Build information of the GPU optimizer service", registry=registry).info(
        {"version": __version__}
    )
    return registry
