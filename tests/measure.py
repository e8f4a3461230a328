"""Measuring helpers the tests share."""

from __future__ import annotations

import tracemalloc


def peak_bytes(fn) -> int:
    """The peak of memory traced by ``tracemalloc`` while ``fn()`` runs (bytes)."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak
