"""The Loihi emulator's direct convolution (``kernels.direct_conv_blocks``: samples in float32 vector
lanes, FMA register tiles over the taps of each position, no patch matrix) and its fusion with the
pooling that follows (``kernels.direct_conv_pool_blocks``: the pooling's neuron tabulated over the
window sums) against a plain numpy / Python-integer reference written from docs/loihi.md section 2:

* on odd geometries (strides, dilation, asymmetric padding, several input channels), 1 to 13 output
  channels (every register tile width), sample counts that are not a multiple of the lanes, one or
  two synapse groups (negative and positive exponents), every neuron, and sums large enough that
  the 24-bit wrap of the LIF current shows: ``a`` and the outputs equal the reference;
* deliberately wrong variants fail that check: the kernel flipped, padding read as code 1, and the
  kernels recompiled with the 24-bit wrap dropped or the floor shift truncating toward zero;
* the emulator plans it (``direct float32 patches``) and its scores on the step CNNs equal the
  reference, fused with the poolings and traced layer by layer, also on codes beyond the format;
* the spike as a compare of the float32 sum with a bisected threshold (``spike_thresholds``, where
  the 24-bit current cannot wrap) and the vector window sums and step compares of the fused pooling
  (``pool_lanes``) equal the reference; read as strictly above, with the wrap check dropped, a
  window one row short, or codes widened without their sign, they fail it.
"""

from __future__ import annotations

import types

import numba as nb
import numpy as np
import pytest
from hwq_targets.common import patches
from hwq_targets.common.blocks import run_blocks
from hwq_targets.loihi import kernels
from hwq_targets.loihi.emulator import CompiledPool, Emulator, PatchDense, fuses
from test_loihi_cnn import STEP_CNNS, extreme_codes, step_cnn

import hwq
from hwq.ir.window import Window
from hwq.quant import reference

# the direct kernel's own cases need it (AVX2 + FMA); the emulator's networks run on every CPU
# (elsewhere through the gather-and-product path the emulator then plans)
raw_kernel = pytest.mark.skipif(not kernels.direct_available(), reason="runs the AVX2 + FMA kernel itself")

NONE = np.empty((0, 0), np.int64)
WRAP, STATE_MAX = 2**23, 2**23 - 1

# (C, H, W), kernel, stride, pads (top, left, bottom, right), dilation, output channels
GEOMETRIES = [
    ((1, 12, 12), (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 6),
    ((3, 9, 7), (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 13),
    ((2, 11, 8), (3, 2), (2, 3), (1, 0, 2, 1), (1, 1), 5),
    ((4, 7, 9), (3, 3), (1, 2), (1, 1, 1, 1), (2, 1), 7),
    ((1, 6, 6), (6, 6), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # one position: the whole map
    ((2, 5, 6), (1, 1), (1, 1), (0, 1, 1, 0), (1, 1), 16),  # 1x1 with padded border positions
]


# ---------------------------------------------------------------- the reference (numpy slices, Python ints)
def conv_sums(h: np.ndarray, win: Window, digits: np.ndarray) -> np.ndarray:
    """(N, C_out, Ho, Wo) ``sum D[o] * patch`` from slices of the zero-padded maps (int64; |sums| < 2^40)."""
    c, height, width = win.in_shape
    (kh, kw), (sh, sw), (top, left, bottom, right), (dh, dw) = win.kernel, win.stride, win.pads, win.dilation
    ho, wo = win.out_hw
    maps = np.zeros((len(h), c, height + top + bottom, width + left + right), np.int64)
    maps[:, :, top:top + height, left:left + width] = h.reshape(len(h), c, height, width)
    kernel = np.asarray(digits, np.int64).reshape(len(digits), c, kh, kw)
    out = np.zeros((len(h), len(digits), ho, wo), np.int64)
    for y in range(ho):
        for x in range(wo):
            patch = maps[:, :, y * sh:y * sh + (kh - 1) * dh + 1:dh, x * sw:x * sw + (kw - 1) * dw + 1:dw]
            out[:, :, y, x] = np.einsum("nchw,ochw->no", patch, kernel)
    return out


def shift(v: int, e: int) -> int:
    return v << e if e >= 0 else v >> -e  # Python ints: >> floors


def neuron_out(a: int, neuron: int, bias: int, theta: int) -> int:
    """docs/loihi.md section 2: step (u = wrap24(a 2^6), v = clamp(u + b), v > theta), ReLU, identity."""
    if neuron == 0:
        u = a << 6
        u = u - 2 * WRAP if u > WRAP else u + 2 * WRAP if u <= -WRAP else u
        return int(min(max(u + bias, -STATE_MAX), STATE_MAX) > theta)
    return max(a + bias, 0) if neuron == 1 else a + bias


def reference_conv(h, win, sets, neuron, bias, theta):
    """``a`` (N, C_out P) and the outputs, Loihi's neuron order ``o P + p``."""
    a = None
    for digits, e in sets:
        part = [[shift(int(v), e) for v in row] for row in conv_sums(h, win, digits).reshape(len(h), -1)]
        a = part if a is None else [[x + y for x, y in zip(r, s)] for r, s in zip(a, part)]
    positions = win.positions
    out = [[neuron_out(v, neuron, int(bias[q // positions]), theta) for q, v in enumerate(row)] for row in a]
    return np.array(a, np.int64), np.array(out, np.int64)


def reference_pool(maps, pool_win, digits, exps, neuron, bias, theta):
    """The pooling neuron on window sums of ``maps`` (zero padding), Python ints."""
    sums = conv_sums(maps, pool_win, np.eye(pool_win.channels, dtype=np.int64).repeat(
        pool_win.kernel[0] * pool_win.kernel[1], axis=1)).reshape(len(maps), pool_win.channels, -1)
    out = np.zeros(sums.shape, np.int64)
    for n in range(len(maps)):
        for c in range(pool_win.channels):
            for p in range(sums.shape[2]):
                a = sum(shift(int(d) * int(sums[n, c, p]), int(e)) for d, e in zip(digits[:, c], exps))
                out[n, c, p] = neuron_out(a, neuron, int(bias[c]), theta)
    return out.reshape(len(maps), -1)


# ---------------------------------------------------------------- cases and the kernel as the emulator calls it
def case(i: int, spikes: bool, groups: int, seed: int = 0):
    (c, height, width), kernel, stride, pads, dilation, c_out = GEOMETRIES[i]
    win = Window((c, height, width), kernel, stride, pads, dilation, 1)
    rng = np.random.default_rng(seed * 100 + i * 10 + groups + 3 * spikes)
    n = 37  # two full blocks of LANES and a partial one
    h = rng.integers(0, 2, (n, win.n_in)) if spikes else rng.integers(0, 256, (n, win.n_in))
    h = h.astype(np.uint8)
    big = rng.integers(-127, 128, (c_out, win.patch_len))  # sums up to ~2^21: a 2^6 wraps past 2^23
    small = rng.integers(-255, 256, (c_out, win.patch_len))  # negative sums: floor differs from truncation
    sets = [(big, 1)] if groups == 1 else [(small, -3), (big, 2)]
    bias = rng.integers(-2**22, 2**22, c_out)
    theta = int(rng.integers(0, 2**16)) << 6
    return h, win, sets, bias, theta


def tables(win: Window, sets):
    taps, ks, nks = kernels.direct_taps(patches.gather_index(win)[0])
    w = np.ascontiguousarray(np.stack([np.asarray(d).T for d, _ in sets]), np.float32)
    exps = np.array([e for _, e in sets], np.int64)
    return taps, ks, nks, w, exps


def run_direct(h, win, sets, neuron, bias, theta, kernel=None, plan=None):
    kernel = kernel or kernels.direct_conv_blocks
    taps, ks, nks, w, exps = plan or tables(win, sets)
    a = np.empty((len(h), len(sets[0][0]) * win.positions), np.int64)
    out = np.empty_like(a)
    bad = run_blocks(kernel, len(h), h, 0, 255, taps, ks, nks, w, exps, neuron, np.asarray(bias, np.int64), theta,
                     c_max(sets), a, out)
    assert bad == 0
    return a, out


def c_max(sets, peak: int = 255) -> int:
    """The bound on every group's ``|D @ h|`` for codes in ``[0, peak]`` (as ``emulator.sum_peak``)."""
    return max(int(np.abs(np.asarray(d, np.int64)).sum(axis=1).max()) for d, _ in sets) * peak


def mismatches(**how) -> list[str]:
    bad = []
    for i in range(len(GEOMETRIES)):
        for spikes in (True, False):
            for groups in (1, 2):
                h, win, sets, bias, theta = case(i, spikes, groups)
                for neuron in (0, 1, 2):
                    want_a, want = reference_conv(h, win, sets, neuron, bias, theta)
                    a, out = how_run(h, win, sets, neuron, bias, theta, **how)
                    if not (np.array_equal(a, want_a) and np.array_equal(out, want)):
                        bad.append(f"{GEOMETRIES[i]} spikes={spikes} groups={groups} neuron={neuron}")
    return bad


def how_run(h, win, sets, neuron, bias, theta, kernel=None, variant=None):
    if variant is None:
        return run_direct(h, win, sets, neuron, bias, theta, kernel)
    return variant(h, win, sets, neuron, bias, theta)


@raw_kernel
def test_direct_conv_equals_the_reference():
    assert kernels.direct_available()
    assert mismatches() == []


@raw_kernel
def test_direct_conv_shows_the_24bit_wrap():
    """The cases reach sums whose a 2^6 passes 2^23 (the wrap changes spikes), so dropping it shows."""
    h, win, sets, bias, theta = case(1, False, 1)
    a, _ = reference_conv(h, win, sets, 0, bias, theta)
    assert (np.abs(a) << 6 > WRAP).any()


# ---------------------------------------------------------------- deliberately wrong variants
def flipped(h, win, sets, neuron, bias, theta):
    """The kernel flipped in both spatial axes (a correlation read as a convolution)."""
    c_out = len(sets[0][0])
    c, (kh, kw) = win.in_shape[0], win.kernel
    flip = [(np.asarray(d).reshape(c_out, c, kh, kw)[:, :, ::-1, ::-1].reshape(c_out, -1), e) for d, e in sets]
    return run_direct(h, win, sets, neuron, bias, theta, plan=tables(win, flip))


def padding_reads_one(h, win, sets, neuron, bias, theta):
    """Padding taps kept, reading an extra input fixed at code 1 instead of 0."""
    idx = patches.gather_index(win)[0].copy()
    idx[idx < 0] = win.n_in
    taps, ks, nks = kernels.direct_taps(idx)
    _, _, _, w, exps = tables(win, sets)
    ones = np.concatenate([h, np.ones((len(h), 1), h.dtype)], axis=1)
    return run_direct(ones, win, sets, neuron, bias, theta, plan=(taps, ks, nks, w, exps))


@nb.njit(inline="always")
def no_wrap(u):
    return u


@nb.njit(inline="always")
def truncating_shift(v, k):
    return -((-v) >> k) if v < 0 else v >> k


DIRECT_CHAIN = ("shifted", "fire", "lane_shift", "neuron_lanes", "spike_thresholds", "position_neuron", "conv_lanes",
                "pool_table", "pool_block", "direct_conv_blocks", "direct_conv_pool_blocks")  # callees first


def rebuilt(rule: dict) -> dict:
    """The direct kernels compiled again from their source with one arithmetic rule swapped."""
    swap = dict(rule)
    for name in DIRECT_CHAIN:
        f = getattr(kernels, name).py_func
        new = types.FunctionType(f.__code__, {**f.__globals__, **swap}, f.__name__, f.__defaults__, f.__closure__)
        options = {k: v for k, v in getattr(kernels, name).targetoptions.items() if k not in ("cache", "nopython")}
        swap[name] = nb.njit(**options)(new)
    return swap


@raw_kernel
def test_the_rebuild_itself_is_faithful():
    """The recompilation with the right rule passes, so the failures below are the rule's."""
    assert mismatches(kernel=rebuilt({})["direct_conv_blocks"]) == []


@raw_kernel
@pytest.mark.parametrize("variant", [flipped, padding_reads_one], ids=lambda f: f.__name__)
def test_a_wrong_geometry_fails_the_reference(variant):
    assert len(mismatches(variant=variant)) > len(GEOMETRIES)


@raw_kernel
@pytest.mark.parametrize("rule", [{"wrap_current": no_wrap}, {"floor_shift": truncating_shift}],
                         ids=["24bit_wrap_dropped", "shift_truncates"])
def test_a_wrong_rule_fails_the_reference(rule):
    assert len(mismatches(kernel=rebuilt(rule)["direct_conv_blocks"])) >= len(GEOMETRIES)


# ---------------------------------------------------------------- fused with the pooling
def run_fused(h, win, sets, neuron, bias, theta, pool_win, p_digits, p_exps, p_neuron, p_bias, p_theta, kernel=None):
    kernel = kernel or kernels.direct_conv_pool_blocks
    taps, ks, nks, w, exps = tables(win, sets)
    size = pool_win.kernel[0] * pool_win.kernel[1]
    s_hi = size * (1 if neuron == 0 else int(np.abs(sets[0][0]).sum(axis=1).max()) * 255)  # bias 0, exponent 0
    table = kernels.pool_table(p_digits, p_exps, p_neuron, p_bias, p_theta, 0, s_hi)
    geometry = np.array([*pool_win.in_shape, *pool_win.kernel, *pool_win.stride, pool_win.pads[0], pool_win.pads[1],
                         *pool_win.out_hw], np.int64)
    out = np.empty((len(h), pool_win.channels * pool_win.positions), np.int64)
    maps = np.empty(0, np.uint8 if neuron == 0 else np.int64)
    bad = run_blocks(kernel, len(h), h, 0, 255, taps, ks, nks, w, exps, neuron, np.asarray(bias, np.int64), theta,
                     c_max(sets), maps, geometry, table, 0, out)
    assert bad == 0
    return out


@raw_kernel
@pytest.mark.parametrize("pool_geometry", [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (2, 2), (1, 1, 1, 1)),
                                           ((2, 3), (1, 2), (0, 1, 1, 0))])
@pytest.mark.parametrize("wrong", [None, "nowrap"])
def test_fused_pool_equals_the_reference(pool_geometry, wrong):
    kernel = rebuilt({"wrap_current": no_wrap})["direct_conv_pool_blocks"] if wrong else None
    bad = 0
    for i in (0, 2, 3):
        for neuron in (0, 1):
            h, win, sets, bias, theta = case(i, False, 1, seed=1)
            if neuron == 1:  # ReLU maps small enough to tabulate: non-negative digits, no bias
                sets = [(np.abs(d) % 3, 0) for d, _ in sets]
                bias = np.zeros_like(bias)
            c_out = len(sets[0][0])
            pool_win = Window((c_out, *win.out_hw), *pool_geometry, (1, 1), c_out)
            rng = np.random.default_rng(i)
            p_digits = rng.integers(1, 4, (2, c_out))
            p_exps = np.array([-1, 1], np.int64)
            p_bias = rng.integers(-3, 4, c_out) << 6
            _, maps = reference_conv(h, win, sets, neuron, bias, theta)
            want = reference_pool(maps, pool_win, p_digits, p_exps, 0, p_bias, 1 << 6)
            got = run_fused(h, win, sets, neuron, bias, theta, pool_win, p_digits, p_exps, 0, p_bias, 1 << 6, kernel)
            bad += not np.array_equal(got, want)
    assert bad == 0 if wrong is None else bad > 0


# ---------------------------------------------------------------- in the emulator
POOLED = [name for name, spec in STEP_CNNS.items() if any(neuron in ("pool", "sum") for neuron, _ in spec)]


@pytest.mark.parametrize("name", sorted(STEP_CNNS))
def test_emulator_runs_step_cnns_on_the_direct_conv(name):
    net = step_cnn(name)
    program = hwq.compile(net, "loihi")
    emulator = Emulator(program.mapping, use_direct=kernels.direct_available(), fuse_pools=True)
    direct = [i for i, c in enumerate(emulator.layers) if isinstance(c, PatchDense) and c.direct]
    assert all(emulator.report[i].startswith("direct int16" if emulator.layers[i].lanes16 else "direct float32")
               for i in direct)
    x = extreme_codes(net, 40)
    want = reference.forward(net, x)
    np.testing.assert_array_equal(emulator.run(x), want)
    blas = Emulator(program.mapping, use_vnni=False, use_avx2=False)
    assert not any(getattr(c, "direct", False) for c in blas.layers)
    traced = emulator.inputs(x)  # layer by layer (no fusion), every layer's a
    for got, ref in zip(traced, blas.inputs(x)):
        np.testing.assert_array_equal(got, ref)
    wide = x.astype(np.int64)
    wide[3, 5] = 300  # beyond the 8-bit format: the chunk falls back, still exact
    np.testing.assert_array_equal(emulator.run(wide), reference.forward(net, wide))


@raw_kernel
def test_the_step_cnns_fuse_direct_convs_with_their_poolings():
    fused = 0
    for name in POOLED:
        layers = hwq.compile(step_cnn(name), "loihi").emulator.layers
        fused += sum(fuses(a, b) for a, b in zip(layers, layers[1:]))
        assert all(isinstance(b, CompiledPool) for a, b in zip(layers, layers[1:]) if fuses(a, b))
    assert fused > 0
    assert all(program_emulator.fuse_pools for program_emulator in [hwq.compile(step_cnn(POOLED[0]), "loihi").emulator])


@raw_kernel
def test_a_wrong_fused_kernel_in_the_program_is_caught(monkeypatch):
    """``LoihiProgram.forward`` runs the fused pass: a fused kernel without the 24-bit wrap,
    injected from outside, changes its scores on inputs whose sums wrap (forced shift 0). The
    int16 lanes (tests/test_loihi_conv16.py) are turned off so that the float32 kernel runs."""
    name = next(n for n in POOLED if n.startswith("maxpool"))
    net = step_cnn(name)
    program = hwq.compile(net, "loihi")
    for layer in program.emulator.layers:
        if isinstance(layer, PatchDense):
            layer.lanes16 = False
    assert any(fuses(a, b) for a, b in zip(program.emulator.layers, program.emulator.layers[1:]))
    x = extreme_codes(net, 40)
    right = program.forward(x)
    np.testing.assert_array_equal(right, reference.forward(net, x))
    monkeypatch.setattr(kernels, "direct_conv_pool_blocks", rebuilt({"floor_shift": truncating_shift,
                                                                     "crosses": fires_at_threshold})
                        ["direct_conv_pool_blocks"])
    assert not np.array_equal(program.forward(x), right)


@nb.njit(inline="always")
def fires_at_threshold(v, theta):
    return v >= theta


# ---------------------------------------------------------------- the spike as a threshold on the float32 sums
# One synapse group, a LIF neuron, no trace, and partial sums too small to wrap the 24-bit state
# (``kernels.never_wraps``): the kernels compare each sum with ``kernels.spike_thresholds`` instead
# of running the neuron. Biases are chosen so that every channel's threshold lies on a sum that occurs.
def threshold_case(i: int, e: int, spikes: bool):
    (c, height, width), kernel, stride, pads, dilation, c_out = GEOMETRIES[i]
    win = Window((c, height, width), kernel, stride, pads, dilation, 1)
    rng = np.random.default_rng(1000 + i * 10 + e + 5 * spikes)
    h = (rng.integers(0, 2, (37, win.n_in)) if spikes else rng.integers(0, 256, (37, win.n_in))).astype(np.uint8)
    digits = rng.integers(-7, 8, (c_out, win.patch_len))
    theta = int(rng.integers(0, 2**10)) << 6
    a, _ = reference_conv(h, win, [(digits, e)], 2, np.zeros(c_out, np.int64), 0)  # a itself
    hit = a.reshape(len(h), c_out, -1)[rng.integers(0, len(h)), np.arange(c_out), rng.integers(0, win.positions)]
    bias = theta - (hit << 6) + rng.integers(0, 2, c_out)  # fires from a = hit (+1) or a = hit + 1
    return h, win, [(digits, e)], bias, theta


def run_spikes(h, win, sets, bias, theta, kernel=None):
    """The kernel without a trace (``a_out`` empty): the outputs only."""
    taps, ks, nks, w, exps = tables(win, sets)
    out = np.empty((len(h), len(sets[0][0]) * win.positions), np.int64)
    bad = run_blocks(kernel or kernels.direct_conv_blocks, len(h), h, 0, 255, taps, ks, nks, w, exps, 0,
                     np.asarray(bias, np.int64), theta, c_max(sets), NONE, out)
    assert bad == 0
    return out


def threshold_mismatches(kernel=None, cases=None) -> int:
    bad = 0
    for h, win, sets, bias, theta in cases or THRESHOLD_CASES:
        _, want = reference_conv(h, win, sets, 0, bias, theta)
        bad += not np.array_equal(run_spikes(h, win, sets, bias, theta, kernel), want)
    return bad


THRESHOLD_CASES = [threshold_case(i, e, spikes) for i in range(len(GEOMETRIES)) for e in (-2, 0, 1)
                   for spikes in (True, False)]


@nb.njit(inline="always")
def strictly_above(c, o, t, stage, q):
    for b in range(kernels.LANES):
        stage[q, b] = 1 if c[o, b] > t else 0


@nb.njit(inline="always")
def at_or_above(c, o, t, stage, q):
    for b in range(kernels.LANES):
        stage[q, b] = 1 if c[o, b] >= t else 0


@nb.njit(inline="always")
def always_safe(c_max, e):
    return True


@raw_kernel
def test_spike_thresholds_equal_the_reference():
    for _, _, sets, bias, theta in THRESHOLD_CASES:  # the compare path is the one these cases run
        assert kernels.spike_thresholds(sets[0][1], np.asarray(bias, np.int64), theta, c_max(sets),
                                        np.empty(len(bias), np.float32))
    assert threshold_mismatches() == 0


@raw_kernel
def test_a_wrong_threshold_fails_the_reference():
    """At-or-above read as strictly above: a sum on the threshold does not fire."""
    assert threshold_mismatches(rebuilt({"reach_lanes": at_or_above})["direct_conv_blocks"]) == 0  # as a loop
    assert threshold_mismatches(rebuilt({"reach_lanes": strictly_above})["direct_conv_blocks"]) > len(GEOMETRIES)


@raw_kernel
def test_thresholds_on_wrapping_sums_fail_the_reference():
    """The 24-bit check dropped: sums whose current wraps compared with a threshold."""
    wrapping = [case(i, False, 1) for i in range(len(GEOMETRIES))]
    assert threshold_mismatches(cases=wrapping) == 0
    assert threshold_mismatches(rebuilt({"never_wraps": always_safe})["direct_conv_blocks"], wrapping) > 0


@raw_kernel
def test_a_wrong_pool_window_fails_the_reference():
    """``pool_lanes`` recompiled with each window one row short: the fused pass disagrees."""
    import inspect

    src = inspect.getsource(kernels.pool_lanes.py_func).replace("min(y0 + kh, height)", "min(y0 + kh - 1, height)")
    assert "kh - 1" in src
    space = dict(kernels.__dict__)
    exec(src.split("\n", 1)[1], space)  # without the decorator line
    wrong = nb.njit(nogil=True)(space["pool_lanes"])
    kernel = rebuilt({"pool_lanes": wrong})["direct_conv_pool_blocks"]
    h, win, sets, bias, theta = case(0, False, 1, seed=1)
    pool_win = Window((len(sets[0][0]), *win.out_hw), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), len(sets[0][0]))
    args = (h, win, sets, 0, bias, theta, pool_win, np.ones((1, pool_win.channels), np.int64), np.zeros(1, np.int64),
            0, np.zeros(pool_win.channels, np.int64), 0)
    _, maps = reference_conv(h, win, sets, 0, bias, theta)
    want = reference_pool(maps, pool_win, *args[7:])
    np.testing.assert_array_equal(run_fused(*args, kernel=rebuilt({})["direct_conv_pool_blocks"]), want)
    assert not np.array_equal(run_fused(*args, kernel=kernel), want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64])
def test_pool_lanes_on_every_map_container(dtype):  # plain Numba: runs on every CPU
    """``kernels.pool_lanes`` on one block of maps in each container the unfused layers store
    (codes widened with their sign, int64 truncated), padded and strided windows, against window
    sums of the zero-padded maps (``reference_pool``) with an identity table."""
    info = np.iinfo(dtype)
    lo, hi = max(int(info.min), -1000), min(int(info.max), 1000)
    pool_win = Window((3, 7, 6), (3, 2), (2, 1), (1, 0, 1, 1), (1, 1), 3)
    rng = np.random.default_rng(int(np.dtype(dtype).itemsize))
    maps = rng.integers(lo, hi + 1, (kernels.LANES, pool_win.n_in))
    size = pool_win.kernel[0] * pool_win.kernel[1]
    s_lo, s_hi = size * min(lo, 0), size * (2**16 if np.dtype(dtype).itemsize <= 2 else hi)  # room for codes
    table = np.tile(np.arange(s_lo, s_hi + 1, dtype=np.int64), (3, 1))  # the sum itself; read without sign
    out = np.empty((pool_win.channels * pool_win.positions, kernels.LANES), np.int64)
    kernels.pool_lanes(np.ascontiguousarray(maps.T.astype(dtype)), *pool_win.in_shape, *pool_win.kernel,
                       *pool_win.stride, pool_win.pads[0], pool_win.pads[1], *pool_win.out_hw, table, s_lo,
                       np.empty(0, np.int32), np.empty((1, kernels.LANES), np.int32), out)
    want = conv_sums(maps, pool_win, np.eye(3, dtype=np.int64).repeat(size, axis=1)).reshape(kernels.LANES, -1)
    np.testing.assert_array_equal(out.T, want)


@raw_kernel
def test_a_wrong_pool_step_fails_the_reference():
    """The pooled LIF on spikes runs as ``s >= threshold`` (``kernels.step_rows``); read as strictly
    above, the fused pass disagrees with the reference, while the right one (and the rebuilt copy) agree."""
    wrong_pool = nb.njit(nogil=True)(types.FunctionType(
        kernels.pool_lanes.py_func.__code__, {**kernels.pool_lanes.py_func.__globals__, "reach_lanes": strictly_above},
        "pool_lanes"))
    h, win, sets, bias, theta = case(0, True, 1, seed=2)
    c_out = len(sets[0][0])
    pool_win = Window((c_out, *win.out_hw), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), c_out)
    p_digits, p_exps, p_bias = np.ones((1, c_out), np.int64), np.zeros(1, np.int64), np.arange(c_out) % 3 << 6
    steps = np.empty(c_out, np.int32)
    assert kernels.step_rows(kernels.pool_table(p_digits, p_exps, 0, p_bias, 1 << 6, 0, 4), steps)
    assert len(set(steps.tolist())) > 1
    args = (h, win, sets, 0, bias, theta, pool_win, p_digits, p_exps, 0, p_bias, 1 << 6)
    _, maps = reference_conv(h, win, sets, 0, bias, theta)
    want = reference_pool(maps, pool_win, *args[7:])
    np.testing.assert_array_equal(run_fused(*args), want)
    np.testing.assert_array_equal(run_fused(*args, kernel=rebuilt({})["direct_conv_pool_blocks"]), want)
    assert not np.array_equal(run_fused(*args, kernel=rebuilt({"pool_lanes": wrong_pool})["direct_conv_pool_blocks"]),
                              want)
