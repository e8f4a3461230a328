"""hwq's APGD-CE and APGD-T against the reference implementation (torchattacks' ``APGD`` /
``APGDT``, a port of Croce & Hein's code) on the same float model (784-100-10 ReLU, 16-bit
weights, activations and inputs on ``sim``), inputs, labels, bounds, seed and budget, with
matched random starts (``benchmarks/cross_check_apgd.py``: the torch worker starts every run
at hwq's start noise): per strength, the two may differ on at most one input in a hundred.

Needs a Python with torch and torchattacks: ``HWQ_TORCH_PYTHON``, else the checkout's
``.venv-torch/bin/python`` (benchmarks/README.md); skipped without one. A control run with
hwq's initial step size quartered must miss the bar (the test can fail). Measured on this
problem (100 inputs, 5 steps): 0 inputs differ; with the step halved 1 (APGD's checkpoints
halve the step themselves, so a halved start is mostly absorbed; 0 at 20 steps), quartered 3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
# 5 steps: a checkpoint at every step (the schedule exercised), and strengths where about half
# the inputs stay robust, where a weaker or stronger attack shows first
INPUTS, STEPS = 100, 5
EPSILONS = (0.0, 0.002, 0.004, 0.016)

pytestmark = pytest.mark.slow


def torch_python() -> str | None:
    """``HWQ_TORCH_PYTHON`` (which must then work: a CI that sets it fails instead of skipping)
    or the checkout's ``.venv-torch``, if it imports torch and torchattacks."""
    given = os.environ.get("HWQ_TORCH_PYTHON")
    python = given or str(ROOT / ".venv-torch" / "bin" / "python")
    ok = Path(python).exists() and subprocess.run([python, "-c", "import numpy, torch, torchattacks"],
                                                  capture_output=True, timeout=300).returncode == 0
    if given and not ok:
        pytest.fail(f"HWQ_TORCH_PYTHON={given} does not import numpy, torch and torchattacks")
    return python if ok else None


@pytest.fixture(scope="module")
def cross_check():
    python = torch_python()
    if python is None:
        pytest.skip("no Python with torch and torchattacks (set HWQ_TORCH_PYTHON or make .venv-torch, "
                    "benchmarks/README.md)")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import cross_check_apgd as cc
    finally:
        sys.path.remove(str(BENCHMARKS))
    return cc, cc.cross_check(python, INPUTS, STEPS, seed=0, eps=EPSILONS, log=None, own=False)


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t"])
def test_hwq_apgd_agrees_with_torchattacks(cross_check, name):
    cc, check = cross_check
    ours, theirs = check[name]["hwq"], check[name]["torchattacks"]
    assert ours.shape == theirs.shape == (len(EPSILONS), INPUTS)
    differ = (ours != theirs).sum(axis=1)
    assert differ.max() <= cc.BAR * INPUTS, f"{name}: inputs differing per strength {differ.tolist()}"
    accuracy = ours.mean(axis=1)
    assert accuracy[0] == 1.0 and accuracy[-1] < 0.5, accuracy  # the attack did work: the bar is not idle
    assert np.all(np.abs(accuracy - theirs.mean(axis=1)) <= cc.BAR)


def test_a_broken_apgd_misses_the_bar(cross_check, monkeypatch):
    """The control: hwq's APGD with its initial step quartered (``eta_0 = eps / 2`` instead of
    ``2 eps``) against the same torchattacks results differs on more than one input in a hundred."""
    import hwq
    from hwq.attack import apgd, make_attack
    from hwq.attack.gradients import FloatGradient

    cc, check = cross_check
    monkeypatch.setattr(apgd, "START_STEP", apgd.START_STEP / 4)
    graph, program, x, y, _ = cc.problem_set(INPUTS)
    worst = 0
    for name in ("apgd-ce", "apgd-t"):
        broken = hwq.attack(program, x, y, np.array(EPSILONS), method=make_attack(name, steps=STEPS, seed=0),
                            gradient=FloatGradient(graph), bounds=(0, 1), diagnostics=False)
        worst = max(worst, int((broken.correct != check[name]["torchattacks"]).sum(axis=1).max()))
    assert worst > cc.BAR * INPUTS
