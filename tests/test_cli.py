"""The command line: the happy path once, and every kind of bad input as one line + exit code."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from builders import random_mlp, save, torch_style_mlp
from cli_runner import run_cli

from hwq.cli import main

RNG = np.random.default_rng(5)


hwq = run_cli


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    onnx_path = save(random_mlp(RNG, 64, 16, 10, "Relu", scale=0.3), d / "m.onnx")
    main_args = ["compile", onnx_path, "--bits", "4", "--calib", "digits", "-o", d / "m.hwq"]
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in main_args])
    assert info.value.code == 0
    return d


def test_compile_run_attack_json(digits_model, capsys):
    d = digits_model
    code, out, _ = hwq("run", d / "m.hwq", "--data", "digits", "--limit", "50", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["n_inputs"] == 50
    code, out, _ = hwq("attack", d / "m.hwq", "--data", "digits", "--eps", "0:0.2:0.05", "--limit", "40",
                       "-o", d / "r.h5", "--json", capsys=capsys)
    res = json.loads(out)
    assert code == 0 and len(res["eps"]) == 5 and len(res["accuracy"]) == 5
    assert {"clean_accuracy", "relative_accuracy", "target", "bits", "zero_gradient"} <= set(res)
    code, out, _ = hwq("info", d / "r.h5", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["n_epsilons"] == 5
    code, out, _ = hwq("info", d / "m.hwq", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["target"] == "sim"


def check_bad(capsys, args, out_file=None, codes=(1, 2)):
    code, _, err = hwq(*args, capsys=capsys)
    assert code in codes, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwq: error:"), err
    assert "Traceback" not in err
    if out_file is not None:
        assert not out_file.exists()
        assert not list(out_file.parent.glob(f".{out_file.name}.tmp*"))
    return lines[0]


def test_not_onnx(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    check_bad(capsys, ["compile", bad, "--bits", "4", "-o", tmp_path / "o.hwq"], tmp_path / "o.hwq")


def test_truncated_onnx(tmp_path, capsys):
    data = random_mlp(RNG, 8, 4, 3).SerializeToString()
    bad = tmp_path / "t.onnx"
    bad.write_bytes(data[:-40])
    check_bad(capsys, ["compile", bad, "--bits", "4", "-o", tmp_path / "o.hwq"], tmp_path / "o.hwq")


def test_unsupported_op(tmp_path, capsys):
    from builders import make_model
    from onnx import helper

    node = helper.make_node("Tanh", ["input"], ["scores"], name="t1")
    path = save(make_model([node], {}, 4), tmp_path / "u.onnx")
    line = check_bad(capsys, ["compile", path, "--bits", "4", "-o", tmp_path / "o.hwq"], tmp_path / "o.hwq")
    assert "Tanh" in line and "t1" in line


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_weights(tmp_path, capsys, bad_value):
    w1 = RNG.normal(size=(4, 3))
    w1[0, 0] = bad_value
    path = save(torch_style_mlp(w1, np.zeros(4), RNG.normal(size=(2, 4)), np.zeros(2)), tmp_path / "n.onnx")
    check_bad(capsys, ["compile", path, "--bits", "4", "-o", tmp_path / "o.hwq"], tmp_path / "o.hwq")


@pytest.mark.parametrize("bits", ["0", "17", "-3"])
def test_bits_out_of_range(tmp_path, capsys, bits):
    path = save(random_mlp(RNG, 8, 4, 3), tmp_path / "m.onnx")
    check_bad(capsys, ["compile", path, "--bits", bits, "-o", tmp_path / "o.hwq"], tmp_path / "o.hwq")


@pytest.mark.parametrize("eps", ["-0.1", "0:0.5", "x", "0:1:-0.1"])
def test_bad_eps(digits_model, capsys, eps):
    out = digits_model / "e.h5"
    check_bad(capsys, ["attack", digits_model / "m.hwq", "--data", "digits", "--eps", eps, "-o", out], out)


def test_unknown_target(digits_model, capsys):
    line = check_bad(capsys, ["attack", digits_model / "m.hwq", "--data", "digits", "--target", "tpu"])
    assert "unknown target" in line and "sim" in line


def test_data_shape_mismatch(digits_model, capsys):
    out = digits_model / "s.h5"
    check_bad(capsys, ["attack", digits_model / "m.hwq", "--data", "spiral", "-o", out], out)


def test_missing_and_corrupt_data_directory(digits_model, tmp_path, capsys):
    check_bad(capsys, ["run", digits_model / "m.hwq", "--data", f"mnist:{tmp_path / 'nope'}"])
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    check_bad(capsys, ["run", digits_model / "m.hwq", "--data", f"mnist:{tmp_path}"])


def test_corrupt_hwq_and_results(tmp_path, digits_model, capsys):
    bad = tmp_path / "c.hwq"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    check_bad(capsys, ["run", bad, "--data", "digits"])
    good = (digits_model / "m.hwq").read_bytes()
    half = tmp_path / "h.hwq"
    half.write_bytes(good[: len(good) // 2])
    check_bad(capsys, ["run", half, "--data", "digits"])
    check_bad(capsys, ["info", half])
    res = tmp_path / "r.h5"
    res.write_bytes(b"not hdf5")
    check_bad(capsys, ["info", res])


def test_missing_required_option(capsys):
    check_bad(capsys, ["attack"])


def test_no_traceback_in_a_real_process(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("nope")
    proc = subprocess.run([sys.executable, "-m", "hwq", "compile", str(bad), "--bits", "4"],
                          capture_output=True, text=True)
    assert proc.returncode in (1, 2)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_help_lists_commands(capsys):
    code, out, _ = hwq("--help", capsys=capsys)
    assert code == 0
    for command in ("train", "compile", "run", "attack", "export", "info"):
        assert command in out
