"""Calibration: `hwq compile --calib D` and `hwq.quantize(graph, q, calibration=data.x_train,
bounds=data.bounds)` build the same integer network; the default (uniform noise) is visible in
--help, in the report, as a warning and in the .hwq file; --calib takes --data's specs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from builders import random_mlp, save
from cli_runner import run_cli

import hwq
from hwq.files import program as hwqfile
from hwq.quant.reference import quantize_input

RNG = np.random.default_rng(21)


def run(args, capsys):
    return run_cli(*args, capsys=capsys)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    return save(random_mlp(RNG, 64, 16, 10, "Relu", scale=0.3), d / "m.onnx")


def assert_same_network(a, b):
    assert a.input == b.input and a.output == b.output
    assert dataclasses.replace(a.settings, calibration="") == dataclasses.replace(b.settings, calibration="")
    assert len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        for name in ("weight", "bias", "weight_scale", "lut"):
            u, v = getattr(x, name), getattr(y, name)
            assert (u is None) == (v is None) and (u is None or np.array_equal(u, v)), name
        assert (x.requant is None) == (y.requant is None)
        if x.requant is not None:
            np.testing.assert_array_equal(x.requant.multiplier, y.requant.multiplier)
            np.testing.assert_array_equal(x.requant.shift, y.requant.shift)
        assert (x.in_scale, x.gain, x.activation, x.act_bits, x.out_scale, x.in_max) == \
            (y.in_scale, y.gain, y.activation, y.act_bits, y.out_scale, y.in_max)


def test_cli_and_api_build_the_same_network(model, tmp_path, capsys):
    out = tmp_path / "cli.hwq"
    code, stdout, _ = run(["compile", model, "--bits", "4", "--calib", "digits", "-o", out], capsys)
    assert code == 0
    cli = hwqfile.read_stored(out).net
    data = hwq.load_dataset("digits")  # the README's snippet
    api = hwq.quantize(hwq.load_onnx(model), 4, calibration=data.x_train, bounds=data.bounds)
    assert_same_network(cli, api)
    # the same calibration data on both sides: the digest the settings record agrees
    assert cli.settings.calibration.endswith(api.settings.calibration)
    n = len(data.x_train)  # one policy (hwq.api.calibration_rows): the first 5000 training rows
    assert cli.settings.calibration.startswith(f"digits training split, first {n} of {n} rows (--calib)")
    assert f"{len(data.x_train)} samples" in api.settings.calibration
    assert "calibration: digits training split" in stdout
    x_q = quantize_input(api.input, data.x_test)
    np.testing.assert_array_equal(hwq.load_program(out).forward(x_q), hwq.compile(api).forward(x_q))


def test_other_calibration_data_gives_another_network(model, tmp_path, capsys):
    """The comparison above can fail: calibrating on other data changes the ReLU scales."""
    data = hwq.load_dataset("digits")
    graph = hwq.load_onnx(model)
    a = hwq.quantize(graph, 4, calibration=data.x_train, bounds=data.bounds)
    b = hwq.quantize(graph, 4, calibration=data.x_train[:50], bounds=data.bounds)
    with pytest.raises(AssertionError):
        assert_same_network(a, b)
    assert a.settings.calibration != b.settings.calibration


def test_default_is_visible(model, tmp_path, capsys):
    out = tmp_path / "noise.hwq"
    code, stdout, err = run(["compile", model, "--bits", "4", "-o", out], capsys)
    assert code == 0
    assert "warning: activations calibrated on uniform noise" in err
    assert "calibration: uniform noise in [0, 1], seed 0" in stdout
    stored = hwqfile.read_stored(out).net.settings.calibration
    assert stored.startswith("uniform noise in [0, 1], seed 0") and "1000 samples, sha256" in stored
    code, stdout, _ = run(["info", out, "--json"], capsys)
    assert json.loads(stdout)["settings"]["calibration"] == stored
    code, stdout, _ = run(["compile", model, "--bits", "4", "-o", out, "--json"], capsys)
    assert json.loads(stdout)["calibration"] == stored


def test_help_names_the_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, stdout, _ = run(["compile", "--help"], capsys)
    text = " ".join(w for w in stdout.split() if w != "│")  # rich's box borders cut wrapped lines
    assert "same specs as --data" in text and "uniform samples in [0, 1]" in text


def test_calib_takes_data_specs(tmp_path, capsys):
    """--calib reads what --data reads: a built-in name and an .npz file; a wrong width or a
    missing file is one line."""
    two = save(random_mlp(RNG, 2, 8, 2, "Relu"), tmp_path / "two.onnx")
    x = RNG.uniform(-1, 1, (300, 2))
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    for spec in ("spiral", tmp_path / "d.npz"):
        code, stdout, err = run(["compile", two, "--bits", "4", "--calib", spec, "-o", tmp_path / "t.hwq"], capsys)
        assert code == 0, err
        assert f"calibration: {spec} training split, first " in stdout and " rows (--calib)" in stdout
    data = hwq.load_dataset(str(tmp_path / "d.npz"))
    api = hwq.quantize(hwq.load_onnx(two), 4, calibration=data.x_train, bounds=data.bounds)
    assert_same_network(hwqfile.read_stored(tmp_path / "t.hwq").net, api)
    for spec, message in (("digits", "has 64 features, the model expects 2"), (tmp_path / "none.npz", "")):
        code, _, err = run(["compile", two, "--bits", "4", "--calib", spec, "-o", tmp_path / "u.hwq"], capsys)
        lines = err.strip().splitlines()
        assert code in (1, 2) and len(lines) == 1 and lines[0].startswith("hwq: error:") and message in lines[0]
