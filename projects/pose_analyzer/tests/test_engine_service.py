"""One engine, three drivers: the CLI, an upload job and a live stream of the same real
recording give the same numbers (a real server, a real WebSocket client)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import websockets
from service_helpers import running_server, wait_until

from pose_analyzer.recordings import run_analysis

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REAL = Path(__file__).parent / "data" / "real"
CLIP = REAL / "sports2d_demo.jsonl"
LABELS = tomllib.loads((REAL / "labels_reps.toml").read_text())["sports2d_demo"]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _listen(url: str, timeout: float) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    try:
        async with websockets.connect(url, max_size=None) as ws:
            async with asyncio.timeout(timeout):
                async for raw in ws:
                    messages.append(json.loads(raw))
                    if messages[-1].get("final"):
                        break
    except (TimeoutError, websockets.ConnectionClosed):
        pass
    return messages


def _totals(report: dict[str, Any]) -> tuple[list[int], int]:
    """(athletes' rep counts, sorted; the bystanders' reps together)."""
    people = report["people"]
    athletes = sorted(p["rep_count"] for p in people if p["role"] == "athlete")
    return athletes, sum(p["rep_count"] for p in people if p["role"] == "bystander")


def test_cli_upload_and_live_stream_agree_on_the_real_clip(tmp_path: Path) -> None:
    athlete, _ = LABELS["person"]
    cli, _ = run_analysis(CLIP, "jumping_jack", out_dir=tmp_path / "cli", video=False)
    cli_report = cli.to_dict()
    assert _totals(cli_report) == ([athlete["reps"]], 0)
    assert len(cli_report["people"]) <= len(LABELS["person"])

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(CLIP, data / "demo.jsonl")
    with (
        running_server(data, f"sqlite:///{tmp_path / 'engine.db'}") as server,
        server.client() as http,
    ):
        r = http.post(
            "/analyze",
            files={"file": ("demo.ndjson", CLIP.read_bytes(), "application/x-ndjson")},
            data={"exercise": "jumping_jack"},  # backend: from the file type
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        r = http.post(
            "/streams",
            json={"source": "demo.jsonl", "exercise": "jumping_jack", "realtime": False},
        )
        assert r.status_code == 201, r.text
        stream_id = r.json()["id"]
        messages = asyncio.run(_listen(f"ws://127.0.0.1:{server.port}/ws/streams/{stream_id}", 30))

        job = wait_until(
            lambda: (j := http.get(f"/jobs/{job_id}").json())["state"] != "running" and j, 60
        )
        assert job["state"] == "succeeded", job
        upload = job["report"]
        assert upload["backend"] == "replay"
        assert _totals(upload) == _totals(cli_report)
        assert [(p["role"], p["rep_count"]) for p in upload["people"]] == [
            (p["role"], p["rep_count"]) for p in cli_report["people"]
        ]
        assert (Path(data) / "jobs" / job_id / "angles.png").stat().st_size > 0

        stream = wait_until(
            lambda: (s := http.get(f"/streams/{stream_id}").json())["state"] == "ended" and s, 60
        )
        assert stream, http.get(f"/streams/{stream_id}").json()
        assert sorted(stream["athletes"].values()) == _totals(cli_report)[0]
        session = http.get(f"/sessions/{stream_id}").json()
        per_person = Counter(rep["person_id"] for rep in session["reps"])
        assert sorted(per_person.values()) == _totals(cli_report)[0]
        assert {str(k) for k in per_person} == set(stream["athletes"])

    # Every frame message names each person's role and id; athletes' totals never drop.
    frames = [m for m in messages if not m.get("final")]
    for m in frames:
        for person in m["people"]:
            assert (
                person["role"] in ("athlete", "bystander") and person["person_id"] == person["id"]
            )
            if person["rep_count"] > 0:
                assert person["role"] == "athlete"
    assert messages and messages[-1].get("final") is True  # even when connected late
    assert sorted(a["rep_count"] for a in messages[-1]["athletes"]) == _totals(cli_report)[0]
