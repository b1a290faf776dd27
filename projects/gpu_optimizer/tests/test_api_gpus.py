"""`GET /gpus` and the gpu_* metrics of the service: a real server here, recorded NVML otherwise."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpu_optimizer.api import create_app
from gpu_optimizer.nvml import NvmlReader, RecordedNvml, default_reader

RECORDING = Path(__file__).parent / "data" / "nvml_rtx4070ti_rtx3070ti.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "gpu_optimizer.api:create_app", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gpu_optimizer did not start: {log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_gpus_is_an_empty_list_on_a_machine_without_gpus(server: str) -> None:
    if default_reader().read():
        pytest.skip("this machine has GPUs")
    response = httpx.get(f"{server}/gpus", timeout=10)
    assert response.status_code == 200
    assert response.json() == []


def test_metrics_say_zero_gpus_on_a_machine_without_gpus(server: str) -> None:
    if default_reader().read():
        pytest.skip("this machine has GPUs")
    text = httpx.get(f"{server}/metrics", timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["gpu_count"].samples[0].value == 0
    assert families["gpu_nvml_available"].samples[0].value == 0
    assert families["gpu_memory_total_bytes"].samples == []


def test_gpus_is_in_the_openapi_schema(server: str) -> None:
    schema = httpx.get(f"{server}/openapi.json", timeout=10).json()
    ok = schema["paths"]["/gpus"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["type"] == "array"
    assert ok["schema"]["items"] == {"$ref": "#/components/schemas/GpuOut"}
    fields = schema["components"]["schemas"]["GpuOut"]["properties"]
    assert {"uuid", "name", "memory_total_bytes", "processes", "temperature_celsius"} <= set(fields)


def test_gpus_returns_recorded_readings() -> None:
    app = create_app()
    app.dependency_overrides[default_reader] = lambda: NvmlReader(RecordedNvml.from_file(RECORDING))

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/gpus")

    response = asyncio.run(get())
    assert response.status_code == 200
    body = response.json()
    assert [(g["index"], g["name"]) for g in body] == [
        (0, "NVIDIA GeForce RTX 4070 Ti"),
        (1, "NVIDIA GeForce RTX 3070 Ti"),
    ]
    assert body[1] == {
        "index": 1,
        "uuid": "GPU-a17c93d2-44e0-6b5f-0c8e-7f1d2b3e4a56",
        "name": "NVIDIA GeForce RTX 3070 Ti",
        "memory_total_bytes": 8_589_934_592,
        "memory_used_bytes": 734_003_200,
        "memory_free_bytes": 7_855_931_392,
        "utilization_ratio": 0.0,
        "memory_copy_utilization_ratio": 0.0,
        "temperature_celsius": 41.0,
        "power_watts": 21.874,
        "power_limit_watts": 290.0,
        "sm_clock_hertz": 210_000_000,
        "memory_clock_hertz": 405_000_000,
        "pcie_tx_bytes_per_second": None,
        "pcie_rx_bytes_per_second": None,
        "processes": [],
        "driver_version": "570.133.07",
        "cuda_driver_version": "12.8",
        "compute_capability": "8.6",
    }
    assert body[0]["processes"] == [
        {"pid": 1834, "used_memory_bytes": 268_435_456},
        {"pid": 2271, "used_memory_bytes": 100_663_296},
        {"pid": 48213, "used_memory_bytes": 2_870_083_584},
    ]
    assert body[0]["memory_total_bytes"] == 12_878_610_432
