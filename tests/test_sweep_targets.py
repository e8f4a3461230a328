"""Sweeps across targets: a mixed grid where a target refuses some networks (the cells are
recorded as refused, never averaged, listed by ``hwq info`` and the report), target specs with
options as sweep targets, and the report's figures and fidelity table comparing the targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli

from hwq.cli import main
from hwq.errors import UsageError
from hwq.study.report import blocks
from hwq.sweep.spec import AttackSettings, SweepSpec, cell_key, split_targets
from hwq.sweep.store import read_sweep

pytest.importorskip("hwq_targets.loihi")
pytest.importorskip("hwq_targets.truenorth")

TN = "truenorth:relu=rate"
# 2-bit inputs keep the truenorth rate code short; 16-bit ReLU activations are too large for
# one truenorth emitter at 2-bit weights, so truenorth refuses that ReLU cell (the 1-bit one now
# maps, rate-coded: the fan-in mapper of issue 21) and maps the step ones exactly.
ARGS = ["--data", "digits", "--activations", "step,relu", "--bits", "1:2", "--seeds", "1",
        "--targets", f"sim,loihi,{TN}", "--eps", "0:0.2:0.05", "--limit", "60",
        "--epochs", "40", "--patience", "40", "--hidden", "16", "--input-bits", "2",
        "--workers", "1", "--no-diagnostics"]


def hwq(capsys, *args):
    return run_cli(*args, capsys=capsys)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    path = tmp_path_factory.mktemp("targets") / "mixed.h5"
    with pytest.raises(SystemExit) as info:
        main(["sweep", *ARGS, "-o", str(path), "--json"])
    assert info.value.code == 0
    return path


def test_refused_cells_are_recorded_not_fatal(mixed):
    sw = read_sweep(mixed)
    assert len(sw.cells) == 12 and sw.attrs["complete"]
    refused = {c.key: c for c in sw.cells if c.attrs.get("refused")}
    assert set(refused) == {cell_key("digits", "relu", 2, 0, TN)}
    for c in refused.values():
        assert "\n" not in c.attrs["refused"] and "fits" in c.attrs["refused"]
        assert np.isnan(c.accuracy).all() and not c.attrs["stalled"]
    ran = [c for c in sw.cells if c.key not in refused]
    assert all(np.isfinite(c.accuracy).all() for c in ran)
    # sim equals the reference by construction; the exact truenorth and loihi mappings too
    assert all(c.attrs["fidelity"] == 1.0 for c in ran
               if c.attrs["target"] == "sim" or (c.attrs["target"] == TN and c.attrs["activation"] == "step"))
    step = {c.attrs["target"]: c for c in ran if c.attrs["activation"] == "step" and c.attrs["bits"] == 2}
    np.testing.assert_array_equal(step["sim"].accuracy, step[TN].accuracy)  # exact mapping
    blk = {b.target: b for b in blocks(sw)}[TN]
    relu, q2 = list(blk.activations).index("relu"), list(blk.bits).index(2)
    assert blk.refused[relu, q2].all() and not blk.usable[relu, q2].any() and np.isnan(blk.mean()[relu, q2]).all()
    assert not blk.refused[relu, 1 - q2].any()


def test_info_and_report_list_refusals_and_compare_targets(mixed, tmp_path, capsys):
    code, out, _ = hwq(capsys, "info", mixed, "--json")
    assert code == 0
    info = json.loads(out)
    assert sorted(info["refused"]) == [cell_key("digits", "relu", 2, 0, TN)]
    assert info["targets"] == ["sim", "loihi", TN]
    code, out, _ = hwq(capsys, "report", mixed, "-o", tmp_path / "rep", "--no-fig2", "--json")
    assert code == 0
    rep = json.loads(out)
    names = {Path(p).name for p in rep["figures"]}
    assert {"targets_digits_step_accuracy_vs_eps.png", "targets_digits_relu_accuracy_vs_eps.png"} <= names
    for p in rep["figures"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    relu_fidelity = rep["fidelity"]["digits"][TN]["relu"]
    assert relu_fidelity["2"] is None and relu_fidelity["1"] is not None  # 2 bits refused; 1 bit rate-coded
    assert rep["fidelity"]["digits"][TN]["step"] == {"1": 1.0, "2": 1.0}
    assert set(rep["refused"]) == set(info["refused"])
    md = Path(rep["report"]).read_text()
    assert "## Targets compared" in md and "## Refused cells" in md
    assert "| relu | 2 | 1.000 | " in md and "| refused |" in md
    reasons = [c.attrs["refused"] for c in read_sweep(mixed).cells if c.attrs.get("refused")]
    assert len(reasons) == 1 and reasons[0][:40] in md  # the refusal's own line, in the report


def test_rerun_changes_nothing_and_refusals_resume(mixed, tmp_path, capsys):
    """Refused cells are journaled like others: a rerun of the finished sweep runs nothing."""
    before = read_sweep(mixed)
    code, out, _ = hwq(capsys, "sweep", *ARGS, "-o", mixed, "--json")
    assert code == 0 and json.loads(out)["ran"] == 0
    assert len(read_sweep(mixed).cells) == len(before.cells)


def test_target_specs_split_and_check():
    known = ["sim", "loihi", "truenorth"]
    assert split_targets("sim,truenorth:relu=rate,encoding=binary,loihi", known) == (
        "sim", "truenorth:relu=rate,encoding=binary", "loihi")
    assert split_targets("loihi:shifts=3,auto,sim", known) == ("loihi:shifts=3,auto", "sim")
    assert cell_key("d", "relu", 2, 0, TN) == "d__relu__q02__s0__truenorth@relu=rate"
    with pytest.raises(UsageError, match="sweep target"):
        SweepSpec(data=("digits",), targets=("truenorth:x=a/b",), attack=AttackSettings((0.0,)))


def test_bad_target_options_fail_before_any_file(tmp_path, capsys):
    out = tmp_path / "bad.h5"
    code, _, err = hwq(capsys, "sweep", "--data", "digits", "--targets", "sim,truenorth:relu=maybe",
                       "--bits", "1", "--seeds", "1", "--workers", "1", "-o", out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "relu=maybe" in lines[0], err
    assert not out.exists() and not (tmp_path / "bad.h5.cells").exists()


def test_compile_measures_fidelity_on_test_data_and_compare_prints_it(tmp_path, capsys):
    onnx, compiled = tmp_path / "m.onnx", tmp_path / "m.hwq"
    code, _, err = hwq(capsys, "train", "--data", "digits", "--activation", "step", "--bits", "2",
                       "--epochs", "5", "--hidden", "12", "-o", onnx)
    assert code == 0, err
    code, out, err = hwq(capsys, "compile", onnx, "--target", "truenorth", "--input-bits", "2",
                         "--calib", "digits", "-o", tmp_path / "text.hwq")
    assert code == 0 and "\nfidelity: 1.0000 (digits test split" in out, err
    code, out, err = hwq(capsys, "compile", onnx, "--target", "truenorth", "--input-bits", "2",
                         "--calib", "digits", "-o", compiled, "--json")
    assert code == 0, err
    fid = json.loads(out)["target_report"]["fidelity"]
    assert fid["source"].startswith("digits test split") and fid["inputs"] > 100 and fid["value"] == 1.0
    code, out, err = hwq(capsys, "compare", compiled, "--data", "digits", "--targets", "sim,truenorth",
                         "--json")
    assert code == 0, err
    cmp = json.loads(out)
    assert cmp["fidelity"] == 1.0 - cmp["decisions_differ_fraction"] and cmp["inputs"] > 100
    code, out, _ = hwq(capsys, "compile", onnx, "--target", "sim", "--input-bits", "2", "--calib", "digits",
                       "-o", tmp_path / "s.hwq")
    assert code == 0 and "\nfidelity: " not in out  # sim cannot measure it: nothing is claimed
