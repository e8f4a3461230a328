"""The Loihi emulator's direct convolution in int16 lanes (``conv16``: 16 samples per vector, sums
exact modulo 2^16 and below 2^15; spikes as masks ``-h`` added with ``vpand``/``vpaddw``, other
codes multiplied with ``vpmullw``; register tiles of output channels x positions) against the
numpy-slice / Python-integer reference of tests/test_loihi_conv_kernel.py (docs/loihi.md
section 2):

* every geometry there (strides, dilation, asymmetric padding, several input channels, 1 to 16
  output channels), every tile of ``conv16.TILES``, sample counts that are not a multiple of the
  lanes, every neuron, exponents below and above 0, biases on the spike thresholds; spikes with
  sums up to ``2^15 - 128``, unsigned 8-bit and signed codes: the outputs equal the reference,
  alone and fused with a pooling;
* the bound is tight: a sum of ``2^15`` wraps in int16 (the raw kernel gives ``-2^15``), and
  ``emulator.lanes16_fits`` refuses such a layer;
* deliberately wrong variants fail: the spike masks stored as ``+h`` (the digit's low bit), codes
  ANDed instead of multiplied, padding taps reading input 0 instead of the zero row, the
  positions of a tile read one tap late;
* the emulator plans it for the step CNNs' convolutions (``direct int16 spikes`` / ``patches``),
  their scores equal the reference, and a wrong kernel injected into a program changes them.
"""

from __future__ import annotations

import dataclasses
import types

import numba as nb
import numpy as np
import pytest
from hwq_targets.common import patches
from hwq_targets.common.blocks import run_blocks
from hwq_targets.loihi import conv16, kernels
from hwq_targets.loihi.emulator import Emulator, PatchDense, lanes16_fits
from test_loihi_cnn import STEP_CNNS, extreme_codes, step_cnn
from test_loihi_conv_kernel import GEOMETRIES, raw_kernel, reference_conv, reference_pool, threshold_case

import hwq
from hwq.ir.window import Window
from hwq.quant import reference

NO_POOL, NO_TABLE = np.zeros(0, np.int64), np.zeros((0, 0), np.int64)
LIMIT = conv16.SUM_LIMIT


def spike_case(i: int, e: int, seed: int = 0):
    """Spikes on geometry ``i``, one synapse group with exponent ``e``, digits up to +-255 (the sums
    reach several thousand), biases that put thresholds on sums that occur."""
    (c, height, width), kernel, stride, pads, dilation, c_out = GEOMETRIES[i]
    win = Window((c, height, width), kernel, stride, pads, dilation, 1)
    rng = np.random.default_rng(7000 + 10 * i + e + 100 * seed)
    h = rng.integers(0, 2, (37, win.n_in)).astype(np.uint8)
    digits = rng.integers(-255, 256, (c_out, win.patch_len))
    theta = int(rng.integers(0, 2**10)) << 6
    a, _ = reference_conv(h, win, [(digits, e)], 2, np.zeros(c_out, np.int64), 0)
    hit = a.reshape(len(h), c_out, -1)[rng.integers(0, len(h)), np.arange(c_out), rng.integers(0, win.positions)]
    bias = theta - (hit << 6) + rng.integers(0, 2, c_out)
    return h, win, [(digits, e)], bias, theta


def c_max(sets) -> int:
    return int(np.abs(np.asarray(sets[0][0], np.int64)).sum(axis=1).max())


def run16(h, win, sets, neuron, bias, theta, kernel=None, idx=None, pool=None, tile=None, lo=0, hi=1):
    """``conv16_blocks`` as the emulator calls it (codes in ``[lo, hi]``; spikes: ``[0, 1]``), with
    ``tile`` (default ``conv16.tile_for``); with ``pool`` = (geometry, table, outputs) the fused pooling."""
    outs, reach = tile or conv16.tile_for(len(sets[0][0]))
    idx = conv16.lanes_index(patches.gather_index(win)[0], win.n_in, reach) if idx is None else idx(win, reach)
    w = conv16.lanes_weights(sets[0][0], outs)
    exps = np.array([sets[0][1]], np.int64)
    geometry, table, n_out = pool if pool is not None else (NO_POOL, NO_TABLE, len(sets[0][0]) * win.positions)
    out = np.empty((len(h), n_out), np.int64)
    maps = np.empty(0, np.uint8 if pool is not None else np.int64)
    peak = max(abs(lo), abs(hi))
    bad = run_blocks(kernel or conv16.conv16_blocks, len(h), h, lo, hi, idx, w, outs, reach, exps, neuron,
                     np.asarray(bias, np.int64), theta, c_max(sets) * peak, win.positions, maps, geometry, table, 0,
                     out)
    assert bad == 0
    return out


def code_case(i: int, e: int, signed: bool):
    """8-bit codes (unsigned or signed) on geometry ``i``, digits +-3 (sums below 2^15)."""
    h, win, _, bias, theta = spike_case(i, e, seed=3)
    rng = np.random.default_rng(500 + 10 * i + e + signed)
    h = rng.integers(-128, 128, h.shape).astype(np.int8) if signed else rng.integers(0, 256, h.shape).astype(np.uint8)
    digits = rng.integers(-3, 4, (len(bias), win.patch_len))
    return h, win, [(digits, e)], bias, theta


CASES = [spike_case(i, e) for i in range(len(GEOMETRIES)) for e in (-2, 0, 1)]


def mismatches(cases=CASES, lo=0, hi=1, **how) -> int:
    bad = 0
    for h, win, sets, bias, theta in cases:
        for neuron in (0, 1, 2):
            _, want = reference_conv(h, win, sets, neuron, bias, theta)
            bad += not np.array_equal(run16(h, win, sets, neuron, bias, theta, lo=lo, hi=hi, **how), want)
    return bad


CODES = [code_case(i, e, False) for i in range(len(GEOMETRIES)) for e in (-2, 1)]
SIGNED = [code_case(i, e, True) for i in range(len(GEOMETRIES)) for e in (-2, 1)]


@raw_kernel
@pytest.mark.parametrize("tile", conv16.TILES, ids=lambda t: f"{t[0]}x{t[1]}")
def test_conv16_equals_the_reference(tile):
    assert all(c_max(sets) < LIMIT for _, _, sets, _, _ in CASES)
    assert max(c_max(sets) for _, _, sets, _, _ in CASES) > 2**12
    assert mismatches(tile=tile) == 0
    more = [threshold_case(i, e, True) for i in range(len(GEOMETRIES)) for e in (-2, 0, 1)]  # digits +-7
    assert mismatches(more, tile=tile) == 0
    assert all(c_max(sets) * 255 < LIMIT for _, _, sets, _, _ in CODES)
    assert mismatches(CODES, 0, 255, tile=tile) == 0
    assert mismatches(SIGNED, -128, 127, tile=tile) == 0


@raw_kernel
def test_sums_up_to_the_int16_bound_are_exact_and_one_more_wraps():
    """8 channels x 4x4 taps, all digits 255 (sum 32640 < 2^15) or -255, every input spiking, and
    a sum of exactly 2^15: the kernel holds the first exactly and really wraps the second, so the
    bound ``emulator.lanes16_fits`` checks is the right one."""
    win = Window((8, 4, 4), (4, 4), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    h = np.ones((5, win.n_in), np.uint8)
    zero = np.zeros(5, np.int64)
    for d in (255, -255):
        sets = [(np.full((5, win.patch_len), d), 0)]
        np.testing.assert_array_equal(run16(h, win, sets, 2, zero, 0), reference_conv(h, win, sets, 2, zero, 0)[1])
    over = np.full((5, win.patch_len), 256)  # 128 x 256 = 2^15
    got = run16(h, win, [(over, 0)], 2, zero, 0)
    assert (got == -LIMIT).all() and (reference_conv(h, win, [(over, 0)], 2, zero, 0)[1] == LIMIT).all()


@nb.njit(nogil=True)
def plus_masks(h, i0, rows, lo, hi, masks, buf):
    """Spikes stored as ``+h``, not as masks: a spike adds ``digit & 1``."""
    n_in = h.shape[1]
    count = 0
    for b in range(rows):
        for j in range(n_in):
            q = np.int64(h[i0 + b, j])
            count += (q < lo) | (q > hi)
            buf[j, b] = np.int16(q)
    if rows < conv16.LANES:
        buf[:, rows:] = 0
    return count


@nb.njit(nogil=True)
def and_everywhere(masks, outs, buf, w, c, idx, p0, o0, k):
    """Codes ANDed with the digits like masks, not multiplied."""
    conv16.run_tile(True, outs, buf, w, c, idx, p0, o0, k)


def rebuilt(**swap):
    """``conv16_blocks`` compiled again from its source with globals swapped (``run_tile`` reaches
    it through ``conv_lanes16``, compiled again too)."""
    lanes = conv16.conv_lanes16.py_func
    swap = dict(swap)
    if "run_tile" in swap:
        swap["conv_lanes16"] = nb.njit(nogil=True)(types.FunctionType(lanes.__code__, {**lanes.__globals__, **swap},
                                                                      lanes.__name__))
    f = conv16.conv16_blocks.py_func
    return nb.njit(nogil=True)(types.FunctionType(f.__code__, {**f.__globals__, **swap}, f.__name__))


def padding_reads_input_zero(win, reach) -> np.ndarray:
    idx = patches.gather_index(win)[0]
    out = conv16.lanes_index(idx, win.n_in, reach)
    out[:idx.shape[0]][idx < 0] = 0
    return out


def one_tap_late(win, reach) -> np.ndarray:
    out = conv16.lanes_index(patches.gather_index(win)[0], win.n_in, reach)
    return np.roll(out, 1, axis=1)


@raw_kernel
def test_the_rebuild_itself_is_faithful():
    assert mismatches(CASES[:6], kernel=rebuilt()) == 0


@raw_kernel
def test_wrong_variants_fail_the_reference():
    assert mismatches(kernel=rebuilt(load_lanes16=plus_masks)) > len(GEOMETRIES)
    assert mismatches(CODES, 0, 255, kernel=rebuilt(run_tile=and_everywhere)) > len(GEOMETRIES)
    for wrong in (padding_reads_input_zero, one_tap_late):
        bad = 0
        for h, win, sets, bias, theta in CASES:
            if wrong is padding_reads_input_zero and not any(win.pads):
                continue
            _, want = reference_conv(h, win, sets, 2, bias, theta)
            bad += not np.array_equal(run16(h, win, sets, 2, bias, theta, idx=wrong), want)
        assert bad >= 3, wrong.__name__


@raw_kernel
@pytest.mark.parametrize("pool_geometry", [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (2, 2), (1, 1, 1, 1)),
                                           ((2, 3), (1, 2), (0, 1, 1, 0))])
def test_fused_pool_equals_the_reference(pool_geometry):
    for i in (0, 2, 3, 5):
        h, win, sets, bias, theta = spike_case(i, 0, seed=1)
        c_out = len(sets[0][0])
        pool_win = Window((c_out, *win.out_hw), *pool_geometry, (1, 1), c_out)
        rng = np.random.default_rng(i)
        p_digits, p_exps = rng.integers(1, 4, (2, c_out)), np.array([-1, 1], np.int64)
        p_bias = rng.integers(-3, 4, c_out) << 6
        size = pool_geometry[0][0] * pool_geometry[0][1]
        table = kernels.pool_table(p_digits, p_exps, 0, p_bias, 1 << 6, 0, size)
        geometry = np.array([*pool_win.in_shape, *pool_win.kernel, *pool_win.stride, pool_win.pads[0],
                             pool_win.pads[1], *pool_win.out_hw], np.int64)
        _, maps = reference_conv(h, win, sets, 0, bias, theta)
        want = reference_pool(maps, pool_win, p_digits, p_exps, 0, p_bias, 1 << 6)
        got = run16(h, win, sets, 0, bias, theta, pool=(geometry, table, pool_win.channels * pool_win.positions))
        np.testing.assert_array_equal(got, want)


def lanes16_layers(emulator) -> list[int]:
    return [i for i, c in enumerate(emulator.layers) if isinstance(c, PatchDense) and c.lanes16]


def test_lanes16_fits_only_sums_under_the_bound():
    fits = 0
    for name in sorted(STEP_CNNS):
        for lm in hwq.compile(step_cnn(name), "loihi").mapping.layers:
            if lm.window is not None and lm.window.groups == 1 and lanes16_fits(lm):
                fits += 1
                peak = max(abs(v) for v in lm.in_range)
                assert len(lm.sets) == 1 and int(np.abs(lm.sets[0].digits).sum(axis=1).max()) * peak < LIMIT
    assert fits >= 3


def test_lanes16_fits_refuses_a_sum_of_2_15():
    """The same layer with its codes' range widened: planned while ``rowsum * peak < 2^15``, refused
    from ``2^15`` on (Python integers; the raw kernel's wrap at ``2^15`` is shown above)."""
    layers = [lm for n in sorted(STEP_CNNS) for lm in hwq.compile(step_cnn(n), "loihi").mapping.layers
              if lm.window is not None and lanes16_fits(lm)]
    lm = max(layers, key=lambda lm: int(np.abs(lm.sets[0].digits).sum(axis=1).max()))
    rowsum = int(np.abs(lm.sets[0].digits).sum(axis=1).max())
    top = -(-LIMIT // rowsum)  # the smallest peak with rowsum * peak >= 2^15
    assert lanes16_fits(dataclasses.replace(lm, in_range=(0, top - 1)))
    assert not lanes16_fits(dataclasses.replace(lm, in_range=(0, top)))
    assert not lanes16_fits(dataclasses.replace(lm, in_range=(-top, 0)))


@pytest.mark.parametrize("name", sorted(STEP_CNNS))
def test_step_cnns_run_their_int16_convs_exactly(name):
    net = step_cnn(name)
    program = hwq.compile(net, "loihi")
    x = extreme_codes(net, 40)
    want = reference.forward(net, x)
    np.testing.assert_array_equal(program.forward(x), want)
    plain = Emulator(program.mapping)  # unfused: conv16_blocks without a pooling
    np.testing.assert_array_equal(plain.run(x), want)
    for emulator in (program.emulator, plain):
        for i in lanes16_layers(emulator):
            spikes = emulator.layers[i].lm.in_range == (0, 1)
            assert emulator.report[i] == ("direct int16 spikes" if spikes else "direct int16 patches")


@raw_kernel
def test_step_cnns_have_int16_convs():
    assert sum(len(lanes16_layers(hwq.compile(step_cnn(n), "loihi").emulator)) for n in STEP_CNNS) >= 3


@raw_kernel
def test_a_wrong_int16_kernel_in_the_program_is_caught(monkeypatch):
    bad = 0
    for name in sorted(STEP_CNNS):
        net = step_cnn(name)
        program = hwq.compile(net, "loihi")
        if not lanes16_layers(program.emulator):
            continue
        x = extreme_codes(net, 40)
        right = program.forward(x)
        with monkeypatch.context() as m:
            m.setattr(conv16, "conv16_blocks", rebuilt(load_lanes16=plus_masks))
            bad += not np.array_equal(program.forward(x), right)
    assert bad >= 1
