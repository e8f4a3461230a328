"""sim runs convolutional networks bit for bit as hwq.quant.reference does: convolutions through
every exact product family this host has (blas: float32/float64/int64; avx2; vnni with byte planes
and weight digits), fed by the patch-gathering pack of targets/common/patches.py, and the pooling
kernels of targets/common/pooling.py. Hypothesis draws shapes, strides, paddings, groups,
dilations, odd sizes, weight magnitudes and 1..16-bit codes at the extremes of signed and
unsigned formats. Each check is shown able to fail: the last tests inject deliberately wrong
kernels from outside (padding packed as byte 0, a shifted gather index, pooling that rounds or
pads wrongly, chunks glued in the wrong place) and expect the same check to fail."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from factories import conv_layer, make_layer, pool_node, random_cnn
from hwq_targets import sim as sim_target
from hwq_targets.common import patches, pooling
from hwq_targets.sim import conv as sim_conv
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from test_sim import FAMILIES, PRODUCTS, avx2_path, blas_path, extreme_codes

import hwq
from hwq.errors import InvalidModelError
from hwq.ir.window import Window
from hwq.quant import reference
from hwq.quant.qnet import InputFormat, QuantizedNetwork, QuantSettings

MAGNITUDES = (1, 7, 127, 128, 2**12, 2**20, 2**36)  # vnni, vnni/w2, vnni/w3, float32/64, int64


def cnn(fmt: InputFormat, nodes, in_shape, output="argmax") -> QuantizedNetwork:
    return QuantizedNetwork(fmt, tuple(nodes), output, QuantSettings(bits=8), None, input_shape=tuple(in_shape))


def check_cnn(net, x_q, products, dtype=None):
    """forward, accumulators, trace and decide of sim (``products``: a family of PRODUCTS, or None for
    the host's default) against the reference on ``x_q``; returns the program."""
    program = hwq.compile(net, "sim", **({} if products is None else PRODUCTS[products]))
    codes = x_q if dtype is None else x_q.astype(dtype)
    expected = reference.trace(net, x_q)
    scores = program.forward(codes)
    assert scores.dtype == np.int64
    np.testing.assert_array_equal(scores, expected[-1])
    accs = program.accumulators(codes)
    assert len(accs) == len(net.layers)
    for got, want in zip(accs, expected):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)
    for z, acc, node in zip(program.trace(codes), expected, net.layers):
        np.testing.assert_array_equal(z, acc * node.unit_scale)
    np.testing.assert_array_equal(program.decide(scores), reference.decide(expected[-1], net.output))
    return program


# --- hypothesis: two random convolutions, an optional pooling between them, a dense output ---------

FORMATS = [InputFormat(b, s, 1.0) for b in (1, 2, 3, 8, 9, 12, 16) for s in (False, True) if b > 1 or not s]


@st.composite
def windows(draw, in_shape, pool=False):
    c = in_shape[0]
    kernel = (draw(st.integers(1, min(4, in_shape[1] + 2))), draw(st.integers(1, min(4, in_shape[2] + 2))))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (1, 1) if pool else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    reach = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    pads = tuple(draw(st.integers(0, reach[i % 2] - 1)) for i in range(4))
    groups = c if pool else draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    win = Window(tuple(in_shape), kernel, stride, pads, dilation, groups)
    try:
        win.validate()
    except InvalidModelError:
        assume(False)
    return win


@st.composite
def cnn_networks(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    fmt = draw(st.sampled_from(FORMATS))
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    in_shape, nodes = shape, []
    act = draw(st.sampled_from(["relu", "relu", "step", "sign", "identity"]))
    for i in range(2):
        win = draw(windows(shape))
        groups = win.groups
        cout = groups * draw(st.integers(1, 3))
        top = draw(st.sampled_from(MAGNITUDES))
        layer = conv_layer(rng, shape, cout, win.kernel, act if i == 0 else draw(st.sampled_from(["relu", "step"])),
                           stride=win.stride, pads=win.pads, dilation=win.dilation, groups=groups, top=top,
                           act_bits=draw(st.integers(1, 16)), in_max=max(abs(fmt.qmin), fmt.qmax))
        if draw(st.booleans()):
            w = layer.weight.copy()
            w[0] = top if top != 128 else -128  # a row at the bound
            layer = dataclasses.replace(layer, weight=w)
        nodes.append(layer)
        shape = layer.out_shape
        if i == 0 and draw(st.booleans()):
            pwin = draw(windows(shape, pool=True))
            op = draw(st.sampled_from(["max", "avg"]))
            node = pool_node(shape, op, pwin.kernel, stride=pwin.stride, pads=pwin.pads,
                             truncate=op == "avg" and draw(st.booleans()))
            nodes.append(node)
            shape = node.out_shape
    n_in = int(np.prod(shape))
    nodes.append(make_layer(rng.integers(-9, 10, (3, n_in)), rng.integers(-50, 51, 3), "identity"))
    return cnn(fmt, nodes, in_shape), rng


@pytest.mark.parametrize("products", FAMILIES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case=cnn_networks())
def test_random_cnns_match_reference(case, products):
    net, rng = case
    try:
        program = hwq.compile(net, "sim", **PRODUCTS[products])
    except InvalidModelError:
        event("refused: int64 could wrap")
        assume(False)
    for path in program.report["products"]:
        event(f"path {path}")
    x_q = extreme_codes(rng, net.input, 23, net.n_features)
    check_cnn(net, x_q, products)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case=cnn_networks(), dtype=st.sampled_from([np.float32, np.float64, np.int32, np.int16]))
def test_input_dtypes(case, dtype):
    net, rng = case
    assume(np.iinfo(np.int16).min <= net.input.qmin and net.input.qmax <= np.iinfo(np.int16).max
           or dtype is not np.int16)
    try:
        hwq.compile(net, "sim")
    except InvalidModelError:
        assume(False)
    check_cnn(net, extreme_codes(rng, net.input, 11, net.n_features), None, dtype)


# --- every path a convolution takes, at the extremes of its formats ------------------------------

REACH = [  # (weight magnitude, input format, the VNNI family's path for the convolution)
    (127, InputFormat(8, False, 1.0), "vnni"),
    (127, InputFormat(8, True, 1.0), "vnni"),
    (7, InputFormat(16, False, 1.0), "vnni16"),
    (127, InputFormat(16, True, 1.0), "vnni16"),
    (2**12, InputFormat(8, True, 1.0), "vnni/w2"),
    (2**12, InputFormat(16, True, 1.0), "vnni16/w2"),
    (2**20, InputFormat(8, False, 1.0), "vnni/w3"),
    (2**36, InputFormat(16, True, 1.0), "int64"),
]


@pytest.mark.parametrize("products", FAMILIES)
@pytest.mark.parametrize("big, fmt, vnni_path", REACH)
@pytest.mark.parametrize("groups", [1, 2])
def test_every_path_with_padding_at_the_format_extremes(big, fmt, vnni_path, groups, products):
    """A padded, strided, dilated convolution on codes at both ends of the format (padding reads the
    code of real zero, which the VNNI path stores as 128 for signed 8-bit codes and AVX2 as -32768
    for 16-bit unsigned codes), in every family this host runs; the weights at the bound."""
    rng = np.random.default_rng(big)
    conv = conv_layer(rng, (2, 7, 6), 4, (3, 2), "identity", stride=(2, 1), pads=(2, 1, 1, 0), dilation=(1, 2),
                      groups=groups, top=big)
    w = conv.weight.copy()
    w[0] = big if big != 128 else -128
    w[1] = -big
    conv = dataclasses.replace(conv, weight=w)
    net = cnn(fmt, [conv, make_layer(rng.integers(-1, 2, (2, conv.n_out)), [0, 1], "identity")], (2, 7, 6))
    x_q = extreme_codes(rng, fmt, 61, net.n_features)
    program = check_cnn(net, x_q, products)
    want = {"vnni": vnni_path, "avx2": avx2_path(w, fmt.qmin, fmt.qmax), "blas": blas_path(w, fmt.qmin, fmt.qmax)}
    assert program.report["products"][0] == want[products]


@pytest.mark.parametrize("products", FAMILIES)
@pytest.mark.parametrize("act_bits", [1, 8, 9, 16])
@pytest.mark.parametrize("op", ["max", "avg"])
def test_hidden_codes_of_every_width_through_pooling(act_bits, op, products):
    """relu codes of 1..16 bits, pooled (padded windows: max ignores padding, avg adds zero), feed a
    padded second convolution (vnni for 8 bits, two byte planes beyond)."""
    rng = np.random.default_rng(act_bits)
    first = conv_layer(rng, (3, 9, 8), 4, (3, 3), "relu", pads=(1, 1, 1, 1), act_bits=act_bits, top=127)
    pool = pool_node(first.out_shape, op, (3, 2), stride=(2, 2), pads=(1, 0, 1, 1))
    second = conv_layer(rng, pool.out_shape, 6, (2, 2), "relu", pads=(1, 1, 0, 0), top=127)
    out = make_layer(rng.integers(-9, 10, (3, second.n_out)), [0, 0, 0], "identity")
    net = cnn(InputFormat(8, True, 1.0), [first, pool, second, out], (3, 9, 8))
    program = check_cnn(net, extreme_codes(rng, net.input, 50, net.n_features), products)
    if products == "vnni":
        assert program.report["products"][2] == ("vnni" if act_bits <= 8 else "vnni16")


@pytest.mark.parametrize("products", FAMILIES)
@pytest.mark.parametrize("truncate", [False, True])
def test_average_pooling_ties_round_half_up(truncate, products):
    """Identity codes of both signs summed over 2x2 windows, divided by 4 (shift 2): every residue
    mod 4, so half-way sums round up (floor where ``truncate``)."""
    conv = conv_layer(np.random.default_rng(0), (1, 4, 4), 1, (1, 1), "identity")
    conv = dataclasses.replace(conv, weight=np.array([[1]]), bias=np.array([-130]))
    pool = pool_node(conv.out_shape, "avg", (2, 2), pads=(0, 0, 0, 0), truncate=truncate)
    net = cnn(InputFormat(8, False, 1.0), [conv, pool, make_layer(np.eye(4, dtype=np.int64), [0] * 4, "identity")],
              (1, 4, 4))
    x_q = np.random.default_rng(1).integers(0, 256, (400, 16))
    check_cnn(net, x_q, products)
    maps = (x_q - 130).reshape(-1, 2, 2, 2, 2)  # (n, y, i, x, j): the 2x2 windows
    sums = maps.sum(axis=(2, 4))
    assert {1, 2, 3} <= set((sums[sums < 0] % 4).tolist()) and {1, 2, 3} <= set((sums[sums > 0] % 4).tolist())


@pytest.mark.parametrize("products", FAMILIES)
@pytest.mark.parametrize("n", [0, 1, 5, 97])
def test_batch_sizes_and_chunks(n, products, monkeypatch):
    """The batch is run in chunks (bounded memory); a chunk of a few samples, whole batches and the
    empty batch all equal the reference, and codes beyond the format in a later chunk still do."""
    rng = np.random.default_rng(n)
    net = random_cnn(rng, (2, 9, 9), "relu", "max", channels=(4, 6), signed=True)
    monkeypatch.setattr(sim_target, "CHUNK_BYTES", 3 * 8 * (net.n_features + 3 * net.layers[0].n_out))
    program = hwq.compile(net, "sim", **PRODUCTS[products])
    assert 1 <= program.chunk <= 3  # chunks of a few samples (the BLAS path's patch matrix counts too)
    x_q = extreme_codes(rng, net.input, n, net.n_features) if n else np.zeros((0, net.n_features), np.int64)
    check_cnn(net, x_q, products)
    if n > 10:
        x_q[n - 2, 5] = 300  # beyond the 8-bit format, in the last chunk
        assert program.forward(x_q).tolist() == reference.forward(net, x_q).tolist()


def test_cifar_sized_chunks_bound_memory():
    """A VGG-style 3x32x32 network runs in chunks whose feature maps fit ``CHUNK_BYTES``."""
    net = vgg_cifar(np.random.default_rng(0))
    program = hwq.compile(net, "sim")
    assert 1 <= program.chunk < 10_000
    biggest = max(node.n_out for node in net.layers)
    assert program.chunk * 8 * biggest <= sim_target.CHUNK_BYTES


def vgg_cifar(rng, channels=(32, 32, "pool", 64, 64, "pool", 128, "pool")):
    """32-32-pool-64-64-pool-128-pool-FC on 3x32x32 (8-bit weights and codes)."""
    shape, nodes = (3, 32, 32), []
    for c in channels:
        if c == "pool":
            node = pool_node(shape, "max", (2, 2))
        else:
            node = conv_layer(rng, shape, c, (3, 3), "relu", pads=(1, 1, 1, 1), top=31)
        nodes.append(node)
        shape = node.out_shape
    nodes.append(make_layer(rng.integers(-31, 32, (10, int(np.prod(shape)))), rng.integers(-99, 99, 10), "identity"))
    return cnn(InputFormat(8, False, 255.0), nodes, (3, 32, 32))


def test_cifar_sized_network_matches_reference():
    rng = np.random.default_rng(1)
    net = vgg_cifar(rng, channels=(8, 8, "pool", 16, "pool"))
    check_cnn(net, extreme_codes(rng, net.input, 9, net.n_features), None)


def test_patches_and_pooling_kernels_equal_the_reference():
    """The shared pieces chips reuse: ``patches.patches`` and ``pooling.pool`` on their own."""
    rng = np.random.default_rng(3)
    win = Window((4, 7, 5), (3, 2), (2, 1), (1, 0, 2, 1), (2, 1), 2)
    h = rng.integers(-300, 300, (6, win.n_in))
    np.testing.assert_array_equal(patches.patches(win, h), reference.patches(win, h))
    np.testing.assert_array_equal(patches.patches(win, h, np.float64, pad_code=-7), reference.patches(win, h, -7))
    for op in ("max", "avg"):
        for truncate in ((False, True) if op == "avg" else (False,)):
            node = pool_node((4, 7, 5), op, (3, 2), stride=(2, 2), pads=(1, 1, 1, 0), truncate=truncate)
            np.testing.assert_array_equal(pooling.pool(node, h), reference.pool(node, h))


# --- each check is able to fail: deliberately wrong kernels injected from outside -----------------

def padded_net(fmt, rng):
    conv = conv_layer(rng, (2, 6, 6), 4, (3, 3), "relu", pads=(1, 1, 1, 1), top=100)
    return cnn(fmt, [conv, make_layer(rng.integers(-5, 6, (3, conv.n_out)), [0, 0, 0], "identity")], (2, 6, 6))


WRONG_PAD = {  # a format whose padding each family stores away from byte 0, and the wrong stored zero
    "vnni": (InputFormat(8, True, 1.0), 0),  # stored as 128; packed as byte 0 instead
    "avx2": (InputFormat(16, False, 1.0), 0),  # stored as -32768; packed as 0 instead
    "blas": (InputFormat(8, True, 1.0), 1),  # stored as 0; packed as 1 instead
}


@pytest.mark.parametrize("products", FAMILIES)
def test_padding_stored_wrong_fails(products, monkeypatch):
    fmt, wrong = WRONG_PAD[products]
    rng = np.random.default_rng(11)
    net = padded_net(fmt, rng)
    x_q = extreme_codes(rng, fmt, 40, net.n_features)
    program = check_cnn(net, x_q, products)
    assert program.layers[0].offset != wrong or products == "blas"
    monkeypatch.setattr(patches, "stored_zero", lambda offset: wrong)
    with pytest.raises(AssertionError):
        check_cnn(net, x_q, products)


@pytest.mark.parametrize("products", FAMILIES)
def test_shifted_gather_index_fails(products, monkeypatch):
    rng = np.random.default_rng(12)
    net = padded_net(InputFormat(8, False, 1.0), rng)
    x_q = extreme_codes(rng, net.input, 40, net.n_features)
    check_cnn(net, x_q, products)
    right = patches.gather_index

    def shifted(win):
        idx = right(win).copy()
        idx[:, :, [0, 1]] = idx[:, :, [1, 0]]  # two patch elements swapped (kernel order)
        return idx

    monkeypatch.setattr(sim_conv.patches, "gather_index", shifted)
    with pytest.raises(AssertionError):
        check_cnn(net, x_q, products)


def pool_net(op, truncate=False):
    rng = np.random.default_rng(13)
    conv = conv_layer(rng, (2, 7, 7), 3, (2, 2), "identity", pads=(0, 0, 1, 1))
    pool = pool_node(conv.out_shape, op, (3, 3), stride=(2, 2), pads=(1, 1, 1, 1), truncate=truncate)
    out = make_layer(rng.integers(-5, 6, (3, pool.n_out)), [0, 0, 0], "identity")
    return cnn(InputFormat(8, True, 1.0), [conv, pool, out], (2, 7, 7)), rng


WRONG_POOLS = {
    "max reads padding as 0": ("max", False, lambda node, h, **kw: reference.patches(node.window, h).max(axis=3)
                               .reshape(h.shape[0], -1)),
    "avg without rounding": ("avg", False, lambda node, h, **kw: reference.pool(
        dataclasses.replace(node, truncate=True), np.asarray(h, np.int64))),
    "truncate rounds half up": ("avg", True, lambda node, h, **kw: reference.pool(
        dataclasses.replace(node, truncate=False), np.asarray(h, np.int64))),
}


@pytest.mark.parametrize("wrong", list(WRONG_POOLS))
def test_wrong_pooling_fails(wrong, monkeypatch):
    op, truncate, kernel = WRONG_POOLS[wrong]
    net, rng = pool_net(op, truncate)
    x_q = extreme_codes(rng, net.input, 40, net.n_features)
    check_cnn(net, x_q, None)
    monkeypatch.setattr(sim_conv.pooling, "pool", kernel)
    with pytest.raises(AssertionError):
        check_cnn(net, x_q, None)
