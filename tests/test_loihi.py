"""The loihi target without Lava: mapping, limits, the emulator against the step-by-step spec
of the Lava process graph (hypothesis), report, artifacts, errors, compare_programs.

The Lava comparisons are in test_loihi_lava.py; the network builders here serve both."""

from __future__ import annotations

import functools
import json
import types

import numba as nb
import numpy as np
import pytest
from builders import random_mlp
from hwq_targets.common import avx2, vnni
from hwq_targets.loihi import Limits, LoihiTarget, kernels
from hwq_targets.loihi.emulator import Emulator
from hwq_targets.loihi.spec import run_spec
from hwq_targets.loihi.synapses import lava_effective, shift, split_digits, synapse_sets
from hypothesis import given, settings
from hypothesis import strategies as st

import hwq
from hwq.errors import DataError, FileFormatError, LimitError, TargetError, UsageError
from hwq.files.program import load_program, save_program
from hwq.onnx.importer import graph_from_model
from hwq.quant.qnet import QuantSettings
from hwq.quant.quantize import quantize
from hwq.quant.reference import forward as reference_forward
from hwq.quant.reference import quantize_input
from hwq.quant.schemes import get_scheme
from hwq.target.compare import compare_programs
from hwq.target.registry import get_target

LOIHI = LoihiTarget()


from factories import big_bias_net, codes, make_layer, make_net, onnx_net, random_net, weights  # noqa: F401,E402


# ---------------------------------------------------------------- deliberately wrong kernels
@nb.njit(inline="always")
def truncating_shift(v, k):
    return -((-v) >> k) if v < 0 else v >> k


@nb.njit(inline="always")
def no_wrap(u):
    return u


@nb.njit(inline="always")
def fires_at_threshold(v, theta):
    return v >= theta


# one arithmetic rule of kernels.py swapped: shifts toward zero, firing on v >= theta, no 24-bit wrap
WRONG_RULES = {"trunc": {"floor_shift": truncating_shift}, "ge": {"crosses": fires_at_threshold},
               "nowrap": {"wrap_current": no_wrap}}
KERNEL_CHAIN = ("shifted", "add_shifted", "fire", "fused", "vnni_blocks", "avx2_blocks")  # callees first


def rejit(dispatcher, swap: dict):
    """``dispatcher``'s own Python source compiled again with the globals in ``swap`` replaced."""
    f = dispatcher.py_func
    new = types.FunctionType(f.__code__, {**f.__globals__, **swap}, f.__name__, f.__defaults__, f.__closure__)
    return nb.njit(**{k: v for k, v in dispatcher.targetoptions.items() if k not in ("cache", "nopython")})(new)


@functools.cache
def wrong_kernels(rule: str) -> dict:
    """The emulator's kernels (``KERNEL_CHAIN``) rebuilt on one wrong rule (``WRONG_RULES``)."""
    swap = dict(WRONG_RULES[rule])
    for name in KERNEL_CHAIN:
        swap[name] = rejit(getattr(kernels, name), swap)
    return {name: swap[name] for name in KERNEL_CHAIN}


def run_wrong(mapping, rule: str, x) -> np.ndarray:
    """Scores of an emulator whose kernels break ``rule``, injected from outside the production
    code. ``trunc`` runs on the BLAS path only: its sums may leave the input ranges that the 8-
    and 16-bit containers of the VNNI/AVX2 paths are sized by."""
    options = {"use_vnni": False, "use_avx2": False} if rule == "trunc" else {}
    with pytest.MonkeyPatch.context() as patch:
        for name, kernel in wrong_kernels(rule).items():
            patch.setattr(kernels, name, kernel)
        return Emulator(mapping, **options).run(x)


# ---------------------------------------------------------------- synapse groups
@given(st.integers(0, 2**31), st.integers(1, 17), st.integers(0, 12))
@settings(max_examples=60, deadline=None)
def test_synapse_groups_are_exact_8bit_lava_weights(seed, bits, r):
    rng = np.random.default_rng(seed)
    top = 2**bits - 1
    w = rng.integers(-top, top + 1, (5, 7))
    h = rng.integers(0, 256, (7, 4))
    assert sum(d << e for d, e in split_digits(w)).tolist() == w.tolist()
    sets = synapse_sets(w, r, 0, Limits())
    exps = [e - r for _, e in split_digits(w)]
    if isinstance(sets, str):  # a refusal must be the one the exponent range forces
        assert (sets == "high" and max(exps) > 7) or (sets == "low" and min(exps) < -7), (sets, exps)
        return
    for s in sets:
        assert lava_effective(s.lava_weights, s.mode).tolist() == s.lava_weights.tolist()
        assert -8 <= s.lava_weight_exp <= 7
    floored = sum(s.exp < 0 for s in sets)
    total = sum(shift(s.digits @ h, s.exp) for s in sets)
    exact = (w @ h) >> r  # Python-integer-sized int64: |w @ h| < 2^17 * 256 * 7
    if floored <= 1:
        assert total.tolist() == exact.tolist()
    else:  # groups floored separately: each floor loses less than one unit
        assert ((exact - total) >= 0).all() and ((exact - total) <= floored - 1).all()


def test_uniform_8bit_needs_two_groups_narrow_8bit_one():
    uniform = get_scheme("uniform").levels(8)
    narrow = get_scheme("narrow").levels(8)
    assert len(split_digits(uniform[None, :])) == 2
    assert len(split_digits(narrow[None, :])) == 1


# ---------------------------------------------------------------- emulator vs spec
@given(st.integers(0, 2**31), st.lists(st.sampled_from(["step", "relu", "identity"]),
                                       min_size=1, max_size=3),
       st.sampled_from([1, 7, 127, 255, 2047, 32767, 65535]),
       st.sampled_from(["mixed", "excitatory", "inhibitory"]), st.booleans(),
       st.sampled_from([0.0, 0.5, 3.0]))
@settings(max_examples=80, deadline=None)
def test_emulator_equals_spec(seed, acts, top, sign, signed, bias_scale):
    """Random depths and activations (a hidden identity is a SigmaDelta UNIT with a Sigma)."""
    rng = np.random.default_rng(seed)
    net = random_net(rng, 6, [5] * len(acts), acts, top, sign, signed=signed,
                     bias_scale=bias_scale)
    program = LOIHI.compile(net)
    x = codes(rng, net, 9)
    assert program.forward(x).tolist() == run_spec(program.mapping, x).tolist()


@given(st.integers(0, 2**31), st.sampled_from([0, 1, 2]))
@settings(max_examples=30, deadline=None)
def test_emulator_equals_spec_with_forced_shifts(seed, r):
    """Shifts smaller than the automatic ones: the LIF current wraps, v saturates."""
    rng = np.random.default_rng(seed)
    net = random_net(rng, 8, [6], ["step"], 127, bias_scale=30.0)
    program = LOIHI.compile(net, shifts=[r, 0])
    x = codes(rng, net, 9)
    assert program.forward(x).tolist() == run_spec(program.mapping, x).tolist()


def equality_net():
    """A step layer whose sums hit its threshold exactly on many inputs."""
    rng = np.random.default_rng(3)
    w1 = rng.integers(-1, 2, (6, 8))
    l1 = make_layer(w1, [-1, -2, 0, 1, -3, -1], "step")
    l2 = make_layer(rng.integers(-3, 4, (3, 6)), [0, 0, 0], "identity")
    return make_net([l1, l2], input_bits=2)


def wrap_net():
    rng = np.random.default_rng(4)
    l1 = make_layer(rng.integers(60, 128, (6, 12)) * np.sign(rng.normal(size=(6, 12))).astype(int),
                    rng.integers(-50, 50, 6), "step")
    l2 = make_layer(rng.integers(-3, 4, (3, 6)), [0, 0, 0], "identity")
    return make_net([l1, l2])


@pytest.mark.parametrize("rule, net, shifts", [
    ("ge", equality_net(), None),
    ("nowrap", wrap_net(), [0, 0]),
    ("trunc", random_net(np.random.default_rng(5), 8, [6], ["relu"], 127), None),
])
def test_spec_catches_wrong_emulators(rule, net, shifts):
    x = codes(np.random.default_rng(0), net, 64)
    right = LOIHI.compile(net, shifts=shifts)
    assert right.forward(x).tolist() == run_spec(right.mapping, x).tolist()
    assert run_wrong(right.mapping, rule, x).tolist() != run_spec(right.mapping, x).tolist()
    assert right.forward(x).tolist() == run_spec(right.mapping, x).tolist()  # the injection left nothing behind


# ---------------------------------------------------------------- mapping and semantics
def test_exact_where_no_rounding_is_needed():
    """Small step networks need no shift: Loihi computes exactly hwq's integer semantics."""
    rng = np.random.default_rng(1)
    net = random_net(rng, 8, [6], ["step"], 7, input_bits=4)
    program = LOIHI.compile(net)
    assert [lm.shift for lm in program.mapping.layers] == [0, 0]
    x = codes(rng, net, 200)
    h = (x @ net.layers[0].weight.T + net.layers[0].bias > 0).astype(np.int64)
    assert program.forward(x).tolist() == (h @ net.layers[1].weight.T + net.layers[1].bias).tolist()


def test_threshold_is_strict():
    net = equality_net()
    program = LOIHI.compile(net)
    x = codes(np.random.default_rng(0), net, 300)
    acc = x @ net.layers[0].weight.T + net.layers[0].bias
    assert (acc == 0).any()
    z = program.trace(x)[0]
    assert ((z > 0) == (acc > 0)).all()


@pytest.mark.parametrize("act", ["step", "relu"])
def test_large_biases_on_16bit_inputs_are_not_clipped(act):
    """16-bit signed inputs, biases across the whole sum range: the shift is raised until the
    bias/threshold offset is representable instead of clipping it, and the decisions of the
    hidden layer match hwq's ``acc > 0`` (step) to within the floor's precision."""
    rng = np.random.default_rng(5)
    net = big_bias_net(rng, act)
    program = LOIHI.compile(net)
    whats = [a["what"] for a in program.report["adjustments"]]
    assert not any("clipped" in w for w in whats), whats
    lm = program.mapping.layers[0]
    x = codes(rng, net, 4000)
    assert program.forward(x).tolist() == run_spec(program.mapping, x).tolist()
    acc = x @ net.layers[0].weight.T + net.layers[0].bias
    z = program.trace(x)[0]
    if act == "step":
        assert "shift raised to represent the bias/threshold offsets" in whats
        assert lm.shift > 3  # the 24-bit state alone needs 3; the offsets need more
        assert ((z > 0) == (acc > 0)).mean() >= 0.99
        # the neurons that always (never) fire still always (never) fire
        assert (z[:, [0, 2]] > 0).all() and (z[:, [1, 3]] <= 0).all()
    else:
        assert ((z > 0) == (acc > 0)).mean() >= 0.99


def test_offset_clipping_is_the_last_resort():
    """A forced shift too small for the offsets still maps, with the clipping reported."""
    net = big_bias_net(np.random.default_rng(5))
    program = LOIHI.compile(net, shifts=[3, 0])
    assert any(a["what"] == "LIF bias/threshold out of range (offset clipped)"
               for a in program.report["adjustments"])
    x = codes(np.random.default_rng(6), net, 300)
    assert program.forward(x).tolist() == run_spec(program.mapping, x).tolist()


def test_sigmoid_is_refused_with_a_hint():
    rng = np.random.default_rng(0)
    net, _ = onnx_net(rng, "Sigmoid", 4)
    with pytest.raises(TargetError, match="sigmoid") as info:
        LOIHI.compile(net)
    assert "sim" in str(info.value) and "step" in str(info.value)


def test_per_channel_relu_is_refused_step_is_mapped():
    rng = np.random.default_rng(0)
    net, _ = onnx_net(rng, "Relu", 4, per_channel=True)
    with pytest.raises(LimitError, match="per-channel"):
        LOIHI.compile(net)
    net, _ = onnx_net(rng, "step", 4, per_channel=True)
    LOIHI.compile(net)


@pytest.mark.parametrize("act", ["Relu", "step"])
@pytest.mark.parametrize("bits, scheme", [(1, "narrow"), (4, "narrow"), (8, "uniform"),
                                          (12, "pow2"), (16, "uniform")])
def test_all_bit_widths_map_within_limits(act, bits, scheme):
    rng = np.random.default_rng(bits)
    net, x = onnx_net(rng, act, bits, scheme)
    program = LOIHI.compile(net)
    for layer in program.report["layers"]:
        assert all(-8 <= g["weight_exp"] <= 7 for g in layer["groups"])
    assert program.report["resources"]["cores"] >= 2
    xq = quantize_input(net.input, x)
    assert program.forward(xq).tolist() == run_spec(program.mapping, xq).tolist()


def test_forced_shift_is_reported():
    program = LOIHI.compile(wrap_net(), shifts=[0, 0])
    assert any("wrap" in a["what"] for a in program.report["adjustments"])
    assert not LOIHI.compile(wrap_net()).mapping.forced[0]


def test_report_is_json_and_counts_resources():
    rng = np.random.default_rng(0)
    net, _ = onnx_net(rng, "Relu", 4, n_in=20, hidden=8, out=4)
    report = LOIHI.compile(net).report
    json.dumps(report)
    layers = report["layers"]
    assert [e["neurons"] for e in layers] == [8, 4]
    assert layers[0]["helper_neurons"] == 16  # relay + Sigma per hidden SigmaDelta neuron
    assert layers[0]["synapses"] == 8 * 20 + 8
    assert report["latency_steps"] == 2 and report["resources"]["chips"] == 1


def test_tiny_core_limits_are_enforced():
    rng = np.random.default_rng(0)
    net, _ = onnx_net(rng, "step", 4, n_in=20)
    with pytest.raises(LimitError, match="core"):
        LOIHI.compile(net, limits=Limits(synapse_bits_per_core=64))
    report = LOIHI.compile(net, limits=Limits(neurons_per_core=2)).report
    assert report["layers"][0]["cores"] == 3


# ---------------------------------------------------------------- program protocol
def test_program_protocol_and_dtypes():
    rng = np.random.default_rng(2)
    net, x = onnx_net(rng, "Relu", 4)
    program = hwq.compile(net, target="loihi")
    xq = quantize_input(net.input, x)
    scores = program.forward(xq.astype(np.float32))
    assert scores.dtype == np.int64 and scores.shape == (len(x), 3)
    assert scores.tolist() == program.forward(xq).tolist()
    assert program.target == "loihi" and program.net is net
    zs = program.trace(xq)
    assert [z.shape for z in zs] == [(len(x), 6), (len(x), 3)]
    assert np.allclose(zs[-1], scores * program.mapping.layers[-1].unit)
    assert program.decide(scores).tolist() == np.argmax(scores, axis=1).tolist()
    with pytest.raises(DataError):
        program.forward(xq[:, :5])


def test_options_are_checked():
    net = equality_net()
    with pytest.raises(UsageError, match="backend"):
        LOIHI.compile(net, backend="chip")
    with pytest.raises(UsageError, match="unknown loihi option"):
        LOIHI.compile(net, speed=3)
    with pytest.raises(TargetError, match="shifts"):
        LOIHI.compile(net, shifts=[0])


def test_hwq_file_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    net, x = onnx_net(rng, "Relu", 12)
    program = LOIHI.compile(net)
    save_program(tmp_path / "m.hwq", program)
    loaded = load_program(tmp_path / "m.hwq")
    xq = quantize_input(net.input, x)
    assert loaded.target == "loihi"
    assert loaded.forward(xq).tolist() == program.forward(xq).tolist()
    assert loaded.report["adjustments"] == program.report["adjustments"]


def test_load_rejects_foreign_artifacts():
    net = equality_net()
    with pytest.raises(FileFormatError):
        LOIHI.load(net, {})
    art = LOIHI.compile(wrap_net()).artifacts
    with pytest.raises(FileFormatError, match="do not match"):
        LOIHI.load(net, art)


def test_attack_runs_on_the_emulator():
    """Accuracy per epsilon against an independent recomputation: the FGSM points built
    here from the surrogate's sign, quantized by the reference, scored by the step-by-step
    spec, decided by numpy's argmax (first maximum), against labels that are not the
    program's own predictions."""
    from hwq.attack.gradients import default_gradient

    rng = np.random.default_rng(7)
    net, x = onnx_net(rng, "step", 4)
    program = LOIHI.compile(net)
    y = rng.integers(0, net.n_classes, len(x))
    eps = [0.0, 0.1, 0.3]
    result = hwq.attack(program, x, y, eps, bounds=(0, 1))
    _, grad = default_gradient(program).value_and_grad(x, y)
    want = []
    for e in eps:
        points = np.clip(x + e * np.sign(grad), 0, 1)
        scores = run_spec(program.mapping, quantize_input(net.input, points))
        want.append(np.mean(np.argmax(scores, axis=1) == y))
    assert result.accuracy.tolist() == want and result.target == "loihi"
    assert 0 < want[0] < 1 and want[2] < want[0]


# ---------------------------------------------------------------- compare_programs
def test_compare_programs():
    rng = np.random.default_rng(8)
    net, x = onnx_net(rng, "Relu", 4)
    xq = quantize_input(net.input, x)
    loihi, sim = LOIHI.compile(net), get_target("sim").compile(net)
    same = compare_programs(loihi, loihi, xq)
    assert same["decisions_differ"] == 0 and same["scores_differ"] == 0
    diff = compare_programs(sim, loihi, xq)
    assert diff["targets"] == ["sim", "loihi"] and diff["inputs"] == len(x)
    sim_dec = np.argmax(reference_forward(net, xq), axis=1)
    loihi_dec = np.argmax(run_spec(loihi.mapping, xq), axis=1)
    assert diff["decisions_differ"] == int(np.sum(sim_dec != loihi_dec))
    assert diff["scores_differ_fraction"] == diff["scores_differ"] / len(x)
    with pytest.raises(UsageError):
        compare_programs(sim, LOIHI.compile(equality_net()), xq)


# ---------------------------------------------------------------- VNNI product path
# The emulator's product families on this host, as its options: "blas" (float BLAS / int64,
# every CPU), "avx2" (the AVX2 int16 product, where the CPU has AVX2), "vnni" (AVX-512 VNNI,
# where the CPU has it). A VNNI machine tests all three, others the rest with nothing skipped.
OPTIONS = {"blas": {"use_vnni": False, "use_avx2": False}}
if avx2.available():
    OPTIONS["avx2"] = {"use_vnni": False, "use_avx2": True}
if vnni.available():
    OPTIONS["vnni"] = {"use_vnni": True, "use_avx2": False}
FAMILIES = list(OPTIONS)
BLAS = ("float32", "float64", "int64")


def two_digit_net(rng, n_in=40):
    """Weights ``256 a + b`` with ``b`` in [0, 127]: two synapse groups that both fit int8."""
    w = 256 * rng.integers(-3, 4, (7, n_in)) + rng.integers(0, 128, (7, n_in))
    l1 = make_layer(w, rng.integers(-40000, 40000, 7), "step")
    l2 = make_layer(rng.integers(-7, 8, (3, 7)), [0, 5, -5], "identity")
    return make_net([l1, l2])


def assert_paths_agree(program, x, spec_rows=12, family="vnni"):
    """The emulator on ``family``'s products = the pre-VNNI emulator (BLAS / int64) = the
    step-by-step spec."""
    fast = Emulator(program.mapping, **OPTIONS[family])
    slow = Emulator(program.mapping, **OPTIONS["blas"])
    assert not any(c.vnni or c.avx2 for c in slow.layers)
    want = slow.run(x)
    assert fast.run(x).tolist() == want.tolist()
    assert [a.tolist() for a in fast.inputs(x)] == [a.tolist() for a in slow.inputs(x)]
    assert want[:spec_rows].tolist() == run_spec(program.mapping, x[:spec_rows]).tolist()
    return fast


@pytest.mark.parametrize("family", FAMILIES)
@given(st.integers(0, 2**31), st.lists(st.sampled_from(["step", "relu", "identity"]),
                                       min_size=1, max_size=3),
       st.sampled_from([1, 7, 127, 255]), st.sampled_from(["mixed", "excitatory", "inhibitory"]),
       st.booleans(), st.sampled_from([0.0, 0.5, 3.0]), st.sampled_from([2, 47, 49, 200]))
@settings(max_examples=40, deadline=None)
def test_vnni_emulator_equals_blas_emulator_and_spec(family, seed, acts, top, sign, signed, bias_scale, n):
    """Random networks and batch sizes around the 48-row block, in every input container."""
    rng = np.random.default_rng(seed)
    net = random_net(rng, 37, [21] * len(acts), acts, top, sign, signed=signed,
                     bias_scale=bias_scale)
    program = LOIHI.compile(net)
    x = codes(rng, net, n)
    fast = assert_paths_agree(program, x, family=family)
    if top <= 127 and sign == "mixed":
        assert fast.report[0] == family if family != "blas" else fast.report[0] in BLAS
    want = fast.run(x).tolist()
    for dtype in (np.float32, np.float64, np.int8 if signed else np.uint8, np.int16):
        assert fast.run(x.astype(dtype)).tolist() == want


@pytest.mark.parametrize("family", FAMILIES)
@given(st.integers(0, 2**31), st.sampled_from([["step"], ["relu"], ["relu", "step"]]),
       st.sampled_from([1, 7, 127]), st.sampled_from(["mixed", "excitatory", "inhibitory"]),
       st.booleans(), st.sampled_from([2, 49, 200]))
@settings(max_examples=25, deadline=None)
def test_vnni16_emulator_on_16bit_inputs(family, seed, acts, top, sign, signed, n):
    """16-bit inputs on two byte planes: equal to the BLAS emulator and the step-by-step spec,
    in the uint16/int16 containers (byte view) and others (checked packing)."""
    rng = np.random.default_rng(seed)
    net = random_net(rng, 60, [13] * len(acts), acts, top, sign, input_bits=16, signed=signed,
                     bias_scale=0.5)
    program = LOIHI.compile(net)
    x = codes(rng, net, n)
    fast = assert_paths_agree(program, x, family=family)
    assert fast.report[0] == {"vnni": "vnni16", "avx2": "avx2"}[family] if family != "blas" else fast.report[0] in BLAS
    want = fast.run(x).tolist()
    for dtype in (np.int16 if signed else np.uint16, np.float64, np.int32):
        assert fast.run(x.astype(dtype)).tolist() == want


@pytest.mark.parametrize("family", FAMILIES)
def test_vnni_emulator_on_the_benchmark_shape(family):
    """784-100-10, 4-bit, step and ReLU: every layer VNNI; ReLU activations beyond 8 bits on
    two byte planes. Without VNNI: float32 BLAS (every sum below 2^24)."""
    rng = np.random.default_rng(11)
    shapes = {"vnni": (("step", ["vnni", "vnni"]), ("Relu", ["vnni", "vnni16"])),
              "avx2": (("step", ["avx2", "avx2"]), ("Relu", ["avx2", "avx2"])),
              "blas": (("step", ["float32", "float32"]), ("Relu", ["float32", "float32"]))}
    for act, paths in shapes[family]:
        graph = graph_from_model(random_mlp(rng, 784, 100, 10, act=act))
        x = rng.uniform(0, 1, (500, 784))
        net = quantize(graph, QuantSettings(4, "narrow"), x, bounds=(0, 1))
        program = LOIHI.compile(net)
        fast = assert_paths_agree(program, quantize_input(net.input, x), spec_rows=3, family=family)
        assert fast.report == paths


@pytest.mark.parametrize("family", FAMILIES)
def test_vnni_emulator_two_groups(family):
    rng = np.random.default_rng(12)
    net = two_digit_net(rng)
    program = LOIHI.compile(net)
    assert len(program.mapping.layers[0].sets) == 2
    fast = assert_paths_agree(program, codes(rng, net, 100), family=family)
    assert fast.report == {"vnni": ["vnni", "vnni"], "avx2": ["avx2", "avx2"], "blas": ["float32", "float32"]}[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_vnni_emulator_falls_back_on_codes_outside_the_format(family):
    """Codes beyond 8 bits cannot be packed: the chunk reruns on the exact BLAS/int64 path
    (without VNNI: layer 0's range check sends it there)."""
    rng = np.random.default_rng(13)
    net = random_net(rng, 20, [9], ["relu"], 7)
    program = LOIHI.compile(net)
    fast, slow = Emulator(program.mapping, **OPTIONS[family]), Emulator(program.mapping, **OPTIONS["blas"])
    assert fast.report[0] == {"vnni": "vnni", "avx2": "avx2", "blas": "float32"}[family]
    x = codes(rng, net, 100)
    x[5, 3], x[60, 0] = 300, -2
    assert fast.run(x).tolist() == slow.run(x).tolist() == run_spec(program.mapping, x).tolist()
    assert [a.tolist() for a in fast.inputs(x)] == [a.tolist() for a in slow.inputs(x)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("act", ["relu", "step"])
def test_codes_outside_the_format_are_exact_against_spec_and_python_ints(family, act):
    """Issue 8 defect 2: a row of codes at 2^24 + 1 used to run layer 0 in float32 (planned
    from the format) and give 5767037440 for 5767037527; without VNNI layer 0 was not
    checked at all. Compared with the step-by-step spec and with layer 0's ``a`` in Python
    integers."""
    rng = np.random.default_rng(21)
    net = random_net(rng, 50, [9], [act], 7)
    program = LOIHI.compile(net)
    emu = Emulator(program.mapping, **OPTIONS[family])
    assert emu.report[0] == {"vnni": "vnni", "avx2": "avx2", "blas": "float32"}[family]
    x = codes(rng, net, 40)
    x[3] = 2**24 + 1
    x[7, :5] = -(2**20) - 3
    lm = program.mapping.layers[0]
    want_a = [[sum(sum(int(d) * int(v) for d, v in zip(row, xr)) >> -s.exp if s.exp < 0
                   else sum(int(d) * int(v) for d, v in zip(row, xr)) << s.exp
                   for s in lm.sets for row in [s.digits[j].tolist()])
               for j in range(lm.n_out)] for xr in x.tolist()]
    assert emu.inputs(x)[0].tolist() == want_a
    assert emu.run(x).tolist() == run_spec(program.mapping, x).tolist()
    inside = codes(rng, net, 40)  # the fast plan is still used for codes in the format
    assert emu.run(inside).tolist() == run_spec(program.mapping, inside).tolist()


def test_emulator_without_vnni_host(monkeypatch):
    """A host without AVX-512 VNNI: the emulator plans the BLAS / int64 paths only."""
    monkeypatch.setattr(vnni, "available", lambda: False)
    rng = np.random.default_rng(14)
    net = random_net(rng, 20, [9], ["step"], 7)
    program = LOIHI.compile(net)
    assert not program.emulator.use_vnni
    assert program.emulator.report == (["avx2", "avx2"] if avx2.available() else ["float32", "float32"])
    x = codes(rng, net, 60)
    assert program.forward(x).tolist() == run_spec(program.mapping, x).tolist()
    with pytest.raises(ValueError, match="VNNI"):
        Emulator(program.mapping, use_vnni=True)
    monkeypatch.setattr(avx2, "available", lambda: False)
    assert LOIHI.compile(net).emulator.report == ["float32", "float32"]
    with pytest.raises(ValueError, match="AVX2"):
        Emulator(program.mapping, use_avx2=True)


def sign_split_net(rng, act="step"):
    """4-bit mixed weights on 16-bit inputs: the 24-bit state needs a sum shift of 8, one below
    what a mixed-sign group's weight_exp can reach."""
    return random_net(rng, 160, [8], [act], 7, input_bits=16, bias_scale=0.3)


def test_deep_shift_splits_mixed_weights_by_sign_instead_of_rounding():
    rng = np.random.default_rng(5)
    net = sign_split_net(rng)
    prog = LOIHI.compile(net)
    lm = prog.mapping.layers[0]
    assert lm.shift == 8 and lm.weight_round == 0
    assert [(s.mode, s.exp, s.lava_weight_exp) for s in lm.sets] == [
        ("excitatory", -8, -8), ("inhibitory", -8, -8)]
    w = net.layers[0].weight
    assert (lm.sets[0].digits + lm.sets[1].digits).tolist() == w.tolist()  # exact weights
    for s in lm.sets:  # Lava keeps every stored weight
        assert (lava_effective(s.lava_weights, s.mode) == s.lava_weights).all()
    x = codes(rng, net, 200)
    a = prog.emulator.inputs(x)[0]
    pos, neg = np.maximum(w, 0), np.minimum(w, 0)
    assert a.tolist() == (((x @ pos.T) >> 8) + ((x @ neg.T) >> 8)).tolist()  # two floors
    single = (x @ w.T) >> 8
    assert ((single - a) >= 0).all() and ((single - a) <= 1).all()
    assert prog.forward(x).tolist() == run_spec(prog.mapping, x).tolist()
    what = [adj["what"] for adj in prog.report["adjustments"]]
    assert not any("rounded to fit" in w for w in what)
    assert any("split into excitatory and inhibitory" in w for w in what)
    assert "synapse groups floored separately" in what


def test_limits_refuse_weight_widths_the_mapping_cannot_split():
    with pytest.raises(UsageError, match="weight_bits=7 is not supported"):
        Limits(weight_bits=7)
    assert Limits().weight_bits == 8


def test_limits_refuse_an_act_shift_lava_does_not_have():
    """Lava's LIF shifts its input by 6 (``act_shift``, ``vth_shift``) whatever a table says; the
    mapping, the emulator's kernels and the spec all read that one definition. Another
    ``act_shift`` is refused in one line instead of a mapping whose thresholds and offsets are
    placed for 7 while the emulator, the spec and Lava compute with 6."""
    with pytest.raises(UsageError, match="act_shift=7 is not supported") as info:
        Limits(act_shift=7)
    assert "\n" not in str(info.value)
    net = equality_net()
    x = codes(np.random.default_rng(0), net, 64)
    program = LOIHI.compile(net, limits=Limits(act_shift=6))
    lm = program.mapping.layers[0]
    assert lm.theta == lm.vth << Limits().act_shift
    assert program.forward(x).tolist() == run_spec(program.mapping, x).tolist()
