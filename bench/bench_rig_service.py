#!/usr/bin/env python3
"""The rig through the service: a real server, a real WebSocket client, CPU.

Views are the Pose2Sim single-person demo's four views, replayed from the cached real
MediaPipe detections (`projects/pose_analyzer/tests/data/real/pose2sim_single_cam0N.jsonl`,
100 frames at 60 fps), so the figures are the service's own cost (readers, sync,
fusion, engine, storage, publish), not the detector's:

1. lockstep (`realtime: false`): every frame of every view, as fast as the rig goes:
   fused instants per second (server's instants / time from the first to the last
   message at the client), median over the rounds.
2. live (`realtime: true`, capture-time sync at 60 fps): the latency from reading the
   last view's frame of an instant to the client receiving that instant's message
   (both clocks are this machine's CLOCK_MONOTONIC), median and p99 over every instant
   of every round; the server's own figure (read to publish) beside it; instants/s and
   the share of instants with all four views.
3. with `--mediapipe`: the four demo videos decoded and detected by MediaPipe full in
   the rig (lockstep), fused instants/s, against each video alone as a stream
   (frames/s) in the same run: the ratio to the slowest view.

Usage: python bench/bench_rig_service.py [--rounds 5] [--mediapipe]
Writes bench/results/rig_service.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "projects" / "pose_analyzer" / "tests"))

import websockets  # noqa: E402
from multiview_helpers import DEMO_CALIB, VIEWS, make_rig_data_dir  # noqa: E402
from service_helpers import running_server  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "rig_service.json"


async def _follow(url: str) -> list[tuple[float, dict[str, Any]]]:
    out = []
    async with websockets.connect(url, max_size=None) as ws:
        async for text in ws:
            out.append((time.monotonic(), json.loads(text)))
    return out


def _start(client: Any, body: dict[str, Any]) -> str:
    r = client.post("/rigs", json=body)
    r.raise_for_status()
    return str(r.json()["id"])


def _body(folder: str, suffix: str, **kw: Any) -> dict[str, Any]:
    return {
        "sources": [f"{folder}/{v}.{suffix}" for v in VIEWS],
        "calibration": "Calib.qca.txt",
        "exercise": "squat",
        **kw,
    }


def _run(server: Any, client: Any, body: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    rig_id = _start(client, body)
    url = server.url.replace("http://", "ws://") + f"/ws/rigs/{rig_id}"
    got = asyncio.run(_follow(url))
    client.delete(f"/rigs/{rig_id}")
    return got


def lockstep(server: Any, client: Any, rounds: int, folder: str, suffix: str, **kw: Any) -> dict:
    rates = []
    for _ in range(rounds):
        got = _run(server, client, _body(folder, suffix, realtime=False, **kw))
        inst = [(t, m) for t, m in got if not m.get("final")]
        if len(inst) < 2:
            continue
        span = inst[-1][0] - inst[0][0]
        rates.append((len(inst) - 1) / span)
    return {
        "rounds": len(rates),
        "instants_per_s_median": round(statistics.median(rates), 1) if rates else None,
        "instants_per_s_all": [round(r, 1) for r in rates],
    }


def single_views(server: Any, client: Any) -> dict:
    """Each demo video alone as a stream (MediaPipe full, as fast as it goes): frames/s."""
    rates = {}
    for v in VIEWS:
        r = client.post(
            "/streams",
            json={
                "source": f"video/{v}.mp4",
                "exercise": "squat",
                "backend": "mediapipe",
                "model": "full",
                "realtime": False,
            },
        )
        r.raise_for_status()
        sid = r.json()["id"]
        url = server.url.replace("http://", "ws://") + f"/ws/streams/{sid}"
        got = [t for t, m in asyncio.run(_follow(url)) if not m.get("final")]
        rates[v] = round((len(got) - 1) / (got[-1] - got[0]), 1)
        client.delete(f"/streams/{sid}")
    return {"frames_per_s": rates, "slowest": min(rates.values())}


def live(server: Any, client: Any, rounds: int) -> dict:
    client_lat, server_lat, four, rates, counts = [], [], 0, [], []
    for _ in range(rounds):
        got = _run(server, client, _body("demo", "jsonl", realtime=True))
        inst = [(t, m) for t, m in got if not m.get("final")]
        counts.append(len(inst))
        for t, m in inst:
            client_lat.append(t - m["captured_monotonic_s"])
            server_lat.append(m["latency_s"])
            four += len(m["views_used"]) == 4
        if len(inst) > 1:
            rates.append((len(inst) - 1) / (inst[-1][0] - inst[0][0]))

    def ms(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)) * 1000, 2)

    n = len(client_lat)
    return {
        "rounds": rounds,
        "instants_per_round": counts,
        "instants_per_s_median": round(statistics.median(rates), 1),
        "share_with_4_views": round(four / n, 3),
        "last_frame_to_client_ms": {"median": ms(client_lat, 50), "p99": ms(client_lat, 99)},
        "last_frame_to_publish_ms_server": {
            "median": ms(server_lat, 50),
            "p99": ms(server_lat, 99),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mediapipe", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_rig_data_dir(Path(tmp), frames=60, reps=1)
        if args.mediapipe:
            (data / "video").mkdir()
            for v in VIEWS:
                shutil.copy(DEMO_CALIB.parent / f"{v}.mp4", data / "video" / f"{v}.mp4")
        db = f"sqlite:///{Path(tmp) / 'bench.db'}"
        with running_server(data, db) as server, server.client() as client:
            result: dict[str, Any] = {
                "benchmark": "rig_service",
                "command": "python bench/bench_rig_service.py " + " ".join(sys.argv[1:]),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "cores": os.cpu_count(),
                    "load_average_start": list(os.getloadavg()),
                },
                "views": "Pose2Sim single-person demo, 4 views x 100 frames, 60 fps",
                "lockstep_replay": lockstep(server, client, args.rounds, "demo", "jsonl"),
                "live_replay": live(server, client, args.rounds),
            }
            if args.mediapipe:
                alone = single_views(server, client)
                rig = lockstep(server, client, 1, "video", "mp4", backend="mediapipe", model="full")
                result["lockstep_mediapipe_full"] = rig
                result["single_view_mediapipe_full"] = alone
                rate = rig["instants_per_s_median"]
                result["rig_vs_slowest_view"] = round(rate / alone["slowest"], 3) if rate else None
        result["machine"]["load_average_end"] = list(os.getloadavg())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
