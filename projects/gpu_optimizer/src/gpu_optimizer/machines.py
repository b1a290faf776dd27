"""Machine profiles: the GPUs we plan for, read from one editable TOML file.

Planning for a GPU you do not own needs only its memory size and compute
capability, so a profile is exactly that. The packaged ``machines.toml`` holds
the three default machines; ``GPU_OPT_MACHINES_FILE`` points to another file.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 needs the backport
    import tomli as tomllib

MACHINES_FILE_ENV = "GPU_OPT_MACHINES_FILE"
DEFAULT_MACHINES_FILE = Path(__file__).with_name("machines.toml")
_FIELDS = ("name", "gpu", "vram_bytes", "compute_capability")
_CC_PATTERN = re.compile(r"^\d+\.\d+$")


class MachineProfileError(ValueError):
    """The machine profile file is missing, unreadable or has a bad entry."""


@dataclass(frozen=True)
class MachineProfile:
    name: str
    gpu: str
    vram_bytes: int
    compute_capability: str

    @property
    def vram_gib(self) -> float:
        return self.vram_bytes / 2**30


def machines_file() -> Path:
    """The profile file in effect: the environment variable wins over the packaged default."""
    override = os.environ.get(MACHINES_FILE_ENV)
    return Path(override) if override else DEFAULT_MACHINES_FILE


def _parse_entry(entry: Any, index: int, path: Path) -> MachineProfile:
    where = f"{path}: machine #{index + 1}"
    if not isinstance(entry, dict):
        raise MachineProfileError(f"{where}: expected a table, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise MachineProfileError(
            f"{where}: unknown field(s) {unknown}; allowed fields are {list(_FIELDS)}"
        )
    missing = [f for f in _FIELDS if f not in entry]
    if missing:
        raise MachineProfileError(f"{where}: missing field(s) {missing}")
    name, gpu, vram, cc = (entry[f] for f in _FIELDS)
    if not isinstance(name, str) or not name.strip():
        raise MachineProfileError(f"{where}: field 'name' must be a non-empty string, got {name!r}")
    where = f"{path}: machine {name!r}"
    if not isinstance(gpu, str) or not gpu.strip():
        raise MachineProfileError(f"{where}: field 'gpu' must be a non-empty string, got {gpu!r}")
    if isinstance(vram, bool) or not isinstance(vram, int) or vram <= 0:
        raise MachineProfileError(
            f"{where}: field 'vram_bytes' must be a positive integer (bytes), got {vram!r}"
        )
    if isinstance(cc, float):
        cc = f"{cc:.1f}"
    if not isinstance(cc, str) or not _CC_PATTERN.match(cc):
        raise MachineProfileError(
            f"{where}: field 'compute_capability' must look like \"8.6\", got {cc!r}"
        )
    return MachineProfile(name=name, gpu=gpu, vram_bytes=vram, compute_capability=cc)


def load_machine_profiles(path: str | os.PathLike[str] | None = None) -> list[MachineProfile]:
    """Read and validate every profile; an error names the file, the machine and the field."""
    file = Path(path) if path is not None else machines_file()
    try:
        with file.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise MachineProfileError(f"{file}: machine profile file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise MachineProfileError(f"{file}: not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"machine"})
    if extra:
        raise MachineProfileError(f"{file}: unknown top-level key(s) {extra}; use [[machine]]")
    entries = data.get("machine")
    if not isinstance(entries, list) or not entries:
        raise MachineProfileError(f"{file}: no [[machine]] tables found")
    profiles = [_parse_entry(entry, i, file) for i, entry in enumerate(entries)]
    names = [p.name for p in profiles]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MachineProfileError(f"{file}: duplicate machine name(s) {duplicates}")
    return profiles


def _normalise(gpu_name: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", gpu_name.lower().replace("nvidia", "").replace("geforce", ""))


def match_profile(
    gpu_name: str,
    total_bytes: int | None = None,
    profiles: list[MachineProfile] | None = None,
) -> MachineProfile | None:
    """The profile describing a GPU that NVML reports, or None.

    Names are compared without vendor words and punctuation ("NVIDIA GeForce
    RTX 4070 Ti" == "rtx 4070 ti"). When several profiles share a GPU model,
    the one whose VRAM is closest to ``total_bytes`` wins; NVML's total is a
    little below the marketing size, so memory is never required to match.
    """
    candidates = profiles if profiles is not None else load_machine_profiles()
    wanted = _normalise(gpu_name).split()
    matches = [p for p in candidates if _normalise(p.gpu).split() == wanted]
    if not matches:
        return None
    if total_bytes is None or len(matches) == 1:
        return matches[0]
    return min(matches, key=lambda p: abs(p.vram_bytes - total_bytes))
