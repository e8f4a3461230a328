"""Convolutional networks on truenorth (docs/truenorth.md, "Convolutional networks"): the tiling
planner's invariants and hand-known counts, step CNNs mapped one tick per layer and equal to
hwq's integer reference bit for bit, a wrong variant that differs, refusals in one line, the
per-core report."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from factories import conv_layer, make_layer, pool_node
from hwq_targets.truenorth import TrueNorthTarget, export_model, read_model
from hwq_targets.truenorth.core import AXONS, NEURONS, Model
from hwq_targets.truenorth.emulator import Emulator, EmulatorConfig
from hwq_targets.truenorth.tiling import plan_tiles
from hypothesis import given, settings
from hypothesis import strategies as st

from hwq.errors import HwqError, LimitError
from hwq.files.program import load_program, save_program
from hwq.ir.window import Window
from hwq.quant import reference
from hwq.quant.qnet import InputFormat, QPool, QuantizedNetwork, QuantSettings, Requant

TN = TrueNorthTarget()


# ------------------------------------------------------------------ the planner

@st.composite
def geometries(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    c = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(kh, 11)), draw(st.integers(kw, 11))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = (draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)),
            draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)))
    win = Window((c, h, w), (kh, kw), stride, pads, (1, 1), groups)
    out_channels = groups * draw(st.integers(1, 12))
    cost = draw(st.integers(1, 6))
    reserved = draw(st.integers(0, 4))
    seed = draw(st.integers(0, 2**16))
    return win, out_channels, cost, reserved, seed


@settings(max_examples=60, deadline=None)
@given(geometries())
def test_every_unit_once_every_core_within_limits_receptive_fields_covered(case):
    win, out_channels, cost, reserved, seed = case
    win.validate()
    units = out_channels * win.positions
    copies = np.random.default_rng(seed).integers(0, 4, units)
    plan = plan_tiles(win, out_channels, cost, reserved, copies)
    seen = np.concatenate([t.units for t in plan.tiles])
    assert np.array_equal(np.sort(seen), np.arange(units))  # every output unit exactly once
    idx = win.gather_index
    per_group = out_channels // win.groups
    for t in plan.tiles:
        assert t.axons <= AXONS and t.neurons <= NEURONS
        assert t.axons == len(t.inputs) * cost + reserved
        assert t.neurons == int(copies[t.units].sum())
        for u in t.units:  # each unit's receptive field lies within its tile's inputs
            o, p = divmod(int(u), win.positions)
            field = idx[o // per_group, p]
            assert np.isin(field[field >= 0], t.inputs).all()


def test_planner_counts_known_by_hand():
    # 1x8x8, 3x3, 4 channels, 2 axons per input: all 64 inputs (128 axons) and 144 units fit one core
    plan = plan_tiles(Window((1, 8, 8), (3, 3)), 4, 2)
    assert len(plan.tiles) == 1 and plan.tiles[0].axons == 128 and plan.tiles[0].neurons == 144
    # 1x12x12: 144 inputs x 2 = 288 axons > 256, 400 units > 256: two bands of whole rows, a band of
    # r output rows reads (r + 2) x 12 inputs (2 (r + 2) 12 axons) and has 4 r 10 units
    plan = plan_tiles(Window((1, 12, 12), (3, 3)), 4, 2)
    assert len(plan.tiles) == 2 and sum(t.neurons for t in plan.tiles) == 400
    for t in plan.tiles:
        r = t.rows[1] - t.rows[0]
        assert t.cols == (0, 10) and t.axons == 2 * (r + 2) * 12 and t.neurons == 40 * r
    # a 2x2 stride-2 pooling of 4 channels of 6x6 with one copy each: 144 inputs, 36 units, one core
    plan = plan_tiles(Window((4, 6, 6), (2, 2), (2, 2), groups=4), 4, 1)
    assert len(plan.tiles) == 1 and plan.tiles[0].axons == 144
    # 3 copies per unit: 64 output positions x 4 channels x 3 = 768 neurons: at least 3 cores
    plan = plan_tiles(Window((1, 10, 10), (3, 3)), 4, 1, copies=np.full(4 * 64, 3))
    assert len(plan.tiles) >= 3 and all(t.neurons <= NEURONS for t in plan.tiles)


def test_a_patch_wider_than_a_core_is_refused_naming_its_fan_in():
    with pytest.raises(LimitError) as exc:
        plan_tiles(Window((64, 5, 5), (3, 3)), 8, 1, what="layer 0")
    line = exc.value.line()
    assert "\n" not in line and "fan-in 576" in line and "layer 0" in line and "grouped" in line


# ------------------------------------------------------------------ step CNNs

def step_conv(rng, shape, channels, kernel=(3, 3), top=1, **kw):
    """A step convolution whose units fire on about a quarter of random binary inputs (biases
    around minus a third of the positive weights), so that pooled and later layers stay sensitive."""
    layer = conv_layer(rng, shape, channels, kernel, "step", top=top, in_max=1, **kw)
    bias = -(np.maximum(layer.weight, 0).sum(axis=1) // 3) + rng.integers(-1, 2, channels)
    return dataclasses.replace(layer, bias=bias)


def cnn(rng, shape=(1, 8, 8), convs=((4, {}),), pool="max", out=10, top=1, input_bits=1, pool_kw=None):
    nodes, s = [], tuple(shape)
    for i, (c, kw) in enumerate(convs):
        nodes.append(step_conv(rng, s, c, top=top, **kw))
        s = nodes[-1].out_shape
        if pool and i == 0:
            nodes.append(pool_node(s, pool, (2, 2), **(pool_kw or {})))
            s = nodes[-1].out_shape
    n = int(np.prod(s))
    nodes.append(make_layer(rng.integers(-top, top + 1, (out, n)), rng.integers(-6, 7, out), "identity"))
    net = QuantizedNetwork(InputFormat(input_bits, False, 1.0), tuple(nodes), "argmax", QuantSettings(bits=8), None,
                           input_shape=tuple(shape))
    net.validate()
    return net


def inputs(rng, net, n=64):
    x = rng.integers(net.input.qmin, net.input.qmax + 1, (n, net.n_features))
    x[0], x[1] = net.input.qmax, net.input.qmin
    return x


def check_equal(program, net, x):
    assert program.exact and program.report["exact"]
    assert np.array_equal(program.forward(x), reference.forward(net, x))  # scores: E+ - E- counts = acc
    for got, want in zip(program.mapped_accs(x), reference.trace(net, x)):
        assert np.array_equal(got, want)


CASES = {
    "8x8 conv4 maxpool dense10": dict(shape=(1, 8, 8)),
    "12x12 several tiles": dict(shape=(1, 12, 12)),
    "padded strided, avgpool": dict(shape=(2, 9, 9), convs=((4, dict(pads=(1, 1, 1, 1), stride=(2, 2))),),
                                    pool="avg"),
    "two convs, groups 2, splitters": dict(shape=(2, 10, 10), convs=((4, dict(pads=(1, 1, 1, 1))),
                                                                     (4, dict(groups=2))), top=2),
    "3-bit weights, no pooling": dict(shape=(1, 7, 7), convs=((6, {}),), pool=None, top=3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_step_cnns_equal_the_reference_one_tick_per_layer(name):
    rng = np.random.default_rng(sorted(CASES).index(name))
    net = cnn(rng, **CASES[name])
    program = TN.compile(net, fidelity_samples=0)
    rows = program.report["layers"]
    assert [r["scheme"] for r in rows[:-1]] == ["eedn-step"] * (len(rows) - 1)  # one tick per layer
    assert rows[-1]["scheme"] == "count-output"
    x = inputs(rng, net)
    check_equal(program, net, x)
    w = net.layers[0].weight.copy()  # the inputs can tell a wrong weight: one changed weight changes a score
    w[:, 4] = np.where(w[:, 4] > 0, -1, 1)
    wrong = dataclasses.replace(net, layers=(dataclasses.replace(net.layers[0], weight=w), *net.layers[1:]))
    assert not np.array_equal(reference.forward(wrong, x), reference.forward(net, x))
    if name == "12x12 several tiles":
        assert rows[0]["tiles"] >= 2 and rows[0]["cores"] == rows[0]["tiles"]
    if "splitters" in name:
        assert rows[1]["splitters"] > 0  # pooled spikes copied: one neuron per axon of the next conv


def test_a_tile_missing_one_input_axon_differs():
    """The wrong variant: one input axon of a convolution core disconnected."""
    rng = np.random.default_rng(11)
    net = cnn(rng, shape=(1, 12, 12))
    program = TN.compile(net, fidelity_samples=0)
    x = inputs(rng, net, 96)
    assert np.array_equal(program.forward(x), reference.forward(net, x))
    conv_cores = set(program.mapping.layers[0].cores)
    model = program.mapping.model
    cores = []
    for core in model.cores:
        if core.id == min(conv_cores):
            w = core.crossbar.copy()
            row = int(np.argmax(w.sum(axis=1)))  # the input axon reaching most neurons
            w[row] = False
            core = dataclasses.replace(core, crossbar=w)
        cores.append(core)
    program.emulator = Emulator(Model(tuple(cores)), EmulatorConfig(count_merges=True))
    assert not np.array_equal(program.forward(x), reference.forward(net, x))


def test_wider_input_codes_map_through_the_count_domain():
    """2-bit inputs arrive over several ticks: the first convolution sums in the count domain
    (exact, on its unrolled matrix); the layers after it are one-tick tiles again."""
    rng = np.random.default_rng(3)
    net = cnn(rng, shape=(1, 6, 6), convs=((3, {}),), input_bits=2)
    program = TN.compile(net, fidelity_samples=0)
    assert [r["scheme"] for r in program.report["layers"]] == ["count-step", "eedn-step", "count-output"]
    check_equal(program, net, inputs(rng, net, 32))


def test_binary_encoding_maps_a_cnn_on_binarized_codes():
    rng = np.random.default_rng(4)
    net = cnn(rng, shape=(1, 8, 8), input_bits=4)
    program = TN.compile(net, encoding="binary", fidelity_samples=16)
    assert program.report["layers"][0]["scheme"] == "eedn-step" and not program.exact
    x = inputs(rng, net, 32)
    assert np.array_equal(program.forward(x), program.mapped_accs(x)[-1])  # exact on the binarized codes


def test_report_lists_every_core_within_limits():
    rng = np.random.default_rng(5)
    net = cnn(rng, shape=(1, 12, 12))
    report = TN.compile(net, fidelity_samples=0).report
    table = report["core_table"]
    assert len(table) == report["cores"] == report["resources"]["cores"]
    assert report["resources"]["chips"] == 1
    assert all(0 < r["axons"] <= AXONS and 0 < r["neurons"] <= NEURONS for r in table)
    assert sum(r["neurons"] for r in table) == report["neurons"]
    assert sum(r["splitters"] for r in table) == report["duplicated_neurons"]
    assert [r["node"] for r in report["layers"]] == ["conv", "maxpool", "dense"]
    assert report["layers"][1]["tiles"] == report["layers"][1]["cores"]


def test_a_compiled_cnn_round_trips_through_its_file(tmp_path):
    rng = np.random.default_rng(6)
    net = cnn(rng)
    program = TN.compile(net, fidelity_samples=0)
    save_program(tmp_path / "cnn.hwq", program)
    loaded = load_program(tmp_path / "cnn.hwq")
    x = inputs(rng, net, 16)
    assert np.array_equal(loaded.forward(x), program.forward(x))


def test_the_exported_model_file_runs_to_the_same_spikes(tmp_path):
    rng = np.random.default_rng(9)
    net = cnn(rng, shape=(1, 12, 12))
    program = TN.compile(net, fidelity_samples=0)
    export_model(program, tmp_path / "cnn.json")
    again = read_model(tmp_path / "cnn.json")
    x = inputs(rng, net, 8)
    a = Emulator(program.mapping.model).run(program.mapping.ticks, program.drive(x)).counts
    b = Emulator(again).run(program.mapping.ticks, program.drive(x)).counts
    assert np.array_equal(a, b) and a.sum() > 0


# ------------------------------------------------------------------ refusals

def refused(net) -> str:
    with pytest.raises(HwqError) as exc:
        TN.compile(net, fidelity_samples=0)
    line = exc.value.line()
    assert "\n" not in line
    return line


# ------------------------------------------------------------------ graded (ReLU) CNNs

def relu_cnn(rng, shape=(1, 6, 6), channels=3, pool="avg", input_bits=2, act_bits=2, top=1, shifts=None,
             multipliers=None):
    """A ReLU convolution (per-channel requantization), an optional pooling, a dense output."""
    conv = conv_layer(rng, shape, channels, (3, 3), "relu", in_max=2**input_bits - 1, act_bits=act_bits, top=top)
    m = np.ones(channels, np.int64) if multipliers is None else np.asarray(multipliers, np.int64)
    sh = np.zeros(channels, np.int64) if shifts is None else np.asarray(shifts, np.int64)
    nodes = [dataclasses.replace(conv, requant=Requant(m, sh))]
    s = nodes[0].out_shape
    if pool:
        nodes.append(pool_node(s, pool, (2, 2)))
        s = nodes[-1].out_shape
    nodes.append(make_layer(rng.integers(-2, 3, (4, int(np.prod(s)))), rng.integers(-3, 4, 4), "identity"))
    net = QuantizedNetwork(InputFormat(input_bits, False, 1.0), tuple(nodes), "argmax", QuantSettings(bits=8), None,
                           input_shape=tuple(shape))
    net.validate()
    return net


RELU_CASES = {
    "relu conv, avgpool, pure shifts per channel": dict(shifts=(0, 1, 2)),
    "relu conv, no pooling, 12-bit multipliers": dict(pool=None, multipliers=(2**11 + 5, 3001, 4095),
                                                     shifts=(12, 12, 13)),
    "relu conv 4-bit codes, avgpool, multipliers": dict(input_bits=4, act_bits=4, top=7,
                                                      multipliers=(2**11 + 1, 2**11 + 511, 2**12 - 1),
                                                      shifts=(14, 14, 15)),
}


@pytest.mark.parametrize("name", list(RELU_CASES))
def test_relu_cnns_equal_the_reference_in_the_count_domain(name):
    """A graded convolution is its unrolled matrix with each channel's requantization at every
    position (count domain, like an MLP's ReLU layers); an average pooling of its codes is a
    count-domain ReLU of ones with the pooling's rescale. Scores and every layer's accumulators
    equal the reference's, and the ReLU codes are graded (not just 0/1)."""
    rng = np.random.default_rng(sorted(RELU_CASES).index(name) + 40)
    net = relu_cnn(rng, **RELU_CASES[name])
    program = TN.compile(net, fidelity_samples=0)
    assert [r["scheme"] for r in program.report["layers"]][:-1] == ["count-relu"] * (len(net.layers) - 1)
    x = inputs(rng, net, 48)
    check_equal(program, net, x)
    codes = reference.activate(net.layers[0], reference.trace(net, x)[0])
    assert codes.max() >= 2 and len(np.unique(codes)) >= 3


def test_a_relu_cnn_s_requantization_must_follow_its_channel():
    """The wrong variant: the per-channel requantization laid out per position instead of per
    channel (``np.tile`` for ``np.repeat``) computes another network on the same inputs."""
    from hwq_targets.truenorth import conv_mapping

    rng = np.random.default_rng(44)
    net = relu_cnn(rng, pool=None, shifts=(0, 1, 2))
    view = conv_mapping.dense_view(net).net
    x = inputs(rng, net, 48)
    np.testing.assert_array_equal(reference.forward(view, x), reference.forward(net, x))
    rq = view.layers[0].requant
    P = net.layers[0].window.positions
    wrong = Requant(np.tile(net.layers[0].requant.multiplier, P), np.tile(net.layers[0].requant.shift, P))
    assert not np.array_equal(rq.shift, wrong.shift)
    bad = dataclasses.replace(view, layers=(dataclasses.replace(view.layers[0], requant=wrong), *view.layers[1:]))
    assert not np.array_equal(reference.forward(bad, x), reference.forward(net, x))


def test_a_relu_cnn_without_an_exact_ratio_is_refused_naming_relu_rate_or_approximated():
    rng = np.random.default_rng(45)
    net = relu_cnn(rng, input_bits=6, act_bits=4, top=7, pool=None, multipliers=(2580, 3001, 2222), shifts=(8, 8, 8))
    line = refused(net)
    assert "layer 0" in line and "relu=rate" in line
    program = TN.compile(net, relu="rate", fidelity_samples=16)
    assert not program.exact and any("layer 0 ReLU" in a for a in program.report["approximations"])


def test_a_max_pooling_of_graded_codes_is_refused_naming_average_pooling():
    line = refused(relu_cnn(np.random.default_rng(46), pool="max"))
    assert "layer 1" in line and "max pooling of multi-valued codes" in line and "average pooling" in line


def test_a_sum_pooling_of_spikes_beyond_one_is_refused():
    rng = np.random.default_rng(8)
    conv = step_conv(rng, (1, 6, 6), 2)
    win = Window((2, 4, 4), (2, 2), (2, 2), groups=2)
    pool = QPool("avg", win, Requant(np.ones(2, np.int64), np.zeros(2, np.int64)))  # a sum: 0..4
    dense = make_layer(rng.integers(-1, 2, (3, 8)), np.zeros(3), "identity")
    net = QuantizedNetwork(InputFormat(1, False, 1.0), (conv, pool, dense), "argmax", QuantSettings(bits=8), None,
                           input_shape=(1, 6, 6))
    line = refused(net)
    assert "layer 1" in line and "codes up to 4" in line
