"""From a sweep file (or several of one grid with different seeds: hwq.sweep.merge) to the
paper's figures, a Markdown report, a self-contained HTML report and the key numbers.

By concern: ``hwq.study.arrange`` arranges a sweep's cells as arrays and computes the numbers
(pure); ``hwq.study.figures`` draws the figures and captions them; ``hwq.study.markdown``
writes the report's text; ``hwq.study.html`` renders that text as one HTML page with every
figure embedded. :func:`write_report` is the edge that writes them into a folder.

Stalled cells (training stalled, or clean test accuracy within 5 points of chance) are never
averaged: means and spreads are over the other seeds, each figure marks how many seeds of a
bit width were left out, and the report lists every stalled cell. Refused cells (the target
could not map the network: attribute ``refused`` with the reason, NaN accuracies) are never
averaged either and are listed with their reasons. With several targets, the report compares
them: accuracy vs strength per target (one panel per bit width) and the fidelity (share of
test inputs whose clean decision equals the integer reference's, i.e. the ``sim`` target's).
Sweeps of given models (``hwq sweep --model``) get the paper's figures per model (the models
are the rows where trained sweeps have activations) and a table and figure comparing models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hwq.study.arrange import (  # noqa: F401  (the report's public names, one import away)
    Block,
    attack_arrays,
    blocks,
    critical_table,
    diagnostic_counts,
    key_numbers,
)
from hwq.study.figures import (  # noqa: F401
    attack_figures,
    block_figures,
    figure_fig2,
    model_bits_figures,
    model_figures,
    target_figures,
)
from hwq.study.markdown import _clean_md, _refused_md, _targets_md, markdown  # noqa: F401
from hwq.sweep.merge import merge_sweeps
from hwq.sweep.store import read_sweep


def write_report(sweep_path: str | Path | Sequence[str | Path], folder: str | Path, *,
                 fig2: bool = True, html: bool = False) -> dict:
    """Read the sweep, write figures and ``report.md`` into ``folder`` (with ``html`` also
    ``report.html``: one self-contained page, ``hwq.study.html``); return key numbers.

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
    if sw.spec.models:
        figures += model_figures(blks, folder)
        figures += model_bits_figures(sw, blks, folder)
    report = folder / "report.md"
    from hwq.files.atomic import atomic_write_bytes

    text = markdown(sw, blks, figures, checks, folder)
    atomic_write_bytes(report, text.encode())
    out = {"report": str(report), "figures": [str(p) for p in figures], **numbers}
    if html:
        from hwq.study.html import render

        page = folder / "report.html"
        atomic_write_bytes(page, render(text, folder, title=text.splitlines()[0].lstrip("# ")).encode())
        out["html"] = str(page)
    if sw.sources:
        out["sources"] = [dict(s) for s in sw.sources]
    return out
