"""Quantization of convolutional float graphs (issue 19, integer semantics): Conv2d / pools /
Flatten / Affine -> QLayer(window) / QPool, per-channel scales, BatchNorm gains in the weight
scales (negative: flipped codes), QAT grids kept bit for bit, average pooling's M / 2^S, k/255
image inputs, the int64 refusal. The float model is written here with its own loops over the
kernel offsets (not ``Window.gather_index``), so it checks the geometry independently."""

from __future__ import annotations

import numpy as np
import pytest

import hwq
from hwq import ir
from hwq.errors import InvalidModelError, UsageError
from hwq.ir import activations
from hwq.ir.window import Window
from hwq.quant import reference
from hwq.quant.qnet import QLayer, QPool, QuantSettings
from hwq.quant.quantize import avg_requant, quantize
from hwq.quant.schemes import get_scheme
from hwq.target.protocol import ReferenceProgram

RNG = np.random.default_rng(19)


# -- an independent float model --------------------------------------------------------------------


def offsets(win: Window, x: np.ndarray, fill: float):
    """``(i, j, view)`` for every kernel offset: the (N, C, Ho, Wo) inputs it meets, padding ``fill``."""
    t, left, b, r = win.pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)), constant_values=fill)
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = win.kernel, win.stride, win.dilation, win.out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]


def float_forward(graph: ir.Graph, x: np.ndarray) -> np.ndarray:
    """The float graph on flat rows ``x`` (C-order maps): real output scores."""
    h = np.asarray(x, dtype=np.float64).reshape(len(x), *graph.sample_shape)
    for node in graph.nodes:
        if isinstance(node, ir.Conv2d):
            win = node.window
            h = h.reshape(len(h), *win.in_shape)
            cg, og = win.group_channels, node.channels // win.groups
            out = np.zeros((len(h), node.channels, *win.out_hw))
            for i, j, v in offsets(win, h, 0.0):
                for g in range(win.groups):
                    w = node.weight[g * og:(g + 1) * og, :, i, j]  # (og, cg)
                    out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", v[:, g * cg:(g + 1) * cg], w)
            h = node.gain[None, :, None, None] * (out + node.bias[None, :, None, None])
        elif isinstance(node, (ir.MaxPool2d, ir.AvgPool2d, ir.SumPool2d)):
            win = node.window
            h = h.reshape(len(h), *win.in_shape)
            views = [v for _, _, v in offsets(win, h, -np.inf if isinstance(node, ir.MaxPool2d) else 0.0)]
            if isinstance(node, ir.MaxPool2d):
                h = np.max(views, axis=0)
            elif isinstance(node, ir.AvgPool2d):
                h = np.sum(views, axis=0) / win.size
            else:
                h = np.sum(views, axis=0) / 2.0**node.shift
        elif isinstance(node, ir.Flatten):
            h = h.reshape(len(h), -1)
        elif isinstance(node, ir.Affine):
            h = node.gain * (h.reshape(len(h), -1) @ node.weight.T + node.bias)
        elif isinstance(node, ir.Activation):
            h = activations.forward(node.kind, h)
    return h.reshape(len(h), -1)


def conv(in_shape, out, kernel=(3, 3), *, pads=(1, 1, 1, 1), stride=(1, 1), groups=1, gain=None, scale=0.3,
         grid=None, weight=None, bias=None):
    win = Window(tuple(in_shape), tuple(kernel), tuple(stride), tuple(pads), (1, 1), groups)
    w = RNG.normal(size=(out, in_shape[0] // groups, *kernel)) * scale if weight is None else weight
    b = RNG.normal(size=out) * 0.1 if bias is None else bias
    return ir.Conv2d(w, b, win, gain, grid)


def pool(kind, in_shape, kernel=(2, 2), **kw):
    win = Window(tuple(in_shape), tuple(kernel), tuple(kernel), (0, 0, 0, 0), (1, 1), in_shape[0])
    return kind(win, **kw)


def lenet(act="relu", gain=None, pool2=ir.AvgPool2d, grid=None, weight=None, bias=None):
    """conv 3x3 pad 1 (1 -> 6) -> act -> max 2x2 -> conv 3x3 (6 -> 8) -> act -> pool 2x2 -> flatten -> dense."""
    c1 = conv((1, 12, 12), 6, gain=gain, scale=0.6, grid=grid, weight=weight, bias=bias)
    p1 = pool(ir.MaxPool2d, c1.out_shape)
    c2 = conv(p1.out_shape, 8, pads=(0, 0, 0, 0), scale=0.25)
    p2 = pool(pool2, c2.out_shape)
    dense = ir.Affine(RNG.normal(size=(4, p2.n_out)) * 0.4, RNG.normal(size=4) * 0.1)
    nodes = (c1, ir.Activation(act), p1, c2, ir.Activation(act), p2, ir.Flatten(), dense)
    return ir.Graph((1, 12, 12), nodes, ir.Output("softmax"))


def images(n, shape=(1, 12, 12)):
    """Images with 255 levels in [0, 1] (k / 255), as the data loaders give them: flat rows."""
    return (RNG.integers(0, 256, (n, int(np.prod(shape)))) / 255.0).astype(np.float32)


# -- tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["relu", "step", "sigmoid"])
def test_integer_forward_agrees_with_float(act):
    """At 8 bits the integer network (hwq.quant.reference) decides as the float CNN does on most inputs;
    the network is valid, keeps the float graph and its input shape."""
    graph = lenet(act, gain=RNG.uniform(0.5, 2.0, 6) * np.where(RNG.random(6) < 0.3, -1, 1))
    x = images(1000)
    net = quantize(graph, QuantSettings(8), x[:500], (0.0, 1.0))
    net.validate()
    assert net.input_shape == (1, 12, 12) and net.float_graph is graph
    assert [type(n).__name__ for n in net.layers] == ["QLayer", "QPool", "QLayer", "QPool", "QLayer"]
    assert net.layers[0].window == graph.nodes[0].window and net.layers[4].window is None
    assert net.layers[1].op == "max" and net.layers[3].op == "avg"
    agree = np.mean(reference.predict(net, x) == float_forward(graph, x).argmax(axis=1))
    # a step flips at every zero crossing that the weight rounding moves: a random step network's
    # decisions agree less (0.68..0.85 measured over seeds; 0.97 at 16 bits)
    assert agree > (0.9 if act != "step" else 0.6), agree


def test_16_bits_track_the_float_scores():
    """At 16 bits the integer scores times their unit scale are the float scores closely (the geometry,
    the gains and the pooling scales are right, not only the decisions)."""
    graph = lenet("relu", gain=np.array([1.5, -0.7, 1.0, -2.0, 0.9, 1.1]))
    x = images(300)
    net = quantize(graph, QuantSettings(16, act_bits=16, input_bits=16), x, (0.0, 1.0))
    real = reference.forward(net, reference.quantize_input(net.input, x)) * net.layers[-1].unit_scale
    want = float_forward(graph, x)
    assert np.max(np.abs(real - want)) < 2e-3 * np.max(np.abs(want))


def test_per_channel_scales_for_convolutions_only():
    """A convolution gets one weight scale per output channel by default (Brevitas' default); the dense
    output layer keeps one scale (argmax), and with --per-channel off a hidden dense layer keeps one too."""
    w = RNG.normal(size=(4, 1, 3, 3)) * np.array([1.0, 10.0, 0.1, 3.0])[:, None, None, None]
    c = conv((1, 6, 6), 4, weight=w)
    hidden = ir.Affine(RNG.normal(size=(5, c.n_out)) * np.repeat([1.0, 20.0], [2, 3])[:, None], np.zeros(5))
    graph = ir.Graph((1, 6, 6), (c, ir.Activation("relu"), ir.Flatten(), hidden, ir.Activation("relu"),
                                 ir.Affine(RNG.normal(size=(3, 5)), np.zeros(3))))
    net = quantize(graph, QuantSettings(4), images(200, (1, 6, 6)), (0.0, 1.0))
    scales = net.layers[0].weight_scale
    assert len(set(scales.tolist())) == 4
    np.testing.assert_allclose(scales / scales[0], [1.0, 10.0, 0.1, 3.0], rtol=0.35)
    assert len(set(net.layers[1].weight_scale.tolist())) == 1 and len(set(net.layers[2].weight_scale.tolist())) == 1
    assert "per-channel" in net.report[1].format and net.report[1].tensor == "layer0.weight"
    per_tensor = np.abs(net.layers[0].weight).max(axis=1)
    assert np.all(per_tensor == 7)  # every channel uses its whole 4-bit range


def test_negative_gain_flips_codes_exactly():
    """A negative BatchNorm scale flips that channel's codes and keeps |gain| in the weight scale: the
    integer network equals, field for field, the one quantized from the graph with those channels'
    weights and bias negated and the gain made positive."""
    gain = np.array([1.3, -0.8, 2.0, -1.0, 0.5, -3.0])
    w, b = RNG.normal(size=(6, 1, 3, 3)), RNG.normal(size=6) * 0.1
    sign = np.sign(gain)
    a = lenet("relu", gain=gain, weight=w, bias=b)
    flipped = conv((1, 12, 12), 6, gain=np.abs(gain), weight=w * sign[:, None, None, None], bias=b * sign)
    b_graph = ir.Graph(a.sample_shape, (flipped, *a.nodes[1:]), a.output)
    x = images(300)
    na, nb = (quantize(g, QuantSettings(4), x, (0.0, 1.0)) for g in (a, b_graph))
    for la, lb in zip(na.layers, nb.layers):
        for f in ("weight", "bias", "weight_scale"):
            if hasattr(la, f):
                np.testing.assert_array_equal(getattr(la, f), getattr(lb, f))
        if la.requant is not None:
            np.testing.assert_array_equal(la.requant.multiplier, lb.requant.multiplier)
            np.testing.assert_array_equal(la.requant.shift, lb.requant.shift)
    np.testing.assert_allclose(na.layers[0].weight_scale / np.abs(gain), nb.layers[0].weight_scale / np.abs(gain),
                               rtol=1e-15)
    positive = quantize(lenet("relu", gain=np.abs(gain), weight=w, bias=b), QuantSettings(4), x, (0.0, 1.0))
    np.testing.assert_array_equal(na.layers[0].weight, positive.layers[0].weight * sign[:, None].astype(np.int64))
    assert "3 channels flipped" in na.report[1].format
    codes = reference.quantize_input(na.input, x)
    np.testing.assert_array_equal(reference.forward(na, codes), reference.forward(nb, codes))


@pytest.mark.parametrize("per_channel_grid", [False, True])
def test_qat_grid_codes_kept_bit_for_bit(per_channel_grid):
    """A Conv2d whose weights sit on a QAT grid (per tensor or per channel, as Brevitas' QuantConv2d)
    keeps its codes bit for bit at --bits 8 (flipped where the BatchNorm scale is negative); the gain
    goes into the weight scale; the settings record the grid's 3 bits."""
    scheme = get_scheme("narrow")
    codes = RNG.integers(-3, 4, (6, 1, 3, 3))
    step = RNG.uniform(0.05, 0.2, 6) if per_channel_grid else np.full(6, 0.1)
    grid = ir.Grid("narrow", 3, tuple(step.tolist()) if per_channel_grid else (0.1,), "test")
    gain = RNG.uniform(0.5, 2.0, 6) * np.array([1, -1, 1, 1, -1, 1])
    graph = lenet("relu", gain=gain, grid=grid, weight=codes * step[:, None, None, None])
    tail = []
    for node in graph.nodes[2:]:  # the other linear nodes on the same 3-bit grid
        if isinstance(node, ir.Conv2d):
            node = ir.Conv2d(scheme.to_codes(node.weight / 0.1, 3) * 0.1, node.bias, node.window,
                             grid=ir.Grid("narrow", 3, (0.1,)))
        elif isinstance(node, ir.Affine):
            node = ir.Affine(scheme.to_codes(node.weight / 0.1, 3) * 0.1, node.bias, grid=ir.Grid("narrow", 3, (0.1,)))
        tail.append(node)
    graph = ir.Graph(graph.sample_shape, (*graph.nodes[:2], *tail), graph.output)
    net = quantize(graph, QuantSettings(8), images(200), (0.0, 1.0))
    np.testing.assert_array_equal(net.layers[0].weight, codes.reshape(6, -1) * np.sign(gain)[:, None])
    np.testing.assert_allclose(net.layers[0].weight_scale, np.abs(gain) * step, rtol=1e-12)
    assert net.report[1].on_grid and net.settings.bits == 3
    net.validate()


def test_graph_with_negated_weights_on_a_grid_keeps_codes():
    """The grid check works on the weights, not on weights times gain: a grid whose gain is not a power of
    two still keeps its codes (the gain would take them off the grid)."""
    codes = RNG.integers(-7, 8, (6, 1, 3, 3))
    graph = lenet("relu", gain=np.full(6, 0.37), grid=ir.Grid("narrow", 4, (0.05,)), weight=codes * 0.05)
    net = quantize(graph, QuantSettings(8), images(100), (0.0, 1.0))
    np.testing.assert_array_equal(net.layers[0].weight, codes.reshape(6, -1))
    assert net.report[1].on_grid


def test_average_pooling_scales():
    """A power-of-two window: M = 1, S = log2(kh kw), out_scale = in_scale, and the real mean of codes
    whose sum divides by the window is kept exactly; a 3x3 window: S = 16 + 4, M = round(2^20 / 9) and
    out_scale keeps real values (M / 2^S * 9 * out_scale = in_scale)."""
    assert avg_requant(4) == (1, 2) and avg_requant(16) == (1, 4) and avg_requant(1) == (1, 0)
    assert avg_requant(9) == (round(2**20 / 9), 20) and avg_requant(49) == (round(2**22 / 49), 22)
    net = quantize(lenet("relu"), QuantSettings(8), images(200), (0.0, 1.0))
    avg = net.layers[3]
    assert avg.op == "avg" and not avg.truncate
    assert avg.requant.multiplier.tolist() == [1] * 8 and avg.requant.shift.tolist() == [2] * 8
    assert avg.out_scale == avg.in_scale == net.layers[2].out_scale
    assert avg.in_shape == (8, 4, 4)
    h = RNG.integers(0, 64, (50, 8 * 4 * 4)) * 4  # every 2x2 sum divides by 4: exact means
    out = reference.pool(avg, h)
    views = h.reshape(50, 8, 2, 2, 2, 2).sum(axis=(3, 5)).reshape(50, -1)
    np.testing.assert_array_equal(out * avg.out_scale, views / 4 * avg.in_scale)
    c = conv((2, 6, 6), 3)  # 3x6x6 maps: two 3x3 windows a side
    p = pool(ir.AvgPool2d, c.out_shape, (3, 3))
    g3 = ir.Graph((2, 6, 6), (c, ir.Activation("relu"), p, ir.Flatten(), ir.Affine(RNG.normal(size=(2, 12)),
                                                                                      np.zeros(2))))
    q3 = quantize(g3, QuantSettings(8), images(100, (2, 6, 6)), (0.0, 1.0)).layers[1]
    m, s = int(q3.requant.multiplier[0]), int(q3.requant.shift[0])
    assert (m, s) == (round(2**20 / 9), 20)
    assert q3.out_scale * m * 9 / 2**s == pytest.approx(q3.in_scale, rel=1e-12)


def test_sum_pool_truncates():
    """SumPool2d(shift) (QONNX Trunc) is QPool("avg", truncate=True, M=1, S=shift): floor(sum / 2^shift),
    also for negative sums (sign codes), where round half up would differ."""
    c = conv((1, 8, 8), 3)
    p = pool(ir.SumPool2d, c.out_shape, shift=2)
    graph = ir.Graph((1, 8, 8), (c, ir.Activation("sign"), p, ir.Flatten(),
                                 ir.Affine(RNG.normal(size=(2, p.n_out)), np.zeros(2))))
    net = quantize(graph, QuantSettings(8), images(100, (1, 8, 8)), (0.0, 1.0))
    q = net.layers[1]
    assert q.op == "avg" and q.truncate and q.requant.multiplier.tolist() == [1] * 3
    assert q.requant.shift.tolist() == [2] * 3 and q.out_scale == q.in_scale
    assert "truncates" in net.report[4].format and net.report[4].tensor == "layer1.sumpool"
    h = RNG.choice([-1, 1], (40, 3 * 64))
    sums = h.reshape(40, 3, 4, 2, 4, 2).sum(axis=(3, 5)).reshape(40, -1)
    np.testing.assert_array_equal(reference.pool(q, h), sums // 4)
    assert np.any(sums == -2)  # where floor (-1) and round half up (0) differ


def test_report_rows_for_every_node():
    """One row per tensor: input, each layer's weight, bias and activation, each pooling with its sum
    bound (the window size times the largest code)."""
    net = quantize(lenet("relu"), QuantSettings(8), images(200), (0.0, 1.0))
    names = [r.tensor for r in net.report]
    assert names == ["input", "layer0.weight", "layer0.bias", "layer0.relu", "layer1.maxpool", "layer2.weight",
                     "layer2.bias", "layer2.relu", "layer3.avgpool", "layer4.weight", "layer4.bias"]
    assert "on codes [0, 255] (exact)" in net.report[4].format
    assert "sum of 4 in [0, 1020] x 1 / 2^2 -> [0, 255]" in net.report[8].format
    assert net.report[4].max_abs_error == 0
    assert 0 < net.report[8].max_abs_error <= 0.5 * net.layers[3].out_scale + 1e-12  # round half up
    for r in net.report:
        r.validate()


def test_image_inputs_are_exact():
    """Images in [0, 1] with 255 levels map k / 255 -> k at 8 input bits (float32 or float64 data),
    k / 255 -> 257 k at 16 bits: the unsigned format's inv_scale is (2^B - 1) / hi."""
    k = np.arange(256)
    net = quantize(lenet("relu"), QuantSettings(8), images(50), (0.0, 1.0))
    assert not net.input.signed and net.input.inv_scale == 255
    for dtype in (np.float32, np.float64):
        x = (k / 255).astype(dtype)[:, None]
        np.testing.assert_array_equal(reference.quantize_input(net.input, x)[:, 0], k)
    net16 = quantize(lenet("relu"), QuantSettings(8, input_bits=16), images(50), (0.0, 1.0))
    x = (k / 255).astype(np.float32)[:, None]
    np.testing.assert_array_equal(reference.quantize_input(net16.input, x)[:, 0], 257 * k)


def test_accumulators_beyond_int64_refused_in_one_line():
    """Convolutions passing their accumulators on (no activation) at 16-bit weights and inputs: the
    third one's accumulator can leave int64; refused naming the layer."""
    nodes, shape = [], (8, 6, 6)
    for _ in range(3):
        c = conv(shape, 8, bias=np.zeros(8), scale=1.0)
        nodes.append(c)
        shape = c.out_shape
    nodes += [ir.Flatten(), ir.Affine(RNG.normal(size=(2, 8 * 36)), np.zeros(2))]
    graph = ir.Graph((8, 6, 6), tuple(nodes))
    x = RNG.uniform(-1, 1, (20, 8 * 36))
    with pytest.raises(InvalidModelError) as err:
        quantize(graph, QuantSettings(16, input_bits=16), x)
    assert "\n" not in str(err.value) and "layer 2" in str(err.value) and "int64" in str(err.value)
    quantize(ir.Graph((8, 6, 6), (nodes[0], *nodes[3:])), QuantSettings(16, input_bits=16), x)  # one fits


def test_identity_convolution_folds_unequal_gains():
    """A convolution passing its accumulator on needs one scale: unequal BatchNorm scales are folded into
    the weights (the report says so); the next layer still sees the float values."""
    c = conv((1, 8, 8), 4, gain=np.array([1.0, -2.0, 0.5, 3.0]))
    graph = ir.Graph((1, 8, 8), (c, pool(ir.MaxPool2d, c.out_shape), ir.Activation("relu"), ir.Flatten(),
                                 ir.Affine(RNG.normal(size=(3, 64)), np.zeros(3))))
    x = images(400, (1, 8, 8))
    net = quantize(graph, QuantSettings(8), x, (0.0, 1.0))
    assert net.layers[0].activation == "relu"  # the ReLU after the max pooling moved before it (exact)
    unfolded = ir.Graph((1, 8, 8), (c, ir.Flatten(), ir.Affine(RNG.normal(size=(3, 256)), np.zeros(3))))
    n2 = quantize(unfolded, QuantSettings(8), x, (0.0, 1.0))
    assert len(set(n2.layers[0].weight_scale.tolist())) == 1 and "folded" in n2.report[1].format
    agree = np.mean(reference.predict(n2, x) == float_forward(unfolded, x).argmax(axis=1))
    assert agree > 0.9


def test_stage_validation_messages():
    """Graph.stages(): one line each for an activation after average pooling, a pooling first, maps of the
    wrong shape, a pooling at the output; a model of convolutions only is a model ('no dense layer' gone)."""
    c = conv((1, 8, 8), 4)
    avg = pool(ir.AvgPool2d, c.out_shape)
    dense = ir.Affine(RNG.normal(size=(2, 64)), np.zeros(2))
    cases = [
        ((c, avg, ir.Activation("relu"), ir.Flatten(), dense), "follows an average pooling"),
        ((pool(ir.AvgPool2d, (1, 8, 8)), c), "a pooling cannot be the model's first node"),
        ((c, ir.Activation("relu"), conv((3, 8, 8), 2)), "node 2 (Conv2d) reads maps of shape (3, 8, 8), it receives"),
        ((c, ir.Activation("relu"), avg), "ends with a pooling"),
        ((ir.Activation("relu"),), "must follow a dense or convolution layer"),
    ]
    for nodes, message in cases:
        with pytest.raises(InvalidModelError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
            ir.Graph((1, 8, 8), nodes).stages()
        assert "\n" not in str(err.value)
    with pytest.raises(InvalidModelError, match="no dense .* or convolution"):
        ir.Graph((4,), ()).layers()
    only = ir.Graph((1, 8, 8), (c, ir.Activation("relu"), conv((4, 8, 8), 3, kernel=(8, 8), pads=(0,) * 4)))
    assert [type(a).__name__ for a, _ in only.layers()] == ["Conv2d", "Conv2d"] and only.n_outputs == 3


def test_calibration_shape_mismatch_names_the_shape():
    graph = lenet("relu")
    with pytest.raises(UsageError, match=r"the model takes 1x12x12 inputs \(144 features\), the calibration data "
                                         r"has 64"):
        quantize(graph, QuantSettings(8), np.zeros((5, 64)), (0.0, 1.0))
    assert graph.input_mismatch(64) == "the model takes 1x12x12 inputs (144 features), the data has 64"


def test_api_end_to_end_on_the_reference():
    """hwq.quantize and hwq.evaluate take flat (N, features) rows for a CNN (C-order maps); the reference
    program runs it (sim learns CNNs in its own issue)."""
    graph = lenet("relu")
    x = images(300)
    y = float_forward(graph, x).argmax(axis=1)
    net = hwq.quantize(graph, 8, calibration=x, bounds=(0.0, 1.0))
    result = hwq.evaluate(ReferenceProgram(net), x, y)
    assert result.scores.shape == (300, 4) and result.accuracy > 0.9
    assert isinstance(net.layers[0], QLayer) and isinstance(net.layers[1], QPool)


def test_conv_per_tensor_gives_one_scale_per_layer():
    """``conv_per_channel=False``: every convolution gets one weight scale (unequal BatchNorm gains
    folded into the weights), and the integer network still decides as the float one mostly does;
    the default keeps one scale per channel."""
    graph = lenet("relu", gain=np.array([1.5, -0.7, 1.0, -2.0, 0.9, 1.1]))
    x = images(400)
    per_tensor = hwq.quantize(graph, 8, calibration=x, bounds=(0.0, 1.0), conv_per_channel=False)
    default = hwq.quantize(graph, 8, calibration=x, bounds=(0.0, 1.0))
    for i in (0, 2):
        assert len(set(per_tensor.layers[i].weight_scale.tolist())) == 1
        assert len(set(default.layers[i].weight_scale.tolist())) > 1
    assert "folded into the weights" in per_tensor.report[1].format
    assert not per_tensor.settings.conv_per_channel and default.settings.conv_per_channel
    agree = np.mean(reference.predict(per_tensor, x) == float_forward(graph, x).argmax(axis=1))
    assert agree > 0.9, agree
