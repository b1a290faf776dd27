#!/usr/bin/env python3
"""Fetch the real-footage samples into data/samples/<package>/ (cached).

- pose2sim (BSD-3-Clause, by David Pagnon) ships four synchronised views of
  one athlete (Demo_SinglePerson, 60 fps, 100 frames) and four views of a
  multi-person scene (Demo_MultiPerson), with their Qualisys calibration and
  the checkerboard images it was made from. They are the project's standard
  4-stream test and its real multi-camera rig.
- sports2d (BSD-3-Clause, same author) ships one outdoor clip: an athlete
  doing jumping jacks on a box, a passer-by, then the athlete jumps down.

Each wheel is fetched with pip (the ordinary registry client), the wanted
members are unzipped, and the licence travels with them. `--only NAME`
fetches one package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LICENSE = "BSD-3-Clause"
VIEWS = ("cam01", "cam02", "cam03", "cam04")
_P2S = "Pose2Sim/Demo_SinglePerson/calibration"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    members: dict[str, str]  # target path under the destination -> member of the wheel


PACKAGES: dict[str, Package] = {
    "pose2sim": Package(
        "pose2sim",
        "0.10.49",
        {
            **{f"single/{v}.mp4": f"Pose2Sim/Demo_SinglePerson/videos/{v}.mp4" for v in VIEWS},
            **{f"multi/{v}.mp4": f"Pose2Sim/Demo_MultiPerson/videos/{v}.mp4" for v in VIEWS},
            "single/Calib.qca.txt": f"{_P2S}/Calib.qca.txt",
            "single/Config.toml": "Pose2Sim/Demo_SinglePerson/Config.toml",
            "multi/Calib.qca.txt": "Pose2Sim/Demo_MultiPerson/calibration/Calib.qca.txt",
            **{
                f"single/calibration/intrinsics/{v}_{i:02d}_int.jpg": (
                    f"{_P2S}/intrinsics/int_{v}_img/{v}_{i:02d}_int.jpg"
                )
                for v in VIEWS
                for i in range(1, 8)
            },
            **{
                f"single/calibration/extrinsics/{v}_ext.png": f"{_P2S}/extrinsics/{v}_ext.png"
                for v in VIEWS
            },
            "LICENSE": "pose2sim-0.10.49.dist-info/licenses/LICENSE",
        },
    ),
    "sports2d": Package(
        "sports2d",
        "0.8.34",
        {
            "demo.mp4": "Sports2D/Demo/demo.mp4",
            "Calib_demo.toml": "Sports2D/Demo/Calib_demo.toml",
            "Config_demo.toml": "Sports2D/Demo/Config_demo.toml",
            "LICENSE": "sports2d-0.8.34.dist-info/licenses/LICENSE",
        },
    ),
}
# Kept for callers that name the Pose2Sim set directly.
PACKAGE = "pose2sim"
VERSION = PACKAGES[PACKAGE].version
MEMBERS = PACKAGES[PACKAGE].members


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pip_download_command() -> list[str]:
    """pip from this interpreter, else pip run through uv (uv venvs have no pip)."""
    if (
        subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode
        == 0
    ):
        return [sys.executable, "-m", "pip", "download"]
    if uvx := shutil.which("uvx"):
        return [uvx, "pip", "download"]
    if pip := shutil.which("pip3") or shutil.which("pip"):
        return [pip, "download"]
    raise SystemExit("error: neither pip nor uv is available to download pose2sim")


def is_cached(dest: Path, package: Package = PACKAGES[PACKAGE]) -> bool:
    manifest = dest / "manifest.json"
    if not manifest.exists():
        return False
    recorded = json.loads(manifest.read_text()).get("files", {})
    return set(recorded) == set(package.members) and all(
        (dest / name).exists() and _sha256(dest / name) == digest
        for name, digest in recorded.items()
    )


def fetch(dest: Path, package: Package = PACKAGES[PACKAGE]) -> None:
    spec = f"{package.name}=={package.version}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [*_pip_download_command(), "--no-deps", "-d", tmp, spec]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"error: pip download {spec} failed:\n{proc.stderr}")
        wheels = list(Path(tmp).glob(f"{package.name}-{package.version}-*.whl"))
        if not wheels:
            raise SystemExit(f"error: no {package.name} wheel was downloaded")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for target, member in package.members.items():
                out = dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(member) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    manifest = {
        "source": f"PyPI {spec}",
        "license": LICENSE,
        "license_file": "LICENSE",
        "files": {name: _sha256(dest / name) for name in package.members},
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dest",
        type=Path,
        default=REPO / "data" / "samples",
        help="each package goes into DEST/<package>/ (default: data/samples)",
    )
    parser.add_argument("--only", choices=sorted(PACKAGES), help="fetch this package only")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    for name, package in PACKAGES.items():
        if args.only and name != args.only:
            continue
        dest = args.dest / name
        count = len(package.members)
        if not args.force and is_cached(dest, package):
            print(f"samples present in {dest} ({count} files, sha256 verified)")
            continue
        fetch(dest, package)
        print(f"fetched {count} files of {name}=={package.version} ({LICENSE}) into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
