"""Numba's on-disk cache, keyed by hwq's source.

Numba checks a cached kernel against the modification time of the file that defines it, not
of the files whose functions it inlined: after an edit of ``targets/common/vnni.py`` alone, a
kernel of ``targets/sim/kernels.py`` would keep running the old, inlined code. With a
bit-exactness contract that is not acceptable, so hwq points Numba's cache at a folder named
by a digest of every source file of ``hwq`` and ``hwq_targets``: any edit (or upgrade) gets a
fresh cache. A user's own ``NUMBA_CACHE_DIR`` is respected.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

ROOTS = (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "targets")


def source_digest() -> str:
    h = hashlib.sha256()
    for root in ROOTS:
        for path in sorted(root.rglob("*.py")) if root.is_dir() else ():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def configure() -> None:
    """Set ``NUMBA_CACHE_DIR`` (before Numba compiles anything), unless the user set it."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hwq-numba"
    folder = base / source_digest()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # no writable cache: Numba's default (beside the sources) applies
    os.environ["NUMBA_CACHE_DIR"] = str(folder)  # inherited by workers and devices
    if "numba" in sys.modules:  # imported before hwq: tell its config too
        from numba.core import config

        config.CACHE_DIR = str(folder)
