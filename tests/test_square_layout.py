"""Square's windows on a channel-last input (issue 19, "Attacks"): a Keras CNN through tf2onnx
takes its codes in ``(H, W, C)`` order; the windows must still be squares over height x width,
per channel, not squares over the declared ``(H, W, C)`` read as ``(C, H, W)``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_attack_square import Recording  # a device-like program recording every query

import hwq
from hwq import ir
from hwq.attack import Square
from hwq.attack.square import image_view
from hwq.ir.window import Window
from hwq.onnx.importer import load_onnx
from hwq.quant import reference

RGB = Path(__file__).parent / "data" / "exporters" / "keras3_cnn_rgb_tf2onnx.onnx"  # Input((6, 6, 3))
H, W, C = 6, 6, 3




def nchw_twin(graph: ir.Graph) -> ir.Graph:
    """The same network taking ``(C, H, W)`` rows: the importer's leading ``Flatten`` and its
    ``H x (W C)`` first convolution replaced by the plain ``C x H x W`` convolution."""
    flat, conv = graph.nodes[:2]
    assert isinstance(flat, ir.Flatten) and conv.window.in_shape == (1, H, W * C)
    o, _, kh, kwc = conv.weight.shape
    weight = conv.weight.reshape(o, kh, kwc // C, C).transpose(0, 3, 1, 2)
    w = conv.window
    win = Window((C, H, W), (kh, kwc // C), (w.stride[0], w.stride[1] // C),
                 (w.pads[0], w.pads[1] // C, w.pads[2], w.pads[3] // C), w.dilation, 1)
    first = ir.Conv2d(weight, conv.bias, win, conv.gain, conv.grid)
    return ir.Graph((C, H, W), (first, *graph.nodes[2:]), graph.output)


def to_chw(rows: np.ndarray) -> np.ndarray:
    return rows.reshape(len(rows), H, W, C).transpose(0, 3, 1, 2).reshape(len(rows), -1)


@pytest.fixture(scope="module")
def models():
    graph = load_onnx(RGB)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (40, H * W * C))
    nhwc = hwq.quantize(graph, 8, calibration=x, bounds=(0.0, 1.0))
    nchw = hwq.quantize(nchw_twin(graph), 8, calibration=to_chw(x), bounds=(0.0, 1.0))
    return nhwc, nchw, x


def test_the_network_states_its_channel_last_input(models):
    nhwc, nchw, _ = models
    assert nhwc.input_shape == (H, W, C)
    assert image_view(nhwc, H * W * C) == (C, H, W, True)
    assert image_view(nchw, H * W * C) == (C, H, W, False)
    one = load_onnx(RGB.with_name("keras3_cnn_tf2onnx.onnx"))  # one channel: nothing moves, NCHW
    assert image_view(hwq.quantize(one, 8, calibration=np.full((4, 64), 0.5), bounds=(0.0, 1.0)), 64)[3] is False


def test_square_step_is_a_square_patch_in_height_and_width(models):
    """The l-inf start is vertical stripes in the ``(H, W)`` image (constant along the height,
    per channel); the first iteration changes the points inside one ``s x s`` square of pixels."""
    nhwc, _, x = models
    program = hwq.compile(nhwc, "sim")
    y = reference.predict(nhwc, x)
    device = Recording(program)
    queries = 40
    hwq.attack(device, x, y, [0.03], method=Square(queries=queries), bounds=(0.0, 1.0))
    clean, start, first = (q.astype(np.int64) for q in device.seen[:3])
    alive = program.decide(program.forward(start)) == y  # the rows the first iteration moves
    assert len(start) == len(x) and len(first) == alive.sum() > 0
    start, clean = start[alive], clean[alive]
    stripes = np.sign(start - clean).reshape(-1, H, W, C)
    moved = stripes != 0
    assert moved.mean() > 0.5
    assert np.all((stripes == stripes[:, :1]) | ~moved | ~moved[:, :1])  # constant along the height
    side = Square()._window(0, queries - 2, H, W)[0]
    changed = np.any((first != start).reshape(-1, H, W, C), axis=-1)  # (rows, H, W) pixels
    assert changed.any()
    rows, cols = np.nonzero(changed.any(axis=0))
    assert rows.max() - rows.min() < side and cols.max() - cols.min() < side


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_on_nhwc_equals_square_on_the_nchw_twin(models, norm):
    """The same network, the same inputs, its codes in either order: the same attack, point for
    point (the randomness is drawn in the ``(C, H, W)`` view)."""
    nhwc, nchw, x = models
    y = reference.predict(nhwc, x)
    np.testing.assert_array_equal(reference.predict(nchw, to_chw(x)), y)
    eps = [0.0, 0.05, 0.2] if norm == "linf" else [0.0, 0.3, 1.0]
    square = Square(norm, queries=50)
    a = hwq.attack(hwq.compile(nhwc, "sim"), x, y, eps, method=square, bounds=(0.0, 1.0))
    b = hwq.attack(hwq.compile(nchw, "sim"), to_chw(x), y, eps, method=square, bounds=(0.0, 1.0))
    for k in range(len(eps)):
        np.testing.assert_array_equal(to_chw(a.adversarial(k)), b.adversarial(k))
    np.testing.assert_array_equal(a.predictions, b.predictions)
    np.testing.assert_array_equal(a.queries, b.queries)
    assert b.accuracy[-1] < 1
