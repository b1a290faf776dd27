"""A synthetic athlete: a kinematic skeleton with known joint angles.

The body is built in 3-D from segment lengths and joint angles (knee and hip
flexion, trunk lean, arm elevation and plane, elbow flexion, foot rotation,
knee valgus, whole-body pitch) and projected orthographically onto the image
from the side (sagittal plane = image plane, so the 2-D angles equal the
3-D ones) or from the front. Each exercise is a sequence of reps with a
cosine-eased descent, a hold, an ascent and a rest, so the rep count, the
tempo and the angles are known exactly. Faults, pixel noise, dropped
keypoints, low confidences and a second person walking across can be added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pose_analyzer.detectors.replay import write_keypoints
from pose_analyzer.keypoints import JOINT_INDEX, NUM_JOINTS, FramePoses, PersonPose

# Segment lengths in pixels (an athlete about 850 px tall).
THIGH, SHIN, FOOT = 200.0, 190.0, 100.0
TRUNK, NECK = 260.0, 70.0
UPPER_ARM, FOREARM = 150.0, 130.0
HIP_W, SHOULDER_W = 90.0, 170.0
FRONT_TRUNK_SLANT = float(np.degrees(np.arctan2((SHOULDER_W - HIP_W) / 2, TRUNK)))

PARAMS = (
    "knee_l",
    "knee_r",
    "hip_l",
    "hip_r",
    "trunk",
    "arm_l",
    "arm_r",
    "arm_plane",
    "elbow_l",
    "elbow_r",
    "leg_plane",
    "valgus_l",
    "valgus_r",
    "pitch",
)


@dataclass(frozen=True)
class Motion:
    view: str  # "side" or "front"
    rest: dict[str, float]
    extreme: dict[str, float]
    bend: str = "forward"  # forearm bends toward the trunk's front ("forward") or up ("up")
    faults: dict[str, dict[str, float]] = field(default_factory=dict)  # extreme overrides


_STAND = {p: 0.0 for p in PARAMS}

MOTIONS: dict[str, Motion] = {
    "squat": Motion(
        view="side",
        rest={
            **_STAND,
            "knee_l": 5,
            "knee_r": 5,
            "hip_l": 3,
            "hip_r": 3,
            "trunk": 4,
            "elbow_l": 10,
            "elbow_r": 10,
        },
        extreme={
            "knee_l": 110,
            "knee_r": 110,
            "hip_l": 90,
            "hip_r": 90,
            "trunk": 30,
            "arm_l": 80,
            "arm_r": 80,
        },
        faults={
            "shallow": {"knee_l": 74, "knee_r": 74, "hip_l": 60, "hip_r": 60},
            "trunk_lean": {"trunk": 60, "hip_l": 80, "hip_r": 80},
            "valgus": {"valgus_l": 30, "valgus_r": 30},
        },
    ),
    "push_up": Motion(
        view="side",
        rest={**_STAND, "pitch": 75, "arm_l": 80, "arm_r": 80, "elbow_l": 5, "elbow_r": 5},
        extreme={"elbow_l": 100, "elbow_r": 100, "arm_l": 65, "arm_r": 65},
        bend="back",
        faults={"shallow": {"elbow_l": 72, "elbow_r": 72}},
    ),
    "lunge": Motion(
        view="side",
        rest={**_STAND, "knee_l": 5, "knee_r": 5, "hip_l": 3, "hip_r": -3, "trunk": 3},
        extreme={"knee_l": 95, "hip_l": 85, "knee_r": 80, "hip_r": -15},
        faults={"shallow": {"knee_l": 70, "hip_l": 60, "knee_r": 55}},
    ),
    "bicep_curl": Motion(
        view="side",
        rest={**_STAND, "arm_l": 5, "arm_r": 5, "elbow_l": 10, "elbow_r": 10},
        extreme={"elbow_l": 140, "elbow_r": 140, "arm_l": 10, "arm_r": 10},
        faults={"half": {"elbow_l": 105, "elbow_r": 105}},
    ),
    "shoulder_press": Motion(
        view="front",
        rest={**_STAND, "arm_plane": 90, "arm_l": 85, "arm_r": 85, "elbow_l": 95, "elbow_r": 95},
        extreme={"arm_l": 170, "arm_r": 170, "elbow_l": 5, "elbow_r": 5},
        bend="up",
        faults={"short": {"arm_l": 138, "arm_r": 138, "elbow_l": 30, "elbow_r": 30}},
    ),
    "jumping_jack": Motion(
        view="front",
        rest={
            **_STAND,
            "arm_plane": 90,
            "arm_l": 10,
            "arm_r": 10,
            "elbow_l": 5,
            "elbow_r": 5,
            "leg_plane": 90,
            "hip_l": 2,
            "hip_r": 2,
        },
        extreme={"arm_l": 165, "arm_r": 165, "hip_l": 15, "hip_r": 15},
        faults={"low_arms": {"arm_l": 120, "arm_r": 120}},
    ),
}
# The squat filmed from the front, feet turned out 30 deg, upright trunk and knees
# forward (a thigh pointing at the camera would hide the knee angle): valgus is visible.
MOTIONS["squat_front"] = Motion(
    view="front",
    rest={**MOTIONS["squat"].rest, "leg_plane": 30},
    extreme={"knee_l": 120, "knee_r": 120, "hip_l": 75, "hip_r": 75, "trunk": 10},
    faults={"valgus": {"valgus_l": 50, "valgus_r": 50}},
)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def skeleton(p: dict[str, float], bend: str = "forward") -> np.ndarray:
    """3-D joints (NUM_JOINTS, 3) in body axes (forward, down, left) from parameters (deg)."""
    r = {k: np.radians(v) for k, v in p.items()}
    f, d, lft = np.eye(3)
    out = np.zeros((NUM_JOINTS, 3))

    def put(name: str, v: np.ndarray) -> None:
        out[JOINT_INDEX[name]] = v

    up_t = np.cos(r["trunk"]) * -d + np.sin(r["trunk"]) * f
    fwd_t = np.cos(r["trunk"]) * f + np.sin(r["trunk"]) * d
    pelvis = np.zeros(3)
    mid_sh = pelvis + TRUNK * up_t
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        s = side[0]
        hip = pelvis + sgn * HIP_W / 2 * lft
        put(f"{side}_hip", hip)
        plane = r["leg_plane"] - r[f"valgus_{s}"]
        f_thigh = np.cos(plane) * f + np.sin(plane) * sgn * lft
        f_foot = np.cos(r["leg_plane"]) * f + np.sin(r["leg_plane"]) * sgn * lft
        if p["leg_plane"] >= 90:  # jumping jack: the leg swings sideways, the foot points ahead
            f_foot = f
        th, kn = r[f"hip_{s}"], r[f"knee_{s}"]
        knee = hip + THIGH * (np.cos(th) * d + np.sin(th) * f_foot)
        ankle = knee + SHIN * (np.cos(th - kn) * d + np.sin(th - kn) * f_foot)
        # Valgus: the knee caves in (thigh plane turned inward) while the foot stays put.
        knee = hip + THIGH * (np.cos(th) * d + np.sin(th) * f_thigh)
        put(f"{side}_knee", knee)
        put(f"{side}_ankle", ankle)
        put(f"{side}_foot_index", ankle + FOOT * f_foot)
        put(f"{side}_heel", ankle - 0.25 * FOOT * f_foot + 0.2 * FOOT * d)
        shoulder = mid_sh + sgn * SHOULDER_W / 2 * lft
        put(f"{side}_shoulder", shoulder)
        a, plane_a = r[f"arm_{s}"], r["arm_plane"]
        out_dir = np.cos(plane_a) * fwd_t + np.sin(plane_a) * sgn * lft
        upper = np.cos(a) * -up_t + np.sin(a) * out_dir
        elbow = shoulder + UPPER_ARM * upper
        ref = {"forward": fwd_t, "up": up_t, "back": -up_t}[bend]
        w = ref - np.dot(ref, upper) * upper
        w = _unit(w) if np.linalg.norm(w) > 1e-6 else _unit(np.cross(upper, lft))
        e = r[f"elbow_{s}"]
        put(f"{side}_elbow", elbow)
        put(f"{side}_wrist", elbow + FOREARM * (np.cos(e) * upper + np.sin(e) * w))
        put(f"{side}_eye", mid_sh + (NECK + 40) * up_t + 25 * fwd_t + sgn * 15 * lft)
        put(f"{side}_ear", mid_sh + (NECK + 35) * up_t + sgn * 35 * lft)
    put("nose", mid_sh + (NECK + 25) * up_t + 40 * fwd_t)
    # Whole-body pitch about the lateral axis (push-up: lying face down).
    pitch = r["pitch"]
    fc, dc = out @ f, out @ d
    rot_f = fc * np.cos(pitch) - dc * np.sin(pitch)
    rot_d = fc * np.sin(pitch) + dc * np.cos(pitch)
    return rot_f[:, None] * f + rot_d[:, None] * d + (out @ lft)[:, None] * lft


def project(body: np.ndarray, view: str) -> np.ndarray:
    """Image x, y (NUM_JOINTS, 2) before placement; side: facing +x, front: facing the camera."""
    fwd, down, left = body[:, 0], body[:, 1], body[:, 2]
    if view == "side":
        return np.stack([fwd, down], axis=1)
    return np.stack([left, down], axis=1)


def truth_angles(p: dict[str, float], view: str, bend: str = "forward") -> dict[str, float]:
    """Angles known analytically from the parameters (only where the view shows them)."""
    t: dict[str, float] = {}
    for side in ("left", "right"):
        s = side[0]
        if view == "side" and p["arm_plane"] == 0:
            t[f"{side}_elbow_flexion"] = p[f"elbow_{s}"]
            t[f"{side}_shoulder_elevation"] = p[f"arm_{s}"]
        elif view == "front" and p["arm_plane"] == 90 and p["trunk"] == 0:
            # From the front the trunk line shoulder->hip slants inward (shoulders are wider).
            elevation = p[f"arm_{s}"] + FRONT_TRUNK_SLANT
            t[f"{side}_shoulder_elevation"] = min(elevation, 360 - elevation)
            if bend == "up":
                t[f"{side}_elbow_flexion"] = p[f"elbow_{s}"]
        if p["leg_plane"] == 0 and p[f"valgus_{s}"] == 0:
            t[f"{side}_knee_flexion"] = p[f"knee_{s}"]
            if view == "side":
                t[f"{side}_hip_flexion"] = abs(p[f"hip_{s}"] + p["trunk"])
                if abs(p[f"knee_{s}"] - p[f"hip_{s}"]) < 60:
                    t[f"{side}_ankle_dorsiflexion"] = p[f"knee_{s}"] - p[f"hip_{s}"]
    if view == "side":
        t["trunk_lean"] = abs(p["trunk"] + p["pitch"])
    elif p["trunk"] == 0 and p["pitch"] == 0:
        t["trunk_lean"] = 0.0
    return t


@dataclass
class Recording:
    exercise: str
    fps: float
    frames: list[FramePoses]
    truth: dict[str, np.ndarray]  # angle name -> (F,) with NaN where not known
    reps: list[tuple[float, float]]  # (start_s, end_s) of each rep
    faulty: dict[int, str]  # rep index (1-based) -> injected fault
    tempo: tuple[float, float, float, float]  # down, hold, up, rest seconds

    def write(self, path: str | Path) -> Path:
        write_keypoints(path, self.frames)
        return Path(path)


def _ease(x: np.ndarray) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))


def make_recording(
    exercise: str,
    reps: int = 5,
    *,
    fps: float = 30.0,
    tempo: tuple[float, float, float, float] = (1.0, 0.2, 1.0, 0.6),
    faults: dict[int, str] | None = None,
    noise_px: float = 0.0,
    drop: float = 0.0,
    low_conf: float = 0.0,
    crosser: bool = False,
    seed: int = 0,
    size: tuple[int, int] = (1920, 1080),
    person_id: int = 1,
) -> Recording:
    """`reps` repetitions of `exercise` (a MOTIONS key); faults maps rep index to a fault."""
    motion = MOTIONS[exercise]
    faults = dict(faults or {})
    rng = np.random.default_rng(seed)
    down, hold, up, rest = tempo
    period = down + hold + up + rest
    lead = rest
    duration = lead + reps * period + rest
    n = round(duration * fps)
    width, height = size
    t = np.arange(n) / fps
    truth = {}
    frames = []
    windows = [(lead + i * period, lead + i * period + down + hold + up) for i in range(reps)]
    for k in range(n):
        tk = float(t[k])
        i = int((tk - lead) // period) if tk >= lead else -1
        progress = 0.0
        if 0 <= i < reps:
            u = tk - (lead + i * period)
            if u < down:
                progress = float(_ease(np.array(u / down)))
            elif u < down + hold:
                progress = 1.0
            elif u < down + hold + up:
                progress = float(_ease(np.array(1 - (u - down - hold) / up)))
        extreme = dict(motion.extreme)
        if 0 <= i < reps and (i + 1) in faults:
            extreme.update(motion.faults[faults[i + 1]])
        p = {
            key: motion.rest[key]
            + progress * (extreme.get(key, motion.rest[key]) - motion.rest[key])
            for key in PARAMS
        }
        for name, value in truth_angles(p, motion.view, motion.bend).items():
            truth.setdefault(name, np.full(n, np.nan))[k] = value
        xy = project(skeleton(p, motion.bend), motion.view)
        xy = _place(xy, width * 0.45, height * 0.92)
        people = [_person(xy, person_id, rng, noise_px, drop, low_conf)]
        if crosser:
            people.append(_crosser(k, n, width, height, rng, noise_px, motion.view))
        frames.append(
            FramePoses(index=k, t=round(tk, 6), width=width, height=height, people=people)
        )
    return Recording(exercise, fps, frames, truth, windows, faults, tempo)


def _place(xy: np.ndarray, cx: float, floor_y: float) -> np.ndarray:
    """Stand on the floor, centred; the placement of rest decides nothing about angles."""
    out = xy.copy()
    out[:, 1] += floor_y - np.max(xy[:, 1])
    out[:, 0] += cx
    return out


def _person(
    xy: np.ndarray,
    pid: int,
    rng: np.random.Generator,
    noise_px: float,
    drop: float,
    low_conf: float,
) -> PersonPose:
    kp = np.zeros((NUM_JOINTS, 3), dtype=np.float32)
    noisy = xy + (rng.normal(0.0, noise_px, xy.shape) if noise_px > 0 else 0.0)
    kp[:, :2] = noisy
    kp[:, 2] = 0.95
    if low_conf > 0:
        kp[rng.random(NUM_JOINTS) < low_conf, 2] = 0.2
    if drop > 0:
        gone = rng.random(NUM_JOINTS) < drop
        kp[gone, :2] = np.nan
        kp[gone, 2] = 0.0
    return PersonPose(keypoints=kp, track_id=pid)


def _crosser(
    k: int,
    n: int,
    width: int,
    height: int,
    rng: np.random.Generator,
    noise_px: float,
    view: str,
) -> PersonPose:
    """A second person walking across the whole frame (and past the athlete)."""
    phase = 2 * np.pi * k / 30.0
    swing = 20 * np.sin(phase)
    p = {
        **_STAND,
        "hip_l": swing,
        "hip_r": -swing,
        "knee_l": 10,
        "knee_r": 10,
        "arm_l": 10,
        "arm_r": 10,
        "elbow_l": 15,
        "elbow_r": 15,
    }
    xy = project(skeleton(p), view) * 0.8
    x = -200 + (width + 400) * k / max(n - 1, 1)
    return _person(_place(xy, x, height * 0.97), 2, rng, noise_px, 0.0, 0.0)
