"""Progress of TrueNorth's long work (issue 16): ``hwq compile --target truenorth`` hears of each
layer mapped and ``hwq truenorth run`` of each tick. Without a terminal (a log, CI, nohup) both
write lines on stderr once the work has taken ``PROGRESS_AFTER_S`` (a quick compile or run
writes none); stdout and the written files stay the same."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from builders import random_mlp, save
from factories import make_layer, make_net
from hwq_targets.truenorth import TrueNorthTarget, read_model, read_spikes, run_model
from hwq_targets.truenorth.cli import TickProgress
from hwq_targets.truenorth.run import spikes_csv

DATA = Path(__file__).parent / "data" / "truenorth"
COMPILE_LINE = re.compile(r"^truenorth compile: (\d+)/(\d+) layers, layer (\d+) \((\S+)\): (\d+) cores, "
                          r"(\d+) in all \(\d+\.\d s\)$")
RUN_LINE = re.compile(r"^truenorth run: (\d+)/(\d+) ticks \((\d+) %\), \d+\.\d s$")


def hwq_process(module: str, after: float, *args, cwd) -> subprocess.CompletedProcess:
    """``hwq ARGS`` in a real process whose stderr is a pipe (no terminal), with ``module``'s
    ``PROGRESS_AFTER_S`` set to ``after`` (0: report even a quick job)."""
    code = (f"import sys, {module} as m; m.PROGRESS_AFTER_S = {after!r}; from hwq.cli import main; "
            "main(sys.argv[1:])")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)


def compile_step_mlp(tmp_path, after: float) -> subprocess.CompletedProcess:
    onnx = tmp_path / "m.onnx"
    if not onnx.exists():
        save(random_mlp(np.random.default_rng(3), 64, 24, 10, act="step", scale=0.5), onnx)
    return hwq_process("hwq.cli.core", after, "compile", onnx, "--target", "truenorth", "--bits", "2",
                       "--input-bits", "2", "--calib", "digits", "-o", tmp_path / f"m{after}.hwq", "--json",
                       cwd=tmp_path)


def test_compile_without_a_terminal_prints_a_line_per_layer_mapped(tmp_path):
    proc = compile_step_mlp(tmp_path, 0.0)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["target_report"]  # stdout: the JSON alone
    lines = [COMPILE_LINE.match(ln) for ln in proc.stderr.splitlines() if ln.startswith("truenorth compile")]
    assert all(lines) and len(lines) == 2, proc.stderr
    assert [(int(m[1]), int(m[2]), int(m[3])) for m in lines] == [(1, 2, 1), (2, 2, 0)]  # output layer first
    assert [m[4] for m in lines] == [r["scheme"] for r in reversed(report["layers"])]
    assert int(lines[0][5]) + int(lines[1][5]) == int(lines[1][6]) == report["cores"]
    quiet = compile_step_mlp(tmp_path, 60.0)  # the default: a quick compile writes no progress
    assert quiet.returncode == 0 and "truenorth compile" not in quiet.stderr, quiet.stderr
    assert json.loads(quiet.stdout)["target_report"] == report


def test_mapping_reports_every_layer_and_its_cores():
    rng = np.random.default_rng(0)
    net = make_net([make_layer(rng.integers(-1, 2, (40, 30)), rng.integers(-3, 3, 40), "step"),
                    make_layer(rng.integers(-1, 2, (20, 40)), rng.integers(-3, 3, 20), "step"),
                    make_layer(rng.integers(-1, 2, (10, 20)), rng.integers(-3, 3, 10), "identity")], input_bits=2)
    heard = []
    program = TrueNorthTarget().compile(net, fidelity_samples=0, progress=lambda *a: heard.append(a))
    assert [(d, t) for d, t, _ in heard] == [(1, 3), (2, 3), (3, 3)]
    plans = {p.index: p for p in program.mapping.layers}
    assert plans[0].scheme == "count-step" and plans[0].h_cores  # accumulator cores count too
    for (_, _, what), li in zip(heard, (2, 1, 0)):
        cores = len(plans[li].cores) + len(plans[li].h_cores)
        assert what.startswith(f"layer {li} ({plans[li].scheme}): {cores} cores"), what
    assert heard[-1][2].endswith(f" {len(program.mapping.model.cores)} in all")
    quiet = TrueNorthTarget().compile(net, fidelity_samples=0)
    assert quiet.digest() == program.digest()


def test_truenorth_run_without_a_terminal_prints_a_line_per_tenth_of_the_ticks(tmp_path):
    out = tmp_path / "out.csv"
    proc = hwq_process("hwq_targets.truenorth.cli", 0.0, "truenorth", "run", DATA / "ex1.json", "--input",
                       DATA / "ex1_spikes.sfti", "--ticks", 200, "-o", out, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [RUN_LINE.match(ln) for ln in proc.stderr.splitlines()]
    assert all(lines) and [(int(m[1]), int(m[2]), int(m[3])) for m in lines] == [
        (20 * k, 200, 10 * k) for k in range(1, 11)], proc.stderr
    result = run_model(read_model(DATA / "ex1.json"), read_spikes(DATA / "ex1_spikes.sfti"), 200)
    assert out.read_bytes() == spikes_csv(result.spikes)
    assert json.loads(proc.stdout)["spikes"] == len(result.spikes)


def test_tick_lines_wait_for_the_grace_time():
    now = [0.0]
    out = io.StringIO()
    shown = TickProgress(100, stream=out, after=2.0, clock=lambda: now[0])
    for t in range(1, 101):
        now[0] = t * 0.05  # 5 s in all: the first 40 ticks take under 2 s
        shown(t, 100)
    got = [RUN_LINE.match(ln) for ln in out.getvalue().splitlines()]
    assert all(got) and [int(m[1]) for m in got] == [40, 50, 60, 70, 80, 90, 100], out.getvalue()
