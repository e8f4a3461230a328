"""The fast AVX2 variants (targets/common/avx2.py): 16-bit codes read in place by the
``vpmaddwd`` product (``in_place16``: int16 as they are, uint16 with the top bit flipped), and
the ``vpmaddubsw`` product for 8-bit codes (``product8``; sim's ``kernels.avx2_u8_layer``).
Whole networks equal ``hwq.quant.reference`` bit for bit (every
layer's accumulator, the relu requantization included), in every container and at every batch
size (full blocks read in place, partial ones packed); its int16 bound (``avx2.u8_groups``) is
tight: at the edge it is exact with every product of one sign, and one more group, or one
weight more per pair, really wraps or saturates in the raw kernel, so the bound is not vacuous.
Skipped where the CPU has no AVX2 (the kernel cannot run there; tests/test_sim.py covers the
plan such a CPU makes)."""

from __future__ import annotations

import numpy as np
import pytest
from hwq_targets.common import avx2
from hwq_targets.sim import kernels

import hwq
from hwq import ir
from hwq.quant import reference

HOST_AVX2 = avx2.available()
# the raw instruction (bounds, saturation, in-place reads) exists only on AVX2 CPUs; the
# whole-network cases run everywhere (elsewhere through the products such a CPU plans)
raw_kernel = pytest.mark.skipif(not HOST_AVX2, reason="runs the AVX2 instruction itself")

SIZES = [0, 1, 47, 48, 49, 200]  # empty, partial and whole blocks of 48 rows


def compile_avx2(net):
    """The AVX2 plan where the CPU has it; elsewhere the plan that CPU makes (same checks)."""
    if not HOST_AVX2:
        return hwq.compile(net, "sim", vnni=False)
    program = hwq.compile(net, "sim", vnni=False, avx2=True)
    assert program.report["products"] == ["avx2"] * len(net.layers)
    return program


def quantized(rng, sizes, weight_bits, signed, scheme="narrow", bits=8):
    """A relu MLP of ``sizes`` through ``hwq.quantize``: ``bits``-bit inputs (signed or not)
    and activations, weights of ``weight_bits``."""
    nodes = []
    for i in range(len(sizes) - 1):
        w = rng.normal(0, 1 / np.sqrt(sizes[i]), (sizes[i + 1], sizes[i]))
        nodes.append(ir.Affine(w, rng.normal(0, 0.1, sizes[i + 1])))
        if i < len(sizes) - 2:
            nodes.append(ir.Activation("relu"))
    graph = ir.Graph((sizes[0],), tuple(nodes), ir.Output("softmax"))
    x = rng.normal(0, 1, (500, sizes[0])) if signed else rng.uniform(0, 1, (500, sizes[0]))
    return hwq.quantize(graph, weight_bits, calibration=x, bounds=None if signed else (0.0, 1.0),
                        scheme=scheme, act_bits=bits, input_bits=bits)


def codes(rng, net, n):
    """Random codes of the input format, a third at its ends; the first rows all-extreme."""
    fmt = net.input
    x = rng.integers(fmt.qmin, fmt.qmax + 1, (n, net.n_features))
    pick = rng.integers(0, 3, x.shape)
    x = np.where(pick == 0, fmt.qmin, np.where(pick == 1, fmt.qmax, x))
    x[:1], x[1:2] = fmt.qmax, fmt.qmin
    return x


@pytest.mark.parametrize("sizes, weight_bits, signed, scheme, u8", [
    ([784, 100, 10], 4, False, "narrow", True),  # the bench network, 4-bit weights
    ([64, 20, 9, 3], 7, False, "narrow", True),  # weights up to 63: one or two groups per widening
    ([37, 13, 2], 6, True, "narrow", True),  # K not a multiple of 4 (packed), codes stored + 128
    ([12, 8, 3], 8, False, "narrow", False),  # pairs beyond int16: vpmaddwd instead
])
def test_network_equals_reference(sizes, weight_bits, signed, scheme, u8):
    """Every layer's accumulator (so the relu requantization too) equals the reference."""
    rng = np.random.default_rng(sum(sizes) + weight_bits)
    net = quantized(rng, sizes, weight_bits, signed, scheme)
    assert (net.input.qmin < 0) == signed
    program = compile_avx2(net)
    assert not HOST_AVX2 or [c.groups > 0 for c in program.layers] == [u8] * len(program.layers)
    for n in SIZES:
        x = codes(rng, net, n)
        want = reference.trace(net, x)
        for dtype in (np.int8 if signed else np.uint8, np.int64, np.float32):
            got = program.accumulators(x.astype(dtype))
            assert [a.tolist() for a in got] == [a.tolist() for a in want], (n, dtype)
        if n >= 47 and HOST_AVX2:  # the requantization is exercised, not only the clamp
            assert len(np.unique(program.layers[0].run(x, np.int64, False, True)[1])) > 10


@pytest.mark.parametrize("signed", [False, True])
def test_16_bit_codes_in_place_equal_reference(signed):
    """16-bit codes: uint16 read in place with the top bit flipped (``code - 32768``), int16 as
    they are; partial blocks and other containers packed. Every accumulator equals the
    reference, at codes of both extremes."""
    rng = np.random.default_rng(16 + signed)
    net = quantized(rng, [96, 30, 4], 4, signed, bits=16)
    program = compile_avx2(net)
    if not HOST_AVX2:
        x = codes(rng, net, 200)
        assert [a.tolist() for a in program.accumulators(x)] == [a.tolist() for a in reference.trace(net, x)]
        return
    assert [c.groups for c in program.layers] == [0, 0]
    container = np.int16 if signed else np.uint16
    assert program.layers[0].in_dtype == container and program.layers[1].in_dtype == np.uint16
    x = codes(rng, net, 200)
    assert avx2.in_place16(x.astype(container), net.input.qmin, net.input.qmax,
                           avx2.input_offset(net.input.qmin, net.input.qmax)) == 1 + (not signed)
    want = reference.trace(net, x)
    for dtype in (container, np.int64):
        got = program.accumulators(x.astype(dtype))
        assert [a.tolist() for a in got] == [a.tolist() for a in want], dtype
    hidden = program.layers[0].run(x.astype(container), np.uint16, False, True)[1]
    assert hidden.max() > 40000 and len(np.unique(hidden)) > 100  # the flip sees codes >= 2^15


@raw_kernel
def test_codes_outside_the_format_are_exact():
    """uint8 codes of a 4-bit input format: the in-place read is refused, the packer counts
    them, and the fallback plan gives the reference's answer."""
    rng = np.random.default_rng(5)
    graph_net = quantized(rng, [32, 16, 3], 4, False)
    net = hwq.quantize(ir.Graph((32,), (ir.Affine(rng.normal(0, 0.2, (16, 32)), np.zeros(16)),
                                        ir.Activation("relu"), ir.Affine(rng.normal(0, 0.3, (3, 16)), np.zeros(3))),
                                ir.Output("softmax")),
                       4, calibration=rng.uniform(0, 1, (200, 32)), bounds=(0.0, 1.0), act_bits=8, input_bits=4)
    assert graph_net.input.qmax == 255 and net.input.qmax == 15
    program = compile_avx2(net)
    assert program.layers[0].groups > 0
    x = rng.integers(0, 256, (100, 32)).astype(np.uint8)
    assert program.forward(x).tolist() == reference.forward(net, x).tolist()


def raw_product(h, w, groups):
    """``product8`` on u8 codes ``h`` with ``groups`` groups per widening, bypassing the bound."""
    n = h.shape[0]
    a = np.zeros((avx2.BLOCK, -(-h.shape[1] // 4) * 4), np.uint8)
    a[:n, :h.shape[1]] = h
    wpk8 = avx2.pack_weights8(w)
    c = np.empty((avx2.BLOCK, wpk8.shape[1] // 4), np.int32)
    avx2.product8(a, 0, wpk8, groups, c, n)
    return c[:n, :w.shape[0]].astype(np.int64)


@raw_kernel
@pytest.mark.parametrize("top", [1, 7, 30, 64])
@pytest.mark.parametrize("sign", [1, -1])
def test_groups_bound_is_tight(top, sign):
    """Every code 255, every weight ``sign * top``: each int16 lane sums ``255 * 2 top`` per
    group. ``u8_groups`` accepts ``n`` groups only while that stays within int16; the kernel is
    exact there, and one group more (where 16 do not all fit) leaves int16 in the raw kernel."""
    k = 4 * 40
    w = np.full((3, k), sign * top, np.int64)
    h = np.full((5, k), 255, np.uint8)
    n = avx2.u8_groups(w, 0, 255)
    assert n == min(avx2.MAX_GROUPS, 32767 // (255 * 2 * top))
    want = (h.astype(np.int64) @ w.T).tolist()
    assert raw_product(h, w, n).tolist() == want
    if n < avx2.MAX_GROUPS:
        assert raw_product(h, w, n + 1).tolist() != want


@raw_kernel
def test_pair_beyond_int16_is_refused_and_saturates():
    """A pair ``(64, 65)`` with codes 255 sums to ``255 * 129 > 32767``: refused (the network
    then runs on ``vpmaddwd``), and the raw ``vpmaddubsw`` kernel indeed saturates on it."""
    w = np.array([[64, 65, 0, 0], [-64, -64, 0, 0]], np.int64)
    assert avx2.u8_groups(w, 0, 255) is None
    assert avx2.u8_groups(w[1:], 0, 255) == avx2.MAX_GROUPS
    assert avx2.u8_groups(w, 0, 254) is not None  # 254 * 129 = 32766
    h = np.full((1, 4), 255, np.uint8)
    assert raw_product(h, w, 1).tolist() != (h.astype(np.int64) @ w.T).tolist()
    assert raw_product(h, w[1:], 1).tolist() == (h.astype(np.int64) @ w[1:].T).tolist()


def test_signed_codes_use_the_offset():
    """Codes in [-128, 127] are stored as ``code + 128``: the peak is 255 either way."""
    w = np.full((2, 80), 64, np.int64)
    assert avx2.u8_groups(w, -128, 127) == 1
    assert avx2.u8_groups(w, 0, 127) == 2  # peak 127: 127 * 256 = 32512
    assert avx2.u8_offset(-128, 127) == 128 and avx2.u8_offset(0, 255) == 0
    assert avx2.u8_groups(w, -129, 127) is None and avx2.u8_groups(w * 4, 0, 255) is None


@raw_kernel
def test_layer_epilogue_equals_reference_relu():
    """``kernels.avx2_u8_layer`` with a requantizing relu: the accumulator and the codes equal
    the reference's ``accumulate`` and ``activate`` (round half up: ``(acc m + 2^(s-1)) >> s``)."""
    rng = np.random.default_rng(11)
    net = quantized(rng, [96, 40, 3], 4, False)
    layer = net.layers[0]
    x = codes(rng, net, 97)
    compiled = compile_avx2(net).layers[0]
    acc = np.empty((97, 40), np.int64)
    out = np.empty((97, 40), np.uint8)
    bad = kernels.avx2_u8_layer(x.astype(np.uint8), 0, 255, compiled.weights, compiled.groups, compiled.base,
                                compiled.mult, compiled.half, compiled.shift, compiled.mode, compiled.act_max,
                                compiled.lut, 2048, acc, out)
    assert bad == 0
    want = reference.accumulate(layer, x)
    assert acc.tolist() == want.tolist()
    assert out.tolist() == reference.activate(layer, want).tolist()
    assert len(np.unique(out)) > 20  # the requantization is exercised, not only the clamp
