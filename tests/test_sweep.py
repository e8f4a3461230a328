"""Sweeps: plan and seeds, determinism across executors, resume after Ctrl-C and kill -9,
the journal's defences, and a real Dask cluster on loopback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import hwq
from hwq.errors import HwqError, UsageError
from hwq.ranges import parse_ints, parse_seeds
from hwq.sweep.executors import DaskExecutor, SerialExecutor, make_executor
from hwq.sweep.run import run_sweep
from hwq.sweep.spec import AttackSettings, SweepSpec, Task, TrainSettings, derive_seed, plan
from hwq.sweep.store import SweepStore, content_digest, read_sweep

EPS = tuple(np.round(np.arange(11) * 0.05, 6).tolist())
TINY = SweepSpec(data=("spiral",), activations=("relu", "step"), bits=(1, 4), seeds=(0, 1),
                 train=TrainSettings(epochs=30, patience=10), attack=AttackSettings(EPS))
# The same grid on the command line (used by the subprocess tests).
TINY_ARGS = ["--data", "spiral", "--activations", "relu,step", "--bits", "1,4", "--seeds", "2",
             "--eps", "0:0.5:0.05", "--epochs", "30", "--patience", "10"]


def sweep(spec, path, executor=None):
    with executor or SerialExecutor() as ex:
        return run_sweep(spec, path, ex, command="test")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny grid, uninterrupted, in this process."""
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    sweep(TINY, path)
    return path


# --------------------------------------------------------------------------- pure parts


def test_plan_covers_the_grid_with_order_free_seeds():
    tasks = plan(TINY)
    assert len(tasks) == 8 and len({t.keys()[0] for t in tasks}) == 8
    t = Task("spiral", "relu", 4, 1, ("sim",))
    assert t.keys() == ["spiral__relu__q04__s1__sim"]
    assert t.train_seed == derive_seed("spiral", "relu", 4, 1)  # from the key, not the order
    assert len({task.train_seed for task in tasks}) == 8
    assert parse_ints("1:4", "--bits") == (1, 2, 3, 4) and parse_ints("1,8", "--bits") == (1, 8)
    assert parse_seeds("3") == (0, 1, 2) and parse_seeds("4,7") == (4, 7)


@pytest.mark.parametrize("change", [
    {"activations": ("tanh",)}, {"bits": (0,)}, {"bits": (17,)}, {"seeds": (-1,)},
    {"bits": (2, 2)}, {"data": ()},
])
def test_bad_grids_are_usage_errors(change):
    with pytest.raises(UsageError):
        SweepSpec(**{"data": ("spiral",), **change})


def test_spec_round_trips_through_json():
    assert SweepSpec.from_json(TINY.to_json()) == TINY


# --------------------------------------------------------------------------- the file


def test_file_holds_every_cell_and_the_settings(reference):
    sw = read_sweep(reference)
    assert len(sw.cells) == 8 and sw.attrs["complete"] and sw.attrs["n_planned"] == 8
    assert sw.attrs["format"] == "hwq-sweep" and sw.attrs["version"] == 1
    assert sw.attrs["quantization"]["act_bits"] == 16
    assert sw.data["spiral"]["fingerprint"] == sw.attrs["data_fingerprints"]["spiral"]
    assert sw.data["spiral"]["training"]["gain"] == 10.0
    cell = sw.cells[0]
    assert cell.accuracy.shape == (11,) and cell.accuracy[0] == cell.attrs["clean_accuracy"]
    assert cell.attrs["weights_on_grid"] and cell.attrs["source"] == "qat"
    assert {"train_s", "attack_s", "total_s"} <= set(cell.timing)
    assert not Path(f"{reference}.cells").exists()  # the journal is gone once complete


def test_local_pool_matches_serial(reference, tmp_path):
    """Determinism: 1 worker (this process) and 2 worker processes give the same contents."""
    path = tmp_path / "pool.h5"
    sweep(TINY, path, make_executor(workers=2))
    assert content_digest(path) == content_digest(reference)


def test_rerun_of_a_finished_sweep_changes_nothing(reference, tmp_path):
    path = tmp_path / "again.h5"
    path.write_bytes(reference.read_bytes())
    summary = sweep(TINY, path)
    assert summary["ran"] == 0 and summary["resumed"] == 8
    assert content_digest(path) == content_digest(reference)


def test_other_settings_on_the_same_file_are_refused(reference, tmp_path):
    path = tmp_path / "other.h5"
    path.write_bytes(reference.read_bytes())
    other = SweepSpec(**{**TINY.__dict__, "seeds": (0, 1, 2)})
    with pytest.raises(UsageError, match="different settings"):
        sweep(other, path)


def test_resume_ignores_half_written_cells_and_rebuilds_a_broken_file(reference, tmp_path):
    """A kill -9 can leave a temporary journal file, a damaged journal file or a damaged
    .h5: none of them is read as done, and the result equals an uninterrupted run."""
    path = tmp_path / "broken.h5"
    store = SweepStore(path)
    store.journal.mkdir()
    ref = read_sweep(reference)
    # journal the first three cells by hand, as a run killed after three cells would have
    with h5py.File(reference, "r") as f:
        from hwq.sweep.store import _journal_copy
        for key in [c.key for c in ref.cells[:3]]:
            _journal_copy(f["cells"][key], store.journal / f"{key}.h5")
    import json

    from hwq.sweep.cell import data_info
    from hwq.sweep.spec import all_keys
    header = {"spec": TINY.to_json(), "data": {"spiral": data_info("spiral", TINY)},
              "keys": all_keys(plan(TINY)), "command": "x", "created": "then",
              "hwq_version": hwq.__version__}
    (store.journal / "header.json").write_text(json.dumps(header))
    (store.journal / f".{ref.cells[3].key}.h5.tmp-123").write_bytes(b"\x89HDF half")
    (store.journal / f"{ref.cells[4].key}.h5").write_bytes(b"garbage, not HDF5")
    path.write_bytes(reference.read_bytes()[:3000])  # the live file, cut mid-write
    summary = sweep(TINY, path)
    assert summary["resumed"] == 3 and summary["ran"] == 5
    assert content_digest(path) == content_digest(reference)


def test_a_second_writer_is_refused(tmp_path):
    store = SweepStore(tmp_path / "locked.h5")
    from hwq.sweep.cell import data_info
    data = {"spiral": data_info("spiral", TINY)}
    keys = [k for t in plan(TINY) for k in t.keys()]
    with store.session(TINY, data, keys, command="a", overwrite=False):
        with pytest.raises(HwqError, match="another hwq sweep"):
            with SweepStore(tmp_path / "locked.h5").session(TINY, data, keys, command="b",
                                                            overwrite=False):
                pass


def test_cells_from_given_onnx_models(tmp_path):
    from builders import random_mlp, save

    rng = np.random.default_rng(0)
    paths = [save(random_mlp(rng, 2, 8, 1, act), tmp_path / f"m{i}.onnx")
             for i, act in enumerate(["Relu", "Sigmoid"])]
    from hwq.sweep.run import model_ref

    spec = SweepSpec(data=("spiral",), bits=(2, 8), models=tuple(model_ref(p) for p in paths),
                     attack=AttackSettings((0.0, 0.1)))
    sweep(spec, tmp_path / "models.h5")
    sw = read_sweep(tmp_path / "models.h5")
    keys = [c.key for c in sw.cells]
    # the model (named from its file stem) is the cell's coordinate; the seed is the attack's
    assert keys == ["spiral__m0__q02__s0__sim__fgsm", "spiral__m0__q08__s0__sim__fgsm",
                    "spiral__m1__q02__s0__sim__fgsm", "spiral__m1__q08__s0__sim__fgsm"]
    assert all(c.attrs["source"].endswith(".onnx") for c in sw.cells)
    assert [c.attrs["hidden_activations"] for c in sw.cells] == [["relu"]] * 2 + [["sigmoid"]] * 2
    assert all(c.attrs["quantization"] == "ptq" for c in sw.cells)


# --------------------------------------------------------------------------- real processes


def _hwq_sweep(out: Path, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hwq", "sweep", *TINY_ARGS, "-o", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_cells(out: Path, proc: subprocess.Popen, count: int, timeout: float = 120):
    journal = Path(f"{out}.cells")
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if journal.is_dir() and len(list(journal.glob("spiral__*.h5"))) >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"sweep ended or stalled before {count} cells: {proc.poll()}")


@pytest.mark.slow
def test_kill_9_mid_sweep_then_resume(tmp_path):
    """kill -9 of a real `hwq sweep` mid-run, then the same command: the file equals that of
    an uninterrupted run. Longer training (1000 epochs) keeps the kill inside the sweep."""
    longer = ["--epochs", "1000", "--patience", "1000"]
    out = tmp_path / "killed.h5"
    proc = _hwq_sweep(out, "--workers", "1", *longer)
    _wait_for_cells(out, proc, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert Path(f"{out}.cells").is_dir()  # interrupted: the journal is still there
    assert not out.exists() or not read_sweep(out).attrs["complete"]
    proc = _hwq_sweep(out, "--workers", "1", "--json", *longer)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert '"resumed": ' in stdout and '"resumed": 0' not in stdout
    uninterrupted = tmp_path / "uninterrupted.h5"
    proc = _hwq_sweep(uninterrupted, "--workers", "2", *longer)
    assert proc.communicate(timeout=300) and proc.returncode == 0
    assert content_digest(out) == content_digest(uninterrupted)


@pytest.mark.slow
def test_ctrl_c_stops_with_a_resume_hint(reference, tmp_path):
    """Ctrl-C after the first cell, then the same command (on 2 workers) finishes the file.
    One worker in the interrupted run: its cells come one training apart, so the signal
    always lands mid-sweep (with 2 workers a parent that lagged behind its workers under
    load wrote every cell at once and finished before the signal: the test skipped)."""
    out = tmp_path / "interrupted.h5"
    proc = _hwq_sweep(out, "--workers", "1")
    _wait_for_cells(out, proc, 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "resume" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()[-1:]) == 1
    proc = _hwq_sweep(out, "--workers", "2")
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert content_digest(out) == content_digest(reference)


def test_a_swallowed_ctrl_c_still_stops_the_sweep(reference, tmp_path):
    """CPython drops a KeyboardInterrupt raised in a weakref callback or ``__del__``; here a
    progress callback swallows it the same way. The sweep still stops after that cell, and
    the same run again finishes the file (before the fix it ran to the end, exit code 0)."""
    from hwq.sweep.run import Interrupted

    def progress(done, total, cell):
        if done == 1:
            try:
                signal.raise_signal(signal.SIGINT)
                time.sleep(0.05)  # the handler runs in here
            except KeyboardInterrupt:
                pass  # dropped, as CPython drops one raised in the garbage collector

    out = tmp_path / "swallowed.h5"
    with pytest.raises(Interrupted), SerialExecutor() as ex:
        run_sweep(TINY, out, ex, command="test", progress=progress)
    assert not out.exists() or not read_sweep(out).attrs["complete"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    summary = sweep(TINY, out)
    assert summary["resumed"] == 1
    assert content_digest(out) == content_digest(reference)


@pytest.mark.slow
def test_dask_cluster_matches_local(reference, tmp_path):
    """A real scheduler and two worker processes on loopback give the local numbers."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        path = tmp_path / "dask.h5"
        summary = sweep(TINY, path, DaskExecutor(cluster.scheduler_address))
        assert summary["executor"] == "dask x2"
    assert content_digest(path) == content_digest(reference)


def test_unreachable_scheduler_is_one_clear_error(tmp_path):
    with pytest.raises(HwqError, match="cannot reach the Dask scheduler"):
        with DaskExecutor("tcp://127.0.0.1:9", timeout="2s"):
            pass
    assert not (tmp_path / "x.h5").exists()


def test_one_training_serves_every_target(tmp_path):
    """A task trains once and makes one cell per target (sim and loihi: same network)."""
    pytest.importorskip("hwq_targets.loihi")
    spec = SweepSpec(data=("spiral",), activations=("relu",), bits=(4,), seeds=(0,),
                     targets=("sim", "loihi"), train=TrainSettings(epochs=20),
                     attack=AttackSettings((0.0, 0.1)))
    sweep(spec, tmp_path / "targets.h5")
    sim, loihi = sorted(read_sweep(tmp_path / "targets.h5").cells, key=lambda c: c.key)[::-1]
    assert (sim.attrs["target"], loihi.attrs["target"]) == ("sim", "loihi")
    for name in ("train_seed", "val_accuracy", "best_epoch", "float_test_accuracy"):
        assert sim.attrs[name] == loihi.attrs[name]
    assert "train_s" in loihi.timing or "train_s" in sim.timing


# --------------------------------------------------------------------------- kill -9 at finish

SMALL = SweepSpec(data=("spiral",), activations=("relu",), bits=(1, 2, 4), seeds=(0,),
                  train=TrainSettings(epochs=5, patience=5), attack=AttackSettings((0.0, 0.1)))

KILLER = r'''
import os, signal, sys
from pathlib import Path
import hwq.sweep.store as store
from hwq.sweep.executors import SerialExecutor
from hwq.sweep.run import run_sweep
from hwq.sweep.spec import SweepSpec

point, out, spec = sys.argv[1], Path(sys.argv[2]), SweepSpec.from_json(sys.argv[3])
state = {"finishing": False, "unlinked": 0}
finish = store.Session.finish
def finishing(self):
    state["finishing"] = True
    return finish(self)
store.Session.finish = finishing
unlink, replace = Path.unlink, os.replace
def killing_unlink(self, *a, **k):
    unlink(self, *a, **k)
    if state["finishing"] and self.parent.name.endswith(".cells"):
        state["unlinked"] += 1
        if (point == "header" and self.name == "header.json") or \
           (point == "cells" and self.suffix == ".h5" and state["unlinked"] >= 2):
            os.kill(os.getpid(), signal.SIGKILL)
def killing_replace(src, dst, *a, **k):
    if point == "final-write" and state["finishing"] and Path(dst) == out:
        os.kill(os.getpid(), signal.SIGKILL)  # the complete file is written, not renamed
    return replace(src, dst, *a, **k)
Path.unlink, os.replace = killing_unlink, killing_replace
with SerialExecutor() as ex:
    run_sweep(spec, out, ex, command="test")
print("not killed")
'''


@pytest.mark.parametrize("point", ["final-write", "header", "cells"])
def test_kill_9_while_finishing_then_restart(tmp_path, point):
    """A real SIGKILL at each step of finishing: during the final write (the complete file
    written under its temporary name), right after the header is removed, and midway through
    removing the journal. The next start must leave the complete file with every cell, run
    nothing again, and leave no journal or temporary file behind (issue 8, defect 3)."""
    out = tmp_path / "sweep.h5"
    proc = subprocess.run([sys.executable, "-c", KILLER, point, str(out), SMALL.to_json()],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    summary = sweep(SMALL, out)
    sw = read_sweep(out)
    assert sw.attrs["complete"] and len(sw.cells) == 3 and sw.attrs["n_cells"] == 3
    assert summary["ran"] == 0 and summary["resumed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.h5"]


# --------------------------------------------------------------------------- Dask security

def test_plain_tcp_beyond_loopback_is_refused_with_the_reason():
    with pytest.raises(UsageError, match="runs code") as err:
        DaskExecutor("tcp://10.1.2.3:8786")
    assert "--scheduler-security" in err.value.hint
    DaskExecutor("tcp://10.1.2.3:8786", security="insecure")  # explicit: a trusted network
    DaskExecutor("tcp://127.0.0.1:8786")
    DaskExecutor("tcp://[::1]:8786")
    with pytest.raises(UsageError, match="needs --scheduler"):
        make_executor(1, None, "insecure")


def tls_files(folder: Path) -> Path:
    """A self-signed certificate (its own CA) and a Dask security file naming it."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    config = folder / "dask-tls.yaml"
    config.write_text("distributed:\n  comm:\n    require-encryption: true\n    tls:\n"
                      "      ca-file: cert.pem\n      client: {cert: cert.pem, key: key.pem}\n")
    return config


def test_security_file_is_read_with_paths_beside_it(tmp_path):
    pytest.importorskip("distributed")
    config = tmp_path / "dask-tls.yaml"
    config.write_text("distributed:\n  comm:\n    require-encryption: true\n    tls:\n"
                      "      ca-file: ca.pem\n      client: {cert: c.pem, key: k.pem}\n")
    ex = DaskExecutor("tls://10.1.2.3:8786", security=config)
    assert ex.security.tls_ca_file == str(tmp_path / "ca.pem")
    assert ex.security.tls_client_cert == str(tmp_path / "c.pem")
    assert ex.security.tls_client_key == str(tmp_path / "k.pem")
    assert ex.security.require_encryption
    (tmp_path / "bad.yaml").write_text("distributed: {}\n")
    with pytest.raises(UsageError, match="ca-file"):
        DaskExecutor("tls://10.1.2.3:8786", security=tmp_path / "bad.yaml")


def _square(v):
    return v * v


@pytest.mark.slow
def test_tls_cluster_runs_tasks_and_plain_clients_are_turned_away(tmp_path):
    """A real scheduler and worker on tls://127.0.0.1 with a certificate: the executor
    connects with the security file and runs tasks; without it the connection fails."""
    distributed = pytest.importorskip("distributed")
    if subprocess.run(["openssl", "version"], capture_output=True).returncode != 0:
        pytest.skip("needs the openssl command")
    config = tls_files(tmp_path)
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    sec = distributed.Security(tls_ca_file=cert, tls_scheduler_cert=cert, tls_scheduler_key=key,
                               tls_worker_cert=cert, tls_worker_key=key, tls_client_cert=cert,
                               tls_client_key=key, require_encryption=True)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  protocol="tls://", host="127.0.0.1", security=sec,
                                  dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        with DaskExecutor(address, security=config) as ex:
            assert sorted(ex.imap(_square, [1, 2, 3])) == [1, 4, 9]
        with pytest.raises(HwqError, match="cannot reach"):
            with DaskExecutor(address.replace("tls://", "tcp://"), timeout="3s"):
                pass
