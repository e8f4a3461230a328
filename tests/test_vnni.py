"""The exact products shared by the backends (targets/common): ``vnni.matmul`` and the block
driver equal numpy's int64 product on random shapes, 8-bit containers and batch sizes around
the 48-row block; codes out of range are reported; sim's fused layer is unchanged by the
factoring (tests/test_sim.py covers it against the reference, this checks it against
``matmul``). Every test runs each product path this host has: the AVX-512 VNNI kernels where
the CPU has them, and always the paths a CPU without them takes (sim's range check and int64
loop, its float BLAS products), so nothing here skips for want of VNNI."""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from hwq_targets.common import avx2, products, vnni
from hwq_targets.sim import CompiledLayer, SimProgram, kernels
from hypothesis import given, settings
from hypothesis import strategies as st

from hwq.quant.qnet import QLayer

HOST_VNNI = vnni.available()
HOST_AVX2 = avx2.available()


def int64_matmul(h, w, lo, hi, wpk=None):
    """The path a CPU without VNNI takes for these codes: sim's range check of layer 0
    (``products.code_range``; None outside ``[lo, hi]``), then the int64 loop."""
    h = np.ascontiguousarray(h)
    if h.size:
        got_lo, got_hi = products.code_range(h)
        if got_lo < lo or got_hi > hi:
            return None
    return products.int_matmul(h, np.ascontiguousarray(np.asarray(w, np.int64).T))


# exact products h @ W.T (None: codes outside [lo, hi]) and how each packs its weights
MATMULS = {"int64": (int64_matmul, vnni.pack_weights)}
if HOST_AVX2:
    MATMULS["avx2"] = (avx2.matmul, avx2.pack_weights)
if HOST_VNNI:
    MATMULS["vnni"] = (vnni.matmul, vnni.pack_weights)


def random_case(rng, n, k, m, signed, wmax=127):
    lo, hi = (-128, 127) if signed else (0, 255)
    h = rng.integers(lo, hi + 1, (n, k))
    if n >= 2:
        h[0], h[1] = hi, lo
    w = rng.integers(-wmax - 1 if wmax == 127 else -wmax, wmax + 1, (m, k))
    return h, w, lo, hi


@given(st.integers(0, 2**31), st.sampled_from([0, 1, 5, 47, 48, 49, 97, 300]),
       st.integers(1, 70), st.integers(1, 130), st.booleans())
@settings(max_examples=60, deadline=None)
@pytest.mark.parametrize("path", MATMULS)
def test_matmul_equals_numpy(path, seed, n, k, m, signed):
    rng = np.random.default_rng(seed)
    h, w, lo, hi = random_case(rng, n, k, m, signed)
    want = h @ w.T
    for dtype in (np.int64, np.float32, np.float64, np.int8 if signed else np.uint8):
        got = MATMULS[path][0](h.astype(dtype), w, lo, hi)
        assert got.dtype == np.int64 and got.tolist() == want.tolist()


@pytest.mark.parametrize("path", MATMULS)
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_threads_and_prepacked_weights(threads, path):
    rng = np.random.default_rng(1)
    h, w, lo, hi = random_case(rng, 1000, 784, 100, False)
    old = nb.get_num_threads()
    nb.set_num_threads(min(threads, nb.config.NUMBA_NUM_THREADS))
    try:
        matmul, pack = MATMULS[path]
        got = matmul(h.astype(np.uint8), w, lo, hi, wpk=pack(w))
    finally:
        nb.set_num_threads(old)
    assert got.tolist() == (h @ w.T).tolist()


@pytest.mark.parametrize("path", MATMULS)
def test_matmul_reports_codes_out_of_range(path):
    rng = np.random.default_rng(2)
    h, w, lo, hi = random_case(rng, 60, 9, 5, False)
    h[50, 4] = 256
    matmul = MATMULS[path][0]
    assert matmul(h, w, lo, hi) is None
    assert matmul(h[:50], w, lo, hi).tolist() == (h[:50] @ w.T).tolist()


def test_matmul_refuses_what_int8_cannot_hold():
    """Checked before any kernel runs, so on every CPU."""
    rng = np.random.default_rng(2)
    h, w, lo, hi = random_case(rng, 60, 9, 5, False)
    with pytest.raises(ValueError, match="int8"):
        vnni.matmul(h, w * 2, lo, hi)
    with pytest.raises(ValueError, match="int8"):
        vnni.matmul(h, w, 0, 256)


@pytest.mark.parametrize("path", ["float32", *(["avx2"] if HOST_AVX2 else []), *(["vnni"] if HOST_VNNI else [])])
def test_sim_layer_equals_matmul_plus_epilogue(path):
    """``kernels.vnni_layer`` (sim's fused path, now built on pack_rows/product/run_blocks) gives the
    product of ``matmul`` plus the bias, and the activation of ``kernels.finish_rows``; so does
    ``kernels.finish_layer`` after the float32 BLAS product (the path without VNNI)."""
    rng = np.random.default_rng(3)
    h, w, lo, hi = random_case(rng, 200, 50, 20, True)
    bias = rng.integers(-1000, 1000, 20)
    offset = vnni.input_offset(lo, hi)
    base = bias - offset * w.sum(axis=1)
    mult, half, shift = np.full(20, 3, np.int64), np.full(20, 8, np.int64), np.full(20, 4, np.int64)
    acc = np.empty((200, 20), np.int64)
    out = np.empty((200, 20), np.int64)
    lut = np.zeros(1, np.int64)
    if path == "vnni":
        bad = kernels.vnni_layer(h.astype(np.int8), lo, hi, offset, vnni.pack_weights(w), base, mult, half,
                                 shift, kernels.MODES["relu"], 255, lut, 1, acc, out)
        assert bad == 0
    elif path == "avx2":
        bad = kernels.avx2_layer(h.astype(np.int8), lo, hi, avx2.input_offset(lo, hi), avx2.pack_weights(w),
                                 bias - avx2.input_offset(lo, hi) * w.sum(axis=1), mult, half, shift,
                                 kernels.MODES["relu"], 255, lut, 1, acc, out)
        assert bad == 0
    else:
        product = h.astype(np.int8).astype(np.float32) @ w.T.astype(np.float32)
        kernels.finish_layer(product, bias, mult, half, shift, kernels.MODES["relu"], 255, lut, 1, acc, out)
    want = h @ w.T + bias
    assert acc.tolist() == want.tolist()
    assert out.tolist() == np.clip((want * 3 + 8) >> 4, 0, 255).tolist()


# ---------------------------------------------------------------- 16-bit codes: two byte planes

FAMILIES = ["blas", *(["avx2"] if HOST_AVX2 else []), *(["vnni"] if HOST_VNNI else [])]


def planes_layer(h, w, bias, lo, hi, planes=2, family="vnni"):
    """sim's fused layer on byte planes and weight digits (identity activation; ``family``
    "vnni"), or (``family`` "blas", "avx2") sim's layer as a CPU without VNNI plans it: the
    int64 accumulator, or None when a code fell outside ``[lo, hi]``."""
    if family != "vnni":
        return blas_layer(h, w, bias, lo, hi, family == "avx2")[0]
    m = w.shape[0]
    offset = vnni.plane_offset(lo, hi) if planes == 2 else vnni.input_offset(lo, hi)
    acc = np.empty((len(h), m), np.int64)
    zeros = np.zeros(m, np.int64)
    digits = vnni.weight_digits(w)
    wpk = np.stack([vnni.pack_weights(d) for d in digits])
    bad = kernels.vnni_layer(h, lo, hi, offset, wpk, bias - offset * w.sum(axis=1), zeros,
                             zeros, zeros, kernels.MODES["identity"], 0, np.zeros(1, np.int64), 1, acc,
                             np.empty((0, 0), np.int64), planes=planes)
    return None if bad else acc


def blas_layer(h, w, bias, lo, hi, use_avx2=False):
    """``(acc or None, path)``: sim's layer 0 for codes in ``[lo, hi]`` planned without VNNI
    (with the AVX2 product where it fits if ``use_avx2``)."""
    layer = QLayer(np.asarray(w, np.int64), bias, np.ones(len(w)), 1.0, 1.0, "identity")
    compiled = CompiledLayer.build(layer, lo, hi, False, use_avx2)
    assert compiled.path in ("float32", "float64", "int64", *(["avx2"] if use_avx2 else []))
    accs = SimProgram._run_plan([compiled], h, True)
    return (None if accs is None else accs[0]), compiled.path


def python_product(h, w, bias):
    """``h @ W.T + b`` in plain Python integers."""
    return [[sum(int(a) * int(b) for a, b in zip(row, wr)) + int(bj) for wr, bj in zip(w.tolist(), bias.tolist())]
            for row in h.tolist()]


@given(st.integers(0, 2**31), st.sampled_from([0, 1, 47, 48, 49, 130]), st.integers(1, 60),
       st.integers(1, 40), st.sampled_from([(0, 65535), (-32768, 32767), (0, 4095), (-300, 300)]),
       st.sampled_from([np.int64, np.float64, np.uint16, np.int16, np.int32]))
@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=60, deadline=None)
def test_byte_planes_equal_python_integers(family, seed, n, k, m, rng_lohi, dtype):
    """Every container (the byte view for full-range uint16/int16, the checked packing
    otherwise), codes at both ends, int8 weights at -128 and 127."""
    lo, hi = rng_lohi
    if dtype is np.uint16 and lo < 0 or dtype is np.int16 and hi > 32767:
        dtype = np.int64
    rng = np.random.default_rng(seed)
    h = rng.integers(lo, hi + 1, (n, k))
    pick = rng.integers(0, 4, (n, k))
    h = np.where(pick == 0, lo, np.where(pick == 1, hi, h))
    w = rng.integers(-128, 128, (m, k))
    w[0, :] = -128
    bias = rng.integers(-(2**40), 2**40, m)
    assert vnni.fits_planes(w, lo, hi)
    assert planes_layer(h.astype(dtype), w, bias, lo, hi, family=family).tolist() == python_product(h, w, bias)


@pytest.mark.parametrize("family", FAMILIES)
def test_byte_planes_at_the_int32_bound(family):
    """``255 * S < 2^31`` is the exact limit of each plane's int32 sum: S = 8421504 fits,
    and every code at 65535 (both planes 255) reaches 255 * S in each plane."""
    s_max = (2**31 - 1) // 255
    k = -(-s_max // 128)
    w = np.full((2, k), -128, np.int64)
    w[0, -1] = -(s_max - 128 * (k - 1))  # row 0: S = s_max exactly
    w[1, -1] = 127  # row 1: S below the bound, mixed signs
    assert int(np.abs(w[0]).sum()) == s_max and vnni.fits_planes(w, 0, 65535)
    h = np.full((3, k), 65535, np.uint16)
    h[1] = 0
    h[2, ::2] = 65280  # hi plane 255, lo plane 0
    bias = np.array([7, -7])
    assert planes_layer(h, w, bias, 0, 65535, family=family).tolist() == python_product(h, w, bias)
    if family != "vnni":  # S * 32768 is far beyond 2^31: no single AVX2 product either
        assert blas_layer(h, w, bias, 0, 65535, family == "avx2")[1] == "float64"
    over = w.copy()
    over[0, 0] = -129  # not int8
    assert not vnni.fits_planes(over, 0, 65535)
    w2 = np.full((1, k + 1), -128, np.int64)  # S = 128 (k + 1) > s_max
    assert 255 * int(np.abs(w2).sum()) >= 2**31 and not vnni.fits_planes(w2, 0, 65535)


@pytest.mark.parametrize("family", FAMILIES)
def test_byte_planes_report_codes_out_of_range(family):
    rng = np.random.default_rng(4)
    h = rng.integers(0, 4096, (100, 9))
    w = rng.integers(-7, 8, (3, 9))
    bias = np.zeros(3, np.int64)
    h[70, 2] = 4096
    assert planes_layer(h.astype(np.uint16), w, bias, 0, 4095, family=family) is None
    got = planes_layer(h[:70].astype(np.uint16), w, bias, 0, 4095, family=family)
    assert got.tolist() == python_product(h[:70], w, bias)
    assert not vnni.fits_planes(w, -1, 65535) and not vnni.fits_planes(w, 0, 65536)


@given(st.integers(0, 2**31), st.sampled_from([1, 48, 97]), st.integers(1, 50), st.integers(1, 30),
       st.sampled_from([255, 256, 1023, 2**15 - 1, 2**16, 2**22]),
       st.sampled_from([(0, 255, 1), (-128, 127, 1), (0, 65535, 2), (-32768, 32767, 2)]))
@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=60, deadline=None)
def test_weight_digits_equal_python_integers(family, seed, n, k, m, big, fmt):
    """Weights beyond int8 as signed byte digits (1 to 3), on 8-bit codes (one plane) and
    16-bit codes (two), codes and weights at both ends."""
    lo, hi, planes = fmt
    rng = np.random.default_rng(seed)
    h = rng.integers(lo, hi + 1, (n, k))
    h[0] = hi
    w = rng.integers(-big, big + 1, (m, k))
    w[0, :] = -big
    digits = vnni.weight_digits(w)
    assert sum(d * 256**i for i, d in enumerate(digits)).tolist() == w.tolist()
    assert all(d.min() >= -128 and d.max() <= 127 for d in digits)
    bias = rng.integers(-(2**30), 2**30, m)
    dtype = {1: np.uint8 if lo == 0 else np.int8, 2: np.uint16 if lo == 0 else np.int16}[planes]
    assert planes_layer(h.astype(dtype), w, bias, lo, hi, planes, family).tolist() == python_product(h, w, bias)


def test_digit_plan_limits():
    w = np.full((2, 10), 1023)
    planes, digits = vnni.digit_plan(w, 0, 255)
    assert planes == 1 and len(digits) == 2
    assert vnni.digit_plan(w, 0, 65535)[0] == 2 and len(vnni.digit_plan(w, 0, 65535)[1]) == 2
    assert vnni.digit_plan(np.full((1, 3), 2**17), 0, 65535) is None  # 3 digits x 2 planes > 4
    assert vnni.digit_plan(np.full((1, 3), 2**17), 0, 255)[0] == 1  # 3 digits x 1 plane
    assert vnni.weight_digits(np.array([[2**23]])) is None
    assert vnni.digit_plan(w, 0, 65536) is None
    wide = np.full((1, 2**24 // 128 + 1), 128 * 257)  # digits 0 and -128... sum|D| beyond the bound
    assert vnni.digit_plan(wide, 0, 255) is None
