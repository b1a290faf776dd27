"""The job runner without a server: timeouts, cancelling queued jobs, recovery after a crash.

Worker processes are forked from the test process, warmed like the service's
forkserver (gpu_optimizer.jobs.preload); the supervision under test is the same.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gpu_optimizer.jobs.runner import RESTART_MESSAGE, JobRunner
from gpu_optimizer.metrics import JobMetrics
from gpu_optimizer.storage import Database, JobState, ProfilingJob
from gpu_optimizer.storage.tables import utcnow

SLEEPER = """
import os, time
from torch import nn

def sleeps():
    with open(os.environ["RUNNER_PID_FILE"], "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    time.sleep(60)
    return nn.Linear(2, 2)
"""


@pytest.fixture(scope="module", autouse=True)
def warm_like_the_forkserver() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    import gpu_optimizer.jobs.preload  # noqa: F401

    yield
    torch.set_num_threads(threads)


@pytest.fixture
def setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[JobRunner, Database, JobMetrics, Path]]:
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    pid_file = tmp_path / "pids"
    monkeypatch.setenv("RUNNER_PID_FILE", str(pid_file))
    db = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
    metrics = JobMetrics(CollectorRegistry())
    runner = JobRunner(
        db,
        workers=1,
        job_timeout_s=3,
        metrics=metrics,
        context=multiprocessing.get_context("fork"),
    )
    yield runner, db, metrics, pid_file
    runner.stop()
    db.dispose()


def request(tmp_path: Path) -> dict[str, object]:
    return {
        "model": f"{tmp_path / 'sleeper.py'}:sleeps",
        "input_shape": [2],
        "batch_size": 1,
        "mode": "estimate",
    }


def job(db: Database, job_id: str) -> ProfilingJob:
    with db.session() as session:
        row = session.get(ProfilingJob, job_id)
        assert row is not None
        return row


def wait_state(
    db: Database, job_id: str, states: set[JobState], timeout: float = 30
) -> ProfilingJob:
    deadline = time.monotonic() + timeout
    while (row := job(db, job_id)).state not in states:
        assert time.monotonic() < deadline, f"job stuck in {row.state}"
        time.sleep(0.05)
    return row


def test_a_runaway_job_times_out_and_its_worker_is_killed(setup, tmp_path: Path) -> None:
    runner, db, metrics, pid_file = setup
    runner.start(warm_up=False)
    first = runner.submit(request(tmp_path))
    queued = runner.submit(request(tmp_path))
    wait_state(db, first.id, {JobState.RUNNING})
    # One worker: the second job waits, and a cancelled queued job never starts.
    assert runner.cancel(queued.id) is True
    row = job(db, queued.id)
    assert (row.state, row.started_at, row.error) == (
        JobState.CANCELLED,
        None,
        "cancelled by request",
    )
    assert runner.cancel(queued.id) is False

    row = wait_state(db, first.id, {JobState.TIMED_OUT, JobState.FAILED, JobState.SUCCEEDED})
    assert row.state == JobState.TIMED_OUT
    assert row.error == "exceeded the timeout of 3 s"
    (pid,) = [int(p) for p in pid_file.read_text().split()]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert metrics.jobs.labels("timed_out")._value.get() == 1
    assert metrics.jobs.labels("cancelled")._value.get() == 1
    assert metrics.duration.labels("timed_out")._sum.get() >= 3


def test_recover_fails_interrupted_jobs_and_requeues_waiting_ones(setup, tmp_path: Path) -> None:
    runner, db, _metrics, _pid_file = setup
    with db.session() as session:
        for job_id, state in (("was-running", JobState.RUNNING), ("was-queued", JobState.QUEUED)):
            session.add(
                ProfilingJob(
                    id=job_id,
                    created_at=utcnow(),
                    state=state,
                    model="nets:mlp",
                    mode="estimate",
                    request={**request(tmp_path), "model": "resnet9000"},
                    progress=0.5,
                )
            )
        session.commit()
    assert runner.recover() == (1, 1)
    row = job(db, "was-running")
    assert (row.state, row.error) == (JobState.FAILED, RESTART_MESSAGE)
    assert row.finished_at is not None
    runner.start(warm_up=False)
    # The requeued job runs (and fails: the model does not exist).
    row = wait_state(db, "was-queued", {JobState.FAILED, JobState.SUCCEEDED})
    assert row.state == JobState.FAILED
    assert "unknown model 'resnet9000'" in (row.error or "")
