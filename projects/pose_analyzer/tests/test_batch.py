"""`pose-analyzer batch` on a real two-node Ray cluster (two `ray start` nodes on loopback).

The recordings are keypoint files MediaPipe exported from the Pose2Sim and
Sports2D sample views (tests/data/batch, see its README) plus one synthetic
athlete with 4 known squats; the reference is `analyze` run on each file
alone through the same entry point the CLI uses.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from synthetic import make_recording

from pose_analyzer.batch import BatchOptions, content_hash, discover, run_batch, video_key
from pose_analyzer.cli import main
from pose_analyzer.recordings import run_analysis
from pose_analyzer.storage import Database, RepRow, SessionRow
from pose_analyzer.storage.db import upgrade

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from ray_cluster import RayCluster

DATA = Path(__file__).parent / "data" / "batch"
SYNTHETIC_REPS = 4

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def cluster(ray_cluster: RayCluster) -> RayCluster:
    return ray_cluster


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    for packed in sorted(DATA.glob("*.jsonl.gz")):
        (folder / packed.name.removesuffix(".gz")).write_bytes(gzip.decompress(packed.read_bytes()))
    make_recording("squat", SYNTHETIC_REPS).write(folder / "synthetic_squat.jsonl")
    return folder


@pytest.fixture(scope="module")
def sequential(clips: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`analyze` on each recording alone: the reports a batch must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("sequential")
    for clip in discover(str(clips)):
        run_analysis(clip, "squat", out_dir=out / clip.stem, video=False, progress=False)
    return out


def _db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pose.db'}"


def _batch(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["batch", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _sessions(url: str) -> dict[str, tuple[str, str, int]]:
    """session id -> (source, status, number of reps), straight from the tables."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(SessionRow.id, SessionRow.source, SessionRow.status, func.count(RepRow.id))
                .outerjoin(RepRow, RepRow.session_id == SessionRow.id)
                .group_by(SessionRow.id)
            ).all()
    finally:
        engine.dispose()
    return {r[0]: (r[1], r[2], int(r[3])) for r in rows}


def _expected_reps(sequential: Path, stem: str) -> int:
    report = json.loads((sequential / stem / "report.json").read_text())
    return sum(p["rep_count"] for p in report["people"])


def test_batch_on_two_nodes_gives_the_reports_of_sequential_analyze(
    cluster: RayCluster, clips: Path, sequential: Path, tmp_path: Path, capsys
) -> None:
    out, url = tmp_path / "batch", _db_url(tmp_path)
    rc, stdout, err = _batch(
        capsys, str(clips), "--exercise", "squat", "--no-video", "--out", str(out),
        "--cluster", cluster.address, "--database-url", url,
    )  # fmt: skip
    assert rc == 0, err
    stems = sorted(p.stem for p in clips.iterdir())
    assert len(stems) == 7 and "7 analysed" in stdout
    for stem in stems:
        for name in ("report.json", "angles.csv"):
            assert (out / stem / name).read_bytes() == (sequential / stem / name).read_bytes(), (
                stem,
                name,
            )
        assert (out / stem / "angles.png").stat().st_size > 0
    # Both nodes worked: the head and the node with the custom resource.
    sidecar = json.loads((out / "batch.json").read_text())
    used = {v["node_id"] for v in sidecar["videos"]}
    alive = {n["NodeID"] for n in cluster.alive_nodes()}
    assert used == alive and len(alive) == 2
    # Every session and rep in the database, keyed by content.
    sessions = _sessions(url)
    assert len(sessions) == 7
    for stem in stems:
        clip = clips / f"{stem}.jsonl"
        key = video_key(content_hash(clip), "squat", None, None)
        assert sessions[key] == (str(clip), "ended", _expected_reps(sequential, stem))
    assert (
        sessions[video_key(content_hash(clips / "synthetic_squat.jsonl"), "squat", None, None)][2]
        == SYNTHETIC_REPS
    )
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    synthetic = [r for r in rows if r["video"].endswith("synthetic_squat.jsonl")]
    assert [(r["athlete"], r["reps"], r["status"]) for r in synthetic] == [
        ("1", str(SYNTHETIC_REPS), "ok")
    ]
    assert {r["video"] for r in rows} == {str(clips / f"{s}.jsonl") for s in stems}


def test_rerun_skips_finished_recordings_and_force_redoes_them(
    cluster: RayCluster, clips: Path, tmp_path: Path, capsys
) -> None:
    out, url = tmp_path / "batch", _db_url(tmp_path)
    args = [str(clips), "--exercise", "squat", "--no-video", "--out", str(out),
            "--cluster", cluster.address, "--database-url", url]  # fmt: skip
    assert _batch(capsys, *args)[0] == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/report.json")}
    before = _sessions(url)
    rc, stdout, _ = _batch(capsys, *args)
    assert rc == 0 and "0 analysed, 7 already done" in stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/report.json")} == stamps
    # A recording whose report went missing is redone; the rest are still skipped.
    victim = next(iter(stamps))
    victim.unlink()
    rc, stdout, _ = _batch(capsys, *args)
    assert rc == 0 and "1 analysed, 6 already done" in stdout and victim.is_file()
    rc, stdout, _ = _batch(capsys, *args, "--force")
    assert rc == 0 and "7 analysed, 0 already done" in stdout
    assert all(p.stat().st_mtime_ns > stamps[p] for p in stamps if p != victim)
    # Redoing replaced each session: same keys, same reps, none twice.
    assert _sessions(url) == before


def test_a_failing_recording_is_marked_failed_and_the_batch_goes_on(
    cluster: RayCluster, clips: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("synthetic_squat.jsonl", "pose2sim_single_cam01.jsonl"):
        (folder / name).write_bytes((clips / name).read_bytes())
    (folder / "broken.jsonl").write_text('{"t": 0.0, "frame": 0, "people": "nobody"}\n')
    (folder / "truncated.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    out, url = tmp_path / "batch", _db_url(tmp_path)
    rc, _, err = _batch(
        capsys, str(folder), "--exercise", "squat", "--no-video", "--out", str(out),
        "--cluster", cluster.address, "--database-url", url,
    )  # fmt: skip
    assert rc == 2, err  # two recordings failed
    with (out / "summary.csv").open() as fh:
        rows = {r["video"].rsplit("/", 1)[-1]: r for r in csv.DictReader(fh)}
    assert rows["synthetic_squat.jsonl"]["reps"] == str(SYNTHETIC_REPS)
    assert rows["synthetic_squat.jsonl"]["status"] == "ok"
    for bad in ("broken.jsonl", "truncated.mp4"):
        assert rows[bad]["status"] == "failed" and rows[bad]["error"], rows[bad]
        assert "Traceback" not in rows[bad]["error"]
        assert f"failed: {folder / bad}:" in err
    assert (
        "broken.jsonl" in rows["broken.jsonl"]["error"] or "people" in rows["broken.jsonl"]["error"]
    )
    statuses = sorted(s for _, s, _ in _sessions(url).values())
    assert statuses == ["ended", "ended", "failed", "failed"]
    assert not (out / "broken").exists()


def test_killing_a_nodes_raylet_mid_batch_loses_and_duplicates_nothing(
    cluster: RayCluster, clips: Path, sequential: Path, tmp_path: Path
) -> None:
    """kill -9 of a third node's raylet while it runs a task: retried elsewhere, stored once."""
    doomed = cluster.add_node(num_cpus=1, resources={"doomed": 1})
    doomed_id = next(n["NodeID"] for n in cluster.alive_nodes() if n["Resources"].get("doomed"))
    killed: list[str] = []

    def on_event(kind: str, subject: object, info: dict[str, object]) -> None:
        if kind == "started" and info["node_id"] == doomed_id and not killed:
            doomed.raylet().kill()  # SIGKILL
            killed.append(subject.key)  # type: ignore[attr-defined]

    db = Database(_db_url(tmp_path))
    upgrade(db.engine)
    try:
        result = run_batch(
            discover(str(clips)),
            tmp_path / "batch",
            BatchOptions(exercise="squat"),
            database=db,
            cluster=cluster.address,
            progress=False,
            on_event=on_event,
        )
    finally:
        db.dispose()
        cluster.remove_node(doomed)
    assert killed, "no task ever started on the doomed node"
    assert [o.status for o in result.outcomes] == ["done"] * 7, [
        (o.error, o.attempts, doomed_id) for o in result.outcomes
    ]
    victim = next(o for o in result.outcomes if o.key == killed[0])
    # It started on the doomed node, then ran again on a surviving one.
    assert victim.attempts[0]["node_id"] == doomed_id
    assert victim.node_id != doomed_id and len(victim.attempts) >= 2
    sessions = _sessions(_db_url(tmp_path))
    assert len(sessions) == 7
    for o in result.outcomes:
        stem = Path(o.video).stem
        assert sessions[o.key][1:] == ("ended", _expected_reps(sequential, stem))
        assert (tmp_path / "batch" / stem / "report.json").read_bytes() == (
            sequential / stem / "report.json"
        ).read_bytes()
    engine = create_engine(_db_url(tmp_path))
    with engine.connect() as conn:
        dupes = conn.execute(
            text(
                'SELECT session_id, person_id, "index", COUNT(*) FROM reps '
                'GROUP BY session_id, person_id, "index" HAVING COUNT(*) > 1'
            )
        ).all()
    engine.dispose()
    assert dupes == []


def test_running_tasks_report_their_frames_to_the_driver(
    cluster: RayCluster, tmp_path: Path
) -> None:
    """Per-frame progress from the Ray tasks (what the bar's frames row draws), per video:
    two 100-frame Pose2Sim views through MediaPipe, which detects frame by frame."""
    samples = Path(__file__).resolve().parents[3] / "data" / "samples" / "pose2sim" / "single"
    folder = tmp_path / "videos"
    folder.mkdir()
    totals = {}
    for cam in ("cam01", "cam02"):
        path = folder / f"{cam}.mp4"
        path.write_bytes((samples / f"{cam}.mp4").read_bytes())
        totals[str(path)] = 100
    events: list[tuple[str, str, dict[str, Any]]] = []

    def on_event(kind: str, subject: object, info: dict[str, object]) -> None:
        events.append((kind, subject.video, dict(info)))  # type: ignore[attr-defined]

    db = Database(_db_url(tmp_path))
    upgrade(db.engine)
    try:
        result = run_batch(
            discover(str(folder)),
            tmp_path / "batch",
            BatchOptions(exercise="squat", backend="mediapipe", model="lite"),
            database=db,
            cluster=cluster.address,
            progress=False,
            on_event=on_event,
        )
    finally:
        db.dispose()
    assert [o.status for o in result.outcomes] == ["done", "done"], result.outcomes
    for video, total in totals.items():
        kinds = [k for k, v, _ in events if v == video]
        # started, then progress while it runs, then finished: nothing after the end.
        assert kinds[0] == "started" and kinds[-1] == "finished", kinds
        progress = [i for k, v, i in events if v == video and k == "progress"]
        assert all(i["frames_total"] == total for i in progress)
        done = [int(i["frames_done"]) for i in progress]
        assert done == sorted(done) and len(set(done)) == len(done)  # one attempt, forward
        # Frames counted while the video was being detected, not only when it ended.
        assert len([d for d in done if 0 < d < total]) >= 2, (done, total)
        finished = next(o for o in result.outcomes if o.video == video)
        assert finished.report is not None and finished.report["frames"] == total


def test_batch_with_nothing_to_analyze_says_so(tmp_path: Path, capsys) -> None:
    rc, _, err = _batch(
        capsys, str(tmp_path / "*.mp4"), "--exercise", "squat", "--out", str(tmp_path / "o"),
        "--database-url", _db_url(tmp_path),
    )  # fmt: skip
    assert rc == 2 and "no recordings found" in err and "Traceback" not in err
    rc, _, err = _batch(
        capsys, str(tmp_path), "--exercise", "no_such_exercise", "--out", str(tmp_path / "o"),
        "--database-url", _db_url(tmp_path),
    )  # fmt: skip
    assert rc == 2 and "no_such_exercise" in err


@pytest.mark.skipif(
    not os.environ.get("AIML_TEST_POSTGRES_URL"),
    reason="AIML_TEST_POSTGRES_URL is not set (.ci/run starts PostgreSQL and sets it)",
)
def test_batch_writes_sessions_to_postgresql(
    cluster: RayCluster, clips: Path, sequential: Path, tmp_path: Path, capsys
) -> None:
    url = os.environ["AIML_TEST_POSTGRES_URL"]
    folder = tmp_path / "one"
    folder.mkdir()
    clip = folder / "synthetic_squat.jsonl"
    clip.write_bytes((clips / "synthetic_squat.jsonl").read_bytes())
    rc, _, err = _batch(
        capsys, str(folder), "--exercise", "squat", "--no-video", "--out", str(tmp_path / "o"),
        "--cluster", cluster.address, "--database-url", url, "--force",
    )  # fmt: skip
    assert rc == 0, err
    key = video_key(content_hash(clip), "squat", None, None)
    assert _sessions(url)[key] == (str(clip), "ended", SYNTHETIC_REPS)
