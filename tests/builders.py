"""Small ONNX models built the way real exporters write them (used by the tests)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8  # onnxruntime 1.23 refuses onnx 1.23's default IR version 14


def make_model(nodes, inits, n_in, out_name="scores", in_shape=None, opset=17, extra_outputs=()):
    in_shape = in_shape or ["N", n_in]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", "C"]), *extra_outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = IR_VERSION
    return model


def torch_style_mlp(w1, b1, w2, b2, act="Relu", out="Softmax", in_shape=None):
    """Flatten -> Gemm(transB=1) -> act -> Gemm(transB=1) -> out, as torch.onnx.export writes."""
    f32 = {k: np.asarray(v, np.float32) for k, v in dict(w1=w1, b1=b1, w2=w2, b2=b2).items()}
    nodes = [helper.make_node("Flatten", ["input"], ["f"], axis=1, name="flatten")]
    nodes.append(helper.make_node("Gemm", ["f", "w1", "b1"], ["z1"], transB=1, name="fc1"))
    if act == "step":
        nodes += [
            helper.make_node("Greater", ["z1", "zero"], ["g"], name="gt"),
            helper.make_node("Cast", ["g"], ["h"], to=TensorProto.FLOAT, name="cast"),
        ]
        f32["zero"] = np.float32(0)
    else:
        nodes.append(helper.make_node(act, ["z1"], ["h"], name="act"))
    last = "scores" if out is None else "logits"
    nodes.append(helper.make_node("Gemm", ["h", "w2", "b2"], [last], transB=1, name="fc2"))
    if out is not None:
        nodes.append(helper.make_node(out, ["logits"], ["scores"], name="out"))
    n_in = f32["w1"].shape[1]
    return make_model(nodes, f32, n_in, in_shape=in_shape)


def random_mlp(rng, n_in, hidden, n_out, act="Relu", scale=1.0):
    w1 = rng.uniform(-scale, scale, (hidden, n_in))
    b1 = rng.uniform(-scale, scale, hidden)
    w2 = rng.uniform(-scale, scale, (n_out, hidden))
    b2 = rng.uniform(-scale, scale, n_out)
    out = "Sigmoid" if n_out == 1 else "Softmax"
    return torch_style_mlp(w1, b1, w2, b2, act=act, out=out)


def save(model, path) -> str:
    onnx.save(model, str(path))
    return str(path)
