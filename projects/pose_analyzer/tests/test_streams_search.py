"""The live re-detection search on a real server, a real WebSocket client, real MediaPipe.

The clip: the Sports2D demo downscaled so the athlete is ~60 px tall and letterboxed
into 480x270 (as tests/test_refine.py and bench/bench_refine.py do), written losslessly,
with 2 s of empty grey frames in front (the client connects before anyone is in view).
The bare MediaPipe detector misses these people; with the search, each labelled anchor
of tests/data/real/labels_identity.toml (torso positions, looked at by eye) has a person
on it, one person id per person. A second clip hides the athlete behind a grey patch
for 1.33 s (clip frames 40-79): the search finds them again where they were.

Not asserted, because it does not hold reliably (docs/identity.md, "Live search"): that
the live identity gives the athlete found again after 1.33 s their old id, and that the
passer-by keeps an id of their own. Past the tracker's 1 s of coasting that is
re-acquisition by signature and position, and at ~60 px the body-proportion signature
does not tell these two people apart (measured: 3.24 spreads from the athlete to
themselves, over the gate of 3; 2.19 to the passer-by); the search finds each of them
only on some frames, so their tracklets break and are offered to the lost.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import websockets
from service_helpers import metric_value, running_server, wait_until

from pose_analyzer.settings import get_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NO_FFMPEG = shutil.which("ffmpeg") is None

S2D = get_settings().data_dir / "samples" / "sports2d" / "demo.mp4"
MODEL = get_settings().models_dir / "pose_landmarker_full.task"
LABELS = tomllib.loads(
    (Path(__file__).parent / "data" / "real" / "labels_identity.toml").read_text()
)["sports2d_demo"]
SCALE, CANVAS = 0.163, (480, 270)
LEAD = 60  # empty frames before the clip
HIDDEN = range(40, 80)  # clip frames in which the athlete is behind the patch
PATCH = (150, 50, 250, 140)  # x0, y0, x1, y1 in canvas pixels: the athlete on the box
# Anchors checked (clip frame, name): the athlete bending over (~130-170) and walking
# out far right (~215) is not found even offline; the passer-by at 70 is half behind
# the tree at the right edge.
CHECKED = [(30, "athlete"), (100, "athlete"), (120, "passer-by"), (180, "passer-by")]
NEAR_PX = 20  # a third of the ~60 px body height
WINDOW = 3  # frames either side of an anchor in which someone must be on it


def _anchor(name: str, frame: int, x0: int, y0: int, sw: int, sh: int) -> np.ndarray:
    person = next(p for p in LABELS["person"] if p["name"] == name)
    (ax, ay) = next((x, y) for f, x, y in person["anchors"] if f == frame)
    return np.array([x0 + ax * sw, y0 + ay * sh])


def write_clip(out: Path, hide: bool = False) -> tuple[int, int, int, int]:
    """The test clip (module docstring) into `out`, the athlete hidden in HIDDEN if
    `hide`; (x0, y0, width, height) of the downscaled video inside the canvas."""
    cap = cv2.VideoCapture(str(S2D))
    grey = np.full((CANVAS[1], CANVAS[0], 3), 114, dtype=np.uint8)
    frames = [grey] * LEAD
    geometry = (0, 0, 0, 0)
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        h, w = frame.shape[:2]
        sw, sh = round(w * SCALE), round(h * SCALE)
        canvas = grey.copy()
        x0, y0 = (CANVAS[0] - sw) // 2, (CANVAS[1] - sh) // 2
        canvas[y0 : y0 + sh, x0 : x0 + sw] = cv2.resize(
            frame, (sw, sh), interpolation=cv2.INTER_AREA
        )
        if hide and i in HIDDEN:
            px0, py0, px1, py1 = PATCH
            canvas[py0:py1, px0:px1] = 114
        frames.append(canvas)
        geometry = (x0, y0, sw, sh)
        i += 1
    cap.release()
    # Lossless: at ~60 px a lossy encoding changes what the landmarker finds.
    ffmpeg = subprocess.Popen(
        [
            "ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
            "-s", f"{CANVAS[0]}x{CANVAS[1]}", "-r", "30", "-i", "-",
            "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", str(out),
        ],
        stdin=subprocess.PIPE,
    )  # fmt: skip
    assert ffmpeg.stdin is not None
    for f in frames:
        ffmpeg.stdin.write(f.tobytes())
    ffmpeg.stdin.close()
    assert ffmpeg.wait(120) == 0
    return geometry


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[int, int, int, int]]:
    if not S2D.is_file() or not MODEL.is_file():
        pytest.skip("needs scripts/fetch_samples.py and make download-models")
    if NO_FFMPEG:
        pytest.skip("ffmpeg is not installed")
    data = tmp_path_factory.mktemp("search") / "data"
    data.mkdir()
    write_clip(data / "hidden.mp4", hide=True)
    return data, write_clip(data / "small.mp4")


@pytest.fixture(scope="module")
def server(clip: tuple[Path, Any]):
    data, _ = clip
    with running_server(data, f"sqlite:///{data.parent / 'search.db'}") as srv:
        yield srv


async def _follow(url: str, timeout: float) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    async with websockets.connect(url, max_size=None) as ws:
        async with asyncio.timeout(timeout):
            async for raw in ws:
                messages.append(json.loads(raw))
                if messages[-1].get("final"):
                    break
    return messages


def _run(
    server: Any, source: str = "small.mp4", **body: Any
) -> tuple[dict[int, list[dict[str, Any]]], dict[str, Any]]:
    """Stream the clip (realtime off: every frame); the frame messages by clip frame and
    the stream's final description."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post(
            "/streams",
            json={"source": source, "exercise": "jumping_jack", "realtime": False, **body},
        )
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        messages = asyncio.run(_follow(f"ws://127.0.0.1:{server.port}/ws/streams/{sid}", 300))
        info = wait_until(
            lambda: (s := http.get(f"/streams/{sid}").json())["state"] == "ended" and s, 60
        )
        assert info, http.get(f"/streams/{sid}").json()
    frames = [m for m in messages if not m.get("final")]
    # The client must have been there before anyone came into view.
    assert frames and frames[0]["frame"] < LEAD, frames[0]["frame"] if frames else None
    by_frame = {m["frame"] - LEAD: m["people"] for m in frames}
    return by_frame, info


def _search_metrics(server: Any) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return {
        key: metric_value(text, f"pose_search_{key}_total") or 0.0
        for key in ("crops", "found", "capped")
    }


def _centre(person: dict[str, Any]) -> np.ndarray | None:
    xy = np.array([k[:2] for k in person["keypoints"] if k is not None and k[2] > 0.3])
    if len(xy) < 5:
        return None
    return (xy.min(axis=0) + xy.max(axis=0)) / 2


def _on_anchor(people_by_frame: dict[int, list[dict[str, Any]]], frame: int, want: np.ndarray):
    """Person ids within NEAR_PX of `want` in frames frame +- WINDOW."""
    ids = []
    for k in range(frame - WINDOW, frame + WINDOW + 1):
        for p in people_by_frame.get(k, []):
            c = _centre(p)
            if c is not None and np.linalg.norm(c - want) < NEAR_PX:
                ids.append(p["person_id"])
    return ids


@pytest.mark.integration
@pytest.mark.slow
def test_search_finds_small_people_the_bare_detector_misses_and_ids_hold(
    server: Any, clip: tuple[Path, tuple[int, int, int, int]]
) -> None:
    _, geometry = clip
    before = _search_metrics(server)
    on, info = _run(server)  # search on: the service's default
    after = _search_metrics(server)
    off, info_off = _run(server, search=False)
    assert info["search"] is not None and info_off["search"] is None
    anchors = {(f, n): _anchor(n, f, *geometry) for f, n in CHECKED}
    found_on = {key: _on_anchor(on, key[0], want) for key, want in anchors.items()}
    found_off = {key: _on_anchor(off, key[0], want) for key, want in anchors.items()}
    assert all(found_on.values()), found_on
    assert not any(found_off.values()), found_off
    # One person id on the athlete's anchors (frames 30 and 100: 70 frames of finds with
    # gaps of a few frames between, bridged). The passer-by's id is not asserted: see
    # the module docstring.
    athlete = set(found_on[(30, "athlete")]) | set(found_on[(100, "athlete")])
    assert len(athlete) == 1, found_on

    # Bounded work: never more landmarker calls in a frame than the per-frame limit.
    search = info["search"]
    assert search["max_crops"] == 1 and search["max_calls_per_frame"] == 1
    assert search["crops"] + search["tiles"] <= info["frames_processed"]
    assert search["found"] > 0 and search["capped"] > 0
    # The stream's counters are what went into the service's Prometheus counters.
    assert after["crops"] - before["crops"] == search["crops"]
    assert after["found"] - before["found"] == search["found"]
    assert after["capped"] - before["capped"] == search["capped"]


@pytest.mark.integration
@pytest.mark.slow
def test_an_athlete_hidden_for_longer_than_coasting_is_found_again_where_they_were(
    server: Any, clip: tuple[Path, tuple[int, int, int, int]]
) -> None:
    _, geometry = clip
    on, info = _run(server, "hidden.mp4")
    # Nobody on the patch while the athlete is behind it (the search does not invent).
    px0, py0, px1, py1 = PATCH
    for k in range(HIDDEN.start + 5, HIDDEN.stop):
        for p in on.get(k, []):
            c = _centre(p)
            assert c is None or not (px0 < c[0] < px1 and py0 < c[1] < py1), (k, c)
    # Back in view at HIDDEN.stop, within the search's lost_s (3 s) of their last box: a
    # crop there finds them again (the bare detector did not find them before either).
    want = _anchor("athlete", 100, *geometry)  # on the box, where they stand from 30 to 100
    back = [k for k in range(HIDDEN.stop, 101) if _on_anchor(on, k, want)]
    assert back and back[0] < HIDDEN.stop + 20, back
    assert info["search"]["found"] > 0


@pytest.mark.integration
@pytest.mark.slow
def test_two_crops_per_frame_is_the_bound_when_asked(server: Any) -> None:
    _, info = _run(server, search_max_crops=2, search_budget_ms=1000)
    search = info["search"]
    assert search["max_crops"] == 2 and search["budget_ms"] == 1000
    assert search["max_calls_per_frame"] == 2  # two people lost at once use both
    assert search["crops"] + search["tiles"] <= 2 * info["frames_processed"]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"search_budget_ms": 0}, "search_budget_ms"),
        ({"search_budget_ms": -5}, "search_budget_ms"),
        ({"search_budget_ms": 5000}, "search_budget_ms"),
        ({"search_max_crops": 0}, "search_max_crops"),
        ({"search_max_crops": 1.5}, "search_max_crops"),
        ({"search": "yes"}, "search"),
        ({"search": False, "search_max_crops": 2}, "search false"),
        ({"backend": "yolo", "search": True}, "mediapipe streams"),
    ],
)
def test_bad_search_settings_are_a_422_with_the_field(
    server: Any, body: dict[str, Any], needle: str
) -> None:
    r = httpx.post(
        f"{server.url}/streams",
        json={"source": "small.mp4", "exercise": "jumping_jack", **body},
        timeout=60,
    )
    assert r.status_code == 422, r.text
    assert needle in r.text


def test_the_setting_sets_the_default_and_a_bound_asks_for_the_search() -> None:
    from pose_analyzer.settings import Settings
    from pose_analyzer.streams.manager import StreamManager, StreamRequestError

    on = StreamManager(Settings(), db=None, metrics=None)  # type: ignore[arg-type]
    off = StreamManager(
        Settings(live_search=False, live_search_budget_ms=12, live_search_max_crops=3),
        db=None,  # type: ignore[arg-type]
        metrics=None,  # type: ignore[arg-type]
    )
    assert on._search("mediapipe", None, None, None) == {
        "search": True,
        "search_budget_ms": 30.0,
        "search_max_crops": 1,
    }
    assert on._search("yolo", None, None, None)["search"] is False  # YOLO: never by default
    assert on._search("replay", None, None, None)["search"] is False
    assert off._search("mediapipe", None, None, None)["search"] is False
    assert off._search("mediapipe", None, None, 2) == {
        "search": True,
        "search_budget_ms": 12.0,
        "search_max_crops": 2,
    }
    with pytest.raises(StreamRequestError, match="search false"):
        off._search("mediapipe", False, 5.0, None)
    with pytest.raises(StreamRequestError, match="batched detector"):
        on._search("yolo", True, None, None)
    with pytest.raises(ValueError, match="live_search_max_crops"):
        Settings(live_search_max_crops=0)
