"""Giving memory back after bursts of streams.

Each stream runs its detector on its own thread, and glibc gives every thread
that allocates concurrently its own malloc arena (up to 8 per core). A burst
of eight MediaPipe streams leaves eight arenas, each holding the freed
buffers of a detector graph (model weights, XNNPACK workspaces, frame
copies): freed, but not returned to the system, so an idle service stayed
at the peak of its busiest minute. Two bounds: fewer arenas from the start
(``limit_arenas``), and an explicit ``malloc_trim`` when a stream or job has
ended and its detector is closed (``release_memory``). Both are no-ops where
the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only: probe before use
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas for threads created from now on; True if applied."""
    libc = _libc()
    if libc is None or count <= 0:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, count))


def release_memory() -> bool:
    """Return freed heap pages of every arena to the system; True if any were returned."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))
