"""Lava's CPU fixed-point processes against the emulator: identical scores and decisions.

Lava runs as a device in its own Python 3.10 environment (``.venv-lava`` or
``$HWQ_LAVA_PYTHON``; ``./bootstrap.sh`` creates it), reached over hwq's device protocol:
these tests exercise that path for real. Without a Lava environment they are skipped with the
set-up line; ``HWQ_REQUIRE_LAVA=1`` (``.ci/run`` where Python 3.10 exists) makes that a failure.

Many networks share one Lava run (one RingBuffer feeds them all), so the sweep stays short:
step and ReLU layers, weight codes of 1..16 bits (narrow and odd 'uniform' codes), mixed,
excitatory-only and inhibitory-only weights, negative biases, signed inputs, threshold
equality, forced shifts that make the LIF current wrap and its voltage saturate, and mixed
weights split by sign into two separately floored groups at the deepest weight_exp. Each
deliberately wrong emulator variant must disagree with Lava somewhere."""

from __future__ import annotations

import numpy as np
import pytest
from hwq_targets.loihi import Limits
from hwq_targets.loihi.lava_device import device_for, lava_python
from hwq_targets.loihi.lavanet import run_lava
from test_loihi import (
    LOIHI,
    big_bias_net,
    codes,
    equality_net,
    onnx_net,
    random_net,
    run_wrong,
    sign_split_net,
    wrap_net,
)

from hwq.errors import TargetError
from hwq.quant.reference import quantize_input

pytestmark = pytest.mark.lava  # tests/conftest.py: skipped only without .venv-lava (never in CI)

PER_RUN = 7
WIDE_EXP = Limits(weight_exp=(-16, 7))  # lets two groups floor separately
SIGNS = ["mixed", "excitatory", "inhibitory"]
BIASES = [0.5, 3.0, 0.0]


def bit_sweep(rng):
    """One network per weight width 1..16, and odd (uniform) codes at 8, 12 and 16 bits."""
    cases = []
    for b in range(1, 17):
        act = "step" if b % 2 else "relu"
        net = random_net(rng, 12, [6], [act], max(1, 2 ** (b - 1) - 1), SIGNS[b % 3],
                         bias_scale=BIASES[b % 3])
        cases.append((f"{act}-{b}bit-{SIGNS[b % 3]}", LOIHI.compile(net)))
    for b in (8, 12, 16):
        net = random_net(rng, 12, [5], ["relu" if b == 12 else "step"], 2**b - 1, odd=True)
        cases.append((f"uniform-{b}bit", LOIHI.compile(net)))
    return cases


def special(rng):
    """Deep and ONNX-quantized networks, and forced shifts (wrap, saturation, >24-bit sigma)."""
    deep1 = random_net(rng, 12, [6, 5, 4], ["step", "relu", "step"], 7, bias_scale=1.0)
    deep2 = random_net(rng, 12, [6, 5], ["relu", "relu"], 127, "inhibitory", bias_scale=3.0)
    relu_onnx, _ = onnx_net(rng, "Relu", 4, "narrow")
    step_onnx, _ = onnx_net(rng, "step", 8, "uniform")
    big = random_net(rng, 12, [6], ["relu"], 127, bias_scale=20.0)
    sign = random_net(rng, 12, [6], ["step"], 7, out=1, output="sign")
    split = random_net(rng, 12, [6], ["step"], 2047)
    return [("deep-step-relu", LOIHI.compile(deep1)), ("deep-relu-inhib", LOIHI.compile(deep2)),
            ("onnx-relu-4bit", LOIHI.compile(relu_onnx)),
            ("onnx-step-uniform8", LOIHI.compile(step_onnx)),
            ("forced-wrap", LOIHI.compile(wrap_net(), shifts=[0, 0])),
            ("forced-sigma-wide", LOIHI.compile(big, shifts=[0, 0])),
            ("sign-output", LOIHI.compile(sign)),
            ("split-floors", LOIHI.compile(split, shifts=[12, 0], limits=WIDE_EXP))]


def signed(rng):
    return [(f"signed-{act}", LOIHI.compile(random_net(rng, 12, [6], [act], 31, signed=True,
                                                        bias_scale=1.0)))
            for act in ("step", "relu")]


def signed16(rng):
    """16-bit signed inputs with biases across the whole sum range (offsets not clipped)."""
    return [(f"signed16-bigbias-{act}", LOIHI.compile(big_bias_net(rng, act)))
            for act in ("step", "relu")]


def sign_split(rng):
    """16-bit inputs whose 24-bit state needs a shift of 8: mixed 4-bit weights run as an
    excitatory and an inhibitory Dense at weight_exp -8, each floored separately."""
    return [("sign-split-step", LOIHI.compile(sign_split_net(rng, "step"))),
            ("sign-split-relu", LOIHI.compile(sign_split_net(rng, "relu"), shifts=[8, None]))]


def run_group(cases, x):
    out = []
    for start in range(0, len(cases), PER_RUN):
        chunk = cases[start:start + PER_RUN]
        scores = run_lava([p.mapping for _, p in chunk], x)
        out.extend((name, p, x, s) for (name, p), s in zip(chunk, scores))
    return out


@pytest.fixture(scope="module")
def sweep():
    rng = np.random.default_rng(2024)
    unsigned = bit_sweep(rng) + special(rng)
    groups = [unsigned, signed(rng), signed16(rng), sign_split(rng),
              [("equality", LOIHI.compile(equality_net()))]]
    results = []
    for cases in groups:
        results.extend(run_group(cases, codes(rng, cases[0][1].net, 16)))
    return results


@pytest.mark.slow
def test_lava_equals_emulator(sweep):
    bad = [name for name, p, x, s in sweep if p.forward(x).tolist() != s.tolist()]
    assert not bad, f"Lava and the emulator differ on {bad}"
    bad = [name for name, p, x, s in sweep if p.decide(p.forward(x)).tolist()
           != p.decide(s).tolist()]
    assert not bad


@pytest.mark.slow
def test_sweep_covers_the_hard_cases(sweep):
    names = {name for name, *_ in sweep}
    assert {"forced-wrap", "equality", "signed-relu", "uniform-16bit", "sign-output",
            "signed16-bigbias-step", "signed16-bigbias-relu"} <= names
    big = next(p for name, p, *_ in sweep if name == "signed16-bigbias-step")
    assert not any("clipped" in a["what"] for a in big.report["adjustments"])
    assert big.mapping.layers[0].vth > 0 or (big.mapping.layers[0].bias_exp == 7).any() \
        or np.abs(big.mapping.layers[0].bias_mant).max() > 1000  # large offsets really in Lava
    wrap = next(p for name, p, *_ in sweep if name == "forced-wrap")
    x = next(x for name, _, x, _ in sweep if name == "forced-wrap")
    a = wrap.emulator.inputs(x)[0]
    assert (np.abs(a) > 2**17).any()  # the LIF current really wrapped
    groups = {len(lm.sets) for _, p, *_ in sweep for lm in p.mapping.layers}
    assert {1, 2, 3} <= groups  # 9..16-bit codes ran as split synapse groups
    floors = max(sum(s.exp < 0 for s in lm.sets) for _, p, *_ in sweep for lm in p.mapping.layers)
    assert floors >= 2  # groups that floor separately (only with a wider exponent range)
    assert any(lm.weight_round > 0 for _, p, *_ in sweep for lm in p.mapping.layers)
    for case in ("sign-split-step", "sign-split-relu"):
        split = next(p for name, p, *_ in sweep if name == case).mapping.layers[0]
        assert [(s.mode, s.lava_weight_exp) for s in split.sets] == [("excitatory", -8),
                                                                     ("inhibitory", -8)]
        assert split.weight_round == 0


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["trunc", "ge", "nowrap"])
def test_lava_catches_wrong_emulator(sweep, variant):
    differ = [name for name, p, x, s in sweep
              if run_wrong(p.mapping, variant, x).tolist() != s.tolist()]
    assert differ, f"variant {variant} was not caught"


def test_lava_backend_forward():
    """The program's own Lava path: same scores and decisions as the emulator."""
    rng = np.random.default_rng(11)
    net, x = onnx_net(rng, "Relu", 4)
    xq = quantize_input(net.input, x[:12])
    lava = LOIHI.compile(net, backend="lava")
    emulator = LOIHI.compile(net)
    scores = lava.forward(xq)
    assert scores.dtype == np.int64
    assert scores.tolist() == emulator.forward(xq).tolist()
    assert lava.decide(scores).tolist() == emulator.decide(emulator.forward(xq)).tolist()
    assert lava.report["backend"] == "lava"


def test_lava_runs_as_a_device_in_its_own_python():
    """The scores come from a device server in the Lava environment, over the protocol."""
    rng = np.random.default_rng(12)
    net, x = onnx_net(rng, "Relu", 4)
    mapping = LOIHI.compile(net).mapping
    device = device_for([mapping])
    scores = run_lava([mapping], quantize_input(net.input, x[:3]))[0]
    assert device.proc.poll() is None and device.address.startswith("tcp://127.0.0.1:")
    assert "lava-nc" in device.identity and "Python 3.10" in device.identity
    assert "numpy 1." in device.identity
    assert scores.shape == (3, mapping.layers[-1].sets[0].digits.shape[0])
    assert device_for([mapping]) is device  # reused, not restarted


def test_missing_lava_environment_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HWQ_LAVA_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(TargetError, match="needs a Python 3.10 environment with Lava") as info:
        lava_python()
    assert "bootstrap.sh" in str(info.value) and "\n" not in str(info.value)
