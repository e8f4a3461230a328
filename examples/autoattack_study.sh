#!/usr/bin/env bash
# The masking study of issue 22 under AutoAttack (docs/reproduction.md, "Under AutoAttack (issue 22)").
#
# Sweeps of weight-quantized MLPs (uniform levels, QAT, 16-bit activations and inputs, `sim`):
#   digits (step, sigmoid, ReLU; bits 1..10) and Fashion-MNIST (ReLU and step; bits 1,2,4,8),
#   (a) --attacks fgsm,pgd,autoattack          : FGSM vs PGD vs AutoAttack's worst case per bit width
#   (b) --attacks fgsm,pgd,apgd-ce --temperature auto : the gradient attacks with the logit-temperature remedy
# then one report per sweep and the figure docs/figures/autoattack_accuracy_vs_bits.png.
#
# Usage: examples/autoattack_study.sh [OUT_DIR] [--quick]
#   --quick: digits only, ReLU, 1 seed, bits 1,8, 100 test inputs, Square 200 queries (a few minutes).
set -euo pipefail
OUT=${1:-autoattack_study}
QUICK=${2:-}
HWQ=${HWQ:-.venv/bin/hwq}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1

# figure OUT_DIR PNG: robust accuracy vs bits, one line per attack (dashed: T=auto), and the
# table (mean over seeds) on stdout.
figure() {
  "$PY" - "$1" "$2" <<'PY'
"""Figure and tables of the AutoAttack study: robust accuracy vs bits, one line per attack."""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hwq.study.report import attack_arrays, blocks, merge_sweeps  # noqa: E402

out_dir, png = Path(sys.argv[1]), Path(sys.argv[2])
STYLE = {"fgsm": ("FGSM", "C0", "-"), "pgd": ("PGD 40", "C1", "-"), "apgd-ce": ("APGD-CE", "C2", "-"),
         "apgd-t": ("APGD-T", "C3", "-"), "apgd-dlr": ("APGD-DLR", "C4", "-"), "square": ("Square", "C5", "-"),
         "worst": ("AutoAttack worst case", "k", "-"),
         "fgsm T": ("FGSM T=auto", "C0", "--"), "pgd T": ("PGD T=auto", "C1", "--"),
         "apgd-ce T": ("APGD-CE T=auto", "C2", "--")}
GROUPS = [  # (data, AutoAttack sweeps, T=auto sweeps): files of one grid that differ in their seeds are merged
    ("digits", ["digits10_aa.h5"], ["digits10_T.h5"]),
    ("digits", ["digits_aa.h5"], ["digits_T.h5"]),  # --quick
    ("fashion-mnist", ["fm_aa.h5", "fm_s1_aa.h5"], ["fm_T.h5", "fm_s1_T.h5"]),
]
rows = []  # (data, activation, eps, bits, {line: mean over seeds (B, K)}, seeds, clean (B,))
done = set()
for data, aa_files, t_files in GROUPS:
    aa = [out_dir / f for f in aa_files if (out_dir / f).exists()]
    tt = [out_dir / f for f in t_files if (out_dir / f).exists()]
    if not aa or data in done and data == "digits":
        continue
    done.add(data)
    sw = merge_sweeps(aa)
    b = blocks(sw)[0]
    arrs = {k: b.mean(v) for k, v in attack_arrays(sw, b).items()}
    arrs["worst"] = b.mean()
    if tt:
        swt = merge_sweeps(tt)
        bt = blocks(swt)[0]
        assert list(bt.activations) == list(b.activations) and list(bt.bits) == list(b.bits)
        for k, v in attack_arrays(swt, bt).items():
            arrs[k + " T"] = bt.mean(v)
    for a, act in enumerate(b.activations):
        rows.append((data, act, b.eps, b.bits, {k: v[a] for k, v in arrs.items()},
                     int(b.usable[a].sum(axis=1).min()), b.mean(b.clean[..., None])[a, :, 0]))

ncol = max(int((r[2] > 0).sum()) for r in rows)
fig, axes = plt.subplots(len(rows), ncol, figsize=(3.3 * ncol, 2.6 * len(rows)), squeeze=False)
for i, (data, act, eps, bits, lines, nseeds, clean) in enumerate(rows):
    ks = [k for k in range(len(eps)) if eps[k] > 0]
    for j in range(ncol):
        ax = axes[i, j]
        if j >= len(ks):
            ax.axis("off")
            continue
        k = ks[j]
        for name, (label, color, ls) in STYLE.items():
            if name in lines:
                ax.plot(bits, lines[name][:, k], ls, color=color, marker="o", ms=3,
                        lw=2.2 if name == "worst" else 1.2, label=label)
        ax.set_title(f"{data} {act}, eps {eps[k]:g} ({nseeds} seed{'s' if nseeds > 1 else ''})", fontsize=9)
        ax.set_xticks(bits)
        ax.set_ylim(-0.02, None)
        ax.grid(alpha=0.3)
        if i == len(rows) - 1 or j >= 0:
            ax.set_xlabel("weight bits", fontsize=8)
        if j == 0:
            ax.set_ylabel("accuracy", fontsize=8)
h, lab = axes[0, 0].get_legend_handles_labels()
fig.legend(h, lab, loc="lower center", ncol=5, fontsize=8, frameon=False)
fig.tight_layout(rect=(0, 0.05, 1, 1))
fig.savefig(png, dpi=90)

# Markdown table: one row per (data, activation, eps, bits)
names = [n for n in STYLE if any(n in r[4] for r in rows)]
print("| data | act. | eps | q | clean | " + " | ".join(STYLE[n][0] for n in names) + " |")
print("|---" * (5 + len(names)) + "|")
for data, act, eps, bits, lines, nseeds, clean in rows:
    for k in range(len(eps)):
        if eps[k] == 0:
            continue
        for bi, q in enumerate(bits):
            vals = [f"{lines[n][bi, k]:.3f}" if n in lines else "-" for n in names]
            print(f"| {data} | {act} | {eps[k]:g} | {q} | {clean[bi]:.3f} | " + " | ".join(vals) + " |")
PY
}


if [ "$QUICK" = "--quick" ]; then
  COMMON=(--data digits --activations relu --bits 1,8 --seeds 1 --eps 0,0.1 --limit 100 --workers 1 --no-diagnostics)
  "$HWQ" sweep "${COMMON[@]}" --attacks fgsm,pgd,autoattack --queries 200 -o "$OUT/digits_aa.h5"
  "$HWQ" sweep "${COMMON[@]}" --attacks fgsm,pgd,apgd-ce --temperature auto -o "$OUT/digits_T.h5"
  figure "$OUT" "$OUT/autoattack_accuracy_vs_bits.png" > "$OUT/table.md"
  exit 0
fi

# Reductions fixed before the runs (2 cores shared with other jobs, ~40 min): digits: 2 seeds,
# all 360 test digits, eps 0/0.05/0.1; Fashion-MNIST: bits 1,2,4,8, the first 1,000 test
# images, eps 0/0.025/0.05/0.1, training capped at 15 epochs (patience 5), ReLU and step only,
# 2 seeds (0, 1). No diagnostics (the unbounded check and the remedy
# reruns); AutoAttack's members at their defaults (APGD 100 steps, 1 restart, Square 5000).
DIG=(--data digits --activations step,sigmoid,relu --bits 1:10 --seeds 2 --eps 0,0.05,0.1 --workers 1 --no-diagnostics)
FM=(--data fashion-mnist --bits 1,2,4,8 --eps 0,0.025,0.05,0.1 --limit 1000 --epochs 15 --patience 5
    --workers 1 --no-diagnostics)
AA=(--attacks fgsm,pgd,autoattack)
TEMP=(--attacks fgsm,pgd,apgd-ce --temperature auto)

{ "$HWQ" sweep "${DIG[@]}" "${AA[@]}" -o "$OUT/digits10_aa.h5"
  "$HWQ" sweep "${DIG[@]}" "${TEMP[@]}" -o "$OUT/digits10_T.h5"; } &
{ "$HWQ" sweep "${FM[@]}" --activations relu,step --seeds 1:1 "${AA[@]}" -o "$OUT/fm_s1_aa.h5"
  "$HWQ" sweep "${FM[@]}" --activations relu,step --seeds 1:1 "${TEMP[@]}" -o "$OUT/fm_s1_T.h5"; } &
"$HWQ" sweep "${FM[@]}" --activations relu,step --seeds 1 "${TEMP[@]}" -o "$OUT/fm_T.h5" &
"$HWQ" sweep "${FM[@]}" --activations relu,step --seeds 1 "${AA[@]}" -o "$OUT/fm_aa.h5"
wait

"$HWQ" report "$OUT/digits10_aa.h5" --no-fig2 -o "$OUT/rep_digits_aa"
"$HWQ" report "$OUT/digits10_T.h5" --no-fig2 -o "$OUT/rep_digits_T"
"$HWQ" report "$OUT/fm_aa.h5" "$OUT/fm_s1_aa.h5" --no-fig2 -o "$OUT/rep_fm_aa"
"$HWQ" report "$OUT/fm_T.h5" "$OUT/fm_s1_T.h5" --no-fig2 -o "$OUT/rep_fm_T"
figure "$OUT" "$OUT/autoattack_accuracy_vs_bits.png" > "$OUT/table.md"
