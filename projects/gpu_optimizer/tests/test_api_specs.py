"""Which model specs the service accepts: user code only from GPU_OPT_USER_MODELS_DIR."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_optimizer.jobs.specs import SpecError, UserCodeRefused, worker_spec


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "pkg").mkdir(parents=True)
    (root / "net.py").write_text("def make(): ...\n")
    (root / "pkg" / "__init__.py").write_text("def make(): ...\n")
    (root / "pkg" / "deep.py").write_text("def make(): ...\n")
    (tmp_path / "secret.py").write_text("def make(): ...\n")
    (root / "link.py").symlink_to(tmp_path / "secret.py")
    return root


@pytest.mark.parametrize("spec", ["resnet50", "yolo11n-pose.yaml", "cfg/a:b.yaml"])
def test_built_in_specs_pass_through(spec: str, user_dir: Path) -> None:
    assert worker_spec(spec, user_dir) == spec
    assert worker_spec(spec, None) == spec


@pytest.mark.parametrize(
    ("spec", "file"),
    [
        ("net.py:make", "net.py"),
        ("net:make", "net.py"),
        ("pkg:make", "pkg/__init__.py"),
        ("pkg.deep:make", "pkg/deep.py"),
    ],
)
def test_user_specs_become_absolute_files_in_the_directory(
    spec: str, file: str, user_dir: Path
) -> None:
    assert worker_spec(spec, user_dir) == f"{(user_dir / file).resolve()}:make"
    assert worker_spec(f"{user_dir / 'net.py'}:make", user_dir) == f"{user_dir / 'net.py'}:make"


def test_user_code_is_refused_without_a_directory() -> None:
    with pytest.raises(UserCodeRefused, match="set GPU_OPT_USER_MODELS_DIR"):
        worker_spec("net.py:make", None)


@pytest.mark.parametrize("spec", ["../secret.py:make", "link.py:make", "/etc/passwd.py:make"])
def test_user_code_outside_the_directory_is_refused(spec: str, user_dir: Path) -> None:
    with pytest.raises(UserCodeRefused, match="outside the user models directory"):
        worker_spec(spec, user_dir)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty model spec"),
        ("net.py:", "identifier after the colon"),
        ("net.py:not valid", "identifier after the colon"),
        ("os:system", "os not found in the user models directory"),
        ("a-b:make", "is not a Python module path"),
        ("x" * 600, "longer than 512"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str, user_dir: Path) -> None:
    with pytest.raises(SpecError, match=message) as info:
        worker_spec(spec, user_dir)
    assert not isinstance(info.value, UserCodeRefused)
