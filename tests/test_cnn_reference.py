"""The convolution and pooling semantics of the numpy reference (hwq/quant/reference.py)
against plain Python integer loops written from docs/integer-semantics.md section 8, over
random shapes, strides, paddings, dilations and groups; each check is shown able to fail."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from factories import conv_layer, pool_node, random_cnn
from hypothesis import given, settings
from hypothesis import strategies as st

from hwq.errors import InvalidModelError
from hwq.ir.window import Window
from hwq.quant import reference


def loop_conv(layer, x):
    """acc[n, o, y, x] = b[o] + sum_{c, i, j} W[o, (c kh + i) kw + j] h[n, g cg + c, y sh - t + i dh, ...]."""
    win = layer.window
    cin, h, w = win.in_shape
    kh, kw = win.kernel
    ho, wo = win.out_hw
    cg, og = win.group_channels, layer.weight.shape[0] // win.groups
    maps = x.reshape(x.shape[0], cin, h, w).tolist()
    wt = layer.weight.tolist()
    out = []
    for n in range(x.shape[0]):
        row = []
        for o in range(layer.weight.shape[0]):
            g = o // og
            for yy in range(ho):
                for xx in range(wo):
                    acc = int(layer.bias[o])
                    for c in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                iy = yy * win.stride[0] - win.pads[0] + i * win.dilation[0]
                                ix = xx * win.stride[1] - win.pads[1] + j * win.dilation[1]
                                if 0 <= iy < h and 0 <= ix < w:
                                    acc += wt[o][(c * kh + i) * kw + j] * maps[n][g * cg + c][iy][ix]
                    row.append(acc)
        out.append(row)
    return np.array(out, dtype=np.int64)


def loop_pool(node, x):
    win = node.window
    c, h, w = win.in_shape
    kh, kw = win.kernel
    ho, wo = win.out_hw
    maps = x.reshape(x.shape[0], c, h, w).tolist()
    out = []
    for n in range(x.shape[0]):
        row = []
        for ch in range(c):
            for yy in range(ho):
                for xx in range(wo):
                    vals = []
                    for i in range(kh):
                        for j in range(kw):
                            iy, ix = yy * win.stride[0] - win.pads[0] + i, xx * win.stride[1] - win.pads[1] + j
                            if 0 <= iy < h and 0 <= ix < w:
                                vals.append(maps[n][ch][iy][ix])
                            elif node.op == "avg":
                                vals.append(0)
                    if node.op == "max":
                        row.append(max(vals))
                    else:
                        m, s = int(node.requant.multiplier[ch]), int(node.requant.shift[ch])
                        half = 0 if node.truncate or s == 0 else 1 << (s - 1)
                        row.append((sum(vals) * m + half) >> s)
        out.append(row)
    return np.array(out, dtype=np.int64)


@st.composite
def geometries(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h = draw(st.integers(dh * (kh - 1) + 1, 7))
    w = draw(st.integers(dw * (kw - 1) + 1, 7))
    pads = tuple(draw(st.integers(0, d * (k - 1))) for d, k in ((dh, kh), (dw, kw), (dh, kh), (dw, kw)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    out = groups * draw(st.integers(1, 2))
    return (cin, h, w), (kh, kw), stride, pads, (dh, dw), groups, out


@settings(max_examples=60, deadline=None)
@given(geometries(), st.integers(0, 2**31 - 1), st.sampled_from(["signed", "unsigned", "extreme"]))
def test_convolution_matches_integer_loops(geom, seed, codes_kind):
    in_shape, kernel, stride, pads, dilation, groups, out = geom
    rng = np.random.default_rng(seed)
    layer = conv_layer(rng, in_shape, out, kernel, "identity", stride=stride, pads=pads, dilation=dilation,
                       groups=groups, top=127)
    layer.validate()
    n = int(np.prod(in_shape))
    lo, hi = {"signed": (-128, 127), "unsigned": (0, 255), "extreme": (-(2**20), 2**20)}[codes_kind]
    x = rng.integers(lo, hi + 1, (3, n))
    x[0] = hi
    np.testing.assert_array_equal(reference.accumulate(layer, x), loop_conv(layer, x))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(2, 7), st.integers(2, 7), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 3), st.integers(0, 1), st.sampled_from(["max", "avg"]), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_pooling_matches_integer_loops(c, h, w, kh, kw, s, pad, op, truncate, seed):
    kh, kw = min(kh, h), min(kw, w)
    pad = min(pad, kh - 1, kw - 1)
    node = pool_node((c, h, w), op, (kh, kw), stride=(s, s), pads=(pad,) * 4, truncate=truncate and op == "avg")
    node.validate()
    rng = np.random.default_rng(seed)
    x = rng.integers(-(2**15), 2**15, (3, c * h * w))
    np.testing.assert_array_equal(reference.pool(node, x), loop_pool(node, x))
    lo, hi = node.out_range(-(2**15), 2**15 - 1)
    out = reference.pool(node, x)
    assert lo <= out.min() and out.max() <= hi


def test_the_loop_references_catch_wrong_padding_and_group_order():
    """The checks above can fail: padding read as a nonzero code, groups read from the wrong
    channels, and max pooling that lets padding win all disagree with the loops."""
    rng = np.random.default_rng(3)
    layer = conv_layer(rng, (4, 5, 5), 4, (3, 3), "identity", pads=(1, 1, 1, 1), groups=2)
    x = rng.integers(1, 255, (2, 100))
    right = loop_conv(layer, x)
    np.testing.assert_array_equal(reference.accumulate(layer, x), right)
    win = layer.window
    wrong_pad = reference.patches(win, x, pad_code=128)  # padding packed as the u8 offset
    w = layer.weight.reshape(2, 2, -1)
    acc = np.einsum("ngpk,gok->ngop", wrong_pad, w).reshape(2, 4, -1) + layer.bias[None, :, None]
    assert not np.array_equal(acc.reshape(2, -1), right)
    swapped = Window(win.in_shape, win.kernel, win.stride, win.pads, win.dilation, 1)
    flat = layer.weight.reshape(4, -1)
    wrong_groups = np.einsum("npk,ok->nop", reference.patches(swapped, x)[:, 0][:, :, :18], flat).reshape(2, -1)
    assert not np.array_equal(wrong_groups + np.repeat(layer.bias, 25), right)
    node = pool_node((1, 3, 3), "max", (2, 2), stride=(1, 1), pads=(1, 1, 1, 1))
    neg = -np.arange(1, 10, dtype=np.int64)[None, :]
    assert loop_pool(node, neg).max() < 0  # padding (0) never wins over negative codes
    padded_wins = reference.patches(node.window, neg).max(axis=3)  # padding read as 0
    assert padded_wins.max() == 0 and not np.array_equal(padded_wins.reshape(1, -1), loop_pool(node, neg))


@pytest.mark.parametrize("act", ["relu", "step", "sign", "identity"])
@pytest.mark.parametrize("pool", ["max", "avg", None])
def test_a_cnn_walks_and_stays_within_its_ranges(act, pool):
    rng = np.random.default_rng(7)
    net = random_cnn(rng, act=act, pool=pool, groups=2)
    net.validate()
    x = rng.integers(net.input.qmin, net.input.qmax + 1, (16, net.n_features))
    h = x
    for node, (_, _, _, (lo, hi)) in zip(net.layers, net.walk()):
        assert lo <= h.min() and h.max() <= hi
        if hasattr(node, "weight"):
            h = reference.activate(node, reference.accumulate(node, h))
        else:
            h = reference.pool(node, h)


@pytest.mark.parametrize("bad, message", [
    (dict(in_shape=(3, 4, 4), kernel=(5, 5)), "does not fit"),
    (dict(in_shape=(3, 4, 4), kernel=(3, 3), groups=2), "do not divide"),
    (dict(in_shape=(3, 4, 4), kernel=(3, 3), pads=(3, 0, 0, 0)), "padding only"),
    (dict(in_shape=(3, 4, 4), kernel=(3, 3), pads=(-1, 0, 0, 0)), "integers >= 0"),
    (dict(in_shape=(3, 4, 4), kernel=(0, 3)), "integers >= 1"),
])
def test_bad_windows_are_refused_in_one_line(bad, message):
    with pytest.raises(InvalidModelError, match=message) as err:
        Window(**bad).validate()
    assert "\n" not in str(err.value)


def test_a_cnn_network_round_trips_through_hdf5(tmp_path):
    import h5py

    from hwq.files import h5io

    rng = np.random.default_rng(1)
    net = random_cnn(rng, act="relu", pool="avg", groups=2)
    with h5py.File(tmp_path / "n.h5", "w") as f:
        h5io.write_value(f, "layers", net.layers)
    with h5py.File(tmp_path / "n.h5") as f:
        layers = h5io.read(f["layers"])
    back = dataclasses.replace(net, layers=layers)
    back.validate()
    x = rng.integers(0, 256, (8, net.n_features))
    np.testing.assert_array_equal(reference.forward(back, x), reference.forward(net, x))
    assert back.layers[0].window == net.layers[0].window and back.layers[1].op == "avg"
