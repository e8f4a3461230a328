"""The float formulas written once (``hwq.ir.float_ops``, issues 18 and 19): checked against an
independent reference written here with Python loops from the window formulas
(docs/integer-semantics.md, section 8), never through ``Window.gather_index``; deliberately
wrong variants (a flipped kernel, padding ignored, a pooling's divisor dropped) must fail the
same comparison. Every float forward pass (the evaluator, calibration, the float model's
gradient, training) computes with these formulas, each in the summation order it always had:
checked bit for bit against the forward operators the float gradient used before
(``hwq.attack.transpose``) and by spying on which order each caller asks for.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_attack_cnn import float_cnn

from hwq import ir
from hwq.attack.gradients import FloatGradient
from hwq.attack.transpose import AvgPoolT, ConvT, MaxPoolT
from hwq.ir import activations, evaluate, float_ops
from hwq.ir.conv import AvgPool2d, Conv2d, MaxPool2d, SumPool2d
from hwq.ir.window import Window
from hwq.quant.qnet import QuantSettings
from hwq.quant.quantize import quantize

# -- the reference: plain loops over the formulas --------------------------------------------------


def reads(win: Window, g: int, y: int, x: int):
    """Yield ``(channel offset c in the group, i, j, input (channel, row, column) or None)``."""
    c_all, h, w = win.in_shape
    cg = c_all // win.groups
    for c in range(cg):
        for i in range(win.kernel[0]):
            for j in range(win.kernel[1]):
                yy = y * win.stride[0] - win.pads[0] + i * win.dilation[0]
                xx = x * win.stride[1] - win.pads[1] + j * win.dilation[1]
                yield c, i, j, ((g * cg + c, yy, xx) if 0 <= yy < h and 0 <= xx < w else None)


def loop_conv(win: Window, weight: np.ndarray, bias, gain, x: np.ndarray) -> np.ndarray:
    """``gain[o] (sum W[o, c, i, j] x[g cg + c, y sh - top + i dh, x sw - left + j dw] + b[o])``."""
    n = len(x)
    maps = x.reshape(n, *win.in_shape)
    cout = weight.shape[0]
    og = cout // win.groups
    ho, wo = win.out_hw
    out = np.zeros((n, cout, ho, wo))
    for s in range(n):
        for o in range(cout):
            for y in range(ho):
                for xo in range(wo):
                    acc = 0.0
                    for c, i, j, at in reads(win, o // og, y, xo):
                        if at is not None:
                            acc += weight[o, c, i, j] * maps[s][at]
                    out[s, o, y, xo] = gain[o] * (acc + bias[o])
    return out.reshape(n, -1)


def loop_pool(win: Window, kind: str, x: np.ndarray, shift: int = 0) -> np.ndarray:
    """max over the window inside the image; avg: the sum (padding 0) over ``kh kw``; sum: over ``2^shift``."""
    n = len(x)
    maps = x.reshape(n, *win.in_shape)
    ho, wo = win.out_hw
    out = np.zeros((n, win.channels, ho, wo))
    for s in range(n):
        for ch in range(win.channels):
            for y in range(ho):
                for xo in range(wo):
                    vals = [maps[s][at] for _, _, _, at in reads(win, ch, y, xo) if at is not None]
                    if kind == "max":
                        out[s, ch, y, xo] = max(vals)
                    else:
                        total = sum(vals)
                        out[s, ch, y, xo] = total / (win.size if kind == "avg" else 2**shift)
    return out.reshape(n, -1)


def random_window(rng, pool=False) -> Window:
    c = int(rng.integers(1, 4)) * (1 if pool else int(rng.choice([1, 2])))
    groups = c if pool else int(rng.choice([d for d in (1, 2, c) if c % d == 0]))
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    dil = (1, 1) if pool else tuple(int(v) for v in rng.integers(1, 3, 2))
    reach = (dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1)
    pads = (int(rng.integers(0, reach[0])), int(rng.integers(0, reach[1])),
            int(rng.integers(0, reach[0])), int(rng.integers(0, reach[1])))
    h, w = reach[0] + int(rng.integers(0, 4)), reach[1] + int(rng.integers(0, 4))
    stride = tuple(int(v) for v in rng.integers(1, 3, 2))
    win = Window((c, h, w), (kh, kw), stride, pads, dil, groups)
    win.validate()
    return win


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-12, atol=1e-12)


GEOMETRIES = range(12)


@pytest.mark.parametrize("order", float_ops.CONV_ORDERS)
@pytest.mark.parametrize("seed", GEOMETRIES)
def test_conv_matches_plain_loops(seed, order):
    rng = np.random.default_rng(seed)
    win = random_window(rng)
    cout = win.groups * int(rng.integers(1, 3))
    weight = rng.normal(size=(cout, win.group_channels, *win.kernel))
    bias, gain = rng.normal(size=cout), rng.uniform(0.5, 2, cout) * rng.choice([-1, 1], cout)
    x = rng.normal(size=(3, win.n_in))
    want = loop_conv(win, weight, bias, gain, x)
    got = float_ops.conv(win, weight.reshape(cout, -1), x, bias, gain, order=order)
    assert close(got, want)
    if order == "einsum-optimized":  # the evaluator's node function is the same formula
        node = Conv2d(weight, bias, win, gain)
        np.testing.assert_array_equal(evaluate.conv(node, x), got)
    # wrong variants fail the same comparison: a flipped kernel, the padding ignored (the
    # window shifted to the image's corner), the gain left out
    flipped = float_ops.conv(win, weight[:, :, ::-1, ::-1].reshape(cout, -1), x, bias, gain, order=order)
    unpadded = Window(win.in_shape, win.kernel, win.stride, (0, 0, 0, 0), win.dilation, win.groups)
    assert not close(flipped, want) or np.allclose(weight, weight[:, :, ::-1, ::-1])
    assert not close(float_ops.conv(win, weight.reshape(cout, -1), x, bias, order=order), want)
    if win.padded:
        shifted = loop_conv(unpadded, weight, bias, gain, x)
        assert shifted.shape != want.shape or not close(got, shifted)


@pytest.mark.parametrize("kind", ["max", "avg", "sum"])
@pytest.mark.parametrize("seed", GEOMETRIES)
def test_pools_match_plain_loops(seed, kind):
    rng = np.random.default_rng(100 + seed)
    win = random_window(rng, pool=True)
    x = rng.normal(size=(3, win.n_in)) - 2.0  # negative maps: a padding read as 0 would win a max
    shift = int(rng.integers(0, 4))
    node = {"max": MaxPool2d(win), "avg": AvgPool2d(win), "sum": SumPool2d(win, shift=shift)}[kind]
    want = loop_pool(win, kind, x, shift)
    got = evaluate.pool(node, x)
    if kind == "max":
        np.testing.assert_array_equal(got, want)  # a maximum is exact
        if win.padded:  # the wrong variant: padding read as 0
            assert not close(float_ops.patches(win, x, 0.0).max(axis=-1).reshape(len(x), -1), want)
    else:
        assert close(got, want)
        wrong = float_ops.window_sum(win, x)  # the divisor dropped
        assert not close(wrong, want) or (2**shift if kind == "sum" else win.size) == 1


def test_dense_keeps_the_callers_dtype():
    rng = np.random.default_rng(4)
    x, w, b = (rng.normal(size=s).astype(np.float32) for s in ((5, 3), (4, 3), (4,)))
    z = float_ops.dense(x, w, b, np.float32(3.0))
    assert z.dtype == np.float32
    want = np.array([[3 * (sum(float(x[n, k]) * float(w[o, k]) for k in range(3)) + float(b[o]))
                      for o in range(4)] for n in range(5)])
    np.testing.assert_allclose(z, want, rtol=1e-5)
    assert not np.allclose(float_ops.dense(x, w, b), want, rtol=1e-5)  # the gain left out


# -- every caller computes with these formulas, in the order it always had --------------------------


def old_float_trace(graph, x):
    """The float gradient's forward as it was written before the formulas were shared: the
    forward methods of the backward operators (``hwq.attack.transpose``)."""
    h, zs = x, []
    for node in graph.nodes:
        if isinstance(node, ir.Activation):
            h = activations.forward(node.kind, zs[-1])
            continue
        if isinstance(node, ir.Flatten):
            continue
        if isinstance(node, ir.Affine):
            z = node.gain * (h @ node.weight.T + node.bias)
        elif isinstance(node, Conv2d):
            p = node.window.positions
            z = np.repeat(node.gain, p) * (ConvT(node.matrix, node.window).forward(h) + np.repeat(node.bias, p))
        elif isinstance(node, MaxPool2d):
            z = 1.0 * (MaxPoolT(node.window, None).forward(h) + 0.0)
        else:
            scale = 1.0 / node.window.size if isinstance(node, AvgPool2d) else 2.0**-node.shift
            z = 1.0 * (AvgPoolT(node.window, np.full(node.window.channels, scale)).forward(h) + 0.0)
        zs.append(z)
        h = z
    return zs


@pytest.mark.parametrize("second_pool", ["avg", "sum"])
def test_float_gradient_forward_keeps_its_numbers(second_pool):
    graph = float_cnn(np.random.default_rng(7), second_pool)
    x = np.random.default_rng(8).uniform(0, 1, (9, graph.n_features))
    got, old = FloatGradient(graph).forward(x), old_float_trace(graph, x)
    assert len(got) == len(old)
    for a, b in zip(got, old):
        np.testing.assert_array_equal(a, b)  # bit for bit
    # and it is the evaluator's model: the pre-activations agree with evaluate.trace
    outs = evaluate.trace(graph, x)
    pre = [outs[i] for i, n in enumerate(graph.nodes) if not isinstance(n, (ir.Activation, ir.Flatten))]
    for a, b in zip(got, pre):
        assert close(a, b)


def test_each_caller_keeps_its_summation_order(monkeypatch):
    seen = []
    conv = float_ops.conv

    def spy(*args, order="einsum-optimized", **kw):
        seen.append(order)
        return conv(*args, order=order, **kw)

    monkeypatch.setattr(float_ops, "conv", spy)
    graph = float_cnn(np.random.default_rng(9))
    x = np.random.default_rng(10).uniform(0, 1, (20, graph.n_features))
    evaluate.forward(graph, x)
    assert set(seen) == {"einsum-optimized"}
    seen.clear()
    FloatGradient(graph).value_and_grad(x, np.zeros(len(x), np.int64))
    assert set(seen) == {"einsum"}
    seen.clear()
    quantize(graph, QuantSettings(bits=4), x, (0, 1))
    assert set(seen) == {"matmul"}


def test_the_orders_differ_only_in_the_last_bits():
    """Why each caller keeps its order: unifying them changes numbers (and so calibrated scales
    and integer networks), though only by rounding."""
    rng = np.random.default_rng(12)
    differ = set()
    for _ in range(20):
        win = random_window(rng)
        cout = win.groups * 2
        w = rng.normal(size=(cout, win.patch_len))
        x = rng.normal(size=(4, win.n_in))
        outs = {o: float_ops.conv(win, w, x, order=o) for o in float_ops.CONV_ORDERS}
        for a in float_ops.CONV_ORDERS:
            for b in float_ops.CONV_ORDERS:
                assert close(outs[a], outs[b])
                if not np.array_equal(outs[a], outs[b]):
                    differ.add((a, b))
    assert differ
    with pytest.raises(ValueError, match="summation order"):
        float_ops.conv(win, w, x, order="fft")
