"""Convolutional networks on the loihi target (docs/loihi.md section 9).

* the Toeplitz unrolling (``conv.unroll``) against the convolution written out as loops;
* step CNNs (max pooling as an OR, average pooling of spikes as a threshold count, truncating
  sum pooling as a SigmaDelta, strides, symmetric and asymmetric pads, groups, dilation):
  emulator scores equal ``hwq.quant.reference.forward`` bit for bit on random and extreme codes;
* Lava's fixed-point processes (``Sparse`` connections) equal the emulator on a few of them;
* deliberately wrong mappings (one digit changed, a window shifted by one) are caught, by the
  reference and by Lava;
* refusals are one line naming the layer; artifacts round trip; the report counts cores,
  neurons and synapses; a network larger than the allowed chips is refused naming the chips.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from factories import codes, conv_layer, make_layer, pool_node, random_cnn
from hwq_targets.loihi import Limits, LoihiTarget
from hwq_targets.loihi.artifacts import to_artifacts
from hwq_targets.loihi.conv import unroll
from hwq_targets.loihi.program import LoihiProgram, offset

import hwq
from hwq.errors import FileFormatError, HwqError, LimitError, TargetError, UsageError
from hwq.files.program import load_program, save_program
from hwq.ir.window import Window
from hwq.quant import reference
from hwq.quant.qnet import InputFormat, QPool, QuantizedNetwork, QuantSettings, Requant

LOIHI = LoihiTarget()
SHAPE = (2, 10, 10)  # every network below reads (2, 10, 10) inputs, so one Lava run feeds several


# ---------------------------------------------------------------- networks
def sum_pool(in_shape, kernel, m=1, s=0, *, stride=None, pads=(0, 0, 0, 0), in_scale=1.0) -> QPool:
    """A truncating pooling ``floor(sum M / 2^S)`` (QONNX Trunc after a sum pool)."""
    stride = tuple(kernel) if stride is None else tuple(stride)
    win = Window(tuple(in_shape), tuple(kernel), stride, tuple(pads), (1, 1), in_shape[0])
    c = in_shape[0]
    return QPool("avg", win, Requant(np.full(c, m), np.full(c, s)), True, in_scale, in_scale * 2**s / m)


def network(spec, *, seed=0, in_shape=SHAPE, input_bits=8, signed=False, uniform=False, head=True):
    """A chain of nodes from ``spec`` ((kind, options) with kind conv, pool or sum), each node's
    ``in_scale`` the previous one's output scale, then (``head``) a dense identity layer of 3
    scores. ``uniform``: one weight scale per layer (per-channel scales refuse hidden ReLUs)."""
    rng = np.random.default_rng(seed)
    in_scale, in_max = 1.0 / 2 ** (input_bits - 1), 2**input_bits
    nodes, shape = [], tuple(in_shape)
    for kind, options in spec:
        kw = dict(options)
        if kind == "conv":
            act = kw.pop("act", "step")
            node = conv_layer(rng, shape, kw.pop("out"), kw.pop("kernel", (3, 3)), act, in_scale=in_scale,
                              in_max=in_max, **kw)
            if uniform:
                node = dataclasses.replace(node, weight_scale=np.full(len(node.weight_scale), 0.01))
            in_scale, in_max = (node.out_scale, 255) if act == "relu" else (1.0, 1)
        elif kind == "pool":
            node = pool_node(shape, kw.pop("op"), kw.pop("kernel", (2, 2)), in_scale=in_scale, **kw)
            in_scale = node.out_scale
        else:
            node = sum_pool(shape, kw.pop("kernel", (2, 2)), in_scale=in_scale, **kw)
            in_scale, in_max = node.out_scale, in_max * node.window.size
        nodes.append(node)
        shape = node.out_shape
    if head:
        n_in = int(np.prod(shape))
        nodes.append(make_layer(rng.integers(-7, 8, (3, n_in)), rng.integers(-50, 51, 3), "identity", in_scale))
    fmt = InputFormat(input_bits, signed, 2.0 ** (input_bits - 1))
    return QuantizedNetwork(fmt, tuple(nodes), "argmax", QuantSettings(bits=8), None, input_shape=tuple(in_shape))


def conv(out, **kw):
    return ("conv", {"out": out, **kw})


def pool(op, **kw):
    return ("pool", {"op": op, **kw})


P1 = (1, 1, 1, 1)
STEP_CNNS = {
    "maxpool": [conv(4), pool("max"), conv(4)],
    "maxpool-3x3-stride2-padded": [conv(4, stride=(2, 2), pads=P1), pool("max", kernel=(3, 3), stride=(2, 2), pads=P1)],
    "avgpool-spikes": [conv(4, pads=P1), pool("avg"), conv(4)],
    "avgpool-spikes-3x3": [conv(4, pads=P1), pool("avg", kernel=(3, 3), stride=(1, 1))],  # 1/9: count >= 5
    "avgpool-spikes-3x3-padded": [conv(4), pool("avg", kernel=(3, 3), stride=(2, 2), pads=P1)],
    "avgpool-spikes-truncating": [conv(4), pool("avg", truncate=True)],
    "sumpool": [conv(4), ("sum", {}), conv(4)],  # graded sums 0..4 into the next convolution
    "sumpool-halved": [conv(3), ("sum", {"s": 1}), conv(4, kernel=(2, 2))],  # floor(count / 2)
    "asymmetric-pads-strides": [conv(4, pads=(0, 1, 2, 0), stride=(1, 2)), pool("max"),
                                conv(4, kernel=(2, 3), pads=(1, 0, 0, 2))],
    "groups": [conv(4), conv(6, groups=2), conv(6, groups=6, kernel=(2, 2))],  # grouped, depthwise
    "dilation": [conv(4, dilation=(2, 2), pads=(2, 2, 2, 2)), pool("max"), conv(4, dilation=(1, 2))],
    "pool-after-pool": [conv(4, pads=P1), pool("avg"), pool("max", kernel=(3, 3), stride=(1, 1), pads=P1)],
}


def step_cnn(name, signed=False):
    return network(STEP_CNNS[name], seed=len(name), signed=signed)


def extreme_codes(net, n=200, seed=1):
    """Random codes plus the format's extremes (all qmax, all qmin, all 0, alternating)."""
    x = codes(np.random.default_rng(seed), net, n)
    fmt = net.input
    x[2] = 0
    x[3] = np.where(np.arange(x.shape[1]) % 2, fmt.qmax, fmt.qmin)
    return x


def assert_exact(program, x):
    got, want = program.forward(x), reference.forward(program.net, x)
    assert got.dtype == np.int64
    differ = np.flatnonzero((got != want).any(axis=1))
    assert differ.size == 0, f"{differ.size} of {len(x)} samples differ from the reference, first {differ[:5]}"


# ---------------------------------------------------------------- the unrolling
WINDOWS = [Window((2, 5, 6), (3, 3)), Window((2, 5, 6), (3, 2), (2, 1), (1, 0, 2, 1)),
           Window((4, 6, 5), (2, 3), (1, 2), (0, 2, 1, 0), (2, 1), 2), Window((3, 4, 4), (2, 2), (2, 2), groups=3)]


@pytest.mark.parametrize("win", WINDOWS, ids=lambda w: w.describe())
def test_unroll_is_the_convolution_written_out(win):
    """``unroll(D)[o Ho Wo + y Wo + x, (c H + yy) W + xx] = D[o, (c' kh + i) kw + j]`` for the
    input the formula of docs/integer-semantics.md section 8 names; nothing for padding."""
    rng = np.random.default_rng(0)
    c, h, w = win.in_shape
    kh, kw = win.kernel
    ho, wo = win.out_hw
    cg, c_out = c // win.groups, 2 * win.groups
    digits = rng.integers(-128, 128, (c_out, cg * kh * kw))
    want = np.zeros((c_out * ho * wo, c * h * w), np.int64)
    for o in range(c_out):
        g = o // (c_out // win.groups)
        for y in range(ho):
            for x in range(wo):
                for ci in range(cg):
                    for i in range(kh):
                        for j in range(kw):
                            yy = y * win.stride[0] - win.pads[0] + i * win.dilation[0]
                            xx = x * win.stride[1] - win.pads[1] + j * win.dilation[1]
                            if 0 <= yy < h and 0 <= xx < w:
                                want[(o * ho + y) * wo + x, ((g * cg + ci) * h + yy) * w + xx] = \
                                    digits[o, (ci * kh + i) * kw + j]
    assert np.array_equal(unroll(digits, win), want)


# ---------------------------------------------------------------- emulator = reference
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("name", sorted(STEP_CNNS))
def test_step_cnn_equals_the_reference(name, signed):
    program = hwq.compile(step_cnn(name, signed), "loihi")
    assert program.exact, program.report["adjustments"]
    assert any(e["connection"] == "Sparse" for e in program.report["layers"])
    assert_exact(program, extreme_codes(program.net))


@pytest.mark.parametrize("pool_op", ["max", "avg", None])
def test_factory_step_cnns_equal_the_reference(pool_op):
    rng = np.random.default_rng(5)
    for kw in ({}, {"stride": 2, "groups": 2, "in_shape": (2, 9, 9)}, {"pads": 0, "signed": True}):
        net = random_cnn(rng, act="step", pool=pool_op, channels=(4, 4), **kw)
        assert_exact(hwq.compile(net, "loihi"), extreme_codes(net, 100))


def test_poolings_map_to_the_documented_neurons():
    """Max of spikes: an OR (a LIF firing iff the count ``a > 0``: offset 0). Average of spikes: a
    LIF firing iff the count reaches ``n1``, the first count the epilogue rounds to 1 (offset
    ``1 - n1``). Truncating sum: a SigmaDelta with digits M at weight_exp -S."""
    for name, offset_ in (("maxpool", 0), ("avgpool-spikes-3x3", 1 - 5), ("avgpool-spikes", 1 - 2)):
        lm = hwq.compile(step_cnn(name), "loihi").mapping.layers[1]  # round half up: 5/9 and 2/4 give 1
        assert lm.neuron == "lif" and lm.window.groups == 4 and lm.shift == 0, name
        assert offset(lm).tolist() == [offset_] * lm.n_out, name
        assert lm.sets[0].digits.tolist() == [[1] * lm.window.size] * 4, name
    layers = hwq.compile(step_cnn("sumpool-halved"), "loihi").mapping.layers
    assert layers[1].neuron == "identity" and layers[1].shift == 1
    assert [(s.exp, s.lava_weight_exp) for s in layers[1].sets] == [(-1, -1)]
    assert layers[1].effective_codes().tolist() == [[1] * 4] * 3


# ---------------------------------------------------------------- deliberately wrong mappings
def wrong(program, layer, change) -> LoihiProgram:
    """The program with ``change(LayerMap) -> LayerMap`` applied to one layer's mapping."""
    layers = list(program.mapping.layers)
    layers[layer] = change(layers[layer])
    mapping = dataclasses.replace(program.mapping, layers=tuple(layers))
    return LoihiProgram(program.net, mapping, program.limits)


def one_digit(delta, o=1, k=4):
    """One synapse digit ``D[o, k]`` of the first group changed by ``delta`` (kept in 8 bits)."""
    def change(lm):
        d = lm.sets[0].digits.copy()
        d[o, k] = d[o, k] + delta if abs(d[o, k] + delta) < 128 else d[o, k] - delta
        return dataclasses.replace(lm, sets=(dataclasses.replace(lm.sets[0], digits=d), *lm.sets[1:]))
    return change


def shifted_window(lm):
    """The same window one row lower: pads (1, l, 1, r) read as (0, l, 2, r)."""
    t, left, b, r = lm.window.pads
    return dataclasses.replace(lm, window=dataclasses.replace(lm.window, pads=(t - 1, left, b + 1, r)))


def conv_scores_net():
    """A step convolution, max pooling, and a padded identity convolution as the output: every
    digit of the last layer shows in the scores."""
    return network([conv(3, pads=P1), pool("max"), conv(2, act="identity", pads=P1)], seed=3, head=False)


def test_wrong_digit_or_window_is_caught_by_the_reference():
    program = hwq.compile(conv_scores_net(), "loihi")
    x = extreme_codes(program.net, 60)
    assert_exact(program, x)
    want = reference.forward(program.net, x)
    for layer, change in [(2, one_digit(1)), (2, shifted_window), (0, one_digit(-9)), (0, shifted_window),
                          (1, shifted_window)]:
        assert not np.array_equal(wrong(program, layer, change).forward(x), want), (layer, change)


# ---------------------------------------------------------------- Lava
LAVA_CNNS = ["maxpool-3x3-stride2-padded", "avgpool-spikes-3x3-padded", "sumpool", "sumpool-halved",
             "asymmetric-pads-strides", "groups", "dilation"]


@pytest.fixture(scope="module")
def lava_run():
    """One Lava run: the step CNNs, a ReLU CNN with a truncating average pooling (SigmaDelta into
    SigmaDelta), and two wrong variants of the conv-scores network, on 6 samples."""
    from hwq_targets.loihi.lavanet import run_lava

    programs = {name: hwq.compile(step_cnn(name), "loihi") for name in LAVA_CNNS}
    relu = network([conv(4, act="relu"), pool("avg", truncate=True)], seed=4, uniform=True)
    programs["relu-avgpool-truncating"] = hwq.compile(relu, "loihi")
    base = hwq.compile(network([conv(3, pads=P1), pool("max"), conv(2, act="identity", pads=P1)], seed=3,
                               head=False), "loihi")
    programs["conv-scores"] = base
    programs["wrong-digit"] = wrong(base, 2, one_digit(1))
    programs["wrong-window"] = wrong(base, 0, shifted_window)
    x = extreme_codes(base.net, 6)
    scores = run_lava([p.mapping for p in programs.values()], x)
    return programs, x, dict(zip(programs, scores))


@pytest.mark.lava
@pytest.mark.slow  # one Lava run of 10 CNNs: 10-25 s on the shared 2-core machine
def test_lava_equals_emulator_on_cnns(lava_run):
    programs, x, lava = lava_run
    for name, program in programs.items():
        if not name.startswith("wrong"):
            assert np.array_equal(lava[name], program.forward(x)), name
    for name in LAVA_CNNS + ["conv-scores"]:
        assert np.array_equal(lava[name], reference.forward(programs[name].net, x)), name
    kinds = {lm.neuron for lm in programs["relu-avgpool-truncating"].mapping.layers}
    assert kinds == {"relu", "identity"}


@pytest.mark.lava
@pytest.mark.slow  # one Lava run of 10 CNNs: 10-25 s on the shared 2-core machine
def test_lava_catches_a_wrong_conv_mapping(lava_run):
    """Lava runs what the mapping says: a changed digit or shifted window gives other scores than
    the right mapping's emulator (so the comparison above can fail)."""
    programs, x, lava = lava_run
    right = programs["conv-scores"].forward(x)
    for name in ("wrong-digit", "wrong-window"):
        assert np.array_equal(lava[name], programs[name].forward(x)), name  # Lava follows the mapping
        assert not np.array_equal(lava[name], right), name


@pytest.mark.lava
def test_lava_backend_forward_on_a_cnn():
    net = step_cnn("avgpool-spikes")
    x = extreme_codes(net, 4)
    lava = hwq.compile(net, "loihi", backend="lava")
    assert lava.report["backend"] == "lava"
    assert lava.forward(x).tolist() == hwq.compile(net, "loihi").forward(x).tolist()


# ---------------------------------------------------------------- refusals
def refusals():
    rng = np.random.default_rng(0)
    sigmoid = step_cnn("maxpool")
    sigmoid = dataclasses.replace(sigmoid, layers=(dataclasses.replace(sigmoid.layers[0], activation="sigmoid"),
                                                   *sigmoid.layers[1:]))
    per_channel = dataclasses.replace(sum_pool((4, 8, 8), (2, 2)), requant=Requant(np.array([1, 2, 1, 1]),
                                                                                    np.zeros(4, np.int64)))
    relu = network([conv(4, act="relu")], uniform=True, head=False).layers[0]
    first_pool = pool_node(SHAPE, "max", (2, 2), in_scale=1 / 128)
    return [
        ("graded ReLU before max pooling", network([conv(4, act="relu"), pool("max")], uniform=True),
         LimitError, 1, "max pooling of graded relu"),
        ("max pooling of the input codes", QuantizedNetwork(
            InputFormat(8, False, 128.0), (first_pool, conv_layer(rng, first_pool.out_shape, 3, (2, 2), "identity")),
            "argmax", QuantSettings(bits=8), None, input_shape=SHAPE), LimitError, 0, "max pooling of graded input"),
        ("per-channel scales on a hidden ReLU conv", network([conv(4, act="relu"), conv(3)]), LimitError, 0,
         "per-channel weight scales"),
        ("rounding average pooling of graded ReLU", network([conv(4, act="relu"), pool("avg")], uniform=True),
         LimitError, 1, "rounds half up"),
        ("truncating 3x3 average of graded ReLU", network([conv(4, act="relu"), pool("avg", kernel=(3, 3),
                                                                                     truncate=True)], uniform=True),
         LimitError, 1, "does not fit one 8-bit synapse group"),
        ("per-channel pooling multipliers", QuantizedNetwork(
            InputFormat(8, False, 128.0), (relu, per_channel), "argmax", QuantSettings(bits=8), None,
            input_shape=SHAPE), LimitError, 1, "per-channel multipliers"),
        ("sigmoid convolution", sigmoid, TargetError, 0, "sigmoid"),
    ]


@pytest.mark.parametrize("case", refusals(), ids=lambda c: c[0])
def test_refusals_are_one_line_naming_the_layer(case):
    _, net, error, layer, words = case
    with pytest.raises(error) as info:
        hwq.compile(net, "loihi")
    line = info.value.line()
    assert "\n" not in str(info.value) and "\n" not in line
    assert f"layer {layer}" in line and words in line, line
    assert "'sim' target" in line


def test_a_pooling_takes_no_forced_shift():
    with pytest.raises(TargetError, match="layer 1 is a pooling") as info:
        hwq.compile(step_cnn("maxpool"), "loihi", shifts=[None, 0, None, None])
    assert "\n" not in info.value.line()


def test_core_limits_refuse_in_one_line_naming_the_layer():
    net = step_cnn("maxpool")
    # the output layer first: its neurons read 16 distinct inputs, more than 8 input axons
    with pytest.raises(LimitError, match="layer 3: no split of its 3 neurons") as info:
        hwq.compile(net, "loihi", limits=Limits(input_axons_per_core=8))
    assert "\n" not in info.value.line() and "8 input" in info.value.line()
    with pytest.raises(LimitError, match="layer 2: no split"):  # a padded 3x3 over 3 maps: up to 27 inputs
        hwq.compile(conv_scores_net(), "loihi", limits=Limits(input_axons_per_core=20))
    hwq.compile(conv_scores_net(), "loihi", limits=Limits(input_axons_per_core=27), chips=2)
    with pytest.raises(LimitError, match="layer 2: one neuron's 288 bits") as info:  # 4 x 3 x 3 x 8 bits
        hwq.compile(net, "loihi", limits=Limits(synapse_bits_per_core=200))


# ---------------------------------------------------------------- artifacts
def test_cnn_artifacts_round_trip(tmp_path):
    program = hwq.compile(step_cnn("asymmetric-pads-strides"), "loihi")
    save_program(tmp_path / "cnn.hwq", program)
    loaded = load_program(tmp_path / "cnn.hwq")
    x = extreme_codes(program.net, 50)
    assert loaded.target == "loihi"
    assert loaded.forward(x).tolist() == program.forward(x).tolist()
    assert [lm.window for lm in loaded.mapping.layers] == [lm.window for lm in program.mapping.layers]
    assert loaded.report == program.report


def _with_window(art: dict, layer: int, **change) -> dict:
    """The artifacts with layer ``layer``'s stored window geometry changed."""
    maps = list(art["maps"])
    maps[layer] = dataclasses.replace(maps[layer], window=dataclasses.replace(maps[layer].window, **change))
    return {**art, "maps": tuple(maps)}


def test_cnn_artifacts_with_a_foreign_window_are_refused():
    program = hwq.compile(step_cnn("maxpool"), "loihi")
    pads = program.artifacts["maps"][0].window.pads
    art = _with_window(program.artifacts, 0, pads=(1,) + tuple(pads[1:]))  # top pad 0 -> 1: another convolution
    with pytest.raises(FileFormatError, match="layer 0") as info:
        LOIHI.load(program.net, art)
    assert "\n" not in info.value.line()
    art = _with_window(program.artifacts, 1, stride=(1, 1))  # the pooling's stride 2 -> 1
    with pytest.raises(FileFormatError, match="layer 1"):
        LOIHI.load(program.net, art)


def test_cnn_flat_artifacts_of_version_1_still_load_and_are_checked():
    """Files written before the typed records (flat keys, the Lava wire's form) load to the
    same program; their window arrays are checked as before."""
    program = hwq.compile(step_cnn("maxpool"), "loihi")
    flat = to_artifacts(program.mapping, program.limits, "emulator", flat=True)
    assert flat["loihi_version"] == 1 and "maps" not in flat and "l0.g0.digits" in flat
    x = extreme_codes(program.net, 50)
    assert LOIHI.load(program.net, flat).forward(x).tolist() == program.forward(x).tolist()
    art = dict(flat)
    art["l0.window"] = np.array(art["l0.window"])
    art["l0.window"][7] = 1  # top pad 0 -> 1
    with pytest.raises(FileFormatError, match="layer 0"):
        LOIHI.load(program.net, art)
    art["l0.window"] = np.arange(5)
    with pytest.raises(FileFormatError, match="14 integers"):
        LOIHI.load(program.net, art)


# ---------------------------------------------------------------- report and chips
def test_report_counts_cores_neurons_and_synapses():
    net = step_cnn("asymmetric-pads-strides")
    report = hwq.compile(net, "loihi").report
    json.dumps(report)
    c0, mp, c2, dense = report["layers"]
    n_in_taps = 0  # the first convolution's synapses written out: taps inside the image
    win = net.layers[0].window
    ho, wo = win.out_hw
    for y in range(ho):
        for x in range(wo):
            for i in range(3):
                for j in range(3):
                    yy, xx = y - 0 + i, x * 2 - 1 + j
                    n_in_taps += 0 <= yy < 10 and 0 <= xx < 10
    assert c0["connection"] == "Sparse" and c0["window"] == win.describe()
    assert c0["neurons"] == 4 * ho * wo and c0["helper_neurons"] == 0
    assert c0["synapses"] == 4 * 2 * n_in_taps and c0["fan_in"] == 2 * 9
    assert mp["neurons"] == net.layers[1].n_out and mp["synapses"] == 4 * mp["neurons"]  # no padding
    assert mp["activation"].startswith("max pooling") and mp["neuron"] == "LIFReset"
    assert dense["connection"] == "Dense" and dense["synapses"] == 3 * net.layers[3].weight.shape[1] + 3
    total = report["resources"]
    for key in ("cores", "neurons", "synapses", "compartments"):
        assert total[key] == sum(e[key] for e in report["layers"])
    assert all(e["cores"] >= 1 and e["core_input_axons"] <= 4096 and e["core_output_axons"] <= 4096
               for e in report["layers"])
    assert total["chips"] == 1 and total["chips_allowed"] == 1


def test_core_split_follows_the_limits():
    net = step_cnn("maxpool")
    small = Limits(neurons_per_core=16, cores_per_chip=64)
    report = hwq.compile(net, "loihi", limits=small).report
    for e, node in zip(report["layers"], net.layers):
        assert e["cores"] >= -(-e["compartments"] // 16)
        assert e["neurons"] == node.n_out
    first = report["layers"][0]  # 4 x 8 x 8 neurons in C-order chunks of at most 16
    assert first["cores"] == 16 and first["core_input_axons"] <= 2 * 6 * 10


def test_a_network_larger_than_the_chips_allowed_is_refused():
    net = step_cnn("maxpool")
    small = Limits(neurons_per_core=16, cores_per_chip=8)
    with pytest.raises(LimitError) as info:
        hwq.compile(net, "loihi", limits=small)
    line = info.value.line()
    assert "\n" not in line and "Loihi chips of 8 cores, more than the 1 allowed" in line and "chips=N" in line
    needed = int(line.split(" = ")[1].split()[0])
    program = hwq.compile(net, "loihi", limits=small, chips=str(needed))
    assert program.report["resources"]["chips"] == needed == program.report["resources"]["chips_allowed"]
    assert_exact(program, extreme_codes(net, 20))
    with pytest.raises(LimitError):
        hwq.compile(net, "loihi", limits=small, chips=needed - 1)
    for bad in ("0", "two"):
        with pytest.raises(UsageError, match="chips"):
            hwq.compile(net, "loihi", chips=bad)


def test_a_large_cnn_needs_more_than_one_chip_of_loihi():
    """Loihi 1's figures: 147456 step neurons in 9 maps of 128 x 128 alone take more than one chip
    (refused before any emulator is built)."""
    rng = np.random.default_rng(0)
    c0 = conv_layer(rng, (1, 128, 128), 9, (3, 3), "step", pads=P1, in_scale=1 / 128)
    c1 = conv_layer(rng, c0.out_shape, 3, (3, 3), "identity", stride=(2, 2), in_max=1)
    net = QuantizedNetwork(InputFormat(8, False, 128.0), (c0, c1), "argmax", QuantSettings(bits=8), None,
                           input_shape=(1, 128, 128))
    with pytest.raises(LimitError, match=r"Loihi chips of 128 cores, more than the 2 allowed") as info:
        hwq.compile(net, "loihi", chips=2)
    assert "\n" not in info.value.line() and "layer" in info.value.line()


def test_every_compiled_cnn_refusal_is_an_hwq_error():
    """No CNN of this file crashes the mapping: each compiles or raises an HwqError."""
    for name in STEP_CNNS:
        try:
            hwq.compile(step_cnn(name), "loihi", limits=Limits(neurons_per_core=8, cores_per_chip=2))
        except HwqError as exc:
            assert "\n" not in exc.line()


@pytest.mark.parametrize("name, why", [("asymmetric-pads-strides", "is asymmetric"),
                                       ("sumpool", "truncating average pooling maps to a SigmaDelta relay")])
def test_netx_export_of_a_cnn_is_refused_in_one_line(tmp_path, name, why):
    """netx writes step CNNs (tests/test_export_netx.py); what its conv layers cannot hold exactly
    (asymmetric padding, a pooling relayed through a SigmaDelta with a weight exponent) is
    refused in one line and no file is left, never written approximately."""
    from hwq_targets.loihi.netx import write_netx

    program = hwq.compile(step_cnn(name), "loihi")
    path = tmp_path / "cnn.net"
    with pytest.raises(TargetError, match=why) as err:
        write_netx(program, path)
    assert "\n" not in str(err.value) and not path.exists()


def test_hwq_info_shows_the_resource_table(tmp_path, capsys):
    """``hwq info`` on a loihi CNN prints the per-layer resources (neurons, synapses, axons,
    cores) with the totals and the chips, the same numbers as the program's report."""
    from cli_runner import run_cli

    program = hwq.compile(step_cnn("maxpool"), "loihi")
    path = tmp_path / "cnn.hwq"
    save_program(path, program)
    code, out, err = run_cli("info", path, capsys=capsys)
    assert code == 0, err
    assert "neurons" in out and "synapses" in out and "cores" in out and "chips: 1 of 1 allowed" in out
    total = program.report["resources"]
    line = next(row for row in out.splitlines() if row.startswith("total"))  # the resource table's
    assert f"{total['synapses']:,}" in line and f"{total['neurons']:,}" in line


@pytest.mark.parametrize("vnni", [None, False])
def test_patch_product_is_exact_and_falls_back_beyond_the_format(vnni):
    """A first convolution runs as the dense product of its channels over the gathered patch
    matrix (VNNI where the CPU has it); codes beyond the input format (here 300 and -7 for an
    8-bit unsigned format) make the chunk fall back to a plan proven for them, still exact; the
    trace (``a`` of every neuron, Loihi's order o P + p) equals the unrolled matrix's."""
    from hwq_targets.loihi.conv import dense_view
    from hwq_targets.loihi.emulator import CompiledLayer, Emulator, PatchDense

    net = step_cnn("maxpool")
    program = hwq.compile(net, "loihi")
    emulator = Emulator(program.mapping, use_vnni=vnni)
    assert isinstance(emulator.layers[0], PatchDense) and "patches" in emulator.report[0]
    x = extreme_codes(net, 60)
    np.testing.assert_array_equal(emulator.run(x), reference.forward(net, x))
    wide = x.copy()
    wide[5, 7], wide[9, 0] = 300, -7
    np.testing.assert_array_equal(emulator.run(wide), reference.forward(net, wide))
    traced = emulator.inputs(x[:4])
    assert [t.shape for t in traced] == [(4, lm.n_out) for lm in program.mapping.layers]
    unrolled = CompiledLayer(dense_view(program.mapping.layers[0]))  # the (C_out P, C H W) matrix
    np.testing.assert_array_equal(traced[0], unrolled.inputs(np.ascontiguousarray(x[:4], np.float64)))
