"""The report as Markdown: settings, tables, the figures with their captions, diagnostics.
``hwq.study.html`` renders the same text as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwq.study.analysis.critical import DEFINITIONS
from hwq.study.arrange import (
    TABLE_EPS,
    Block,
    attack_arrays,
    bit_index,
    by_data,
    calibration_policy,
    critical_table,
    diagnostic_counts,
    float_accuracy,
    input_format,
    model_rows,
    nan_reduce,
    pick_eps,
)
from hwq.study.figures import caption
from hwq.sweep.machine import report_lines
from hwq.sweep.store import SweepFile


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
             *report_lines(sw.attrs),
             (f"- grid: activations {', '.join(spec.activations)}; bits {', '.join(map(str, spec.bits))}; "
              f"seeds {', '.join(map(str, spec.seeds))}" if not spec.models else
              f"- grid: models {', '.join(m.name for m in spec.models)}; bits {', '.join(map(str, spec.all_bits))} "
              f"(QAT files at their grids' bits, float files post-training at {', '.join(map(str, spec.bits))}); "
              f"attack seeds {', '.join(map(str, spec.seeds))}")
             + f"; targets {', '.join(spec.targets)}",
             f"- quantizer: scheme `{q.scheme}` ({levels}; see docs/quantization.md), "
             f"weights{' per channel' if q.per_channel else ' per tensor'}; activations "
             f"{q.act_bits} bits, inputs {q.input_bits} bits",
             f"- input format of every accuracy below: {input_format(sw)}; robustness from coarse input codes "
             "is the quantizer's, not the chip's",
             f"- calibration (input and activation formats, and surrogate gradients): {calibration_policy()}",
             f"- attack: {a.name.upper() if ',' not in a.name else 'suite ' + a.name} {a.norm}"
             + "".join(f", {k} {v}" for k, v in a.params().items())
             + f", {a.gradient} gradient, {eps.size} strengths "
             f"{eps.min():g}..{eps.max():g}"
             + (f", first {a.limit} test inputs" if a.limit else ", whole test set"),
             "- training (hwq.train, QAT, Adam, 10 % validation, early stopping on validation "
             "accuracy; per-cell seeds derived from the cell key):", ""]
    if sw.sources:  # merged sweeps: the files and their digests instead of one command
        lines[2:3] = _sources_md(sw)
    if spec.models:
        return lines[:-2] + _given_models_md(sw)
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


def _given_models_md(sw: SweepFile) -> list[str]:
    """Sweeps of given models: the models (not trained here) and the data they were judged on."""
    lines = ["- models (given ONNX files, not trained; each is a coordinate of its cells, named from its file "
             "stem; `qat`: every weight on the file's grids, kept; `ptq`: quantized post-training at each bit "
             "width):", ""]
    lines += _md_table(["model", "file", "quantization", "bits", "input", "classes", "hidden activations", "sha256"],
                       [[m.name, f"`{m.path}`", m.quantization, ",".join(map(str, sw.spec.model_bits(m))),
                         "x".join(map(str, m.input_shape)), m.n_classes, ", ".join(m.activations) or "–",
                         m.sha256[:12]] for m in sw.spec.models])
    lines += ["", "- data:", ""]
    lines += _md_table(["data", "spec", "train", "test", "features", "chance", "sha256"],
                       [[label, info["spec"], info["n_train"], info["n_test"], info["n_features"],
                         _fmt(info["chance"]), info["fingerprint"][:12]] for label, info in sw.data.items()])
    return lines + [""]


def _models_md(sw: SweepFile, blks: list[Block], figures: list[Path], folder: Path) -> list[str]:
    """Sweeps of given models: the models compared, per data set and target."""
    rows = model_rows(sw, blks)
    if not rows:
        return []
    eps = rows[0]["eps"]
    lines = ["## Models compared", "",
             "Per model and bit width: clean accuracy and accuracy under attack (mean over usable attack seeds; "
             "–: every seed stalled or was refused, the clean accuracy of the seeds that ran is in brackets), "
             "fidelity to the integer reference, and the model's critical strength (min-variance, l∞) over "
             f"its bit widths (– with fewer than two). Inputs: {input_format(sw)}.", ""]
    table = []
    for r in rows:
        clean = _fmt(r["clean"]) if r["clean"] is not None else f"– ({_fmt(r['clean_all'])})"
        notes = ", ".join(f"{r[k]} {k}" for k in ("stalled", "refused") if r[k])
        table.append([r["data"], r["target"], r["model"], r["quantization"], r["bits"], clean,
                      *(_fmt(x) for x in r["accuracy"]), _fmt(r["fidelity"]),
                      "–" if r["critical"] is None else f"{r['critical']:.4g}", notes or "–"])
    lines += _md_table(["data", "target", "model", "quant", "bits", "clean", *(f"ε={e:g}" for e in eps),
                        "fidelity", "critical l∞", "left out"], table)
    names = [p for p in figures if p.name.startswith("models_")]
    lines += [""] + [f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in names]
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
    lines += _md_table(["data", "target", blks[0].axis if blks else "activation", "min-var l∞", "min-var l2",
                        "crossing l∞", "crossing l2", "bits used"], rows)
    return lines + [""]


def _clean_md(b: Block, float_acc: np.ndarray | None = None) -> list[str]:
    """Clean accuracy per bits and activation; with ``float_acc`` (A, B, S) the float model's
    beside it (the baseline the quantized networks are measured against)."""
    mean, std = b.mean(b.clean), b.std(b.clean)
    float_mean = b.mean(float_acc) if float_acc is not None else None
    rows = []
    for i, q in enumerate(b.bits):
        row = [q]
        for a in range(len(b.activations)):
            n_ok, n_st = int(b.usable[a, i].sum()), int(b.stalled[a, i].sum())
            cell = f"{_fmt(mean[a, i])} ± {_fmt(std[a, i])} ({n_ok})" if n_ok else "–"
            if b.refused[a, i].any():
                cell += f", {int(b.refused[a, i].sum())} refused"
            stalled_mean = np.mean(b.clean[a, i][b.stalled[a, i]]) if n_st else None
            if float_mean is not None and np.isfinite(float_mean[a, i]):
                cell += f"; float {_fmt(float_mean[a, i])}"
            row.append(cell + (f", {n_st} stalled (at {_fmt(stalled_mean)})" if n_st else ""))
        rows.append(row)
    title = (f"### Clean accuracy: {b.data} on {b.target} (mean ± std over usable seeds (n)"
             + ("; float: the same trained model's float forward pass, the baseline" if float_mean is not None
                else "") + ")")
    return [title, ""] + _md_table(["bits", *b.activations], rows) + [""]


def _eps_md(b: Block, fmt: str = "") -> list[str]:
    picks = sorted({int(np.argmin(np.abs(b.eps - e))) for e in TABLE_EPS if e <= b.eps.max()})
    mean = b.mean()
    lines = [f"### Accuracy under attack: {b.data} on {b.target} (mean over usable seeds"
             + (f"; {fmt}" if fmt else "") + ")", ""]
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
    lines += _md_table(["data", "target", blks[0].axis, *(f"q={q}" for q in blks[0].bits)],
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
                        row.append(_fmt(float(nan_reduce(np.nanmean, b.fidelity[a, i][ran], 0))))
                    else:
                        row.append("refused" if b.refused[a, i].any() else "–")
                rows.append(row)
        lines += [f"### Fidelity: {data}", ""]
        lines += _md_table([group[0].axis, "bits", *(b.target for b in group)], rows) + [""]
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


def _attacks_md(sw: SweepFile, blks: list[Block]) -> list[str]:
    lines = []
    for b in blks:
        members = attack_arrays(sw, b)
        if not members:
            continue
        picks = pick_eps(b.eps)
        lines += [f"## Attacks compared: {b.data} / {b.target} (mean over usable seeds)", "",
                  "Accuracy per attack and the per-input worst case (robust accuracy) at fixed "
                  f"strengths, on {input_format(sw)}.", ""]
        header = [b.axis, "q"] + [f"{name} {b.eps[k]:g}" for name in [*members, "worst"] for k in picks]
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
                f"q{q} {n}/{int(b.ran[b.activations.index(act), bit_index(b, q)].sum())}" for q, n in bits.items())
                for act, bits in per_act.items()]
            lines.append(f"- `{flag}`: {fired} cells: " + "; ".join(groups))
        if not counts:
            lines.append("- none fired")
        lines.append("")
    return lines


def markdown(sw: SweepFile, blks: list[Block], figures: list[Path], fig2: list[dict],
             folder: Path) -> str:
    name = " + ".join(Path(s["path"]).name for s in sw.sources) if sw.sources else sw.path.name
    lines = [f"# hwq sweep report: {name}", "",
             f"{len(sw.cells)} of {sw.attrs.get('n_planned', len(sw.cells))} cells"
             + ("" if sw.attrs.get("complete") else " (sweep not complete)")
             + f"; {sum(c.attrs['stalled'] for c in sw.cells)} stalled"
             + f"; {sum(bool(c.attrs.get('refused')) for c in sw.cells)} refused.", ""]
    lines += _settings_md(sw)
    if sw.spec.models:
        lines += _models_md(sw, blks, figures, folder)
    lines += _critical_md(blks)
    lines += ["## Clean accuracy and accuracy under attack", ""]
    for b in blks:
        lines += _clean_md(b, None if sw.spec.models else float_accuracy(sw, b)) + _eps_md(b, input_format(sw))
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
    lines += [f"- [{p.name}]({p.relative_to(folder).as_posix()}): {caption(p)}" for p in figures]
    return "\n".join(lines) + "\n"
