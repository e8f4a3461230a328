"""The Loihi emulator's pooling kernel (``kernels.pool_layer``) against a plain numpy reference.

* on random spike maps and graded codes of odd sizes, with strides, asymmetric padding, several
  synapse groups (positive and negative exponents) and every neuron neuron: the kernel's ``a`` equals
  the window sums written out with numpy slices of the zero-padded maps (Python-integer floor
  shifts), and its outputs equal the neuron of ``spec.py`` (LIFReset, ReLU, identity) on them;
* deliberately wrong window sums (one column too many, the last row left out) fail that check;
* the emulator runs the step CNNs' poolings on it ("window sums"), with traces equal to the
  former per-channel patch products (``CompiledConv``) and scores equal to the reference, and a
  wrong kernel injected into the emulator is caught by the reference.
"""

from __future__ import annotations

import types

import numba as nb
import numpy as np
import pytest
from hwq_targets.common import pooling
from hwq_targets.loihi import kernels
from hwq_targets.loihi.emulator import CompiledConv, CompiledPool, Emulator
from hwq_targets.loihi.limits import ACT_SHIFT, STATE_MAX, STATE_WRAP
from test_loihi_cnn import STEP_CNNS, extreme_codes, step_cnn

import hwq
from hwq.ir.window import Window
from hwq.quant import reference

# (C, H, W), kernel, stride, pads (top, left, bottom, right)
GEOMETRIES = [
    ((3, 8, 8), (2, 2), (2, 2), (0, 0, 0, 0)),
    ((2, 7, 9), (2, 2), (2, 2), (0, 0, 1, 1)),  # odd sizes, the last window padded
    ((4, 9, 5), (3, 3), (2, 2), (1, 1, 1, 1)),
    ((1, 11, 13), (3, 2), (2, 3), (1, 0, 2, 1)),  # asymmetric kernel, strides and pads
    ((5, 6, 7), (3, 3), (1, 1), (1, 1, 1, 1)),
    ((2, 5, 5), (5, 5), (1, 1), (0, 0, 0, 0)),  # one window: the whole map
    ((3, 10, 6), (1, 2), (3, 1), (0, 1, 0, 0)),
]


def window_sums(h: np.ndarray, win: Window) -> np.ndarray:
    """(N, C, Ho, Wo) window sums as Python-sized int64, from numpy slices of the zero-padded maps."""
    c, height, width = win.in_shape
    (kh, kw), (sh, sw), (top, left, bottom, right) = win.kernel, win.stride, win.pads
    ho, wo = win.out_hw
    maps = np.zeros((len(h), c, height + top + bottom, width + left + right), np.int64)
    maps[:, :, top:top + height, left:left + width] = h.reshape(len(h), c, height, width)
    out = np.zeros((len(h), c, ho, wo), np.int64)
    for y in range(ho):
        for x in range(wo):
            out[:, :, y, x] = maps[:, :, y * sh:y * sh + kh, x * sw:x * sw + kw].sum(axis=(2, 3))
    return out


def reference_layer(h, win, digits, exps, neuron, bias, theta):
    """``a`` (N, C P) and the neuron's outputs, written with Python integers and spec.py's neuron."""
    s = window_sums(h, win).reshape(len(h), win.channels, -1)
    a = np.zeros_like(s)
    for g, e in enumerate(exps.tolist()):
        y = (s * digits[g][None, :, None]).astype(object)
        a += np.array(y * 2**e if e >= 0 else y // 2**-e, np.int64)  # floor division: Loihi's shift
    b = np.asarray(bias, np.int64)[None, :, None]
    if neuron == 0:
        u = a << ACT_SHIFT
        u = np.where(u > STATE_WRAP, u - 2 * STATE_WRAP, np.where(u <= -STATE_WRAP, u + 2 * STATE_WRAP, u))
        out = (np.clip(u + b, -STATE_MAX, STATE_MAX) > theta).astype(np.int64)
    elif neuron == 1:
        out = np.maximum(a + b, 0)
    else:
        out = a + b
    return a.reshape(len(h), -1), out.reshape(len(h), -1)


def run_kernel(kernel, h, win, digits, exps, neuron, bias, theta, out_dtype=np.int64):
    n = len(h)
    a = np.empty((n, win.channels * win.positions), np.int64)
    out = np.empty_like(a, dtype=out_dtype)
    c, height, width = win.in_shape
    kernel(np.ascontiguousarray(h), c, height, width, *win.kernel, *win.stride, win.pads[0], win.pads[1],
           *win.out_hw, digits, exps, neuron, bias, theta, a, out)
    return a, out


def case(seed: int, geometry, spikes: bool):
    rng = np.random.default_rng(seed)
    shape, kernel, stride, pads = geometry
    win = Window(shape, kernel, stride, pads, groups=shape[0])
    win.validate()
    n = 5
    h = ((rng.random((n, win.n_in)) < 0.45).astype(np.uint8) if spikes
         else rng.integers(-300, 300, (n, win.n_in)).astype(np.int16))
    groups = int(rng.integers(1, 4))
    digits = rng.integers(-128, 128, (groups, win.channels)).astype(np.int64)
    exps = rng.integers(-7, 4, groups).astype(np.int64)
    bias = rng.integers(-2000, 2000, win.channels).astype(np.int64)
    theta = int(rng.integers(0, 3000)) << ACT_SHIFT
    return h, win, digits, exps, bias, theta


def mismatches(kernel) -> list[str]:
    """Every case where ``kernel`` differs from the reference (empty: exact everywhere)."""
    bad = []
    for i, geometry in enumerate(GEOMETRIES):
        for spikes in (True, False):
            h, win, digits, exps, bias, theta = case(i, geometry, spikes)
            for neuron in (0, 1, 2):
                want_a, want = reference_layer(h, win, digits, exps, neuron, bias, theta)
                a, out = run_kernel(kernel, h, win, digits, exps, neuron, bias, theta)
                if not (np.array_equal(a, want_a) and np.array_equal(out, want)):
                    bad.append(f"{geometry} spikes={spikes} neuron={neuron}")
    return bad


def test_pool_layer_equals_the_window_sums_written_out():
    assert mismatches(kernels.pool_layer) == []


def test_pool_layer_writes_narrow_containers():
    """Spike outputs straight into the uint8 container the next layer reads."""
    h, win, digits, exps, bias, theta = case(3, GEOMETRIES[2], True)
    want_a, want = reference_layer(h, win, digits, exps, 0, bias, theta)
    a, out = run_kernel(kernels.pool_layer, h, win, digits, exps, 0, bias, theta, np.uint8)
    assert out.dtype == np.uint8 and np.array_equal(out, want) and np.array_equal(a, want_a)


@nb.njit(inline="always")
def one_column_too_many(h, i, src, width, i0, i1, j0, j1):
    return pooling.window_sum(h, i, src, width, i0, i1, j0, min(j1 + 1, width))


@nb.njit(inline="always")
def last_row_left_out(h, i, src, width, i0, i1, j0, j1):
    return pooling.window_sum(h, i, src, width, i0, i1 - 1, j0, j1)


def with_window_sum(window_sum):
    """``kernels.pool_layer`` compiled again on a different ``window_sum``."""
    module = types.ModuleType("wrong_pooling")
    module.window_sum = window_sum
    f = kernels.pool_layer.py_func
    new = types.FunctionType(f.__code__, {**f.__globals__, "pooling": module}, f.__name__, f.__defaults__,
                             f.__closure__)
    return nb.njit(parallel=True)(new)


@pytest.mark.parametrize("wrong", [one_column_too_many, last_row_left_out], ids=lambda f: f.__name__)
def test_a_wrong_window_fails_the_reference(wrong):
    kernel = with_window_sum(wrong)
    assert len(mismatches(kernel)) > len(GEOMETRIES)  # caught on most geometries, not on a corner
    assert mismatches(with_window_sum(pooling.window_sum)) == []  # the recompilation itself is faithful


POOLED = [name for name, spec in STEP_CNNS.items() if any(neuron in ("pool", "sum") for neuron, _ in spec)]


@pytest.mark.parametrize("vnni", [None, False])
@pytest.mark.parametrize("name", POOLED)
def test_emulator_pools_on_window_sums(name, vnni):
    net = step_cnn(name)
    program = hwq.compile(net, "loihi")
    emulator = Emulator(program.mapping, use_vnni=vnni)
    pools = [i for i, c in enumerate(emulator.layers) if isinstance(c, CompiledPool)]
    assert pools and all(emulator.report[i] == "window sums" for i in pools)
    x = extreme_codes(net, 40)
    np.testing.assert_array_equal(emulator.run(x), reference.forward(net, x))
    traced = emulator.inputs(x)
    per_channel = [CompiledConv(c.lm) if isinstance(c, CompiledPool) else c for c in emulator.layers]
    pres: list = []
    Emulator._forward(per_channel, x, pres)
    for i in pools:
        np.testing.assert_array_equal(traced[i], pres[i])


def test_a_wrong_pool_kernel_in_the_emulator_is_caught(monkeypatch):
    net = step_cnn("maxpool-3x3-stride2-padded")
    x = extreme_codes(net, 40)
    right = reference.forward(net, x)
    monkeypatch.setattr(kernels, "pool_layer", with_window_sum(last_row_left_out))
    assert not np.array_equal(Emulator(hwq.compile(net, "loihi").mapping).run(x), right)
