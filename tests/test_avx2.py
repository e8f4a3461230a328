"""The exact AVX2 int16 product (targets/common/avx2.py, ``vpmaddwd``): equal to Python integers
on random shapes, every code range it accepts and weights up to int16, at the edge of its bound
``peak * S < 2^31``; its proof (``hwq.quant.bounds.pmaddwd_exact``) refuses what would wrap, and
the raw kernel really wraps there, so the bound is not vacuous. Where the CPU has no AVX2 the
same cases run through sim's layer as such a CPU plans it (float BLAS / int64), so nothing here
skips for the CPU. (tests/test_sim.py runs whole networks on every family against the reference.)"""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from hwq_targets.common import avx2
from hwq_targets.sim import CompiledLayer, SimProgram
from hypothesis import given, settings
from hypothesis import strategies as st

from hwq.quant.bounds import pmaddwd_exact
from hwq.quant.qnet import QLayer

HOST_AVX2 = avx2.available()
RANGES = [(0, 255), (-128, 127), (0, 1), (0, 4095), (-300, 300), (0, 65535), (-32768, 32767)]


def python_product(h, w):
    """``h @ W.T`` in plain Python integers."""
    return [[sum(int(a) * int(b) for a, b in zip(row, wr)) for wr in w.tolist()] for row in h.tolist()]


def product(h, w, lo, hi):
    """``avx2.matmul`` where the CPU has AVX2; else sim's layer planned without it (with its
    layer-0 range check): ``(h @ W.T or None, path)``."""
    if HOST_AVX2:
        return avx2.matmul(h, w, lo, hi), "avx2"
    layer = QLayer(np.asarray(w, np.int64), np.zeros(len(w), np.int64), np.ones(len(w)), 1.0, 1.0, "identity")
    compiled = CompiledLayer.build(layer, lo, hi, False, False)
    accs = SimProgram._run_plan([compiled], np.ascontiguousarray(h), True)
    return (None if accs is None else accs[0]), compiled.path


def peak_of(lo, hi):
    offset = avx2.input_offset(lo, hi)
    return max(abs(lo + offset), abs(hi + offset))


@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 7, 47, 48, 49, 97, 200]), st.integers(1, 70),
       st.integers(1, 40), st.sampled_from(RANGES), st.sampled_from([1, 127, 128, 2**12, 2**15 - 1]),
       st.sampled_from([np.int64, np.float64, np.float32, "narrow"]))
@settings(max_examples=80, deadline=None)
def test_product_equals_python_integers(seed, n, k, m, lohi, big, dtype):
    """Codes at both ends of their range, weights at both ends of theirs (scaled down where
    ``peak * S`` would reach 2^31), in every container."""
    lo, hi = lohi
    rng = np.random.default_rng(seed)
    big = max(1, min(big, (2**31 - 1) // (peak_of(lo, hi) * k)))
    w = rng.integers(-big, big + 1, (m, k))
    w[0] = -big if big < 2**15 else -(2**15) + 1
    h = rng.integers(lo, hi + 1, (n, k))
    pick = rng.integers(0, 3, (n, k))
    h = np.where(pick == 0, lo, np.where(pick == 1, hi, h))
    if dtype == "narrow":
        dtype = avx2.container(lo, hi)
    assert avx2.fits(w, lo, hi)
    got, path = product(h.astype(dtype), w, lo, hi)
    assert got.tolist() == python_product(h, w)
    assert path == "avx2" or not HOST_AVX2


@pytest.mark.parametrize("lo, hi", [(0, 255), (0, 65535), (-32768, 32767)])
def test_product_at_its_bound(lo, hi):
    """``S = floor((2^31 - 1) / peak)``: accepted, and exact with every code at its extreme (all
    products of one sign); one more unit of S is refused."""
    peak = peak_of(lo, hi)
    s_max = (2**31 - 1) // peak
    top = 2**15 - 1 if peak <= 255 else 255
    k = -(-s_max // top)
    w = np.full((3, k), top, np.int64)
    w[0, -1] = s_max - top * (k - 1)  # S = s_max, all positive
    w[1] = -w[0]  # all negative
    w[2] = np.where(np.arange(k) % 2, w[0], -w[0])  # mixed signs, the same S
    assert pmaddwd_exact(w, peak) and avx2.fits(w, lo, hi)
    h = np.stack([np.full(k, lo), np.full(k, hi), np.where(np.arange(k) % 2, lo, hi)])
    got, _ = product(h, w, lo, hi)
    assert got.tolist() == python_product(h, w)
    over = w.copy()
    over[0, -1] += 1  # S = s_max + 1, every weight still int16
    assert not pmaddwd_exact(over, peak) and not avx2.fits(over, lo, hi)


def test_the_bound_is_needed_the_raw_kernel_wraps_beyond_it():
    """Run the packed kernel past the proof (twice the largest S): int32 lanes wrap, so the
    result differs from Python integers; the proof refuses that layer."""
    if not HOST_AVX2:  # the product that wraps is the AVX2 one; show the proof refuses it
        assert not pmaddwd_exact(np.full((1, 4), 2**15 - 1), 2**15)
        return
    lo, hi = 0, 65535
    k = 2 * ((2**31 - 1) // (32767 * 32768)) + 4
    w = np.full((1, k), 32767, np.int64)
    h = np.full((2, k), hi, np.int64)
    assert not avx2.fits(w, lo, hi)
    with pytest.raises(ValueError, match="int16"):
        avx2.matmul(h, w, lo, hi)
    out = np.empty((2, 1), np.int64)
    offset = avx2.input_offset(lo, hi)
    base = -offset * w.sum(axis=1)
    avx2._product_blocks(np.zeros(1, np.int64), h, lo, hi, offset, avx2.pack_weights(w), base, out)
    assert out.tolist() != python_product(h, w)


def test_refusals():
    assert not avx2.fits(np.array([[2**15]]), 0, 255)  # weight beyond int16
    assert not avx2.fits(np.array([[-(2**15) - 1]]), 0, 255)
    assert avx2.fits(np.array([[-(2**15), 2**15 - 1]]), 0, 1)
    assert not avx2.fits(np.array([[1]]), 0, 65536)  # codes beyond 16 bits
    assert not avx2.fits(np.array([[1]]), -32769, 0)
    assert not avx2.fits(np.zeros((0, 3), np.int64), 0, 255)
    assert avx2.input_offset(-5, 5) == 0 and avx2.input_offset(0, 65535) == -(2**15)
    with pytest.raises(ValueError, match="int16"):
        avx2.matmul(np.zeros((1, 1)), np.array([[2**15]]), 0, 255)


@pytest.mark.parametrize("threads", [1, 2])
def test_codes_out_of_range_are_reported(threads):
    rng = np.random.default_rng(3)
    h = rng.integers(0, 256, (300, 30))
    w = rng.integers(-128, 128, (20, 30))
    h[250, 3] = 256
    old = nb.get_num_threads()
    nb.set_num_threads(min(threads, nb.config.NUMBA_NUM_THREADS))
    try:
        assert product(h, w, 0, 255)[0] is None
        assert product(h[:250], w, 0, 255)[0].tolist() == (h[:250] @ w.T).tolist()
    finally:
        nb.set_num_threads(old)
