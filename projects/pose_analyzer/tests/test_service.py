"""The pose service as users run it: a real server, real WebSocket clients, a real database."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from service_helpers import (
    make_data_dir,
    metric_value,
    running_server,
    wait_until,
)
from synthetic import make_recording

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = make_data_dir(tmp_path_factory.mktemp("pose-service"))
    # Synthetic athletes with known rep counts, replayed through the service.
    make_recording("squat", 4, fps=30.0).write(data / "squat4.jsonl")
    make_recording("squat", 12, fps=30.0, tempo=(0.6, 0.1, 0.6, 0.3)).write(data / "squat12.jsonl")
    (data / "notes.txt").write_text("not a video")
    return data


@pytest.fixture(scope="module")
def server(data_dir: Path):
    db = data_dir.parent / "service.db"
    with running_server(data_dir, f"sqlite:///{db}", POSE_MAX_STREAMS="6") as srv:
        yield srv


async def _collect(url: str, count: int, timeout: float) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    try:
        async with websockets.connect(url, max_size=None) as ws:
            async with asyncio.timeout(timeout):
                async for raw in ws:
                    messages.append(json.loads(raw))
                    if len(messages) >= count:
                        break
    except (TimeoutError, websockets.ConnectionClosed):
        pass
    return messages


def _size(path: Path) -> tuple[int, int]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()


def test_four_pose2sim_views_run_concurrently_with_mediapipe(server, data_dir: Path) -> None:
    sizes = [
        _size(data_dir / "samples" / f"{cam}.mp4") for cam in ("cam01", "cam02", "cam03", "cam04")
    ]
    with server.client() as http:
        ids = []
        for cam in ("cam01", "cam02", "cam03", "cam04"):
            r = http.post(
                "/streams",
                json={"source": f"samples/{cam}.mp4", "exercise": "squat", "realtime": False},
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        assert {s["id"] for s in http.get("/streams").json()} >= set(ids)

        async def all_clients() -> list[list[dict[str, Any]]]:
            return await asyncio.gather(
                *(_collect(f"ws://127.0.0.1:{server.port}/ws/streams/{i}", 15, 120) for i in ids)
            )

        results = asyncio.run(all_clients())
        metrics = http.get("/metrics").text
        for stream_id, messages, size in zip(ids, results, sizes, strict=True):
            assert len(messages) == 15, f"stream {stream_id}: {len(messages)} messages"
            frames = [m["frame"] for m in messages]
            assert frames == sorted(frames) and len(set(frames)) == len(frames)
            for m in messages:
                assert m["stream_id"] == stream_id
                assert (m["width"], m["height"]) == size
                assert "jpeg" not in m  # frames only on request
            with_people = [m for m in messages if m["people"]]
            # The athlete is in every view; identity confirms a new person over its first
            # two frames before publishing them (no one-frame ghosts).
            assert len(with_people) >= 13
            person = with_people[-1]["people"][0]
            assert len(person["keypoints"]) == 21
            knee = person["angles"]["left_knee_flexion"]
            assert knee is not None and 0.0 <= knee <= 180.0
            assert "rep_count" in person and "active_faults" in person
        slots = [str(http.get(f"/streams/{i}").json()["slot"]) for i in ids]
        read = [metric_value(metrics, "pose_frames_read_total", {"stream": s}) for s in slots]
        assert all(v is not None and v >= 15 for v in read), read
        assert metric_value(metrics, "pose_stage_duration_seconds_count", {"stage": "detect"})

        # Files end by themselves; each session is then closed in the database.
        def ended() -> bool:
            return all(http.get(f"/sessions/{i}").json()["status"] == "ended" for i in ids)

        assert wait_until(ended, 240, 1.0)
        for i in ids:
            session = http.get(f"/sessions/{i}").json()
            assert session["frames"] == 100
            assert session["kind"] == "stream" and session["exercise"] == "squat"


def test_replayed_squats_are_counted_and_stored_rep_by_rep(server) -> None:
    with server.client() as http:
        r = http.post(
            "/streams", json={"source": "squat4.jsonl", "exercise": "squat", "realtime": False}
        )
        assert r.status_code == 201, r.text
        stream = r.json()
        assert stream["backend"] == "replay"
        sid = stream["id"]
        assert wait_until(lambda: http.get(f"/sessions/{sid}").json()["status"] == "ended", 60)
        session = http.get(f"/sessions/{sid}").json()
        assert session["rep_count"] == 4
        assert [rep["index"] for rep in session["reps"]] == [1, 2, 3, 4]
        for rep in session["reps"]:
            assert rep["person_id"] == 1
            assert 0 <= rep["score"] <= 100
            assert rep["metrics"]["rom_deg"] > 60
        listed = {s["id"]: s for s in http.get("/sessions").json()}
        assert listed[sid]["rep_count"] == 4
        metrics = http.get("/metrics").text
        assert (metric_value(metrics, "pose_reps_total", {"exercise": "squat"}) or 0) >= 4


def test_stopping_a_stream_ends_its_session(server) -> None:
    with server.client() as http:
        sid = http.post(
            "/streams", json={"source": "squat12.jsonl", "exercise": "squat", "realtime": True}
        ).json()["id"]
        assert wait_until(lambda: http.get(f"/streams/{sid}").json()["frames_processed"] > 10, 30)
        stopped = http.delete(f"/streams/{sid}")
        assert stopped.status_code == 200
        assert stopped.json()["state"] == "stopped"
        session = http.get(f"/sessions/{sid}").json()
        assert session["status"] == "ended" and session["ended_at"] is not None
        assert http.get(f"/streams/{sid}").status_code == 404
        assert http.delete(f"/streams/{sid}").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"source": "squat4.jsonl", "exercise": "deadlift"}, 422, "known exercises: "),
        ({"source": "../../etc/passwd", "exercise": "squat"}, 400, "outside the data directory"),
        ({"source": "/etc/hostname", "exercise": "squat"}, 400, "outside the data directory"),
        ({"source": "missing.mp4", "exercise": "squat"}, 400, "does not exist"),
        ({"source": "notes.txt", "exercise": "squat"}, 400, "not a supported file"),
        ({"source": "ftp://example.org/x.mp4", "exercise": "squat"}, 400, "unsupported URL"),
        ({"source": 7, "exercise": "squat"}, 400, "camera 7"),
        ({"source": "samples/cam01.mp4", "exercise": "squat", "backend": "x"}, 422, "backend"),
        ({"source": "samples/cam01.mp4", "exercise": "squat", "backend": "replay"}, 422, "replay"),
        ({"source": "samples/cam01.mp4", "exercise": "squat", "model": "nope"}, 422, "download"),
        ({"exercise": "squat"}, 422, "source"),
        ({"source": "squat4.jsonl", "exercise": "squat", "colour": "red"}, 422, "colour"),
    ],
)
def test_bad_stream_requests_get_a_clear_4xx(server, body: dict, status: int, needle: str) -> None:
    with server.client() as http:
        r = http.post("/streams", json=body)
        assert r.status_code == status, r.text
        assert needle in json.dumps(r.json())
        assert http.get("/health").status_code == 200


def test_unknown_ids_and_malformed_json_are_4xx(server) -> None:
    with server.client() as http:
        assert http.get("/streams/nope").status_code == 404
        assert http.get("/sessions/nope").status_code == 404
        assert http.get("/jobs/nope").status_code == 404
        r = http.post(
            "/streams", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 422
        assert http.get("/sessions", params={"limit": 0}).status_code == 422


def test_too_many_streams_is_429(server, data_dir: Path) -> None:
    with server.client() as http:
        started = []
        try:
            for _ in range(6):
                r = http.post(
                    "/streams",
                    json={"source": "squat12.jsonl", "exercise": "squat", "realtime": True},
                )
                if r.status_code == 429:
                    break
                started.append(r.json()["id"])
            r = http.post("/streams", json={"source": "squat12.jsonl", "exercise": "squat"})
            assert r.status_code == 429
            assert "too many streams" in r.json()["detail"]
        finally:
            for sid in started:
                http.delete(f"/streams/{sid}")


def test_upload_is_analysed_as_a_background_job(server) -> None:
    video = Path(server.data_dir) / "samples" / "cam01.mp4"
    with server.client() as http:
        r = http.post(
            "/analyze",
            files={"file": ("cam01.mp4", video.read_bytes(), "video/mp4")},
            data={"exercise": "squat"},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        def done() -> dict | None:
            job = http.get(f"/jobs/{job_id}").json()
            return job if job["state"] in ("succeeded", "failed") else None

        job = wait_until(done, 180, 0.5)
        assert job and job["state"] == "succeeded", job
        assert job["progress"] == 1.0 and job["frames_done"] == 100
        report = job["report"]
        assert report["frames"] == 100 and report["exercise"] == "squat"
        assert len(report["people"]) >= 1 and report["people"][0]["frames_seen"] >= 95
        assert http.get(f"/sessions/{job_id}").json()["kind"] == "upload"

        bad = http.post(
            "/analyze",
            files={"file": ("x.mp4", b"\x00\x01garbage" * 100, "video/mp4")},
            data={"exercise": "squat"},
        )
        assert bad.status_code == 202
        failed = wait_until(
            lambda: http.get(f"/jobs/{bad.json()['id']}").json()["state"] == "failed", 60
        )
        assert failed
        assert "cannot be decoded" in http.get(f"/jobs/{bad.json()['id']}").json()["error"]

        assert (
            http.post(
                "/analyze",
                files={"file": ("a.txt", b"hello", "text/plain")},
                data={"exercise": "squat"},
            ).status_code
            == 415
        )
        assert (
            http.post(
                "/analyze", files={"file": ("a.mp4", b"", "video/mp4")}, data={"exercise": "squat"}
            ).status_code
            == 400
        )
        assert (
            http.post(
                "/analyze", files={"file": ("a.mp4", b"x", "video/mp4")}, data={"exercise": "nope"}
            ).status_code
            == 422
        )


def test_oversized_upload_is_413_and_nothing_is_kept(tmp_path: Path, data_dir: Path) -> None:
    uploads = data_dir / "uploads"
    before = set(uploads.glob("*")) if uploads.exists() else set()
    with (
        running_server(
            data_dir, f"sqlite:///{tmp_path / 'db.sqlite'}", POSE_MAX_UPLOAD_BYTES="1000"
        ) as srv,
        srv.client() as http,
    ):
        r = http.post(
            "/analyze",
            files={"file": ("big.mp4", b"0" * 5000, "video/mp4")},
            data={"exercise": "squat"},
        )
        assert r.status_code == 413
        assert "larger than 1000 bytes" in r.json()["detail"]
        after = set(uploads.glob("*")) if uploads.exists() else set()
        assert after == before  # the partial upload was removed


def test_api_key_guards_every_route_and_the_websocket(tmp_path: Path, data_dir: Path) -> None:
    """/health and /metrics stay open for operations; everything else needs the key."""
    with running_server(data_dir, f"sqlite:///{tmp_path / 'k.db'}", POSE_API_KEY="s3cret") as srv:
        with srv.client() as http:
            assert http.get("/health").status_code == 200
            assert http.get("/metrics").status_code == 200
            assert http.get("/streams").status_code == 401
            assert http.get("/streams", params={"api_key": "s3cret"}).status_code == 401
            assert http.get("/streams", headers={"X-API-Key": "s3cret"}).status_code == 200
            sid = http.post(
                "/streams",
                json={"source": "squat12.jsonl", "exercise": "squat"},
                headers={"X-API-Key": "s3cret"},
            ).json()["id"]

        async def try_ws(query: str) -> int | None:
            try:
                async with websockets.connect(
                    f"ws://127.0.0.1:{srv.port}/ws/streams/{sid}{query}"
                ) as ws:
                    await asyncio.wait_for(ws.recv(), 20)
                    return None
            except websockets.ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None

        assert asyncio.run(try_ws("")) == 4401
        assert asyncio.run(try_ws("?api_key=s3cret")) is None


def test_the_service_survives_sigkill_and_keeps_every_completed_rep(
    tmp_path: Path, data_dir: Path
) -> None:
    _kill_mid_session(f"sqlite:///{tmp_path / 'crash.db'}", data_dir)


@pytest.mark.skipif(
    not os.environ.get("AIML_TEST_POSTGRES_URL"),
    reason="AIML_TEST_POSTGRES_URL is not set (.ci/run starts PostgreSQL and sets it)",
)
def test_postgresql_keeps_every_completed_rep_across_sigkill(data_dir: Path) -> None:
    _kill_mid_session(os.environ["AIML_TEST_POSTGRES_URL"], data_dir)


def _kill_mid_session(database_url: str, data_dir: Path) -> None:
    from service_helpers import Server

    server = Server(data_dir, database_url).start()
    seen_reps = 0
    try:
        with server.client() as http:
            sid = http.post(
                "/streams", json={"source": "squat12.jsonl", "exercise": "squat", "realtime": True}
            ).json()["id"]

            async def watch() -> int:
                best = 0
                url = f"ws://127.0.0.1:{server.port}/ws/streams/{sid}"
                async with websockets.connect(url) as ws:
                    async with asyncio.timeout(60):
                        async for raw in ws:
                            people = json.loads(raw)["people"]
                            best = max([best] + [p["rep_count"] for p in people])
                            if best >= 3:
                                return best
                return best

            seen_reps = asyncio.run(watch())
            assert seen_reps >= 3
    finally:
        server.kill()  # SIGKILL: no shutdown handler runs
    assert server.proc is not None and server.proc.returncode == -9
    restarted = Server(data_dir, database_url).start()
    try:
        with restarted.client() as http:
            session = http.get(f"/sessions/{sid}").json()
            assert session["status"] == "interrupted"
            assert session["rep_count"] >= seen_reps
            assert [r["index"] for r in session["reps"]] == list(range(1, session["rep_count"] + 1))
    finally:
        restarted.stop()
    time.sleep(0.1)
