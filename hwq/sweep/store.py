"""The sweep file and its journal: one writer (the parent process), safe against kill -9.

Beside ``SWEEP.h5`` a sweep keeps a journal folder ``SWEEP.h5.cells/`` while it runs:

- ``header.json``: the spec, the data fingerprints, the first run's command and start time;
- ``<cell key>.h5``: one file per finished cell, written to a temporary name, fsync'ed and
  renamed, so a file under its final name is always complete (a half-written cell is never
  read as done; temporary files are deleted on the next start);
- ``lock``: an ``flock`` held by the running sweep (released by the kernel on kill -9);
- ``hwq-journal.json``: the marker (``hwq.files.journal``). A folder under the journal's name
  without it is not hwq's: it is refused in one line and nothing in it is touched (journals of
  an hwq before the marker, holding ``header.json`` or ``lock``, are adopted). Only hwq's files
  (cell files, the header, temporaries) are ever deleted; a journal that holds other files is
  kept when the sweep is done.

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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from hwq.errors import DataError, FileFormatError, HwqError, UsageError
from hwq.files import h5io
from hwq.files import journal as folders
from hwq.files.atomic import atomic_path, stale_temporaries
from hwq.sweep.spec import FORMAT, VERSION, SweepSpec, all_keys, plan
from hwq.version import __version__

VOLATILE_ATTRS = ("created", "command", "wall_s", "executor", "machine")  # differ between runs
KIND = "hwq-sweep-journal"
HEADER = "header.json"
CELL_FILE = re.compile(r".+__.+__q\d+__s\d+__.+\.h5")
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
        "machine": header.get("machines", []),
        **({"models": [m.describe() for m in spec.models]} if spec.models else {}),
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
                overwrite: bool, executor: str = "", machines: Callable[[], list] | None = None):
        """The open sweep; ``machines()`` (called at the end) lists the machines that ran its
        cells (``hwq.sweep.machine``), recorded in the header and the file."""
        new_journal = folders.make_journal(self.journal, KIND, self.path, legacy=_legacy_journal)
        lock = folders.JournalLock(self.journal, f"{self.path} is being written by another hwq sweep")
        try:
            for p in stale_temporaries(self.path):  # a writer of this file killed mid-write
                p.unlink()
            if overwrite:
                self._clear(new_journal)
            try:
                header = self._header(spec, data, keys, command)
            except HwqError:  # refused: leave no journal behind that this call created
                if new_journal:
                    folders.remove_journal(self.journal, ours)
                raise
            header["executor"] = executor
            session = Session(self, header, keys, machines)
            try:
                yield session
            finally:
                if not session.finished:  # keep the wall time of this run for the next one
                    header["wall_s"] = header.get("wall_s", 0.0) + session.elapsed()
                    session.record_machines()
                    _atomic_text(self.journal / HEADER, json.dumps(header, sort_keys=True))
        finally:
            lock.release()

    def _clear(self, new_journal: bool) -> None:
        """--overwrite: hwq's files in the journal and the sweep file. Without a journal the
        file must be a sweep file (any other file under the name is refused, not deleted)."""
        if new_journal and self.path.exists():
            try:
                h5io.open_checked(self.path, FORMAT, (VERSION,)).close()
            except FileFormatError as exc:
                folders.remove_journal(self.journal, ours)
                raise UsageError(f"{self.path} exists and is not a sweep file ({exc.message}); "
                                 "--overwrite replaces only a sweep", hint="choose another -o") from None
        folders.clear_journal(self.journal, ours)
        if self.path.exists():
            self.path.unlink()

    def _header(self, spec: SweepSpec, data: dict, keys: list[str], command: str) -> dict:
        fresh = {"spec": spec.to_json(), "data": data, "keys": keys, "command": command,
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "hwq_version": __version__}
        header_file = self.journal / HEADER
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


def ours(name: str) -> bool:
    """The files a sweep journal holds besides the marker and the lock."""
    return name == HEADER or CELL_FILE.fullmatch(name) is not None


def _legacy_journal(path: Path) -> bool:
    """A journal of an hwq that did not mark its journals: its header or its lock is there."""
    return (path / HEADER).is_file() or (path / folders.LOCK).is_file()


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

    def __init__(self, store: SweepStore, header: dict, keys: list[str], machines=None):
        self.store, self.header, self.keys, self.machines = store, header, keys, machines
        self.files = {p.stem: p for p in store.cell_files(set(keys))}
        self.resumed = len(self.files)
        self.stalled, self.refused = _flagged(self.files.values())  # of every cell, resumed ones too
        self.finished = False
        self.left: list[str] = []  # files hwq did not write, found in the journal at the end
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
        if cell.attrs.get("refused"):
            self.refused.append(cell.key)
        try:
            with h5py.File(self.store.path, "a") as f:
                write_cell(f["cells"].create_group(cell.key), cell)
                f.attrs["n_cells"] = len(self.files)
        except Exception:  # noqa: BLE001  (a damaged live file is rebuilt from the journal)
            write_sweep_file(self.store.path, self.header, list(self.files.values()))

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def record_machines(self) -> None:
        """Add the machines that ran this run's cells to the header (each one once)."""
        if self.machines is None or len(self.files) == self.resumed:
            return
        known = self.header.setdefault("machines", [])
        for m in self.machines():
            if m not in known:
                known.append(m)

    def finish(self) -> None:
        if set(self.keys) - self.done:
            return
        self.header["wall_s"] = self.header.get("wall_s", 0.0) + self.elapsed()
        self.record_machines()
        self.finished = True
        write_sweep_file(self.store.path, self.header, [self.files[k] for k in self.keys])
        _fsync(self.store.path.parent)
        # The header goes first: a journal without a header beside a complete file is
        # adopted from that file on the next start, while a header beside a partial journal
        # would be taken as the truth (a kill -9 here used to shrink the finished file).
        (self.store.journal / HEADER).unlink()
        _fsync(self.store.journal)
        self.left = folders.remove_journal(self.store.journal, ours)


def _flagged(files) -> tuple[list[str], list[str]]:
    """The stalled and the refused cells among journal files."""
    stalled, refused = [], []
    for p in sorted(files):
        with h5io.open_h5(p) as f:
            attrs = f["cell"].attrs
            if bool(attrs.get("stalled", False)):
                stalled.append(p.stem)
            if attrs.get("refused"):
                refused.append(p.stem)
    return stalled, refused


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


WAIT_FOR_WRITER_S = 10.0  # a running sweep holds the file only while it appends one cell


def _open_sweep(path: Path):
    """``open_checked`` for a sweep file, waiting for a running sweep that is appending a cell
    (HDF5 locks the file meanwhile) and saying so in one line if it takes too long."""
    journal = path.with_name(path.name + ".cells")
    end = time.monotonic() + WAIT_FOR_WRITER_S
    while True:
        try:
            return h5io.open_checked(path, FORMAT, (VERSION,))
        except FileFormatError:
            if not path.is_file() or not folders.is_locked(journal):
                raise
            if time.monotonic() > end:
                raise FileFormatError(f"{path} is being written by a running hwq sweep and stayed locked for "
                                      f"{WAIT_FOR_WRITER_S:.0f} s", hint="read it again in a moment, or once "
                                      "the sweep has finished") from None
            time.sleep(0.05)


def _bad(path: Path, what: str) -> FileFormatError:
    return FileFormatError(f"{path}: {what}", hint="the sweep file is damaged or was edited; run the sweep "
                           "again (with --overwrite) to rebuild it")


def _share(value) -> bool:
    """An accuracy: a number in [0, 1], or NaN (a refused cell)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return v != v or 0.0 <= v <= 1.0


def check_sweep(sw: SweepFile) -> SweepFile:
    """The fields every reader relies on, checked against each other and their ranges: the
    cells are cells of the plan, the counts and ``complete`` agree with them, each accuracy is
    a share (or NaN where the target refused the cell), one per strength."""
    path, attrs, spec = sw.path, sw.attrs, sw.spec
    tasks = {key: t for t in plan(spec) for key in t.keys()}
    planned = all_keys(plan(spec))
    eps = np.asarray(sw.epsilons)
    if eps.shape != spec.epsilons.shape or not np.allclose(eps, spec.epsilons, rtol=0, atol=1e-12):
        raise _bad(path, f"its strengths ({eps.size}) are not the spec's ({spec.epsilons.size})")
    keys = {c.key for c in sw.cells}
    stray = sorted(keys - set(planned))
    if stray:
        raise _bad(path, f"cell {stray[0]} is not in the sweep's plan")
    for name, want in (("n_planned", len(planned)), ("n_cells", len(sw.cells))):
        got = attrs.get(name)
        if not isinstance(got, (int, np.integer)) or isinstance(got, bool) or int(got) != want:
            raise _bad(path, f"{name} is {got!r}, but the file holds {want}"
                       + (" planned cells" if name == "n_planned" else " cells"))
    complete = attrs.get("complete")
    if not isinstance(complete, (bool, np.bool_)) or bool(complete) != (len(keys) == len(planned)):
        raise _bad(path, f"it says complete: {complete!r} with {len(keys)} of {len(planned)} cells")
    labels = set(sw.data)
    want_labels = set(attrs.get("data_fingerprints") or {})
    if labels != want_labels:
        raise _bad(path, f"its data groups {sorted(labels)} are not the data it names {sorted(want_labels)}")
    for label, info in sw.data.items():
        if info.get("fingerprint") != attrs["data_fingerprints"][label]:
            raise _bad(path, f"the fingerprint of data set {label} disagrees with the root's")
    for c in sw.cells:
        acc = np.asarray(c.accuracy)
        if acc.shape != eps.shape or acc.dtype.kind != "f":
            raise _bad(path, f"cell {c.key} has accuracies of shape {acc.shape}, expected ({eps.size},)")
        bad = [v for v in acc.tolist() if not _share(v)]
        if bad or (np.isnan(acc).any() and not c.attrs.get("refused")):
            raise _bad(path, f"cell {c.key} has an accuracy of {bad[0] if bad else 'NaN'} (a share of "
                       "inputs in [0, 1] was expected)")
        if not _share(c.attrs.get("clean_accuracy")):
            raise _bad(path, f"cell {c.key} has a clean accuracy of {c.attrs.get('clean_accuracy')!r}")
        if not isinstance(c.attrs.get("stalled"), (bool, np.bool_)):
            raise _bad(path, f"cell {c.key} does not say whether its training stalled")
        task = tasks[c.key]
        _check_cell(path, c, task.coordinates(task.targets[task.keys().index(c.key)]))
        if task.model is not None:
            _check_model_cell(path, c, task.model)
    if spec.models and attrs.get("models") != [m.describe() for m in spec.models]:
        raise _bad(path, "its models attribute is not the spec's models")
    for label, info in sw.data.items():
        _check_data(path, label, info)
    wall = attrs.get("wall_s", 0.0)
    if not _number(wall) or not 0 <= float(wall) < float("inf"):
        raise _bad(path, f"its wall time is {wall!r} (seconds expected)")
    return sw


def _number(value) -> bool:
    """A real number (not a bool, text or array)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and int(value) > 0


def _check_cell(path: Path, c: CellRecord, coordinates: dict) -> None:
    """The attributes ``hwq report`` and ``hwq info`` read from a cell: its coordinates are
    the ones its key names, the shares are shares, the flags are flags, the times are times."""
    a = c.attrs
    for name, want in coordinates.items():
        got = a.get(name)
        if isinstance(want, int):
            same = isinstance(got, (int, np.integer)) and not isinstance(got, bool) and int(got) == want
        else:
            same = isinstance(got, str) and got == want
        if not same:
            raise _bad(path, f"cell {c.key} has {name} {got!r}, but its key names {want!r}")
    if not _share(a.get("chance")) or not _number(a.get("chance")) or a["chance"] != a["chance"]:
        raise _bad(path, f"cell {c.key} has a chance accuracy of {a.get('chance')!r}")
    if not isinstance(a.get("at_chance"), (bool, np.bool_)):
        raise _bad(path, f"cell {c.key} does not say whether its test accuracy is at chance")
    for name in ("fidelity", "float_test_accuracy", "val_accuracy", "train_accuracy"):
        if name in a and not (_number(a[name]) and _share(a[name])):
            raise _bad(path, f"cell {c.key} has a {name} of {a[name]!r} (a share in [0, 1] was expected)")
    if "refused" in a and not isinstance(a["refused"], str):
        raise _bad(path, f"cell {c.key} has a refusal of {a['refused']!r} (a reason was expected)")
    flags = a.get("diag_flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise _bad(path, f"cell {c.key} has attack diagnostics {flags!r} (a list of names was expected)")
    for name, value in c.timing.items():
        if name.endswith("_s") and not (_number(value) and 0 <= float(value) < float("inf")):
            raise _bad(path, f"cell {c.key} has a {name} time of {value!r} (seconds expected)")


def _check_model_cell(path: Path, c: CellRecord, model) -> None:
    """A model cell records the model its key names: path, sha256, input shape, quantization
    (and the grid's bits for a QAT file, which are then the cell's bits)."""
    want = model.cell_attrs()
    for name in ("model_path", "model_sha256", "input_shape", "hidden_activations", "quantization", "grid_bits"):
        got = c.attrs.get(name)
        if isinstance(got, np.ndarray):
            got = got.tolist()
        if got != want.get(name) or (name == "grid_bits" and isinstance(got, bool)):
            raise _bad(path, f"cell {c.key} has {name} {got!r}, but its model {model.name} has {want.get(name)!r}")
    if model.grid_bits is not None and c.attrs["bits"] != model.grid_bits:
        raise _bad(path, f"cell {c.key} has bits {c.attrs['bits']!r}, but model {model.name}'s grids have "
                   f"{model.grid_bits}")


TRAINING_FIELDS = ("epochs", "patience", "batch_size", "learning_rate", "gain", "init", "hidden")


def _check_data(path: Path, label: str, info: dict) -> None:
    """The data group attributes the report prints: sizes, chance and training settings."""
    if not isinstance(info.get("spec"), str):
        raise _bad(path, f"data set {label} has no spec")
    for name in ("n_train", "n_test", "n_features"):
        if not _count(info.get(name)):
            raise _bad(path, f"data set {label} has {name} {info.get(name)!r} (a positive count was expected)")
    chance = info.get("chance")
    if not (_number(chance) and chance == chance and _share(chance)):
        raise _bad(path, f"data set {label} has a chance accuracy of {chance!r}")
    training = info.get("training")
    if not isinstance(training, dict) or any(k not in training for k in TRAINING_FIELDS):
        raise _bad(path, f"data set {label} has training settings {training!r} (the sweep's were expected)")


def read_sweep(path: str | Path) -> SweepFile:
    """Load a sweep file (complete or partial); one-line FileFormatError if it is damaged or
    its fields disagree (``check_sweep``)."""
    path = Path(path)
    with _open_sweep(path) as f:
        def load():
            attrs = _plain_attrs(f)
            data = {k: _plain_attrs(g) for k, g in f["data"].items()}
            cells = [CellRecord(k, _plain_attrs(g), g["accuracy"][()],
                                _plain_attrs(g[VOLATILE_GROUP]),
                                {n: d[()] for n, d in g["history"].items()} if "history" in g
                                else {})
                     for k, g in f["cells"].items()]
            return check_sweep(SweepFile(path, attrs, SweepSpec.from_json(attrs["spec"]),
                                         f["epsilons"][()], data, cells))
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

    with _open_sweep(Path(path)) as f:
        h5io.guarded(path, lambda: (attrs(f, VOLATILE_ATTRS), visit(f)))
    return h.hexdigest()
