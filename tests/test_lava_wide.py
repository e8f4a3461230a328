"""Lava against the emulator on wide networks (issue 8): hypothesis draws networks with a
784-input layer (or 100/300), up to two hidden layers of up to 40 neurons, weight codes of any
width 1..16, every sign mode, unsigned/signed 8- and 16-bit inputs, and 48-97 inputs each; a
fixed sweep runs every weight width 1..16 on 784 inputs. Each deliberately wrong emulator
variant must disagree with Lava on the wide sweep (``ge`` also needs exact threshold hits:
the equality network rides along). Lava runs as a device in ``.venv-lava``
(tests/test_loihi_lava.py); bounded examples keep this to about a minute."""

from __future__ import annotations

import numpy as np
import pytest
from hwq_targets.loihi.emulator import Emulator
from hwq_targets.loihi.lavanet import run_lava
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from test_loihi import BLAS, FAMILIES, LOIHI, OPTIONS, codes, equality_net, random_net, run_wrong

from hwq.errors import LimitError

pytestmark = [pytest.mark.lava, pytest.mark.slow]

SIGNS = ["mixed", "excitatory", "inhibitory"]


def top_code(bits: int) -> int:
    return 1 if bits == 1 else 2 ** (bits - 1) - 1


@st.composite
def wide_programs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_in = draw(st.sampled_from([784, 784, 300, 100]))
    acts = draw(st.lists(st.sampled_from(["step", "relu"]), min_size=1, max_size=2))
    hidden = [draw(st.integers(8, 40)) for _ in acts]
    bits = draw(st.integers(1, 16))
    net = random_net(rng, n_in, hidden, acts, top_code(bits), draw(st.sampled_from(SIGNS)),
                     input_bits=draw(st.sampled_from([8, 16])), signed=draw(st.booleans()),
                     bias_scale=draw(st.sampled_from([0.0, 0.5, 3.0])),
                     out=draw(st.sampled_from([2, 10])))
    try:
        return LOIHI.compile(net), rng
    except LimitError:  # e.g. a neuron's synapses beyond one core
        reject()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=wide_programs(), n=st.sampled_from([48, 97]))
def test_wide_networks_lava_equals_emulator(case, n):
    program, rng = case
    x = codes(rng, program.net, n)
    lava = run_lava([program.mapping], x)[0]
    emulated = program.forward(x)
    assert lava.tolist() == emulated.tolist()
    assert program.decide(lava).tolist() == program.decide(emulated).tolist()


@pytest.fixture(scope="module")
def width_sweep():
    """Every weight width 1..16 on a 784-input layer (step and ReLU alternating, every sign
    mode), a forced shift that makes a wide LIF current wrap, and the equality network."""
    rng = np.random.default_rng(784)
    programs = []
    for bits in range(1, 17):
        act = "relu" if bits % 2 else "step"
        net = random_net(rng, 784, [12], [act], top_code(bits), SIGNS[bits % 3], bias_scale=0.5)
        programs.append((f"{act}-{bits}bit", LOIHI.compile(net)))
    uniform = random_net(rng, 784, [12], ["relu"], 2**16 - 1, odd=True)  # odd codes, rounded
    programs.append(("uniform-16bit", LOIHI.compile(uniform)))
    wrap = random_net(rng, 784, [12], ["step"], 127)
    programs.append(("wrap-784", LOIHI.compile(wrap, shifts=[0, None])))
    runs = []
    x = codes(rng, programs[0][1].net, 64)
    for start in range(0, len(programs), 6):
        chunk = programs[start:start + 6]
        runs.extend((name, p, x, s) for (name, p), s in zip(chunk, run_lava([p.mapping for _, p in chunk], x)))
    wide16 = [LOIHI.compile(random_net(rng, 784, [12], [act], 7, input_bits=16, signed=signed, bias_scale=0.5))
              for act, signed in (("relu", False), ("step", True))]
    for p in wide16:
        x16 = codes(rng, p.net, 64)
        runs.append((f"inputs16-{p.net.layers[0].activation}", p, x16, run_lava([p.mapping], x16)[0]))
    eq = LOIHI.compile(equality_net())
    x_eq = codes(rng, eq.net, 64)
    runs.append(("equality", eq, x_eq, run_lava([eq.mapping], x_eq)[0]))
    return runs


def test_every_weight_width_on_784_inputs(width_sweep):
    bad = [name for name, p, x, s in width_sweep if p.forward(x).tolist() != s.tolist()]
    assert not bad, f"Lava and the emulator differ on {bad}"
    groups = {len(lm.sets) for _, p, *_ in width_sweep for lm in p.mapping.layers}
    assert {1, 2} <= groups  # 9..16-bit codes as two synapse groups
    assert any(lm.weight_round > 0 for _, p, *_ in width_sweep for lm in p.mapping.layers)
    for family in FAMILIES:  # every product family of this host (VNNI, AVX2, BLAS) equals Lava
        emulators = [(name, Emulator(p.mapping, **OPTIONS[family]), x, s) for name, p, x, s in width_sweep]
        assert not [name for name, e, x, s in emulators if e.run(x).tolist() != s.tolist()], family
        paths = {e.report[0] for name, e, *_ in emulators if name.startswith("inputs16")}
        assert paths <= set(BLAS) if family == "blas" else paths == {"vnni": {"vnni16"}, "avx2": {"avx2"}}[family]
    wrap = next(p for name, p, *_ in width_sweep if name == "wrap-784")
    x = width_sweep[0][2]
    assert (np.abs(wrap.emulator.inputs(x)[0]) > 2**17).any()  # the current really wraps


@pytest.mark.parametrize("variant", ["trunc", "ge", "nowrap"])
def test_lava_catches_wrong_emulators_on_wide_networks(width_sweep, variant):
    differ = [name for name, p, x, s in width_sweep
              if run_wrong(p.mapping, variant, x).tolist() != s.tolist()]
    assert differ, f"variant {variant} was not caught"
