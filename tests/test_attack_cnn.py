"""Attacks on convolutional integer networks (issue 19, "Attacks, devices, comparisons").

The surrogate gradient through every node kind is checked against an independent dense
unrolling written here with Python loops from the window formulas (docs/integer-semantics.md,
section 8): a convolution is a dense layer with a Toeplitz matrix, an average pooling one with
``M / 2^S`` in each window, a max pooling (per sample) one that picks the first maximum of the
integer codes in window order. The gradients must match to float precision; deliberately wrong
variants (a flipped kernel, padding scattered into the image, the pooling's ``M / 2^S``
dropped, ties routed to the last maximum) must not. The float CNN's gradient (``--grad
float``) is checked against central finite differences of its forward, which is itself checked
against the same dense unrolling. Every attack, a suite, diagnostics and transfer run on CNN
programs through the API (the numpy reference program; sim where it compiles CNNs).
"""

from __future__ import annotations

import numpy as np
import pytest
from factories import conv_layer, make_layer, pool_node, random_cnn

import hwq
from hwq import ir
from hwq.attack import Square, make_attack, make_suite
from hwq.attack.float_backward import FloatNode, float_chain, float_trace
from hwq.attack.gradients import FloatGradient, SurrogateGradient, backprop, output_loss
from hwq.attack.square import image_dims
from hwq.attack.transpose import NO_WIN, AvgPoolT, ConvT, MaxPoolT
from hwq.ir.conv import AvgPool2d, Conv2d, MaxPool2d, SumPool2d
from hwq.ir.window import Window
from hwq.quant import reference
from hwq.quant.qnet import InputFormat, QLayer, QuantizedNetwork, QuantSettings
from hwq.target.protocol import ReferenceProgram

# -- the dense unrolling, from the formulas (Python loops) -----------------------------------------


def window_reads(win: Window):
    """Yield ``(out channel group g, position p, patch element k, input index or None)``."""
    c, h, w = win.in_shape
    kh, kw = win.kernel
    ho, wo = win.out_hw
    cg = c // win.groups
    for g in range(win.groups):
        for y in range(ho):
            for x in range(wo):
                for ci in range(cg):
                    for i in range(kh):
                        for j in range(kw):
                            yy = y * win.stride[0] - win.pads[0] + i * win.dilation[0]
                            xx = x * win.stride[1] - win.pads[1] + j * win.dilation[1]
                            inside = 0 <= yy < h and 0 <= xx < w
                            yield (g, y * wo + x, (ci * kh + i) * kw + j,
                                   ((g * cg + ci) * h + yy) * w + xx if inside else None)


def conv_matrix(win: Window, weight: np.ndarray) -> np.ndarray:
    """The Toeplitz matrix (C_out Ho Wo, C H W) of a convolution with weights (C_out, cg kh kw)."""
    cout = weight.shape[0]
    og, pos = cout // win.groups, win.positions
    t = np.zeros((cout * pos, win.n_in))
    for g, p, k, i in window_reads(win):
        if i is not None:
            for o in range(g * og, (g + 1) * og):
                t[o * pos + p, i] += weight[o, k]
    return t


def pool_matrix(win: Window, coef, h=None) -> np.ndarray:
    """Average pooling (``h`` None): ``coef[c]`` on every element of each window; max pooling:
    1 on each window's first maximum of the sample ``h`` (padding never wins), times ``coef[c]``."""
    pos = win.positions
    t = np.zeros((win.channels * pos, win.n_in))
    best: dict = {}
    for g, p, _, i in window_reads(win):  # groups = channels for a pool
        if i is None:
            continue
        if h is None:
            t[g * pos + p, i] = coef[g]
        elif (g, p) not in best or h[i] > h[best[g, p]]:
            best[g, p] = i
    for (g, p), i in best.items():
        t[g * pos + p, i] = coef[g]
    return t


def relu_top(node):
    return ((2**node.act_bits - 1) * node.out_scale
            if isinstance(node, QLayer) and node.activation == "relu" else None)


def dense_gradient(net: QuantizedNetwork, x_q: np.ndarray, y: np.ndarray):
    """Per sample: the network unrolled into dense matrices at that sample's integer operating
    point, backpropagated by the plain dense products (``delta @ W``)."""
    program = ReferenceProgram(net)
    grads, losses = [], []
    for row, label in zip(x_q, y):
        accs = reference.trace(net, row[None])
        mats, h = [], row[None]
        for i, node in enumerate(net.layers):
            if isinstance(node, QLayer):
                mats.append(node.real_weight if node.window is None else conv_matrix(node.window, node.real_weight))
                h = reference.activate(node, accs[i])
            else:
                ratio = node.out_scale / node.in_scale
                coef = (node.requant.multiplier / 2.0**node.requant.shift * ratio if node.op == "avg"
                        else np.full(node.window.channels, ratio))
                mats.append(pool_matrix(node.window, coef, None if node.op == "avg" else h[0]))
                h = accs[i]
        gains = [n.gain if isinstance(n, QLayer) else 1.0 for n in net.layers]
        acts = [n.activation if isinstance(n, QLayer) else "identity" for n in net.layers]
        loss, g = backprop(mats, gains, acts, program.trace(row[None]), np.array([label]),
                           net.output == "sign", [relu_top(n) for n in net.layers])
        grads.append(g[0])
        losses.append(loss[0])
    return np.array(losses), np.array(grads)


def odd_cnn(rng, act="relu", pool="max"):
    """Strides, dilation, groups and asymmetric padding in one network."""
    in_scale, in_max = 1 / 128, 256
    conv = conv_layer(rng, (2, 9, 7), 4, (3, 2), act, stride=(2, 1), pads=(1, 0, 2, 1), dilation=(1, 2),
                      groups=2, in_scale=in_scale, in_max=in_max)
    scale = conv.out_scale if act == "relu" else 1.0
    nodes = [conv]
    shape = conv.out_shape
    if pool:
        p = pool_node(shape, pool, (2, 3), stride=(1, 2), pads=(1, 1, 0, 1), in_scale=scale)
        nodes.append(p)
        shape = p.out_shape
    conv2 = conv_layer(rng, shape, 3, (2, 2), act, pads=(1, 1, 1, 1), in_scale=scale,
                       in_max=255 if act == "relu" else 1)
    nodes.append(conv2)
    n_in = int(np.prod(conv2.out_shape))
    nodes.append(make_layer(rng.integers(-7, 8, (3, n_in)), rng.integers(-50, 51, 3), "identity",
                            conv2.out_scale if act == "relu" else 1.0))
    return QuantizedNetwork(InputFormat(8, False, 128.0), tuple(nodes), "argmax", QuantSettings(bits=8), None,
                            input_shape=(2, 9, 7))


def sample(rng, net, n):
    x = rng.uniform(0, 1, (n, net.n_features))
    return x, rng.integers(0, net.n_classes, n)


NETS = {
    "max-relu": lambda rng: random_cnn(rng, (2, 8, 8), "relu", "max"),
    "avg-relu": lambda rng: random_cnn(rng, (2, 8, 8), "relu", "avg", groups=2),
    "max-step": lambda rng: random_cnn(rng, (1, 8, 8), "step", "max"),
    "avg-sign": lambda rng: random_cnn(rng, (3, 6, 6), "sign", "avg", stride=2),
    "none-identity": lambda rng: random_cnn(rng, (1, 7, 7), "identity", None, pads=0, top=3),
    "odd-relu-max": lambda rng: odd_cnn(rng, "relu", "max"),
    "odd-step-avg": lambda rng: odd_cnn(rng, "step", "avg"),
}


@pytest.mark.parametrize("kind", NETS)
def test_surrogate_gradient_equals_the_dense_unrolling(kind):
    rng = np.random.default_rng(sorted(NETS).index(kind))
    net = NETS[kind](rng)
    net.validate()
    x, y = sample(rng, net, 12)
    source = SurrogateGradient(ReferenceProgram(net))
    loss, grad = source.value_and_grad(x, y)
    want_loss, want = dense_gradient(net, reference.quantize_input(net.input, x), y)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    # the float32 sign-only products agree in sign wherever the component is not tiny
    _, fast = source.grad_at(source.point(reference.quantize_input(net.input, x)), y, sign_only=True)
    big = np.abs(want) > 1e-4 * np.abs(want).max(axis=1, keepdims=True)
    np.testing.assert_array_equal(np.sign(fast)[big], np.sign(want)[big])


def wrong_variants(net, source):
    """(name, operator list) pairs, each one node's backward deliberately wrong."""
    out = []
    for i, node in enumerate(net.layers):
        op = source.weights[i]
        if isinstance(op, ConvT):
            flipped = ConvT(op.weight, op.window)
            flipped.w = flipped.w[..., ::-1]  # kernel flipped: the correlation/convolution mix-up
            out.append(("flipped kernel", i, flipped))
            if node.window.padded:
                leak = ConvT(op.weight, op.window)
                leak.targets = [np.where(t == node.window.n_in, node.window.n_in - 1, t) for t in leak.targets]
                out.append(("padding read as index -1 (the last input)", i, leak))
        elif isinstance(op, AvgPoolT):
            out.append(("avg pool without M/2^S", i, AvgPoolT(node.window, np.ones(node.window.channels))))
        elif isinstance(op, MaxPoolT):
            class LastMax(MaxPoolT):
                def winners(self, h):
                    p = reference.patches(self.window, np.asarray(h), pad_code=NO_WIN)[..., ::-1]
                    return p.shape[-1] - 1 - p.argmax(axis=3)

            out.append(("ties to the last maximum", i, LastMax(node.window, op.inputs, op.ratio)))
    return out


@pytest.mark.parametrize("kind", ["max-step", "avg-relu", "odd-relu-max", "odd-step-avg"])
def test_wrong_backward_variants_are_caught(kind):
    """Each deliberately wrong node backward gives gradients the dense unrolling refutes."""
    rng = np.random.default_rng(sorted(NETS).index(kind))
    net = NETS[kind](rng)
    x, y = sample(rng, net, 12)
    x_q = reference.quantize_input(net.input, x)
    _, want = dense_gradient(net, x_q, y)
    source = SurrogateGradient(ReferenceProgram(net))
    variants = wrong_variants(net, source)
    assert {"flipped kernel"} <= {name for name, _, _ in variants}
    if kind == "max-step":
        assert "ties to the last maximum" in {name for name, _, _ in variants}
    for name, i, bad in variants:
        weights = list(source.weights)
        weights[i] = bad
        _, got = backprop(weights, source.gains, source.acts, source.point(x_q), y, False, source.tops)
        assert not np.allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max()), name


def test_max_pool_ties_go_to_the_first_maximum():
    """A step network's max pool sees ties (codes 0/1): the gradient reaches only the first
    maximum of each window in window order."""
    win = Window((1, 2, 2), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 1)
    op = MaxPoolT(win, lambda z: z)
    h = np.array([[0, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 1]])
    got = op.back(np.ones((3, 1)), h)
    np.testing.assert_array_equal(got, [[0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])


def straight_through_loss(net, x, y, delta):
    """The straight-through function the surrogate differentiates, written from the formulas:
    each node's value is the program's own at ``x`` plus the real-weight linearization of the
    change (dense and Toeplitz matrices, the average pooling's ``M / 2^S``), ReLU clipped to
    ``[0, 2^A - 1]`` codes."""
    zs0 = ReferenceProgram(net).trace(reference.quantize_input(net.input, x))
    h_now, h_base = x + delta, x
    z = None
    for i, node in enumerate(net.layers):
        if isinstance(node, QLayer):
            m = node.real_weight if node.window is None else conv_matrix(node.window, node.real_weight)
            z = zs0[i] + node.gain * (h_now - h_base) @ m.T
        else:
            coef = node.requant.multiplier / 2.0**node.requant.shift * node.out_scale / node.in_scale
            z = zs0[i] + (h_now - h_base) @ pool_matrix(node.window, coef).T
        if i + 1 == len(net.layers):
            break
        if isinstance(node, QLayer) and node.activation == "relu":
            h_now, h_base = np.clip(z, 0, relu_top(node)), np.clip(zs0[i], 0, relu_top(node))
        else:
            h_now, h_base = z, zs0[i]
    return output_loss(z, y, False)[0]


def test_surrogate_equals_finite_differences_of_the_straight_through_function():
    rng = np.random.default_rng(5)
    net = random_cnn(rng, (2, 6, 6), "relu", "avg")
    x, y = sample(rng, net, 40)
    zs = ReferenceProgram(net).trace(reference.quantize_input(net.input, x))
    tops = [relu_top(n) for n in net.layers]
    keep = np.ones(len(x), bool)
    for z, top in zip(zs[:-1], tops[:-1]):
        if top is not None:  # away from the kinks by more than the finite difference moves z
            margin = 1e-3 * top
            keep &= np.all((np.abs(z) > margin) & (np.abs(z - top) > margin), axis=1)
    x, y = x[keep], y[keep]
    assert len(x) >= 5
    loss, grad = SurrogateGradient(ReferenceProgram(net)).value_and_grad(x, y)
    np.testing.assert_allclose(loss, straight_through_loss(net, x, y, 0), rtol=1e-12)
    step, fd = 1e-6, np.zeros_like(x)
    for j in range(x.shape[1]):
        e = np.zeros_like(x)
        e[:, j] = step
        fd[:, j] = (straight_through_loss(net, x, y, e) - straight_through_loss(net, x, y, -e)) / (2 * step)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-7 * np.abs(fd).max())


# -- the float CNN (--grad float) ------------------------------------------------------------------


def float_cnn(rng, second_pool="avg", output="softmax"):
    """conv (BN gain, some negative) -> relu -> max pool -> grouped conv -> sigmoid -> avg or sum
    pool -> flatten -> dense."""
    win1 = Window((2, 8, 8), (3, 3), (1, 1), (1, 1, 1, 1))
    conv1 = Conv2d(rng.normal(0, 0.6, (4, 2, 3, 3)), rng.normal(0, 0.1, 4), win1,
                   gain=rng.uniform(0.5, 2, 4) * np.array([1, -1, 1, 1]))
    pool1 = MaxPool2d(Window((4, 8, 8), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 4))
    win2 = Window((4, 4, 4), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2)
    conv2 = Conv2d(rng.normal(0, 0.6, (6, 2, 3, 3)), rng.normal(0, 0.1, 6), win2, gain=rng.uniform(0.5, 2, 6))
    pwin = Window((6, 4, 4), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 6)
    pool2 = AvgPool2d(pwin) if second_pool == "avg" else SumPool2d(pwin, shift=2)
    n_out = 1 if output == "sigmoid" else 3
    dense = ir.Affine(rng.normal(0, 0.5, (n_out, 24)), rng.normal(0, 0.1, n_out), gain=1.5)
    nodes = (conv1, ir.Activation("relu"), pool1, conv2, ir.Activation("sigmoid"), pool2, ir.Flatten(), dense)
    return ir.Graph((2, 8, 8), nodes, ir.Output(output))


def dense_float_forward(graph, x):
    """The float CNN unrolled into dense matrices (loops), max pooling per sample."""
    h = x
    out = None
    for node in graph.nodes:
        if isinstance(node, Conv2d):
            pos = node.window.positions
            out = (np.repeat(node.gain, pos) * (h @ conv_matrix(node.window, node.matrix).T
                                                + np.repeat(node.bias, pos)))
        elif isinstance(node, ir.Affine):
            out = node.gain * (h @ node.weight.T + node.bias)
        elif isinstance(node, (AvgPool2d, SumPool2d)):
            scale = 1 / node.window.size if isinstance(node, AvgPool2d) else 2.0**-node.shift
            out = h @ pool_matrix(node.window, np.full(node.window.channels, scale)).T
        elif isinstance(node, MaxPool2d):
            ones = np.ones(node.window.channels)
            out = np.stack([row @ pool_matrix(node.window, ones, row).T for row in h])
        elif isinstance(node, ir.Activation):
            out = ir.activations.forward(node.kind, out)
        else:
            continue
        h = out
    return h


@pytest.mark.parametrize("second_pool, output", [("avg", "softmax"), ("sum", "softmax"), ("avg", "sigmoid")])
def test_float_cnn_gradient_equals_finite_differences(second_pool, output):
    rng = np.random.default_rng(11)
    graph = float_cnn(rng, second_pool, output)
    x = rng.uniform(0, 1, (6, 128))
    y = rng.integers(0, 2 if output == "sigmoid" else 3, 6)
    source = FloatGradient(graph)
    np.testing.assert_allclose(source.forward(x)[-1], dense_float_forward(graph, x), rtol=1e-12, atol=1e-12)

    def loss(v):
        return output_loss(float_trace(source.chain, v)[-1], y, output == "sigmoid")[0]

    value, grad = source.value_and_grad(x, y)
    np.testing.assert_allclose(value, loss(x), rtol=1e-12)
    step, fd = 1e-6, np.zeros_like(x)
    for j in range(x.shape[1]):
        e = np.zeros_like(x)
        e[:, j] = step
        fd[:, j] = (loss(x + e) - loss(x - e)) / (2 * step)
    tol = dict(rtol=1e-4, atol=1e-6 * np.abs(fd).max())
    np.testing.assert_allclose(grad, fd, **tol)
    # wrong variants: the BN gain not folded into the transposed kernel; max routed to the
    # window's first element
    chain = float_chain(graph)
    chain[0] = FloatNode(chain[0].forward, ConvT(graph.nodes[0].matrix, graph.nodes[0].window),
                         chain[0].bias, chain[0].gain, 1.0, chain[0].act)
    first = MaxPoolT(chain[1].back.window, lambda z: np.zeros_like(z))
    for bad in (chain, [*float_chain(graph)[:1], FloatNode(chain[1].forward, first), *float_chain(graph)[2:]]):
        _, got = backprop([n.back for n in bad], [n.back_gain for n in bad], [n.act for n in bad],
                          float_trace(bad, x), y, output == "sigmoid")
        assert not np.allclose(got, fd, **tol)


def test_float_gradient_needs_a_float_model():
    with pytest.raises(hwq.errors.UsageError, match="float model"):
        FloatGradient(None)


# -- attacks through the API -----------------------------------------------------------------------


def cnn_program(seed=3, in_shape=(2, 8, 8), **kw):
    rng = np.random.default_rng(seed)
    net = random_cnn(rng, in_shape, **kw)
    x = rng.uniform(0.1, 0.9, (30, net.n_features))
    return ReferenceProgram(net), x, reference.predict(net, x)


ATTACK_PARAMS = {"fgsm": {}, "pgd": {"steps": 8}, "apgd-ce": {"steps": 8}, "apgd-dlr": {"steps": 8},
                 "square": {"queries": 60}}


@pytest.mark.parametrize("name", ATTACK_PARAMS)
def test_attacks_run_on_cnn_programs(name):
    program, x, y = cnn_program()
    eps = [0.0, 0.05, 0.4]
    result = hwq.attack(program, x, y, eps, method=make_attack(name, **ATTACK_PARAMS[name]), bounds=(0, 1))
    assert result.clean_accuracy == 1 and result.accuracy[0] == 1
    assert result.accuracy[-1] < 1
    for k in range(len(eps)):  # the kept points are what the integer model judged
        np.testing.assert_array_equal(reference.predict(program.net, result.adversarial(k)), result.predictions[k])
    assert isinstance(result.diagnostics, dict)


def test_suite_and_transfer_on_cnn_programs():
    program, x, y = cnn_program(6, act="relu", pool="avg", out=4)  # apgd-t (DLR, targeted) needs 4 classes
    assert len(set(y.tolist())) == 4
    suite = make_suite("autoattack", steps=5, queries=40)
    result = hwq.attack(program, x, y, [0.0, 0.3], method=suite, bounds=(0, 1))
    assert result.accuracy[0] == 1 and result.accuracy[1] < 1 and len(result.members) == 4
    other, _, _ = cnn_program(5, out=4)  # another network's surrogate (transfer)
    transfer = hwq.attack(program, x, y, [0.0, 0.3], gradient=SurrogateGradient(other), bounds=(0, 1))
    own = hwq.attack(program, x, y, [0.0, 0.3], bounds=(0, 1))
    assert not np.array_equal(transfer.direction, own.direction)


def test_square_windows_on_images_follow_the_input_shape():
    """A 2 x 6 x 10 input: the l-inf start is vertical stripes with a sign per channel and
    column; every query lies on the grid inside the ball."""
    program, x, y = cnn_program(6, in_shape=(2, 6, 10), pool="max")
    assert image_dims(program.net.input_shape) == (2, 6, 10)
    seen = []

    class Recording:
        net, target, artifacts, report = program.net, "recording", {}, {}

        def forward(self, x_q):
            seen.append(np.array(x_q))
            return program.forward(x_q)

        def decide(self, scores):
            return program.decide(scores)

    eps = 0.2
    result = hwq.attack(Recording(), x, y, [eps], method=Square(queries=30), bounds=(0, 1))
    start = seen[1].astype(np.float64) / 128 - x  # the clean query, then the start
    maps = np.sign(start.reshape(len(x), 2, 6, 10))
    assert np.all(maps == maps[:, :, :1, :])  # constant along the height
    assert np.any(maps[:, 0] != maps[:, 1])  # the channels draw their own signs
    pts = np.concatenate(seen).astype(np.float64)
    assert np.all(pts == np.round(pts)) and pts.min() >= 0 and pts.max() <= 128
    assert np.abs(result.adversarial(0) - x).max() <= eps + 1 / 256 + 1e-12
    assert result.queries.max() <= 30


def test_square_linf_window_is_a_square_with_a_sign_per_channel():
    rng = np.random.default_rng(0)
    xs = rng.uniform(0.3, 0.7, (5, 3, 6, 9))
    cur = xs.copy()
    sign = rng.choice([-1.0, 1.0], (5, 3, 1, 1))
    new = Square._linf_step(sign, xs, cur, np.full((5, 1, 1, 1), 0.1), 2, 4, 3, 3, 0, 1)
    changed = np.abs(new - cur) > 0
    assert np.all(changed[:, :, 2:5, 4:7]) and changed.sum() == 5 * 3 * 9
    np.testing.assert_allclose(new[:, :, 2:5, 4:7] - xs[:, :, 2:5, 4:7], 0.1 * np.broadcast_to(sign, (5, 3, 3, 3)))
    assert Square()._window(0, 100, 6, 9)[0] == Square()._window(0, 100, 6, 9)[1] <= 5
