"""Repository-wide pytest setup: the `gpu` marker runs only where CUDA is available."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is available on this machine")
    for item in items:
        # The marker, not `"gpu" in item.keywords`: keywords also hold directory names
        # (a checkout in a folder called gpu would skip every test).
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real two-node Ray cluster for the session: a head and a node with `second-node`.

    1 CPU each, started with `ray start` and torn down by PID (tests/ray_cluster.py);
    this process is connected to it as the driver.
    """
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "tests"))
    from ray_cluster import RayCluster

    cluster = RayCluster(tmp_path_factory.mktemp("ray"))
    try:
        cluster.start_head(num_cpus=1)
        cluster.connect()
        cluster.add_node(num_cpus=1, resources={"second-node": 1})
        yield cluster
    finally:
        cluster.stop()
