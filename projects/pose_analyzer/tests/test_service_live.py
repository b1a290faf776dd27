"""Live sources and slow clients on a real server: ffmpeg over UDP, a client that never reads."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import websockets
from service_helpers import free_port, make_data_dir, metric_value, running_server, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed"),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = make_data_dir(tmp_path_factory.mktemp("pose-live"))
    # A 12 s, 540x960, 30 fps loop of view 1: long enough to watch a stream live,
    # small enough that MediaPipe keeps up on two cores.
    subprocess.run(
        [
            "ffmpeg", "-loglevel", "error", "-y", "-stream_loop", "7",
            "-i", str(data / "samples" / "cam01.mp4"),
            "-vf", "scale=540:960,fps=30", "-t", "12",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            str(data / "loop.mp4"),
        ],
        check=True,
        timeout=120,
    )  # fmt: skip
    return data


@pytest.fixture(scope="module")
def server(data_dir: Path):
    with running_server(
        data_dir,
        f"sqlite:///{data_dir.parent / 'live.db'}",
        POSE_DEFAULT_MODEL="lite",
        POSE_WS_QUEUE="8",
        POSE_WS_OVERFLOW_DISCONNECT_S="1.0",
        POSE_RECONNECT_INITIAL_S="0.3",
        POSE_RECONNECT_MAX_S="1.0",
        # The planner answers 1 on a CPU; the batching across streams is tested at 4.
        POSE_YOLO_BATCH="4",
    ) as srv:
        yield srv


def _ffmpeg_udp(video: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "ffmpeg", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(video),
            "-c:v", "mpeg2video", "-q:v", "5", "-g", "15", "-an",
            "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316",
        ],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_udp_stream_goes_live_reconnects_after_ffmpeg_dies_and_comes_back(
    server, data_dir: Path
) -> None:
    port = free_port()
    ffmpeg = _ffmpeg_udp(data_dir / "loop.mp4", port)
    try:
        with server.client() as http:
            r = http.post(
                "/streams", json={"source": f"udp://127.0.0.1:{port}", "exercise": "squat"}
            )
            assert r.status_code == 201, r.text
            sid = r.json()["id"]

            def state() -> str:
                return str(http.get(f"/streams/{sid}").json()["state"])

            def processed() -> int:
                return int(http.get(f"/streams/{sid}").json()["frames_processed"])

            assert wait_until(lambda: state() == "live" and processed() > 5, 60), state()
            _stop(ffmpeg)
            assert wait_until(lambda: state() in ("reconnecting", "connecting"), 30), state()
            before = processed()
            ffmpeg = _ffmpeg_udp(data_dir / "loop.mp4", port)
            assert wait_until(lambda: state() == "live" and processed() > before + 5, 60), state()
            info = http.get(f"/streams/{sid}").json()
            assert info["reconnects"] >= 1
            assert info["drop_policy"] == "drop_oldest"
            metrics = http.get("/metrics").text
            assert (
                metric_value(metrics, "pose_stream_reconnects_total", {"stream": str(info["slot"])})
                or 0
            ) >= 1
            assert http.delete(f"/streams/{sid}").status_code == 200
    finally:
        _stop(ffmpeg)


def _silent_ws_client(port: int, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    return sock


def test_a_client_that_reads_nothing_does_not_slow_the_others_and_is_disconnected(
    server,
) -> None:
    with server.client() as http:
        sid = http.post(
            "/streams", json={"source": "loop.mp4", "exercise": "squat", "realtime": True}
        ).json()["id"]
        assert wait_until(lambda: http.get(f"/streams/{sid}").json()["frames_processed"] > 3, 60)
        slow = _silent_ws_client(server.port, f"/ws/streams/{sid}?frames=true")
        try:

            async def fast_client() -> tuple[int, int, int]:
                count = 0
                start_frames = http.get(f"/streams/{sid}").json()["frames_processed"]
                async with websockets.connect(
                    f"ws://127.0.0.1:{server.port}/ws/streams/{sid}?frames=true", max_size=None
                ) as ws:
                    deadline = time.monotonic() + 6.0
                    while time.monotonic() < deadline:
                        try:
                            await asyncio.wait_for(ws.recv(), 2.0)
                            count += 1
                        except TimeoutError:
                            break
                end_frames = http.get(f"/streams/{sid}").json()["frames_processed"]
                return count, start_frames, end_frames

            received, start, end = asyncio.run(fast_client())
            published = end - start
            assert published > 20, published
            # The fast client got (nearly) every message published while it listened,
            # although the silent client's queue overflowed the whole time.
            assert received >= 0.9 * published - 2, (received, published)

            def slow_dropped() -> bool:
                text = httpx.get(f"{server.url}/metrics").text
                return (
                    metric_value(text, "pose_websocket_disconnects_total", {"reason": "slow"}) or 0
                ) >= 1

            assert wait_until(slow_dropped, 30)
            metrics = http.get("/metrics").text
            assert (metric_value(metrics, "pose_websocket_messages_dropped_total") or 0) > 0
            assert http.get(f"/streams/{sid}").json()["clients"] == 0
        finally:
            slow.close()
            http.delete(f"/streams/{sid}")


def test_a_dead_live_source_reports_connecting_without_blocking_the_service(server) -> None:
    port = free_port()  # nothing sends there
    with server.client() as http:
        sid = http.post(
            "/streams", json={"source": f"udp://127.0.0.1:{port}", "exercise": "squat"}
        ).json()["id"]
        time.sleep(2)
        info = http.get(f"/streams/{sid}").json()
        assert info["state"] in ("connecting", "reconnecting")
        assert http.get("/health").json()["status"] == "ok"
        assert http.delete(f"/streams/{sid}").status_code == 200


def test_stream_message_is_json_a_browser_can_parse(server) -> None:
    async def one() -> str:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            sid = http.post(
                "/streams", json={"source": "loop.mp4", "exercise": "squat", "realtime": False}
            ).json()["id"]
        try:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws/streams/{sid}") as ws:
                return str(await asyncio.wait_for(ws.recv(), 60))
        finally:
            httpx.delete(f"{server.url}/streams/{sid}", timeout=60)

    raw = asyncio.run(one())
    assert "NaN" not in raw and "Infinity" not in raw
    message = json.loads(raw)
    assert {"stream_id", "frame", "t", "people", "state", "exercise"} <= set(message)


def test_yolo_streams_share_batched_inference(server) -> None:
    """Four YOLO11-pose streams (real architecture, random weights) feed one batched detector."""
    with server.client() as http:
        missing = http.post(
            "/streams", json={"source": "loop.mp4", "exercise": "squat", "backend": "yolo"}
        )
        assert missing.status_code == 422
        assert "make download-models" in missing.json()["detail"]

        ids = [
            http.post(
                "/streams",
                json={
                    "source": "loop.mp4",
                    "exercise": "squat",
                    "backend": "yolo",
                    "model": "yolo11n-pose.yaml",
                    "realtime": False,
                },
            ).json()["id"]
            for _ in range(4)
        ]
        try:
            assert wait_until(
                lambda: all(
                    http.get(f"/streams/{i}").json()["frames_processed"] >= 10 for i in ids
                ),
                180,
            )
            metrics = http.get("/metrics").text
            batches = metric_value(metrics, "pose_detect_batch_frames_count") or 0
            frames = metric_value(metrics, "pose_detect_batch_frames_sum") or 0
            assert batches > 0
            # While one batch runs, the other streams' frames queue up and go together.
            assert frames / batches > 1.5, (frames, batches)
            for i in ids:
                info = http.get(f"/streams/{i}").json()
                assert info["backend"] == "yolo" and info["people"] == 0  # random weights
        finally:
            for i in ids:
                http.delete(f"/streams/{i}")
