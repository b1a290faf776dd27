"""GPU readings over NVML (the `nvidia-ml-py` package, imported as `pynvml`).

A machine without the NVIDIA driver, without NVML or without GPUs is a normal
state here: `read_gpus()` returns `[]` and nothing is logged as an error. A
query a GPU does not support (common on GeForce cards) leaves that one field
`None` instead of failing the whole reading.

The NVML library is injectable (`NvmlLibrary`): the real one is the `pynvml`
module itself, tests and demos use `RecordedNvml`, which replays readings
recorded from real GPUs (see `record_nvml`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# CUDA numbers devices fastest-first by default, NVML by PCI bus id. With
# mixed cards in one machine, "GPU 0" in /gpus, in the metrics and in
# torch.cuda would then be different cards. PCI order makes them agree. It must
# be set before CUDA initializes in this process, so it is set at import.
CUDA_DEVICE_ORDER = "PCI_BUS_ID"


def ensure_pci_bus_device_order() -> None:
    current = os.environ.setdefault("CUDA_DEVICE_ORDER", CUDA_DEVICE_ORDER)
    if current != CUDA_DEVICE_ORDER:
        logger.warning(
            "CUDA_DEVICE_ORDER=%s: CUDA device indices may differ from NVML's; "
            "unset it or set CUDA_DEVICE_ORDER=%s so they agree",
            current,
            CUDA_DEVICE_ORDER,
        )


ensure_pci_bus_device_order()

# NVML return codes (nvml.h); the same values as pynvml's constants, repeated so
# that this module imports on a machine where pynvml is missing.
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1

# A field this GPU or driver cannot report: expected, left None quietly.
_UNAVAILABLE_CODES = frozenset(
    {
        NVML_ERROR_NOT_SUPPORTED,
        NVML_ERROR_NO_PERMISSION,
        NVML_ERROR_NOT_FOUND,
        NVML_ERROR_FUNCTION_NOT_FOUND,
    }
)
# NVML itself is absent: no driver on this machine.
_NO_NVML_CODES = frozenset({NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_DRIVER_NOT_LOADED})

_KIB = 1024


class NvmlError(Exception):
    """An NVML call failed with `code` (pynvml raises its own `NVMLError` with `.value`)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"NVML error {code}")
        self.value = code


class NvmlLibrary(Protocol):
    """The pynvml functions this module uses; the `pynvml` module satisfies it."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str | bytes: ...
    def nvmlSystemGetCudaDriverVersion(self) -> int: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int: ...
    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int) -> int: ...
    def nvmlDeviceGetPcieThroughput(self, handle: Any, counter: int) -> int: ...
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> Sequence[Any]: ...
    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> Sequence[Any]: ...
    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]: ...


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory_bytes: int | None  # None where the driver cannot tell (Windows WDDM)


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment, in base units; None where the GPU cannot report a value."""

    index: int
    uuid: str
    name: str
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    utilization_ratio: float | None = None
    memory_copy_utilization_ratio: float | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    sm_clock_hertz: int | None = None
    memory_clock_hertz: int | None = None
    pcie_tx_bytes_per_second: int | None = None
    pcie_rx_bytes_per_second: int | None = None
    processes: tuple[GpuProcess, ...] | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    compute_capability: str | None = None

    @property
    def processes_memory_used_bytes(self) -> int | None:
        """Memory of the processes that report it; None if the process list is unavailable."""
        if self.processes is None:
            return None
        return sum(p.used_memory_bytes or 0 for p in self.processes)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "value", None)
    return code if isinstance(code, int) else None


def _is_nvml_error(exc: BaseException) -> bool:
    if isinstance(exc, NvmlError):
        return True
    try:
        import pynvml
    except ImportError:
        return False
    # NVMLLibraryMismatchError: an unversioned function this driver's NVML lacks.
    return isinstance(exc, (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError))


def _format_cuda_version(version: int) -> str:
    # NVML encodes CUDA 12.8 as 12080.
    return f"{version // 1000}.{(version % 1000) // 10}"


class NvmlReader:
    """Reads every GPU through one NVML library, initialised once and reused.

    Thread-safe: concurrent scrapes and `/gpus` requests share one lock, and a
    reading younger than `max_age_s` is returned from cache so that several
    scrapers cost one NVML pass.
    """

    def __init__(self, library: NvmlLibrary | None = None) -> None:
        self._library = library
        self._lock = threading.Lock()
        self._initialized = False
        self._cache: list[GpuReading] = []
        self._cache_time = -float("inf")
        self._warned: set[tuple[object, ...]] = set()
        self.unavailable_reason: str | None = None

    def _load(self) -> NvmlLibrary | None:
        if self._library is None:
            try:
                import pynvml
            except ImportError:
                self.unavailable_reason = "the nvidia-ml-py package is not installed"
                return None
            self._library = pynvml  # type: ignore[assignment]
        return self._library

    def _init(self) -> NvmlLibrary | None:
        library = self._load()
        if library is None or self._initialized:
            return library
        try:
            library.nvmlInit()
        except Exception as exc:
            if not _is_nvml_error(exc):
                raise
            code = _error_code(exc)
            if code in _NO_NVML_CODES:
                self.unavailable_reason = f"no NVIDIA driver found (NVML: {exc})"
                logger.debug("NVML unavailable: %s", exc)
            else:
                self.unavailable_reason = f"NVML failed to initialise: {exc}"
                self._warn_once(("init", code), "NVML failed to initialise: %s", exc)
            return None
        self._initialized = True
        self.unavailable_reason = None
        return library

    @property
    def available(self) -> bool:
        """True once NVML has initialised (the driver answers), GPUs or not."""
        return self._initialized

    def read(self, max_age_s: float = 0.0) -> list[GpuReading]:
        with self._lock:
            now = time.monotonic()
            if max_age_s > 0 and now - self._cache_time < max_age_s:
                return list(self._cache)
            library = self._init()
            readings = [] if library is None else self._read_all(library)
            self._cache, self._cache_time = readings, time.monotonic()
            return list(readings)

    def close(self) -> None:
        with self._lock:
            if self._initialized and self._library is not None:
                try:
                    self._library.nvmlShutdown()
                except Exception as exc:
                    if not _is_nvml_error(exc):
                        raise
                self._initialized = False

    def _read_all(self, library: NvmlLibrary) -> list[GpuReading]:
        try:
            count = library.nvmlDeviceGetCount()
        except Exception as exc:
            if not _is_nvml_error(exc):
                raise
            self.unavailable_reason = f"NVML could not count GPUs: {exc}"
            self._warn_once(("count", _error_code(exc)), "NVML could not count GPUs: %s", exc)
            return []
        if count == 0:
            self.unavailable_reason = "NVML found no GPU"
        driver = self._query(library.nvmlSystemGetDriverVersion, -1, "driver_version")
        cuda = self._query(library.nvmlSystemGetCudaDriverVersion, -1, "cuda_driver_version")
        readings = []
        for index in range(count):
            reading = self._read_one(
                library,
                index,
                driver_version=None if driver is None else _text(driver),
                cuda_driver_version=None if cuda is None else _format_cuda_version(cuda),
            )
            if reading is not None:
                readings.append(reading)
        return readings

    def _query(self, fn: Any, index: int, what: str, *args: Any) -> Any:
        """One NVML call; an error leaves its field None instead of failing the reading."""
        try:
            return fn(*args)
        except Exception as exc:
            if not _is_nvml_error(exc):
                raise
            code = _error_code(exc)
            if code not in _UNAVAILABLE_CODES and code is not None:
                self._warn_once(
                    (index, what, code), "NVML %s of GPU %d failed: %s", what, index, exc
                )
            return None

    def _warn_once(self, key: tuple[object, ...], message: str, *args: object) -> None:
        """Warn about a failure once, not on every scrape."""
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _read_one(
        self,
        library: NvmlLibrary,
        index: int,
        *,
        driver_version: str | None,
        cuda_driver_version: str | None,
    ) -> GpuReading | None:
        handle = self._query(library.nvmlDeviceGetHandleByIndex, index, "handle", index)
        if handle is None:
            return None

        def ask(what: str, fn: Any, *args: Any) -> Any:
            return self._query(fn, index, what, *args)

        name = ask("name", library.nvmlDeviceGetName, handle)
        uuid = ask("uuid", library.nvmlDeviceGetUUID, handle)
        memory = ask("memory", library.nvmlDeviceGetMemoryInfo, handle)
        util = ask("utilization", library.nvmlDeviceGetUtilizationRates, handle)
        temperature = ask(
            "temperature", library.nvmlDeviceGetTemperature, handle, NVML_TEMPERATURE_GPU
        )
        power_mw = ask("power", library.nvmlDeviceGetPowerUsage, handle)
        limit_mw = ask("power_limit", library.nvmlDeviceGetEnforcedPowerLimit, handle)
        sm_mhz = ask("sm_clock", library.nvmlDeviceGetClockInfo, handle, NVML_CLOCK_SM)
        mem_mhz = ask("memory_clock", library.nvmlDeviceGetClockInfo, handle, NVML_CLOCK_MEM)
        # NVML reports PCIe throughput in KB/s where KB is 1024 bytes (nvml.h).
        tx_kib = ask(
            "pcie_tx", library.nvmlDeviceGetPcieThroughput, handle, NVML_PCIE_UTIL_TX_BYTES
        )
        rx_kib = ask(
            "pcie_rx", library.nvmlDeviceGetPcieThroughput, handle, NVML_PCIE_UTIL_RX_BYTES
        )
        capability = ask("compute_capability", library.nvmlDeviceGetCudaComputeCapability, handle)
        return GpuReading(
            index=index,
            uuid="" if uuid is None else _text(uuid),
            name="" if name is None else _text(name),
            memory_total_bytes=None if memory is None else int(memory.total),
            memory_used_bytes=None if memory is None else int(memory.used),
            memory_free_bytes=None if memory is None else int(memory.free),
            utilization_ratio=None if util is None else util.gpu / 100,
            memory_copy_utilization_ratio=None if util is None else util.memory / 100,
            temperature_celsius=None if temperature is None else float(temperature),
            power_watts=None if power_mw is None else power_mw / 1000,
            power_limit_watts=None if limit_mw is None else limit_mw / 1000,
            sm_clock_hertz=None if sm_mhz is None else int(sm_mhz) * 1_000_000,
            memory_clock_hertz=None if mem_mhz is None else int(mem_mhz) * 1_000_000,
            pcie_tx_bytes_per_second=None if tx_kib is None else int(tx_kib) * _KIB,
            pcie_rx_bytes_per_second=None if rx_kib is None else int(rx_kib) * _KIB,
            processes=self._processes(library, handle, index),
            driver_version=driver_version,
            cuda_driver_version=cuda_driver_version,
            compute_capability=None if capability is None else f"{capability[0]}.{capability[1]}",
        )

    def _processes(
        self, library: NvmlLibrary, handle: Any, index: int
    ) -> tuple[GpuProcess, ...] | None:
        """Compute and graphics processes, one entry per pid (a process can be both)."""
        compute = self._query(
            library.nvmlDeviceGetComputeRunningProcesses, index, "compute_processes", handle
        )
        graphics = self._query(
            library.nvmlDeviceGetGraphicsRunningProcesses, index, "graphics_processes", handle
        )
        if compute is None and graphics is None:
            return None
        by_pid: dict[int, GpuProcess] = {}
        for info in [*(compute or []), *(graphics or [])]:
            pid = int(info.pid)
            used = getattr(info, "usedGpuMemory", None)
            if pid not in by_pid or by_pid[pid].used_memory_bytes is None:
                by_pid[pid] = GpuProcess(
                    pid=pid, used_memory_bytes=None if used is None else int(used)
                )
        return tuple(sorted(by_pid.values(), key=lambda p: p.pid))


@functools.cache
def default_reader() -> NvmlReader:
    """The process-wide reader over the real NVML (a FastAPI dependency too)."""
    return NvmlReader()


def read_gpus(library: NvmlLibrary | None = None) -> list[GpuReading]:
    """Every GPU NVML sees, in NVML (= PCI bus = CUDA) order; `[]` without NVML or GPUs."""
    if library is None:
        return default_reader().read()
    return NvmlReader(library).read()


# --- recorded NVML: replay of readings recorded from real GPUs -----------------------


class _Record:
    """Attribute access over a recorded dict, like pynvml's ctypes structs."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)


class RecordedNvml:
    """An `NvmlLibrary` that answers from a recording (`record_nvml`'s output).

    A recorded answer `{"error": CODE}` raises that NVML error, so "not
    supported" answers replay as they happened on the real card. A recording
    that is `None` replays a machine without NVML (init fails: no library).
    """

    def __init__(self, recording: Mapping[str, Any] | None) -> None:
        self._recording = recording

    @classmethod
    def from_file(cls, path: str | Path) -> RecordedNvml:
        return cls(json.loads(Path(path).read_text()))

    def _answer(self, value: Any) -> Any:
        if isinstance(value, Mapping) and set(value) == {"error"}:
            raise NvmlError(int(value["error"]), f"recorded NVML error {value['error']}")
        return value

    def _device(self, handle: int, key: str) -> Any:
        assert self._recording is not None
        return self._answer(self._recording["devices"][handle][key])

    def nvmlInit(self) -> None:
        if self._recording is None:
            raise NvmlError(NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        return None

    def nvmlSystemGetDriverVersion(self) -> str:
        assert self._recording is not None
        return str(self._answer(self._recording["driver_version"]))

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        assert self._recording is not None
        return int(self._answer(self._recording["cuda_driver_version"]))

    def nvmlDeviceGetCount(self) -> int:
        assert self._recording is not None
        return len(self._recording["devices"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return str(self._device(handle, "name"))

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return str(self._device(handle, "uuid"))

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return _Record(self._device(handle, "memory"))

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return _Record(self._device(handle, "utilization_percent"))

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return int(self._device(handle, "temperature_celsius"))

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return int(self._device(handle, "power_milliwatts"))

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return int(self._device(handle, "power_limit_milliwatts"))

    def nvmlDeviceGetClockInfo(self, handle: int, clock_type: int) -> int:
        key = {NVML_CLOCK_SM: "sm", NVML_CLOCK_MEM: "memory"}[clock_type]
        return int(self._answer(self._device(handle, "clocks_mhz")[key]))

    def nvmlDeviceGetPcieThroughput(self, handle: int, counter: int) -> int:
        key = {NVML_PCIE_UTIL_TX_BYTES: "tx", NVML_PCIE_UTIL_RX_BYTES: "rx"}[counter]
        return int(self._answer(self._device(handle, "pcie_kib_per_second")[key]))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return [_Record(p) for p in self._device(handle, "compute_processes")]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[Any]:
        return [_Record(p) for p in self._device(handle, "graphics_processes")]

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        major, minor = self._device(handle, "compute_capability")
        return int(major), int(minor)


def record_nvml(library: NvmlLibrary | None = None) -> dict[str, Any] | None:
    """Record what NVML answers on this machine, in the format `RecordedNvml` replays.

    Run it on a GPU machine (`python -c "..."` and `json.dumps`) to add a fixture.
    """
    if library is None:
        try:
            import pynvml
        except ImportError:
            return None
        library = pynvml  # type: ignore[assignment]
    assert library is not None
    try:
        library.nvmlInit()
    except Exception as exc:
        if _is_nvml_error(exc) and _error_code(exc) in _NO_NVML_CODES:
            return None
        raise

    def answer(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            if not _is_nvml_error(exc):
                raise
            return {"error": _error_code(exc)}

    def processes(fn: Any, handle: Any) -> Any:
        got = answer(fn, handle)
        if isinstance(got, dict):
            return got
        return [{"pid": int(p.pid), "usedGpuMemory": p.usedGpuMemory} for p in got]

    def struct(value: Any, *names: str) -> Any:
        return value if isinstance(value, dict) else {n: int(getattr(value, n)) for n in names}

    try:
        devices = []
        for index in range(library.nvmlDeviceGetCount()):
            h = library.nvmlDeviceGetHandleByIndex(index)
            capability = answer(library.nvmlDeviceGetCudaComputeCapability, h)
            devices.append(
                {
                    "name": _text(library.nvmlDeviceGetName(h)),
                    "uuid": _text(library.nvmlDeviceGetUUID(h)),
                    "memory": struct(
                        answer(library.nvmlDeviceGetMemoryInfo, h), "total", "used", "free"
                    ),
                    "utilization_percent": struct(
                        answer(library.nvmlDeviceGetUtilizationRates, h), "gpu", "memory"
                    ),
                    "temperature_celsius": answer(
                        library.nvmlDeviceGetTemperature, h, NVML_TEMPERATURE_GPU
                    ),
                    "power_milliwatts": answer(library.nvmlDeviceGetPowerUsage, h),
                    "power_limit_milliwatts": answer(library.nvmlDeviceGetEnforcedPowerLimit, h),
                    "clocks_mhz": {
                        "sm": answer(library.nvmlDeviceGetClockInfo, h, NVML_CLOCK_SM),
                        "memory": answer(library.nvmlDeviceGetClockInfo, h, NVML_CLOCK_MEM),
                    },
                    "pcie_kib_per_second": {
                        "tx": answer(
                            library.nvmlDeviceGetPcieThroughput, h, NVML_PCIE_UTIL_TX_BYTES
                        ),
                        "rx": answer(
                            library.nvmlDeviceGetPcieThroughput, h, NVML_PCIE_UTIL_RX_BYTES
                        ),
                    },
                    "compute_processes": processes(library.nvmlDeviceGetComputeRunningProcesses, h),
                    "graphics_processes": processes(
                        library.nvmlDeviceGetGraphicsRunningProcesses, h
                    ),
                    "compute_capability": (
                        capability if isinstance(capability, dict) else list(capability)
                    ),
                }
            )
        return {
            "driver_version": answer(
                lambda: _text(library.nvmlSystemGetDriverVersion())  # type: ignore[union-attr]
            ),
            "cuda_driver_version": answer(library.nvmlSystemGetCudaDriverVersion),
            "devices": devices,
        }
    finally:
        library.nvmlShutdown()
