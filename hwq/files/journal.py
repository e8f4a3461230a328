"""Journal folders beside an output file (``OUT.h5.parts/``, ``SWEEP.h5.cells/``): hwq's own,
marked, locked, and emptied of nothing but hwq's files.

- **Marked.** A journal folder is made under a temporary name with its marker file
  ``hwq-journal.json`` (``{"format": KIND, "version": 1}``) inside, then renamed into place, so
  a folder under the journal's name without that marker was not made by hwq: it is refused in
  one line and nothing in it is touched (a user's ``results.h5.parts/thesis.txt`` used to be
  deleted with the folder). A symbolic link, a file or another kind's journal under the name is
  refused the same way.
- **Locked.** The run that uses a journal holds an ``flock`` on ``lock`` inside it from the
  start until the journal is removed (the kernel releases it on kill -9); a second run on the
  same output is refused instead of sharing (and deleting) the first run's files. After the
  lock is taken the lock file must still be the one in the folder (same inode): a run that
  removed the journal meanwhile leaves nothing to share.
- **Removed with care.** Only the files hwq writes there (the marker, the lock, temporaries and
  the names the caller declares as its own) are deleted; a folder that still holds anything
  else is left in place and reported.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from hwq.errors import HwqError, UsageError

MARKER, LOCK, VERSION = "hwq-journal.json", "lock", 1


class JournalBusy(HwqError):
    """Another hwq process holds the journal's lock."""


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and ".tmp" in name


def _refuse(path: Path, what: str, output: Path) -> UsageError:
    return UsageError(f"{path} {what}; hwq keeps the journal of {output.name} there and will not "
                      "touch it", hint=f"move it away or choose another -o than {output}")


def small_json(path: Path, most: int = 4096):
    """The JSON in the regular file ``path`` (no link, at most ``most`` bytes), or None."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > most:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def marker_kind(path: Path) -> str | None:
    """The kind written in ``path``'s marker, or None if ``path`` is no marked journal folder."""
    info = small_json(path / MARKER)
    return info.get("format") if isinstance(info, dict) and info.get("version") == VERSION else None


def check_journal(path: Path, kind: str, output: Path, *, legacy: Callable[[Path], bool] | None = None) -> bool:
    """True if ``path`` is an existing journal of ``kind``; False if nothing is there. Anything
    else under the name is refused (one line). ``legacy(path)`` may accept a folder written by
    an hwq that did not mark its journals yet (it is marked now)."""
    if os.path.islink(path):
        raise _refuse(path, "is a symbolic link", output)
    if not os.path.lexists(path):
        return False
    if not path.is_dir():
        raise _refuse(path, "exists and is not a folder", output)
    found = marker_kind(path)
    if found == kind:
        return True
    if found is None and legacy is not None and legacy(path):
        write_marker(path, kind)
        return True
    what = "exists and was not made by hwq" if found is None else f"holds another kind of journal ({found})"
    raise _refuse(path, what, output)


def write_marker(path: Path, kind: str) -> None:
    from hwq.files.atomic import atomic_path

    with atomic_path(path / MARKER) as tmp:
        tmp.write_text(json.dumps({"format": kind, "version": VERSION}))


def make_journal(path: Path, kind: str, output: Path, *, legacy: Callable[[Path], bool] | None = None) -> bool:
    """The journal folder ``path`` of ``kind`` (made, marked, if it is not there); returns True if
    it was made now. Refuses (one line) a name that holds anything but such a journal."""
    if check_journal(path, kind, output, legacy=legacy):
        return False
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        write_marker(tmp, kind)
        if os.path.lexists(path):  # made meanwhile by another run: use (or refuse) that one
            raise FileExistsError
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if check_journal(path, kind, output, legacy=legacy):
            return False
        raise
    return True


class JournalLock:
    """The ``flock`` on ``path/lock``, held until ``release`` (or the end of the process)."""

    def __init__(self, path: Path, busy: str):
        self.fd = None
        lock = path / LOCK
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no protection against two writers
            return
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise JournalBusy(busy) from None
            try:  # the lock file may have been removed (and made again) before we got it
                same = os.fstat(fd).st_ino == os.lstat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return
            os.close(fd)
            if not path.is_dir():
                raise JournalBusy(busy)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def remove_journal(path: Path, ours: Callable[[str], bool]) -> list[str]:
    """Delete hwq's files in the journal folder ``path`` (marker, lock, temporaries and names
    ``ours`` accepts; regular files only) and the folder if that empties it. Returns the names
    left behind (files hwq did not write), sorted; the folder is then kept."""
    if not path.is_dir() or os.path.islink(path):
        return []
    left, lock = [], None
    for p in sorted(path.iterdir()):
        name = p.name
        if name == LOCK:
            lock = p
            continue
        if name == MARKER:
            continue
        if (_is_temporary(name) or ours(name)) and stat.S_ISREG(os.lstat(p).st_mode):
            p.unlink()
        else:
            left.append(name)
    if left:
        return left
    (path / MARKER).unlink(missing_ok=True)
    if lock is not None:
        lock.unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:  # something appeared meanwhile: keep the folder
        return sorted(p.name for p in path.iterdir())
    return []


def clear_journal(path: Path, ours: Callable[[str], bool]) -> None:
    """Delete hwq's files in ``path`` but keep the folder, its marker and its lock."""
    for p in sorted(path.iterdir()):
        if p.name not in (LOCK, MARKER) and (_is_temporary(p.name) or ours(p.name)) \
                and stat.S_ISREG(os.lstat(p).st_mode):
            p.unlink()


def is_locked(path: Path) -> bool:
    """Whether a process holds the ``flock`` of the journal folder ``path`` (read from
    ``/proc/locks``, without taking the lock: a reader must never make a writer's start fail).
    Where that cannot be read, a journal with a lock file counts as locked."""
    try:
        inode = os.stat(path / LOCK).st_ino
    except OSError:
        return False
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return True
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            return True
    return False
