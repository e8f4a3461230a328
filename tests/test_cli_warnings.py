"""Warnings and refusals a user can act on (issue 16, section 2): each names what happened and
the setting that avoids it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from builders import random_mlp
from cli_runner import run_cli

from hwq.errors import LimitError
from hwq.onnx.importer import graph_from_model
from hwq.quant.qnet import QuantSettings
from hwq.quant.quantize import quantize
from hwq.target.registry import get_target


@pytest.fixture(scope="module")
def digits_relu(tmp_path_factory):
    """A post-training-quantized ReLU MLP trained on digits (the new user's model)."""
    d = tmp_path_factory.mktemp("warn")
    with pytest.raises(SystemExit) as info:
        from hwq.cli import main

        main(["train", "--data", "digits", "--activation", "relu", "--epochs", "40", "--hidden", "24",
              "--seed", "0", "-o", str(d / "relu.onnx")])
    assert info.value.code == 0
    return d


def test_loihi_compile_warns_when_coarse_activations_change_the_network(digits_relu, capsys):
    d = digits_relu
    code, out, err = run_cli("compile", d / "relu.onnx", "--bits", "8", "--act-bits", "2", "--target", "loihi",
                             "-o", d / "l2.hwq", capsys=capsys)
    assert code == 0, err
    fidelity = float(out.split("\nfidelity: ")[1].split()[0])
    assert fidelity < 0.99
    warning = [line for line in err.splitlines() if line.startswith("warning: loihi computes a different network")]
    assert len(warning) == 1, err
    assert "no upper clip" in warning[0] and "--act-bits 8" in warning[0]  # the reason and the setting
    code, out, err = run_cli("compile", d / "relu.onnx", "--bits", "8", "--act-bits", "2", "--target", "loihi",
                             "-o", d / "l2j.hwq", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["warnings"] and "warning: loihi" in err
    # the setting the warning names avoids it
    code, out, err = run_cli("compile", d / "relu.onnx", "--bits", "8", "--act-bits", "8", "--target", "loihi",
                             "-o", d / "l8.hwq", capsys=capsys)
    assert code == 0 and "warning" not in err, err
    assert float(out.split("\nfidelity: ")[1].split()[0]) >= 0.99


def truenorth_case(seed: int):
    """Random ReLU MLPs that TrueNorth refuses at the drawn settings (seed 1: the accumulators'
    threshold range; seed 16: a core's 256 axons)."""
    rng = np.random.default_rng(seed)
    n_in = int(rng.choice([4, 16, 64, 200]))
    hidden = int(rng.choice([4, 16, 64, 300]))
    bits, input_bits, act_bits = (int(rng.choice([2, 4, 8])) for _ in range(3))
    relu = str(rng.choice(["rate", "exact"]))
    graph = graph_from_model(random_mlp(rng, n_in, hidden, 3, act="Relu"))
    x = rng.uniform(0, 1, (64, n_in))
    return lambda b, i: quantize(graph, QuantSettings(b, "narrow", False, act_bits, i), x, bounds=(0, 1)), \
        bits, input_bits, relu


@pytest.mark.parametrize("seed, what", [(1, "sums exceed the threshold range"),
                                        (16, "accumulator needs 305 axons")])
def test_truenorth_refusals_name_the_settings_that_fit(seed, what):
    tn = get_target("truenorth")
    make, bits, input_bits, relu = truenorth_case(seed)
    with pytest.raises(LimitError) as info:
        tn.compile(make(bits, input_bits), relu=relu, fidelity_samples=0)
    line = info.value.line()
    assert what in line and line.startswith("layer 0:") and "\n" not in line
    assert ("262143" if seed == 1 else "a core has 256") in line, line  # the limit, beside what was needed
    assert "--input-bits" in line and "--bits" in line, line
    # each setting the refusal names makes this network fit: the input bits it names (the largest
    # that fits: one more is refused), and fewer weight bits
    fits = int(re.search(r"--input-bits (\d+) fits", line).group(1))
    tn.compile(make(bits, fits), relu=relu, fidelity_samples=0)
    with pytest.raises(LimitError):
        tn.compile(make(bits, fits + 1), relu=relu, fidelity_samples=0)
    tn.compile(make(bits, 2), relu=relu, fidelity_samples=0)
    tn.compile(make(2, input_bits), relu=relu, fidelity_samples=0)


def test_run_on_an_onnx_model_says_compile_it_first(digits_relu, capsys):
    code, _, err = run_cli("run", digits_relu / "relu.onnx", "--data", "digits", capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "compile it first: hwq compile" in lines[0], err
    assert "HDF5" not in err


def test_info_reads_hwqs_nir_and_lists_only_exports_that_write(digits_relu, capsys):
    d = digits_relu
    code, _, err = run_cli("compile", d / "relu.onnx", "--bits", "8", "--target", "loihi", "-o", d / "i.hwq",
                           capsys=capsys)
    assert code == 0, err
    code, _, err = run_cli("export", d / "i.hwq", "-o", d / "i.nir", capsys=capsys)
    assert code == 0, err
    code, out, err = run_cli("info", d / "i.nir", "--json", capsys=capsys)
    assert code == 0, err
    nir = json.loads(out)
    assert nir["kind"] == "nir export" and [x["shape"] for x in nir["layers"]] == [[24, 64], [10, 24]]
    code, out, err = run_cli("info", d / "i.hwq", "--json", capsys=capsys)
    info = json.loads(out)
    assert code == 0 and "netx" not in info["exports"] and {"onnx", "nir"} <= set(info["exports"])
    code, _, err = run_cli("export", d / "i.hwq", "-o", d / "i.net", capsys=capsys)
    assert code != 0 and info["exports_refused"]["netx"] in err  # info said why export refuses
    code, _, err = run_cli("run", d / "i.nir", "--data", "digits", capsys=capsys)
    assert code == 1 and "not a compiled .hwq file" in err


def test_compare_says_scores_of_different_targets_have_different_units(digits_relu, capsys):
    d = digits_relu
    code, _, err = run_cli("compile", d / "relu.onnx", "--bits", "8", "--target", "loihi", "-o", d / "c.hwq",
                           capsys=capsys)
    assert code == 0, err
    code, out, err = run_cli("compare", d / "c.hwq", "--data", "digits", "--limit", "50", capsys=capsys)
    line = next(x for x in out.splitlines() if x.startswith("scores_differ_fraction:"))
    assert code == 0 and "different" in line and "compare decisions" in line, out
    code, out, err = run_cli("compare", d / "c.hwq", "--data", "digits", "--limit", "50", "--json", capsys=capsys)
    assert json.loads(out)["score_units"].startswith("different")
    code, out, err = run_cli("compare", d / "c.hwq", "--data", "digits", "--limit", "50", "--targets",
                             "loihi,loihi", "--json", capsys=capsys)
    assert json.loads(out)["score_units"] == "same"


def test_version(capsys):
    from hwq.version import __version__

    code, out, err = run_cli("--version", capsys=capsys)
    assert code == 0 and out.strip() == f"hwq {__version__}", err


def test_attack_states_the_input_format_next_to_robust_accuracy(digits_relu, capsys):
    d = digits_relu
    code, _, err = run_cli("compile", d / "relu.onnx", "--bits", "4", "--input-bits", "2", "-o", d / "a.hwq",
                           capsys=capsys)
    assert code == 0, err
    code, out, err = run_cli("attack", d / "a.hwq", "--data", "digits", "--eps", "0,0.1", "--limit", "30", "--json",
                             "-o", d / "a.h5", capsys=capsys)
    assert code == 0 and json.loads(out)["input_format"] == "u2 x 1/3 (2-bit codes)", err
    code, out, err = run_cli("info", d / "a.h5", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["input_format"] == "u2 x 1/3 (2-bit codes)"
    code, out, err = run_cli("attack", d / "a.hwq", "--data", "digits", "--eps", "0,0.1", "--limit", "30",
                             capsys=capsys)
    assert code == 0 and "inputs u2 x 1/3 (2-bit codes): clean accuracy" in out, out


def test_help_shows_one_calibration_policy_and_the_other_commands_defaults(capsys):
    from hwq.api import CALIBRATION_ROWS

    helps = {}
    for command in ("compile", "sweep"):
        code, out, _ = run_cli(command, "--help", capsys=capsys)
        helps[command] = " ".join(out.replace("│", " ").split())
        assert code == 0 and f"first {CALIBRATION_ROWS} rows" in helps[command], helps[command]
    assert "`hwq sweep` defaults to 16" in helps["compile"] and "`hwq compile` defaults to 8" in helps["sweep"]


def test_compile_and_sweep_calibrate_on_the_same_rows(tmp_path, capsys):
    """A compiled file and "the same" sweep cell get the same formats: both calibrate on
    hwq.api.calibration_rows (the first 5000 training rows), here on fashion-like data larger than that."""
    from hwq import api

    x = np.arange(12000, dtype=float).reshape(6000, 2)
    assert api.calibration_rows(x).shape == (api.CALIBRATION_ROWS, 2)
    import inspect

    from hwq.cli import core
    from hwq.sweep import cell

    for module in (core, cell):
        source = inspect.getsource(module)
        assert "x_train[:" not in source and "calibration_rows(" in source, module.__name__


def test_reproduce_without_a_terminal_prints_a_line_per_cell(tmp_path, capsys, monkeypatch):
    import hwq.cli.study as study

    seen = {}

    def fake_run_spec(spec, output, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop before any work: only the wiring is under test

    monkeypatch.setattr(study, "run_spec", fake_run_spec)
    monkeypatch.setattr(study.sys.stderr, "isatty", lambda: False, raising=False)
    code, _, err = run_cli("reproduce", "--data", "spiral", "--quick", "-o", tmp_path / "out", capsys=capsys)
    assert code == 130 and seen["verbose"] is True, err


def test_truenorth_run_and_fidelity_report_progress():
    """The TrueNorth emulator runs for minutes on a test set: evaluate and the compile's fidelity
    hear of every finished chunk (the CLI draws them as progress bars)."""
    from hwq import api
    from hwq.quant.reference import quantize_input

    make, bits, _, relu = truenorth_case(1)
    program = get_target("truenorth").compile(make(bits, 2), relu=relu, fidelity_samples=0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (300, program.net.n_features))
    y = rng.integers(0, 3, 300)
    heard = []
    ev = api.evaluate(program, x, y, progress=heard.append)
    assert sum(heard) == 300 and len(heard) >= 2, heard
    np.testing.assert_array_equal(ev.scores, program.forward(quantize_input(program.net.input, x)))
    heard.clear()
    api.check_fidelity(program, quantize_input(program.net.input, x), "test inputs", progress=heard.append)
    assert sum(heard) == 300 and program.report["fidelity"]["inputs"] == 300
