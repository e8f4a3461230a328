"""The second-wave contracts at the command line: generic target options (validated by the
target, stored in the .hwq file), per-input run files, the quantization table in ``hwq info``,
attack names in results files (and version-1 files still read)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from builders import random_mlp, save
from cli_runner import run_cli

from hwq.cli import main
from hwq.files import results
from hwq.files.program import read_stored
from hwq.quant import reference

RNG = np.random.default_rng(11)


hwq = run_cli


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("contracts")
    onnx_path = save(random_mlp(RNG, 64, 12, 10, "Relu", scale=0.3), d / "m.onnx")
    with pytest.raises(SystemExit) as info:
        main(["compile", onnx_path, "--bits", "4", "--calib", "digits", "-o", str(d / "m.hwq")])
    assert info.value.code == 0
    return d


def test_options_travel_to_the_file_and_back(model, capsys):
    out = model / "loihi.hwq"
    code, _, err = hwq("compile", model / "m.onnx", "--bits", "4", "--calib", "digits", "--target",
                       "loihi", "--option", "backend=emulator", "-o", out, capsys=capsys)
    assert code == 0, err
    assert read_stored(out).options == {"backend": "emulator"}
    code, _, err = hwq("compile", model / "m.onnx", "--bits", "4", "--calib", "digits", "--target",
                       "sim:vnni=false", "-o", model / "sim-novnni.hwq", capsys=capsys)
    assert code == 0, err
    assert read_stored(model / "sim-novnni.hwq").options == {"vnni": False}


@pytest.mark.parametrize("args, message", [
    (["--target", "sim", "--option", "backend=lava"], "unknown sim option 'backend'"),
    (["--target", "loihi", "--option", "backend=chip"], "backend=chip is not one of emulator, lava"),
    (["--target", "loihi", "--option", "backend"], "malformed option 'backend'"),
    (["--option", "vnni=true", "--target", "sim:vnni=maybe"], "vnni=maybe is not one of auto, true, false"),
    (["--target", "loihi", "--option", "shifts=3,x"], "bad value for loihi option shifts"),
])
def test_bad_options_are_one_line(model, capsys, args, message):
    out = model / "bad.hwq"
    code, _, err = hwq("compile", model / "m.onnx", "--bits", "4", "--calib", "digits", *args, "-o", out,
                       capsys=capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_run_writes_scores_and_decisions(model, capsys):
    out = model / "run.h5"
    code, stdout, err = hwq("run", model / "m.hwq", "--data", "digits", "--limit", "30", "-o", out,
                            "--json", "--predictions", capsys=capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    run = results.read_run(out)
    assert run["scores"].shape == (30, 10) and run["scores"].dtype == np.int64
    assert summary["predictions"] == run["predictions"].tolist()
    # The stored decisions are the reference's decisions on the stored scores.
    assert np.array_equal(run["predictions"], reference.decide(run["scores"], "argmax"))
    assert np.isclose(summary["accuracy"], run["correct"].mean())
    code, stdout, _ = hwq("info", out, "--json", capsys=capsys)
    assert json.loads(stdout)["kind"] == "run"


def test_info_shows_the_quantization_table(model, capsys):
    code, stdout, _ = hwq("info", model / "m.hwq", capsys=capsys)
    assert code == 0 and "max error" in stdout and "layer0.weight" in stdout.replace("fc1", "layer0")
    code, stdout, _ = hwq("info", model / "m.hwq", "--json", capsys=capsys)
    rows = json.loads(stdout)["quantization"]
    assert {"tensor", "format", "max_abs_error", "clipped", "on_grid"} <= set(rows[0])


def test_results_record_the_attack_and_old_files_still_read(model, capsys):
    out = model / "a.h5"
    code, _, err = hwq("attack", model / "m.hwq", "--data", "digits", "--limit", "20", "--eps", "0,0.1",
                       "--attack", "fgsm", "--norm", "l2", "-o", out, capsys=capsys)
    assert code == 0, err
    attrs = results.read_attack(out)["attrs"]
    assert attrs["attack"] == "fgsm" and json.loads(attrs["attack_params"]) == {"norm": "l2"}
    with h5py.File(out, "r+") as f:  # what a version-1 file looked like
        f.attrs["version"] = 1
        del f.attrs["attack"], f.attrs["attack_params"]
    attrs = results.read_attack(out)["attrs"]
    assert attrs["attack"] == "fgsm" and json.loads(attrs["attack_params"]) == {"norm": "l2"}
    with h5py.File(out, "r+") as f:
        f.attrs["version"] = 9
    code, _, err = hwq("info", out, capsys=capsys)
    assert code == 1 and "version 9 is not supported" in err


def test_unknown_attack_is_one_line(model, capsys):
    code, _, err = hwq("attack", model / "m.hwq", "--data", "digits", "--attack", "nope", capsys=capsys)
    assert code == 2 and "unknown attack 'nope'" in err
