"""The sim target equals hwq.quant.reference bit for bit: random networks through quantize() (every
activation, scheme, bit width), hand-built extremes, every product path and input dtype."""

from __future__ import annotations

import numpy as np
import pytest
from hwq_targets.common import avx2, vnni
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from test_reference import oracle_forward  # the formulas in Python integers

import hwq
from hwq import ir
from hwq.errors import InvalidModelError, TargetError
from hwq.quant import reference
from hwq.quant.qnet import InputFormat, QLayer, QuantizedNetwork, QuantSettings, Requant

# The product families this host runs, each as sim's compile options: "blas" (float32/float64
# BLAS and the int64 loop, every CPU), "avx2" (the AVX2 int16 product, where the CPU has AVX2),
# "vnni" (AVX-512 VNNI, where the CPU has it). A VNNI machine tests all three; a machine without
# VNNI runs the others with nothing skipped.
PRODUCTS = {"blas": {"vnni": False, "avx2": False}}
if avx2.available():
    PRODUCTS["avx2"] = {"vnni": False, "avx2": True}
if vnni.available():
    PRODUCTS["vnni"] = {"vnni": True, "avx2": False}
FAMILIES = list(PRODUCTS)
LUT_HALF = 2048


# --- network builders (test_export.py uses them too) ---------------------------------------------

def float_graph(rng, sizes, hidden, scale=1.0):
    """An MLP of ``sizes``; ``hidden`` activations ('identity' = two Affines in a row)."""
    nodes = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = rng.normal(0, scale / np.sqrt(n_in), (n_out, n_in))
        nodes.append(ir.Affine(w, rng.normal(0, 0.3 * scale, n_out)))
        if i < len(hidden) and hidden[i] != "identity":
            nodes.append(ir.Activation(hidden[i]))
    output = ir.Output("sigmoid" if sizes[-1] == 1 else "softmax")
    return ir.Graph((sizes[0],), tuple(nodes), output)


@st.composite
def quantized_networks(draw, hidden=("relu", "sigmoid", "step", "identity")):
    """Random networks through ``hwq.quantize`` with any bits, scheme and formats."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    acts = draw(st.lists(st.sampled_from(hidden), min_size=1, max_size=2))
    sizes = [draw(st.integers(1, 40))] + [draw(st.integers(1, 24)) for _ in acts]
    sizes.append(draw(st.sampled_from([1, 2, 5])))
    graph = float_graph(rng, sizes, acts, scale=draw(st.sampled_from([0.05, 1.0, 30.0])))
    unsigned = draw(st.booleans())
    x = rng.uniform(0, 1, (64, sizes[0])) if unsigned else rng.normal(0, 2, (64, sizes[0]))
    try:
        net = hwq.quantize(
            graph, draw(st.integers(1, 16)), calibration=x, bounds=(0.0, 1.0) if unsigned else None,
            scheme=draw(st.sampled_from(["narrow", "pow2", "uniform"])),
            per_channel=draw(st.booleans()), act_bits=draw(st.integers(1, 16)),
            input_bits=draw(st.integers(2, 16)))
    except InvalidModelError:  # quantize refuses requantization beyond 2^62
        assume(False)
    return net, rng


def extreme_codes(rng, fmt: InputFormat, n: int, k: int) -> np.ndarray:
    """Codes in the format: a third at qmin/qmax/0, the rest uniform; first rows all-extreme."""
    x = rng.integers(fmt.qmin, fmt.qmax + 1, (n, k))
    pick = rng.integers(0, 6, (n, k))
    x = np.where(pick == 0, fmt.qmin, np.where(pick == 1, fmt.qmax, np.where(pick == 2, 0, x)))
    x[:1] = fmt.qmax
    x[1:2] = fmt.qmin
    return np.clip(x, fmt.qmin, fmt.qmax)


def dense(w, b, activation="identity", act_bits=8, mult=1, shift=0, lut=None):
    w = np.asarray(w, np.int64)
    rq = None if activation in ("identity", "step") else Requant(
        np.broadcast_to(mult, (len(w),)), np.broadcast_to(shift, (len(w),)))
    return QLayer(w, b, np.ones(len(w)), 1.0, 1.0, activation, act_bits, rq, lut)


def network(layers, fmt=InputFormat(8, False, 255.0), output="argmax") -> QuantizedNetwork:
    return QuantizedNetwork(fmt, tuple(layers), output, QuantSettings(8), None)


def blas_path(weight, lo, hi) -> str:
    """The BLAS/int64 path the bounds of docs/integer-semantics.md section 9 give a layer,
    restated in Python integers: float32 when ``S * peak < 2^24``, float64 below ``2^53``."""
    s = max(sum(abs(int(v)) for v in row) for row in np.asarray(weight).tolist())
    top = s * max(abs(lo), abs(hi))
    return "float32" if top < 2**24 else "float64" if top < 2**53 else "int64"


def avx2_path(weight, lo, hi) -> str:
    """``avx2`` where docs/integer-semantics.md section 9 proves ``vpmaddwd`` exact (weights in
    int16, codes stored in int16 with ``peak * S < 2^31``), restated in Python integers; else
    ``blas_path``."""
    rows = np.asarray(weight).tolist()
    offset = 0 if -(2**15) <= lo and hi < 2**15 else -(2**15) if 0 <= lo and hi < 2**16 else None
    if offset is not None and all(-(2**15) <= v < 2**15 for row in rows for v in row):
        peak = max(abs(lo + offset), abs(hi + offset))
        if peak * max(sum(abs(v) for v in row) for row in rows) < 2**31:
            return "avx2"
    return blas_path(weight, lo, hi)


def assert_sim_exact(net, x_q, products, dtype=None):
    """``products``: a family of PRODUCTS (its compile options), or None (the host's default)."""
    program = hwq.compile(net, "sim", **({} if products is None else PRODUCTS[products]))
    codes = x_q if dtype is None else x_q.astype(dtype)
    expected = reference.trace(net, x_q)
    scores = program.forward(codes)
    assert scores.dtype == np.int64
    np.testing.assert_array_equal(scores, expected[-1])
    for got, want in zip(program.accumulators(codes), expected):
        np.testing.assert_array_equal(got, want)
    assert program.decide(scores).tolist() == python_decide(expected[-1], net.output)
    return program


def python_decide(scores, output):
    """The decision rule of docs/integer-semantics.md section 6 in plain Python (not
    ``reference.decide``, which sim itself uses): lowest index among the largest scores;
    ``sign``: class 1 iff the score is > 0."""
    out = []
    for row in scores.tolist():
        if output == "sign":
            out.append(1 if row[0] > 0 else 0)
        else:
            best = 0
            for j, v in enumerate(row):
                if v > row[best]:
                    best = j
            out.append(best)
    return out


# --- random networks ------------------------------------------------------------------------

@pytest.mark.parametrize("products", FAMILIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=quantized_networks())
def test_random_networks_match_reference(case, products):
    net, rng = case
    x_q = extreme_codes(rng, net.input, 97, net.n_features)
    assert_sim_exact(net, x_q, products)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=quantized_networks(hidden=("relu", "sigmoid", "step")),
       dtype=st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
def test_input_dtypes(case, dtype):
    net, rng = case
    x_q = extreme_codes(rng, net.input, 50, net.n_features)
    assert_sim_exact(net, x_q, None, dtype)


@pytest.mark.parametrize("products", FAMILIES)
@pytest.mark.parametrize("n", [0, 1, 47, 48, 49, 1000])
def test_batch_sizes_across_blocks(n, products):
    rng = np.random.default_rng(n)
    graph = float_graph(rng, [30, 20, 3], ["relu"])
    net = hwq.quantize(graph, 4, calibration=rng.uniform(0, 1, (50, 30)), bounds=(0, 1))
    x_q = extreme_codes(rng, net.input, n, 30) if n else np.zeros((0, 30), np.int64)
    program = assert_sim_exact(net, x_q, products)
    assert program.forward(x_q).shape == (n, 3)


# --- integer networks that reach every path ---------------------------------------------------

MAGNITUDES = (1, 7, 127, 128, 2**12, 2**15, 2**20, 2**30, 2**36)  # vnni, vnni16, f32, f64, int64, ...
FORMATS = (InputFormat(8, False, 255.0), InputFormat(8, True, 1.0), InputFormat(2, False, 3.0),
           InputFormat(12, False, 4095.0), InputFormat(16, False, 65535.0), InputFormat(16, True, 1.0))


@st.composite
def integer_networks(draw):
    """Hand-built integer networks (not through quantize): weight magnitudes from 1 to 2^30,
    8/12/16-bit and 2-bit formats with non-power-of-two scales, every activation, random
    multipliers and shifts (ties and saturation), wide and narrow LUTs. Networks whose
    int64 could wrap are refused by compile (tests/test_bounds.py); they are skipped here."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    fmt = draw(st.sampled_from(FORMATS))
    n = [draw(st.integers(1, 40))]
    acts = draw(st.lists(st.sampled_from(["relu", "sigmoid", "step", "identity", "sign"]), max_size=2))
    layers = []
    for act in [*acts, "identity"]:
        n.append(draw(st.integers(1, 12)))
        big = draw(st.sampled_from(MAGNITUDES))
        w = rng.integers(-big, big, (n[-1], n[-2]), endpoint=True)
        if draw(st.booleans()):
            w[0] = big if big != 128 else -128  # a row at the bound
        b = rng.integers(-big * 64, big * 64, n[-1], endpoint=True)
        kw = {}
        if act in ("relu", "sigmoid"):
            kw = dict(mult=rng.integers(0, 2**16, n[-1]), shift=rng.integers(0, 40, n[-1]),
                      act_bits=draw(st.integers(1, 16)))
            if act == "sigmoid":
                kw["lut"] = rng.integers(-(2**15), 2**15, 2 * LUT_HALF)
        layers.append(dense(w, b, act, **kw))
    return network(layers, fmt), rng


@pytest.mark.parametrize("products", FAMILIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=integer_networks())
def test_integer_networks_match_reference_and_python_integers(case, products):
    net, rng = case
    try:
        program = hwq.compile(net, "sim", **PRODUCTS[products])
    except InvalidModelError:
        event("refused: int64 could wrap")
        assume(False)
    for path in program.report["products"]:
        event(f"path {path}")
    x_q = extreme_codes(rng, net.input, 60, net.n_features)
    assert_sim_exact(net, x_q, products)
    assert program.forward(x_q[:6]).tolist() == oracle_forward(net, x_q[:6])


REACH = [  # (weight magnitude, input format, the path of each family)
    (127, FORMATS[0], {"vnni": "vnni", "avx2": "avx2", "blas": "float32"}),
    (7, FORMATS[4], {"vnni": "vnni16", "avx2": "avx2", "blas": "float64"}),
    (2**12, FORMATS[1], {"vnni": "vnni/w2", "avx2": "avx2", "blas": "float64"}),
    (2**12, FORMATS[5], {"vnni": "vnni16/w2", "avx2": "float64", "blas": "float64"}),
    (2**20, FORMATS[0], {"vnni": "vnni/w3", "avx2": "float64", "blas": "float64"}),
    (2**12, FORMATS[2], {"vnni": "vnni/w2", "avx2": "avx2", "blas": "float32"}),
    (2**20, FORMATS[5], {"vnni": "float64", "avx2": "float64", "blas": "float64"}),
    (2**36, FORMATS[5], {"vnni": "int64", "avx2": "int64", "blas": "int64"})]


@pytest.mark.parametrize("products", FAMILIES)
@pytest.mark.parametrize("big, fmt, paths", REACH)
def test_the_strategy_magnitudes_reach_every_path(big, fmt, paths, products):
    """Each path the strategy is meant to reach, with one of its magnitudes and formats, in
    every product family this host runs."""
    rng = np.random.default_rng(0)
    w = rng.integers(-big, big, (4, 40), endpoint=True)
    w[0] = big
    net = network([dense(w, rng.integers(-big, big, 4))], fmt)
    program = assert_sim_exact(net, extreme_codes(rng, fmt, 50, 40), products)
    assert program.report["products"] == [paths[products]]


# --- every product path ------------------------------------------------------------------------

PATHS = [  # (weight magnitude, input format) -> expected layer-0 path without VNNI
    (7, InputFormat(8, False, 1.0), "float32"),
    (2**15, InputFormat(16, True, 1.0), "float64"),
    (2**30, InputFormat(16, True, 1.0), "int64"),  # 300 * 2^30 * 2^15 = 1e16: int64 holds it
]


@pytest.mark.parametrize("big, fmt, path", PATHS)
def test_product_paths(big, fmt, path):
    rng = np.random.default_rng(big)
    w = rng.integers(-big, big + 1, (6, 300))
    w[0, :] = big  # one row at the bound
    net = network([dense(w, rng.integers(-big, big, 6))], fmt)
    program = assert_sim_exact(net, extreme_codes(rng, fmt, 64, 300), "blas")
    assert program.report["products"] == [path]


@pytest.mark.parametrize("products", FAMILIES)
@pytest.mark.parametrize("fmt", [InputFormat(8, False, 1.0), InputFormat(8, True, 1.0),
                                 InputFormat(3, True, 1.0), InputFormat(1 + 1, False, 1.0)])
def test_vnni_signed_and_unsigned_inputs_at_int8_extremes(fmt, products):
    rng = np.random.default_rng(fmt.bits)
    w = rng.integers(-128, 128, (37, 1030))
    w[0] = -128
    w[1] = 127
    net = network([dense(w, rng.integers(-(2**20), 2**20, 37))], fmt)
    program = assert_sim_exact(net, extreme_codes(rng, fmt, 200, 1030), products)
    want = {"vnni": "vnni", "avx2": "avx2", "blas": blas_path(w, fmt.qmin, fmt.qmax)}
    assert program.report["products"] == [want[products]]


@pytest.mark.parametrize("products", FAMILIES)
def test_vnni_hidden_layer_with_signed_lut(products):
    """A sigmoid LUT with negative values feeds the next layer as int8 (+128 offset)."""
    rng = np.random.default_rng(5)
    lut = rng.integers(-128, 128, 2 * LUT_HALF)
    layers = [dense(rng.integers(-100, 100, (20, 16)), rng.integers(-500, 500, 20), "sigmoid",
                    mult=rng.integers(1, 2**10, 20), shift=rng.integers(0, 12, 20), lut=lut),
              dense(rng.integers(-127, 128, (4, 20)), rng.integers(-9, 9, 4))]
    program = assert_sim_exact(network(layers), extreme_codes(rng, InputFormat(8, False, 1.0), 300, 16), products)
    want = {"vnni": ["vnni", "vnni"], "avx2": ["avx2", "avx2"],
            "blas": [blas_path(layers[0].weight, 0, 255), blas_path(layers[1].weight, -128, 127)]}
    assert program.report["products"] == want[products]


@pytest.mark.parametrize("products", FAMILIES)
@pytest.mark.parametrize("fmt", [InputFormat(16, False, 65535.0), InputFormat(16, True, 1.0),
                                 InputFormat(12, False, 1.0), InputFormat(9, True, 1.0)])
@pytest.mark.parametrize("dtype", [None, np.uint16, np.int16, np.float32])
def test_vnni16_byte_planes_at_16bit_extremes(fmt, dtype, products):
    """16-bit codes (input and a 16-bit relu hidden layer) on two byte planes: weights at
    -128/127, codes at both ends, every container; the 255 input scale is not a power of 2."""
    if dtype is np.uint16 and fmt.signed or dtype is np.int16 and not fmt.signed:
        dtype = np.int32
    rng = np.random.default_rng(fmt.bits)
    w = rng.integers(-128, 128, (21, 300))
    w[0], w[1] = -128, 127
    layers = [dense(w, rng.integers(-(2**30), 2**30, 21), "relu", act_bits=16,
                    mult=rng.integers(1, 2**15, 21), shift=rng.integers(10, 30, 21)),
              dense(rng.integers(-128, 128, (5, 21)), rng.integers(-99, 99, 5))]
    x_q = extreme_codes(rng, fmt, 150, 300)
    program = assert_sim_exact(network(layers, fmt), x_q, products, dtype)
    want = {"vnni": ["vnni16", "vnni16"],
            "avx2": [avx2_path(w, fmt.qmin, fmt.qmax), avx2_path(layers[1].weight, 0, 2**16 - 1)],
            "blas": [blas_path(w, fmt.qmin, fmt.qmax), blas_path(layers[1].weight, 0, 2**16 - 1)]}
    assert program.report["products"] == want[products]


@pytest.mark.parametrize("products", FAMILIES)
@pytest.mark.parametrize("codes16", [False, True])
def test_vnni_int32_bound_at_its_limit(codes16, products):
    """A row with ``255 * S`` just below 2^31 stays on VNNI (8-bit) / two byte planes
    (16-bit) and is exact at the largest codes, against Python integers; one more unit of S
    leaves VNNI for float64 BLAS, still exact."""
    s_max = (2**31 - 1) // 255
    k = -(-s_max // 127)
    w = np.full((3, k), 127, np.int64)
    w[0, -1] = s_max - 127 * (k - 1)  # S = s_max exactly
    w[1, ::2] = -128 // 2  # mixed signs
    w[2, -1] = 0
    fmt = InputFormat(16, False, 1.0) if codes16 else InputFormat(8, False, 255.0)
    x_q = np.stack([np.full(k, fmt.qmax), np.zeros(k, np.int64), np.arange(k) % (fmt.qmax + 1)])
    bias = np.array([-(2**40), 3, 0])
    net = network([dense(w, bias)], fmt)
    program = assert_sim_exact(net, x_q, products)
    want = {"vnni": "vnni16" if codes16 else "vnni", "avx2": "float64" if codes16 else "avx2", "blas": "float64"}
    assert program.report["products"] == [want[products]]
    want = [[sum(int(a) * int(b) for a, b in zip(row, wr)) + int(bj) for wr, bj in zip(w.tolist(), bias.tolist())]
            for row in x_q.tolist()]
    assert program.forward(x_q).tolist() == want
    over = w.copy()
    over[0, -1] += 1  # S = s_max + 1
    assert 255 * int(np.abs(over[0]).sum()) >= 2**31
    program = assert_sim_exact(network([dense(over, bias)], fmt), x_q, products)
    assert program.report["products"] == ["float64"]


def test_vnni_refuses_what_int8_cannot_hold():
    assert not vnni.fits(np.array([[128]]), 0, 255)
    assert not vnni.fits(np.array([[1]]), 0, 256)
    assert not vnni.fits(np.array([[1]]), -129, 0)
    assert not vnni.fits(np.full((1, 2**24), 127), 0, 255)  # 255 * sum|w| reaches 2^31
    assert vnni.fits(np.array([[-128, 127]]), -128, 127)


# --- hand-built extremes -----------------------------------------------------------------------

@pytest.mark.parametrize("products", FAMILIES)
@pytest.mark.parametrize("shift", [0, 1, 2, 3, 7])
def test_requant_ties_round_half_up_for_both_signs(shift, products):
    """acc = x - 128 sweeps every residue mod 2^shift, negative and positive: ties go up."""
    fmt = InputFormat(8, False, 1.0)
    lut = np.arange(2 * LUT_HALF)
    layers = [dense([[1], [1], [-1]], [-128, -128, 128], "relu", act_bits=16, mult=[1, 3, 5],
                    shift=shift),
              dense(np.eye(3, dtype=np.int64), [0, 0, 0], "sigmoid", mult=1, shift=shift, lut=lut),
              dense(np.eye(3, dtype=np.int64), [-2048, -2048, -2048])]
    x_q = np.arange(256).reshape(-1, 1)
    assert_sim_exact(network(layers, fmt), x_q, products)


@pytest.mark.parametrize("products", FAMILIES)
def test_step_is_zero_at_zero_accumulator(products):
    layers = [dense([[1, -1], [-1, 1], [1, 1]], [0, 0, -255], "step"), dense(np.eye(3), [0, 0, 0])]
    x_q = np.array([[0, 0], [5, 5], [6, 5], [5, 6], [255, 0], [0, 255], [128, 127], [255, 255]])
    program = assert_sim_exact(network(layers), x_q, products)
    h = program.forward(x_q)
    assert h[:2].tolist() == [[0, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize("products", FAMILIES)
def test_saturation_and_sigmoid_edges(products):
    """Accumulators far beyond the relu range and the LUT's index range, both signs."""
    lut = np.arange(2 * LUT_HALF) % 251
    w = np.array([[127] * 8, [-127] * 8, [1] * 8, [-1] * 8])
    layers = [dense(w, [0, 0, -1020, 1020], "sigmoid", mult=[2**15 - 1, 2**15 - 1, 1, 1],
                    shift=[3, 3, 0, 0], lut=lut),
              dense(np.eye(4, dtype=np.int64) * 127, [0, 0, 0, 0], "relu", act_bits=5,
                    mult=[1, 3, 2**12, 1], shift=[0, 1, 5, 2]),
              dense(np.ones((2, 4), np.int64), [-1, 1])]
    x_q = extreme_codes(np.random.default_rng(0), InputFormat(8, False, 1.0), 120, 8)
    assert_sim_exact(network(layers), x_q, products)


def test_sign_output_and_argmax_ties():
    fmt = InputFormat(4, True, 1.0)
    ties = network([dense([[1, 0], [1, 0], [0, 1]], [0, 0, 0])], fmt)
    x_q = np.array([[3, 3], [3, -2], [-8, -8], [0, 0]])
    program = assert_sim_exact(ties, x_q, None)
    assert program.decide(program.forward(x_q)).tolist() == [0, 0, 0, 0]
    single = network([dense([[1, -1]], [0])], fmt, output="sign")
    program = assert_sim_exact(single, x_q, None)
    assert program.decide(program.forward(x_q)).tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize("products", FAMILIES)
def test_codes_outside_the_format_stay_exact(products):
    """Layer 0's proof holds for the format; codes beyond it take a path proven for them."""
    rng = np.random.default_rng(1)
    fmt = InputFormat(4, False, 1.0)
    layers = [dense(rng.integers(-7, 8, (9, 50)), rng.integers(-50, 50, 9), "relu", mult=3, shift=4),
              dense(rng.integers(-7, 8, (3, 9)), [0, 0, 0])]
    x_q = extreme_codes(rng, fmt, 100, 50)
    x_q[3, 7] = 2**22
    x_q[5, 1] = -(2**22)
    assert_sim_exact(network(layers, fmt), x_q, products)


def test_last_activation_is_ignored_like_the_reference():
    net = network([dense([[1, -1]], [0], "relu", mult=1, shift=0)])
    assert hwq.compile(net, "sim").forward(np.array([[0, 5]]))[0, 0] == -5


def test_trace_is_accumulator_times_scale():
    rng = np.random.default_rng(2)
    graph = float_graph(rng, [12, 8, 3], ["sigmoid"])
    net = hwq.quantize(graph, 6, calibration=rng.uniform(0, 1, (40, 12)), bounds=(0, 1))
    x_q = extreme_codes(rng, net.input, 30, 12)
    for z, acc, layer in zip(hwq.compile(net, "sim").trace(x_q), reference.trace(net, x_q), net.layers):
        np.testing.assert_array_equal(z, acc * layer.acc_scale)


def test_vnni_required_on_a_cpu_without_it(monkeypatch):
    monkeypatch.setattr(vnni, "available", lambda: False)
    net = network([dense([[1]], [0])])
    with pytest.raises(TargetError, match="VNNI"):
        hwq.compile(net, "sim", vnni=True)
    assert hwq.compile(net, "sim").report["products"] == ["avx2" if avx2.available() else "float32"]


def test_avx2_required_on_a_cpu_without_it(monkeypatch):
    monkeypatch.setattr(vnni, "available", lambda: False)
    monkeypatch.setattr(avx2, "available", lambda: False)
    net = network([dense([[1]], [0])])
    with pytest.raises(TargetError, match="AVX2"):
        hwq.compile(net, "sim", avx2=True)
    assert hwq.compile(net, "sim").report["products"] == ["float32"]


def test_forcing_vnni_and_avx2_off_from_the_environment(monkeypatch):
    """HWQ_VNNI=0 / HWQ_AVX2=0 plan as a CPU without them (how a VNNI machine tests the rest)."""
    net = network([dense([[1, 2]], [0])])
    monkeypatch.setenv("HWQ_VNNI", "0")
    assert not vnni.available()
    assert hwq.compile(net, "sim").report["products"] == ["avx2" if avx2.available() else "float32"]
    monkeypatch.setenv("HWQ_AVX2", "off")
    assert not avx2.available()
    assert hwq.compile(net, "sim").report["products"] == ["float32"]


def test_wrong_feature_count_is_refused():
    program = hwq.compile(network([dense([[1, 2]], [0])]), "sim")
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        program.forward(np.zeros((3, 5)))


def test_shifts_beyond_62_are_refused():
    with pytest.raises(InvalidModelError, match="0..62"):
        network([dense([[1]], [0], "relu", mult=1, shift=63), dense([[1]], [0])])
