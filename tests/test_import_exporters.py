"""Files from real exporters (``tests/data/exporters/``, made by ``make_files.py`` there) imported
and checked against the file's own semantics: onnxruntime for standard ONNX (QCDQ with graph
optimizations off, so Q/DQ stay spec-literal), qonnx's executor for QONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import hwq
from hwq.attack.gradients import FloatGradient
from hwq.onnx.importer import load_onnx
from hwq.quant import reference as ref
from hwq.quant.qnet import QuantSettings
from hwq.quant.quantize import quantize

DATA = Path(__file__).parent / "data" / "exporters"
FULL_QAT = ["brevitas_w4a4", "brevitas_w2a2_u8in", "brevitas_w3a4_perchannel"]
CASES = [(f"{m}_{kind}", kind) for m in FULL_QAT for kind in ("qcdq", "qonnx")]
CASES.append(("brevitas_binary_qonnx", "qonnx"))


@pytest.fixture(scope="module")
def digits():
    return hwq.load_dataset("digits")


@pytest.fixture(scope="module")
def inputs(digits):
    rng = np.random.default_rng(0)
    noisy = np.clip(digits.x_test + rng.normal(0, 0.1, digits.x_test.shape), 0, 1)
    return np.concatenate([digits.x_test, noisy, rng.uniform(0, 1, (280, 64))]).astype(np.float32)


def fixed_batch(path: Path, n: int) -> onnx.ModelProto:
    """Brevitas exports batch 1; the same graph with batch ``n`` (shapes only)."""
    model = onnx.load(str(path))
    for v in list(model.graph.input) + list(model.graph.output):
        if len(v.type.tensor_type.shape.dim) >= 2:
            v.type.tensor_type.shape.dim[0].dim_value = n
    del model.graph.value_info[:]
    return model


def file_scores(path: Path, kind: str, x: np.ndarray) -> np.ndarray:
    """The file's own float scores: onnxruntime (spec-literal Q/DQ) or qonnx's executor."""
    if kind == "qcdq":
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    model = ModelWrapper(fixed_batch(path, len(x))).transform(InferShapes())
    return execute_onnx(model, {model.graph.input[0].name: x})[model.graph.output[0].name]


def full_qat_net(name, digits):
    graph = load_onnx(DATA / f"{name}.onnx")
    return quantize(graph, QuantSettings(max(a.grid.bits for a in graph.affines)), digits.x_train,
                    bounds=digits.bounds)


def agreement(net, path, kind, x):
    """(fraction of inputs whose integer scores equal the file's scores / accumulator unit,
    fraction of decisions that agree, the same among inputs without an exact tie, ties)."""
    accs = ref.trace(net, ref.quantize_input(net.input, x))
    scores = accs[-1]
    theirs = file_scores(path, kind, x)
    unit = net.layers[-1].acc_scale[0]
    same_scores = np.all(np.abs(theirs / unit - scores) < 1e-2, axis=1)
    # a sign unit whose exact pre-activation is 0 (+1 in both) gets float32 rounding noise of
    # either sign in the file: such inputs are compared by the rest only
    zero = np.zeros(len(x), bool)
    for layer, acc in zip(net.layers, accs):
        if layer.activation == "sign":
            zero |= np.any(acc == 0, axis=1)
    same_scores = same_scores[~zero]
    top = np.sort(scores, axis=1)[:, -2:]
    tie = top[:, 0] == top[:, 1]
    same = ref.decide(scores, net.output) == np.argmax(theirs, axis=1)
    return same_scores.mean(), same.mean(), same[~tie].mean(), int(tie.sum())


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_full_qat_agrees_with_the_files_own_semantics(name, kind, digits, inputs):
    net = full_qat_net(name, digits)
    assert net.input.inv_scale == pytest.approx(1 / load_onnx(DATA / f"{name}.onnx").input_quant.scale)
    scores, decisions, untied, ties = agreement(net, DATA / f"{name}.onnx", kind, inputs)
    assert scores >= 0.999, f"integer scores equal the file's on {scores:.4%}"
    # every decision that differs is an exact tie of integer scores, which the file's float32
    # arithmetic breaks by rounding noise (docs/import.md); hwq takes the lowest index
    assert untied >= 0.999, f"{decisions:.4%} agree, {untied:.4%} without ties ({ties} ties)"
    assert np.mean(ref.predict(net, digits.x_test) == digits.y_test) > 0.9


def test_agreement_check_can_fail(digits, inputs):
    """The same comparison flags a network whose activation format is not the file's."""
    name = "brevitas_w4a4_qcdq"
    graph = load_onnx(DATA / f"{name}.onnx")
    relu = graph.nodes[1]
    wrong = graph.__class__(graph.sample_shape, (graph.nodes[0], relu.__class__("relu"), graph.nodes[2]),
                            graph.output, graph.notes, graph.input_quant)
    net = quantize(wrong, QuantSettings(4, act_bits=4), digits.x_train, bounds=digits.bounds)
    scores, _, _, _ = agreement(net, DATA / f"{name}.onnx", "qcdq", inputs)
    assert scores < 0.5


@pytest.mark.parametrize("name", [f"{m}_{k}" for m in FULL_QAT for k in ("qcdq", "qonnx")])
def test_full_qat_formats_come_from_the_file(name, digits):
    graph = load_onnx(DATA / f"{name}.onnx")
    net = full_qat_net(name, digits)
    q = graph.layers()[0][1], graph.activation_quants()[0]
    assert q[0] == "relu" and net.layers[0].out_scale == q[1].scale
    assert net.layers[0].act_bits == q[1].bits
    assert all(r.on_grid for r in net.report if r.tensor.endswith(".weight"))
    rows = {r.tensor: r for r in net.report}
    assert "(file)" in rows["input"].format and "(file)" in rows["layer0.relu"].format


def test_binary_network_is_sign_activations(digits):
    graph = load_onnx(DATA / "brevitas_binary_qonnx.onnx")
    assert graph.layers()[0][1] == "sign" and graph.affines[0].grid.bits == 1
    net = full_qat_net("brevitas_binary_qonnx", digits)
    h = ref.activate(net.layers[0], ref.trace(net, ref.quantize_input(net.input, digits.x_test))[0])
    assert set(np.unique(h)) == {-1, 1}
    program = hwq.compile(net, "sim")
    xq = ref.quantize_input(net.input, digits.x_test)
    np.testing.assert_array_equal(program.forward(xq), ref.forward(net, xq))


def float_logits(graph, x):
    return FloatGradient(graph).forward(x.reshape(len(x), -1))[-1]


@pytest.mark.parametrize("name", ["torch_relu_classic", "torch_relu_dynamo", "torch_sign_classic",
                                  "torch_sign_dynamo", "torch_step_div_classic", "keras3_relu_tf2onnx"])
def test_float_exporters_match_onnxruntime(name, digits):
    graph = load_onnx(DATA / f"{name}.onnx")
    x = digits.x_test.astype(np.float32)
    sess = ort.InferenceSession(str(DATA / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    theirs = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    mine = float_logits(graph, x)
    if graph.output.kind == "softmax":
        e = np.exp(mine - mine.max(axis=1, keepdims=True))
        mine = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(mine, theirs, atol=1e-4)
    kinds = {"sign": "sign", "step": "step"}
    expect = next((v for k, v in kinds.items() if k in name), "relu")
    assert graph.layers()[0][1] == expect


def test_the_first_convolution_file_imports_as_a_cnn():
    """torch_conv_classic.onnx (Conv -> Relu -> Flatten -> Gemm), once refused, now reads as a CNN
    on 1x8x8 maps; tests/test_import_cnn.py checks the CNN files against onnxruntime."""
    graph = load_onnx(DATA / "torch_conv_classic.onnx")
    assert graph.convolutional and graph.input_shape == (1, 8, 8)
    assert [type(n).__name__ for n in graph.nodes][:2] == ["Conv2d", "Activation"]


@pytest.mark.parametrize("kind", ["qcdq", "qonnx"])
def test_weight_only_grids_carry_their_bits(kind):
    graph = load_onnx(DATA / f"brevitas_w2_weights_only_{kind}.onnx")
    assert [a.grid.bits for a in graph.affines] == [2, 2] and graph.input_quant is None


def test_compile_bits_follow_the_grids(tmp_path, capsys):
    """No --bits: the grids' bits; a higher --bits keeps the codes and records their bits; a
    lower one re-quantizes and says so in the report."""
    import json

    from hwq.cli import main

    model = str(DATA / "brevitas_w2_weights_only_qcdq.onnx")
    for bits, want in ((None, 2), (4, 2), (1, 1)):
        args = ["compile", model, "-o", str(tmp_path / "m.hwq"), "--json"] + (["--bits", str(bits)] if bits else [])
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code in (0, None)
        out = json.loads(capsys.readouterr().out)
        assert out["bits"] == want
        assert hwq.load_program(tmp_path / "m.hwq").net.settings.bits == want
    assert any("re-quantized from the file's q=2 grid" in r["format"] for r in out["report"])
