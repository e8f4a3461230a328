"""hwq.quant.reference against the formulas of docs/integer-semantics.md, computed by hand in Python
integers (exact, no numpy arithmetic): rounding, saturation, activations and decisions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwq.quant import reference
from hwq.quant.qnet import InputFormat, QLayer, QuantizedNetwork, QuantSettings, Requant

LUT_HALF = 2048


# --- the formulas, by hand --------------------------------------------------------------------

def oracle_requant(acc: int, m: int, s: int) -> int:
    """``floor((acc * M + 2^(S-1)) / 2^S)``: round half up, in exact integers."""
    return acc * m if s == 0 else (acc * m + 2 ** (s - 1)) // 2**s


def oracle_activate(layer: QLayer, acc: int, j: int) -> int:
    if layer.activation == "identity":
        return acc
    if layer.activation == "step":
        return 1 if acc > 0 else 0
    if layer.activation == "sign":  # +-1; an accumulator of 0 gives +1
        return 1 if acc >= 0 else -1
    m = int(np.broadcast_to(layer.requant.multiplier, layer.bias.shape)[j])
    s = int(np.broadcast_to(layer.requant.shift, layer.bias.shape)[j])
    z = oracle_requant(acc, m, s)
    if layer.activation == "relu":
        return min(max(z, 0), 2**layer.act_bits - 1)
    return int(layer.lut[min(max(z, -LUT_HALF), LUT_HALF - 1) + LUT_HALF])


def oracle_forward(net: QuantizedNetwork, x_q) -> list[list[int]]:
    scores = []
    for row in np.asarray(x_q).tolist():
        h = [int(v) for v in row]
        for layer in net.layers:
            accs = [sum(int(w) * v for w, v in zip(w_row, h)) + int(b)
                    for w_row, b in zip(layer.weight.tolist(), layer.bias.tolist())]
            h = [oracle_activate(layer, a, j) for j, a in enumerate(accs)]
        scores.append(accs)
    return scores


def make_net(layers, fmt=InputFormat(8, False, 255.0), output="argmax"):
    return QuantizedNetwork(fmt, tuple(layers), output, QuantSettings(8), None)


def dense(w, b, activation="identity", act_bits=8, mult=1, shift=0, lut=None):
    w = np.asarray(w, np.int64)
    rq = None if activation in ("identity", "step") else Requant(np.broadcast_to(mult, (len(w),)),
                                                                  np.broadcast_to(shift, (len(w),)))
    return QLayer(w, b, np.ones(len(w)), 1.0, 1.0, activation, act_bits, rq, lut)


# --- input quantization -------------------------------------------------------------------------

@pytest.mark.parametrize("x, code", [
    (0.125, 1), (0.375, 2), (-0.125, 0), (-0.375, -1), (-0.625, -2),  # ties go up (toward +inf)
    (0.124, 0), (0.126, 1), (100.0, 127), (-100.0, -128), (31.75, 127), (31.875, 127),
    (-32.0, -128), (-32.125, -128), (0.0, 0),
])
def test_input_rounds_half_up_and_saturates(x, code):
    fmt = InputFormat(8, True, 4.0)  # x * 4 is exact: ties are exact halves
    assert reference.quantize_input(fmt, np.array([[x]]))[0, 0] == code


def test_unsigned_input_saturates_at_zero_and_top():
    fmt = InputFormat(4, False, 15.0, (0.0, 1.0))
    x = np.array([[-1.0, -0.01, 0.0, 0.5, 1.0, 7.0]])  # 0.5 * 15 = 7.5: a tie, up to 8
    assert reference.quantize_input(fmt, x).tolist() == [[0, 0, 0, 8, 15, 15]]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(-(2**20), 2**20), f=st.integers(0, 12), e=st.integers(0, 8),
       bits=st.integers(2, 16), signed=st.booleans())
def test_input_matches_exact_formula_on_dyadic_values(n, f, e, bits, signed):
    """``x = n / 2^f``, ``inv_scale = 2^e``: float64 is exact, so the reference must equal the
    integer formula ``clip(floor(n 2^e / 2^f + 1/2), qmin, qmax)``."""
    fmt = InputFormat(bits, signed, float(2**e))
    expected = min(max((2 * n * 2**e + 2**f) // 2 ** (f + 1), fmt.qmin), fmt.qmax)
    assert reference.quantize_input(fmt, np.array([[n / 2**f]]))[0, 0] == expected


# --- requantization -------------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(acc=st.integers(-(2**40), 2**40), m=st.integers(1, 2**16), s=st.integers(0, 20))
def test_requantize_is_floor_of_half_up(acc, m, s):
    rq = Requant(np.array([m]), np.array([s]))
    assert reference.requantize(np.array([[acc]]), rq)[0, 0] == oracle_requant(acc, m, s)


@pytest.mark.parametrize("acc, m, s, expected", [
    (1, 1, 1, 1), (-1, 1, 1, 0), (3, 1, 1, 2), (-3, 1, 1, -1),  # +-0.5, +-1.5: half up
    (5, 3, 2, 4), (-5, 3, 2, -4),  # 15/4 = 3.75 -> 4; -3.75 -> -4
    (2, 3, 2, 2), (-2, 3, 2, -1),  # 1.5 -> 2; -1.5 -> -1
    (7, 5, 0, 35), (-7, 5, 0, -35), (0, 9, 3, 0),
    (-(2**40) - 1, 2**15 + 1, 30, ((-(2**40) - 1) * (2**15 + 1) + 2**29) // 2**30),
])
def test_requantize_ties_and_signs(acc, m, s, expected):
    rq = Requant(np.array([m]), np.array([s]))
    assert reference.requantize(np.array([[acc]]), rq)[0, 0] == expected


def test_requantize_is_per_channel():
    rq = Requant(np.array([1, 3, 5]), np.array([0, 1, 4]))
    acc = np.array([[7, 7, 7], [-7, -7, -7]])
    expected = [[oracle_requant(a, m, s) for a, m, s in zip(row, [1, 3, 5], [0, 1, 4])] for row in acc]
    assert reference.requantize(acc, rq).tolist() == expected


# --- activations -------------------------------------------------------------------------------

def test_step_is_strictly_positive():
    layer = dense([[1]], [0], "step")
    acc = np.array([[-5], [-1], [0], [1], [9]])
    assert reference.activate(layer, acc).ravel().tolist() == [0, 0, 0, 1, 1]


def test_relu_clips_to_act_bits():
    layer = dense([[1]], [0], "relu", act_bits=3, mult=3, shift=1)  # z = floor((3a + 1) / 2)
    acc = np.array([[-4], [-1], [0], [1], [2], [4], [5], [100]])
    assert reference.activate(layer, acc).ravel().tolist() == [0, 0, 0, 2, 3, 6, 7, 7]


def test_sigmoid_lut_index_clips_at_the_edges():
    lut = np.arange(2 * LUT_HALF) * 7 - 3  # every index gives a distinct value
    layer = dense([[1]], [0], "sigmoid", mult=1, shift=0, lut=lut)
    z = np.array([[-(10**6)], [-2049], [-2048], [-2047], [-1], [0], [1], [2046], [2047], [2048], [10**6]])
    idx = np.clip(z.ravel(), -LUT_HALF, LUT_HALF - 1) + LUT_HALF
    assert idx.tolist() == [0, 0, 0, 1, 2047, 2048, 2049, 4094, 4095, 4095, 4095]
    assert reference.activate(layer, z).ravel().tolist() == lut[idx].tolist()


def test_sigmoid_requantizes_before_indexing():
    lut = np.arange(2 * LUT_HALF)
    layer = dense([[1]], [0], "sigmoid", mult=1, shift=2, lut=lut)  # z = floor((a + 2) / 4)
    acc = np.array([[-6], [-2], [1], [2], [6]])
    assert reference.activate(layer, acc).ravel().tolist() == [
        LUT_HALF + v for v in (-1, 0, 0, 1, 2)]


# --- accumulators, scores, decisions --------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_forward_matches_hand_computation(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    acts = data.draw(st.lists(st.sampled_from(["identity", "step", "relu", "sigmoid"]),
                              min_size=0, max_size=2))
    sizes = [data.draw(st.integers(1, 6)) for _ in range(len(acts) + 2)]
    big = data.draw(st.sampled_from([1, 7, 127, 2**12]))
    layers = []
    for i, act in enumerate(acts + ["identity"]):
        w = rng.integers(-big, big + 1, (sizes[i + 1], sizes[i]))
        b = rng.integers(-big * 50, big * 50 + 1, sizes[i + 1])
        lut = rng.integers(0, 256, 2 * LUT_HALF) if act == "sigmoid" else None
        layers.append(dense(w, b, act, act_bits=int(rng.integers(1, 9)),
                            mult=rng.integers(1, 2**12, sizes[i + 1]),
                            shift=rng.integers(0, 14, sizes[i + 1]), lut=lut))
    net = make_net(layers)
    x_q = rng.integers(0, 256, (5, sizes[0]))
    assert reference.forward(net, x_q).tolist() == oracle_forward(net, x_q)


def test_accumulators_are_exact_int64_beyond_float():
    w = np.array([[2**30, 2**30 - 1, -(2**29)]])
    net = make_net([dense(w, [2**40])], InputFormat(16, True, 1.0))
    x_q = np.array([[32767, 32767, -32768]])
    assert reference.forward(net, x_q)[0, 0] == oracle_forward(net, x_q)[0][0]
    assert reference.forward(net, x_q).dtype == np.int64


def test_argmax_takes_the_lowest_index_on_ties():
    scores = np.array([[3, 7, 7, 1], [5, 5, 5, 5], [-2, -1, -1, -9], [0, 0, 1, 1]])
    assert reference.decide(scores, "argmax").tolist() == [1, 0, 1, 2]


def test_sign_decides_class_one_only_above_zero():
    scores = np.array([[-3], [-1], [0], [1], [8]])
    assert reference.decide(scores, "sign").tolist() == [0, 0, 0, 1, 1]


def test_forward_ignores_the_last_activation():
    """The scores are the last layer's accumulator, whatever activation it declares."""
    net = make_net([dense([[1, -1]], [0], "relu", mult=1, shift=0)])
    assert reference.forward(net, np.array([[0, 5]]))[0, 0] == -5
