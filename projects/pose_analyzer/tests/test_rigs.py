"""The /rigs service on a real server with real WebSocket clients.

Views are replayed keypoint files: the Pose2Sim single-person demo's cached real
MediaPipe detections (4 calibrated views, 100 frames at 60 fps) and a synthetic
athlete projected into the demo's four cameras (constructed squats: known reps).
Ground truth: the offline `analyze_multiview` on the same detections (the same
fuser, so the live rig in lockstep must give the same 3D joints), the input 2D
detections (reprojection), and the constructed motion (one person, 3 reps).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from multiview_helpers import VIEWS, make_rig_data_dir
from service_helpers import metric_value, running_server, wait_until

from pose_analyzer.detectors.replay import read_keypoints
from pose_analyzer.keypoints import JOINT_INDEX, JOINTS

pytestmark = pytest.mark.integration

SYNTH_FRAMES = 360  # 6 s at 60 fps: three constructed squats
SYNTH_REPS = 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rig_data_dir(tmp_path_factory.mktemp("pose-rigs"), SYNTH_FRAMES, SYNTH_REPS)


def _db_urls() -> list[Any]:
    urls: list[Any] = ["sqlite"]
    pg = os.environ.get("AIML_TEST_POSTGRES_URL")
    urls.append(
        pytest.param("postgresql", marks=pytest.mark.skipif(not pg, reason="no PostgreSQL"))
    )
    return urls


@pytest.fixture(scope="module", params=_db_urls())
def server(request: pytest.FixtureRequest, data_dir: Path, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('rigs-db') / 'rigs.db'}"
    else:
        url = _fresh_postgres(os.environ["AIML_TEST_POSTGRES_URL"])
    with running_server(data_dir, url, POSE_MAX_STREAMS="8") as srv:
        yield srv


def _fresh_postgres(url: str) -> str:
    """An empty schema for this module (the tests of other modules share the database)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA IF EXISTS rigs_test CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA rigs_test"))
    engine.dispose()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3Drigs_test"


def _rig(client: httpx.Client, folder: str, **kw: Any) -> dict[str, Any]:
    body = {
        "sources": [f"{folder}/{v}.jsonl" for v in VIEWS],
        "calibration": "Calib.qca.txt",
        "exercise": "squat",
        **kw,
    }
    r = client.post("/rigs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def _follow(url: str, on_message: Any = None, timeout: float = 120.0) -> list[dict]:
    """Every message of a rig until the server closes the socket (the final summary last)."""
    messages: list[dict] = []
    async with websockets.connect(url, max_size=None) as ws:
        async with asyncio.timeout(timeout):
            async for text in ws:
                msg = json.loads(text)
                messages.append(msg)
                if on_message is not None:
                    on_message(msg)
    return messages


def _ws(server: Any, rig_id: str) -> str:
    return server.url.replace("http://", "ws://") + f"/ws/rigs/{rig_id}"


def test_demo_rig_in_lockstep_matches_the_offline_fusion(server, data_dir: Path) -> None:
    """The four real views as a rig: one person, one 3D track throughout, four views in
    every instant, the offline path's 3D joints, and its reprojection errors."""
    from pose_analyzer.multiview.recordings import analyze_multiview

    offline = analyze_multiview(
        data_dir / "Calib.qca.txt", [data_dir / "demo" / f"{v}.jsonl" for v in VIEWS], "squat"
    )
    with server.client() as client:
        # Lockstep rigs run as fast as they go: follow from the start by connecting
        # before the first instant can be published (the views are replayed at 60 fps
        # for a moment first would be a race; instead every message carries its index).
        rig = _rig(client, "demo", realtime=False)
        messages = asyncio.run(_follow(_ws(server, rig["id"])))
        final = messages[-1]
        instants = [m for m in messages if "instant" in m and not m.get("final")]
        info = client.get(f"/rigs/{rig['id']}").json()
    assert final["final"] is True and final["reason"] == "the sources ended"
    assert info["instants"] == final["instants"] == 100  # one instant per frame of the files
    assert len(instants) >= 50, len(instants)
    # The client saw every instant from its first on: consecutive indices, none skipped.
    idx = [m["instant"] for m in instants]
    assert idx == list(range(idx[0], 100)), idx[:5]
    assert all(sorted(m["views_used"]) == VIEWS and m["views_lost"] == {} for m in instants)
    assert {p["id"] for m in instants for p in m["people"]} == {1}
    assert all(len(m["people"]) == 1 for m in instants)
    assert info["state"] == "ended" and info["views_lost"] == {}
    assert [v["frames_fused"] for v in info["views"]] == [100] * 4

    # Same 3D joints as the offline CLI path (rounded to 0.1 mm on the wire).
    person = offline.people[0]
    for m in instants:
        k = m["instant"]
        joints = m["people"][0]["joints"]
        for name, xyz in joints.items():
            assert np.allclose(xyz, person.points[k, JOINT_INDEX[name]], atol=2e-4), (k, name)

    # Reprojection into each view against the 2D detections that went in, per view.
    detections = {v: list(read_keypoints(data_dir / "demo" / f"{v}.jsonl")) for v in VIEWS}
    medians = {}
    for v in VIEWS:
        errs = []
        for m in instants:
            uv = m["reprojected"][v]["1"]
            kp = detections[v][m["instant"]].people
            best = min(
                kp,
                key=lambda p: np.nanmedian(
                    [np.hypot(*(np.array(u) - p.keypoints[j, :2])) for j, u in enumerate(uv) if u]
                ),
            )
            for j, u in enumerate(uv):
                if u is not None and best.keypoints[j, 2] >= 0.3:
                    errs.append(np.hypot(*(np.array(u) - best.keypoints[j, :2])))
        # A view whose error at a joint exceeds 15 px is not used for it (triangulation's
        # view rejection): what the offline per-view figure counts.
        e = np.array(errs)
        medians[v] = float(np.median(e[e <= 15.0]))
    offline_medians = offline.per_view_median_error()
    # The docs' figures: 5.7-9.1 px median per view.
    assert all(m <= 10.0 for m in medians.values()), medians
    for v in VIEWS:
        assert abs(medians[v] - offline_medians[v]) < 1.0, (medians, offline_medians)


def test_synthetic_rig_stores_its_session_and_the_constructed_reps(server) -> None:
    with server.client() as client:
        rig = _rig(client, "synth", realtime=False)
        messages = asyncio.run(_follow(_ws(server, rig["id"])))
        final = messages[-1]
        assert final["instants"] == SYNTH_FRAMES
        assert final["rep_counts"] == {"1": SYNTH_REPS}
        session = wait_until(
            lambda: (
                (s := client.get(f"/sessions/{rig['id']}").json()).get("status") == "ended" and s
            ),
            timeout=30,
        )
    assert session["kind"] == "rig" and session["frames"] == SYNTH_FRAMES
    assert session["calibration"] == "Calib.qca.txt"
    assert [c["name"] for c in session["cameras"]] == VIEWS
    assert [c["source"] for c in session["cameras"]] == [f"synth/{v}.jsonl" for v in VIEWS]
    assert len(session["reps"]) == SYNTH_REPS
    assert {r["person_id"] for r in session["reps"]} == {1}
    assert [r["index"] for r in session["reps"]] == list(range(1, SYNTH_REPS + 1))
    # Each rep of the constructed squat lasts one period (2 s) at most.
    assert all(0.5 < r["end_s"] - r["start_s"] <= 2.05 for r in session["reps"])


def test_a_view_that_goes_away_leaves_the_rig_and_the_rig_says_so(server, data_dir) -> None:
    """Live (capture-time sync): cam04's file is emptied mid-session (its source goes
    away; the reader hits the end). The rig carries on with three views."""
    victim = data_dir / "live4" / "cam04.jsonl"
    victim.parent.mkdir(exist_ok=True)
    for v in VIEWS:
        shutil.copy(data_dir / "synth" / f"{v}.jsonl", victim.parent / f"{v}.jsonl")
    scrape: dict[str, Any] = {}
    with server.client() as client:
        rig = _rig(client, "live4", realtime=True)
        killed_at: list[int] = []

        def on_message(msg: dict) -> None:
            if msg.get("final"):
                return
            if not killed_at and msg["instant"] >= 90:
                os.truncate(victim, 0)  # the source goes away under the reader
                killed_at.append(msg["instant"])
            if not scrape and msg["views_lost"]:
                # While the rig runs on three views: its series are on /metrics.
                scrape["text"] = httpx.get(server.url + "/metrics").text
                scrape["info"] = httpx.get(server.url + f"/rigs/{rig['id']}").json()

        messages = asyncio.run(_follow(_ws(server, rig["id"]), on_message))
    instants = [m for m in messages if not m.get("final")]
    final = messages[-1]
    assert killed_at, "the rig never reached instant 90"
    lost = [m for m in instants if "cam04" in m["views_lost"]]
    assert lost, "no message says cam04 left"
    first_lost = lost[0]["instant"]
    # A few buffered lines may still arrive after the truncation, then none.
    assert killed_at[0] <= first_lost <= killed_at[0] + 30
    after = [m for m in instants if m["instant"] >= first_lost]
    assert all("cam04" not in m["views_used"] and m["views"]["cam04"] == "lost" for m in after)
    # The reader hit the end, or the half line the truncation left: either is said.
    assert lost[0]["views_lost"]["cam04"].split(":")[0] in ("ended", "failed")
    # The rig carried on to the end of the other three views, with one person throughout.
    assert instants[-1]["t"] >= (SYNTH_FRAMES - 10) / 60.0
    three = [m for m in after if sorted(m["views_used"]) == VIEWS[:3]]
    assert len(three) >= 0.8 * len(after)
    assert {p["id"] for m in instants for p in m["people"]} == {1}
    before = [m for m in instants if m["instant"] < killed_at[0]]
    four = sum(len(m["views_used"]) == 4 for m in before)
    assert four >= 0.8 * len(before), [len(m["views_used"]) for m in before]
    info = scrape["info"]
    assert info["views_lost"].keys() == {"cam04"} and info["views_active"] == VIEWS[:3]
    assert final["views_lost"].keys() == {"cam04"} and final["state"] == "ended"
    # Metrics of the running rig: instants, fps, views used, reprojection error.
    text = scrape["text"]
    labels = {"rig": rig["id"]}
    assert (metric_value(text, "pose_rig_instants_total", labels) or 0) >= killed_at[0]
    assert metric_value(text, "pose_rig_views_used", labels) in (3.0, 2.0)
    assert (metric_value(text, "pose_rig_fused_fps", labels) or 0) > 5
    # Synthetic views are exact projections: the reprojection error is ~0.
    count = metric_value(text, "pose_rig_reprojection_error_px_count", labels) or 0
    low = metric_value(text, "pose_rig_reprojection_error_px_bucket", {**labels, "le": "1.0"})
    assert count >= killed_at[0] and low == count
    # Once ended, its series are gone.
    gone = wait_until(
        lambda: (
            metric_value(httpx.get(server.url + "/metrics").text, "pose_rig_fused_fps", labels)
            is None
        ),
        timeout=30,
    )
    assert gone


def test_dropped_and_lagging_frames_are_left_out_never_waited_for(server, data_dir) -> None:
    """Live sync by capture time: cam04 drops every third frame, cam03 delivers nothing
    for one second (frames 200-259) and then comes back. Those instants go out without
    them, on time and on the frame grid, one instant per frame of the rig; cam03 is
    used again afterwards (it lagged, it did not leave)."""
    from pose_analyzer.detectors.replay import write_keypoints

    folder = data_dir / "lag"
    folder.mkdir(exist_ok=True)
    for v in VIEWS:
        frames = list(read_keypoints(data_dir / "synth" / f"{v}.jsonl"))
        if v == "cam04":
            frames = [f for f in frames if f.index % 3 != 1]
        if v == "cam03":
            frames = [f for f in frames if not 200 <= f.index < 260]
        write_keypoints(folder / f"{v}.jsonl", frames)
    with server.client() as client:
        rig = _rig(client, "lag", realtime=True)
        messages = asyncio.run(_follow(_ws(server, rig["id"])))
        info = client.get(f"/rigs/{rig['id']}").json()
    final = messages[-1]
    instants = [m for m in messages if not m.get("final")]
    frame_of = [round(m["t"] * 60) for m in instants]
    assert all(abs(m["t"] * 60 - k) < 1e-3 for m, k in zip(instants, frame_of, strict=True))
    assert len(set(frame_of)) == len(frame_of)  # one instant per frame, no view alone
    assert 0.95 * SYNTH_FRAMES <= final["instants"] <= SYNTH_FRAMES
    expected_ok = 0
    for m, k in zip(instants, frame_of, strict=True):
        expect = set(VIEWS)
        if k % 3 == 1:
            expect.discard("cam04")
        if 200 <= k < 260:
            expect.discard("cam03")
        # A view missing by construction is never in the instant, and said to be late.
        assert set(m["views_used"]) <= expect, (k, m["views_used"])
        assert all(m["views"][v] == "late" for v in set(VIEWS) - expect), (k, m["views"])
        expected_ok += set(m["views_used"]) == expect
        assert m["views_lost"] == {}
    assert expected_ok >= 0.9 * len(instants), expected_ok
    assert {p["id"] for m in instants for p in m["people"]} == {1}
    views = {v["name"]: v for v in info["views"]}
    back = [m for m, k in zip(instants, frame_of, strict=True) if k >= 260]
    assert sum("cam03" in m["views_used"] for m in back) >= 0.9 * len(back)
    assert views["cam03"]["state"] == "ended" and views["cam03"]["frames_fused"] >= 0.9 * 300
    assert views["cam04"]["frames_fused"] <= SYNTH_FRAMES * 2 / 3 + 1


def test_fewer_than_two_views_left_ends_the_rig_with_the_reason(server, data_dir) -> None:
    folder = data_dir / "live1"
    folder.mkdir(exist_ok=True)
    for v in VIEWS:
        shutil.copy(data_dir / "synth" / f"{v}.jsonl", folder / f"{v}.jsonl")
    with server.client() as client:
        rig = _rig(client, "live1", realtime=True)
        done: list[int] = []

        def on_message(msg: dict) -> None:
            if not done and not msg.get("final") and msg["instant"] >= 30:
                for v in VIEWS[1:]:
                    os.truncate(folder / f"{v}.jsonl", 0)
                done.append(msg["instant"])

        messages = asyncio.run(_follow(_ws(server, rig["id"]), on_message))
        final = messages[-1]
        info = client.get(f"/rigs/{rig['id']}").json()
        session = wait_until(
            lambda: (
                (s := client.get(f"/sessions/{rig['id']}").json()).get("status") != "live" and s
            ),
            timeout=30,
        )
    assert final["final"] and final["state"] == "failed"
    assert final["reason"].startswith("fewer than two views left")
    assert "still delivering: cam01" in final["reason"]
    assert set(final["views_lost"]) == {"cam02", "cam03", "cam04"}
    assert final["instants"] < SYNTH_FRAMES - 100  # it stopped, it did not run to the end
    assert info["state"] == "failed" and info["reason"] == final["reason"]
    assert session["status"] == "failed" and "fewer than two views" in session["error"]


def test_bad_requests_are_clear_4xx(server, data_dir: Path) -> None:
    (data_dir / "two").mkdir(exist_ok=True)
    for v in ("cam01", "cam05"):
        shutil.copy(data_dir / "demo" / "cam01.jsonl", data_dir / "two" / f"{v}.jsonl")
    base = {"calibration": "Calib.qca.txt", "exercise": "squat"}
    demo = [f"demo/{v}.jsonl" for v in VIEWS]
    with server.client() as client:
        cases = [
            ({"sources": demo[:1]}, 422, "at least two views"),
            ({"sources": ["two/cam01.jsonl", "two/cam05.jsonl"]}, 422, "matches no camera"),
            ({"sources": demo, "cameras": ["cam01", "cam02"]}, 422, "camera names for 4"),
            ({"sources": demo, "exercise": "auto"}, 422, "auto"),
            ({"sources": demo, "exercise": "no_such_move"}, 422, "no_such_move"),
            ({"sources": demo, "backend": "mediapipe"}, 422, "replay backend"),
            ({"sources": demo, "backend": "fancy"}, 422, None),
            ({"sources": demo, "calibration": "../Calib.qca.txt"}, 400, "outside the data"),
            ({"sources": demo, "calibration": "nope.toml"}, 400, "does not exist"),
            ({"sources": demo, "calibration": "demo/cam01.jsonl"}, 400, "expected a Pose2Sim"),
            ({"sources": [*demo[:3], demo[0]]}, 422, "twice"),
            ({"sources": ["../etc/x.jsonl", *demo[1:]]}, 400, "outside the data directory"),
            # No camera 63 on this machine: refused now, not a view stuck connecting.
            ({"sources": [63, *demo[1:]], "cameras": VIEWS}, 400, None),
        ]
        for extra, status, text in cases:
            r = client.post("/rigs", json={**base, **extra})
            assert r.status_code == status, (extra, r.text)
            if text:
                assert text in r.json()["detail"], (extra, r.json())
        r = client.post("/rigs", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        assert client.get("/rigs/nope").status_code == 404
        assert client.delete("/rigs/nope").status_code == 404
        # A calibration whose camera sizes do not match the views.
        toml = data_dir / "small.toml"
        from pose_analyzer.multiview.calibration import load_calibration, write_pose2sim_toml

        cal = load_calibration(data_dir / "Calib.qca.txt")
        from dataclasses import replace

        write_pose2sim_toml(
            replace(cal, cameras=tuple(replace(c, size=(640, 480)) for c in cal.cameras)), toml
        )
        r = client.post("/rigs", json={**base, "sources": demo, "calibration": "small.toml"})
        assert r.status_code == 422 and "calibrated at 640x480" in r.json()["detail"]
        # The stream limit: a rig of four views takes four of the eight slots.
        rigs = [_rig(client, "synth", realtime=True) for _ in range(2)]
        r = client.post("/rigs", json={**base, "sources": demo})
        assert r.status_code == 429 and "POSE_MAX_STREAMS" in r.json()["detail"]
        r = client.post("/streams", json={"source": "demo/cam01.jsonl", "exercise": "squat"})
        assert r.status_code == 429
        for rig in rigs:
            stopped = client.delete(f"/rigs/{rig['id']}")
            assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
        assert client.get("/health").status_code == 200


def test_unknown_rig_socket_is_closed_4404(server) -> None:
    async def go() -> int | None:
        async with websockets.connect(_ws(server, "nope")) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return ws.close_code

    assert asyncio.run(go()) == 4404


def test_storage_gone_is_a_503_and_the_service_stays_up(data_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "gone.db"
    with running_server(data_dir, f"sqlite:///{db}") as srv, srv.client() as client:
        db.unlink()
        body = {
            "sources": [f"demo/{v}.jsonl" for v in VIEWS],
            "calibration": "Calib.qca.txt",
            "exercise": "squat",
        }
        r = client.post("/rigs", json=body)
        assert r.status_code == 503, r.text
        assert client.get("/rigs").json() == []
        assert client.get("/health").status_code in (200, 503)
        assert JOINTS  # the service answered every call: it is up


@pytest.mark.slow
def test_real_mediapipe_rig_on_the_four_demo_videos(data_dir: Path, tmp_path: Path) -> None:
    """The four demo videos decoded and detected live by MediaPipe (full, video mode) in
    the rig, in lockstep: the same person, one 3D track, the offline figures' error."""
    from multiview_helpers import DEMO_CALIB

    videos = DEMO_CALIB.parent
    if not all((videos / f"{v}.mp4").exists() for v in VIEWS):
        pytest.skip("demo videos missing: run `make fetch-samples`")
    (data_dir / "video").mkdir(exist_ok=True)
    for v in VIEWS:
        shutil.copy(videos / f"{v}.mp4", data_dir / "video" / f"{v}.mp4")
    with (
        running_server(data_dir, f"sqlite:///{tmp_path / 'mp.db'}") as srv,
        srv.client() as client,
    ):
        body = {
            "sources": [f"video/{v}.mp4" for v in VIEWS],
            "calibration": "Calib.qca.txt",
            "exercise": "squat",
            "backend": "mediapipe",
            "model": "full",
            "realtime": False,
        }
        r = client.post("/rigs", json=body)
        assert r.status_code == 201, r.text
        rig = r.json()
        assert rig["sync"] == "lockstep" and rig["views"][0]["size"] == [1080, 1920]
        messages = asyncio.run(_follow(_ws(srv, rig["id"]), timeout=400))
        info = client.get(f"/rigs/{rig['id']}").json()
    final = messages[-1]
    instants = [m for m in messages if not m.get("final")]
    assert final["instants"] == info["instants"] == 100, final
    assert all(sorted(m["views_used"]) == VIEWS for m in instants)
    assert {p["id"] for m in instants for p in m["people"]} == {1}
    assert sum(len(m["people"]) == 1 for m in instants) >= 0.95 * len(instants)
    errors = [p["reprojection_error_px"] for m in instants for p in m["people"]]
    assert float(np.median(errors)) <= 10.0, np.median(errors)


def test_storage_lost_mid_session_ends_the_rig_not_the_service(
    data_dir: Path, tmp_path: Path
) -> None:
    """The database file goes away while a rig runs: its first rep cannot be stored, so
    the rig ends `failed` saying why; the service keeps answering."""
    db = tmp_path / "mid.db"
    with running_server(data_dir, f"sqlite:///{db}") as srv, srv.client() as client:
        rig = _rig(client, "synth", realtime=True)
        gone: list[int] = []

        def on_message(msg: dict) -> None:
            if not gone and not msg.get("final") and msg["instant"] >= 30:
                db.unlink()  # before the first rep completes (about 2 s in)
                gone.append(msg["instant"])

        messages = asyncio.run(_follow(_ws(srv, rig["id"]), on_message))
        final = messages[-1]
        info = client.get(f"/rigs/{rig['id']}").json()
        assert client.get("/rigs").status_code == 200
        assert client.get("/exercises").status_code == 200
    assert gone and final["final"] and final["state"] == "failed"
    assert "StorageUnavailable" in final["reason"]
    assert info["state"] == "failed" and info["reps"] == 0
    # It ended at the first rep, long before the views did.
    assert final["instants"] < SYNTH_FRAMES - 60
