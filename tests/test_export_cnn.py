"""Exports of convolutional integer networks: onnxruntime on the exported graph == the numpy
reference (hwq.quant.reference), bit for bit, with graph optimizations off and on, over strides,
pads, groups, dilations, activations, max/avg pools and 8/16-bit codes; every MatMulInteger
checked against AVX2's saturating kernel; each rule checked against a deliberately wrong export
(tests that must fail). NIR: Conv2d / SumPool2d / AvgPool2d / Flatten, round trip to the same
scores."""

from __future__ import annotations

import dataclasses

import nir
import numpy as np
import onnx
import pytest
from factories import codes, conv_layer, make_layer, pool_node, random_cnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_export import LEVELS, assert_every_cpu_exact, ops, run_onnxruntime

from hwq.api import export
from hwq.errors import FileFormatError, InvalidModelError, UsageError
from hwq.files import nir as hnir
from hwq.files import nir_conv as nconv
from hwq.onnx import exporter
from hwq.onnx.exporter import export_onnx
from hwq.quant import reference
from hwq.quant.qnet import InputFormat, QLayer, QuantizedNetwork, QuantSettings, Requant


def cnn(rng, in_shape, convs, pool=None, pool_at=0, input_bits=8, signed=False, act_bits=8, top=7,
        truncate=False, pool_pads=(0, 0, 0, 0), pool_kernel=(2, 2), pool_stride=None, conv_last=False):
    """Convolutions ``convs`` (dicts of conv_layer keywords plus ``c`` channels and ``act``), a
    pooling after convolution ``pool_at``, then a dense output layer (or, ``conv_last``, a 1x1
    identity convolution as the output layer)."""
    in_scale, in_max = 1.0 / 2 ** (input_bits - 1), 2**input_bits
    nodes, shape = [], tuple(in_shape)
    for i, spec in enumerate(convs):
        spec = dict(spec)
        c, act = spec.pop("c"), spec.pop("act")
        layer = conv_layer(rng, shape, c, spec.pop("kernel", (3, 3)), act, top=top, in_scale=in_scale,
                           in_max=in_max, act_bits=act_bits, **spec)
        nodes.append(layer)
        shape = layer.out_shape
        in_scale = layer.out_scale if act == "relu" else 1.0
        in_max = 2**act_bits - 1 if act == "relu" else 1
        if pool and i == pool_at:
            p = pool_node(shape, pool, pool_kernel, stride=pool_stride, pads=pool_pads, in_scale=in_scale,
                          truncate=truncate)
            nodes.append(p)
            shape = p.out_shape
    if conv_last:
        nodes.append(conv_layer(rng, shape, 3, (1, 1), "identity", top=top, in_scale=in_scale))
    else:
        nodes.append(make_layer(rng.integers(-top, top + 1, (3, int(np.prod(shape)))), rng.integers(-50, 51, 3),
                                "identity", in_scale))
    fmt = InputFormat(input_bits, signed, 2.0 ** (input_bits - 1))
    net = QuantizedNetwork(fmt, tuple(nodes), "argmax", QuantSettings(bits=16), None, input_shape=tuple(in_shape))
    net.validate()
    return net


def mismatch(model: onnx.ModelProto, net, x_q) -> bool:
    """Whether onnxruntime's scores differ from the reference's (at either optimization level)."""
    expected = reference.forward(net, x_q)
    return any(not np.array_equal(run_onnxruntime(model, x_q, level)[0], expected) for level in LEVELS)


def assert_exact(net, x_q) -> onnx.ModelProto:
    model = export_onnx(net)
    assert_every_cpu_exact(model)
    expected = reference.forward(net, x_q)
    for level in LEVELS:
        scores, decision = run_onnxruntime(model, x_q, level)
        assert scores.dtype == np.int64 and decision.dtype == np.int64
        np.testing.assert_array_equal(scores, expected)
        np.testing.assert_array_equal(decision, reference.decide(expected, net.output))
    return model


def edge_codes(rng, net, n=40):
    """Random codes plus the format's extremes and rows of one extreme in a random pattern."""
    x = codes(rng, net, n)
    fmt = net.input
    x[2:6] = np.where(rng.random((4, net.n_features)) < 0.5, fmt.qmin, fmt.qmax)
    return x


# --- onnxruntime == reference ---------------------------------------------------------------

@pytest.mark.parametrize("act", ["relu", "step", "sign", "identity"])
@pytest.mark.parametrize("pool", ["max", "avg", None])
def test_random_cnns(act, pool):
    rng = np.random.default_rng([len(act), len(str(pool)), ord(act[0]), ord(str(pool)[0])])
    for groups, stride, pads, signed in ((1, 1, 1, False), (2, 2, 1, True), (2, 1, 0, False)):
        net = random_cnn(rng, in_shape=(2, 9, 8), act=act, pool=pool, groups=groups, stride=stride,
                         pads=pads, signed=signed)
        assert_exact(net, edge_codes(rng, net))


GEOMETRY = [
    dict(kernel=(3, 2), stride=(2, 1), pads=(1, 0, 2, 1)),
    dict(kernel=(3, 3), dilation=(2, 1), pads=(2, 1, 2, 1)),
    dict(kernel=(1, 1)),
    dict(kernel=(2, 3), stride=(1, 2), dilation=(1, 2), pads=(0, 2, 1, 0), groups=2),
    dict(kernel=(3, 3), groups=4, pads=(1, 1, 1, 1)),  # depthwise
]


@pytest.mark.parametrize("geometry", range(len(GEOMETRY)))
@pytest.mark.parametrize("act", ["relu", "sign"])
def test_geometries(geometry, act):
    rng = np.random.default_rng(10 + geometry)
    net = cnn(rng, (4, 9, 7), [dict(c=4, act=act, **GEOMETRY[geometry]), dict(c=6, act=act, kernel=(2, 2))],
              pool="max", pool_at=0, pool_pads=(1, 0, 0, 1), signed=geometry % 2 == 1)
    assert_exact(net, edge_codes(rng, net))


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_16_bit_codes_take_the_double_product(pool):
    rng = np.random.default_rng(20)
    net = cnn(rng, (2, 7, 7), [dict(c=3, act="relu", pads=(1, 1, 1, 1)), dict(c=4, act="relu", stride=(2, 2))],
              pool=pool, input_bits=16, signed=True, act_bits=16, top=300, pool_kernel=(3, 2), pool_stride=(2, 2),
              pool_pads=(1, 1, 1, 0))
    model = assert_exact(net, edge_codes(rng, net))
    assert "MatMulInteger" not in ops(model) and ops(model).count("MatMul") == 3
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32


def test_8_bit_codes_take_matmulinteger():
    rng = np.random.default_rng(21)
    net = cnn(rng, (1, 8, 8), [dict(c=4, act="relu", pads=(1, 1, 1, 1)), dict(c=4, act="step")], pool="avg")
    model = assert_exact(net, edge_codes(rng, net))
    assert ops(model).count("MatMulInteger") == 3 and "ReduceSum" in ops(model)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


@pytest.mark.parametrize("truncate", [False, True])
def test_average_pooling_ties_and_truncation(truncate):
    """3x3 windows (M / 2^S about 1/9, every half reached) over every relu code; the truncating
    variant (QONNX Trunc) floors instead of rounding half up."""
    rng = np.random.default_rng(22 + truncate)
    net = cnn(rng, (1, 9, 9), [dict(c=3, act="relu", pads=(1, 1, 1, 1))], pool="avg", truncate=truncate,
              pool_kernel=(3, 3), pool_pads=(1, 1, 1, 1))
    assert_exact(net, edge_codes(rng, net, 200))


def test_convolution_as_the_output_layer():
    rng = np.random.default_rng(23)
    net = cnn(rng, (2, 6, 5), [dict(c=4, act="relu", pads=(1, 0, 1, 0), stride=(2, 1))], pool="max", conv_last=True)
    assert net.layers[-1].window is not None
    assert_exact(net, edge_codes(rng, net))


def test_identity_maps_into_pools():
    """An identity convolution passes accumulators (double container, negative values) on."""
    rng = np.random.default_rng(24)
    for pool in ("max", "avg"):
        net = cnn(rng, (2, 8, 8), [dict(c=3, act="identity", pads=(1, 1, 1, 1)), dict(c=2, act="relu")],
                  pool=pool, pool_pads=(0, 0, 1, 1), pool_kernel=(3, 3), pool_stride=(2, 2))
        assert_exact(net, edge_codes(rng, net))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), act=st.sampled_from(["relu", "step", "sign", "identity"]),
       pool=st.sampled_from(["max", "avg", None]), kh=st.integers(1, 3), kw=st.integers(1, 3),
       sh=st.integers(1, 2), sw=st.integers(1, 2), dh=st.integers(1, 2), groups=st.sampled_from([1, 2]),
       pads=st.tuples(*[st.integers(0, 1)] * 4), signed=st.booleans(), bits=st.sampled_from([8, 16]),
       top=st.sampled_from([1, 64, 127]))
def test_hypothesis_geometries(seed, act, pool, kh, kw, sh, sw, dh, groups, pads, signed, bits, top):
    rng = np.random.default_rng(seed)
    pads = tuple(p if p < d * (k - 1) + 1 else 0 for p, k, d in zip(pads, (kh, kw, kh, kw), (dh, 1, dh, 1)))
    net = cnn(rng, (2, 7, 6), [dict(c=4, act=act, kernel=(kh, kw), stride=(sh, sw), dilation=(dh, 1), pads=pads,
                                    groups=groups)],
              pool=pool, input_bits=bits, signed=signed, act_bits=bits, top=top)
    assert_exact(net, edge_codes(rng, net, 20))


def test_pooling_sums_beyond_2_53_are_refused():
    """Identity accumulators near 2^52 summed over a 2x2 window: no exact double sum."""
    rng = np.random.default_rng(25)
    win_net = cnn(rng, (1, 4, 4), [dict(c=1, act="identity", kernel=(1, 1))], pool="avg")
    conv = win_net.layers[0]
    big = type(conv)(np.array([[2**44]]), np.array([0]), conv.weight_scale, 1.0, 1.0, "identity", 0, None, None,
                     1.0, 255, conv.window)
    net = QuantizedNetwork(win_net.input, (big, *win_net.layers[1:]), "argmax", win_net.settings, None,
                           input_shape=(1, 4, 4))  # weights beyond the settings' bits: not validated
    with pytest.raises(InvalidModelError, match="2\\^53"):
        export_onnx(net)


def test_api_export_writes_the_cnn(tmp_path):
    """The path ``hwq export --format onnx`` takes (hwq.api.export)."""
    rng = np.random.default_rng(26)
    net = random_cnn(rng, act="relu", pool="max")
    path = tmp_path / "cnn.onnx"
    assert export(net, path) == "onnx"
    x_q = edge_codes(rng, net)
    scores, _ = run_onnxruntime(onnx.load(str(path)), x_q, LEVELS[1])
    np.testing.assert_array_equal(scores, reference.forward(net, x_q))


# --- the same checks against deliberately wrong exports -------------------------------------------

def wrong_padding(win, h, padding):
    """Padding gathered from column 0 (an input code) instead of the appended zero."""
    idx = RIGHT["window_index"](win, h, padding)
    return np.where(idx == win.n_in, 0, idx)


def max_pads_with_zero(b, win, h, padding, i):
    """Max pooling's padding read as code 0 (wins over negative codes)."""
    return RIGHT["gather_patches"](b, win, h, "zero", i)


RIGHT = {name: getattr(exporter, name) for name in ("window_index", "gather_patches", "position_major",
                                                     "block_diagonal", "rescale_nodes")}


def mislaid(channels, positions):
    """Convolution outputs taken as C-order (the transposition forgotten)."""
    return np.arange(channels * positions)


def ungrouped(layer):
    """Every group's weights against every group's patches (the zeros forgotten)."""
    w, g = layer.weight, layer.window.groups
    return np.tile(w, (1, g))


def rounding_truncation(b, prod, bias, mult, shift, half, acc_bound, i):
    """A truncating pooling rounded half up anyway."""
    from hwq.quant.bounds import rounding_half

    return RIGHT["rescale_nodes"](b, prod, bias, mult, shift, rounding_half(shift).astype(object), acc_bound, i)


def nets_for_wrong_variants():
    rng = np.random.default_rng(30)
    padded = cnn(rng, (2, 6, 6), [dict(c=3, act="relu", pads=(1, 1, 1, 1))], pool=None)
    signed_max = cnn(rng, (2, 6, 6), [dict(c=3, act="sign", pads=(0, 0, 0, 0))], pool="max", pool_pads=(1, 1, 1, 1))
    grouped = cnn(rng, (4, 6, 6), [dict(c=4, act="relu", groups=2)], pool=None)
    truncating = cnn(rng, (1, 9, 9), [dict(c=3, act="relu")], pool="avg", truncate=True, pool_kernel=(3, 3))
    return {"padding": padded, "max_padding": signed_max, "layout": padded, "groups": grouped,
            "truncate": truncating}


WRONG = {"padding": ("window_index", wrong_padding), "max_padding": ("gather_patches", max_pads_with_zero),
         "layout": ("position_major", mislaid), "groups": ("block_diagonal", ungrouped),
         "truncate": ("rescale_nodes", rounding_truncation)}


@pytest.mark.parametrize("variant", sorted(WRONG))
def test_wrong_exports_are_caught(monkeypatch, variant):
    """Each rule of the export, broken on purpose, makes onnxruntime disagree with the reference
    on the test's inputs, and the right export agrees: the tests above can fail."""
    net = nets_for_wrong_variants()[variant]
    rng = np.random.default_rng(31)
    x_q = edge_codes(rng, net, 200)
    assert not mismatch(export_onnx(net), net, x_q)
    name, wrong = WRONG[variant]
    monkeypatch.setattr(exporter, name, wrong)
    assert mismatch(export_onnx(net), net, x_q)


def test_loose_matmulinteger_rule_is_caught(monkeypatch):
    """Conv weights beyond [-64, 64] against 8-bit codes saturate AVX2's vpmaddubsw: the export
    takes the double MatMul; with the rule loosened the AVX2 check fails."""
    rng = np.random.default_rng(32)
    net = cnn(rng, (1, 6, 6), [dict(c=3, act="relu", pads=(1, 1, 1, 1))], top=127)
    model = assert_exact(net, edge_codes(rng, net))
    assert "MatMulInteger" not in ops(model)
    monkeypatch.setattr(exporter, "u8s8_exact_on_every_cpu", lambda w: bool(np.abs(w).max() <= 127))
    with pytest.raises(AssertionError, match="saturate"):
        assert_every_cpu_exact(export_onnx(net))


# --- NIR ------------------------------------------------------------------------------------

def nir_net(rng, act="step", pool="max", **kw):
    return cnn(rng, (2, 8, 7), [dict(c=3, act=act, pads=(1, 1, 1, 1)), dict(c=4, act=act, stride=(2, 1))],
               pool=pool, **kw)


def step_scaled(rng):
    """A step CNN whose layers read code 1 as 0.5 (a Scale node after each Threshold)."""
    net = nir_net(rng, "step", "max")
    layers = tuple(dataclasses.replace(n, in_scale=0.5) if i and isinstance(n, QLayer) else n
                   for i, n in enumerate(net.layers))
    layers = (*layers[:1], dataclasses.replace(layers[1], in_scale=0.5, out_scale=0.5), *layers[2:])
    return QuantizedNetwork(net.input, layers, "argmax", net.settings, None, input_shape=net.input_shape)


NIR_NETS = {
    "step-maxpool": lambda rng: nir_net(rng, "step", "max"),
    "step-scaled": step_scaled,
    "sign-maxpool": lambda rng: nir_net(rng, "sign", "max", signed=True),
    "relu-avgpool": lambda rng: nir_net(rng, "relu", "avg"),
    "relu-avgpool-3x3": lambda rng: nir_net(rng, "relu", "avg", pool_kernel=(3, 3), pool_stride=(2, 2)),
    "relu-avgpool-truncate": lambda rng: nir_net(rng, "relu", "avg", truncate=True),
    "sign-avgpool-groups": lambda rng: cnn(rng, (4, 6, 6), [dict(c=4, act="sign", groups=2, dilation=(2, 1),
                                                                  pads=(2, 1, 2, 1))], pool="avg"),
    "step-groups-maxpool": lambda rng: cnn(rng, (4, 6, 6), [dict(c=6, act="step", groups=2, pads=(1, 1, 1, 1)),
                                                             dict(c=4, act="step", groups=2)], pool="max"),
    "identity-conv-last": lambda rng: nir_net(rng, "identity", None, conv_last=True),
    "random-cnn": lambda rng: random_cnn(rng, act="step", pool="max"),
}
EXACT_FLOAT = ("step-maxpool", "step-scaled", "sign-maxpool", "step-groups-maxpool", "random-cnn")


def same_nodes(a, b) -> bool:
    """The integer nodes agree in every field (arrays by value)."""
    if type(a) is not type(b):
        return False
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, Requant) or isinstance(y, Requant):
            if (x is None) != (y is None) or (x is not None and not (
                    np.array_equal(x.multiplier, y.multiplier) and np.array_equal(x.shift, y.shift))):
                return False
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if (x is None) != (y is None) or (x is not None and not np.array_equal(x, y)):
                return False
        elif x != y:
            return False
    return True


def round_trip(tmp_path, name, seed=40):
    rng = np.random.default_rng(seed)
    net = NIR_NETS[name](rng)
    net.validate()
    path = tmp_path / "m.nir"
    hnir.write_network(net, path)
    return net, nir.read(path), hnir.read_network(path), edge_codes(rng, net, 300)


@pytest.mark.parametrize("name", sorted(NIR_NETS))
def test_nir_round_trip(tmp_path, name):
    """nir.read (with NIR's type check) loads the file; read_network gives back the same integer
    nodes (every field), scoring as the original."""
    net, graph, back, x_q = round_trip(tmp_path, name)
    kinds = {type(node).__name__ for node in graph.nodes.values()}
    assert "Conv2d" in kinds
    assert ("Flatten" in kinds) == (net.layers[-1].window is None)
    np.testing.assert_array_equal(reference.forward(back, x_q), reference.forward(net, x_q))
    assert len(back.layers) == len(net.layers) and back.input_shape == net.input_shape
    for a, b in zip(net.layers, back.layers):
        assert same_nodes(a, b), (a, b)


def test_nir_round_trip_catches_a_lost_field(tmp_path, monkeypatch):
    """The comparison can fail: a reader that drops an average pool's truncation scores differently."""
    net, _, back, x_q = round_trip(tmp_path, "relu-avgpool-truncate")
    assert np.array_equal(reference.forward(back, x_q), reference.forward(net, x_q))
    right = nconv.read_pool
    monkeypatch.setattr(nconv, "read_pool", lambda *a: dataclasses.replace(right(*a), truncate=False))
    wrong = hnir.read_network(tmp_path / "m.nir")
    assert not np.array_equal(reference.forward(wrong, x_q), reference.forward(net, x_q))
    assert not all(same_nodes(a, b) for a, b in zip(net.layers, wrong.layers))


def test_nir_node_layout(tmp_path):
    """Max pooling after step is SumPool2d then Threshold(0); convolutions carry the window (padding
    per axis, ungrouped weights); the dense layer reads the maps through Flatten(start_dim=0)."""
    net, graph, _, _ = round_trip(tmp_path, "step-maxpool")
    pool = graph.nodes["layer1"]
    assert isinstance(pool, nir.SumPool2d)
    after = dict(graph.edges)["layer1"]
    assert isinstance(graph.nodes[after], nir.Threshold) and not graph.nodes[after].threshold.any()
    conv = graph.nodes["layer2"]
    win = net.layers[2].window
    assert list(conv.stride) == [2, 1] and list(conv.padding) == [0, 0] and list(conv.input_shape) == [4, 3]
    assert conv.weight.shape == (4, 3, 3, 3)
    flat = graph.nodes["layer3.flatten"]
    assert list(flat.input_type["input"]) == [4, *win.out_hw] and list(flat.output_type["output"]) == [4]
    _, graph, _, _ = round_trip(tmp_path, "relu-avgpool")
    assert isinstance(graph.nodes["layer1"], nir.AvgPool2d)
    _, graph, _, _ = round_trip(tmp_path, "relu-avgpool-3x3")  # M / 2^S is not 1/9: a sum, then a scale
    assert isinstance(graph.nodes["layer1"], nir.SumPool2d) and isinstance(graph.nodes["layer1.scale"], nir.Scale)


@pytest.mark.parametrize("name", EXACT_FLOAT)
def test_nir_float_nodes_compute_the_binary_cnn(tmp_path, name):
    """The float graph NIR tools run (Conv2d, Threshold, SumPool2d, Scale, Flatten, Affine),
    evaluated here with numpy from NIR's definitions, gives the integer network's scores in real
    units, on every sample without an accumulator tie (acc == 0, where Threshold and hwq's sign
    may part)."""
    net, graph, _, x_q = round_trip(tmp_path, name, seed=42)
    keep = untied(net, x_q)
    assert keep.sum() >= 100
    scores = nir_float_forward(graph, x_q / net.input.inv_scale, net.input_shape)
    want = reference.forward(net, x_q) * net.layers[-1].unit_scale
    np.testing.assert_allclose(scores[keep], want[keep], rtol=1e-9, atol=1e-9)


def untied(net, x_q):
    """Samples where no convolution or dense accumulator is 0 (pool entries are codes, not ties)."""
    accs = reference.trace(net, x_q)
    ties = [a == 0 for a, n in zip(accs[:-1], net.layers) if isinstance(n, QLayer)]
    return ~np.any(np.concatenate(ties, axis=1), axis=1)


def flipped(weight, groups):
    """A true convolution (kernel flipped) instead of NIR's cross-correlation."""
    return RIGHT_NIR["ungrouped"](weight, groups)[:, :, ::-1, ::-1]


def tiled(weight, groups):
    """Each group's weights on every group's channels (the zeros forgotten)."""
    return np.tile(weight, (1, groups, 1, 1))


def max_as_sum(pool, i, after_binary, metadata):
    """Max pooling as a bare sum (the Threshold after it forgotten)."""
    return RIGHT_NIR["pool_nodes"](pool, i, after_binary, metadata)[:1]


def no_sign_offset(shape, s):
    """Sign's 0/1 Threshold outputs scaled to 0/2s, the -s offset forgotten."""
    node = RIGHT_NIR["sign_node"](shape, s)
    node.bias = np.zeros_like(node.bias)
    return node


def step_at_one(net, i):
    """Code 1 of a step layer read as 1.0 whatever the next layer's in_scale (no Scale node)."""
    return 1.0


RIGHT_NIR = {name: getattr(nconv, name) for name in ("ungrouped", "pool_nodes", "sign_node")}
RIGHT_NIR["next_in_scale"] = hnir.next_in_scale
WRONG_NIR = {"flipped-kernel": ("step-maxpool", nconv, "ungrouped", flipped),
             "groups-tiled": ("step-groups-maxpool", nconv, "ungrouped", tiled),
             "max-as-sum": ("step-maxpool", nconv, "pool_nodes", max_as_sum),
             "sign-offset": ("sign-maxpool", nconv, "sign_node", no_sign_offset),
             "step-unscaled": ("step-scaled", hnir, "next_in_scale", step_at_one)}


@pytest.mark.parametrize("variant", sorted(WRONG_NIR))
def test_nir_wrong_float_nodes_are_caught(tmp_path, monkeypatch, variant):
    """Each rule of the float graph, broken on purpose, makes the float scores differ from the
    integer network's on the untied samples (so the test above can fail), and the reader refuses
    the file (its float nodes disagree with the codes)."""
    name, module, func, wrong = WRONG_NIR[variant]
    net, _, _, x_q = round_trip(tmp_path, name, seed=42)
    keep = untied(net, x_q)
    want = reference.forward(net, x_q) * net.layers[-1].unit_scale
    monkeypatch.setattr(module, func, wrong)
    hnir.write_network(net, tmp_path / "w.nir")
    graph = nir.read(tmp_path / "w.nir")
    scores = nir_float_forward(graph, x_q / net.input.inv_scale, net.input_shape)
    assert not np.allclose(scores[keep], want[keep], rtol=1e-9, atol=1e-9)
    monkeypatch.setattr(module, func, RIGHT_NIR[func])
    with pytest.raises(FileFormatError, match="layer"):
        hnir.read_network(tmp_path / "w.nir")


AVG_NETS = {
    "unpadded": lambda rng: NIR_NETS["sign-avgpool-groups"](rng),
    "padded-3x3": lambda rng: cnn(rng, (2, 7, 7), [dict(c=3, act="sign", pads=(1, 1, 1, 1))], pool="avg",
                                  pool_kernel=(3, 3), pool_pads=(1, 1, 1, 1), pool_stride=(2, 2)),
}


def avg_pool_gap(tmp_path, name):
    """How far the float scores stray beyond the integer pool's rounding (<= 1/2 code of every
    pool output, through the dense output layer), over untied samples; <= 0 where they keep within."""
    rng = np.random.default_rng(49)
    net = AVG_NETS[name](rng)
    hnir.write_network(net, tmp_path / "a.nir")
    graph = nir.read(tmp_path / "a.nir")
    x_q = edge_codes(rng, net, 300)
    keep = untied(net, x_q)
    assert keep.sum() >= 100
    scores = nir_float_forward(graph, x_q / net.input.inv_scale, net.input_shape)
    out, pool = net.layers[-1], net.layers[-2]
    real_w = np.abs(out.gain * out.weight * out.weight_scale[:, None])
    bound = real_w.sum(axis=1) * 0.5 * pool.out_scale * (1 + 1e-4) + 1e-9
    gap = np.abs(scores - reference.forward(net, x_q) * out.unit_scale)[keep] - bound
    return float(gap.max())


@pytest.mark.parametrize("name", sorted(AVG_NETS))
def test_nir_average_pools_round_like_the_integer_pool(tmp_path, monkeypatch, name):
    """AvgPool2d (unpadded, M / 2^S = 1/k) or SumPool2d then Scale (padded, or M / 2^S not 1/k):
    the float scores keep within the integer pool's rounding; with the pool's scale forgotten
    (a bare sum) they do not."""
    kinds = {type(n).__name__ for n in hnir.to_nir(AVG_NETS[name](np.random.default_rng(49))).nodes.values()}
    assert ("AvgPool2d" in kinds) == (name == "unpadded") and ("Scale" in kinds) == (name != "unpadded")
    assert avg_pool_gap(tmp_path, name) <= 0
    monkeypatch.setattr(nconv, "pool_scale", lambda pool: np.ones(pool.window.channels))
    assert avg_pool_gap(tmp_path, name) > 0


def nir_float_forward(graph, x, shape):
    """One time step of a NIR chain in real units, written from NIR's definitions."""
    nxt = dict(graph.edges)
    name, h = nxt["input"], x.reshape(len(x), *shape)
    while name != "output":
        node = graph.nodes[name]
        if isinstance(node, nir.Conv2d):
            h = correlate(h, node)
        elif isinstance(node, nir.Threshold):
            h = (h > node.threshold).astype(float)
        elif isinstance(node, nir.SumPool2d):
            h = sum_pool(h, node)
        elif isinstance(node, nir.AvgPool2d):
            h = sum_pool(h, node) / np.prod(node.kernel_size)
        elif isinstance(node, nir.Scale):
            h = h * node.scale
        elif isinstance(node, nir.Flatten):
            h = h.reshape(len(h), -1)
        elif isinstance(node, nir.Affine):
            h = h @ node.weight.T + node.bias
        else:
            raise AssertionError(type(node))
        name = nxt[name]
    return h.reshape(len(h), -1)


def correlate(h, node):
    (sh, sw), (ph, pw), (dh, dw), g = node.stride, node.padding, node.dilation, node.groups
    w = node.weight
    n, c, hh, ww = h.shape
    x = np.pad(h, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    co, cg, kh, kw = w.shape
    ho, wo = (hh + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (ww + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, co, ho, wo))
    for o in range(co):
        gi = o // (co // g)
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
                patch = x[:, gi * cg:(gi + 1) * cg, rows, cols]
                out[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, i, j])
    return out + node.bias[None, :, None, None]


def sum_pool(h, node):
    (kh, kw), (sh, sw), (ph, pw) = node.kernel_size, node.stride, node.padding
    x = np.pad(h, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    return sum(x[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] for i in range(kh) for j in range(kw))


def test_nir_refuses_max_pooling_without_step(tmp_path):
    rng = np.random.default_rng(43)
    net = nir_net(rng, "relu", "max")
    with pytest.raises(UsageError, match="NIR has no max pooling"):
        hnir.write_network(net, tmp_path / "m.nir")
    assert not (tmp_path / "m.nir").exists()


def test_nir_refuses_asymmetric_pads(tmp_path):
    rng = np.random.default_rng(44)
    net = cnn(rng, (1, 6, 6), [dict(c=2, act="step", pads=(1, 0, 0, 1))])
    with pytest.raises(UsageError, match="layer 0: NIR pads symmetrically"):
        hnir.write_network(net, tmp_path / "m.nir")
    net = cnn(rng, (1, 6, 6), [dict(c=2, act="step")], pool="max", pool_pads=(1, 1, 0, 0))
    with pytest.raises(UsageError, match="layer 1: NIR pads symmetrically"):
        hnir.write_network(net, tmp_path / "m.nir")


def test_nir_refuses_kernels_its_shape_inference_gets_wrong(tmp_path):
    """NIR 1.0.8 infers a Conv2d's output width from the kernel height: a 3x1 kernel is refused,
    a 2x2 one (same sizes) is not."""
    rng = np.random.default_rng(48)
    net = cnn(rng, (1, 6, 6), [dict(c=2, act="step", kernel=(3, 1))])
    with pytest.raises(UsageError, match="layer 0: NIR infers this Conv2d's output as"):
        hnir.write_network(net, tmp_path / "m.nir")
    assert not (tmp_path / "m.nir").exists()


@pytest.mark.parametrize("key,value,layer", [
    ("node/nodes/layer2/stride", [1, 1], 2),
    ("node/nodes/layer1/kernel_size", [3, 3], 1),
    ("node/nodes/layer0.threshold/threshold", lambda t: t + 0.5, 0),
    ("node/nodes/layer0/weight", lambda w: w[:, :, ::-1], 0),
    ("node/nodes/layer2/metadata/hwq/weight", lambda w: w + (np.arange(w.size).reshape(w.shape) == 5), 2),
])
def test_nir_corrupt_node_is_refused(tmp_path, key, value, layer):
    """A node whose parameters disagree with the hwq metadata (edited file) is refused, naming the layer."""
    import h5py

    rng = np.random.default_rng(45)
    net = nir_net(rng, "step", "max")
    path = tmp_path / "m.nir"
    hnir.write_network(net, path)
    with h5py.File(path, "r+") as f:
        ds = f[key]
        ds[...] = value(ds[()]) if callable(value) else value
    with pytest.raises(FileFormatError, match=f"layer {layer}"):
        hnir.read_network(path)


def test_nir_mlp_output_unchanged(tmp_path):
    """An MLP still exports as Affine nodes only (no Flatten, no Conv2d)."""
    from factories import random_net

    net = random_net(np.random.default_rng(46), 10, [8], ["step"], top=7)
    graph = hnir.to_nir(net)
    assert {type(n).__name__ for n in graph.nodes.values()} == {"Input", "Affine", "Threshold", "Output"}


def test_nir_describe_cnn(tmp_path):
    """``hwq info`` on a CNN's NIR file lists the convolutions and pools."""
    net, _, _, _ = round_trip(tmp_path, "step-maxpool")
    rows = hnir.describe(tmp_path / "m.nir")["layers"]
    assert rows[1] == {"pool": "max", "window": "2x2 stride 2,2 groups 3", "out_shape": [3, 4, 3]}
    assert rows[0]["window"] == net.layers[0].window.describe() and rows[0]["shape"] == [3, 18]


def test_requant_of_pool_is_per_channel():
    """Average pooling multipliers differ per channel: the per-channel constants broadcast over
    the positions (a wrong axis would mix them)."""
    rng = np.random.default_rng(47)
    net = cnn(rng, (1, 6, 6), [dict(c=3, act="relu")], pool="avg")
    p = net.layers[1]
    p2 = type(p)(p.op, p.window, Requant([1, 3, 7], [2, 4, 5]), False, p.in_scale, p.out_scale)
    net = QuantizedNetwork(net.input, (net.layers[0], p2, net.layers[2]), "argmax", net.settings, None,
                           input_shape=net.input_shape)
    net.validate()
    assert_exact(net, edge_codes(rng, net, 100))
