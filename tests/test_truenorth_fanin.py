"""MNIST-sized fan-in on truenorth (issue 21, first section): 784-input networks map exactly
(inputs split into groups of one core, partial sums added in the count domain: ordered
accumulators, ramped emitter gates) or are refused in one line that names the limit, what was
needed and the setting that fits; fan-ins just above each limit; and wrong variants of the
mapping are caught by the same comparison with hwq's integer reference."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
from builders import random_mlp
from factories import make_layer, make_net, random_net
from hwq_targets.truenorth import TrueNorthTarget, export_model, read_model
from hwq_targets.truenorth.core import AXONS
from hwq_targets.truenorth.emulator import Emulator
from hwq_targets.truenorth.limits import ACC_REACH, BIG_BETA

from hwq.errors import LimitError
from hwq.onnx.importer import graph_from_model
from hwq.quant import reference
from hwq.quant.qnet import QuantSettings
from hwq.quant.quantize import quantize

TN = TrueNorthTarget()
CALIB = np.random.default_rng(1).uniform(0, 1, (256, 784))


@functools.cache
def graph(act: str):
    return graph_from_model(random_mlp(np.random.default_rng(0), 784, 100, 10, act=act))


def mlp(act: str, bits: int, input_bits: int, act_bits: int = 8):
    """A 784-100-10 MLP quantized from random float weights (step: ``(x > 0)``, or ReLU)."""
    return quantize(graph(act), QuantSettings(bits, "narrow", False, act_bits, input_bits), CALIB, bounds=(0, 1))


def samples(net, n: int, seed: int = 2) -> np.ndarray:
    """Random codes, the extremes and image-like rows (the calibration data's codes)."""
    fmt = net.input
    x = np.random.default_rng(seed).integers(fmt.qmin, fmt.qmax + 1, (n, net.n_features))
    x[0], x[1] = fmt.qmax, fmt.qmin
    if net.n_features == CALIB.shape[1]:
        x[2:n // 2] = np.clip(np.floor(CALIB[:n // 2 - 2] * fmt.inv_scale + 0.5), fmt.qmin, fmt.qmax)
    return x


def assert_exact(program, net, x):
    assert program.exact and program.report["exact"]
    got, ref = program.forward(x), reference.forward(net, x)
    assert np.array_equal(got, ref)
    assert np.array_equal(program.decide(got), reference.decide(ref, net.output))


def refusal(make, *args, **options) -> str:
    with pytest.raises(LimitError) as info:
        TN.compile(make(*args), fidelity_samples=0, **options)
    line = info.value.line()
    assert "\n" not in line and line.startswith("layer "), line
    return line


def named_bits(line: str) -> int:
    return int(re.search(r"--input-bits (\d+) fits", line).group(1))


# -- 784-100-10 MLPs --------------------------------------------------------------------------

@pytest.mark.parametrize("bits, input_bits", [
    (1, 2), (1, 4), (2, 2), (2, 4), (4, 2), (4, 4),
    pytest.param(1, 8, marks=pytest.mark.slow), pytest.param(2, 8, marks=pytest.mark.slow),
    pytest.param(8, 2, marks=pytest.mark.slow)])
def test_784_step_mlps_are_exact(bits, input_bits):
    net = mlp("step", bits, input_bits)
    program = TN.compile(net, fidelity_samples=0)
    layer0 = program.report["layers"][0]
    assert layer0["scheme"] == "count-step" and layer0["groups"] >= 4  # 784 inputs over several cores
    assert_exact(program, net, samples(net, 8))


@pytest.mark.parametrize("top", [1, 3, 127])
def test_784_step_mlps_on_binary_inputs_are_exact(top):
    """1-bit inputs (one spike each): weights of 1 bit (+-1), 3 bits and 8 bits."""
    rng = np.random.default_rng(top)
    net = random_net(rng, 784, [100], ["step"], top, input_bits=1, out=10)
    program = TN.compile(net, fidelity_samples=0)
    assert_exact(program, net, samples(net, 16))


def test_784_step_mlp_too_wide_names_the_input_bits_that_fit():
    """8-bit weights and 8-bit inputs: a unit's positive sum outgrows the accumulator; the
    refusal names the largest input bits that fit (checked: they map, one more is refused)."""
    line = refusal(mlp, "step", 8, 8)
    assert "positive sum reaches" in line and f"beyond the {ACC_REACH}" in line, line
    fits = named_bits(line)
    assert TN.compile(mlp("step", 8, fits), fidelity_samples=0).exact
    refusal(mlp, "step", 8, fits + 1)


@pytest.mark.parametrize("bits, input_bits", [(1, 2), (2, 2), (4, 2), (2, 4)])
def test_784_relu_mlps_map_at_two_bit_activations(bits, input_bits):
    """Post-training-quantized ReLU: refused under relu=exact where no exact rate form exists
    (naming relu=rate); relu=rate maps, exact where the report says so, else the
    approximation is named."""
    net = mlp("Relu", bits, input_bits, act_bits=2)
    program = TN.compile(net, relu="rate", fidelity_samples=0)
    if program.exact:
        assert_exact(program, net, samples(net, 8))
    else:
        assert any(a.startswith("layer 0 ReLU by the nearest rate ratio") for a in program.report["approximations"])
        try:
            TN.compile(net, fidelity_samples=0)
        except LimitError as err:
            assert "relu=rate" in err.line() and "\n" not in err.line()


@pytest.mark.parametrize("bits, input_bits, act_bits, what", [
    (1, 8, 8, "accumulator needs"), (2, 8, 2, "accumulator needs"), (4, 8, 4, "threshold range")])
def test_784_relu_refusals_name_the_input_bits_that_fit(bits, input_bits, act_bits, what):
    line = refusal(mlp, "Relu", bits, input_bits, act_bits, relu="rate")
    assert what in line and ("a core has 256" in line or str(BIG_BETA) in line), line
    fits = named_bits(line)
    TN.compile(mlp("Relu", bits, fits, act_bits), relu="rate", fidelity_samples=0)
    refusal(mlp, "Relu", bits, fits + 1, act_bits, relu="rate")


# -- fan-ins just above each limit -------------------------------------------------------------

def two_layer(w1, b1, input_bits, w2=None, seed=0):
    rng = np.random.default_rng(seed)
    hidden = len(w1)
    if w2 is None:
        w2 = rng.integers(1, 4, (3, hidden)) * rng.choice([-1, 1], (3, hidden))  # no zeros: every flip shows
    return make_net([make_layer(w1, b1, "step"), make_layer(w2, rng.integers(-3, 4, len(w2)), "identity")],
                    input_bits=input_bits)


def on_the_boundary(w, x):
    """Biases that put unit ``u``'s accumulator at 0 (no spike) or 1 (spike) on sample ``u mod N``."""
    acc = x @ w.T
    return np.array([-acc[u % len(x), u] + u % 2 for u in range(len(w))])


@pytest.mark.parametrize("n", [AXONS, AXONS + 1])
def test_one_core_of_axons_then_two_groups(n):
    """0/1 weights on binary inputs take one axon each: 256 inputs fit one Eedn core, 257 go to
    the count domain in two groups; both exact."""
    rng = np.random.default_rng(n)
    w1 = rng.integers(0, 2, (20, n))
    net = two_layer(w1, -rng.integers(0, n // 2, 20), 1)
    program = TN.compile(net, fidelity_samples=0)
    layer0 = program.report["layers"][0]
    assert (layer0["scheme"], layer0["groups"]) == (("eedn-step", 1) if n == AXONS else ("count-step", 2))
    assert_exact(program, net, samples(net, 48))


@pytest.mark.parametrize("top, input_bits, ordered", [(7, 4, False), (1, 8, True)])
def test_784_inputs_on_the_decision_boundary(top, input_bits, ordered):
    """Every hidden unit sits at acc 0 or 1 on one sample: gated accumulators (sums within one
    gate) and ordered ones (E- drained first, then E+ towards the 18-bit threshold)."""
    rng = np.random.default_rng(top)
    w1 = rng.integers(-top, top + 1, (40, 784))
    x = rng.integers(0, 2**input_bits, (40, 784))
    x[0], x[1] = 2**input_bits - 1, 0
    net = two_layer(w1, on_the_boundary(w1, x), input_bits)
    program = TN.compile(net, fidelity_samples=0)
    assert program.mapping.layers[0].ordered is ordered
    assert_exact(program, net, x)


def rise_net(n: int, input_bits: int = 8):
    """A unit whose 0/1 weights all switch on: its positive sum ``n * (2^bits - 1)`` (2056 inputs
    of 255 spikes: 524280, within the accumulator's 524285; 2057: beyond it)."""
    rng = np.random.default_rng(n)
    w1 = rng.integers(0, 2, (4, n))
    w1[0] = 1
    x = rng.integers(0, 2**input_bits, (8, n))
    x[0] = 2**input_bits - 1
    return two_layer(w1, on_the_boundary(w1, x), input_bits), x


def test_fan_in_just_above_the_accumulator_range_is_refused():
    net, _ = rise_net(2057)
    line = refusal(lambda: net)
    assert f"positive sum reaches {2057 * 255}, beyond the {ACC_REACH}" in line, line
    assert named_bits(line) == 7
    net7, x7 = rise_net(2057, input_bits=7)
    assert TN.compile(net7, fidelity_samples=0).mapping.layers[0].ordered


@pytest.mark.slow
def test_fan_in_at_the_accumulator_range_is_exact():
    net, x = rise_net(2056)
    program = TN.compile(net, fidelity_samples=0)
    assert program.mapping.layers[0].ordered
    assert_exact(program, net, x)


def emitter_net(weight: int):
    """One input with 511 spikes (9-bit codes) on weight ``weight``: one group's partial sum."""
    w1 = np.array([[weight, 1, -1], [1, -2, 1]])
    return make_net([make_layer(w1, [0, 0], "step"), make_layer([[1, -1], [2, 1]], [0, 0], "identity")],
                    input_bits=9)


def test_one_input_beyond_an_emitter_is_refused():
    """An emitter holds a partial sum up to 130560 (ramped gate K >= sum, K + sum within the
    18-bit range): 255 x 511 = 130305 maps, 256 x 511 = 130816 is refused."""
    assert TN.compile(emitter_net(255), fidelity_samples=0).mapping.layers[0].ramp > 1
    line = refusal(emitter_net, 256)
    assert "partial sum (130816) exceeds what an emitter can hold" in line and str(BIG_BETA) in line, line
    assert named_bits(line) == 8


# -- the comparison catches wrong variants -----------------------------------------------------

def with_core(program, cid, crossbar=None, **neurons):
    """The program with core ``cid`` replaced (crossbar and/or neuron fields changed)."""
    model = program.mapping.model
    core = model.cores[model.index()[cid]]
    bad = type(core)(core.id, core.crossbar if crossbar is None else crossbar, core.axon_type,
                     core.neurons.replace(**neurons))
    program.emulator = Emulator(type(model)(tuple(bad if c.id == cid else c for c in model.cores)))
    return program


@functools.cache
def boundary_case(top, input_bits):
    rng = np.random.default_rng(top)
    w1 = rng.integers(-top, top + 1, (40, 784))
    x = rng.integers(0, 2**input_bits, (40, 784))
    net = two_layer(w1, on_the_boundary(w1, x), input_bits)
    return net, x, reference.forward(net, x)


def test_dropping_one_groups_partial_sum_is_caught():
    net, x, ref = boundary_case(7, 4)
    program = TN.compile(net, fidelity_samples=0)
    assert np.array_equal(program.forward(x), ref)
    cid = program.mapping.layers[0].cores[1]  # the second input group's emitters
    d, gate = next((d, g) for d, g in program.mapping.layers[0].gate_axons if d.id == cid)
    crossbar = np.array(program.mapping.model.cores[program.mapping.model.index()[cid]].crossbar)
    inputs = np.ones(AXONS, bool)
    inputs[gate] = False
    crossbar[inputs] = False  # the group's inputs reach no emitter: its partial sum is 0
    assert not np.array_equal(with_core(program, cid, crossbar).forward(x), ref)


def test_an_off_by_one_emitter_gate_is_caught():
    """K one less than the gate brings (v0 + 1): each emitter of one group spikes once too often."""
    net, x, ref = boundary_case(7, 4)
    program = TN.compile(net, fidelity_samples=0)
    cid = program.mapping.layers[0].cores[0]
    core = program.mapping.model.cores[program.mapping.model.index()[cid]]
    v0 = np.array(core.neurons.v0)
    v0[core.neurons.exists] += 1
    assert not np.array_equal(with_core(program, cid, v0=v0).forward(x), ref)


def test_an_ordered_accumulator_off_by_one_is_caught():
    """Ordered accumulators: start one higher (fires at acc >= 0) and the boundary units flip."""
    net, x, ref = boundary_case(1, 8)
    program = TN.compile(net, fidelity_samples=0)
    plan = program.mapping.layers[0]
    assert plan.ordered
    cid = plan.h_cores[0]
    core = program.mapping.model.cores[program.mapping.model.index()[cid]]
    v0 = np.array(core.neurons.v0)
    v0[core.neurons.exists] += 1
    assert not np.array_equal(with_core(program, cid, v0=v0).forward(x), ref)


@functools.cache
def floor_case():
    """Ordered accumulators whose E- drain reaches the floor ``-beta`` (kappa 1): units 0-19 on
    the decision boundary; units 20-29 with -1 weights but +1 on the last 60 inputs (the last
    group's partial sum is positive), biases that put ``V0`` just above ``-beta + E-``
    drain on all-max inputs, so that they reach the floor in the last few E- spikes and then
    rise by the last group's sum (still negative sums: they must stay silent); unit 29's ``V0``
    clamped at ``-beta``."""
    rng = np.random.default_rng(11)
    w1 = rng.integers(-1, 2, (30, 784))
    w1[20:] = -1
    w1[20:, -60:] = 1
    x = rng.integers(0, 64, (24, 784))
    x[0], x[1] = 63, 0
    b1 = on_the_boundary(w1, x)
    b1[20:] = 0
    groups = TN.compile(two_layer(w1, b1, 6), fidelity_samples=0).report["layers"][0]["groups"]
    partial = np.stack([x[0, g] @ w1[20:, g].T for g in np.array_split(np.arange(784), groups)])  # (groups, 10)
    drain = np.maximum(-partial, 0).sum(axis=0)
    b1[20:] = -(2**19 - 2) + drain - rng.integers(1, 30, 10)  # V0 = 2^18 - 2 + b: the floor, 1-29 spikes early
    b1[29] = -(2**19 + 5)
    net = two_layer(w1, b1, 6)
    return net, x, reference.forward(net, x), groups


def test_sums_through_the_floor_stay_silent():
    net, x, ref, groups = floor_case()
    program = TN.compile(net, fidelity_samples=0)
    assert program.mapping.layers[0].ordered and program.report["layers"][0]["groups"] == groups
    assert not reference.activate(net.layers[0], reference.accumulate(net.layers[0], x))[:, 20:].any()
    assert_exact(program, net, x)


def test_ordered_accumulators_survive_the_model_file(tmp_path):
    """The IBM model file carries the ordered accumulators (reset -beta, kappa 1, ramped gates):
    read back, it spikes like the mapped cores."""
    net, x, ref, _ = floor_case()
    program = TN.compile(net, fidelity_samples=0)
    export_model(program, tmp_path / "wide.json")
    again = read_model(tmp_path / "wide.json")
    a = program.emulator.run(program.mapping.ticks, program.drive(x[:3])).counts
    b = Emulator(again).run(program.mapping.ticks, program.drive(x[:3])).counts
    assert np.array_equal(a, b) and a.sum() > 0


def test_an_accumulator_without_its_floor_is_caught():
    """kappa 0 instead of 1: below ``-beta`` the potential resets to ``-R = +beta`` and the
    silent units fire, which the comparison sees (so the floor is reached on these inputs)."""
    net, x, ref, _ = floor_case()
    program = TN.compile(net, fidelity_samples=0)
    assert np.array_equal(program.forward(x[:2]), ref[:2])
    for cid in program.mapping.layers[0].h_cores:
        core = program.mapping.model.cores[program.mapping.model.index()[cid]]
        program = with_core(program, cid, kappa=np.zeros(len(core.neurons.kappa), bool))
        program.mapping = type(program.mapping)(program.emulator.model, *[getattr(program.mapping, f) for f in (
            "layers", "inputs", "outputs", "gates", "in_max", "ticks", "duplicated")])
    assert not np.array_equal(program.forward(x), ref)
