"""With AIML_RAY_ADDRESS set, `/analyze` uploads run as Ray tasks (real server, real cluster).

The cluster is the session's two-node cluster (conftest.py `ray_cluster`, 1 CPU
per node); the uploads are synthetic athletes with a known number of squats
(keypoint files, replayed), so every count below is ground truth. The
reference for "the same report" is the same upload to a service without Ray.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from service_helpers import Server, wait_until
from synthetic import make_recording

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from ray_cluster import RayCluster

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SHORT_REPS = 4
LONG_REPS = 120  # ~10k frames: a few seconds of replay, long enough to watch and disturb
TASK_TITLE = "ray::analyze_upload"
# A 100-frame Pose2Sim view: MediaPipe detects frame by frame, so progress moves.
CLIP = Path(__file__).resolve().parents[3] / "data/samples/pose2sim/single/cam01.mp4"
CLIP_FRAMES = 100


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("uploads")
    out = {}
    for name, reps in (("short.jsonl", SHORT_REPS), ("long.jsonl", LONG_REPS)):
        make_recording("squat", reps, fps=30.0).write(folder / name)
        out[name] = (folder / name).read_bytes()
    return out


def _server(root: Path, name: str, **env: str) -> Server:
    data = root / name / "data"
    data.mkdir(parents=True)
    return Server(data, f"sqlite:///{root / name / 'pose.db'}", **env).start()


@pytest.fixture(scope="module")
def ray_server(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ray-service")
    server = _server(root, "ray", AIML_RAY_ADDRESS=ray_cluster.address, **ray_cluster.env())
    try:
        yield server
    finally:
        server.stop()


def _submit(http: Any, name: str, data: bytes, **form: str) -> str:
    r = http.post(
        "/analyze",
        files={"file": (name, data, "application/octet-stream")},
        data={"exercise": "squat", **form},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _ended(http: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
        return job if job["state"] not in ("queued", "running") else None

    job = wait_until(ended, timeout, 0.1)
    assert job, f"job {job_id} did not end in {timeout} s"
    return job


def _reps(report: dict[str, Any]) -> dict[int, int]:
    return {p["id"]: p["rep_count"] for p in report["people"]}


def _task_processes(cluster: RayCluster) -> list[psutil.Process]:
    """Ray workers of the cluster executing an upload task now (Ray titles them by task)."""
    found = []
    for node in cluster.nodes:
        for p in node.processes():
            try:
                if TASK_TITLE in " ".join(p.cmdline()):
                    found.append(p)
            except psutil.Error:
                continue
    return found


def test_upload_jobs_run_on_ray_with_progress_and_the_local_report(
    ray_server: Server, ray_cluster: RayCluster, uploads: dict[str, bytes], tmp_path: Path
) -> None:
    nodes = {n["NodeID"] for n in ray_cluster.alive_nodes()}
    with ray_server.client() as http:
        video_id = _submit(http, "cam01.mp4", CLIP.read_bytes(), backend="mediapipe", model="lite")
        short_id = _submit(http, "short.jsonl", uploads["short.jsonl"])
        long_id = _submit(http, "long.jsonl", uploads["long.jsonl"])

        # Live progress from the worker: frames detected so far, several times while it runs.
        seen: list[dict[str, Any]] = []

        def midway() -> bool:
            job: dict[str, Any] = http.get(f"/jobs/{video_id}").json()
            moving = job["state"] == "running" and 1 < job["frames_done"] < CLIP_FRAMES
            if moving and (not seen or seen[-1]["frames_done"] != job["frames_done"]):
                seen.append(job)
            return len(seen) >= 3 or job["state"] not in ("queued", "running")

        assert wait_until(midway, 180, 0.05)
        assert len(seen) >= 3, (seen, http.get(f"/jobs/{video_id}").json())
        done = [j["frames_done"] for j in seen]
        assert done == sorted(done) and all(j["frames_total"] == CLIP_FRAMES for j in seen)
        assert all(j["node_id"] in nodes and 0 < j["progress"] < 1 for j in seen)
        video = _ended(http, video_id, 180)
        assert video["state"] == "succeeded", video
        assert video["frames_done"] == video["report"]["frames"] == CLIP_FRAMES

        short, long = _ended(http, short_id), _ended(http, long_id)
        for job, reps in ((short, SHORT_REPS), (long, LONG_REPS)):
            assert job["state"] == "succeeded", job
            assert _reps(job["report"]) == {1: reps}
            assert job["progress"] == 1.0 and job["frames_done"] == job["frames_total"]
            assert job["frames_done"] == job["report"]["frames"] > 0
            session = http.get(f"/sessions/{job['id']}").json()
            assert session["kind"] == "upload" and session["rep_count"] == reps

    # The same upload to a service without Ray: the same report.
    local = _server(tmp_path, "local")
    try:
        with local.client() as http:
            reference = _ended(http, _submit(http, "short.jsonl", uploads["short.jsonl"]))
    finally:
        local.stop()
    assert reference["state"] == "succeeded"
    assert reference["node_id"] is None
    assert short["report"] == reference["report"]


def test_failures_on_ray_carry_the_users_reason(ray_server: Server) -> None:
    clip = CLIP
    with ray_server.client() as http:
        broken = _submit(http, "broken.jsonl", b'{"t": 0.0, "frame": 0, "people": "nobody"}\n')
        garbage = _submit(http, "x.mp4", b"\x00\x01garbage" * 100)
        # The model is looked up on the worker, in its own models directory.
        missing = _submit(
            http, "cam01.mp4", clip.read_bytes(), backend="yolo", model="absent-pose.pt"
        )
        for job_id, needle in (
            (broken, "broken.jsonl line 1"),
            (garbage, "cannot be decoded"),
            (missing, "absent-pose.pt"),
        ):
            job = _ended(http, job_id)
            assert job["state"] == "failed" and needle in job["error"], job
            assert "Traceback" not in job["error"] and "RayTaskError" not in job["error"]
            assert http.get(f"/sessions/{job_id}").json()["status"] == "failed"
        assert "Ray node" in _ended(http, missing)["error"]


def test_cancel_ends_the_ray_task(
    ray_server: Server, ray_cluster: RayCluster, uploads: dict[str, bytes]
) -> None:
    with ray_server.client() as http:
        job_id = _submit(http, "long.jsonl", uploads["long.jsonl"])
        running = wait_until(
            lambda: http.get(f"/jobs/{job_id}").json()["frames_done"] > 0, 120, 0.05
        )
        assert running
        assert _task_processes(ray_cluster), "no worker is running the upload task"
        r = http.delete(f"/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
        # ray.cancel(force=True) ended the worker that ran it.
        assert wait_until(lambda: not _task_processes(ray_cluster), 30), "task still running"
        job = http.get(f"/jobs/{job_id}").json()
        assert job["state"] == "cancelled" and job["error"] == "cancelled by request"
        # It never finished: no report, no reps (replay reads every frame first, so the
        # frame count is no witness).
        assert job["report"] is None
        assert http.get(f"/sessions/{job_id}").json()["rep_count"] == 0
        assert http.delete(f"/jobs/{job_id}").status_code == 409


def test_a_timed_out_ray_job_fails_and_its_task_ends(
    ray_cluster: RayCluster, uploads: dict[str, bytes], tmp_path: Path
) -> None:
    server = _server(
        tmp_path, "timeout", AIML_RAY_ADDRESS=ray_cluster.address, POSE_JOB_TIMEOUT_S="0.5",
        **ray_cluster.env(),
    )  # fmt: skip
    try:
        with server.client() as http:
            job = _ended(http, _submit(http, "long.jsonl", uploads["long.jsonl"]))
            assert job["state"] == "failed", job
            assert job["error"] == "timed out after 0.5 s (POSE_JOB_TIMEOUT_S)"
            assert job["report"] is None
            assert http.get(f"/sessions/{job['id']}").json()["rep_count"] == 0
            assert wait_until(lambda: not _task_processes(ray_cluster), 30), "task still running"
    finally:
        server.stop()


def test_a_worker_node_killed_mid_job_is_retried_and_stored_once(
    ray_server: Server, ray_cluster: RayCluster, uploads: dict[str, bytes]
) -> None:
    """kill -9 of a third node's raylet while it runs a job: run again elsewhere, stored once."""
    doomed = ray_cluster.add_node(num_cpus=1, resources={"doomed-upload": 1})
    try:
        doomed_id = next(
            n["NodeID"] for n in ray_cluster.alive_nodes() if n["Resources"].get("doomed-upload")
        )
        with ray_server.client() as http:
            # One job per node (1 CPU each), so one of them runs on the doomed node.
            ids = [_submit(http, "long.jsonl", uploads["long.jsonl"]) for _ in range(3)]

            def on_doomed() -> str | None:
                for job_id in ids:
                    job = http.get(f"/jobs/{job_id}").json()
                    if job["node_id"] == doomed_id and job["frames_done"] > 0:
                        return job_id
                return None

            victim = wait_until(on_doomed, 120, 0.05)
            assert victim, [http.get(f"/jobs/{i}").json() for i in ids]
            doomed.raylet().kill()  # SIGKILL
            # Ray runs it again (max_retries=1) on a node that survived.
            retried = wait_until(
                lambda: http.get(f"/jobs/{victim}").json()["node_id"] not in (None, doomed_id),
                120,
                0.05,
            )
            assert retried, http.get(f"/jobs/{victim}").json()
            jobs = [_ended(http, job_id, 180) for job_id in ids]
            for job in jobs:
                assert job["state"] == "succeeded", job
                assert _reps(job["report"]) == {1: LONG_REPS}
                session = http.get(f"/sessions/{job['id']}").json()
                # Every rep once: a retried task's result is stored once, under the job id.
                assert session["rep_count"] == LONG_REPS
                indices = [r["index"] for r in session["reps"]]
                assert sorted(indices) == sorted(set(indices)) and len(indices) == LONG_REPS
    finally:
        ray_cluster.remove_node(doomed)


def test_a_service_restart_runs_its_ray_jobs_again_once(
    ray_cluster: RayCluster, uploads: dict[str, bytes], tmp_path: Path
) -> None:
    """SIGKILL of the service mid-job: Ray ends the dead driver's task, the restart runs it once."""
    env = {"AIML_RAY_ADDRESS": ray_cluster.address, **ray_cluster.env()}
    first = _server(tmp_path, "restart", **env)
    try:
        with first.client() as http:
            job_id = _submit(http, "long.jsonl", uploads["long.jsonl"])
            assert wait_until(
                lambda: http.get(f"/jobs/{job_id}").json()["frames_done"] > 0, 120, 0.05
            )
            assert _task_processes(ray_cluster), "no worker is running the upload task"
        first.kill()
        # The task belonged to the dead driver: Ray ends it, nothing runs it twice.
        assert wait_until(lambda: not _task_processes(ray_cluster), 60), "orphan task running"
    finally:
        first.kill()
    second = Server(first.data_dir, first.database_url, **env).start()
    try:
        with second.client() as http:
            job = _ended(http, job_id)
            assert job["state"] == "succeeded", job
            assert _reps(job["report"]) == {1: LONG_REPS}
            assert http.get(f"/sessions/{job_id}").json()["rep_count"] == LONG_REPS
            assert len(http.get("/jobs").json()) == 1
    finally:
        second.stop()
