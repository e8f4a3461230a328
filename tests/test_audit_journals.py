"""Journals beside output files (issue 17, H1 and H2): ``OUT.h5.parts/`` of ``hwq attack
--device`` and ``SWEEP.h5.cells/`` of ``hwq sweep`` are locked, every attack part carries its
run's key, and nothing hwq did not write is ever deleted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from builders import random_mlp

import hwq
from hwq.attack import make_suite
from hwq.attack.gradients import gradient_source
from hwq.devices import LocalDevice
from hwq.devices.attack import Journal, attack_on_device
from hwq.errors import HwqError, UsageError
from hwq.files.journal import JournalBusy
from hwq.onnx.importer import graph_from_model

N, BATCH = 60, 20  # three parts
EPS_A, EPS_B = [0.0, 0.05, 0.1], [0.0, 0.1, 0.2]


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(3)
    data = hwq.load_dataset("digits")
    net = hwq.quantize(graph_from_model(random_mlp(rng, 64, 16, 10)), 4, calibration=data.x_train,
                       bounds=data.bounds)
    program = hwq.compile(net, "sim")
    return program, data.x_test[:N], data.y_test[:N], data.bounds


def fgsm(p, x, y, eps, **kw):
    return hwq.api.attack(p, x, y, eps, method=make_suite("fgsm"), diagnostics=False, **kw)


class Stop(Exception):
    pass


def run(setup, eps, journal=None, progress=None, device=None):
    program, x, y, bounds = setup
    return attack_on_device(fgsm, program, device or LocalDevice.from_program(program), x, y, eps,
                            gradient=gradient_source("surrogate", program), bounds=bounds, journal=journal,
                            key={"eps": "in the key"}, batch=BATCH, progress=progress)


def stop_after(parts: int):
    seen = []

    def progress(n):
        seen.append(n)
        if len(seen) == parts:
            raise Stop

    return progress


def same(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("correct", "predictions", "clean_correct"))


# --------------------------------------------------------------------------- H1: the lock and the key


def test_a_second_run_on_the_same_journal_is_refused_while_the_first_runs(setup, tmp_path):
    """Before: the second run (other strengths) deleted the first's journal and went on; the
    first kept saving into the recreated folder."""
    journal = tmp_path / "out.h5.parts"
    errors = []

    def progress(n):
        if not errors:
            try:
                run(setup, EPS_B, journal)
                errors.append(None)
            except JournalBusy as exc:
                errors.append(exc)

    first = run(setup, EPS_A, journal, progress)
    assert isinstance(errors[0], JournalBusy) and "another hwq attack" in str(errors[0])
    assert same(first.result, run(setup, EPS_A).result)
    assert first.journal.remove() == [] and not journal.exists()
    run(setup, EPS_B, journal).journal.remove()  # the lock is released with the journal


def test_a_part_of_other_settings_is_never_loaded(setup, tmp_path):
    """The audit's race left run B's stamp beside a part run A computed; B loaded it as its own
    ("resumed: 1 finished batches", other predictions). Parts carry their key now."""
    a, b = tmp_path / "a.h5.parts", tmp_path / "b.h5.parts"
    for path, eps in ((a, EPS_A), (b, EPS_B)):
        with pytest.raises(Stop):
            run(setup, eps, path, stop_after(1))
        assert (path / "part-0.npz").exists()
    shutil.copy(b / "key.json", a / "key.json")  # B's stamp, A's part
    mixed = run(setup, EPS_B, a)
    assert mixed.resumed == 0
    assert same(mixed.result, run(setup, EPS_B).result)
    resumed = run(setup, EPS_B, b)  # B's own part is still taken
    assert resumed.resumed == 1 and same(resumed.result, mixed.result)


def test_a_damaged_or_misshapen_part_is_run_again(setup, tmp_path):
    journal = tmp_path / "d.h5.parts"
    with pytest.raises(Stop):
        run(setup, EPS_A, journal, stop_after(2))
    (journal / "part-0.npz").write_bytes(b"PK\x03\x04 not a zip")
    with np.load(journal / "part-1.npz") as f:
        arrays = dict(f)
    arrays["correct"] = arrays["correct"][:, :3]
    with open(journal / "part-1.npz", "wb") as f:
        np.savez(f, **arrays)
    again = run(setup, EPS_A, journal)
    assert again.resumed == 0 and same(again.result, run(setup, EPS_A).result)


# --------------------------------------------------------------------------- H2: what hwq did not make


def test_a_folder_hwq_did_not_make_is_refused_and_kept(setup, tmp_path):
    journal = tmp_path / "results.h5.parts"
    journal.mkdir()
    (journal / "thesis.txt").write_text("years of work")
    with pytest.raises(UsageError, match="not made by hwq") as err:
        run(setup, EPS_A, journal)
    assert "\n" not in str(err.value)
    assert (journal / "thesis.txt").read_text() == "years of work"
    empty = tmp_path / "empty.h5.parts"
    empty.mkdir()
    with pytest.raises(UsageError, match="not made by hwq"):
        run(setup, EPS_A, empty)


def test_a_symlink_or_a_file_under_the_journal_name_is_refused(setup, tmp_path):
    """Before: ``[Errno None] None``."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("x")
    (tmp_path / "s.h5.parts").symlink_to(elsewhere)
    with pytest.raises(UsageError, match="symbolic link"):
        run(setup, EPS_A, tmp_path / "s.h5.parts")
    assert (elsewhere / "keep.txt").exists() and sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]
    (tmp_path / "f.h5.parts").write_text("a file")
    with pytest.raises(UsageError, match="not a folder"):
        run(setup, EPS_A, tmp_path / "f.h5.parts")


def test_files_dropped_into_a_journal_are_kept_when_it_is_removed(setup, tmp_path):
    journal = tmp_path / "out.h5.parts"

    def progress(n):
        (journal / "notes.txt").write_text("mine")

    done = run(setup, EPS_A, journal, progress)
    assert done.journal.remove() == ["notes.txt"]
    assert sorted(p.name for p in journal.iterdir()) == ["hwq-journal.json", "lock", "notes.txt"]


def test_an_old_run_of_other_settings_is_cleared_but_not_foreign_files(setup, tmp_path):
    journal = tmp_path / "out.h5.parts"
    with pytest.raises(Stop):
        run(setup, EPS_A, journal, stop_after(1))
    (journal / "notes.txt").write_text("mine")
    other = run(setup, EPS_B, journal)
    assert other.resumed == 0 and (journal / "notes.txt").exists()
    other.journal.remove()


# --------------------------------------------------------------------------- the command line

SERVE_WRONG_OFF_GOLDEN = r'''
import sys
import numpy as np
import hwq
from hwq.attack import make_suite
from hwq.attack.gradients import gradient_source
from hwq.devices import LocalDevice, Server
from hwq.devices.session import Golden

program = hwq.load_program(sys.argv[1])
golden = Golden(program).codes

def infer(codes):
    scores = np.asarray(program.forward(codes), dtype=np.int64)
    if codes.shape != golden.shape or not np.array_equal(codes, golden):
        scores[0] = np.roll(scores[0], 1)  # one decision per batch, never on the golden inputs
    return scores

device = LocalDevice.from_program(program, identity="wrong off golden")
device.fn = infer
server = Server(device, "127.0.0.1", 0)
print(f"listening {server.address}", flush=True)
server.serve_forever()
'''


def hwq_cli(*args):
    return subprocess.run([sys.executable, "-m", "hwq", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def model_file(setup, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.hwq"
    hwq.save_program(path, setup[0])
    return path


ATTACK = ["--data", "digits", "--limit", "40", "--eps", "0:0.1:0.05", "--no-diagnostics"]


def test_cli_refuses_a_foreign_parts_folder_in_one_line(model_file, tmp_path):
    out = tmp_path / "results.h5"
    parts = tmp_path / "results.h5.parts"
    parts.mkdir()
    (parts / "thesis.txt").write_text("years of work")
    proc = hwq_cli("attack", model_file, *ATTACK, "--device", "tcp://127.0.0.1:9", "-o", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hwq: error: ") and "not made by hwq" in proc.stderr
    assert (parts / "thesis.txt").exists() and not out.exists()


@pytest.fixture()
def wrong_device(model_file):
    proc = subprocess.Popen([sys.executable, "-c", SERVE_WRONG_OFF_GOLDEN, str(model_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("listening "), proc.stderr.read()
    yield line.split()[1]
    proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


@pytest.mark.slow
def test_a_device_wrong_off_the_golden_inputs_stops_the_run_or_is_reported(model_file, wrong_device, tmp_path):
    """Before: exit 0, the disagreement only inside the results file. Now the default limit (0)
    stops the run with nothing written, the journal keeps the batches, and a rerun that allows
    the disagreement writes them (without running them again) and reports it."""
    out = tmp_path / "dev.h5"
    stopped = hwq_cli("attack", model_file, *ATTACK, "--device", wrong_device, "-o", out)
    assert stopped.returncode == 1 and not out.exists(), stopped.stderr
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("hwq: error: device ") and "--max-disagreement" in last
    assert (tmp_path / "dev.h5.parts" / "part-0.npz").exists()
    kept = hwq_cli("attack", model_file, *ATTACK, "--device", wrong_device, "-o", out,
                   "--max-disagreement", "1", "--json")
    assert kept.returncode == 0, kept.stderr
    assert "resumed: 1 finished batches" in kept.stderr and "disagrees with the bit-exact model" in kept.stderr
    summary = json.loads(kept.stdout)
    assert "device_disagreement" in summary["flags"]
    assert 0 < max(summary["diagnostics"]["device"]["disagreement"]) <= 2 / 40
    assert out.exists() and not (tmp_path / "dev.h5.parts").exists()


def test_max_disagreement_must_be_a_share(model_file, tmp_path):
    proc = hwq_cli("attack", model_file, *ATTACK, "--device", "tcp://127.0.0.1:9", "--max-disagreement", "2")
    assert proc.returncode == 2 and "--max-disagreement" in proc.stderr.strip().splitlines()[-1]


def test_journal_helpers_reject_a_busy_lock(tmp_path):
    from hwq.files import journal as folders

    path = tmp_path / "x.parts"
    assert folders.make_journal(path, "k", tmp_path / "x")
    lock = folders.JournalLock(path, "busy")
    with pytest.raises(HwqError, match="busy"):
        folders.JournalLock(path, "busy")
    lock.release()
    folders.JournalLock(path, "busy").release()
    with pytest.raises(UsageError, match="another kind"):
        folders.make_journal(path, "other", tmp_path / "x")
    assert Journal  # the attack journal is the first user


@pytest.mark.slow
def test_two_commands_on_one_output_the_second_is_refused(model_file, tmp_path):
    """The audit's H1 with real processes: while one `hwq attack --device -o OUT` runs on a slow
    device, a second one with other settings on the same OUT is refused in one line, and the
    first finishes with its own numbers."""
    helper = [sys.executable, str(Path(__file__).resolve().parent / "test_devices.py"), str(model_file),
              "--delay", "4.0"]  # slow enough that the second starts while the first runs, under load too
    proc = subprocess.Popen(helper, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    address = proc.stdout.readline().split()[1]
    out = tmp_path / "out.h5"
    args = ["--data", "digits", "--limit", "1000", "--no-diagnostics", "--device", address, "-o", out]
    try:
        first = subprocess.Popen([sys.executable, "-m", "hwq", "attack", model_file, "--eps", "0:0.1:0.05", *args],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lock = tmp_path / "out.h5.parts" / "lock"
        for _ in range(600):
            if lock.exists() or first.poll() is not None:
                break
            time.sleep(0.05)
        second = hwq_cli("attack", model_file, "--eps", "0:0.2:0.1", *args)
        _, err = first.communicate(timeout=300)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert first.returncode == 0, err
    assert second.returncode == 1 and "being written by another hwq attack" in second.stderr.strip().splitlines()[-1]
    assert "resumed" not in err and not (tmp_path / "out.h5.parts").exists()
    with h5py.File(out) as f:
        assert f["epsilons"][()].tolist() == [0.0, 0.05, 0.1]


def test_attack_refuses_to_replace_a_sweep_before_running(model_file, tmp_path):
    from hwq.sweep.spec import FORMAT

    out = tmp_path / "sweep.h5"
    with h5py.File(out, "w") as f:
        f.attrs.update(format=FORMAT, version=1)
    before = out.read_bytes()
    proc = hwq_cli("attack", model_file, *ATTACK, "--device", "tcp://127.0.0.1:9", "-o", out)
    assert proc.returncode == 2 and "is not replaced" in proc.stderr.strip().splitlines()[-1]
    assert out.read_bytes() == before and not (tmp_path / "sweep.h5.parts").exists()


def test_an_older_hwq_journal_is_adopted_but_its_parts_are_not_loaded(setup, tmp_path):
    journal = tmp_path / "old.h5.parts"
    with pytest.raises(Stop):
        run(setup, EPS_A, journal, stop_after(1))
    (journal / "hwq-journal.json").unlink()  # as an hwq before the marker left it
    with np.load(journal / "part-0.npz") as f:
        arrays = {k: f[k] for k in f.files if k not in ("key", "part")}
    with open(journal / "part-0.npz", "wb") as f:
        np.savez(f, **arrays)  # and its parts carried no key
    again = run(setup, EPS_A, journal)
    assert again.resumed == 0 and same(again.result, run(setup, EPS_A).result)
    assert again.journal.remove() == [] and not journal.exists()


def test_a_marker_that_is_a_link_is_not_read(setup, tmp_path):
    journal = tmp_path / "z.h5.parts"
    journal.mkdir()
    (journal / "hwq-journal.json").symlink_to("/dev/zero")
    with pytest.raises(UsageError, match="not made by hwq"):
        run(setup, EPS_A, journal)
