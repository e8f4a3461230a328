"""ONNX import: what real exporters write, compared with onnxruntime on the float model."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import make_model, random_mlp, save, torch_style_mlp
from onnx import TensorProto, helper

from hwq.attack.gradients import FloatGradient
from hwq.errors import InvalidModelError, ModelFormatError, UnsupportedOpError
from hwq.ir import activations
from hwq.onnx.importer import graph_from_model, load_onnx

RNG = np.random.default_rng(7)


def float_scores(graph, x):
    """Probabilities of the imported float IR (softmax, or sigmoid of a single score)."""
    z = FloatGradient(graph).forward(x.reshape(len(x), -1))[-1]
    if graph.output.kind == "sigmoid":
        return activations.sigmoid(z)
    if graph.output.kind == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return z


def ort_run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "step"])
@pytest.mark.parametrize("n_out", [1, 10])
def test_torch_style_matches_onnxruntime(act, n_out):
    model = random_mlp(RNG, 64, 16, n_out, act, scale=0.5)
    graph = graph_from_model(model)
    x = RNG.uniform(0, 1, (200, 64)).astype(np.float32)
    np.testing.assert_allclose(float_scores(graph, x), ort_run(model, x), atol=1e-5)
    assert graph.layers()[0][1] == {"Relu": "relu", "Sigmoid": "sigmoid", "step": "step"}[act]


def test_image_shaped_input_with_flatten():
    w1, b1 = RNG.normal(size=(8, 16)), RNG.normal(size=8)
    w2, b2 = RNG.normal(size=(3, 8)), RNG.normal(size=3)
    model = torch_style_mlp(w1, b1, w2, b2, in_shape=["N", 1, 4, 4])
    graph = graph_from_model(model)
    assert graph.sample_shape == (1, 4, 4) and graph.n_features == 16
    x = RNG.uniform(0, 1, (5, 1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(float_scores(graph, x), ort_run(model, x), atol=1e-5)


def keras_style(step_nodes, w1, b1, w2, b2, gain=None):
    """MatMul + Add, optional gain, a step pattern, Reshape at the input."""
    inits = dict(w1=w1.T.astype(np.float32), b1=b1.astype(np.float32), w2=w2.T.astype(np.float32),
                 b2=b2.astype(np.float32), shape=np.array([-1, w1.shape[1]], np.int64),
                 zero=np.float32(0), one=np.float32(1), half=np.float32(0.5), g=np.float32(gain or 1))
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["r"], name="reshape"),
             helper.make_node("MatMul", ["r", "w1"], ["m1"], name="mm1"),
             helper.make_node("Add", ["m1", "b1"], ["z0"], name="add1")]
    if gain:
        nodes.append(helper.make_node("Mul", ["z0", "g"], ["z"], name="gain"))
    else:
        nodes.append(helper.make_node("Identity", ["z0"], ["z"], name="id"))
    nodes += step_nodes
    nodes += [helper.make_node("MatMul", ["h", "w2"], ["m2"], name="mm2"),
              helper.make_node("Add", ["m2", "b2"], ["scores"], name="add2")]
    return make_model(nodes, inits, w1.shape[1])


STEP_PATTERNS = {
    "greater-cast": [helper.make_node("Greater", ["z", "zero"], ["c"], name="gt"),
                     helper.make_node("Cast", ["c"], ["h"], to=TensorProto.FLOAT, name="cast")],
    "relu-sign": [helper.make_node("Sign", ["z"], ["s"], name="sign"),
                  helper.make_node("Relu", ["s"], ["h"], name="relu")],
    "sign-plus-one-half": [helper.make_node("Sign", ["z"], ["s"], name="sign"),
                           helper.make_node("Add", ["s", "one"], ["s1"], name="add"),
                           helper.make_node("Mul", ["s1", "half"], ["h"], name="half")],
    "where": [helper.make_node("Greater", ["z", "zero"], ["c"], name="gt"),
              helper.make_node("Where", ["c", "one", "zero"], ["h"], name="where")],
}


@pytest.mark.parametrize("pattern", sorted(STEP_PATTERNS))
@pytest.mark.parametrize("gain", [None, 10.0])
def test_step_patterns_and_gain(pattern, gain):
    w1, b1 = RNG.normal(size=(12, 6)), RNG.normal(size=12)
    w2, b2 = RNG.normal(size=(4, 12)), RNG.normal(size=4)
    model = keras_style(STEP_PATTERNS[pattern], w1, b1, w2, b2, gain)
    graph = graph_from_model(model)
    assert graph.layers()[0][1] == "step"
    assert graph.affines[0].gain == (gain or 1.0)
    x = RNG.normal(size=(300, 6)).astype(np.float32)
    np.testing.assert_allclose(float_scores(graph, x), ort_run(model, x), atol=1e-4)


def test_gemm_attributes():
    a, c = RNG.normal(size=(5, 3)), RNG.normal(size=3)  # transB=0: B is (n_in, n_out)
    inits = {"B": a.astype(np.float32), "C": c.astype(np.float32)}
    node = helper.make_node("Gemm", ["input", "B", "C"], ["scores"], alpha=0.5, beta=2.0, name="g")
    model = make_model([node], inits, 5)
    graph = graph_from_model(model)
    x = RNG.normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_allclose(float_scores(graph, x), ort_run(model, x), atol=1e-5)


@pytest.mark.parametrize("binary", [False, True])
def test_scikit_learn_export(tmp_path, binary):
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    y = (y > 4).astype(int) if binary else y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=0).fit(x, y)
    model = to_onnx(clf, x[:1], target_opset=17)
    graph = load_onnx(save(model, tmp_path / "skl.onnx"))
    assert any("post-processing" in n for n in graph.notes)
    proba = float_scores(graph, x)
    expected = clf.predict_proba(x)
    np.testing.assert_allclose(proba[:, 0] if binary else proba, expected[:, 1] if binary else expected, atol=1e-5)


def test_dequantize_linear_weights_are_a_grid():
    codes = RNG.integers(-7, 8, size=(6, 10)).astype(np.int8)  # (n_in, n_out) for MatMul
    inits = {"q": codes, "s": np.float32(0.125), "b": np.zeros(10, np.float32)}
    nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["w"], name="dq"),
             helper.make_node("MatMul", ["input", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["scores"], name="add")]
    graph = graph_from_model(make_model(nodes, inits, 6))
    grid = graph.affines[0].grid
    assert grid is not None and grid.bits == 4 and grid.weight_scale == (0.125,)
    np.testing.assert_array_equal(graph.affines[0].weight, codes.T * 0.125)


@pytest.mark.parametrize("op", ["Quant", "BipolarQuant"])
def test_qonnx_quant_nodes(op):
    w = RNG.normal(size=(6, 5)).astype(np.float32)
    domain = "qonnx.custom_op.general"
    if op == "Quant":
        inits = {"w": w, "s": np.float32(0.25), "z": np.float32(0), "bw": np.float32(3)}
        q = helper.make_node("Quant", ["w", "s", "z", "bw"], ["wq"], domain=domain, name="q",
                             signed=1, narrow=1, rounding_mode="ROUND")
        expected = np.clip(np.rint(w / 0.25), -3, 3) * 0.25
    else:
        inits = {"w": w, "s": np.float32(0.5)}
        q = helper.make_node("BipolarQuant", ["w", "s"], ["wq"], domain=domain, name="q")
        expected = np.where(w >= 0, 0.5, -0.5)
    nodes = [q, helper.make_node("MatMul", ["input", "wq"], ["scores"], name="mm")]
    model = make_model(nodes, inits, 6)
    model.opset_import.append(helper.make_opsetid(domain, 1))
    graph = graph_from_model(model)
    np.testing.assert_allclose(graph.affines[0].weight, expected.T, atol=1e-7)
    assert graph.affines[0].grid.bits == (3 if op == "Quant" else 1)


def test_not_onnx(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_bytes(b"this is not a protobuf at all \x00\xff")
    with pytest.raises(ModelFormatError, match="not a valid ONNX model"):
        load_onnx(path)


def test_truncated(tmp_path):
    data = random_mlp(RNG, 8, 4, 2).SerializeToString()
    path = tmp_path / "t.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError):
        load_onnx(path)


def test_unsupported_op_names_op_node_opset_in_one_short_line():
    inits = {"w": RNG.normal(size=(16, 4)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["input", "w"], ["m"], name="mm"),
             helper.make_node("Tanh", ["m"], ["scores"], name="tanh1")]
    with pytest.raises(UnsupportedOpError) as info:
        graph_from_model(make_model(nodes, inits, 16))
    msg = str(info.value)
    assert "Tanh" in msg and "tanh1" in msg and "opset 17" in msg and "Gemm/MatMul" in msg
    assert "hwq info --ops" in msg and "\n" not in msg and len(msg) < 300


def test_convolution_is_not_supported_yet():
    inits = {"w": RNG.normal(size=(2, 1, 3, 3)).astype(np.float32)}
    node = helper.make_node("Conv", ["input", "w"], ["scores"], name="conv1")
    model = make_model([node], inits, 16, in_shape=["N", 1, 4, 4])
    with pytest.raises(UnsupportedOpError, match="conv1.*convolution is not supported yet$"):
        graph_from_model(model)


def test_nan_weights_rejected():
    w1 = RNG.normal(size=(4, 3))
    w1[1, 1] = np.nan
    model = torch_style_mlp(w1, np.zeros(4), RNG.normal(size=(2, 4)), np.zeros(2))
    with pytest.raises(InvalidModelError, match="NaN"):
        graph_from_model(model)


def test_branching_graph_rejected():
    inits = {"w": RNG.normal(size=(3, 3)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["input", "w"], ["a"], name="a"),
             helper.make_node("Relu", ["a"], ["b"], name="b"),
             helper.make_node("Add", ["a", "b"], ["scores"], name="c")]
    with pytest.raises(InvalidModelError):
        graph_from_model(make_model(nodes, inits, 3))


def test_model_checker_runs_on_builders():
    onnx.checker.check_model(random_mlp(RNG, 5, 3, 2))
