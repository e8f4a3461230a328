"""Reports: figures, Markdown and key numbers from a sweep; stalled cells never averaged."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hwq.study.report import blocks, critical_table, key_numbers, write_report
from hwq.sweep.executors import SerialExecutor
from hwq.sweep.run import run_sweep
from hwq.sweep.spec import AttackSettings, SweepSpec, TrainSettings
from hwq.sweep.store import CellRecord, SweepFile, read_sweep

EPS = tuple(np.round(np.arange(21) * 0.025, 6).tolist())
SPEC = SweepSpec(data=("spiral",), bits=(1, 2, 6), seeds=(0, 1),
                 train=TrainSettings(epochs=60, patience=20), attack=AttackSettings(EPS))


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "s.h5"
    with SerialExecutor() as ex:
        run_sweep(SPEC, path, ex, command="hwq sweep (test)")
    return path


def test_report_writes_figures_markdown_and_numbers(sweep_file, tmp_path):
    out = write_report(sweep_file, tmp_path / "rep")
    names = sorted(Path(p).name for p in out["figures"])
    assert names == ["fig2_simplex_distances.png", "fig6_spiral_accuracy_vs_bits.png",
                     "fig7_spiral_relu_relative_accuracy.png",
                     "fig7_spiral_sigmoid_relative_accuracy.png",
                     "fig7_spiral_step_relative_accuracy.png"]
    for p in out["figures"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = Path(out["report"]).read_text()
    for heading in ("## Settings", "## Critical attack strength", "### Clean accuracy",
                    "## Stalled cells", "## Fig. 2 check", "## Time per phase", "## Figures"):
        assert heading in md
    assert "uniform" in md and "hwq sweep (test)" in md
    crit = out["critical"]["spiral"]["sim"]
    assert set(crit) == {"step", "sigmoid", "relu"}
    assert set(crit["relu"]) == {"min-variance", "slope-crossing"}
    assert set(out["clean_accuracy"]["spiral"]["sim"]["relu"]) == {"1", "2", "6"}
    assert isinstance(out["stalled"], list) and out["cells"] == 18 and out["complete"]


def _fake(stalled_value: float) -> SweepFile:
    """Two bit widths x three seeds of one activation; seed 2 at 2 bits is stalled."""
    spec = SweepSpec(data=("spiral",), activations=("relu",), bits=(1, 2), seeds=(0, 1, 2),
                     attack=AttackSettings((0.0, 0.1, 0.2)))
    cells = []
    for q in (1, 2):
        for s in (0, 1, 2):
            stalled = (q, s) == (2, 2)
            acc = np.full(3, stalled_value) if stalled else np.array([0.9, 0.6, 0.3]) + 0.01 * q
            attrs = {"data": "spiral", "target": "sim", "activation": "relu", "bits": q,
                     "seed": s, "clean_accuracy": acc[0], "stalled": stalled,
                     "at_chance": stalled, "chance": 0.5}
            cells.append(CellRecord(f"spiral__relu__q0{q}__s{s}__sim", attrs, acc, {}, {}))
    data = {"spiral": {"label": "spiral", "n_features": 2, "chance": 0.5}}
    return SweepFile(Path("fake.h5"), {"n_planned": 6}, spec, np.array(spec.attack.epsilons),
                     data, cells)


def test_stalled_cells_are_left_out_of_means():
    a, b = (blocks(_fake(v))[0] for v in (0.5, 0.0))
    np.testing.assert_allclose(a.mean()[0, 1], [0.92, 0.62, 0.32])
    np.testing.assert_array_equal(a.mean(), b.mean())  # whatever the stalled cell holds
    assert a.usable.sum() == 5 and a.stalled.sum() == 1
    assert key_numbers(_fake(0.5))["stalled"] == ["spiral__relu__q02__s2__sim"]


def test_bit_widths_with_only_stalled_seeds_have_no_mean():
    sw = _fake(0.5)
    sw = replace(sw, cells=[replace(c, attrs={**c.attrs, "stalled": c.attrs["bits"] == 2})
                            for c in sw.cells])
    blk = blocks(sw)[0]
    assert np.isnan(blk.mean()[0, 1]).all()
    entry = critical_table(blk)["relu"]
    assert entry["bits_used"] == [1] and entry["min-variance"] is None
    assert key_numbers(sw)["clean_accuracy"]["spiral"]["sim"]["relu"]["2"] is None


def test_partial_sweeps_can_be_reported(sweep_file, tmp_path):
    sw = read_sweep(sweep_file)
    assert blocks(sw)[0].present.all()
    assert key_numbers(sw)["planned"] == 18


def _two_targets(refused_value: float) -> SweepFile:
    """sim and truenorth on one activation, 2 bit widths x 2 seeds; truenorth refuses 2 bits
    (its accuracy arrays hold ``refused_value``, which must never count)."""
    spec = SweepSpec(data=("spiral",), activations=("relu",), bits=(1, 2), seeds=(0, 1),
                     targets=("sim", "truenorth:relu=rate"), attack=AttackSettings((0.0, 0.1, 0.2)))
    cells = []
    for target in spec.targets:
        for q in (1, 2):
            for s in (0, 1):
                refused = target != "sim" and q == 2
                acc = np.full(3, refused_value) if refused else np.array([0.9, 0.6, 0.3]) - 0.1 * s
                attrs = {"data": "spiral", "target": target, "activation": "relu", "bits": q,
                         "seed": s, "clean_accuracy": acc[0], "stalled": False, "at_chance": False,
                         "chance": 0.5}
                if refused:
                    attrs["refused"] = "layer 1: too big | try relu=rate"
                else:
                    attrs["fidelity"] = 1.0 if target == "sim" else 0.75 + 0.25 * s
                key = f"spiral__relu__q0{q}__s{s}__{target.replace(':', '@')}"
                cells.append(CellRecord(key, attrs, acc, {}, {}))
    data = {"spiral": {"label": "spiral", "n_features": 2, "chance": 0.5}}
    return SweepFile(Path("fake.h5"), {"n_planned": 8}, spec, np.array(spec.attack.epsilons),
                     data, cells)


def test_refused_cells_are_left_out_and_targets_compared(tmp_path):
    a, b = (blocks(_two_targets(v)) for v in (0.0, 1.0))
    tn = a[1]
    assert tn.target == "truenorth:relu=rate" and tn.refused[0, 1].all() and not tn.usable[0, 1].any()
    np.testing.assert_allclose(tn.mean()[0, 0], [0.85, 0.55, 0.25])
    assert np.isnan(tn.mean()[0, 1]).all()
    np.testing.assert_array_equal(b[1].mean(), tn.mean())  # whatever the refused cells hold
    numbers = key_numbers(_two_targets(0.0), a)
    assert numbers["fidelity"]["spiral"]["truenorth:relu=rate"]["relu"] == {"1": 0.875, "2": None}
    assert numbers["fidelity"]["spiral"]["sim"]["relu"] == {"1": 1.0, "2": 1.0}
    assert sorted(numbers["refused"]) == ["spiral__relu__q02__s0__truenorth@relu=rate",
                                          "spiral__relu__q02__s1__truenorth@relu=rate"]
    from hwq.study.report import _clean_md, _refused_md, _targets_md, target_figures

    figures = target_figures(a, tmp_path)
    assert [p.name for p in figures] == ["targets_spiral_relu_accuracy_vs_eps.png"]
    md = "\n".join(_targets_md(a, figures, tmp_path) + _refused_md(_two_targets(0.0)) + _clean_md(tn))
    assert "| relu | 1 | 1.000 | 0.875 |" in md and "| relu | 2 | 1.000 | refused |" in md
    assert "too big \\| try relu=rate" in md and "](targets_spiral_relu_accuracy_vs_eps.png)" in md
    assert "| 2 | –, 2 refused |" in md
