#!/usr/bin/env bash
# The CNN part of the AutoAttack study (docs/reproduction.md, "The CNNs under AutoAttack"):
# Brevitas QAT LeNets at 1, 2, 4, 8 weight bits and float LeNets (two training seeds each), the
# QAT files at their grids' bits and the float ones quantized post-training by hwq at 1, 2, 4, 8
# bits, attacked on `sim` with FGSM, PGD and AutoAttack (Square at 1,000 queries) on 100 test
# images; then the table (stdout) and OUT/cnn_autoattack_accuracy_vs_bits.png.
#
# Usage: examples/cnn_autoattack_study.sh [OUT_DIR]   (needs .venv-torch: examples/brevitas_cnn.py)
# About 40 minutes of sweep on 2 cores, plus the training.
set -euo pipefail
OUT=${1:-cnn_autoattack_study}
HWQ=${HWQ:-.venv/bin/hwq}
PY=${PY:-.venv/bin/python}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
mkdir -p "$OUT"
.venv-torch/bin/python examples/brevitas_cnn.py --data "$DATA" --bits float,1,2,4,8 --seeds 0,1 --epochs 2 \
  --train-rows 20000 -o "$OUT/models"
MODELS=()
for f in "$OUT"/models/lenet-*.onnx; do MODELS+=(--model "$f"); done
"$HWQ" sweep --data fashion-mnist "${MODELS[@]}" --bits 1,2,4,8 --seeds 1 --targets sim \
  --attacks fgsm,pgd,autoattack --queries 1000 --eps 0,0.02,0.06,0.1 --limit 100 --workers 2 -v \
  -o "$OUT/cnn-aa.h5"
"$PY" - "$OUT/cnn-aa.h5" "$OUT/cnn_autoattack_accuracy_vs_bits.png" <<'PY'
"""The CNN study under AutoAttack: robust accuracy per weight width for QAT (files averaged per
width over two training seeds) and PTQ (the two float LeNets quantized by hwq), per attack."""
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from hwq.study.arrange import attack_arrays, blocks
from hwq.sweep.store import read_sweep

sw = read_sweep(sys.argv[1])
b = blocks(sw)[0]
arrs = {k: v[..., 0, :] for k, v in attack_arrays(sw, b).items()}  # [model, bits, eps] (one attack seed)
names = list(b.activations)
bits = list(b.bits)
eps = b.eps
print("members", list(arrs), "models", names, "bits", bits, "eps", eps)
acc_all = b.acc[..., 0, :]
clean = b.clean[..., 0]
def member(name):
    return arrs[name] if name in arrs else None
order = [m for m in ("fgsm", "pgd", "apgd-ce", "apgd-t", "apgd-dlr", "square") if m in arrs]
groups = {}
for mi, m in enumerate(names):
    kind = "PTQ" if "float" in m else "QAT"
    for bi, q in enumerate(bits):
        if np.isnan(acc_all[mi, bi, 0]):
            continue
        groups.setdefault((kind, q), []).append((mi, bi))
rows = []
print("| weights | clean | eps | " + " | ".join(order) + " | worst case |")
print("|---" * (3 + len(order) + 1) + "|")
for (kind, q) in sorted(groups, key=lambda k: (k[0] != "QAT", k[1])):
    cells = groups[(kind, q)]
    c = np.mean([clean[mi, bi] for mi, bi in cells])
    for k, e in enumerate(eps):
        if e == 0:
            continue
        vals = [np.mean([arrs[n][mi, bi, k] for mi, bi in cells]) for n in order]
        worst = np.mean([acc_all[mi, bi, k] for mi, bi in cells])
        pair = ", ".join(f"{acc_all[mi, bi, k]:.2f}" for mi, bi in cells)
        print(f"| {kind} q={q} | {c:.3f} | {e:g} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {worst:.3f} ({pair}) |")
        rows.append((kind, q, e, dict(zip(order, vals)), worst, c))
ks = [e for e in eps if e > 0]
fig, axes = plt.subplots(2, len(ks), figsize=(3.4 * len(ks), 5.6), squeeze=False)
style = {"fgsm": "C0", "pgd": "C1", "apgd-ce": "C2", "apgd-t": "C3", "apgd-dlr": "C4", "square": "C5"}
for r, kind in enumerate(("QAT", "PTQ")):
    for j, e in enumerate(ks):
        ax = axes[r, j]
        sel = [row for row in rows if row[0] == kind and row[2] == e]
        qs = [row[1] for row in sel]
        for n in order:
            ax.plot(qs, [row[3][n] for row in sel], "-o", ms=3, lw=1.1, color=style[n], label=n)
        ax.plot(qs, [row[4] for row in sel], "-o", ms=3, lw=2.2, color="k", label="worst case (AutoAttack + FGSM + PGD)")
        ax.plot(qs, [row[5] for row in sel], ":", color="grey", label="clean")
        ax.set_title(f"LeNet {kind}, eps {e:g}", fontsize=9)
        ax.set_xticks(qs)
        ax.set_ylim(-0.02, 0.9)
        ax.grid(alpha=0.3)
        ax.set_xlabel("weight bits", fontsize=8)
        if j == 0:
            ax.set_ylabel("robust accuracy", fontsize=8)
h, lab = axes[0, 0].get_legend_handles_labels()
fig.legend(h, lab, loc="lower center", ncol=4, fontsize=8, frameon=False)
fig.tight_layout(rect=(0, 0.08, 1, 1))
fig.savefig(sys.argv[2], dpi=90)
PY
