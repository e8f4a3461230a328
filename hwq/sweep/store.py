"""The sweep file and its journal: one writer (the parent process), safe against kill -9.

Beside ``SWEEP.h5`` a sweep keeps a journal folder ``SWEEP.h5.cells/`` while it runs:

- ``header.json``: the spec, the data fingerprints, the first run's command and start time;
- ``<cell key>.h5``: one file per finished cell, written to a temporary name, fsync'ed and
  renamed, so a file under its final name is always complete (a half-written cell is never
  read as done; temporary files are deleted on the next start);
- ``lock``: an ``flock`` held by the running sweep (released by the kernel on kill -9).

The journal is the truth. Every start rebuilds ``SWEEP.h5`` from it (temporary file + rename:
an HDF5 file broken by kill -9 in the middle of an append is simply replaced); each finished
cell is journaled, then appended to ``SWEEP.h5``; when every cell is done the file is rebuilt
once more in canonical order, marked ``complete`` and the journal is removed, ``header.json``
first: a journal without a header beside a complete file is adopted from that file on the next
start, so a kill -9 at any point of finishing leaves a complete sweep (tested with a real
SIGKILL at each step). Temporary files are created exclusively under unpredictable names
(``hwq.files.atomic``); the leftovers of a killed writer are deleted on the next start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from hwq.errors import DataError, FileFormatError, HwqError, UsageError
from hwq.files import h5io
from hwq.files.atomic import atomic_path, stale_temporaries
from hwq.sweep.spec import FORMAT, VERSION, SweepSpec
from hwq.version import __version__

VOLATILE_ATTRS = ("created", "command", "wall_s", "executor")  # differ between runs
VOLATILE_GROUP = "timing"  # per-cell group of wall times: differs between runs


# ------------------------------------------------------------------------- encoding


def _encode(value):
    if isinstance(value, (list, dict, tuple)) or value is None:
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (bool, np.bool_)):
        return np.bool_(value)
    return value


def set_attrs(obj, attrs: dict) -> None:
    for key, value in attrs.items():
        obj.attrs[key] = _encode(value)


def write_cell(group: h5py.Group, cell) -> None:
    """Cell group: attrs, datasets (``accuracy``, ``correct``, ``history/...``), ``timing``."""
    set_attrs(group, cell.attrs)
    for name, array in sorted(cell.arrays.items()):
        group.create_dataset(name, data=np.asarray(array))
    set_attrs(group.create_group(VOLATILE_GROUP), cell.timing)


def _root_attrs(header: dict, spec: SweepSpec, n_done: int) -> dict:
    data = header["data"]
    return {
        "format": FORMAT, "version": VERSION, "hwq_version": header["hwq_version"],
        "command": header["command"], "created": header["created"], "spec": header["spec"],
        "spec_sha256": hashlib.sha256(header["spec"].encode()).hexdigest(),
        "data": list(spec.data), "activations": list(spec.activations),
        "bits": np.asarray(spec.bits, np.int64), "seeds": np.asarray(spec.seeds, np.int64),
        "targets": list(spec.targets),
        "data_fingerprints": {k: v["fingerprint"] for k, v in data.items()},
        "quantization": vars(spec.quant), "training": vars(spec.train),
        "attack": {k: v for k, v in vars(spec.attack).items() if k != "epsilons" and v is not None},
        "n_planned": len(header["keys"]), "n_cells": n_done,
        "complete": n_done == len(header["keys"]),
        "wall_s": float(header.get("wall_s", 0.0)), "executor": header.get("executor", ""),
    }


def write_sweep_file(path: Path, header: dict, cell_files: list[Path]) -> None:
    """The whole sweep file from the header and journal files (atomic: temp + rename)."""
    spec = SweepSpec.from_json(header["spec"])
    with h5io.atomic_h5(path) as f:
        set_attrs(f, _root_attrs(header, spec, len(cell_files)))
        f.create_dataset("epsilons", data=spec.epsilons)
        data = f.create_group("data")
        for label, info in sorted(header["data"].items()):
            set_attrs(data.create_group(label), info)
        cells = f.create_group("cells")
        for cell_file in sorted(cell_files):
            with h5io.open_h5(cell_file) as src:
                src.copy(src["cell"], cells, name=cell_file.stem)


# ------------------------------------------------------------------------- the store


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SweepStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.journal = self.path.with_name(self.path.name + ".cells")

    @contextlib.contextmanager
    def session(self, spec: SweepSpec, data: dict, keys: list[str], *, command: str,
                overwrite: bool, executor: str = ""):
        new_journal = not self.journal.exists()
        self.journal.mkdir(exist_ok=True)
        with _locked(self.journal / "lock", self.path):
            for p in stale_temporaries(self.path):  # a writer of this file killed mid-write
                p.unlink()
            if overwrite:
                self._clear()
            try:
                header = self._header(spec, data, keys, command)
            except HwqError:  # refused: leave no journal behind that this call created
                if new_journal:
                    shutil.rmtree(self.journal, ignore_errors=True)
                raise
            header["executor"] = executor
            session = Session(self, header, keys)
            try:
                yield session
            finally:
                if not session.finished:  # keep the wall time of this run for the next one
                    header["wall_s"] = header.get("wall_s", 0.0) + session.elapsed()
                    _atomic_text(self.journal / "header.json", json.dumps(header, sort_keys=True))

    def _clear(self) -> None:
        for p in self.journal.iterdir():
            if p.name != "lock":
                p.unlink()
        if self.path.exists():
            self.path.unlink()

    def _header(self, spec: SweepSpec, data: dict, keys: list[str], command: str) -> dict:
        fresh = {"spec": spec.to_json(), "data": data, "keys": keys, "command": command,
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "hwq_version": __version__}
        header_file = self.journal / "header.json"
        if header_file.exists():
            header = json.loads(header_file.read_text())
            _check_same(self.path, header, fresh)
            return header
        if self.path.exists():
            header = self._adopt_existing(fresh)
        else:
            header = fresh
        _atomic_text(header_file, json.dumps(header, sort_keys=True))
        return header

    def _adopt_existing(self, fresh: dict) -> dict:
        """A finished sweep file without a journal: resume from its cells (same spec only)."""
        try:
            sw = read_sweep(self.path)
        except FileFormatError:
            raise UsageError(f"{self.path} exists and is not a readable sweep file",
                             hint="choose another -o, or pass --overwrite") from None
        header = {**fresh, "command": sw.attrs.get("command", ""),
                  "created": sw.attrs.get("created", fresh["created"]),
                  "hwq_version": sw.attrs.get("hwq_version", __version__),
                  "wall_s": float(sw.attrs.get("wall_s", 0.0))}
        _check_same(self.path, {**header, "spec": sw.spec.to_json(), "data": sw.data}, fresh)
        with h5io.open_h5(self.path) as f:
            for key in f["cells"]:
                _journal_copy(f["cells"][key], self.journal / f"{key}.h5")
        return header

    def cell_files(self, keys: set[str]) -> list[Path]:
        """Valid journal files of planned cells; temporary and unreadable files are removed."""
        out = []
        for p in sorted(self.journal.iterdir()):
            if p.name.startswith(".") and ".tmp" in p.name:
                p.unlink()
            elif p.suffix == ".h5" and p.stem in keys:
                if _readable_cell(p):
                    out.append(p)
                else:
                    p.unlink()
        return out


def _check_same(path: Path, old: dict, new: dict) -> None:
    if old["spec"] != new["spec"]:
        raise UsageError(f"{path} holds a sweep with different settings",
                         hint="run it with its original arguments to resume, pass --overwrite "
                              "to start again, or choose another -o")
    for label, info in new["data"].items():
        if old["data"].get(label, {}).get("fingerprint") != info["fingerprint"]:
            raise DataError(f"data set {label} differs from the one {path} was started with "
                            "(fingerprint changed)", hint="pass --overwrite to start again")


@contextlib.contextmanager
def _locked(lock_path: Path, path: Path):
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock (Windows): no protection against two writers
            pass
        except OSError:
            raise HwqError(f"{path} is being written by another hwq sweep") from None
        yield
    finally:
        os.close(fd)


def _atomic_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        _fsync(tmp)


def _journal_write(path: Path, write) -> None:
    """Write one journal file: exclusive temporary file, fsync, rename, fsync of the folder."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            write(f.create_group("cell"))
        _fsync(tmp)
    _fsync(path.parent)


def _journal_copy(group: h5py.Group, path: Path) -> None:
    def copy(dst):
        for name, value in group.attrs.items():
            dst.attrs[name] = value
        for name in group:
            group.copy(group[name], dst, name=name)
    _journal_write(path, copy)


def _readable_cell(path: Path) -> bool:
    try:
        with h5io.open_h5(path) as f:
            return "accuracy" in f["cell"] and "stalled" in f["cell"].attrs
    except Exception:  # noqa: BLE001  (any damage means: run the cell again)
        return False


class Session:
    """An open sweep: the done cells, ``add`` for new ones, ``finish`` at the end."""

    def __init__(self, store: SweepStore, header: dict, keys: list[str]):
        self.store, self.header, self.keys = store, header, keys
        self.files = {p.stem: p for p in store.cell_files(set(keys))}
        self.resumed = len(self.files)
        self.stalled = []
        self.finished = False
        self.t0 = time.monotonic()
        write_sweep_file(store.path, header, list(self.files.values()))

    @property
    def done(self) -> set[str]:
        return set(self.files)

    def check_fingerprint(self, cell) -> None:
        want = self.header["data"][cell.attrs["data"]]["fingerprint"]
        if cell.attrs["data_fingerprint"] != want:
            raise DataError(f"cell {cell.key} saw different {cell.attrs['data']} data than the "
                            "parent (fingerprint mismatch)",
                            hint="every Dask worker must see the same data files")

    def add(self, cell) -> None:
        path = self.store.journal / f"{cell.key}.h5"
        _journal_write(path, lambda g: write_cell(g, cell))
        self.files[cell.key] = path
        if cell.attrs["stalled"]:
            self.stalled.append(cell.key)
        try:
            with h5py.File(self.store.path, "a") as f:
                write_cell(f["cells"].create_group(cell.key), cell)
                f.attrs["n_cells"] = len(self.files)
        except Exception:  # noqa: BLE001  (a damaged live file is rebuilt from the journal)
            write_sweep_file(self.store.path, self.header, list(self.files.values()))

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def finish(self) -> None:
        if set(self.keys) - self.done:
            return
        self.header["wall_s"] = self.header.get("wall_s", 0.0) + self.elapsed()
        self.finished = True
        write_sweep_file(self.store.path, self.header, [self.files[k] for k in self.keys])
        _fsync(self.store.path.parent)
        # The header goes first: a journal without a header beside a complete file is
        # adopted from that file on the next start, while a header beside a partial journal
        # would be taken as the truth (a kill -9 here used to shrink the finished file).
        (self.store.journal / "header.json").unlink()
        _fsync(self.store.journal)
        for p in self.store.journal.iterdir():
            if p.name != "lock":
                p.unlink()
        shutil.rmtree(self.store.journal, ignore_errors=True)


# ------------------------------------------------------------------------- reading


@dataclass(frozen=True, eq=False)
class CellRecord:
    key: str
    attrs: dict
    accuracy: np.ndarray  # (K,)
    timing: dict
    history: dict
    source: Path | None = None  # the file holding the cell where it differs from SweepFile.path


@dataclass(frozen=True, eq=False)
class SweepFile:
    path: Path
    attrs: dict
    spec: SweepSpec
    epsilons: np.ndarray
    data: dict  # label -> data group attrs
    cells: list  # CellRecord, sorted by key
    sources: tuple = ()  # merged sweeps (hwq.sweep.merge): one dict per file; () for one file


def _plain_attrs(obj) -> dict:
    out = {}
    for k, v in obj.attrs.items():
        v = h5io.plain(v)
        if k != "spec" and isinstance(v, str) and (v[:1] in ("[", "{") or v == "null"):
            with contextlib.suppress(ValueError):
                v = json.loads(v)
        out[k] = v
    return out


def read_sweep(path: str | Path) -> SweepFile:
    """Load a sweep file (complete or partial); one-line FileFormatError if it is damaged."""
    path = Path(path)
    with h5io.open_checked(path, FORMAT, (VERSION,)) as f:
        def load():
            attrs = _plain_attrs(f)
            data = {k: _plain_attrs(g) for k, g in f["data"].items()}
            cells = [CellRecord(k, _plain_attrs(g), g["accuracy"][()],
                                _plain_attrs(g[VOLATILE_GROUP]),
                                {n: d[()] for n, d in g["history"].items()} if "history" in g
                                else {})
                     for k, g in f["cells"].items()]
            return SweepFile(path, attrs, SweepSpec.from_json(attrs["spec"]),
                             f["epsilons"][()], data, cells)
        return h5io.guarded(path, load)


def content_digest(path: str | Path) -> str:
    """sha256 over every group, dataset and attribute, leaving out what differs between runs
    of the same sweep (root ``created`` and ``command``, each cell's ``timing``)."""
    h = hashlib.sha256()

    def attrs(obj, skip=()):
        for k in sorted(obj.attrs):
            if k not in skip:
                h.update(f"@{k}={h5io.plain(obj.attrs[k])!r}".encode())

    def visit(group):
        for name in sorted(group):
            item = group[name]
            if name == VOLATILE_GROUP:
                continue
            h.update(f"/{item.name}".encode())
            if isinstance(item, h5py.Group):
                attrs(item)
                visit(item)
            else:
                value = item[()]
                h.update(f"{value.dtype.str}{value.shape}".encode())
                h.update(np.ascontiguousarray(value).tobytes())

    with h5io.open_checked(path, FORMAT, (VERSION,)) as f:
        h5io.guarded(path, lambda: (attrs(f, VOLATILE_ATTRS), visit(f)))
    return h.hexdigest()
