"""Sweep files and their journals against the audit of issue 17 (H2, M16 and the LOW items),
and the machine every sweep file records (issue 16, section 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import hwq
from hwq.errors import FileFormatError, UsageError
from hwq.files import results
from hwq.sweep import store
from hwq.sweep.executors import DaskExecutor, SerialExecutor, make_executor
from hwq.sweep.machine import describe, machine_info
from hwq.sweep.run import run_sweep
from hwq.sweep.spec import AttackSettings, SweepSpec, TrainSettings, all_keys, plan
from hwq.sweep.store import SweepStore, _journal_copy, content_digest, read_sweep

SMALL = SweepSpec(data=("spiral",), activations=("relu",), bits=(1, 2, 4), seeds=(0,),
                  train=TrainSettings(epochs=5, patience=5), attack=AttackSettings((0.0, 0.1)))
ARGS = ["--data", "spiral", "--activations", "relu", "--bits", "1,2,4", "--seeds", "1", "--eps", "0,0.1",
        "--epochs", "5", "--patience", "5"]


def sweep(spec, path, **kw):
    with SerialExecutor() as ex:
        return run_sweep(spec, path, ex, command="test", **kw)


def hwq_cli(*args):
    return subprocess.run([sys.executable, "-m", "hwq", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    sweep(SMALL, path)
    return path


def copy(reference, tmp_path, name="s.h5") -> Path:
    path = tmp_path / name
    path.write_bytes(reference.read_bytes())
    return path


# --------------------------------------------------------------------------- H2: the journal folder


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_cells_folder_hwq_did_not_make_is_refused_and_kept(tmp_path, overwrite):
    """Before: ``s.h5.cells/notes.txt`` vanished, with or without --overwrite."""
    out = tmp_path / "s.h5"
    folder = tmp_path / "s.h5.cells"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not made by hwq"):
        sweep(SMALL, out, overwrite=overwrite)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"] and not out.exists()


def test_cli_refuses_a_foreign_cells_folder_in_one_line(tmp_path):
    folder = tmp_path / "s.h5.cells"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    proc = hwq_cli("sweep", *ARGS, "-o", tmp_path / "s.h5", "--overwrite", "--workers", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hwq: error: ") and (folder / "notes.txt").exists()


def test_a_file_dropped_into_a_running_journal_keeps_the_folder(tmp_path):
    out = tmp_path / "s.h5"

    def progress(done, total, cell):
        if cell is not None and done == 1:
            (tmp_path / "s.h5.cells" / "notes.txt").write_text("mine")

    summary = sweep(SMALL, out, progress=progress)
    assert summary["journal_kept"] == ["notes.txt"]
    assert sorted(p.name for p in (tmp_path / "s.h5.cells").iterdir()) == ["hwq-journal.json", "lock", "notes.txt"]
    assert read_sweep(out).attrs["complete"]
    again = sweep(SMALL, out)  # the kept folder is still hwq's: adopted, nothing run again
    assert again["ran"] == 0 and (tmp_path / "s.h5.cells" / "notes.txt").exists()


def test_overwrite_replaces_a_sweep_but_not_another_file(reference, tmp_path):
    other = tmp_path / "o.h5"
    other.write_text("not a sweep")
    with pytest.raises(UsageError, match="not a sweep file"):
        sweep(SMALL, other, overwrite=True)
    assert other.read_text() == "not a sweep" and not (tmp_path / "o.h5.cells").exists()
    path = copy(reference, tmp_path)
    assert sweep(SMALL, path, overwrite=True)["ran"] == 3


# --------------------------------------------------------------------------- reading


def edited(reference, tmp_path, edit) -> Path:
    path = copy(reference, tmp_path, "edited.h5")
    with h5py.File(path, "a") as f:
        edit(f)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda f: (f["cells"].__delitem__(sorted(f["cells"])[0]), f.attrs.__setitem__("n_cells", 2)),
     "complete: True with 2 of 3"),
    (lambda f: f["cells"][sorted(f["cells"])[0]]["accuracy"].__setitem__(1, 7.5), "accuracy of 7.5"),
    (lambda f: f.attrs.__setitem__("n_cells", 14), "n_cells is 14"),
    (lambda f: f["cells"].move(sorted(f["cells"])[0], "spiral__relu__q09__s0__sim"), "not in the sweep's plan"),
])
def test_a_sweep_file_whose_fields_disagree_is_refused(reference, tmp_path, edit, message):
    """Before: ``hwq report`` trusted ``complete: true`` with 14 of 24 cells and an accuracy of 7.5."""
    path = edited(reference, tmp_path, edit)
    with pytest.raises(FileFormatError, match=message):
        read_sweep(path)
    proc = hwq_cli("report", path, "-o", tmp_path / "rep", "--no-fig2")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("hwq: error: ")
    assert "Traceback" not in proc.stderr and not (tmp_path / "rep" / "report.md").exists()



def first_cell(f):
    return f["cells"][sorted(f["cells"])[0]]


def set_attr(where, name, value):
    def edit(f):
        obj = where(f)
        if value is None:
            del obj.attrs[name]
        else:
            obj.attrs[name] = value
    return edit


ROOT, CELL, TIMING, DATA = (lambda f: f), first_cell, (lambda f: first_cell(f)["timing"]), (lambda f: f["data/spiral"])


@pytest.mark.parametrize("edit, message", [
    (set_attr(ROOT, "wall_s", "argmin"), "wall time is 'argmin'"),  # markdown._settings_md
    (set_attr(CELL, "activation", None), "activation None"),  # run.describe, arrange.blocks
    (set_attr(CELL, "activation", "step"), "activation 'step'"),  # arrange.diagnostic_counts
    (set_attr(CELL, "bits", 1.5), "bits 1.5"),  # arrange.blocks
    (set_attr(CELL, "seed", -3), "seed -3"),
    (set_attr(CELL, "target", None), "target None"),
    (set_attr(CELL, "chance", "argmin"), "chance accuracy of 'argmin'"),  # markdown._stalled_md
    (set_attr(CELL, "at_chance", None), "at chance"),  # markdown._stalled_md
    (set_attr(CELL, "fidelity", "argmin"), "fidelity of 'argmin'"),  # arrange.blocks
    (set_attr(CELL, "val_accuracy", np.arange(3)), "val_accuracy of"),  # markdown._stalled_md
    (set_attr(CELL, "diag_flags", 1.5), "attack diagnostics 1.5"),  # arrange.diagnostic_counts
    (set_attr(TIMING, "train_s", "argmin"), "train_s time of 'argmin'"),  # markdown._timing_md
    (set_attr(DATA, "training", 7), "training settings 7"),  # markdown._settings_md
    (set_attr(DATA, "n_features", np.nan), "n_features nan"),  # figures
    (set_attr(DATA, "chance", None), "chance accuracy of None"),  # markdown._settings_md
])
def test_crafted_cell_and_setting_fields_are_refused_where_the_file_is_read(reference, tmp_path, capsys,
                                                                            edit, message):
    """Issue 17 M14. Before: these fields reached ``hwq report`` / ``hwq info`` and gave tracebacks
    (KeyError, IndexError, ValueError, TypeError in the study and describe code)."""
    from cli_runner import run_cli

    path = edited(reference, tmp_path, edit)
    with pytest.raises(FileFormatError, match=message):
        read_sweep(path)
    for args in (["info", path], ["report", path, "-o", tmp_path / "rep", "--no-fig2"]):
        code, _, err = run_cli(*args, capsys=capsys)
        assert code == 1 and err.strip().splitlines() == [err.strip()] and err.startswith("hwq: error: "), err
    assert not (tmp_path / "rep" / "report.md").exists()


HOLD = r'''
import fcntl, json, os, sys, time, h5py
from pathlib import Path
out = Path(sys.argv[1])
journal = out.with_name(out.name + ".cells")
journal.mkdir()
(journal / "hwq-journal.json").write_text(json.dumps({"format": "hwq-sweep-journal", "version": 1}))
fd = os.open(journal / "lock", os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)  # a running sweep, appending a cell
with h5py.File(out, "a"):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
'''


def hold(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_reading_a_sweep_while_a_cell_is_appended_waits_for_it(reference, tmp_path, monkeypatch):
    """Before: "not an HDF5 file, or a corrupt one" (or a raw HDF5 lock message)."""
    path = copy(reference, tmp_path)
    proc = hold(path, 1.0)
    try:
        assert len(read_sweep(path).cells) == 3  # waited for the append to end
    finally:
        proc.wait()
    path = copy(reference, tmp_path, "second.h5")
    proc = hold(path, 30)
    try:
        monkeypatch.setattr(store, "WAIT_FOR_WRITER_S", 0.3)
        with pytest.raises(FileFormatError, match="being written by a running hwq sweep"):
            read_sweep(path)
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- summaries


def test_a_resumed_sweep_lists_every_stalled_and_refused_cell(reference, tmp_path):
    """Before: ``--json`` of a resumed sweep listed only the stalled cells of that run."""
    out = tmp_path / "r.h5"
    sw = SweepStore(out)
    sw.journal.mkdir()
    (sw.journal / "header.json").write_text(json.dumps({
        "spec": SMALL.to_json(), "data": {"spiral": read_sweep(reference).data["spiral"]},
        "keys": all_keys(plan(SMALL)), "command": "x", "created": "then", "hwq_version": hwq.__version__}))
    first = sorted(read_sweep(reference).cells, key=lambda c: c.key)[0].key
    with h5py.File(reference, "r") as f:
        _journal_copy(f["cells"][first], sw.journal / f"{first}.h5")
    with h5py.File(sw.journal / f"{first}.h5", "a") as f:
        f["cell"].attrs["stalled"] = np.bool_(True)
    summary = sweep(SMALL, out)
    assert summary["resumed"] == 1 and first in summary["stalled"]


# --------------------------------------------------------------------------- results files


@pytest.mark.parametrize("writer", ["attack", "run"])
def test_results_writers_refuse_to_replace_a_sweep(reference, tmp_path, writer):
    """Before: ``hwq attack -o`` and ``hwq run -o`` overwrote a sweep file."""
    path = copy(reference, tmp_path)
    before = path.read_bytes()
    with pytest.raises(UsageError, match="not replaced"):
        if writer == "run":
            results.write_run(path, np.zeros((2, 3), np.int64), np.zeros(2, np.int64), np.zeros(2, np.int64), {})
        else:
            results.write_attack(path, None, {})
    assert path.read_bytes() == before
    own = tmp_path / "run.h5"
    results.write_run(own, np.zeros((2, 3), np.int64), np.zeros(2, np.int64), np.zeros(2, np.int64), {})
    results.write_run(own, np.ones((2, 3), np.int64), np.ones(2, np.int64), np.zeros(2, np.int64), {})
    assert results.read_run(own)["predictions"].tolist() == [1, 1]  # its own kind is replaced


def test_results_files_whose_fields_disagree_are_refused(tmp_path):
    path = tmp_path / "run.h5"
    results.write_run(path, np.zeros((4, 3), np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64), {})
    with h5py.File(path, "a") as f:
        f["correct"][0] = False
    with pytest.raises(FileFormatError, match="correct disagrees"):
        results.read_run(path)


# --------------------------------------------------------------------------- Dask options (M16)


def test_scheduler_addresses_are_parsed_strictly():
    """Before: ``tcp://127.0.0.1:8786@10.0.0.5`` passed the loopback check."""
    for bad in ("tcp://127.0.0.1:8786@10.0.0.5", "tcp://user@10.0.0.5:8786", "tcp://127.0.0.1:8786/x",
                "tcp://127.0.0.1", "ws://127.0.0.1:8786", "tcp://127.0.0.1:99999"):
        with pytest.raises(UsageError, match="is not an address"):
            make_executor(1, bad)
    DaskExecutor("tcp://127.0.0.1:8786")
    DaskExecutor("tcp://localhost:8786")


def tls_file(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "sec.yaml"
    path.write_text(text or "distributed:\n  comm:\n    require-encryption: false\n    tls:\n"
                    "      ca-file: ca.pem\n      client: {cert: c.pem, key: k.pem}\n")
    return path


def test_security_files_and_schemes_are_checked(tmp_path):
    pytest.importorskip("distributed")
    # a TLS file with a plain scheduler (before: a traceback at connect; with require-encryption
    # false it lifted the loopback-only rule)
    with pytest.raises(UsageError, match="tls:// connections only"):
        DaskExecutor("tcp://10.0.0.5:8786", security=tls_file(tmp_path))
    with pytest.raises(UsageError, match="tls:// connections only"):
        DaskExecutor("tcp://127.0.0.1:8786", security=tls_file(tmp_path))
    # tls:// without a file (before: refused as "plain TCP")
    with pytest.raises(UsageError, match="TLS needs") as err:
        DaskExecutor("tls://10.0.0.5:8786")
    assert "plain TCP" not in str(err.value)
    DaskExecutor("tls://10.0.0.5:8786", security=tls_file(tmp_path))  # encrypted: allowed
    # malformed files (before: AttributeError tracebacks)
    for text, where in (("- a\n- b\n", "the file"), ("distributed: [1, 2]\n", "distributed must"),
                        ("distributed:\n  comm:\n    tls: [x]\n", "comm.tls must"),
                        ("distributed:\n  comm:\n    tls:\n      ca-file: [x]\n", "ca-file must"),
                        ("distributed:\n  comm:\n    require-encryption: maybe\n    tls: {ca-file: a}\n",
                         "require-encryption must")):
        with pytest.raises(UsageError, match=where):
            DaskExecutor("tls://10.0.0.5:8786", security=tls_file(tmp_path, text))


def test_cli_dask_options_are_one_line(tmp_path):
    sec = tls_file(tmp_path, "- a\n")
    proc = hwq_cli("sweep", *ARGS, "-o", tmp_path / "d.h5", "--scheduler", "tls://10.0.0.5:8786",
                   "--scheduler-security", sec)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hwq: error: ")
    assert not (tmp_path / "d.h5").exists() and not (tmp_path / "d.h5.cells").exists()


# --------------------------------------------------------------------------- the machine (issue 16)


def test_every_sweep_file_records_its_machine_outside_the_digest(reference, tmp_path):
    sw = read_sweep(reference)
    assert sw.attrs["machine"] == [machine_info()]
    info = machine_info()
    assert info["cpu"] and info["blas"] and set(info["cpu_flags"]) <= {
        "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd"}
    path = edited(reference, tmp_path, lambda f: f.attrs.__setitem__("machine", json.dumps([{"cpu": "other"}])))
    assert content_digest(path) == content_digest(reference)  # other CPU, same numbers: same digest
    assert describe(info).startswith(info["cpu"])


def test_the_report_shows_the_machine(reference, tmp_path):
    proc = hwq_cli("report", reference, "-o", tmp_path / "rep", "--no-fig2")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    assert describe(machine_info()) in text
