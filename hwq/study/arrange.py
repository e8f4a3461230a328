"""The report's arrangement: a sweep's cells as arrays ``acc[activation, bits, seed, eps]`` per
(data set, target) (:class:`Block`), and the numbers the report states (:func:`critical_table`,
:func:`key_numbers`, :func:`diagnostic_counts`). Pure: reads the sweep, writes nothing.

Sweeps of given models (``hwq sweep --model``): the rows are the models instead of the hidden
activations (``Block.axis == "model"``), the bits every bit width a model's cells use (a QAT
file's row has its grids' bits only, NaN elsewhere) and the seeds the attack's;
:func:`model_rows` compares the models.

Stalled cells (training stalled, or clean test accuracy within 5 points of chance) are never
averaged: means and spreads are over the other seeds. Refused cells (the target could not map
the network: attribute ``refused`` with the reason, NaN accuracies) are never averaged either.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwq.study.analysis import min_variance_strength, relative_accuracy, slope_crossing_strength
from hwq.study.analysis.critical import DEFINITIONS
from hwq.sweep.spec import data_label
from hwq.sweep.store import SweepFile

TABLE_EPS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.125, 0.2, 0.3, 0.5)


ATTACK_EPS = (0.025, 0.05, 0.1)


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
    axis: str = "activation"  # what the rows (``activations``) are: hidden activations, or given models ("model")

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
        return nan_reduce(np.nanmean, self._masked(self.acc if values is None else values), 2)

    def std(self, values: np.ndarray | None = None) -> np.ndarray:
        return nan_reduce(np.nanstd, self._masked(self.acc if values is None else values), 2)

    def relative(self) -> np.ndarray:
        """Per-cell relative accuracy acc / clean, shape (A, B, S, K)."""
        return relative_accuracy(self.acc, self.clean[..., None])


def nan_reduce(func, values: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmean``/``np.nanstd`` without the warning for all-NaN slices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return func(values, axis=axis)


def input_format(sw: SweepFile) -> str:
    """The input codes every robust accuracy of the sweep was measured on: coarse input codes
    are a robustness of the quantizer, not of the chip, so the report states them."""
    b = sw.spec.quant.input_bits
    return f"{b}-bit input codes ({2**b} levels over the data's range)"


def calibration_policy() -> str:
    from hwq.api import CALIBRATION_POLICY

    return CALIBRATION_POLICY


def float_accuracy(sw: SweepFile, block: Block) -> np.ndarray:
    """The float model's test accuracy per cell (``float_test_accuracy``, NaN where absent:
    given models), shape (A, B, S), over the block's usable seeds when averaged."""
    out = np.full(block.clean.shape, np.nan)
    for c in sw.cells:
        a = c.attrs
        if a["data"] != block.data or a["target"] != block.target or a.get(block.axis) not in block.activations:
            continue
        i = (block.activations.index(a[block.axis]), bit_index(block, a["bits"]),
             int(np.flatnonzero(block.seeds == a["seed"])[0]))
        out[i] = a.get("float_test_accuracy", np.nan)
    return out


def blocks(sw: SweepFile) -> list[Block]:
    """One :class:`Block` per (data set, target), in the order of the spec."""
    spec = sw.spec
    axis = "model" if spec.models else "activation"
    acts = tuple(m.name for m in spec.models) if spec.models else tuple(dict.fromkeys(spec.activations))
    seeds = np.array(spec.seeds)
    bits = np.array(spec.all_bits if spec.models else spec.bits)
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
                if a["data"] != label or a["target"] != target or a.get(axis) not in acts:
                    continue
                i = (acts.index(a[axis]), int(np.flatnonzero(bits == a["bits"])[0]),
                     int(np.flatnonzero(seeds == a["seed"])[0]))
                acc[i], clean[i], present[i] = c.accuracy, a["clean_accuracy"], True
                stalled[i], keys[i] = a["stalled"], c.key
                refused[i] = bool(a.get("refused"))
                fidelity[i] = a.get("fidelity", np.nan)
            out.append(Block(label, target, sw.data[label], acts, bits, seeds, sw.epsilons,
                             acc, clean, present, stalled, keys, refused, fidelity, axis))
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


def rounded(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def key_numbers(sw: SweepFile, blks: list[Block] | None = None) -> dict:
    """What ``hwq report --json`` prints: the input format every robust accuracy was measured
    on and the calibration policy, critical strengths per activation and definition, clean
    accuracy per bits and activation (usable seeds; and all seeds) beside the float model's,
    fidelity, the cells
    (seeds) per activation and bits where each attack diagnostic fired, stalled cells."""
    blks = blks if blks is not None else blocks(sw)
    critical, clean, clean_all = {}, {}, {}
    for b in blks:
        table = critical_table(b)
        crit = {act: {d: (None if e[d] is None else
                          {"eps_linf": rounded(e[d].eps_linf), "eps_l2": rounded(e[d].eps_l2)})
                      for d in DEFINITIONS} for act, e in table.items()}
        critical.setdefault(b.data, {})[b.target] = crit
        mean_clean = b.mean(b.clean)
        all_clean = nan_reduce(np.nanmean, b.clean, 2)
        clean.setdefault(b.data, {})[b.target] = {
            act: {str(q): rounded(mean_clean[a, i]) for i, q in enumerate(b.bits)}
            for a, act in enumerate(b.activations)}
        clean_all.setdefault(b.data, {})[b.target] = {
            act: {str(q): rounded(all_clean[a, i]) for i, q in enumerate(b.bits)}
            for a, act in enumerate(b.activations)}
    fidelity = {}
    for b in blks:
        mean_fid = nan_reduce(np.nanmean, np.where(b.ran, b.fidelity, np.nan), 2)
        fidelity.setdefault(b.data, {})[b.target] = {
            act: {str(q): rounded(mean_fid[a, i]) for i, q in enumerate(b.bits)}
            for a, act in enumerate(b.activations)}
    diagnostics = {}
    for b in blks:
        counts = diagnostic_counts(sw, b)
        diagnostics.setdefault(b.data, {})[b.target] = {
            flag: {act: {str(q): n for q, n in bits.items()} for act, bits in per_act.items()}
            for flag, per_act in counts.items()}
    float_acc = {}
    for b in blks:
        mean_float = b.mean(float_accuracy(sw, b))
        float_acc.setdefault(b.data, {})[b.target] = {
            act: {str(q): rounded(mean_float[a, i]) for i, q in enumerate(b.bits)}
            for a, act in enumerate(b.activations)}
    models = {"models": model_rows(sw, blks)} if sw.spec.models else {}
    return {
        "input_format": input_format(sw), "calibration": calibration_policy(), **models,
        "critical": critical, "clean_accuracy": clean, "clean_accuracy_all_seeds": clean_all,
        "float_accuracy": float_acc,
        "fidelity": fidelity, "diagnostics": diagnostics,
        "stalled": [c.key for c in sw.cells if c.attrs["stalled"]],
        "refused": {c.key: c.attrs["refused"] for c in sw.cells if c.attrs.get("refused")},
        "cells": len(sw.cells), "planned": int(sw.attrs.get("n_planned", len(sw.cells))),
        "complete": bool(sw.attrs.get("complete", False)),
    }


def model_rows(sw: SweepFile, blks: list[Block]) -> list[dict]:
    """The models compared (sweeps of given models): one row per (data, target, model, bits)
    that has a cell, in the blocks' order: the model's ``quantization`` (``qat``: the file's
    grids; ``ptq``), ``clean`` and ``accuracy`` at the report's strengths (``eps``; mean over
    usable seeds, None where every seed stalled or was refused), ``clean_all`` (every seed
    that ran, stalled ones included), the seeds ``usable``/``stalled``/``refused``, the mean
    ``fidelity`` and the model's ``critical`` strength (min-variance, l∞) over its bit widths
    (None with fewer than two)."""
    spec = {m.name: m for m in sw.spec.models}
    out = []
    for b in blks:
        picks = table_eps(b.eps)
        mean, clean = b.mean(), b.mean(b.clean)
        all_clean = nan_reduce(np.nanmean, np.where(b.ran, b.clean, np.nan), 2)
        fid = nan_reduce(np.nanmean, np.where(b.ran, b.fidelity, np.nan), 2)
        crit = critical_table(b)
        for a, name in enumerate(b.activations):
            c = crit[name]["min-variance"]
            for i, q in enumerate(b.bits):
                if not b.present[a, i].any():
                    continue
                out.append({
                    "data": b.data, "target": b.target, "model": name,
                    "quantization": spec[name].quantization if name in spec else None, "bits": int(q),
                    "clean": rounded(clean[a, i]), "clean_all": rounded(all_clean[a, i]),
                    "eps": [float(b.eps[k]) for k in picks],
                    "accuracy": [rounded(mean[a, i, k]) for k in picks],
                    "usable": int(b.usable[a, i].sum()), "stalled": int((b.ran & b.stalled)[a, i].sum()),
                    "refused": int(b.refused[a, i].sum()), "fidelity": rounded(fid[a, i]),
                    "critical": None if c is None else rounded(c.eps_linf)})
    return out


def table_eps(eps: np.ndarray) -> list[int]:
    """The indices of the report's table strengths (``TABLE_EPS``) in ``eps``."""
    return sorted({int(np.argmin(np.abs(eps - e))) for e in TABLE_EPS if e <= eps.max()})


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


def pick_eps(eps: np.ndarray) -> list[int]:
    return sorted({int(np.argmin(np.abs(eps - e))) for e in ATTACK_EPS if e <= eps.max() + 1e-12})


def bit_index(block: Block, q) -> int:
    return int(np.flatnonzero(block.bits == int(q))[0])


def diagnostic_counts(sw: SweepFile, block: Block) -> dict[str, dict[str, dict[int, int]]]:
    """``{flag: {activation: {bits: cells}}}``: how many cells (seeds) of each activation and
    bit width of ``block`` raised each attack diagnostic (``diag_flags``); flags sorted, then
    activations in the block's order and bits ascending; only what fired."""
    found: dict[str, dict[tuple[int, int], int]] = {}
    for c in sw.cells:
        if c.attrs["data"] != block.data or c.attrs["target"] != block.target:
            continue
        if c.attrs.get(block.axis) not in block.activations:
            continue
        at = (block.activations.index(c.attrs[block.axis]), bit_index(block, c.attrs["bits"]))
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
