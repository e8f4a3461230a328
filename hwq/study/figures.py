"""The report's figures (drawn by ``hwq.study.plots``), each with a caption that says what is
plotted and how to read it (:func:`caption`; the Markdown and HTML reports print it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwq.study.arrange import Block, attack_arrays, by_data, critical_table, pick_eps, target_curves
from hwq.sweep.spec import target_token
from hwq.sweep.store import SweepFile

FIG2_CASES = ((2, 2), (3, 4), (1, 5))  # (q, n) of the paper's Fig. 2


FIG2_SAMPLES = 200_000


def _fig_numbers(block: Block) -> tuple[int, int]:
    """The paper's numbering: spirals (2-D) are Figs. 6/7, MNIST-like data Figs. 3/4."""
    return (6, 7) if block.info["n_features"] <= 3 else (3, 4)


def _stem(block: Block, multi_target: bool) -> str:
    return block.data + (f"_{target_token(block.target)}" if multi_target else "")


def _mark_stalled(fig, block: Block) -> None:
    """Under each panel: how many seeds of each bit width were left out as stalled."""
    for a, ax in enumerate(fig.axes[: len(block.activations)]):
        for i, q in enumerate(block.bits):
            n = int(block.stalled[a, i].sum())
            if n:
                ax.annotate(f"{n}✕", (q, 0.0), xytext=(0, 2), textcoords="offset points",
                            ha="center", fontsize=7, color="red")
        if block.stalled[a].any():
            ax.text(0.99, 0.99, "n✕: n stalled seeds left out", transform=ax.transAxes,
                    ha="right", va="top", fontsize=7, color="red")


def figure_fig2(folder: Path, seed: int = 0) -> tuple[Path, list[dict]]:
    """Fig. 2: Monte Carlo nearest-face distances vs the model density, with KS tests."""
    from hwq.study import plots
    from hwq.study.analysis import geometry, montecarlo

    rng = np.random.default_rng(seed)
    samples = {(q, n): montecarlo.simulate(q, n, FIG2_SAMPLES, rng) for q, n in FIG2_CASES}
    path = folder / "fig2_simplex_distances.png"
    plots.plot_simplex_histograms(samples, path)
    checks = []
    for (q, n), d in samples.items():
        h = float(geometry.inradius(geometry.edge_length(q, n), n))
        ks = montecarlo.ks_test_model(d, h, n)
        checks.append({"q": q, "n": n, "mean_mc": float(d.mean()), "mean_model": h / (n + 1),
                       "ks_statistic": ks.statistic, "ks_pvalue": ks.pvalue})
    return path, checks


def block_figures(block: Block, folder: Path, multi_target: bool) -> list[Path]:
    """Figs. 3/6 (accuracy vs bits) and 4/7 (relative accuracy, one per activation)."""
    from hwq.study import plots

    f_bits, f_rel = _fig_numbers(block)
    stem = _stem(block, multi_target)
    crit = {act: e["min-variance"] for act, e in critical_table(block).items()}
    fig = plots.plot_accuracy_vs_bits(block.bits, block.eps, block.mean(), block.std(),
                                      block.activations, crit, None, title=block.data)
    _mark_stalled(fig, block)
    paths = [folder / f"fig{f_bits}_{stem}_accuracy_vs_bits.png"]
    plots.save_png(fig, paths[0])
    rel = block.mean(block.relative())
    n = int(block.info["n_features"])
    scales = ("linear",) if f_rel == 7 else ("linear", "log")
    for a, act in enumerate(block.activations):
        if not block.ran[a].any():  # every cell refused: nothing to draw
            continue
        for scale in scales:
            suffix = "" if scale == "linear" else "_log"
            path = folder / f"fig{f_rel}_{stem}_{act}_relative_accuracy{suffix}.png"
            plots.plot_relative_accuracy(block.eps, rel[a], block.bits, None, path,
                                         title=f"{block.data} — {act}", n_features=n,
                                         xscale=scale)
            paths.append(path)
    return paths


def target_figures(blks: list[Block], folder: Path) -> list[Path]:
    """Targets compared on the same models: per data set and activation, accuracy vs strength,
    one panel per bit width, one line per target (``targets_<data>_<activation>_accuracy_vs_eps``)."""
    from hwq.study.plots import plot_targets_vs_eps

    paths = []
    for data, group in by_data(blks).items():
        for a, act in enumerate(group[0].activations):
            if not any(b.ran[a].any() for b in group):
                continue
            mean, std, notes = target_curves(group, a)
            path = folder / f"targets_{data}_{act}_accuracy_vs_eps.png"
            plot_targets_vs_eps(group[0].eps, mean, std, group[0].bits, [b.target for b in group],
                                path, title=f"{data} — {act}", notes=notes)
            paths.append(path)
    return paths


def model_figures(blks: list[Block], folder: Path) -> list[Path]:
    """Models compared (sweeps of given models): per data set and target, accuracy vs strength,
    one line per model and bit width that has a usable seed (``models_<data>_<target>_accuracy_vs_eps``)."""
    from hwq.study.plots import plot_accuracy_vs_eps

    paths = []
    for b in blks:
        mean = b.mean()
        curves = [(f"{name} q{int(q)}", mean[a, i]) for a, name in enumerate(b.activations)
                  for i, q in enumerate(b.bits) if np.isfinite(mean[a, i]).all()]
        if not curves:
            continue
        path = folder / f"models_{b.data}_{target_token(b.target)}_accuracy_vs_eps.png"
        plot_accuracy_vs_eps(b.eps, np.stack([c for _, c in curves]), [n for n, _ in curves], path,
                             title=f"{b.data} on {b.target}: models compared")
        paths.append(path)
    return paths


def model_bits_figures(sw: SweepFile, blks: list[Block], folder: Path) -> list[Path]:
    """Given models against weight bits (``models_<data>_<target>_accuracy_vs_bits``): the QAT
    files of each width averaged into one line (each file is one model at its grids' bits), and
    one line per float model quantized post-training at every width; a panel per strength of
    ``pick_eps`` (mean over usable attack seeds). Drawn where some line has two widths."""
    from hwq.study.plots import plot_models_vs_bits

    kinds = {m.name: m.quantization for m in sw.spec.models}
    paths = []
    for b in blks:
        picks = pick_eps(b.eps)
        mean = b.mean()[..., picks]  # (models, bits, picks)
        labels, curves = [], []
        qat = [a for a, name in enumerate(b.activations) if kinds.get(name) == "qat"]
        if qat:
            with np.errstate(invalid="ignore"):
                stack = mean[qat]
                counts = np.isfinite(stack).sum(axis=0)
                curve = np.where(counts > 0, np.nansum(stack, axis=0) / np.maximum(counts, 1), np.nan)
            labels.append(f"QAT files ({len(qat)}; mean per width)")
            curves.append(curve)
        for a, name in enumerate(b.activations):
            if kinds.get(name) == "ptq":
                labels.append(f"{name} (PTQ)")
                curves.append(mean[a])
        if not curves or max(int(np.isfinite(c[:, 0]).sum()) for c in curves) < 2:
            continue
        path = folder / f"models_{b.data}_{target_token(b.target)}_accuracy_vs_bits.png"
        plot_models_vs_bits(b.bits, np.stack(curves), labels, b.eps[picks], path,
                            title=f"{b.data} on {b.target}: accuracy vs weight bits")
        paths.append(path)
    return paths


def attack_figures(sw: SweepFile, block: Block, folder: Path, multi_target: bool) -> list[Path]:
    from hwq.study.plots import plot_attacks_vs_bits

    members = attack_arrays(sw, block)
    if not members:
        return []
    picks = pick_eps(block.eps)
    names = [*members, "worst case"]
    acc = np.stack([block.mean(members[n]) for n in members] + [block.mean()])[..., picks]
    path = folder / f"attacks_{_stem(block, multi_target)}_accuracy_vs_bits.png"
    plot_attacks_vs_bits(block.bits, acc, names, block.activations, block.eps[picks], path,
                         title=f"{block.data}")
    return [path]


STALLED_NOTE = ("A red n✕ under a bit width means n seeds stalled in training (clean accuracy within 5 points "
                "of chance) and were left out of the mean; a bit width with no usable seed has no point.")

CAPTIONS = (  # (file name start, caption): what is plotted and how to read it
    ("fig2_", "Fig. 2 check: histograms of the distance from random points to the nearest face of their "
              "quantization simplex (Monte Carlo, grey) against the geometric model's density f(ε) (black "
              "line), for three (q, n). Where the model is right the line follows the bars; the KS test in "
              "the table above says how closely."),
    ("fig3_", "Accuracy vs weight bits q (Fig. 3): one panel per activation, one line per attack strength ε "
              "(mean over usable seeds, bars: std). The black dashed line marks the critical strength "
              "(min-variance definition): the ε at which accuracy depends least on q. A critical strength of "
              "0 means even the clean accuracies already vary least across q, so no attack strength separates "
              "the bit widths. " + STALLED_NOTE),
    ("fig6_", "Accuracy vs weight bits q (Fig. 6, spirals): one panel per activation, one line per attack "
              "strength ε (mean over usable seeds, bars: std); the black dashed line is the critical "
              "strength (min-variance). A critical strength of 0 means the clean accuracies already vary "
              "least across q. " + STALLED_NOTE),
    ("fig4_", "Relative accuracy (accuracy under attack / clean accuracy) vs l∞ strength ε, one line per bit "
              "width (Fig. 4). The dashed lines are the model bound: the geometric model's relative accuracy "
              "(1 - ε√n / h)^n, which falls to 0 at ε = h/√n, far below the plotted range on MNIST-sized "
              "inputs (the _log figure shows its shape). Measured curves above the bound mean the network "
              "is more robust than a point uniformly placed in its quantization cell would be."),
    ("fig7_", "Relative accuracy (accuracy under attack / clean accuracy) vs l∞ strength ε, one line per bit "
              "width (Fig. 7, spirals). The dashed lines are the model bound, (1 - ε√n / h)^n from the "
              "geometric model; measured curves above it are more robust than the model predicts."),
    ("attacks_", "Accuracy vs weight bits per attack of the suite and their per-input worst case (the "
                 "robust accuracy) at fixed strengths, one panel per activation (mean over usable seeds). "
                 "A gradient attack far above the gradient-free one signals gradient masking."),
    ("models_", "The given models compared: accuracy vs weight bits (files named _accuracy_vs_bits: the QAT "
                "files of each width averaged into one line, each float model quantized post-training its "
                "own line, one panel per strength) or vs attack strength ε (_accuracy_vs_eps), one line per model and "
                "bit width "
                "(a QAT file at its grids' bits, a float file at each post-training bit width; mean over the usable "
                "attack seeds). Models and bit widths whose every seed stalled (clean accuracy within 5 points of "
                "chance) or was refused have no line; the table 'Models compared' lists them."),
    ("targets_", "The same quantized networks on each target: accuracy vs attack strength, one panel per bit "
                 "width, one line per target (mean ± std over usable seeds). A target's line below sim's "
                 "at ε = 0 is its clean fidelity loss; 'refused' panels mean the target could not map the "
                 "network, 'stalled' that no seed trained."),
)


def caption(path: Path) -> str:
    """What ``path`` (a report figure) plots and how to read it."""
    name = Path(path).name
    return next((text for start, text in CAPTIONS if name.startswith(start)), name)
