"""With AIML_RAY_ADDRESS set, `measure` jobs run as Ray tasks on the cluster (real server, Ray).

Same job states, failure reasons, cancellation and timeouts as local worker
processes; `estimate` jobs stay local. The cluster is the session's two-node
cluster (conftest.py `ray_cluster`), 1 CPU per node.
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_api_jobs import pid_alive, start_server, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _models(folder: Path, pid_dir: Path) -> None:
    # Ray workers get the raylet's environment, not the service's: the path is in the code.
    (folder / "ray_nets.py").write_text(
        textwrap.dedent(
            f"""
            import os
            import time
            from torch import nn

            def mlp():
                return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))

            def raises():
                raise RuntimeError("factory exploded on purpose")

            def sleeps():
                with open(os.path.join({str(pid_dir)!r}, str(time.monotonic_ns())), "w") as fh:
                    fh.write(str(os.getpid()))
                time.sleep(120)
                return mlp()
            """
        )
    )


def test_measure_jobs_run_on_the_ray_cluster_with_the_same_states(
    ray_cluster, tmp_path: Path
) -> None:
    models, pids = tmp_path / "user_models", tmp_path / "pids"
    models.mkdir()
    pids.mkdir()
    _models(models, pids)
    env = {
        **ray_cluster.env(),
        "AIML_RAY_ADDRESS": ray_cluster.address,
        "GPU_OPT_DATA_DIR": str(tmp_path / "data"),
        "GPU_OPT_USER_MODELS_DIR": str(models),
        "GPU_OPT_WORKER_COUNT": "2",
        "GPU_OPT_JOB_TIMEOUT_S": "60",
        "GPU_OPT_RECOMMEND_AT_STARTUP": "false",
        "GPU_OPT_CACHE_DIR": str(tmp_path / "cache"),
    }
    server = start_server(env, tmp_path / "server.log")
    try:
        job = {"model": "ray_nets.py:mlp", "input_shape": [12], "batch_size": 4,
               "mode": "measure", "device": "cpu"}  # fmt: skip
        ok = server.wait_job(server.post("/profiles", job).json()["id"], timeout=180)
        assert ok["state"] == "succeeded", ok
        nodes = {n["NodeID"] for n in ray_cluster.alive_nodes()}
        assert ok["result"]["ray_node_id"] in nodes
        # fp32 parameters of Linear(12,16) + Linear(16,4): (12*16+16 + 16*4+4) * 4 bytes.
        assert ok["result"]["breakdown"]["parameters"] == (12 * 16 + 16 + 16 * 4 + 4) * 4
        bad = server.wait_job(
            server.post("/profiles", {**job, "model": "ray_nets.py:raises"}).json()["id"], 180
        )
        assert bad["state"] == "failed" and "factory exploded on purpose" in bad["error"]
        # Two sleepers, one per node: one is cancelled, the other runs into the timeout.
        cancel_id = server.post("/profiles", {**job, "model": "ray_nets.py:sleeps"}).json()["id"]
        slow_id = server.post("/profiles", {**job, "model": "ray_nets.py:sleeps"}).json()["id"]
        wait_for(lambda: len(list(pids.iterdir())) == 2, 120, "both sleepers to start")
        started = time.monotonic()
        workers = [int(p.read_text()) for p in pids.iterdir()]
        cancelled = server.delete(f"/profiles/{cancel_id}").json()
        assert cancelled["state"] == "cancelled" and cancelled["error"] == "cancelled by request"
        timed_out = server.wait_job(slow_id, timeout=120)
        assert timed_out["state"] == "timed_out", timed_out
        assert "exceeded the timeout of 60 s" in timed_out["error"]
        assert time.monotonic() - started < 100
        # ray.cancel(force=True) ended both worker processes.
        wait_for(lambda: not any(pid_alive(p) for p in workers), 30, "the sleepers to be killed")
        estimate = server.wait_job(
            server.post("/profiles", {**job, "mode": "estimate"}).json()["id"], 120
        )
        assert estimate["state"] == "succeeded" and "ray_node_id" not in estimate["result"]
    finally:
        server.stop()
