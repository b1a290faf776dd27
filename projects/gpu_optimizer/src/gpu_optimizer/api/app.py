"""FastAPI application factory for the GPU optimizer service."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from gpu_optimizer import __version__
from gpu_optimizer.metrics import create_registry
from gpu_optimizer.nvml import NvmlReader, default_reader

GpuReaderDep = Annotated[NvmlReader, Depends(default_reader)]


class GpuProcessOut(BaseModel):
    pid: int
    used_memory_bytes: int | None


class GpuOut(BaseModel):
    """One GPU as NVML reports it, in base units; null where the GPU cannot report a value."""

    index: int
    uuid: str
    name: str
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    memory_free_bytes: int | None
    utilization_ratio: float | None
    memory_copy_utilization_ratio: float | None
    temperature_celsius: float | None
    power_watts: float | None
    power_limit_watts: float | None
    sm_clock_hertz: int | None
    memory_clock_hertz: int | None
    pcie_tx_bytes_per_second: int | None
    pcie_rx_bytes_per_second: int | None
    processes: list[GpuProcessOut] | None
    driver_version: str | None
    cuda_driver_version: str | None
    compute_capability: str | None


def create_app() -> FastAPI:
    app = FastAPI(title="gpu_optimizer", version=__version__)
    registry = create_registry()
    app.state.registry = registry

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "service": "gpu_optimizer", "version": __version__}

    @app.get("/gpus", response_model=list[GpuOut])
    def gpus(reader: GpuReaderDep) -> list[GpuOut]:
        """Every GPU on this machine; an empty list where there is no GPU or no NVIDIA driver."""
        return [GpuOut(**dataclasses.asdict(r)) for r in reader.read(max_age_s=1.0)]

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
