#!/usr/bin/env python3
"""Four Pose2Sim views streamed at their native rate (60 fps) through a real pose service.

Per stream: processed fps, drop ratio (frames the reader dropped to stay live),
frame-to-publish latency p50/p99 (from the `latency_s` field of every WebSocket
message), and p99 of the first vs the second half of the run: with frames
dropped, latency must stay bounded (no queue growth), so the ratio stays near 1.

Usage: python bench/bench_pose_service.py [--seconds 20] [--model lite|full|heavy]
Writes bench/results/pose_service.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import websockets

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples" / "pose2sim" / "single"
RESULTS = REPO / "bench" / "results" / "pose_service.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_loops(data: Path, seconds: float) -> list[str]:
    """Each view looped to `seconds` (stream copy: the original frames, no re-encoding)."""
    names = []
    for cam in ("cam01", "cam02", "cam03", "cam04"):
        loops = max(0, int(np.ceil(seconds / (100 / 60))) - 1)
        out = data / f"{cam}_loop.mp4"
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", str(loops),
             "-i", str(SAMPLES / f"{cam}.mp4"), "-c", "copy", str(out)],
            check=True,
        )  # fmt: skip
        names.append(out.name)
    return names


async def watch(port: int, stream_id: str, seconds: float) -> list[dict]:
    out: list[dict] = []
    url = f"ws://127.0.0.1:{port}/ws/streams/{stream_id}"
    async with websockets.connect(url, max_size=None) as ws:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
            except (TimeoutError, websockets.ConnectionClosed):
                break
            message = json.loads(raw)
            out.append(
                {"t": message["t"], "latency_s": message["latency_s"], "at": time.monotonic()}
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--model", default="full")
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        print("ffmpeg is required", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        names = make_loops(data, args.seconds + 5)
        port = free_port()
        env = dict(os.environ, POSE_DATA_DIR=str(data), POSE_DATABASE_URL=f"sqlite:///{tmp}/b.db",
                   POSE_LOG_LEVEL="warning", POSE_DEFAULT_MODEL=args.model)  # fmt: skip
        server = subprocess.Popen(
            [sys.executable, "-m", "pose_analyzer.cli", "serve", "--port", str(port)], env=env
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(240):
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            with httpx.Client(base_url=base, timeout=120) as http:
                ids = [
                    http.post("/streams", json={"source": n, "exercise": "squat"}).json()["id"]
                    for n in names
                ]

                async def all_watch() -> list[list[dict]]:
                    return await asyncio.gather(*(watch(port, i, args.seconds) for i in ids))

                messages = asyncio.run(all_watch())
                infos = [http.get(f"/streams/{i}").json() for i in ids]
                for i in ids:
                    http.delete(f"/streams/{i}")
        finally:
            server.terminate()
            server.wait(30)
    streams = []
    for name, msgs, info in zip(names, messages, infos, strict=True):
        lat = np.array([m["latency_s"] for m in msgs])
        half = len(lat) // 2
        span = msgs[-1]["at"] - msgs[0]["at"] if len(msgs) > 1 else float("nan")
        read = info["frames_read"]
        streams.append(
            {
                "source": name,
                "messages": len(msgs),
                "processed_fps": round((len(msgs) - 1) / span, 2) if len(msgs) > 1 else 0.0,
                "source_fps": 60.0,
                "drop_ratio": round(info["frames_dropped"] / read, 4) if read else None,
                "latency_p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1),
                "latency_p99_ms": round(float(np.percentile(lat, 99)) * 1000, 1),
                "latency_p99_first_half_ms": round(float(np.percentile(lat[:half], 99)) * 1000, 1),
                "latency_p99_second_half_ms": round(float(np.percentile(lat[half:], 99)) * 1000, 1),
            }
        )
    result = {
        "benchmark": "pose_service_4_streams_native_rate",
        "command": "python bench/bench_pose_service.py "
        + f"--seconds {args.seconds:g} --model {args.model}",
        "model": f"mediapipe {args.model}",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d"),
        "streams": streams,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
