"""Machine profiles: packaged defaults, override file, validation errors, NVML name matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_optimizer.machines import (
    DEFAULT_MACHINES_FILE,
    MACHINES_FILE_ENV,
    MachineProfile,
    MachineProfileError,
    load_machine_profiles,
    match_profile,
)

GIB = 2**30


def test_default_profiles_are_the_three_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MACHINES_FILE_ENV, raising=False)
    profiles = load_machine_profiles()
    assert profiles == [
        MachineProfile("rtx-5070-ti", "NVIDIA GeForce RTX 5070 Ti", 16 * GIB, "12.0"),
        MachineProfile("rtx-4070-ti", "NVIDIA GeForce RTX 4070 Ti", 12 * GIB, "8.9"),
        MachineProfile("rtx-3070-ti", "NVIDIA GeForce RTX 3070 Ti", 8 * GIB, "8.6"),
    ]
    assert profiles[2].vram_gib == 8.0
    assert DEFAULT_MACHINES_FILE.is_file()


def test_env_var_points_to_another_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "m.toml"
    file.write_text(
        '[[machine]]\nname = "lab"\ngpu = "NVIDIA A100-SXM4-40GB"\n'
        'vram_bytes = 42949672960\ncompute_capability = "8.0"\n'
    )
    monkeypatch.setenv(MACHINES_FILE_ENV, str(file))
    assert load_machine_profiles() == [
        MachineProfile("lab", "NVIDIA A100-SXM4-40GB", 40 * GIB, "8.0")
    ]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('name = "x"\ngpu = "g"\nvram_bytes = -1\ncompute_capability = "8.6"', "vram_bytes"),
        ('name = "x"\ngpu = "g"\nvram_bytes = "8GB"\ncompute_capability = "8.6"', "vram_bytes"),
        (
            'name = "x"\ngpu = "g"\nvram_bytes = 1\ncompute_capability = "sm86"',
            "compute_capability",
        ),
        ('name = "x"\nvram_bytes = 1\ncompute_capability = "8.6"', "missing field(s) ['gpu']"),
        (
            'name = "x"\ngpu = "g"\nvram_bytes = 1\ncompute_capability = "8.6"\nvram = 2',
            "unknown field",
        ),
        ('name = ""\ngpu = "g"\nvram_bytes = 1\ncompute_capability = "8.6"', "'name'"),
    ],
)
def test_bad_entry_names_file_and_field(tmp_path: Path, body: str, needle: str) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(f"[[machine]]\n{body}\n")
    with pytest.raises(MachineProfileError) as info:
        load_machine_profiles(file)
    assert needle in str(info.value)
    assert str(file) in str(info.value)


def test_missing_invalid_empty_and_duplicate_files(tmp_path: Path) -> None:
    with pytest.raises(MachineProfileError, match="not found"):
        load_machine_profiles(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[machine]\n")
    with pytest.raises(MachineProfileError, match="not valid TOML"):
        load_machine_profiles(broken)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(MachineProfileError, match="no \\[\\[machine\\]\\]"):
        load_machine_profiles(empty)
    entry = '[[machine]]\nname = "a"\ngpu = "g"\nvram_bytes = 1\ncompute_capability = "8.6"\n'
    dup = tmp_path / "dup.toml"
    dup.write_text(entry + entry)
    with pytest.raises(MachineProfileError, match="duplicate"):
        load_machine_profiles(dup)


def test_match_profile_by_nvml_name() -> None:
    profiles = load_machine_profiles(DEFAULT_MACHINES_FILE)
    # NVML reports a total slightly below the marketing size.
    found = match_profile("NVIDIA GeForce RTX 4070 Ti", 12_878_086_144, profiles)
    assert found is not None and found.name == "rtx-4070-ti"
    assert match_profile("rtx 3070 ti", profiles=profiles).name == "rtx-3070-ti"  # type: ignore[union-attr]
    assert match_profile("NVIDIA GeForce RTX 4070 Ti SUPER", None, profiles) is None
    assert match_profile("NVIDIA H100 80GB HBM3", 80 * GIB, profiles) is None


def test_match_profile_prefers_closest_memory() -> None:
    profiles = [
        MachineProfile("small", "NVIDIA GeForce RTX 5070 Ti", 12 * GIB, "12.0"),
        MachineProfile("big", "NVIDIA GeForce RTX 5070 Ti", 16 * GIB, "12.0"),
    ]
    assert match_profile("NVIDIA GeForce RTX 5070 Ti", 16_302_000_000, profiles).name == "big"  # type: ignore[union-attr]
    assert match_profile("NVIDIA GeForce RTX 5070 Ti", 12_500_000_000, profiles).name == "small"  # type: ignore[union-attr]
