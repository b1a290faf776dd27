"""pixi.toml, the pyproject files and the Makefile describe one environment.

Fails when a package is added to one manifest only, when a version range drifts,
or when a Makefile target has no pixi task of the same name (or the reverse).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
# Conda packages that are tools, not Python packages (the uv side gets them from Debian).
CONDA_TOOLS = {"python", "nodejs", "ffmpeg"}
# Makefile targets that are make's own business, not tasks.
MAKE_ONLY_TARGETS = {"help", "install", "ensure-uv"}


def _toml(path: Path) -> dict:
    with path.open("rb") as fh:
        return tomllib.load(fh)


@pytest.fixture(scope="module")
def pixi() -> dict:
    return _toml(REPO / "pixi.toml")


@pytest.fixture(scope="module")
def root() -> dict:
    return _toml(REPO / "pyproject.toml")


def _members(root: dict) -> dict[str, dict]:
    members = {}
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        for path in sorted(REPO.glob(pattern)):
            project = _toml(path / "pyproject.toml")["project"]
            members[project["name"]] = {"path": path, "project": project}
    return members


def _pixi_spec(value: str | dict) -> tuple[SpecifierSet, str | None, tuple[str, ...]]:
    if isinstance(value, str):
        return SpecifierSet("" if value == "*" else value), None, ()
    return (
        SpecifierSet(value.get("version", "")),
        value.get("markers"),
        tuple(sorted(value.get("extras", []))),
    )


def makefile_targets() -> dict[str, list[str]]:
    """Target name -> recipe lines, for the targets with a `## description`."""
    targets: dict[str, list[str]] = {}
    current = None
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^([a-z][a-z0-9-]*):.*##", line)
        if match:
            current = match.group(1)
            targets[current] = []
        elif line.startswith("\t") and current:
            targets[current].append(line.strip())
        elif line and not line.startswith("\t") and not line.startswith(("ifdef", "else", "endif")):
            current = None
    return targets


def test_workspace_members_are_editable_pixi_dependencies(pixi: dict, root: dict) -> None:
    members = _members(root)
    assert set(members) == {"pose-analyzer", "gpu-optimizer"}
    pypi = pixi["pypi-dependencies"]
    for name, member in members.items():
        assert name in pypi, f"{name} is a uv workspace member but not in pixi.toml"
        entry = pypi[name]
        assert entry.get("editable") is True
        assert (REPO / entry["path"]).resolve() == member["path"].resolve()
    extra = set(pypi) - set(members)
    assert not extra, f"pixi.toml [pypi-dependencies] has packages uv does not know: {extra}"


def test_dev_tools_match_the_dev_group(pixi: dict, root: dict) -> None:
    uv_dev = {}
    for raw in root["dependency-groups"]["dev"]:
        req = Requirement(raw)
        uv_dev[req.name] = req
    pixi_dev = pixi["feature"]["dev"]["pypi-dependencies"]
    assert set(pixi_dev) == set(uv_dev), (
        f"only in pyproject: {set(uv_dev) - set(pixi_dev)}; "
        f"only in pixi.toml: {set(pixi_dev) - set(uv_dev)}"
    )
    for name, req in uv_dev.items():
        spec, markers, extras = _pixi_spec(pixi_dev[name])
        assert spec == req.specifier, f"{name}: pixi {spec} vs pyproject {req.specifier}"
        assert extras == tuple(sorted(req.extras)), f"{name}: extras differ"
        pixi_marker = str(Marker(markers)) if markers else None
        assert pixi_marker == (str(req.marker) if req.marker else None), f"{name}: markers differ"


def test_cuda_torch_pins_agree_with_the_uv_workspace(pixi: dict, root: dict) -> None:
    cuda = pixi["feature"]["cuda"]
    assert cuda["system-requirements"]["cuda"] == "12.8"
    member_reqs = {}
    for member in _members(root).values():
        for raw in member["project"]["dependencies"]:
            req = Requirement(raw)
            member_reqs[req.name] = req
    for name in ("torch", "torchvision"):
        entry = cuda["pypi-dependencies"][name]
        assert entry["index"] == "https://download.pytorch.org/whl/cu128"
        assert SpecifierSet(entry["version"]) == member_reqs[name].specifier, name
    assert member_reqs["torch"].specifier == SpecifierSet("==2.10.*")
    assert member_reqs["torchvision"].specifier == SpecifierSet("==0.25.*")


def test_conda_dependencies_are_tools_only_and_python_is_compatible(pixi: dict, root: dict) -> None:
    conda = set(pixi["dependencies"])
    assert conda <= CONDA_TOOLS, f"Python packages belong in pyproject.toml: {conda - CONDA_TOOLS}"
    pixi_python = SpecifierSet(pixi["dependencies"]["python"])
    uv_python = SpecifierSet(root["project"]["requires-python"])
    for minor in range(8, 16):
        version = f"3.{minor}.0"
        if version in pixi_python:
            assert version in uv_python, f"pixi allows Python {version}, pyproject does not"
    for member in _members(root).values():
        assert SpecifierSet(member["project"]["requires-python"]) == uv_python


def test_pixi_declares_the_platforms_and_environments(pixi: dict) -> None:
    assert pixi["workspace"]["channels"] == ["conda-forge"]
    assert set(pixi["workspace"]["platforms"]) == {"linux-64", "win-64"}
    envs = pixi["environments"]
    assert "cuda" in envs["default"]["features"]
    assert "cuda" not in envs["cpu"]["features"]


def test_every_makefile_target_is_a_pixi_task(pixi: dict) -> None:
    tasks = pixi["tasks"]
    targets = makefile_targets()
    task_targets = set(targets) - MAKE_ONLY_TARGETS
    assert task_targets == set(tasks), (
        f"targets without task: {task_targets - set(tasks)}; "
        f"tasks without target: {set(tasks) - task_targets}"
    )
    for name in task_targets:
        assert targets[name] == [f"$(TASK) {name}"], f"target {name} must run its pixi task"
    for name, task in tasks.items():
        for dep in task.get("depends-on", []) if isinstance(task, dict) else []:
            assert dep in tasks, f"task {name} depends on unknown task {dep}"


def test_issue_targets_exist() -> None:
    required = {
        "help", "install", "validate", "validate-cuda", "download-models", "dev-session",
        "test", "lint", "format", "run-pose-analyzer", "run-gpu-optimizer", "run-all",
        "stop-all", "clean", "bench",
    }  # fmt: skip
    assert required <= set(makefile_targets())


def test_lock_keeps_exactly_one_opencv(root: dict) -> None:
    lock = _toml(REPO / "uv.lock")
    installable = []
    for package in lock["package"]:
        if not package["name"].startswith("opencv"):
            continue
        # A package is dropped when every edge to it is marked for no platform.
        edges = [
            dep
            for other in lock["package"]
            for dep in other.get("dependencies", [])
            if dep["name"] == package["name"]
        ]
        if any("sys_platform == 'never'" not in dep.get("marker", "") for dep in edges):
            installable.append(package["name"])
    assert installable == ["opencv-contrib-python-headless"]


def test_consistency_check_catches_a_package_in_one_manifest_only(
    pixi: dict, root: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks above really fail on drift (guards against a vacuous test)."""
    drifted = {**pixi, "pypi-dependencies": {**pixi["pypi-dependencies"], "requests": "*"}}
    with pytest.raises(AssertionError, match="requests"):
        test_workspace_members_are_editable_pixi_dependencies(drifted, root)
    dev = pixi["feature"]["dev"]["pypi-dependencies"]
    drifted_dev = {
        **pixi,
        "feature": {**pixi["feature"], "dev": {"pypi-dependencies": {**dev, "black": ">=24"}}},
    }
    with pytest.raises(AssertionError, match="black"):
        test_dev_tools_match_the_dev_group(drifted_dev, root)
