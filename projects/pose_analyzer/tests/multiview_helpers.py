"""Ground truth for the multi-view tests: the synthetic athlete lifted to 3D in metres.

`synthetic.skeleton` builds the body in body axes (forward, down, left) in
pixels of an ~850 px athlete; here it is scaled to metres, turned to a
heading, stood on the floor (world z up, like the Pose2Sim calibrations) and
projected through a real calibration with its distortion, so the 2D inputs
of the rig carry exactly the camera model the rig has to invert.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from synthetic import MOTIONS, PARAMS, _ease, skeleton, truth_angles

from pose_analyzer.keypoints import NUM_JOINTS, FramePoses, PersonPose
from pose_analyzer.multiview.calibration import CameraRig, load_calibration

M_PER_PX = 1.75 / 850.0
REPO = Path(__file__).resolve().parents[3]
DEMO_CALIB = REPO / "data" / "samples" / "pose2sim" / "single" / "Calib.qca.txt"
TEST_DATA = Path(__file__).resolve().parent / "data" / "multiview"
REAL = Path(__file__).resolve().parent / "data" / "real"
VIEWS = [f"cam0{i}" for i in range(1, 5)]


def demo_rig() -> CameraRig:
    import pytest

    if not DEMO_CALIB.exists():
        pytest.skip("Pose2Sim samples missing: run `make fetch-samples`")
    return load_calibration(DEMO_CALIB)


def body_to_world(body_px: np.ndarray, heading_deg: float, at: tuple[float, float]) -> np.ndarray:
    """Body axes (forward, down, left) px -> world metres, z up, lowest joint on the floor."""
    h = np.radians(heading_deg)
    fwd = np.array([np.cos(h), np.sin(h), 0.0])
    left = np.array([-np.sin(h), np.cos(h), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    b = body_px * M_PER_PX
    w = b[:, 0:1] * fwd + b[:, 1:2] * down + b[:, 2:3] * left
    w[:, 2] -= w[:, 2].min()
    w[:, 0] += at[0]
    w[:, 1] += at[1]
    return w


@dataclass
class Scene:
    t: np.ndarray  # (F,)
    points: np.ndarray  # (F, P, J, 3) metres
    truth: list[dict[str, np.ndarray]]  # per person: angle name -> (F,)
    frames: dict[str, list[FramePoses]]  # per view: the 2D detections
    owner: dict[str, list[list[int]]]  # per view, per frame: person index of each detection
    occluded: np.ndarray  # (F, P) view index hidden for that person


def squat_params(n: int, fps: float, reps: int, phase: float) -> list[dict[str, float]]:
    """Parameters of the synthetic squat per frame (cosine-eased, `reps` reps)."""
    motion = MOTIONS["squat"]
    period = n / fps / reps
    out = []
    for k in range(n):
        u = ((k / fps) / period + phase) % 1.0
        progress = float(
            _ease(np.array(min(u / 0.45, 1.0) if u < 0.45 else max(0.0, (0.9 - u) / 0.45)))
        )
        out.append(
            {
                key: motion.rest[key]
                + progress * (motion.extreme.get(key, motion.rest[key]) - motion.rest[key])
                for key in PARAMS
            }
        )
    return out


def make_scene(
    rig: CameraRig,
    *,
    frames: int = 60,
    fps: float = 60.0,
    noise_px: float = 0.0,
    occlude: bool = True,
    seed: int = 0,
    reps: int = 2,
    people_count: int = 2,
) -> Scene:
    """Two (or three) athletes squatting side by side, seen by every camera of `rig`."""
    rng = np.random.default_rng(seed)
    people = [
        {"heading": 30.0, "at": (-1.0, -0.1), "phase": 0.0},
        {"heading": 200.0, "at": (0.2, -0.6), "phase": 0.4},
        {"heading": 110.0, "at": (-0.2, 0.0), "phase": 0.7},
    ][:people_count]
    P, V = len(people), len(rig)
    t = np.arange(frames) / fps
    pts = np.zeros((frames, P, NUM_JOINTS, 3))
    truth: list[dict[str, np.ndarray]] = [{} for _ in people]
    for p, spec in enumerate(people):
        for k, params in enumerate(squat_params(frames, fps, reps, spec["phase"])):
            pts[k, p] = body_to_world(skeleton(params), spec["heading"], spec["at"])
            for name, value in truth_angles(params, "side").items():
                truth[p].setdefault(name, np.full(frames, np.nan))[k] = value
    occluded = rng.integers(0, V, size=(frames, P)) if occlude else np.full((frames, P), -1)
    out: dict[str, list[FramePoses]] = {c.name: [] for c in rig}
    owner: dict[str, list[list[int]]] = {c.name: [] for c in rig}
    for v, cam in enumerate(rig.cameras):
        uv = cam.project(pts)  # (F, P, J, 2)
        w, h = cam.size
        for k in range(frames):
            found, who = [], []
            for p in rng.permutation(P):  # detection order carries no identity
                if occluded[k, p] == v:
                    continue
                kp = np.zeros((NUM_JOINTS, 3), np.float32)
                kp[:, :2] = uv[k, p] + (rng.normal(0, noise_px, (NUM_JOINTS, 2)) if noise_px else 0)
                kp[:, 2] = 0.95
                inside = (kp[:, 0] >= 0) & (kp[:, 0] < w) & (kp[:, 1] >= 0) & (kp[:, 1] < h)
                kp[~inside, 2] = 0.0
                found.append(PersonPose(kp))
                who.append(int(p))
            out[cam.name].append(FramePoses(k, float(t[k]), w, h, found))
            owner[cam.name].append(who)
    return Scene(t, pts, truth, out, owner, occluded)


def make_rig_data_dir(root: Path, frames: int = 360, reps: int = 3) -> Path:
    """A service data directory for rigs: the demo calibration, the demo's cached real
    MediaPipe detections per view (`demo/cam0N.jsonl`) and a synthetic squatter seen
    by the same four cameras (`synth/cam0N.jsonl`, `reps` squats over `frames` at 60 fps)."""
    import shutil

    from pose_analyzer.detectors.replay import write_keypoints

    rig = demo_rig()  # skips without the samples (the calibration comes with them)
    data = root / "data"
    (data / "demo").mkdir(parents=True)
    shutil.copy(DEMO_CALIB, data / "Calib.qca.txt")
    for v in VIEWS:
        shutil.copy(REAL / f"pose2sim_single_{v}.jsonl", data / "demo" / f"{v}.jsonl")
    scene = make_scene(rig, frames=frames, fps=60.0, reps=reps, people_count=1, occlude=False)
    (data / "synth").mkdir()
    for v in VIEWS:
        write_keypoints(data / "synth" / f"{v}.jsonl", scene.frames[v])
    return data
