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
