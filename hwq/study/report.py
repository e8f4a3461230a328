"""From a sweep file (or several of one grid with different seeds: hwq.sweep.merge) to the
paper's figures, a Markdown report and the key numbers.

Pure part: :func:`blocks` arranges a sweep's cells as arrays ``acc[activation, bits, seed,
eps]`` per (data set, target); :func:`critical_table` and :func:`key_numbers` compute what the
report states. Effects at the edge: :func:`write_report` draws the figures (hwq.plots) and
writes ``report.md`` into a folder.

Stalled cells (training stalled, or clean test accuracy within 5 points of chance) are never
averaged: means and spreads are over the other seeds, each figure marks how many seeds of a
bit width were left out, and the report lists every stalled cell. Refused cells (the target
could not map the network: attribute ``refused`` with the reason, NaN accuracies) are never
averaged either and are listed with their reasons. With several targets, the report compares
them: accuracy vs strength per target (one panel per bit width) and the fidelity (share of
test inputs whose clean decision equals the integer reference's, i.e. the ``sim`` target's).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwq.study.analysis import min_variance_strength, relative_accuracy, slope_crossing_strength
from hwq.study.analysis.critical import DEFINITIONS
from hwq.sweep.merge import merge_sweeps
from hwq.sweep.spec import data_label, target_token
from hwq.sweep.store import SweepFile, read_sweep

FIG2_CASES = ((2, 2), (3, 4), (1, 5))  # (q, n) of the paper's Fig. 2
FIG2_SAMPLES = 200_000
TABLE_EPS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.125, 0.2, 0.3, 0.5)


@dataclass(frozen=True, eq=False)
class Block:
    """All cells of one (data set, target): arrays indexed [activation, bits, seed(, eps)];
    NaN / False where a cell is missing."""

    data: str
    target: str
    info: dict  # the data group's attributes (n_features, chance, training, ...)
    activations: tuple[str, ...]
    bits: np.ndarray
    seeds: np.ndarray
    eps: np.ndarray
    acc: np.ndarray  # (A, B, S, K)
    clean: np.ndarray  # (A, B, S)
    present: np.ndarray  # (A, B, S) bool
    stalled: np.ndarray  # (A, B, S) bool
    keys: np.ndarray  # (A, B, S) object: cell keys ("" where missing)
    refused: np.ndarray  # (A, B, S) bool: the target refused the network (no accuracies)
    fidelity: np.ndarray  # (A, B, S) float: clean decisions equal to the reference's (NaN: unknown)

    @property
    def ran(self) -> np.ndarray:
        """Cells that ran (present and not refused), stalled or not."""
        return self.present & ~self.refused

    @property
    def usable(self) -> np.ndarray:
        return self.ran & ~self.stalled

    def _masked(self, values: np.ndarray) -> np.ndarray:
        mask = self.usable if values.ndim == 3 else self.usable[..., None]
        return np.where(mask, values, np.nan)

    def mean(self, values: np.ndarray | None = None) -> np.ndarray:
        """Mean over the usable seeds (axis 2); NaN where a bit width has none."""
        return _nan(np.nanmean, self._masked(self.acc if values is None else values), 2)

    def std(self, values: np.ndarray | None = None) -> np.ndarray:
        return _nan(np.nanstd, self._masked(self.acc if values is None else values), 2)

    def relative(self) -> np.ndarray:
        """Per-cell relative accuracy acc / clean, shape (A, B, S, K)."""
        return relative_accuracy(self.acc, self.clean[..., None])


def _nan(func, values: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmean``/``np.nanstd`` without the warning for all-NaN slices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return func(values, axis=axis)


def blocks(sw: SweepFile) -> list[Block]:
    """One :class:`Block` per (data set, target), in the order of the spec."""
    spec = sw.spec
    acts = tuple(dict.fromkeys(spec.activations if not spec.models
                               else [m.activation for m in spec.models]))
    seeds = np.array(spec.seeds if not spec.models else range(len(spec.models)))
    bits = np.array(spec.bits)
    out = []
    for label in (data_label(d) for d in spec.data):
        for target in spec.targets:
            shape = (len(acts), bits.size, seeds.size)
            acc = np.full(shape + (sw.epsilons.size,), np.nan)
            clean, present = np.full(shape, np.nan), np.zeros(shape, bool)
            stalled, keys = np.zeros(shape, bool), np.full(shape, "", dtype=object)
            refused, fidelity = np.zeros(shape, bool), np.full(shape, np.nan)
            for c in sw.cells:
                a = c.attrs
                if a["data"] != label or a["target"] != target or a["activation"] not in acts:
                    continue
                i = (acts.index(a["activation"]), int(np.flatnonzero(bits == a["bits"])[0]),
                     int(np.flatnonzero(seeds == a["seed"])[0]))
                acc[i], clean[i], present[i] = c.accuracy, a["clean_accuracy"], True
                stalled[i], keys[i] = a["stalled"], c.key
                refused[i] = bool(a.get("refused"))
                fidelity[i] = a.get("fidelity", np.nan)
            out.append(Block(label, target, sw.data[label], acts, bits, seeds, sw.epsilons,
                             acc, clean, present, stalled, keys, refused, fidelity))
    return out


def critical_table(block: Block) -> dict:
    """{activation: {definition: CriticalStrength | None, "bits_used": [...]}}.

    ``min-variance`` (the paper's) only among strengths whose mean accuracy is above chance
    + 0.05; ``slope-crossing`` over every strength (a run of exactly flat curves, as where
    every width is at 0 %, counts only if a negative slope follows it). Bit widths without a
    usable seed are left out; with fewer than two left, both are None.
    """
    mean = block.mean()
    out = {}
    for a, act in enumerate(block.activations):
        rows = ~np.any(np.isnan(mean[a]), axis=1)
        entry = {"bits_used": block.bits[rows].tolist()}
        args = (mean[a][rows], block.bits[rows], block.eps)
        n = block.info["n_features"]
        enough = rows.sum() >= 2
        entry["min-variance"] = min_variance_strength(
            *args, chance=block.info["chance"], n_features=n) if enough else None
        entry["slope-crossing"] = slope_crossing_strength(
            *args, chance=None, n_features=n) if enough else None
        out[act] = entry
    return out


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def key_numbers(sw: SweepFile, blks: list[Block] | None = None) -> dict:
    """What ``hwq report --json`` prints: critical strengths per activation and definition,
    clean accuracy per bits and activation (usable seeds; and all seeds), fidelity, the cells
    (seeds) per activation and bits where each attack diagnostic fired, stalled cells."""
    blks = blks if blks is not None else blocks(sw)
    critical, clean, clean_all = {}, {}, {}
    for b in blks:
        table = critical_table(b)
        crit = {act: {d: (None if e[d] is None else
                          {"eps_linf": _num(e[d].eps_linf), "eps_l2": _num(e[d].eps_l2)})
                      for d in DEFINITIONS} for act, e in table.items()}
        critical.setdefault(b.data, {})[b.target] = crit
        mean_clean = b.mean(b.clean)
        all_clean = _nan(np.nanmean, b.clean, 2)
        clean.setdefault(b.data, {})[b.target] = {
            act: {str(q): _num(mean_clean[a, i]) for i, q in enumerate(b.bits)}
            for a, act in enumerate(b.activations)}
        clean_all.setdefault(b.data, {})[b.target] = {
            act: {str(q): _num(all_clean[a, i]) for i, q in enumerate(b.bits)}
            for a, act in enumerate(b.activations)}
    fidelity = {}
    for b in blks:
        mean_fid = _nan(np.nanmean, np.where(b.ran, b.fidelity, np.nan), 2)
        fidelity.setdefault(b.data, {})[b.target] = {
            act: {str(q): _num(mean_fid[a, i]) for i, q in enumerate(b.bits)}
            for a, act in enumerate(b.activations)}
    diagnostics = {}
    for b in blks:
        counts = diagnostic_counts(sw, b)
        diagnostics.setdefault(b.data, {})[b.target] = {
            flag: {act: {str(q): n for q, n in bits.items()} for act, bits in per_act.items()}
            for flag, per_act in counts.items()}
    return {
        "critical": critical, "clean_accuracy": clean, "clean_accuracy_all_seeds": clean_all,
        "fidelity": fidelity, "diagnostics": diagnostics,
        "stalled": [c.key for c in sw.cells if c.attrs["stalled"]],
        "refused": {c.key: c.attrs["refused"] for c in sw.cells if c.attrs.get("refused")},
        "cells": len(sw.cells), "planned": int(sw.attrs.get("n_planned", len(sw.cells))),
        "complete": bool(sw.attrs.get("complete", False)),
    }


# ------------------------------------------------------------------------------ figures


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


def by_data(blks: list[Block]) -> dict[str, list[Block]]:
    """The blocks of each data set (one per target, in the spec's order)."""
    out: dict[str, list[Block]] = {}
    for b in blks:
        out.setdefault(b.data, []).append(b)
    return out


def target_curves(group: list[Block], a: int) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Mean and std accuracy (targets, bits, eps) of activation ``a`` over usable seeds, and
    per target and bit width a note: "refused", "stalled" (no usable seed) or ""."""
    mean = np.stack([b.mean()[a] for b in group])
    std = np.stack([b.std()[a] for b in group])
    notes = [["refused" if b.refused[a, i].any() and not b.ran[a, i].any() else
              "stalled" if b.ran[a, i].any() and not b.usable[a, i].any() else
              "" for i in range(b.bits.size)] for b in group]
    return mean, std, notes


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


# ------------------------------------------------------------------------------ markdown


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _levels(scheme, bits: int) -> str:
    values = scheme.levels(bits) * scheme.unit_scale(bits)
    return "{" + ", ".join(f"{v:.3g}" for v in values) + "}"


def _settings_md(sw: SweepFile) -> list[str]:
    from hwq.quant.schemes import get_scheme

    spec = sw.spec
    q = spec.quant
    scheme = get_scheme(q.scheme)
    levels = "; ".join(f"{b} bit{'s' * (b > 1)}: {_levels(scheme, b)}" for b in spec.bits[:2])
    a = spec.attack
    eps = sw.epsilons
    lines = ["## Settings", "",
             f"- command: `{sw.attrs.get('command', '')}`",
             f"- hwq {sw.attrs.get('hwq_version')}, created {sw.attrs.get('created')}, "
             f"executor {sw.attrs.get('executor') or '?'}, wall time {sw.attrs.get('wall_s', 0):.0f} s",
             f"- grid: activations {', '.join(spec.activations) if not spec.models else 'from models'}; "
             f"bits {', '.join(map(str, spec.bits))}; "
             + (f"seeds {', '.join(map(str, spec.seeds))}" if not spec.models else
                f"models {', '.join(m.path for m in spec.models)}")
             + f"; targets {', '.join(spec.targets)}",
             f"- quantizer: scheme `{q.scheme}` ({levels}; see docs/quantization.md), "
             f"weights{' per channel' if q.per_channel else ' per tensor'}; activations "
             f"{q.act_bits} bits, inputs {q.input_bits} bits",
             f"- attack: {a.name.upper() if ',' not in a.name else 'suite ' + a.name} {a.norm}"
             + "".join(f", {k} {v}" for k, v in a.params().items())
             + f", {a.gradient} gradient, {eps.size} strengths "
             f"{eps.min():g}..{eps.max():g}"
             + (f", first {a.limit} test inputs" if a.limit else ", whole test set"),
             "- training (hwq.train, QAT, Adam, 10 % validation, early stopping on validation "
             "accuracy; per-cell seeds derived from the cell key):", ""]
    if sw.sources:  # merged sweeps: the files and their digests instead of one command
        lines[2:3] = _sources_md(sw)
    rows = []
    for label, info in sw.data.items():
        t = info["training"]
        rows.append([label, info["spec"], info["n_train"], info["n_test"], info["n_features"],
                     _fmt(info["chance"]), t["epochs"], t["patience"], t["batch_size"],
                     t["learning_rate"], t["gain"], t["init"], t["hidden"],
                     info["fingerprint"][:12]])
    lines += _md_table(["data", "spec", "train", "test", "features", "chance", "max epochs",
                        "patience", "batch", "lr", "gain", "init", "hidden", "sha256"], rows)
    return lines + [""]


def _sources_md(sw: SweepFile) -> list[str]:
    """Merged sweeps: which file holds which seeds, with its content digest (``hwq info``'s
    ``content_sha256``), so every number can be traced to its file."""
    rows = [[f"`{s['path']}`", ", ".join(map(str, s["seeds"])), f"{s['cells']} / {s['planned']}",
             "yes" if s["complete"] else "no", "`" + s["command"].replace("|", "\\|") + "`",
             f"`{s['content_sha256']}`"]
            for s in sw.sources]
    return ([f"- merged from {len(sw.sources)} sweep files that differ only in their seeds "
             "(every table and figure covers the seeds of all of them):", ""]
            + _md_table(["file", "seeds", "cells", "complete", "command", "content sha256"], rows)
            + [""])


def _critical_md(blks: list[Block]) -> list[str]:
    lines = ["## Critical attack strength", "",
             "min-variance: the paper's (strength whose accuracy-vs-bits curve has the smallest "
             "variance, among strengths whose mean accuracy is above chance + 0.05); "
             "slope-crossing: where the least-squares slope of accuracy vs bits turns from "
             "positive to negative (over every strength, linearly interpolated). "
             "l2 = l-inf x sqrt(n).", ""]
    rows = []
    for b in blks:
        for act, e in critical_table(b).items():
            cells = []
            for d in DEFINITIONS:
                c = e[d]
                cells += ["–", "–"] if c is None else [f"{c.eps_linf:.4g}", f"{c.eps_l2:.4g}"]
            rows.append([b.data, b.target, act, *cells, ",".join(map(str, e["bits_used"]))])
    lines += _md_table(["data", "target", "activation", "min-var l∞", "min-var l2",
                        "crossing l∞", "crossing l2", "bits used"], rows)
    return lines + [""]


def _clean_md(b: Block) -> list[str]:
    mean, std = b.mean(b.clean), b.std(b.clean)
    rows = []
    for i, q in enumerate(b.bits):
        row = [q]
        for a in range(len(b.activations)):
            n_ok, n_st = int(b.usable[a, i].sum()), int(b.stalled[a, i].sum())
            cell = f"{_fmt(mean[a, i])} ± {_fmt(std[a, i])} ({n_ok})" if n_ok else "–"
            if b.refused[a, i].any():
                cell += f", {int(b.refused[a, i].sum())} refused"
            stalled_mean = np.mean(b.clean[a, i][b.stalled[a, i]]) if n_st else None
            row.append(cell + (f", {n_st} stalled (at {_fmt(stalled_mean)})" if n_st else ""))
        rows.append(row)
    title = f"### Clean accuracy: {b.data} on {b.target} (mean ± std over usable seeds (n))"
    return [title, ""] + _md_table(["bits", *b.activations], rows) + [""]


def _eps_md(b: Block) -> list[str]:
    picks = sorted({int(np.argmin(np.abs(b.eps - e))) for e in TABLE_EPS if e <= b.eps.max()})
    mean = b.mean()
    lines = [f"### Accuracy under attack: {b.data} on {b.target} (mean over usable seeds)", ""]
    for a, act in enumerate(b.activations):
        if np.isnan(mean[a]).all():
            why = " (refused by the target)" if b.refused[a].any() and not b.ran[a].any() else ""
            lines += [f"{act}: no usable cells{why}.", ""]
            continue
        rows = [[q, *(_fmt(mean[a, i, k]) for k in picks)] for i, q in enumerate(b.bits)]
        lines += [f"{act}:", ""] + _md_table(["bits", *(f"ε={b.eps[k]:g}" for k in picks)],
                                              rows) + [""]
    return lines


def _stalled_md(sw: SweepFile, blks: list[Block]) -> list[str]:
    cells = [c for c in sw.cells if c.attrs["stalled"]]
    lines = ["## Stalled cells (left out of every mean and figure)", ""]
    if not cells:
        return lines + ["None.", ""]
    counts = [[b.data, b.target, act,
               *(f"{int(b.stalled[a, i].sum())}/{int(b.ran[a, i].sum())}"
                 for i in range(b.bits.size))]
              for b in blks for a, act in enumerate(b.activations) if b.stalled[a].any()]
    lines += [f"{len(cells)} stalled cells; stalled / run per bit width:", ""]
    lines += _md_table(["data", "target", "activation", *(f"q={q}" for q in blks[0].bits)],
                       counts)
    rows = [[c.key, _fmt(c.attrs["clean_accuracy"]), _fmt(c.attrs["chance"]),
             _fmt(c.attrs.get("val_accuracy")), c.attrs.get("best_epoch", "–"),
             "yes" if c.attrs.get("train_stalled") else "no",
             "yes" if c.attrs["at_chance"] else "no"] for c in cells]
    lines += ["", "<details><summary>every stalled cell</summary>", ""]
    lines += _md_table(["cell", "clean acc", "chance", "val acc", "best epoch",
                        "training stalled", "test at chance"], rows)
    return lines + ["", "</details>", ""]


def _targets_md(blks: list[Block], figures: list[Path], folder: Path) -> list[str]:
    """Fidelity per (data, activation, bits) and target, and the comparison figures."""
    groups = by_data(blks)
    if all(len(g) < 2 for g in groups.values()):
        return []
    lines = ["## Targets compared", "",
             "Fidelity: the share of test inputs whose clean decision equals the integer "
             "reference's (`hwq.quant.reference`, which the `sim` target equals bit for bit), "
             "mean over the seeds that ran (stalled ones included); `refused`: the target "
             "cannot map the network (reasons below).", ""]
    for data, group in groups.items():
        rows = []
        for a, act in enumerate(group[0].activations):
            for i, q in enumerate(group[0].bits):
                row = [act, int(q)]
                for b in group:
                    ran = b.ran[a, i]
                    if ran.any():
                        row.append(_fmt(float(_nan(np.nanmean, b.fidelity[a, i][ran], 0))))
                    else:
                        row.append("refused" if b.refused[a, i].any() else "–")
                rows.append(row)
        lines += [f"### Fidelity: {data}", ""]
        lines += _md_table(["activation", "bits", *(b.target for b in group)], rows) + [""]
    names = [p for p in figures if p.name.startswith("targets_")]
    lines += [f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in names]
    return lines + [""]


def _refused_md(sw: SweepFile) -> list[str]:
    cells = [c for c in sw.cells if c.attrs.get("refused")]
    lines = ["## Refused cells (the target cannot map the network; no accuracies)", ""]
    if not cells:
        return lines + ["None.", ""]
    lines += _md_table(["cell", "target", "reason"],
                       [[c.key, c.attrs["target"], str(c.attrs["refused"]).replace("|", "\\|")]
                        for c in cells])
    return lines + [""]


def _timing_md(sw: SweepFile) -> list[str]:
    phases = ["load_s", "train_s", "import_s", "quantize_s", "compile_s", "attack_s", "total_s",
              "cpu_s"]
    rows = []
    for p in phases:
        v = np.array([c.timing.get(p, np.nan) for c in sw.cells], float)
        if v.size and np.isfinite(v).any():
            rows.append([p[:-2], f"{np.nansum(v):.1f}", f"{np.nanmean(v):.3f}",
                         f"{np.nanmax(v):.3f}"])
    lines = ["## Time per phase (wall seconds in the workers; a task trains once for all its "
             "targets; cpu: CPU seconds of the worker process)", ""]
    return lines + _md_table(["phase", "sum", "mean per cell", "max"], rows) + [""]


ATTACK_EPS = (0.025, 0.05, 0.1)


def attack_arrays(sw: SweepFile, block: Block) -> dict[str, np.ndarray]:
    """Each suite member's accuracy ``[activation, bits, seed, eps]`` for ``block`` (read
    from the cells' ``attacks/<name>/accuracy``); empty for single-attack sweeps."""
    from hwq.files.h5io import open_h5

    out: dict[str, np.ndarray] = {}
    files = {c.key: c.source or sw.path for c in sw.cells}  # merged sweeps: the cell's file
    where: dict[Path, list] = {}
    for index in np.ndindex(block.keys.shape):
        if block.keys[index]:
            where.setdefault(files.get(block.keys[index], sw.path), []).append(index)
    for path, indices in where.items():
        with open_h5(path) as f:
            for index in indices:
                cell = f["cells"][block.keys[index]]
                if "attacks" not in cell:
                    continue
                for name, g in cell["attacks"].items():
                    arr = out.setdefault(name, np.full(block.acc.shape, np.nan))
                    arr[index] = g["accuracy"][()]
    return out


def _pick_eps(eps: np.ndarray) -> list[int]:
    return sorted({int(np.argmin(np.abs(eps - e))) for e in ATTACK_EPS if e <= eps.max() + 1e-12})


def _attacks_md(sw: SweepFile, blks: list[Block]) -> list[str]:
    lines = []
    for b in blks:
        members = attack_arrays(sw, b)
        if not members:
            continue
        picks = _pick_eps(b.eps)
        lines += [f"## Attacks compared: {b.data} / {b.target} (mean over usable seeds)", "",
                  "Accuracy per attack and the per-input worst case (robust accuracy) at fixed "
                  "strengths.", ""]
        header = ["activation", "q"] + [f"{name} {b.eps[k]:g}" for name in [*members, "worst"] for k in picks]
        rows = []
        worst = b.mean()
        means = {n: b.mean(v) for n, v in members.items()}
        for a, act in enumerate(b.activations):
            for i, q in enumerate(b.bits):
                rows.append([act, int(q)] + [_fmt(means[n][a, i, k]) for n in members for k in picks]
                            + [_fmt(worst[a, i, k]) for k in picks])
        lines += _md_table(header, rows) + [""]
        counts = diagnostic_counts(sw, b)
        ran = int(b.ran.sum())
        lines += [f"Diagnostics (cells where each fired, of {ran}; per activation and bits: seeds "
                  f"where it fired / seeds run):", ""]
        for flag, per_act in counts.items():
            fired = sum(n for bits in per_act.values() for n in bits.values())
            groups = [f"{act} " + ", ".join(
                f"q{q} {n}/{int(b.ran[b.activations.index(act), _bit_index(b, q)].sum())}" for q, n in bits.items())
                for act, bits in per_act.items()]
            lines.append(f"- `{flag}`: {fired} cells: " + "; ".join(groups))
        if not counts:
            lines.append("- none fired")
        lines.append("")
    return lines


def _bit_index(block: Block, q) -> int:
    return int(np.flatnonzero(block.bits == int(q))[0])


def diagnostic_counts(sw: SweepFile, block: Block) -> dict[str, dict[str, dict[int, int]]]:
    """``{flag: {activation: {bits: cells}}}``: how many cells (seeds) of each activation and
    bit width of ``block`` raised each attack diagnostic (``diag_flags``); flags sorted, then
    activations in the block's order and bits ascending; only what fired."""
    found: dict[str, dict[tuple[int, int], int]] = {}
    for c in sw.cells:
        if c.attrs["data"] != block.data or c.attrs["target"] != block.target:
            continue
        at = (block.activations.index(c.attrs["activation"]), _bit_index(block, c.attrs["bits"]))
        for flag in c.attrs.get("diag_flags", []) or []:
            found.setdefault(str(flag), {}).setdefault(at, 0)
            found[str(flag)][at] += 1
    out = {}
    for flag in sorted(found):
        per_act: dict[str, dict[int, int]] = {}
        for (a, i), n in sorted(found[flag].items()):
            per_act.setdefault(block.activations[a], {})[int(block.bits[i])] = n
        out[flag] = per_act
    return out


def attack_figures(sw: SweepFile, block: Block, folder: Path, multi_target: bool) -> list[Path]:
    from hwq.study.plots import plot_attacks_vs_bits

    members = attack_arrays(sw, block)
    if not members:
        return []
    picks = _pick_eps(block.eps)
    names = [*members, "worst case"]
    acc = np.stack([block.mean(members[n]) for n in members] + [block.mean()])[..., picks]
    path = folder / f"attacks_{_stem(block, multi_target)}_accuracy_vs_bits.png"
    plot_attacks_vs_bits(block.bits, acc, names, block.activations, block.eps[picks], path,
                         title=f"{block.data}")
    return [path]


def markdown(sw: SweepFile, blks: list[Block], figures: list[Path], fig2: list[dict],
             folder: Path) -> str:
    name = " + ".join(Path(s["path"]).name for s in sw.sources) if sw.sources else sw.path.name
    lines = [f"# hwq sweep report: {name}", "",
             f"{len(sw.cells)} of {sw.attrs.get('n_planned', len(sw.cells))} cells"
             + ("" if sw.attrs.get("complete") else " (sweep not complete)")
             + f"; {sum(c.attrs['stalled'] for c in sw.cells)} stalled"
             + f"; {sum(bool(c.attrs.get('refused')) for c in sw.cells)} refused.", ""]
    lines += _settings_md(sw) + _critical_md(blks)
    lines += ["## Clean accuracy and accuracy under attack", ""]
    for b in blks:
        lines += _clean_md(b) + _eps_md(b)
    lines += _attacks_md(sw, blks)
    lines += _targets_md(blks, figures, folder)
    lines += _stalled_md(sw, blks) + _refused_md(sw)
    if fig2:
        lines += ["## Fig. 2 check: Monte Carlo vs the geometric model", ""]
        lines += _md_table(["q", "n", "mean (MC)", "mean h/(n+1)", "KS D", "KS p"],
                           [[c["q"], c["n"], f"{c['mean_mc']:.5g}", f"{c['mean_model']:.5g}",
                             f"{c['ks_statistic']:.4f}", f"{c['ks_pvalue']:.3f}"] for c in fig2])
        lines.append("")
    lines += _timing_md(sw) + ["## Figures", ""]
    lines += [f"- [{p.name}]({p.relative_to(folder).as_posix()})" for p in figures]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ the edge


def write_report(sweep_path: str | Path | Sequence[str | Path], folder: str | Path, *,
                 fig2: bool = True) -> dict:
    """Read the sweep, write figures and ``report.md`` into ``folder``; return key numbers.

    ``sweep_path`` may be several files of one grid run with different seeds: they are read
    as one sweep over all their seeds (``hwq.sweep.merge.merge_sweeps``; files that differ in
    anything else are refused) and the result has ``sources`` (one entry per file, with its
    content digest). The sweep files are read and checked completely before anything is
    written, so a damaged or refused file leaves no output behind.
    """
    sw = read_sweep(sweep_path) if isinstance(sweep_path, (str, Path)) else merge_sweeps(sweep_path)
    blks = blocks(sw)
    numbers = key_numbers(sw, blks)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures, checks = [], []
    if fig2:
        path, checks = figure_fig2(folder)
        figures.append(path)
    multi = len(sw.spec.targets) > 1
    for b in blks:
        if b.ran.any():
            figures += block_figures(b, folder, multi)
            figures += attack_figures(sw, b, folder, multi)
    if multi:
        figures += target_figures(blks, folder)
    report = folder / "report.md"
    from hwq.files.atomic import atomic_write_bytes

    atomic_write_bytes(report, markdown(sw, blks, figures, checks, folder).encode())
    out = {"report": str(report), "figures": [str(p) for p in figures], **numbers}
    if sw.sources:
        out["sources"] = [dict(s) for s in sw.sources]
    return out
