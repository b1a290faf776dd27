"""`gpu-optimizer top`: the real command here (no GPU), recorded NVML for the table."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from gpu_optimizer.nvml import GpuReading, NvmlReader, RecordedNvml, default_reader
from gpu_optimizer.top import NO_GPU_MESSAGE, run_top

RECORDING = Path(__file__).parent / "data" / "nvml_rtx4070ti_rtx3070ti.json"
GPU_OPTIMIZER = Path(sys.executable).parent / "gpu-optimizer"


def recording() -> dict[str, Any]:
    return json.loads(RECORDING.read_text())


def printed(reader: NvmlReader) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    assert run_top(once=True, reader=reader, console=console) == 0
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_top_once_without_gpus_says_so_and_exits_0() -> None:
    result = subprocess.run(
        [str(GPU_OPTIMIZER), "top", "--once"], capture_output=True, text=True, timeout=60
    )
    if default_reader().read():
        assert result.returncode == 0
        assert "NVIDIA" in result.stdout
        return
    assert result.returncode == 0, result.stderr
    assert NO_GPU_MESSAGE in result.stdout
    assert "no NVIDIA driver" in result.stdout
    assert result.stderr == ""


def test_top_rejects_a_non_positive_interval() -> None:
    result = subprocess.run(
        [str(GPU_OPTIMIZER), "top", "--once", "--interval", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--interval: must be a number of seconds > 0, got '0'" in result.stderr


def test_top_table_shows_every_gpu_from_recorded_nvml() -> None:
    out = printed(NvmlReader(RecordedNvml(recording())))
    assert "driver 570.133.07 · CUDA 12.8" in out
    lines = out.splitlines()
    row_4070 = next(line for line in lines if "0 NVIDIA GeForce RTX 4070 Ti" in line)
    for cell in ("37%", "21%", "56 °C", "141 / 285 W", "2730 MHz", "48213 ", "2.67 GiB"):
        assert cell in row_4070, cell
    assert "3.1 / 12.0 GiB (26%)" in out
    row_3070 = next(line for line in lines if "1 NVIDIA GeForce RTX 3070 Ti" in line)
    for cell in ("0%", "41 °C", "22 / 290 W", "210 MHz", "none"):
        assert cell in row_3070, cell
    assert "0.7 / 8.0 GiB (9%)" in out
    assert NO_GPU_MESSAGE not in out


def test_top_shows_a_dash_for_an_unsupported_query() -> None:
    data = recording()
    data["devices"][1]["temperature_celsius"] = {"error": 3}
    data["devices"][1]["power_milliwatts"] = {"error": 3}
    out = printed(NvmlReader(RecordedNvml(data)))
    row_3070 = next(line for line in out.splitlines() if "1 NVIDIA GeForce RTX 3070 Ti" in line)
    assert "- °C" in row_3070
    assert "W" not in row_3070.split("°C")[1].split("MHz")[0]


def test_live_top_refreshes_until_ctrl_c() -> None:
    class Interrupted(NvmlReader):
        reads = 0

        def read(self, max_age_s: float = 0.0) -> list[GpuReading]:
            type(self).reads += 1
            if type(self).reads == 4:
                raise KeyboardInterrupt
            return super().read(max_age_s)

    console = Console(file=io.StringIO(), width=200, color_system=None)
    assert (
        run_top(interval=0.01, reader=Interrupted(RecordedNvml(recording())), console=console) == 0
    )
    assert Interrupted.reads == 4
    assert "NVIDIA GeForce RTX 4070 Ti" in console.file.getvalue()  # type: ignore[attr-defined]


def test_live_top_without_gpus_keeps_saying_so() -> None:
    class Interrupted(NvmlReader):
        reads = 0

        def read(self, max_age_s: float = 0.0) -> list[GpuReading]:
            type(self).reads += 1
            if type(self).reads == 3:
                raise KeyboardInterrupt
            return super().read(max_age_s)

    console = Console(file=io.StringIO(), width=200, color_system=None)
    assert run_top(interval=0.01, reader=Interrupted(RecordedNvml(None)), console=console) == 0
    assert Interrupted.reads == 3
    assert NO_GPU_MESSAGE in console.file.getvalue()  # type: ignore[attr-defined]
