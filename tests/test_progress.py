"""Progress on long work without a terminal (a log, CI, nohup), where the tqdm bars hide:
``hwq sweep`` writes a line per finished cell (as ``hwq reproduce`` does), ``hwq attack``
lines per 10 % of inputs and a line per member and strength of a suite (Square included)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hwq
from hwq.attack import attack, make_suite
from hwq.attack.suite import ProgressLines, report_member
from hwq.onnx.importer import load_onnx

DATA = Path(__file__).parent / "data" / "exporters"
MEMBER_LINE = re.compile(r"^attack (\d)/(\d) (\S+): eps (\S+) accuracy (\d\.\d{4}) \(\d+\.\d s\)$")


def hwq_cli(*args, cwd) -> subprocess.CompletedProcess:
    """``hwq`` in a real process whose stderr is a pipe (no terminal)."""
    return subprocess.run([sys.executable, "-m", "hwq", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_sweep_without_a_terminal_prints_a_line_per_cell(tmp_path):
    """Two targets make two cells from one trained model (one task): a line for each."""
    proc = hwq_cli("sweep", "--data", "spiral", "--activations", "step", "--bits", "4", "--seeds", "1",
                   "--eps", "0,0.1", "--epochs", "5", "--patience", "5", "--targets", "sim,loihi",
                   "--workers", "1", "-o", tmp_path / "s.h5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[")]
    assert [ln.split("]")[0] for ln in lines] == ["[1/2", "[2/2"], proc.stderr
    assert {ln.split()[1].rstrip(":").rsplit("__", 1)[1] for ln in lines} == {"sim", "loihi"}
    assert all(re.search(r": clean \d\.\d{3} \(\d+\.\d s\)$", ln) for ln in lines), lines


@pytest.fixture(scope="module")
def program_and_data():
    ds = hwq.load_dataset("digits").limit(120)
    graph = load_onnx(DATA / "torch_relu6_classic.onnx")
    net = hwq.quantize(graph, 4, calibration=ds.x_train, bounds=ds.bounds, act_bits=4)
    return hwq.compile(net, "sim"), ds


def test_suite_reports_each_member_and_strength(program_and_data):
    program, ds = program_and_data
    method = make_suite("fgsm,square", queries=30)
    eps = [0.0, 0.05, 0.2]
    out = io.StringIO()
    lines = ProgressLines(len(ds.y_test) * 2, stream=out)
    result = attack(program, ds.x_test, ds.y_test, eps, method=method, bounds=ds.bounds,
                    progress=lines.update, diagnostics=False, batch_size=32)
    text = out.getvalue().splitlines()
    members = [MEMBER_LINE.match(ln) for ln in text if MEMBER_LINE.match(ln)]
    assert [(m[1], m[2], m[3], float(m[4])) for m in members] == [
        (str(i + 1), "2", name, e) for i, name in enumerate(("fgsm", "square")) for e in eps]
    for m, acc in zip(members, np.concatenate([r.accuracy for r in result.members])):
        assert float(m[5]) == pytest.approx(acc, abs=5e-5)
    shares = [int(re.search(r"\((\d+) %\)", ln)[1]) for ln in text if "inputs (" in ln]
    assert shares == sorted(shares) and shares[-1] == 100 and len(shares) >= 5, text


def test_single_attack_and_terminal_bar_callers():
    """``report_member`` reaches ``ProgressLines`` through its bound ``update`` and ignores a
    plain callable (a terminal bar's ``update``)."""
    out = io.StringIO()
    lines = ProgressLines(10, stream=out, every=0.5)
    lines.update(4)
    lines(6)

    class Result:
        attack, epsilons, accuracy = "square", np.array([0.1]), np.array([0.25])

    report_member(lines.update, 0, 1, Result())
    report_member(lambda n: None, 0, 1, Result())  # no member_done: nothing, no error
    got = out.getvalue().splitlines()
    assert len(got) == 2 and got[0].startswith("attack: 10/10 inputs (100 %)")
    assert MEMBER_LINE.match(got[1])[3] == "square"


def test_attack_without_a_terminal_prints_member_and_strength_lines(tmp_path):
    model = tmp_path / "m.hwq"
    proc = hwq_cli("compile", DATA / "torch_relu6_classic.onnx", "--bits", "4", "--calib", "digits",
                   "-o", model, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = hwq_cli("attack", model, "--data", "digits", "--limit", "60", "--attacks", "fgsm,square",
                   "--queries", "20", "--eps", "0,0.1", "--no-diagnostics", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    members = [MEMBER_LINE.match(ln) for ln in proc.stderr.splitlines() if MEMBER_LINE.match(ln)]
    assert [(m[1], m[3], m[4]) for m in members] == [("1", "fgsm", "0"), ("1", "fgsm", "0.1"),
                                                     ("2", "square", "0"), ("2", "square", "0.1")], proc.stderr
    assert "attack: 120/120 inputs (100 %)" in proc.stderr


def test_lines_wait_for_after_seconds():
    """``after``: a job quicker than that writes no lines (a compile's fidelity pass on a small
    network); once it has run that long the lines come at the next mark."""
    out, now = io.StringIO(), [0.0]
    lines = ProgressLines(10, "loihi fidelity", stream=out, every=0.2, clock=lambda: now[0], after=2.0)
    lines(4)  # 40 % at 0 s: too early
    now[0] = 2.5
    lines(2)  # 60 % at 2.5 s
    assert out.getvalue().splitlines() == ["loihi fidelity: 6/10 inputs (60 %), 2.5 s"]


def test_the_shared_writer_writes_at_each_tenth_once_after_has_run():
    """``ShareLines``, behind the attack, fidelity and tick lines: a line at each 10 % mark (a
    mark jumped over writes one line, at the share reached), none before ``after`` seconds (those
    marks are skipped, not caught up), the elapsed time since it was made; ``after=None`` is
    ``PROGRESS_AFTER_S``, the one threshold the compile and tick lines read too."""
    from hwq_targets.truenorth import cli as truenorth_cli

    import hwq.cli.core as cli_core
    from hwq.progress_lines import PROGRESS_AFTER_S, ShareLines

    assert cli_core.PROGRESS_AFTER_S is PROGRESS_AFTER_S is truenorth_cli.PROGRESS_AFTER_S
    out, now = io.StringIO(), [10.0]
    lines = ShareLines(200, "job", "steps", stream=out, clock=lambda: now[0], after=1.0)
    assert lines.after == 1.0 and ShareLines(1, "x", "y", clock=lambda: 0.0).after == PROGRESS_AFTER_S
    for done in (5, 20, 25, 40):  # up to 20 % within 0.4 s: too early, and not written later
        now[0] += 0.1
        lines.show(done)
    assert out.getvalue() == ""
    for done, t in ((59, 11.0), (60, 11.2), (61, 11.5), (130, 12.0), (135, 12.2), (198, 12.5), (200, 13.0)):
        now[0] = t
        lines.show(done)
    assert out.getvalue().splitlines() == ["job: 60/200 steps (30 %), 1.2 s", "job: 130/200 steps (65 %), 2.0 s",
                                           "job: 198/200 steps (99 %), 2.5 s", "job: 200/200 steps (100 %), 3.0 s"]
