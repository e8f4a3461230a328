"""ONNX import of convolutional networks (issue 19, "Import"): the shipped exporter files
(``tests/data/exporters/*cnn*.onnx``, made by ``make_cnn_files.py``) and small hand-built graphs
for each attribute (auto_pad, dilations, groups, ceil_mode, count_include_pad, BatchNormalization,
per-channel constants, input normalization, Pad, NHWC layouts) are checked against the file's own
semantics: onnxruntime for float and QCDQ files, qonnx's executor for QONNX. hwq's float graph is
evaluated by ``hwq.ir.evaluate`` (its own gather of patches, independent of onnxruntime's kernels);
a deliberately wrong window (shifted pads) shows that the comparison can fail. Every file then
quantizes at 8 bits and the sim target equals ``hwq.quant.reference`` bit for bit. What hwq
refuses is refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import hwq
from hwq import ir
from hwq.errors import InvalidModelError, UnsupportedOpError
from hwq.ir import evaluate
from hwq.onnx.importer import graph_from_model, load_onnx, op_table
from hwq.quant import reference

DATA = Path(__file__).parent / "data" / "exporters"
FLOAT_FILES = ["torch_cnn_bn_classic", "torch_cnn_bn_dynamo", "torch_cnn_bn_dynamo_unoptimized",
               "torch_cnn_global_classic", "torch_cnn_global_dynamo", "torch_cnn_gmax_classic",
               "torch_cnn_gmax_dynamo", "keras3_cnn_tf2onnx", "keras3_cnn_rgb_tf2onnx"]
QAT_FILES = ["brevitas_cnn_qcdq", "brevitas_cnn_qonnx"]
RNG = np.random.default_rng(1919)
ort.set_default_logger_severity(3)


def close(mine: np.ndarray, theirs: np.ndarray, rel: float = 1e-4) -> bool:
    return mine.shape == theirs.shape and np.abs(mine - theirs).max() <= rel * max(1.0, np.abs(theirs).max())


def input_dims(model: onnx.ModelProto) -> list[int]:
    inits = {t.name for t in model.graph.initializer}
    v = next(i for i in model.graph.input if i.name not in inits)
    return [d.dim_value for d in v.type.tensor_type.shape.dim[1:]]


def run_ort(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if isinstance(inp.shape[0], int):  # a static batch (Brevitas exports batch 1)
        return np.concatenate([sess.run(None, {inp.name: x[i:i + inp.shape[0]]})[0] for i in range(len(x))])
    return sess.run(None, {inp.name: x})[0]


def run_qonnx(path: Path, x: np.ndarray) -> np.ndarray:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    model = ModelWrapper(onnx.load(str(path))).transform(InferShapes())
    name, out = model.graph.input[0].name, model.graph.output[0].name
    return np.concatenate([execute_onnx(model, {name: x[i:i + 1]})[out] for i in range(len(x))])


def samples(dims, n=48) -> np.ndarray:
    return RNG.uniform(0, 1, (n, *dims)).astype(np.float32)


def mine(graph: ir.Graph, x: np.ndarray, quantize_maps=False) -> np.ndarray:
    return evaluate.forward(graph, x.reshape(len(x), -1), quantize_maps=quantize_maps)


# -- the shipped exporter files --------------------------------------------------------------------


@pytest.mark.parametrize("name", FLOAT_FILES)
def test_float_files_match_onnxruntime(name):
    path = DATA / f"{name}.onnx"
    graph = load_onnx(path)
    assert graph.convolutional and graph.layers()
    x = samples(input_dims(onnx.load(str(path))))
    assert close(mine(graph, x), run_ort(path, x))


def test_batchnorm_is_folded_as_the_optimizer_folds_it():
    """The unoptimized dynamo file keeps BatchNormalization (one gamma negative); hwq folds it into the
    convolutions' gains and biases and agrees with the file the exporter folded itself."""
    kept = onnx.load(str(DATA / "torch_cnn_bn_dynamo_unoptimized.onnx"))
    assert "BatchNormalization" in {n.op_type for n in kept.graph.node}
    graph = load_onnx(DATA / "torch_cnn_bn_dynamo_unoptimized.onnx")
    assert np.any(graph.linears[0].gain < 0) and not np.all(graph.linears[1].gain == 1)
    x = samples((1, 8, 8))
    assert close(mine(graph, x), mine(load_onnx(DATA / "torch_cnn_bn_dynamo.onnx"), x))


def test_read_geometry_of_the_files():
    nodes = load_onnx(DATA / "torch_cnn_global_classic.onnx").nodes
    assert nodes[0].window.pads == (1, 1, 1, 1) and nodes[0].window.stride == (2, 2)  # Pad folded in
    assert nodes[3].window.dilation == (2, 2)
    assert isinstance(nodes[5], ir.AvgPool2d) and nodes[5].window.kernel == nodes[5].window.in_shape[1:]
    gmax = load_onnx(DATA / "torch_cnn_gmax_classic.onnx").nodes
    assert gmax[0].window.pads == (1, 1, 1, 1) and isinstance(gmax[2], ir.MaxPool2d)  # SAME_UPPER
    assert load_onnx(DATA / "torch_cnn_bn_classic.onnx").nodes[3].window.groups == 2
    rgb = load_onnx(DATA / "keras3_cnn_rgb_tf2onnx.onnx")
    assert rgb.sample_shape == (6, 6, 3) and rgb.linears[0].window.in_shape == (1, 6, 18)


def test_wrong_window_is_caught():
    """The comparison can fail: the first convolution with its padding moved (same output shape)."""
    path = DATA / "torch_cnn_bn_classic.onnx"
    graph = load_onnx(path)
    conv = graph.nodes[0]
    w = conv.window
    moved = ir.Window(w.in_shape, w.kernel, w.stride, (0, 0, 2, 2), w.dilation, w.groups)
    wrong = ir.Graph(graph.sample_shape, (ir.Conv2d(conv.weight, conv.bias, moved, conv.gain), *graph.nodes[1:]),
                     graph.output)
    x = samples((1, 8, 8))
    assert close(mine(graph, x), run_ort(path, x))
    assert not close(mine(wrong, x), run_ort(path, x), rel=1e-2)


def test_qat_files_match_the_brevitas_model():
    """Brevitas' TruncAvgPool2d floors: the QONNX file (Trunc, run by qonnx) and the QCDQ file (its
    quantizer after AveragePool read as the same truncation) give the same float graph, equal to
    qonnx's scores; onnxruntime rounds half to even after the QCDQ AveragePool, which hwq notes."""
    x = samples((1, 8, 8), 32)
    theirs = run_qonnx(DATA / "brevitas_cnn_qonnx.onnx", x)
    for name in QAT_FILES:
        graph = load_onnx(DATA / f"{name}.onnx")
        assert isinstance(graph.nodes[5], ir.SumPool2d) and graph.nodes[5].shift == 1
        assert close(mine(graph, x, quantize_maps=True), theirs)
        assert any("AveragePool" in note for note in graph.notes)
    qcdq = load_onnx(DATA / "brevitas_cnn_qcdq.onnx")
    assert "onnxruntime rounds half to even" in " ".join(qcdq.notes)


def test_qcdq_weight_grids_are_kept():
    """The Brevitas QCDQ convolutions keep their grids (4-bit, per output channel in the first layer)
    and the weights sit exactly on them; quantized, the codes are the file's."""
    graph = load_onnx(DATA / "brevitas_cnn_qcdq.onnx")
    grids = [n.grid for n in graph.linears]
    assert [g.bits for g in grids] == [4, 4, 4] and len(grids[0].weight_scale) == 4
    for node in graph.linears:
        scale = np.asarray(node.grid.weight_scale).reshape(-1, 1)
        codes = node.weight.reshape(node.weight.shape[0], -1) / scale
        np.testing.assert_array_equal(codes, np.rint(codes))
        assert np.abs(codes).max() <= 7
    net = hwq.quantize(graph, 8, calibration=samples((64,), 100).astype(np.float64), bounds=(0.0, 1.0))
    first = graph.linears[0]
    np.testing.assert_array_equal(net.layers[0].weight,
                                  np.rint(first.matrix / np.asarray(first.grid.weight_scale)[:, None]))
    assert all(r.on_grid for r in net.report if r.tensor.endswith(".weight"))


@pytest.mark.parametrize("name", FLOAT_FILES + QAT_FILES)
def test_files_quantize_and_sim_equals_reference(name):
    graph = load_onnx(DATA / f"{name}.onnx")
    x = RNG.uniform(0, 1, (120, graph.n_features))
    net = hwq.quantize(graph, 8, calibration=x, bounds=(0.0, 1.0))
    program = hwq.compile(net, "sim")
    codes = reference.quantize_input(net.input, x)
    expected = reference.trace(net, codes)
    np.testing.assert_array_equal(program.forward(codes), expected[-1])
    # and the integer network tracks the float one (8 bits; QAT files: with their quantizers)
    scores = expected[-1] * net.layers[-1].acc_scale[None, :]
    floats = mine(graph, x, quantize_maps=graph.input_quant is not None)
    assert np.abs(scores - floats).max() < 0.1 * np.abs(floats).max()


# -- hand-built graphs, one attribute at a time ------------------------------------------------------


def model(nodes, inits, in_shape, *, opset=13, n_out=3, head=True):
    """``x (N, *in_shape)`` -> nodes (the last writes ``maps``) -> Flatten -> Gemm -> ``scores``."""
    inits = dict(inits)
    nodes = list(nodes)
    if head:
        flat = int(np.prod(probe_shape(nodes, inits, in_shape, opset)))
        inits["head_w"] = RNG.normal(size=(n_out, flat)).astype(np.float32)
        inits["head_b"] = RNG.normal(size=n_out).astype(np.float32)
        nodes += [helper.make_node("Flatten", ["maps"], ["flat"], name="flatten"),
                  helper.make_node("Gemm", ["flat", "head_w", "head_b"], ["scores"], name="head", transB=1)]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("scores" if head else "maps", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return m


def probe_shape(nodes, inits, in_shape, opset):
    """The shape of ``maps`` for one sample, as onnxruntime computes it."""
    m = helper.make_model(helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()]), opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return run_ort(m, np.zeros((1, *in_shape), np.float32)).shape[1:]


def conv_node(name="conv", x="x", out="maps", w="w", b="b", **attrs):
    return helper.make_node("Conv", [x, w] + ([b] if b else []), [out], name=name, **attrs)


def weights(c_out, c_in, k=(3, 3), name="w", bias="b"):
    out = {name: RNG.normal(size=(c_out, c_in, *k)).astype(np.float32)}
    if bias:
        out[bias] = RNG.normal(size=c_out).astype(np.float32)
    return out


def check(m: onnx.ModelProto, in_shape) -> ir.Graph:
    graph = graph_from_model(m)
    x = samples(in_shape)
    assert close(mine(graph, x), run_ort(m, x)), "hwq's float graph differs from onnxruntime"
    return graph


CONV_CASES = {
    "notset_asymmetric": dict(pads=[1, 0, 2, 1], strides=[2, 1]),
    "same_upper": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "same_lower": dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    "valid": dict(auto_pad="VALID", strides=[1, 2]),
    "dilations": dict(dilations=[2, 1], pads=[2, 1, 2, 1]),
    "stride_dilation": dict(dilations=[1, 2], strides=[2, 3], pads=[0, 2, 1, 2]),
}


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("opset", [13, 17])
def test_conv_attributes(case, opset):
    """Even kernels on odd maps: SAME_UPPER and SAME_LOWER put the odd pixel on different sides."""
    m = model([conv_node(kernel_shape=[4, 3], **CONV_CASES[case])], weights(3, 2, (4, 3)), (2, 9, 7), opset=opset)
    graph = check(m, (2, 9, 7))
    if case.startswith("same"):
        assert graph.nodes[0].window.pads == ((1, 1, 2, 1) if case == "same_upper" else (2, 1, 1, 1))


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_and_depthwise(groups):
    m = model([conv_node(group=groups, pads=[1, 1, 1, 1])], weights(8, 4 // groups), (4, 6, 5))
    assert check(m, (4, 6, 5)).nodes[0].window.groups == groups


def test_conv_without_bias_then_relu_and_second_conv():
    inits = {**weights(4, 2, name="w1", bias=None), **weights(3, 4, (2, 2), name="w2", bias="b2")}
    nodes = [conv_node("c1", "x", "h", "w1", None, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             conv_node("c2", "r", "maps", "w2", "b2", strides=[2, 2])]
    check(model(nodes, inits, (2, 7, 7)), (2, 7, 7))


def with_conv(pool, c=3, shape=(3, 9, 9), **attrs):
    nodes = [conv_node(x="x", out="h", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node(pool, ["r"], ["maps"], name="pool", **attrs)]
    return model(nodes, weights(c, shape[0]), shape)


POOL_CASES = {
    "max_ceil": ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "max_ceil_pads": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0], ceil_mode=1)),
    "max_same": ("MaxPool", dict(kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "max_storage_order_0": ("MaxPool", dict(kernel_shape=[3, 3], storage_order=0)),
    "avg_include_pad": ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                            count_include_pad=1)),
    "avg_exclude_no_pad": ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], count_include_pad=0)),
    "avg_ceil_fits": ("AveragePool", dict(kernel_shape=[3, 3], strides=[3, 3], ceil_mode=1)),
    "global_avg": ("GlobalAveragePool", {}),
    "global_max": ("GlobalMaxPool", {}),
}


@pytest.mark.parametrize("case", POOL_CASES)
def test_pool_attributes(case):
    op, attrs = POOL_CASES[case]
    graph = check(with_conv(op, **attrs), (3, 9, 9))
    expect = {"max_ceil": (0, 0, 1, 1), "max_ceil_pads": (1, 1, 1, 1)}
    if case in expect:  # ceil_mode: end padding where the last window starts inside the map
        assert graph.nodes[2].window.pads == expect[case]


@pytest.mark.parametrize(("op", "keepdims"), [("ReduceMean", 1), ("ReduceMean", 0), ("ReduceMax", 1)])
def test_reduce_over_spatial_axes_is_global_pooling(op, keepdims):
    nodes = [conv_node(x="x", out="h", pads=[1, 1, 1, 1]),
             helper.make_node(op, ["h"], ["maps"], name="reduce", axes=[2, 3], keepdims=keepdims)]
    graph = check(model(nodes, weights(4, 2), (2, 5, 6)), (2, 5, 6))
    assert graph.nodes[1].window.kernel == (5, 6)


def test_batchnorm_fold_after_conv_and_after_gemm():
    c = 4
    bn = {"g": np.array([1.5, -0.7, 0.9, 2.0], np.float32), "beta": RNG.normal(size=c).astype(np.float32),
          "mu": RNG.normal(size=c).astype(np.float32), "var": RNG.uniform(0.3, 2, c).astype(np.float32)}
    nodes = [conv_node(x="x", out="h", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["h", "g", "beta", "mu", "var"], ["maps"], name="bn",
                              epsilon=1e-3)]
    graph = check(model(nodes, {**weights(c, 2), **bn}, (2, 5, 5)), (2, 5, 5))
    assert graph.nodes[0].gain[1] < 0
    # after a dense layer (no grid): rows scaled
    dense = {"wd": RNG.normal(size=(c, 18)).astype(np.float32), "bd": RNG.normal(size=c).astype(np.float32), **bn}
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat0"),
             helper.make_node("Gemm", ["f", "wd", "bd"], ["d"], name="dense", transB=1),
             helper.make_node("BatchNormalization", ["d", "g", "beta", "mu", "var"], ["scores"], name="bn")]
    m = helper.make_model(helper.make_graph(
        nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(v, k) for k, v in dense.items()]), opset_imports=[helper.make_opsetid("", 15)])
    m.ir_version = 9
    check(m, (2, 3, 3))


@pytest.mark.parametrize(("op", "shape"), [("Add", (3, 1, 1)), ("Mul", (1, 3, 1, 1)), ("Div", (3, 1, 1)),
                                           ("Sub", ()), ("Mul", (1,))])
def test_per_channel_constants_after_conv(op, shape):
    value = (RNG.uniform(0.5, 2, shape) * np.where(RNG.random(shape) < 0.3, -1, 1)).astype(np.float32)
    nodes = [conv_node(x="x", out="h", pads=[1, 1, 1, 1]), helper.make_node(op, ["h", "k"], ["maps"], name="k")]
    check(model(nodes, {**weights(3, 2), "k": value}, (2, 5, 5)), (2, 5, 5))


@pytest.mark.parametrize("pads", [[0, 0, 0, 0], [1, 1, 1, 1]])
def test_input_normalization_folds_into_the_first_conv(pads):
    """``(x - mean) / std`` per channel: exact without padding; with padding only the scale folds
    (a zero offset), an offset is refused (below)."""
    mean = RNG.uniform(0, 1, (1, 2, 1, 1)).astype(np.float32) * (0 if any(pads) else 1)
    std = RNG.uniform(0.5, 2, (1, 2, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"], name="sub"),
             helper.make_node("Div", ["s", "std"], ["n"], name="div"),
             conv_node(x="n", out="maps", pads=pads, strides=[2, 1])]
    check(model(nodes, {**weights(3, 2), "mean": mean, "std": std}, (2, 6, 5)), (2, 6, 5))


def test_pad_node_folds_into_the_conv():
    pads = np.array([0, 0, 1, 2, 0, 0, 2, 0], np.int64)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="constant"),
             conv_node(x="p", out="maps", strides=[2, 2])]
    graph = check(model(nodes, {**weights(3, 2), "pads": pads}, (2, 7, 6)), (2, 7, 6))
    assert graph.nodes[0].window.pads == (1, 2, 2, 0)


def test_nhwc_model_with_channel_last_flatten():
    """A Keras-style graph: NHWC input -> Transpose [0,3,1,2] -> Conv -> Relu -> Transpose [0,2,3,1] ->
    Reshape -> MatMul; the input is read as an H x (W C) image, the dense columns reordered."""
    inits = {**weights(4, 3, (3, 2), bias=None), "shape": np.array([-1, 4 * 3 * 3], np.int64),
             "wd": RNG.normal(size=(36, 5)).astype(np.float32),
             "scale": RNG.uniform(0.5, 2, (1, 1, 1, 3)).astype(np.float32)}
    nodes = [helper.make_node("Mul", ["x", "scale"], ["xs"], name="per_channel_scale"),  # NHWC, folded
             helper.make_node("Transpose", ["xs"], ["t"], name="in_t", perm=[0, 3, 1, 2]),
             conv_node(x="t", out="h", b=None, strides=[2, 2], pads=[1, 0, 0, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["rt"], name="out_t", perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["rt", "shape"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "wd"], ["maps"], name="dense")]
    graph = check(model(nodes, inits, (6, 5, 3), head=False), (6, 5, 3))
    assert graph.sample_shape == (6, 5, 3)


def test_reshape_at_the_input_renames_the_dims():
    inits = {**weights(3, 1), "shape": np.array([-1, 1, 6, 5], np.int64)}
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"], name="to_maps"),
             conv_node(x="r", out="maps", pads=[1, 1, 1, 1])]
    assert check(model(nodes, inits, (30,)), (30,)).sample_shape == (1, 6, 5)


# -- what hwq refuses, in one line ----------------------------------------------------------------------


def refused(m, error, match):
    with pytest.raises(error, match=match) as info:
        graph_from_model(m)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("op", "why"), [("ConvTranspose", "transposed convolution"),
                                         ("ConvInteger", "integer convolution"),
                                         ("QLinearConv", "integer convolution"),
                                         ("LpPool", "Lp pooling")])
def test_other_convolution_ops_are_refused(op, why):
    node = helper.make_node(op, ["x", "w"], ["maps"], name="odd")
    m = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.ones((1, 1, 2, 2), np.float32), "w")]),
        opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(UnsupportedOpError, match=f"node 'odd' \\({op}\\): {why}"):
        graph_from_model(m)


def test_refusals_in_one_line():
    refused(with_conv("MaxPool", kernel_shape=[2, 2], dilations=[2, 2]), InvalidModelError,
            "MaxPool 'pool': dilations")
    refused(with_conv("MaxPool", kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
            InvalidModelError, "starts in the end padding")
    refused(with_conv("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]), InvalidModelError,
            "count_include_pad=0 with padding")
    refused(with_conv("AveragePool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, count_include_pad=1),
            InvalidModelError, "ceil_mode=1 makes windows that overhang")
    bn = {k: np.ones(3, np.float32) for k in ("g", "beta", "mu", "var")}
    nodes = [conv_node(x="x", out="h", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("BatchNormalization", ["r", "g", "beta", "mu", "var"], ["maps"], name="bn")]
    refused(model(nodes, {**weights(3, 2), **bn}, (2, 5, 5), head=False), InvalidModelError,
            "BatchNormalization 'bn': must directly follow a Conv")
    mean = np.full((1, 2, 1, 1), 0.5, np.float32)
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"], name="sub"), conv_node(x="s", out="maps", pads=[1, 1, 1, 1])]
    refused(model(nodes, {**weights(3, 2), "mean": mean}, (2, 5, 5), head=False), InvalidModelError,
            "input offset .* with padding cannot be folded exactly")
    pix = RNG.uniform(size=(1, 2, 5, 5)).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "pix"], ["s"], name="mul"), conv_node(x="s", out="maps")]
    refused(model(nodes, {**weights(3, 2), "pix": pix}, (2, 5, 5), head=False), InvalidModelError,
            "varies within a channel")
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], name="first", kernel_shape=[2, 2]), conv_node(x="p")]
    refused(model(nodes, weights(3, 2), (2, 5, 5), head=False), InvalidModelError, "pooling before the first")
    nodes = [conv_node(x="x", out="h"), helper.make_node("Add", ["h", "k"], ["maps"], name="pixelwise")]
    refused(model(nodes, {**weights(3, 2), "k": np.ones((3, 3, 3), np.float32)}, (2, 5, 5), head=False),
            InvalidModelError, "per-channel constants of shape \\(3, 1, 1\\)")
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"), helper.make_node("Sigmoid", ["p"], ["s"]),
             conv_node(x="s", out="maps")]
    refused(model(nodes, {**weights(3, 2), "pads": pads}, (2, 5, 5), head=False), InvalidModelError,
            "follows a Pad")
    nodes = [conv_node(x="x", out="h"), helper.make_node("Transpose", ["h"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Add", ["t", "k"], ["maps"], name="nhwc_add")]
    refused(model(nodes, {**weights(3, 2), "k": np.ones(3, np.float32)}, (2, 5, 5), head=False),
            InvalidModelError, "'nhwc_add' \\(Add\\) reads channel-last")
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="in_t", perm=[0, 3, 1, 2]),
             conv_node(x="t", out="maps", group=3)]
    refused(model(nodes, weights(3, 1), (5, 5, 3), head=False), InvalidModelError,
            "on an NHWC input with groups")


def test_conv_needs_the_sample_shape():
    m = model([conv_node()], weights(3, 2), (2, 5, 5), head=False)
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    refused(m, InvalidModelError, "needs the sample's \\(C, H, W\\) shape")


def test_op_table_lists_the_convolution_ops():
    table = dict(op_table())
    for op in ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization",
               "Pad", "Trunc"):
        assert op in table
    assert "ConvTranspose" not in table


@pytest.mark.parametrize("w_shape, attrs, message", [
    ((2, 4, 9, 9), {}, "kernel spanning 9 does not fit the input height 8"),
    ((2, 4, 3, 3), {"pads": [-1, 0, 0, 0]}, "negative pads"),
    ((3, 2, 3, 3), {"group": 3}, "with group 3 does not fit 4 input channels"),
    ((2, 3, 3, 3), {}, "does not fit 4 input channels"),
])
def test_bad_geometry_is_one_line_naming_the_node(w_shape, attrs, message):
    """A kernel larger than its input, negative pads, channels that do not divide by the groups or
    do not match: one line, naming the node."""
    w = RNG.normal(size=w_shape).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv0", **attrs)
    flat = helper.make_node("Flatten", ["y"], ["f"], name="flat")
    g = helper.make_graph([conv, flat], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                          [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", "K"])],
                          [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    with pytest.raises(InvalidModelError, match=message) as err:
        graph_from_model(m)
    assert "\n" not in str(err.value) and "Conv 'conv0'" in str(err.value)
