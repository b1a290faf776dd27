"""`gpu-optimizer top`: a terminal GPU monitor over the same NVML reader as the service."""

from __future__ import annotations

import datetime as dt
import socket
import time

import psutil
from rich.console import Console, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gpu_optimizer.nvml import GpuReading, NvmlReader, default_reader

_GIB = 1024**3
NO_GPU_MESSAGE = "No NVIDIA GPU found"


def _process_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return "?"


def _or_dash(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _level(ratio: float | None, warn: float, high: float) -> str:
    if ratio is None:
        return "dim"
    return "red" if ratio >= high else "yellow" if ratio >= warn else "green"


def _memory(reading: GpuReading, width: int = 24) -> Text:
    total, used = reading.memory_total_bytes, reading.memory_used_bytes
    if total is None or used is None or total == 0:
        return Text("-")
    ratio = used / total
    filled = round(ratio * width)
    return Text.assemble(
        ("█" * filled, _level(ratio, 0.7, 0.9)),
        ("░" * (width - filled), "dim"),
        f"\n{used / _GIB:.1f} / {total / _GIB:.1f} GiB ({ratio:.0%})",
    )


def _power(reading: GpuReading) -> Text:
    if reading.power_watts is None:
        return Text("-")
    if reading.power_limit_watts is None:
        return Text(f"{reading.power_watts:.0f} W")
    ratio = reading.power_watts / reading.power_limit_watts
    return Text(
        f"{reading.power_watts:.0f} / {reading.power_limit_watts:.0f} W",
        style=_level(ratio, 0.8, 0.95),
    )


def _processes(reading: GpuReading) -> Text:
    if reading.processes is None:
        return Text("n/a", style="dim")
    if not reading.processes:
        return Text("none", style="dim")
    lines = []
    for p in sorted(reading.processes, key=lambda p: -(p.used_memory_bytes or 0)):
        memory = "?" if p.used_memory_bytes is None else f"{p.used_memory_bytes / _GIB:.2f} GiB"
        lines.append(f"{p.pid} {_process_name(p.pid)} {memory}")
    return Text("\n".join(lines))


def render(readings: list[GpuReading], unavailable_reason: str | None = None) -> RenderableType:
    """One frame: a table of GPUs, or the reason there is none."""
    host = socket.gethostname()
    now = dt.datetime.now().strftime("%H:%M:%S")
    if not readings:
        detail = f": {unavailable_reason}" if unavailable_reason else ""
        return Panel(
            Text(f"{NO_GPU_MESSAGE} on {host}{detail}.", style="bold yellow"),
            title=f"gpu-optimizer top · {now}",
        )
    first = readings[0]
    driver = f"driver {first.driver_version or '?'} · CUDA {first.cuda_driver_version or '?'}"
    table = Table(title=f"{host} · {driver} · {now}")
    table.add_column("GPU")
    table.add_column("Memory")
    table.add_column("Util", justify="right")
    table.add_column("Mem copy", justify="right")
    table.add_column("Temp", justify="right")
    table.add_column("Power", justify="right")
    table.add_column("SM clock", justify="right")
    table.add_column("Processes (pid name memory)")
    for r in readings:
        sm_mhz = None if r.sm_clock_hertz is None else r.sm_clock_hertz / 1e6
        table.add_row(
            Text(f"{r.index} {r.name}\n{r.uuid}", overflow="fold"),
            _memory(r),
            _or_dash(r.utilization_ratio, ".0%"),
            _or_dash(r.memory_copy_utilization_ratio, ".0%"),
            Text(
                _or_dash(r.temperature_celsius, ".0f") + " °C",
                style=_level(
                    None if r.temperature_celsius is None else r.temperature_celsius / 100,
                    0.75,
                    0.85,
                ),
            ),
            _power(r),
            _or_dash(sm_mhz, ".0f") + " MHz",
            _processes(r),
        )
    return table


def run_top(
    interval: float = 1.0,
    once: bool = False,
    reader: NvmlReader | None = None,
    console: Console | None = None,
) -> int:
    """Show the GPUs until Ctrl-C (or once); no GPU is shown as such, not as an error."""
    reader = reader or default_reader()
    console = console or Console()

    def frame() -> RenderableType:
        return render(reader.read(), reader.unavailable_reason)

    if once:
        console.print(frame())
        return 0
    try:
        with Live(frame(), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0
