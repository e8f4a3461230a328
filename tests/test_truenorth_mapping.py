"""The truenorth mapping: scores equal hwq's integer reference bit for bit where the program says
``exact``; approximations only by option, named and measured; refusals are clear; the exported
model file runs to the same spikes; the .hwq file round-trips."""

from __future__ import annotations

import numpy as np
import pytest
from factories import big_bias_net, make_layer, make_net, onnx_net, random_net
from hwq_targets.truenorth import TrueNorthTarget, export_model, read_model
from hwq_targets.truenorth.emulator import Emulator

from hwq.errors import FileFormatError, InvalidModelError, LimitError, UsageError
from hwq.files.program import load_program, save_program
from hwq.quant import reference
from hwq.quant.qnet import Requant

TN = TrueNorthTarget()


def schemes(program):
    return [p["scheme"] for p in program.report["layers"]]


@pytest.mark.parametrize("seed,n_in,hidden,top,bits,step", [
    (0, 20, [12], 1, 2, "auto"), (1, 300, [40], 1, 1, "auto"), (2, 30, [10, 8], 3, 2, "auto"),
    (3, 150, [140], 2, 1, "auto"), (5, 40, [16, 12], 1, 1, "count"), (6, 12, [9], 7, 2, "auto"),
    (7, 6, [5], 100, 1, "auto")])
def test_scores_equal_the_reference(seed, n_in, hidden, top, bits, step):
    rng = np.random.default_rng(seed)
    net = random_net(rng, n_in, hidden, ["step"] * len(hidden), top, input_bits=bits)
    program = TN.compile(net, step=step, fidelity_samples=0)
    x = rng.integers(0, 2**bits, (48, n_in))
    x[0] = 2**bits - 1
    assert np.array_equal(program.forward(x), reference.forward(net, x))
    assert program.exact and program.report["exact"] and program.report["cores"] == len(program.mapping.model.cores)
    if step == "count":
        assert "eedn-step" not in schemes(program)


def test_large_fan_in_uses_several_groups():
    rng = np.random.default_rng(4)
    net = random_net(rng, 784, [100], ["step"], 1, input_bits=1, out=10)
    program = TN.compile(net, fidelity_samples=0)
    assert program.report["layers"][0]["groups"] >= 7
    x = rng.integers(0, 2, (16, 784))
    assert np.array_equal(program.forward(x), reference.forward(net, x))


def test_eedn_layers_take_one_tick_each_and_carry_big_biases():
    rng = np.random.default_rng(8)
    w1 = rng.integers(-1, 2, (30, 40)) * 9  # weights of +-9: sums and biases beyond the 255 leak
    b1 = rng.integers(-300, 300, 30)
    b1[:4] = [600, -600, 256, -256]
    layers = [make_layer(w1, b1, "step"), make_layer(rng.integers(-1, 2, (20, 30)), rng.integers(-5, 6, 20), "step"),
              make_layer(rng.integers(-1, 2, (3, 20)), rng.integers(-3, 4, 3), "identity")]
    net = make_net(layers, input_bits=1)
    eedn = TN.compile(net, fidelity_samples=0)
    count = TN.compile(net, step="count", fidelity_samples=0)
    assert schemes(eedn) == ["eedn-step", "eedn-step", "count-output"]
    assert sum(r["bias_axons"] for r in eedn.report["layers"]) > 0
    assert eedn.report["ticks_per_frame"] < count.report["ticks_per_frame"]
    x = rng.integers(0, 2, (64, 40))
    ref = reference.forward(net, x)
    assert np.array_equal(eedn.forward(x), ref) and np.array_equal(count.forward(x), ref)
    # the memoryless neuron: no spikes without input (no positive leak anywhere)
    for core in eedn.mapping.model.cores:
        assert np.all(core.neurons.leak <= 0)


def test_a_wrong_eedn_leak_breaks_exactness():
    """The check can fail: shift one eedn neuron's leak and the scores change."""
    rng = np.random.default_rng(9)
    net = random_net(rng, 30, [25], ["step"], 1, input_bits=1)
    program = TN.compile(net, fidelity_samples=0)
    x = rng.integers(0, 2, (64, 30))
    assert np.array_equal(program.forward(x), reference.forward(net, x))
    cid = program.mapping.layers[0].cores[0]
    k = program.mapping.model.index()[cid]
    core = program.mapping.model.cores[k]
    leak = np.array(core.neurons.leak)
    leak[core.neurons.exists] -= 3
    bad = type(core)(core.id, core.crossbar, core.axon_type, core.neurons.replace(leak=leak))
    program.emulator = Emulator(type(program.mapping.model)(
        tuple(bad if c.id == cid else c for c in program.mapping.model.cores)))
    assert not np.array_equal(program.forward(x), reference.forward(net, x))


def test_a_wrong_gate_breaks_exactness():
    """The check can fail: drop the last emitter gate and the scores change."""
    rng = np.random.default_rng(0)
    net = random_net(rng, 20, [12], ["step"], 1, input_bits=2)
    program = TN.compile(net, fidelity_samples=0)
    x = rng.integers(0, 4, (32, 20))
    program.mapping.gates.pop()
    assert not np.array_equal(program.forward(x), reference.forward(net, x))


def shift_relu_net(rng, n_in=10, hidden=8, shift=3, act_bits=4):
    """A ReLU layer whose requantization is a pure shift (M = 1): exactly rate-codable."""
    w = rng.integers(-3, 4, (hidden, n_in))
    layer = make_layer(w, rng.integers(-20, 21, hidden), "relu")
    layer = type(layer)(layer.weight, layer.bias, layer.weight_scale, layer.in_scale, 1.0, "relu", act_bits,
                        Requant(np.ones(hidden, np.int64), np.full(hidden, shift)), None, 0.01)
    out = make_layer(rng.integers(-2, 3, (3, hidden)), rng.integers(-5, 6, 3), "identity")
    return make_net([layer, out], input_bits=3)


def test_relu_exact_where_a_rate_ratio_exists():
    rng = np.random.default_rng(10)
    net = shift_relu_net(rng)
    program = TN.compile(net, fidelity_samples=0)
    assert program.exact and schemes(program) == ["count-relu", "count-output"]
    x = rng.integers(0, 8, (64, 10))
    x[0] = 7
    assert np.array_equal(program.forward(x), reference.forward(net, x))
    # can fail: a threshold one too high changes the activations
    plan = program.mapping.layers[0]
    plan.relu["a"] = plan.relu["a"] + 1
    assert not np.array_equal(program.mapped_accs(x)[-1], reference.forward(net, x))


def test_relu_rate_is_approximate_named_and_measured():
    rng = np.random.default_rng(0)
    net, _ = onnx_net(rng, "Relu", 2)
    with pytest.raises(LimitError, match="relu=rate"):
        TN.compile(net)
    program = TN.compile(net, relu="rate", fidelity_samples=32)
    assert not program.exact and program.report["approximations"]
    dev = program.report["layers"][0]["relu"]
    assert dev["max_deviation"] >= 1 and 0 < dev["mismatch_share_of_acc_range"] < 1
    assert 0 <= program.report["fidelity"]["value"] <= 1 and program.report["fidelity"]["inputs"] == 32
    x = rng.integers(0, 256, (24, net.n_features))
    # the cores compute exactly the mapped arithmetic (numpy model of the approximation)
    assert np.array_equal(program.forward(x), program.mapped_accs(x)[-1])
    with pytest.raises(LimitError, match="relu=refuse"):
        TN.compile(net, relu="refuse")


def test_refuses_sigmoid_and_relu_without_requantization():
    rng = np.random.default_rng(0)
    with pytest.raises(LimitError, match="step and ReLU"):
        TN.compile(random_net(rng, 8, [6], ["sigmoid"], 1))
    with pytest.raises(InvalidModelError, match="requantization"):
        TN.compile(random_net(rng, 8, [6], ["relu"], 1))


def test_signed_inputs_exact_by_split_columns():
    rng = np.random.default_rng(11)
    net = random_net(rng, 6, [8], ["step"], 2, input_bits=3, signed=True)
    program = TN.compile(net, fidelity_samples=0)
    assert program.exact
    x = rng.integers(-4, 4, (64, 6))
    x[0], x[1] = -4, 3
    assert np.array_equal(program.forward(x), reference.forward(net, x))


def test_spiral_inputs_are_refused_clearly():
    net = big_bias_net(np.random.default_rng(0))
    with pytest.raises(LimitError, match="partial sum|threshold range"):
        TN.compile(net)


def test_binary_and_stochastic_encodings():
    rng = np.random.default_rng(12)
    net = random_net(rng, 20, [10], ["step"], 1, input_bits=2)
    x = rng.integers(0, 4, (64, 20))
    binary = TN.compile(net, encoding="binary", threshold=2, fidelity_samples=16)
    assert not binary.exact and "binarized" in binary.report["approximations"][0]
    assert schemes(binary)[0] == "eedn-step"
    xb = np.where(x >= 2, 3, 0)  # a spike stands for the code 3
    assert np.array_equal(binary.decide(binary.forward(x)), binary.decide(reference.forward(net, xb)))
    sto = TN.compile(net, encoding="stochastic", seed=3, fidelity_samples=0)
    a = sto.forward(x)
    assert np.array_equal(a, sto.forward(x)) and np.array_equal(a[10:20], sto.forward(x)[10:20])
    assert not sto.exact
    one_bit = random_net(rng, 20, [10], ["step"], 1, input_bits=1)
    x1 = rng.integers(0, 2, (32, 20))
    p1 = TN.compile(one_bit, encoding="stochastic", fidelity_samples=0)
    assert p1.exact and np.array_equal(p1.forward(x1), reference.forward(one_bit, x1))
    with pytest.raises(LimitError, match="binary"):
        TN.compile(random_net(rng, 8, [], [], 1, input_bits=2), encoding="binary")


def test_options_are_checked():
    net = random_net(np.random.default_rng(0), 8, [6], ["step"], 1, input_bits=1)
    with pytest.raises(UsageError, match="unknown"):
        TN.compile(net, nope=1)
    with pytest.raises(UsageError, match="encoding"):
        TN.compile(net, encoding="morse")
    with pytest.raises(UsageError, match="threshold"):
        TN.compile(net, threshold=0)


def test_export_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    net = random_net(rng, 20, [12], ["step"], 1, input_bits=2)
    program = TN.compile(net, fidelity_samples=0)
    export_model(program, tmp_path / "net.json")
    again = read_model(tmp_path / "net.json")
    x = rng.integers(0, 4, (8, 20))
    a = Emulator(program.mapping.model).run(program.mapping.ticks, program.drive(x)).counts
    b = Emulator(again).run(program.mapping.ticks, program.drive(x)).counts
    assert np.array_equal(a, b) and a.sum() > 0


def test_hwq_file_round_trip(tmp_path):
    rng = np.random.default_rng(13)
    net, _ = onnx_net(rng, "Relu", 2, n_in=6, hidden=5)  # a real quantized network (float graph kept)
    program = TN.compile(net, relu="rate", seed=5)
    path = tmp_path / "m.hwq"
    save_program(path, program)
    again = load_program(path)
    assert again.target == "truenorth" and again.options == {"relu": "rate", "seed": 5}
    x = rng.integers(0, 256, (32, 6))
    assert np.array_equal(again.forward(x), program.forward(x))
    assert np.array_equal(again.forward(x), again.mapped_accs(x)[-1])
    with pytest.raises(FileFormatError):
        TN.load(net, {**program.artifacts, "digest": "0" * 16}, **program.options)
    with pytest.raises(FileFormatError):
        TN.load(net, {**program.artifacts, "ticks": program.artifacts["ticks"] + 1}, **program.options)


def test_fidelity_and_trace():
    rng = np.random.default_rng(14)
    net = random_net(rng, 12, [8], ["step"], 1, input_bits=2)
    program = TN.compile(net)
    assert program.report["fidelity"]["value"] == 1.0 and "exact" in program.report["fidelity"]["source"]
    x = rng.integers(0, 4, (16, 12))
    assert program.measure_fidelity(x, "test") == 1.0
    z = program.trace(x)
    assert [a.shape for a in z] == [(16, 8), (16, 3)]
    assert np.allclose(z[-1], reference.forward(net, x) * net.layers[-1].acc_scale)
