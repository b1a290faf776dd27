"""The gpu_optimizer service end to end: a real uvicorn server, real worker processes, SQLite.

One server runs the jobs; it is then killed mid-job (SIGKILL, like a crash)
and a second server on the same database file shows what survived.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

USER_MODELS = textwrap.dedent(
    """
    import os
    import time

    from torch import nn


    def mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


    def raises():
        raise RuntimeError("factory exploded on purpose")


    def exits():
        os._exit(7)


    def sleeps():
        # Tell the test which process runs the job, then outlast it.
        with open(os.environ["SLEEPER_PID_FILE"] + f".{time.monotonic_ns()}", "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(120)
        return mlp()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(repr=False)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=300, **kw)

    def delete(self, path: str) -> httpx.Response:
        return httpx.delete(f"{self.url}{path}", timeout=30)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/profiles/{job_id}").json()
            if job["state"] not in ("queued", "running"):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")
            time.sleep(0.2)


def start_server(env_extra: dict[str, str], log: Path) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_OPT_")}
    env.pop("DATABASE_URL", None)
    env.update(env_extra)
    command = [sys.executable, "-m", "uvicorn", "gpu_optimizer.api:create_app", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with log.open("ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", proc, log, env)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"gpu_optimizer did not start: {log.read_text()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpu_optimizer_api")
    (root / "user_models").mkdir()
    (root / "user_models" / "nets.py").write_text(USER_MODELS)
    (root / "outside.py").write_text(USER_MODELS)
    return root


def base_env(workdir: Path) -> dict[str, str]:
    return {
        "GPU_OPT_DATA_DIR": str(workdir / "data"),
        "GPU_OPT_USER_MODELS_DIR": str(workdir / "user_models"),
        "GPU_OPT_WORKER_COUNT": "2",
        "GPU_OPT_RECOMMEND_WORKLOADS": '["yolo11n-pose-infer"]',
        "SLEEPER_PID_FILE": str(workdir / "sleeper.pid"),
        "GPU_OPT_CACHE_DIR": str(workdir / "plan_cache"),
    }


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[Server]:
    srv = start_server(base_env(workdir), workdir / "server1.log")
    try:
        yield srv
    finally:
        srv.stop()


def sleeper_pids(workdir: Path) -> list[int]:
    return [int(p.read_text()) for p in workdir.glob("sleeper.pid.*") if p.read_text()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


RESNET = {"model": "resnet18", "input_shape": [3, 224, 224], "batch_size": 8, "optimizer": "sgd"}


def test_gpus_is_an_empty_list_without_gpus(server: Server) -> None:
    from gpu_optimizer.nvml import default_reader

    if default_reader().read():
        pytest.skip("this machine has GPUs")
    response = server.get("/gpus")
    assert (response.status_code, response.json()) == (200, [])


def test_machines_are_the_profile_file(server: Server) -> None:
    from gpu_optimizer.machines import load_machine_profiles

    expected = [
        {
            "name": m.name,
            "gpu": m.gpu,
            "vram_bytes": m.vram_bytes,
            "compute_capability": m.compute_capability,
        }
        for m in load_machine_profiles()
    ]
    assert server.get("/machines").json() == expected


def test_estimate_job_result_equals_the_library(server: Server) -> None:
    created = server.post("/profiles", {**RESNET, "mode": "estimate"})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.headers["location"] == f"/profiles/{job_id}"

    from gpu_optimizer.estimator import estimate

    expected = estimate("resnet18", (3, 224, 224), 8, optimizer="sgd").to_dict(per_module=True)

    job = server.wait_job(job_id)
    assert job["state"] == "succeeded", job
    assert job["progress"] == 1.0
    assert job["result"] == expected
    assert set(job["result"]["breakdown"]) == {
        "parameters",
        "gradients",
        "optimizer_state",
        "activations",
        "temporary",
    }
    assert job["request"]["model"] == "resnet18"
    assert job["started_at"] <= job["finished_at"]
    listed = server.get("/profiles").json()
    assert job_id in [j["id"] for j in listed]

    families = {f.name: f for f in text_string_to_metric_families(server.get("/metrics").text)}
    peaks = {
        (s.labels["model"], s.labels["mode"]): s.value
        for s in families["gpu_profile_peak_bytes"].samples
    }
    assert peaks[("resnet18", "estimate")] == expected["peak_bytes"]
    counts = {
        s.labels["state"]: s.value
        for s in families["gpu_profiling_jobs"].samples
        if s.name == "gpu_profiling_jobs_total"
    }
    assert counts["succeeded"] >= 1 and counts["queued"] >= 1
    durations = [
        s.value
        for s in families["gpu_profiling_job_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels["state"] == "succeeded"
    ]
    assert durations and durations[0] >= 1


def test_failing_jobs_end_failed_with_the_reason_and_the_api_keeps_answering(
    server: Server,
) -> None:
    tiny = {"input_shape": [12], "batch_size": 4}
    raising = server.post("/profiles", {**tiny, "model": "nets.py:raises"}).json()["id"]
    exiting = server.post("/profiles", {**tiny, "model": "nets:exits"}).json()["id"]
    budget = server.post(
        "/profiles", {**tiny, "model": "nets:mlp", "memory_budget_bytes": 1000}
    ).json()["id"]
    fits = server.post(
        "/profiles", {**tiny, "model": "nets:mlp", "memory_budget_bytes": 1 << 30}
    ).json()["id"]
    for job_id in (raising, exiting, budget, fits):
        server.wait_job(job_id)
        assert server.get("/health").status_code == 200

    job = server.get(f"/profiles/{raising}").json()
    assert job["state"] == "failed"
    assert "RuntimeError: factory exploded on purpose" in job["error"]

    job = server.get(f"/profiles/{exiting}").json()
    assert job["state"] == "failed"
    assert job["error"] == "worker process exited with code 7 before reporting a result"

    job = server.get(f"/profiles/{budget}").json()
    ok = server.get(f"/profiles/{fits}").json()
    assert ok["state"] == "succeeded", ok
    peak = ok["result"]["peak_bytes"]
    assert peak > 1000
    assert job["state"] == "failed"
    assert job["error"] == f"peak {peak} bytes exceeds memory_budget_bytes 1000"
    assert job["result"] is None


def test_measure_job_result_equals_the_profiler_on_the_cpu(server: Server, workdir: Path) -> None:
    body = {"model": "nets:mlp", "input_shape": [12], "batch_size": 4, "optimizer": "adam"}
    job_id = server.post("/profiles", {**body, "mode": "measure", "device": "cpu"}).json()["id"]

    from gpu_optimizer.profiler import profile

    spec = f"{(workdir / 'user_models' / 'nets.py').resolve()}:mlp"
    expected = profile(spec, (12,), 4, device="cpu", optimizer="adam").to_dict()
    job = server.wait_job(job_id)
    assert job["state"] == "succeeded", job
    assert job["result"]["device"] == "cpu"
    assert job["result"]["peak_bytes"] == expected["peak_bytes"] > 0
    assert job["result"]["breakdown"] == expected["breakdown"]


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("model", "shape", "batch"),
    [("resnet50", [3, 224, 224], 16), ("yolo11n-pose.yaml", [3, 640, 640], 4)],
)
def test_measure_job_on_the_gpu(server: Server, model: str, shape: list[int], batch: int) -> None:
    body = {"model": model, "input_shape": shape, "batch_size": batch, "mode": "measure"}
    job_id = server.post("/profiles", {**body, "device": "cuda"}).json()["id"]
    job = server.wait_job(job_id, timeout=300)
    assert job["state"] == "succeeded", job
    result = job["result"]
    assert result["device"].startswith("cuda")
    assert result["allocator"]["max_memory_allocated_bytes"] > 0
    assert result["peak_bytes"] > 0
    assert sum(result["breakdown"].values()) > 0


def test_cancel_kills_the_worker(server: Server, workdir: Path) -> None:
    before = set(sleeper_pids(workdir))
    job_id = server.post(
        "/profiles", {"model": "nets:sleeps", "input_shape": [12], "batch_size": 2}
    ).json()["id"]
    wait_for(lambda: set(sleeper_pids(workdir)) - before, 60, "the sleeping job to start")
    (pid,) = set(sleeper_pids(workdir)) - before
    assert server.get(f"/profiles/{job_id}").json()["state"] == "running"

    response = server.delete(f"/profiles/{job_id}")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert not pid_alive(pid)
    assert server.get(f"/profiles/{job_id}").json()["state"] == "cancelled"
    again = server.delete(f"/profiles/{job_id}")
    assert again.status_code == 409
    assert "already ended: cancelled" in again.json()["detail"]


def test_plan_per_machine_equals_the_library(server: Server, workdir: Path) -> None:
    response = server.post(
        "/plans", {"model": "nets:mlp", "input_shape": "12", "optimizer": "adam"}
    )
    assert response.status_code == 200, response.text
    body = response.json()

    from gpu_optimizer.planning import Workload, plan_for_machines

    spec = f"{(workdir / 'user_models' / 'nets.py').resolve()}:mlp"
    expected = plan_for_machines(Workload(spec, spec, (12,), "train", "adam", "fp32"))
    assert [m["machine"]["name"] for m in body["machines"]] == [p.machine.name for p in expected]
    for got, want in zip(body["machines"], expected, strict=True):
        r = want.recommendation
        assert (
            got["batch_plain"],
            got["batch_checkpointing"],
            got["batch_offload"],
            got["recommended_batch"],
            got["recommended_plan"],
        ) == (
            r.batch_plain,
            r.batch_checkpointing,
            r.batch_offload,
            r.recommended_batch,
            r.recommended_plan,
        )


def test_plan_whose_model_fails_is_a_422_with_the_reason(server: Server) -> None:
    response = server.post("/plans", {"model": "nets:raises", "input_shape": [12]})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("planning 'nets:raises' failed: ")
    assert "RuntimeError: factory exploded on purpose" in detail
    crashed = server.post("/plans", {"model": "nets:exits", "input_shape": [12]})
    assert crashed.status_code == 422
    assert "worker process exited with code 7" in crashed.json()["detail"]
    assert server.get("/health").status_code == 200


def test_recommended_batch_metric_per_machine(server: Server) -> None:
    def samples() -> dict[str, float]:
        text = server.get("/metrics").text
        family = next(
            f
            for f in text_string_to_metric_families(text)
            if f.name == "gpu_recommended_batch_size"
        )
        return {
            s.labels["machine"]: s.value
            for s in family.samples
            if s.labels["workload"] == "yolo11n-pose-infer"
        }

    wait_for(lambda: len(samples()) == 3, 120, "the startup recommendations")
    batches = samples()
    assert batches["rtx-5070-ti"] > batches["rtx-4070-ti"] > batches["rtx-3070-ti"] >= 1


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/profiles", {**RESNET, "model": "resnet9000"}, 422, "unknown model 'resnet9000'"),
        ("/profiles", {**RESNET, "input_shape": "3,x,224"}, 422, "bad input shape '3,x,224'"),
        ("/profiles", {**RESNET, "input_shape": [3, 0, 224]}, 422, "bad input shape [3, 0, 224]"),
        ("/profiles", {**RESNET, "batch_size": 10**6}, 422, "batch_size 1000000 is above"),
        ("/profiles", {**RESNET, "batch_size": 0}, 422, "greater than or equal to 1"),
        (
            "/profiles",
            {**RESNET, "optimizer": "lion"},
            422,
            "'sgd', 'adam', 'adamw' or 'adamw8bit'",
        ),
        ("/profiles", {**RESNET, "dtype": "fp8"}, 422, "'fp32', 'bf16', 'fp16', 'bf16-true'"),
        ("/profiles", {**RESNET, "mode": "guess"}, 422, "'estimate' or 'measure'"),
        ("/profiles", {**RESNET, "model": "../outside.py:mlp"}, 403, "outside the user models"),
        ("/profiles", {**RESNET, "model": "nets:no such"}, 422, "identifier after the colon"),
        ("/profiles", {**RESNET, "model": "missing:mlp"}, 422, "missing not found"),
        ("/plans", {"model": "resnet9000", "input_shape": [3]}, 422, "unknown model"),
        (
            "/plans",
            {"model": "resnet18", "input_shape": [3], "mode": "x"},
            422,
            "'train' or 'infer'",
        ),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(
    server: Server, path: str, body: dict[str, Any], status: int, needle: str
) -> None:
    response = server.post(path, body)
    assert response.status_code == status, response.text
    assert needle in response.text


def test_unknown_job_is_404(server: Server) -> None:
    for response in (server.get("/profiles/nope"), server.delete("/profiles/nope")):
        assert response.status_code == 404
        assert response.json() == {"detail": "profiling job 'nope' not found"}


def test_restart_keeps_results_and_fails_interrupted_jobs(server: Server, workdir: Path) -> None:
    """Runs last against the first server: kills it mid-job, as a crash would."""
    done = server.get("/profiles", params={"state": "succeeded"}).json()
    assert done, "an earlier test should have left a succeeded job"
    before = {j["id"]: server.get(f"/profiles/{j['id']}").json() for j in done}
    pids = set(sleeper_pids(workdir))
    running = server.post(
        "/profiles", {"model": "nets:sleeps", "input_shape": [12], "batch_size": 2}
    ).json()["id"]
    wait_for(lambda: set(sleeper_pids(workdir)) - pids, 60, "the sleeping job to start")
    (worker_pid,) = set(sleeper_pids(workdir)) - pids
    server.stop(signal.SIGKILL)

    env = base_env(workdir) | {"GPU_OPT_WARM_WORKERS": "false", "GPU_OPT_RECOMMEND_AT_STARTUP": "0"}
    second = start_server(env, workdir / "server2.log")
    try:
        for job_id, job in before.items():
            assert second.get(f"/profiles/{job_id}").json() == job
        interrupted = second.get(f"/profiles/{running}").json()
        assert interrupted["state"] == "failed"
        assert interrupted["error"] == "interrupted by a service restart"
        # The orphaned worker notices its parent is gone and exits.
        wait_for(lambda: not pid_alive(worker_pid), 15, f"orphaned worker {worker_pid} to exit")
        assert second.get("/health").status_code == 200
        run_schemathesis(second.url)
    finally:
        second.stop()


def run_schemathesis(url: str) -> None:
    """Every operation of the service's own OpenAPI schema, generated requests: never a 5xx."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        operations += 1

        @hypothesis.settings(
            max_examples=25,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=url, timeout=60)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path}: {response.status_code}")

        check()
    assert operations >= 8
    assert failures == []


@pytest.fixture
def postgres_url() -> Iterator[tuple[str, str]]:
    """A fresh schema on the CI PostgreSQL server, dropped afterwards: (url, schema).

    Where the role may not create schemas, the default schema is used and our two
    tables are dropped before and after instead.
    """
    url = os.environ.get("AIML_TEST_POSTGRES_URL")
    if not url:
        pytest.skip(
            "AIML_TEST_POSTGRES_URL is not set; CI sets it to a real PostgreSQL server "
            "(postgresql+psycopg://user:password@host:port/database)"
        )
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ProgrammingError

    engine = create_engine(url)
    schema = f"gpu_opt_test_{uuid.uuid4().hex[:12]}"
    ours = ("profiling_jobs", "gpu_optimizer_alembic_version")
    try:
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except ProgrammingError:
        # No right to create schemas: use the default one, with our tables dropped.
        with engine.begin() as connection:
            schema = connection.execute(text("SELECT current_schema()")).scalar_one()
            for table in ours:
                connection.execute(text(f'DROP TABLE IF EXISTS "{schema}"."{table}"'))
        try:
            yield url, schema
        finally:
            with engine.begin() as connection:
                for table in ours:
                    connection.execute(text(f'DROP TABLE IF EXISTS "{schema}"."{table}"'))
            engine.dispose()
        return
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield scoped.render_as_string(hide_password=False), schema
    finally:
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def test_postgresql_results_survive_a_restart(workdir: Path, postgres_url: tuple[str, str]) -> None:
    url, schema = postgres_url
    env = base_env(workdir) | {"DATABASE_URL": url, "GPU_OPT_RECOMMEND_AT_STARTUP": "false"}
    first = start_server(env, workdir / "pg1.log")
    try:
        job_id = first.post(
            "/profiles", {"model": "nets:mlp", "input_shape": [12], "batch_size": 4}
        ).json()["id"]
        done = first.wait_job(job_id)
        assert done["state"] == "succeeded", done
        pids = set(sleeper_pids(workdir))
        running = first.post(
            "/profiles", {"model": "nets:sleeps", "input_shape": [12], "batch_size": 2}
        ).json()["id"]
        wait_for(lambda: set(sleeper_pids(workdir)) - pids, 60, "the sleeping job to start")
    finally:
        first.stop(signal.SIGKILL)

    second = start_server(env | {"GPU_OPT_WARM_WORKERS": "false"}, workdir / "pg2.log")
    try:
        assert second.get(f"/profiles/{job_id}").json() == done
        interrupted = second.get(f"/profiles/{running}").json()
        assert (interrupted["state"], interrupted["error"]) == (
            "failed",
            "interrupted by a service restart",
        )
    finally:
        second.stop()

    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["AIML_TEST_POSTGRES_URL"])
    with engine.connect() as connection:
        states = connection.execute(
            text(f'SELECT id, state FROM "{schema}".profiling_jobs ORDER BY created_at')
        ).all()
        version = connection.execute(
            text(f'SELECT version_num FROM "{schema}".gpu_optimizer_alembic_version')
        ).scalar_one()
    engine.dispose()
    assert [tuple(row) for row in states] == [(job_id, "succeeded"), (running, "failed")]
    assert version == "0002"  # the newest migration (measured_peaks)
