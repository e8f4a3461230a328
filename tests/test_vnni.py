"""The exact AVX-512 VNNI int8 product (targets/common/vnni.py) as a reusable entry point:
``vnni.matmul`` and the block driver equal numpy's int64 product on random shapes, 8-bit
containers and batch sizes around the 48-row block; codes out of range are reported; sim's
fused layer is unchanged by the factoring (tests/test_sim.py covers it against the
reference, this checks it against ``matmul``)."""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from hwq_targets.common import vnni
from hwq_targets.sim import kernels
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(not vnni.available(), reason="needs AVX-512 VNNI")


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
def test_matmul_equals_numpy(seed, n, k, m, signed):
    rng = np.random.default_rng(seed)
    h, w, lo, hi = random_case(rng, n, k, m, signed)
    want = h @ w.T
    for dtype in (np.int64, np.float32, np.float64, np.int8 if signed else np.uint8):
        got = vnni.matmul(h.astype(dtype), w, lo, hi)
        assert got.dtype == np.int64 and got.tolist() == want.tolist()


@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_threads_and_prepacked_weights(threads):
    rng = np.random.default_rng(1)
    h, w, lo, hi = random_case(rng, 1000, 784, 100, False)
    old = nb.get_num_threads()
    nb.set_num_threads(min(threads, nb.config.NUMBA_NUM_THREADS))
    try:
        got = vnni.matmul(h.astype(np.uint8), w, lo, hi, wpk=vnni.pack_weights(w))
    finally:
        nb.set_num_threads(old)
    assert got.tolist() == (h @ w.T).tolist()


def test_matmul_reports_codes_out_of_range_and_refuses_what_int8_cannot_hold():
    rng = np.random.default_rng(2)
    h, w, lo, hi = random_case(rng, 60, 9, 5, False)
    h[50, 4] = 256
    assert vnni.matmul(h, w, lo, hi) is None
    assert vnni.matmul(h[:50], w, lo, hi).tolist() == (h[:50] @ w.T).tolist()
    with pytest.raises(ValueError, match="int8"):
        vnni.matmul(h, w * 2, lo, hi)
    with pytest.raises(ValueError, match="int8"):
        vnni.matmul(h, w, 0, 256)


def test_sim_layer_equals_matmul_plus_epilogue():
    """``kernels.vnni_layer`` (sim's fused path, now built on pack_rows/product/run_blocks) gives the
    product of ``matmul`` plus the bias, and the activation of ``kernels.finish_rows``."""
    rng = np.random.default_rng(3)
    h, w, lo, hi = random_case(rng, 200, 50, 20, True)
    bias = rng.integers(-1000, 1000, 20)
    offset = vnni.input_offset(lo, hi)
    base = bias - offset * w.sum(axis=1)
    mult, half, shift = np.full(20, 3, np.int64), np.full(20, 8, np.int64), np.full(20, 4, np.int64)
    acc = np.empty((200, 20), np.int64)
    out = np.empty((200, 20), np.int64)
    lut = np.zeros(1, np.int64)
    bad = kernels.vnni_layer(h.astype(np.int8), lo, hi, offset, vnni.pack_weights(w), base, mult, half,
                     shift, kernels.MODES["relu"], 255, lut, 1, acc, out)
    assert bad == 0
    want = h @ w.T + bias
    assert acc.tolist() == want.tolist()
    assert out.tolist() == np.clip((want * 3 + 8) >> 4, 0, 255).tolist()
