"""Write files so that a reader never sees half of one: temporary file, then rename.

The temporary file is created exclusively (``O_CREAT | O_EXCL`` via ``tempfile.mkstemp``)
under an unpredictable name ``.NAME.<random>.tmp`` in the target's own folder, so a symlink
or file planted under a guessable name is never followed or overwritten, and the rename stays
on one file system. Before the rename the temporary name must still be the regular file this
call created (same inode); otherwise nothing is renamed. Leftovers of a killed writer match
``stale_temporaries(path)``.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hwq.errors import HwqError


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (briefly) and restoring it
    os.umask(mask)
    return mask


def create_temporary(path: str | Path) -> tuple[Path, int]:
    """A new empty regular file beside ``path`` (exclusive, unpredictable name, the usual
    umask permissions); returns it and its inode."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        inode = os.fstat(fd).st_ino
    finally:
        os.close(fd)
    return Path(name), inode


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files of ``path`` left by a writer that was killed (this module's names and
    the older ``.NAME.tmp-PID``)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.iterdir()
            if p.name.startswith(f".{path.name}.") and (p.name.endswith(".tmp")
                                                      or p.name.startswith(f".{path.name}.tmp-"))]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary file beside ``path`` (created exclusively, see the module
    doc); rename it over ``path`` only if the block succeeds, and remove it otherwise."""
    path = Path(path)
    tmp, inode = create_temporary(path)
    try:
        yield tmp
        st = os.lstat(tmp)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != inode:
            raise HwqError(f"the temporary file {tmp} was replaced while writing {path}; "
                           "nothing was written")
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp) and os.lstat(tmp).st_ino == inode:
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
