"""Each figure function writes one non-empty PNG atomically and leaves nothing else behind."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from hwq.errors import UsageError
from hwq.study import plots
from hwq.study.analysis import critical as cr
from hwq.study.analysis import montecarlo as mc

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BITS = np.arange(1, 11)
EPS = np.round(np.arange(101) * 0.005, 3)
ACTS = ["step", "sigmoid", "relu"]


def sweep(rng):
    base = 0.9 * np.clip(1 - EPS / 0.2, 0, 1)
    acc = base + np.outer(BITS - BITS.mean(), 0.05 * (0.01 - EPS))
    return np.clip(acc + 0.01 * rng.standard_normal((len(ACTS), *acc.shape)), 0, 1)


def assert_only_png(folder, name):
    assert [p.name for p in folder.iterdir()] == [name]
    data = (folder / name).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_simplex_histograms(tmp_path):
    rng = np.random.default_rng(0)
    samples = {(q, n): mc.simulate(q, n, 5000, rng) for q, n in [(2, 2), (3, 4), (1, 5)]}
    fig = plots.plot_simplex_histograms(samples, tmp_path / "fig2.png")
    assert isinstance(fig, Figure)
    assert_only_png(tmp_path, "fig2.png")


def test_accuracy_vs_bits(tmp_path):
    acc = sweep(np.random.default_rng(1))
    crit = {
        "step": 0.01,
        "sigmoid": cr.slope_crossing_strength(acc[1], BITS, EPS),
        "relu": None,
    }
    plots.plot_accuracy_vs_bits(
        BITS, EPS, acc, 0.02 * np.ones_like(acc), ACTS, crit, tmp_path / "fig3.png", "MNIST"
    )
    assert_only_png(tmp_path, "fig3.png")
    plots.plot_accuracy_vs_bits(BITS, EPS, acc, None, ACTS, {}, tmp_path / "fig3.png")
    assert_only_png(tmp_path, "fig3.png")  # overwritten in place
    with pytest.raises(UsageError):
        plots.plot_accuracy_vs_bits(BITS, EPS, acc[:2], None, ACTS, {}, tmp_path / "x.png")


@pytest.mark.parametrize("bound", ["model", "callable", "array"])
def test_relative_accuracy(tmp_path, bound):
    acc = sweep(np.random.default_rng(2))[0]
    rel = cr.relative_accuracy(acc, acc[:, :1])
    if bound == "model":
        b = None
    elif bound == "callable":
        b = lambda e, q: np.clip(1 - e * q, 0, 1)  # noqa: E731
    else:
        b = np.clip(1 - np.outer(BITS, EPS), 0, 1)
    scale = "log" if bound == "model" else "linear"
    path = tmp_path / "fig4.png"
    plots.plot_relative_accuracy(EPS, rel, BITS, b, path, "MNIST", 784, xscale=scale)
    assert_only_png(tmp_path, "fig4.png")


def test_accuracy_vs_eps(tmp_path):
    acc = np.stack([1 - EPS, 1 - 2 * EPS])
    plots.plot_accuracy_vs_eps(EPS, acc, ["float", "4 bits"], tmp_path / "attack.png")
    assert_only_png(tmp_path, "attack.png")
    with pytest.raises(UsageError):
        plots.plot_accuracy_vs_eps(EPS, acc, ["one label"], tmp_path / "bad.png")
    assert_only_png(tmp_path, "attack.png")


def test_failed_save_leaves_no_temporary(tmp_path, monkeypatch):
    def broken(self, fname, **kw):
        with open(fname, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError):
        plots.plot_accuracy_vs_eps(EPS, 1 - EPS, ["a"], tmp_path / "attack.png")
    assert list(tmp_path.iterdir()) == []


def test_no_path_returns_figure_without_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(plots.plot_accuracy_vs_eps(EPS, 1 - EPS, ["a"], None), Figure)
    assert list(tmp_path.iterdir()) == []


def test_targets_vs_eps_one_panel_per_bit_width_one_line_per_target(tmp_path):
    acc = sweep(np.random.default_rng(4))[:, :3]  # 3 "targets" x 3 bit widths x eps
    acc[2, 1] = np.nan  # target 2 refused at the second bit width
    notes = [["", "", ""], ["", "", "stalled"], ["", "refused", ""]]
    fig = plots.plot_targets_vs_eps(EPS, acc, 0.01 * np.ones_like(acc), BITS[:3],
                                    ["sim", "loihi", "truenorth:relu=rate"], tmp_path / "t.png",
                                    title="digits — relu", notes=notes)
    assert_only_png(tmp_path, "t.png")
    assert len(fig.axes) == 3 and fig.axes[1].get_title() == "digits — relu — 2 bits"
    drawn = [[ln.get_label() for ln in ax.lines if ln.get_xdata().size] for ax in fig.axes]
    assert drawn == [["sim", "loihi", "truenorth:relu=rate"], ["sim", "loihi"], ["sim", "truenorth:relu=rate"]]
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "truenorth:relu=rate: refused" in legend
    with pytest.raises(UsageError, match="acc_mean"):
        plots.plot_targets_vs_eps(EPS, acc[:2], None, BITS[:3], ["a", "b", "c"], tmp_path / "x.png")
