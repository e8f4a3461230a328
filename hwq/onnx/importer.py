"""ONNX -> IR. One function per ONNX op, named after it, registered in ``OPS``.

The importer walks the nodes in (topological) file order, tracking one *stream*: the tensor
that carries the sample through the network. Nodes whose inputs are all constants are folded.
Each op function receives the importer state and the node and appends IR nodes. Classifier
post-processing (ArgMax, ``ai.onnx.ml`` ops such as ZipMap, label outputs) is dropped with a
note, keeping the scores output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from hwq import ir
from hwq.errors import InvalidModelError, ModelFormatError, UnsupportedOpError
from hwq.onnx.grids import QUANT_OPS

POST_PROCESSING = {"ArgMax", "ArgMin", "TopK", "ZipMap", "ArrayFeatureExtractor", "LabelEncoder"}
PASS_THROUGH = {"Identity", "Dropout"}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}


@dataclass
class Importer:
    opset: int
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    grids: dict[str, ir.Grid] = field(default_factory=dict)
    stream: str = ""
    nodes: list = field(default_factory=list)
    pending: str | None = None  # partial step pattern: "greater", "sign", "sign+1"
    output: ir.Output | None = None
    dropped: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def const(self, node: onnx.NodeProto, name: str) -> np.ndarray:
        if name not in self.consts:
            raise InvalidModelError(
                f"node '{node.name or node.op_type}' ({node.op_type}): input '{name}' must be a "
                "constant (an initializer)",
                hint="hwq imports feed-forward chains whose parameters are constants",
            )
        return self.consts[name]

    def other(self, node: onnx.NodeProto) -> np.ndarray:
        """The constant operand of a binary op whose other operand is the stream."""
        names = [n for n in node.input if n != self.stream]
        if len(names) != 1:
            raise InvalidModelError(f"node '{node.name}' ({node.op_type}) combines the stream with itself")
        return self.const(node, names[0])

    def open_affine(self, node: onnx.NodeProto) -> ir.Affine:
        if self.pending is None and self.nodes and isinstance(self.nodes[-1], ir.Affine):
            return self.nodes[-1]
        raise InvalidModelError(
            f"node '{node.name}' ({node.op_type}) must directly follow a Gemm/MatMul",
            hint="constant Add/Mul are folded into the preceding dense layer",
        )

    def replace_last(self, **changes) -> None:
        last = self.nodes[-1]
        fields = dict(weight=last.weight, bias=last.bias, gain=last.gain, grid=last.grid)
        fields.update(changes)
        self.nodes[-1] = ir.Affine(**fields)

    def finish_step(self, node: onnx.NodeProto) -> None:
        self.pending = None
        self.nodes.append(ir.Activation("step"))

    def check_open(self, node: onnx.NodeProto) -> None:
        if self.output is not None:
            raise InvalidModelError(
                f"node '{node.name}' ({node.op_type}) follows the output activation",
                hint="only classifier post-processing may follow Softmax/Sigmoid",
            )


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


# ---------------------------------------------------------------- op functions (ONNX defaults)


def Gemm(st: Importer, node, alpha=1.0, beta=1.0, transA=0, transB=0):
    st.check_open(node)
    if node.input[0] != st.stream or transA:
        raise InvalidModelError(f"Gemm '{node.name}': the sample must be input A with transA=0")
    b = st.const(node, node.input[1])
    w = b if transB else b.T
    bias = np.zeros(w.shape[0])
    if len(node.input) > 2 and node.input[2]:
        bias = np.broadcast_to(st.const(node, node.input[2]).reshape(-1), (w.shape[0],)) * beta
    grid = st.grids.get(node.input[1]) if alpha == 1.0 else None
    st.nodes.append(ir.Affine(alpha * w, bias, grid=grid))


def MatMul(st: Importer, node):
    st.check_open(node)
    if node.input[0] != st.stream:
        raise InvalidModelError(f"MatMul '{node.name}': the sample must be the left operand")
    w = st.const(node, node.input[1])
    if w.ndim != 2:
        raise InvalidModelError(f"MatMul '{node.name}': weight must be 2-D, got {w.shape}")
    st.nodes.append(ir.Affine(w.T, np.zeros(w.shape[1]), grid=st.grids.get(node.input[1])))


def Add(st: Importer, node):
    c = st.other(node)
    if st.pending == "sign" and np.all(c == 1):
        st.pending = "sign+1"
        return
    affine = st.open_affine(node)
    bias = affine.bias + np.broadcast_to(c.reshape(-1), affine.bias.shape) / affine.gain
    st.replace_last(bias=bias)


def Sub(st: Importer, node):
    if node.input[0] != st.stream:
        raise InvalidModelError(f"Sub '{node.name}': only stream - constant is supported")
    affine = st.open_affine(node)
    c = np.broadcast_to(st.other(node).reshape(-1), affine.bias.shape)
    st.replace_last(bias=affine.bias - c / affine.gain)


def Mul(st: Importer, node):
    c = st.other(node)
    if st.pending == "sign+1" and np.all(c == 0.5):
        st.notes.append(f"'{node.name}': (Sign(x)+1)/2 read as step [x > 0] (0 at x = 0, not 0.5)")
        return st.finish_step(node)
    affine = st.open_affine(node)
    if c.size != 1 or not float(c.reshape(-1)[0]) > 0:
        raise InvalidModelError(
            f"Mul '{node.name}': only a positive scalar gain after a dense layer is supported"
        )
    st.replace_last(gain=affine.gain * float(c.reshape(-1)[0]))


def Div(st: Importer, node):
    if node.input[0] != st.stream:
        raise InvalidModelError(f"Div '{node.name}': only stream / constant is supported")
    c = st.other(node)
    affine = st.open_affine(node)
    if c.size != 1 or not float(c.reshape(-1)[0]) > 0:
        raise InvalidModelError(f"Div '{node.name}': only a positive scalar divisor is supported")
    st.replace_last(gain=affine.gain / float(c.reshape(-1)[0]))


def Relu(st: Importer, node):
    st.check_open(node)
    if st.pending == "sign":
        return st.finish_step(node)  # Relu(Sign(x)) == [x > 0]
    st.nodes.append(ir.Activation("relu"))


def Sigmoid(st: Importer, node):
    st.check_open(node)
    st.nodes.append(ir.Activation("sigmoid"))


def Softmax(st: Importer, node, axis=-1):
    st.check_open(node)
    st.output = ir.Output("softmax")


def LogSoftmax(st: Importer, node, axis=-1):
    st.check_open(node)
    st.output = ir.Output("softmax")


def Sign(st: Importer, node):
    st.check_open(node)
    st.pending = "sign"


def Greater(st: Importer, node):
    st.check_open(node)
    if node.input[0] != st.stream:
        raise InvalidModelError(f"Greater '{node.name}': only stream > constant is supported")
    c = st.other(node)
    if c.size != 1:
        raise InvalidModelError(f"Greater '{node.name}': the threshold must be a scalar")
    if float(c) != 0.0:
        affine = st.open_affine(node)
        st.replace_last(bias=affine.bias - float(c) / affine.gain)
    st.pending = "greater"


def Cast(st: Importer, node, to=onnx.TensorProto.FLOAT, saturate=1):
    if to not in FLOAT_TYPES:
        raise InvalidModelError(f"Cast '{node.name}': casting the sample to a non-float type")
    if st.pending == "greater":
        st.finish_step(node)


def Where(st: Importer, node):
    if st.pending != "greater" or node.input[0] != st.stream:
        raise InvalidModelError(f"Where '{node.name}': only Where(x > 0, 1, 0) (a step) is supported")
    hi, lo = st.const(node, node.input[1]), st.const(node, node.input[2])
    if not (np.all(hi == 1) and np.all(lo == 0)):
        raise InvalidModelError(f"Where '{node.name}': only Where(x > 0, 1, 0) is supported")
    st.finish_step(node)


def Flatten(st: Importer, node, axis=1):
    if axis != 1:
        raise InvalidModelError(f"Flatten '{node.name}': only axis=1 is supported, got {axis}")
    st.nodes.append(ir.Flatten())


def Reshape(st: Importer, node, allowzero=0):
    shape = st.const(node, node.input[1]).reshape(-1)
    if len(shape) != 2 or (shape[0] not in (-1, 0) and shape[1] != -1 and shape[0] <= 0):
        raise InvalidModelError(
            f"Reshape '{node.name}' to {shape.tolist()}: only flattening to (N, features) is supported"
        )
    st.nodes.append(ir.Flatten())


OpFunction = Callable[..., None]
OPS: dict[str, OpFunction] = {
    f.__name__: f
    for f in (Gemm, MatMul, Add, Sub, Mul, Div, Relu, Sigmoid, Softmax, LogSoftmax, Sign,
              Greater, Cast, Where, Flatten, Reshape)
}
SUPPORTED = sorted([*OPS, *PASS_THROUGH, *POST_PROCESSING, "DequantizeLinear", "Quant", "BipolarQuant"])


# ---------------------------------------------------------------- driver


def read_model(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFormatError(f"{path}: not a valid ONNX model ({first[:160]})") from None
    return model


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def sample_shape(model: onnx.ModelProto, inputs: list[onnx.ValueInfoProto]) -> tuple[int, ...]:
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value for d in dims[1:])
    return shape if shape and all(d > 0 for d in shape) else ()


def fold_constant(st: Importer, node: onnx.NodeProto) -> None:
    """Evaluate a node whose inputs are all constants (weight transposes, casts, Q/DQ)."""
    args = [st.consts[n] if n else None for n in node.input]
    if node.op_type in QUANT_OPS:
        w, grid = QUANT_OPS[node.op_type](*args, **attrs(node))
        st.consts[node.output[0]] = w
        st.grids[node.output[0]] = grid
        return
    from onnx.reference import ReferenceEvaluator

    try:
        outs = ReferenceEvaluator(node).run(None, dict(zip(node.input, args)))
    except Exception as exc:
        raise InvalidModelError(
            f"cannot fold constant node '{node.name}' ({node.op_type}): {exc}"
        ) from None
    for name, value in zip(node.output, outs):
        st.consts[name] = np.asarray(value)
    if node.op_type in PASS_THROUGH | {"Cast"} and node.input[0] in st.grids:
        st.grids[node.output[0]] = st.grids[node.input[0]]


def sigmoid_output_pattern(st: Importer, node: onnx.NodeProto) -> bool:
    """scikit-learn's binary head: Sigmoid -> Sub(1, p) -> Concat([1 - p, p]). The Sigmoid is
    the output activation; the rest builds class probabilities (post-processing)."""
    if node.op_type not in ("Sub", "Concat") or not st.nodes or st.nodes[-1] != ir.Activation("sigmoid"):
        return False
    if node.op_type == "Sub" and node.input[0] == st.stream:
        return False
    st.nodes.pop()
    st.output = ir.Output("sigmoid")
    return True


def import_node(st: Importer, node: onnx.NodeProto) -> None:
    uses_stream = st.stream in node.input
    if uses_stream and st.output is None:
        sigmoid_output_pattern(st, node)
    if any(n in st.dropped for n in node.input) or (
        uses_stream and (node.op_type in POST_PROCESSING or node.domain == "ai.onnx.ml")
    ) or (uses_stream and st.output is not None and node.op_type not in PASS_THROUGH):
        st.dropped.update(node.output)
        if uses_stream:
            st.notes.append(f"dropped classifier post-processing '{node.name}' ({node.op_type})")
        return
    if not uses_stream:
        if all(n in st.consts or not n for n in node.input):
            return fold_constant(st, node)
        raise InvalidModelError(
            f"node '{node.name}' ({node.op_type}) branches off the network",
            hint="hwq imports feed-forward chains: one input, one path",
        )
    if node.op_type in PASS_THROUGH:
        st.stream = node.output[0]
        return
    if node.op_type not in OPS or node.domain not in ("", "ai.onnx"):
        raise UnsupportedOpError(node.op_type, node.name or "?", st.opset, SUPPORTED)
    OPS[node.op_type](st, node, **attrs(node))
    st.stream = node.output[0]


def graph_from_model(model: onnx.ModelProto) -> ir.Graph:
    g = model.graph
    st = Importer(opset=opset_of(model))
    for init in g.initializer:
        st.consts[init.name] = numpy_helper.to_array(init)
    inputs = [i for i in g.input if i.name not in st.consts]
    if len(inputs) != 1:
        raise InvalidModelError(f"the model must have exactly one data input, found {len(inputs)}")
    st.stream = inputs[0].name
    for node in g.node:
        import_node(st, node)
    if st.pending is not None:
        raise InvalidModelError(f"incomplete step pattern ({st.pending}) at the end of the graph")
    output = st.output
    if output is None and st.nodes and st.nodes[-1] == ir.Activation("sigmoid"):
        st.nodes.pop()
        output = ir.Output("sigmoid")
    nodes = tuple(st.nodes)
    affines = [n for n in nodes if isinstance(n, ir.Affine)]
    shape = sample_shape(model, inputs) or ((affines[0].n_in,) if affines else ())
    graph = ir.Graph(shape, nodes, output or ir.Output("identity"), tuple(st.notes))
    graph.layers()  # validates the chain
    if graph.output.kind == "sigmoid" and graph.n_outputs != 1:
        raise InvalidModelError("a Sigmoid output needs exactly one output unit")
    return graph


def load_onnx(path: str | Path) -> ir.Graph:
    """Read an ONNX file into the float IR, with a clear error for anything unsupported."""
    return graph_from_model(read_model(path))


def model_metadata(path: str | Path) -> dict[str, str]:
    return {p.key: p.value for p in read_model(path).metadata_props}
