"""ONNX -> IR. One function per ONNX op, named after it, registered in ``OPS``.

The importer walks the nodes the declared outputs need (``outputs.needed_nodes``) in
(topological) file order, tracking one *stream*: the tensor that carries the sample through the
network. Nodes whose inputs are all constants are folded within budgets (``folding``). Each op
function receives the importer state and the node and appends IR nodes; its keyword arguments
are the ONNX attributes it reads (any other attribute is refused). Constant Sub/Div/Mul/Add
before the first dense layer (input normalization) fold into it. Classifier post-processing
is dropped with a note only where it keeps the decision (``outputs.PostProcessing``).
Convolutions, poolings, BatchNormalization, Pad and layout ops live in ``conv_ops`` (the stream's
``(C, H, W)`` is tracked in ``sample_dims``).
"""

from __future__ import annotations

import builtins
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from hwq import ir
from hwq.errors import InvalidModelError, ModelFormatError, UnsupportedOpError
from hwq.ir import activations
from hwq.ir.codes import code_range
from hwq.onnx import conv_ops, outputs
from hwq.onnx.folding import Folder, tensor_array
from hwq.onnx.grids import QUANT_OPS

QONNX_DOMAINS = {"qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas"}
REFUSED_CONV = {"ConvTranspose": "transposed convolution is not supported",
                "ConvInteger": "integer convolution ops are not supported (hwq reads QCDQ: a float Conv "
                               "between DequantizeLinear weights and activation quantizers)",
                "QLinearConv": "integer convolution ops are not supported (hwq reads QCDQ: a float Conv "
                               "between DequantizeLinear weights and activation quantizers)",
                "LpPool": "Lp pooling is not supported", "GlobalLpPool": "Lp pooling is not supported",
                "MaxUnpool": "unpooling is not supported", "MaxRoiPool": "RoI pooling is not supported",
                "DeformConv": "deformable convolution is not supported"}
RECURRENT_OPS = {"LSTM", "GRU", "RNN", "Scan", "Loop"}
INT_RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
              onnx.TensorProto.INT16: (-(2**15), 2**15 - 1), onnx.TensorProto.UINT16: (0, 2**16 - 1),
              onnx.TensorProto.INT4: (-8, 7), onnx.TensorProto.UINT4: (0, 15)}
SUPPORTED_SUMMARY = ("MLPs and CNNs: Gemm/MatMul/Conv chains with MaxPool/AveragePool/global pooling, "
                     "BatchNormalization, Add/Sub/Mul/Div constants, Relu, Sigmoid, Clip, step and sign patterns, "
                     "Softmax; QDQ/QCDQ and QONNX quantizers; full list: hwq info --ops")
POST_PROCESSING = {"ArgMax", "ArgMin", "TopK", "ZipMap", "ArrayFeatureExtractor", "LabelEncoder"}
PASS_THROUGH = {"Identity", "Dropout"}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
CARRY_OK = {"Flatten", "Reshape", "Gemm", "MatMul", "Conv"}  # may follow a truncating average pooling
OLDEST_OPSET = 7  # older files carry attributes (broadcast, consumed_inputs, Reshape's shape) hwq does not read
MIN_INPUTS = {"Gemm": 2, "MatMul": 2, "Add": 2, "Sub": 2, "Mul": 2, "Div": 2, "Greater": 2, "Where": 3,
              "Reshape": 2, "QuantizeLinear": 2, "DequantizeLinear": 2, "Quant": 4, "IntQuant": 4,
              "BipolarQuant": 2, "Conv": 2, "BatchNormalization": 5, "Pad": 2, "Trunc": 5}


@dataclass
class Importer:
    opset: int
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    grids: dict[str, ir.Grid] = field(default_factory=dict)
    stream: str = ""
    nodes: list = field(default_factory=list)
    pending: str | None = None  # partial step pattern: "greater", "sign", "sign+1"
    output: ir.Output | None = None
    notes: list[str] = field(default_factory=list)
    qpending: dict | None = None  # a QCDQ activation quantizer read so far (QuantizeLinear [Clip])
    input_quant: ir.Quantizer | None = None
    clips: dict[str, tuple[int, int]] = field(default_factory=dict)  # constant Clip ranges
    sign_node: str = ""
    rank: int | None = None  # the stream's rank (None: unknown)
    sample_dims: tuple[int, ...] | None = None  # the stream's shape without the batch axis
    prelude: tuple[np.ndarray, np.ndarray] | None = None  # input normalization x -> a x + c, not yet folded
    post: outputs.PostProcessing | None = None  # the tensors after the network's scores
    scores: str = ""  # the tensor where the network ends
    logits: str = ""  # the scores before a Softmax/LogSoftmax output (declarable too)
    folder: Folder = field(default_factory=Folder)
    pad_pending: tuple[int, int, int, int] | None = None  # a zero Pad waiting for its Conv
    perm: np.ndarray | None = None  # NHWC-ordered maps waiting for a dense layer (conv_ops.Transpose)
    carry: float = 1.0  # a positive input factor waiting for the next linear layer (truncating pools)
    input_shape: tuple[int, ...] | None = None  # the input's dims as the first node reads them
    shapes: dict = field(default_factory=dict)  # sample dims of each tensor the stream passed (for Shape)
    nhwc: bool = False  # the input is channel-last: the next Conv reads (H, W, C) rows (conv_ops.nhwc_conv)

    def const(self, node: onnx.NodeProto, name: str) -> np.ndarray:
        if name not in self.consts:
            raise InvalidModelError(
                f"node '{node.name or node.op_type}' ({node.op_type}): input '{name}' must be a "
                "constant (an initializer)",
                hint="hwq imports feed-forward chains whose parameters are constants",
            )
        value = self.consts[name]
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_) or value.size == 0:
            raise InvalidModelError(f"node '{node.name or node.op_type}' ({node.op_type}): constant '{name}' "
                                    f"is {'empty' if value.size == 0 else value.dtype.name}, not a number")
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise InvalidModelError(f"node '{node.name or node.op_type}' ({node.op_type}): constant '{name}' "
                                    "contains NaN or Inf values")
        return value

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
            f"node '{node.name}' ({node.op_type}) must directly follow a Gemm/MatMul or Conv",
            hint="constant Add/Mul are folded into the preceding dense or convolution layer",
        )

    def replace_last(self, **changes) -> None:
        last = self.nodes[-1]
        fields = dict(weight=last.weight, bias=last.bias, gain=last.gain, grid=last.grid)
        fields.update(changes)
        self.nodes[-1] = ir.Affine(**fields)

    def finish_step(self, node: onnx.NodeProto) -> None:
        self.pending = None
        self.nodes.append(ir.Activation("step"))

    def close_sign(self, node: onnx.NodeProto) -> None:
        """A Sign that feeds the next dense layer directly is a sign (+-1) activation."""
        if self.pending == "sign":
            self.pending = None
            self.nodes.append(ir.Activation("sign"))
            self.notes.append(f"'{self.sign_node}': Sign read as the sign activation (+1 at x = 0, "
                              "where ONNX Sign gives 0)")
        elif self.pending is not None:
            raise InvalidModelError(
                f"node '{node.name}' ({node.op_type}) follows an incomplete step pattern ({self.pending})",
                hint="steps are Greater+Cast, Where(x > 0, 1, 0), Relu(Sign(x)) or (Sign(x)+1)/2",
            )

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
    st.close_sign(node)
    if node.input[0] != st.stream or transA:
        raise InvalidModelError(f"Gemm '{node.name}': the sample must be input A with transA=0")
    b = st.const(node, node.input[1])
    if not (np.isfinite(alpha) and np.isfinite(beta)):
        raise InvalidModelError(f"Gemm '{node.name}': alpha {alpha} and beta {beta} must be finite")
    if b.ndim != 2:
        raise InvalidModelError(f"Gemm '{node.name}': weight must be 2-D, got {b.shape}")
    w = b if transB else b.T
    bias = np.zeros(w.shape[0])
    if len(node.input) > 2 and node.input[2]:
        bias = row_vector(node, st.const(node, node.input[2]), w.shape[0], "bias") * float(beta)
    grid = st.grids.get(node.input[1]) if alpha == 1.0 else None
    add_affine(st, node, float(alpha) * w, bias, grid)
    st.rank = 2


def MatMul(st: Importer, node):
    st.check_open(node)
    st.close_sign(node)
    if node.input[0] != st.stream:
        raise InvalidModelError(f"MatMul '{node.name}': the sample must be the left operand")
    w = st.const(node, node.input[1])
    if w.ndim != 2:
        raise InvalidModelError(f"MatMul '{node.name}': weight must be 2-D, got {w.shape}")
    add_affine(st, node, w.T, np.zeros(w.shape[1]), st.grids.get(node.input[1]))


def row_vector(node, c: np.ndarray, n: int, what: str) -> np.ndarray:
    """A constant that broadcasts along the class/unit axis of (N, n): shape (), (1,), (n,),
    (1, n), ... (leading 1s); refused in one line otherwise."""
    shape = c.shape
    while shape and shape[0] == 1 and len(shape) > 1:
        shape = shape[1:]
    if shape not in ((), (1,), (n,)):
        raise InvalidModelError(f"{node.op_type} '{node.name}': {what} of shape {c.shape} does not fit "
                                f"{n} units")
    return np.broadcast_to(c.astype(np.float64).reshape(-1), (n,))


def add_affine(st: Importer, node, w: np.ndarray, bias: np.ndarray, grid: ir.Grid | None) -> None:
    """Append a dense layer, folding a pending input normalization ``x -> a x + c`` into it:
    ``W (a x + c) + b = (W a) x + (W c + b)``."""
    if st.prelude is not None:
        w, bias, grid = fold_prelude(st, node, np.asarray(w, np.float64), np.asarray(bias, np.float64), grid)
    w = conv_ops.permute_columns(st, node, np.asarray(w, np.float64))
    w, grid = conv_ops.take_carry(st, w, grid)
    st.nodes.append(ir.Affine(w, bias, grid=grid))
    st.sample_dims = (w.shape[0],)


def fold_prelude(st: Importer, node, w, bias, grid):
    a, c = st.prelude
    st.prelude = None
    if a.size not in (1, w.shape[1]):
        raise InvalidModelError(f"{node.op_type} '{node.name}': the input normalization has {a.size} "
                                f"features, the layer {w.shape[1]} inputs")
    a, c = np.broadcast_to(a, (w.shape[1],)), np.broadcast_to(c, (w.shape[1],))
    if grid is not None:  # QAT grid: codes stay; only a common positive scale keeps them on a grid
        if not (np.all(a == a[0]) and a[0] > 0 and np.all(c == 0)):
            raise InvalidModelError(
                f"{node.op_type} '{node.name}': an input normalization with offsets or per-feature scales "
                "cannot be folded exactly into QAT grid weights",
                hint="normalize the data before hwq, or train without the normalization in the model")
        grid = ir.Grid(grid.scheme, grid.bits, tuple(s * float(a[0]) for s in grid.weight_scale),
                       grid.source + " (input scale folded in)")
    with np.errstate(all="ignore"):
        return w * a[None, :], bias + w @ c, grid


def prelude(st: Importer, node, c: np.ndarray, op: str) -> None:
    """Constant Add/Sub/Mul/Div before the first dense layer: input normalization, kept as
    ``x -> a x + c`` per flattened feature until the dense layer folds it in."""
    if st.pending is not None or st.nodes and isinstance(st.nodes[-1], ir.Activation):
        raise InvalidModelError(f"node '{node.name}' ({node.op_type}) must directly follow a Gemm/MatMul")
    sample = st.sample_dims
    c = np.asarray(c, np.float64)
    if sample is None or (st.rank is not None and c.ndim > st.rank):
        if c.size != 1:
            raise InvalidModelError(f"{node.op_type} '{node.name}': a per-feature input normalization needs "
                                    "the input's shape", hint="declare the input's dimensions")
        flat = c.reshape(1)
    else:
        full = (1, *sample)
        try:
            fits = np.broadcast_shapes(c.shape, full) == full
        except ValueError:
            fits = False
        if not fits:
            raise InvalidModelError(f"{node.op_type} '{node.name}': constant of shape {c.shape} does not fit "
                                    f"samples of shape {sample}")
        flat = np.broadcast_to(c, full).reshape(-1)
    a, b = st.prelude or (np.ones(1), np.zeros(1))
    with np.errstate(all="ignore"):
        if op == "Add":
            a, b = a + 0 * flat, b + flat
        elif op == "Sub":
            a, b = a + 0 * flat, b - flat
        elif op == "Sub-from":
            a, b = -a + 0 * flat, flat - b
        elif op == "Mul":
            a, b = a * flat, b * flat
        else:
            a, b = a / flat, b / flat
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InvalidModelError(f"{node.op_type} '{node.name}': the input normalization is not finite "
                                "(a division by zero?)")
    st.prelude = (a, b)


def before_first_layer(st: Importer) -> bool:
    return not any(isinstance(n, conv_ops.LINEAR) for n in st.nodes)


def Add(st: Importer, node):
    c = st.other(node)
    if before_first_layer(st):
        return prelude(st, node, c, "Add")
    if st.pending == "sign" and np.all(c == 1):
        st.pending = "sign+1"
        return
    if conv_ops.after_conv(st):
        return conv_ops.conv_constant(st, node, c, "Add")
    affine = st.open_affine(node)
    st.replace_last(bias=affine.bias + row_vector(node, c, affine.n_out, "constant") / affine.gain)


def Sub(st: Importer, node):
    if before_first_layer(st):
        return prelude(st, node, st.other(node), "Sub" if node.input[0] == st.stream else "Sub-from")
    if node.input[0] != st.stream:
        raise InvalidModelError(f"Sub '{node.name}': only stream - constant is supported")
    if conv_ops.after_conv(st):
        return conv_ops.conv_constant(st, node, st.other(node), "Sub")
    affine = st.open_affine(node)
    c = row_vector(node, st.other(node), affine.n_out, "constant")
    st.replace_last(bias=affine.bias - c / affine.gain)


def Mul(st: Importer, node):
    if before_first_layer(st):
        return prelude(st, node, st.other(node), "Mul")
    if conv_ops.after_conv(st):
        return conv_ops.conv_constant(st, node, st.other(node), "Mul")
    _scale(st, node, st.other(node), halving=0.5, invert=False,
           refusal="only a positive scalar gain after a dense layer is supported")


def Div(st: Importer, node):
    if node.input[0] != st.stream:
        raise InvalidModelError(f"Div '{node.name}': only stream / constant is supported")
    if before_first_layer(st):
        return prelude(st, node, st.other(node), "Div")
    if conv_ops.after_conv(st):
        return conv_ops.conv_constant(st, node, st.other(node), "Div")
    _scale(st, node, st.other(node), halving=2, invert=True, refusal="only a positive scalar divisor is supported")


def _scale(st: Importer, node, c: np.ndarray, *, halving: float, invert: bool, refusal: str) -> None:
    """Mul / Div by a constant: after ``Sign(x) + 1`` a halving ends the step pattern
    ``(Sign(x) + 1) / 2``; else a positive scalar that scales the open layer's gain."""
    if st.pending == "sign+1" and np.all(c == halving):
        st.notes.append(f"'{node.name}': (Sign(x)+1)/2 read as step [x > 0] (0 at x = 0, not 0.5)")
        return st.finish_step(node)
    affine = st.open_affine(node)
    if c.size != 1 or not float(c.reshape(-1)[0]) > 0:
        raise InvalidModelError(f"{node.op_type} '{node.name}': {refusal}")
    factor = float(c.reshape(-1)[0])
    st.replace_last(gain=affine.gain / factor if invert else affine.gain * factor)


def Relu(st: Importer, node):
    st.check_open(node)
    if st.pending == "sign":
        return st.finish_step(node)  # Relu(Sign(x)) == [x > 0]
    st.nodes.append(ir.Activation("relu"))


def Sigmoid(st: Importer, node):
    st.check_open(node)
    st.nodes.append(ir.Activation("sigmoid"))


def Softmax(st: Importer, node, axis=None):
    """Softmax/LogSoftmax over the class axis (opset < 13: over the axes from ``axis`` on,
    default 1; opset 13+: one axis, default -1) keeps the argmax; any other axis does not."""
    st.check_open(node)
    st.close_sign(node)
    coerced = st.opset < 13
    axis = (1 if coerced else -1) if axis is None else axis
    if not outputs.class_axis(axis, st.rank, coerced):
        raise InvalidModelError(f"{node.op_type} '{node.name}' over axis {axis} (the scores have rank "
                                f"{st.rank or 'unknown'}): only the class axis keeps the decision",
                                hint="hwq decides by argmax over the class axis")
    st.output = ir.Output("softmax")
    st.logits = st.stream


def LogSoftmax(st: Importer, node, axis=None):
    Softmax(st, node, axis)


def Sign(st: Importer, node):
    st.check_open(node)
    st.pending = "sign"
    st.sign_node = node.name


def Greater(st: Importer, node):
    st.check_open(node)
    if node.input[0] != st.stream:
        raise InvalidModelError(f"Greater '{node.name}': only stream > constant is supported")
    c = st.other(node)
    if c.size != 1:
        raise InvalidModelError(f"Greater '{node.name}': the threshold must be a scalar")
    threshold = float(c.reshape(-1)[0])
    if threshold != 0.0:
        affine = st.open_affine(node)
        st.replace_last(bias=affine.bias - threshold / affine.gain)
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
    flatten(st)


def flatten(st: Importer) -> None:
    st.nodes.append(ir.Flatten())
    st.rank = 2
    if st.sample_dims is not None:
        st.sample_dims = (int(np.prod(st.sample_dims)),)


def Reshape(st: Importer, node, allowzero=0):
    shape = st.const(node, node.input[1]).reshape(-1)
    if len(shape) > 2:
        return conv_ops.reshape_maps(st, node, shape, allowzero)
    if (len(shape) == 2 and shape[1] > 0 and st.sample_dims is not None
            and int(shape[1]) != int(np.prod(st.sample_dims))):
        raise InvalidModelError(f"Reshape '{node.name}' to {shape.tolist()} does not fit samples of shape "
                                f"{tuple(st.sample_dims)}")
    if len(shape) != 2 or (shape[0] not in (-1, 0) and shape[1] != -1 and shape[0] <= 0):
        raise InvalidModelError(
            f"Reshape '{node.name}' to {shape.tolist()}: only flattening to (N, features) is supported"
        )
    flatten(st)


# ---------------------------------------------------------------- quantizers on the stream (QAT)


def scalar_scale(node, scale) -> float:
    s = np.asarray(scale, dtype=np.float64).reshape(-1)
    if s.size != 1 or not (np.isfinite(s[0]) and s[0] > 0):
        raise InvalidModelError(
            f"{node.op_type} '{node.name}': an activation quantizer needs one positive scale",
            hint="per-channel activation scales are not supported",
        )
    return float(s[0])


def zero_point_zero(node, zp) -> None:
    if zp is not None and np.any(np.asarray(zp) != 0):
        raise InvalidModelError(
            f"{node.op_type} '{node.name}': activation zero point {np.asarray(zp).reshape(-1)[0]} "
            "is not supported", hint="hwq reads symmetric quantizers (zero point 0)")


def QuantizeLinear(st: Importer, node, axis=1, saturate=1, block_size=0, output_dtype=0, precision=0):
    scale = scalar_scale(node, st.const(node, node.input[1]))
    zp = st.const(node, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    zero_point_zero(node, zp)
    dtype = onnx.helper.np_dtype_to_tensor_dtype(zp.dtype) if zp is not None else onnx.TensorProto.UINT8
    if output_dtype:
        dtype = output_dtype
    if dtype not in INT_RANGES:
        raise InvalidModelError(f"QuantizeLinear '{node.name}': output type {dtype} is not an integer grid")
    lo, hi = INT_RANGES[dtype]
    st.qpending = dict(scale=scale, lo=lo, hi=hi, signed=lo < 0, name=node.name)


def Clip(st: Importer, node, min=None, max=None):  # noqa: A002 (opset < 11 attributes)
    """Inside QuantizeLinear -> Clip -> DequantizeLinear: the quantizer's code range. On the
    sample: a clipped activation ``clip(z, min, max)`` (ReLU6: 0, 6; Hardtanh: -1, 1), its
    bounds given as inputs (opset 11+) or attributes (older); ``Clip(z, 0)`` without a max is a
    ReLU."""
    bounds = [st.const(node, n) if n else None for n in list(node.input[1:3]) + [""] * 2][:2]
    bounds = [np.float64(v) if v is not None else b for v, b in zip((min, max), bounds)]
    if st.qpending is None:
        return clipped_activation(st, node, bounds)
    if bounds[0] is not None:
        st.qpending["lo"] = builtins.max(st.qpending["lo"], int(np.asarray(bounds[0]).reshape(-1)[0]))
    if bounds[1] is not None:
        st.qpending["hi"] = builtins.min(st.qpending["hi"], int(np.asarray(bounds[1]).reshape(-1)[0]))


def clipped_activation(st: Importer, node, bounds) -> None:
    """A Clip on the sample after a layer: the ``clip(lo,hi)`` activation kind (``relu`` where
    ``lo == 0`` and there is no upper bound); refused in one line where the bounds are not two
    scalars with ``lo <= 0 < hi`` (real zero must be code 0)."""
    st.check_open(node)
    if st.pending is not None or not st.nodes or not isinstance(st.nodes[-1], conv_ops.LINEAR):
        raise InvalidModelError(f"Clip '{node.name}' must directly follow a Gemm/MatMul or Conv (a ReLU6/"
                                "Hardtanh activation)", hint="hwq reads Clip as a hidden activation "
                                "clip(z, min, max), or inside QuantizeLinear -> Clip -> DequantizeLinear")
    values = []
    for b, default in zip(bounds, (-np.inf, np.inf)):
        arr = np.asarray(default if b is None else b, dtype=np.float64).reshape(-1)
        if arr.size != 1:
            raise InvalidModelError(f"Clip '{node.name}': per-element clip bounds are not supported",
                                    hint="one scalar min and max (ReLU6, Hardtanh)")
        values.append(float(arr[0]))
    lo, hi = values
    if lo == 0 and hi == np.inf:
        st.nodes.append(ir.Activation(activations.RELU.name))
        return
    problem = activations.clip_problem(lo, hi)
    if problem:
        raise InvalidModelError(f"Clip '{node.name}': {problem}",
                                hint="supported clipped activations: ReLU6 Clip(x, 0, 6), Hardtanh Clip(x, -1, 1), "
                                     "any Clip(x, min <= 0, max > 0)")
    st.nodes.append(ir.Activation(activations.clip_name(lo, hi)))


def DequantizeLinear(st: Importer, node, axis=1, block_size=0, output_dtype=0):
    q, st.qpending = st.qpending, None
    if q is None:
        raise InvalidModelError(f"DequantizeLinear '{node.name}' on the sample without a QuantizeLinear")
    scale = scalar_scale(node, st.const(node, node.input[1]))
    zp = st.const(node, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    zero_point_zero(node, zp)
    if scale != q["scale"]:
        raise InvalidModelError(f"DequantizeLinear '{node.name}': scale {scale:g} differs from its "
                                f"QuantizeLinear's {q['scale']:g}")
    lo, hi = q["lo"], q["hi"]
    bits = int(np.ceil(np.log2(hi + 1))) + (1 if q["signed"] else 0)
    quant = ir.Quantizer(bits, q["signed"], scale, narrow=q["signed"] and lo == code_range(bits, True, narrow=True)[0],
                         rounding="ROUND", source=f"QCDQ '{q['name']}'")
    if quant.lo != lo or quant.hi != hi:
        raise InvalidModelError(f"QuantizeLinear '{q['name']}': range [{lo}, {hi}] is not a "
                                "signed or unsigned bit-width range")
    attach_quant(st, node, quant)


def Quant(st: Importer, node, signed=1, narrow=0, rounding_mode="ROUND"):
    scale = scalar_scale(node, st.const(node, node.input[1]))
    zero_point_zero(node, st.const(node, node.input[2]))
    width = float(np.asarray(st.const(node, node.input[3])).reshape(-1)[0])
    mode = (rounding_mode.decode() if isinstance(rounding_mode, bytes) else rounding_mode).upper()
    if width != int(width) or not 1 <= width <= 16 or (width == 1 and signed):
        raise InvalidModelError(f"Quant '{node.name}': bit width {width:g} is not supported",
                                hint="activation quantizers: 2..16 bits signed, 1..16 unsigned")
    if mode not in ("ROUND", "HALF_EVEN"):
        st.notes.append(f"'{node.name}': rounding mode {mode} read as hwq's round half up")
    attach_quant(st, node, ir.Quantizer(int(width), bool(signed), scale, bool(narrow), mode,
                                        source=f"QONNX '{node.name}'"))


IntQuant = Quant


def Scaler(st: Importer, node, offset=(), scale=()):
    """scikit-learn's StandardScaler (``ai.onnx.ml`` Scaler): ``(x - offset) * scale`` before the
    first layer, folded into it like any input normalization."""
    if not before_first_layer(st):
        raise InvalidModelError(f"Scaler '{node.name}' is only read before the first dense layer")
    for value, op in ((offset, "Sub"), (scale, "Mul")):
        values = np.asarray(value, np.float64)
        if values.size:
            prelude(st, node, values.reshape(1, -1) if values.size > 1 else values.reshape(()), op)


def BipolarQuant(st: Importer, node):
    scale = scalar_scale(node, st.const(node, node.input[1]))
    attach_quant(st, node, ir.Quantizer(1, True, scale, rounding="BIPOLAR",
                                        source=f"QONNX '{node.name}'"))


def attach_quant(st: Importer, node, quant: ir.Quantizer) -> None:
    """Place a stream quantizer: the input format before the first dense layer, else the
    output format of the activation it follows (a quantizer right after a dense layer is
    the activation: unsigned = ReLU, bipolar = sign)."""
    st.check_open(node)
    if st.pending is not None:
        raise InvalidModelError(f"{node.op_type} '{node.name}' inside a step pattern is not supported")
    last = st.nodes[-1] if st.nodes else None
    if isinstance(last, ir.AvgPool2d):
        return conv_ops.quant_after_avgpool(st, node, quant)
    if not any(isinstance(n, conv_ops.LINEAR) for n in st.nodes):
        if st.prelude is not None:
            raise InvalidModelError(
                f"{node.op_type} '{node.name}': an input normalization before the file's input quantizer "
                "cannot be folded exactly (hwq's input format has no offset or per-feature scale)",
                hint="normalize the data before hwq")
        if st.input_quant is not None or quant.bits == 1:
            raise InvalidModelError(f"{node.op_type} '{node.name}': only one multi-bit input quantizer "
                                    "is supported")
        if quant.narrow:
            raise InvalidModelError(f"{node.op_type} '{node.name}': narrow-range input quantizers "
                                    "are not supported", hint="export the input with narrow_range=False")
        st.input_quant = quant
    elif isinstance(last, ir.Activation) and last.quant is None and last.kind in ("relu", "sigmoid"):
        if quant.bits == 1 or (not quant.signed and quant.narrow):
            raise InvalidModelError(f"{node.op_type} '{node.name}': a {quant.name} quantizer after "
                                    f"{last.kind} is not supported")
        st.nodes[-1] = ir.Activation(last.kind, quant)
    elif isinstance(last, conv_ops.LINEAR) and quant.bits == 1:
        st.nodes.append(ir.Activation("sign", quant))
    elif isinstance(last, conv_ops.LINEAR) and not quant.signed and not quant.narrow:
        st.notes.append(f"'{node.name}': an unsigned quantizer right after a dense layer read as "
                        "a quantized ReLU")
        st.nodes.append(ir.Activation("relu", quant))
    else:
        where = (f"after {last.kind}" if isinstance(last, ir.Activation) else "after a dense layer"
                 if isinstance(last, ir.Affine) else f"after a {type(last).__name__}")
        raise InvalidModelError(
            f"{node.op_type} '{node.name}': a {quant.name} quantizer {where} is not supported",
            hint="hidden activations: relu or sigmoid (optionally quantized), step, sign (bipolar)")


OpFunction = Callable[..., None]
OPS: dict[str, OpFunction] = {
    f.__name__: f
    for f in (Gemm, MatMul, Add, Sub, Mul, Div, Relu, Sigmoid, Softmax, LogSoftmax, Sign,
              Greater, Cast, Where, Flatten, Reshape, QuantizeLinear, Clip, DequantizeLinear)
} | conv_ops.OPS
QONNX_OPS: dict[str, OpFunction] = {"Quant": Quant, "IntQuant": IntQuant, "BipolarQuant": BipolarQuant,
                                    "Trunc": conv_ops.Trunc}
ML_OPS: dict[str, OpFunction] = {"Scaler": Scaler}
SUPPORTED = sorted({*OPS, *QONNX_OPS, *ML_OPS, *PASS_THROUGH, *POST_PROCESSING, "Shape"})


def op_table() -> list[tuple[str, str]]:
    """Every op hwq reads, with its role: what ``hwq info --ops`` prints."""
    roles = {**{op: "layer, activation or constant folding" for op in OPS},
             **{op: "convolution or pooling (2-D maps)" for op in conv_ops.OPS},
             "BatchNormalization": "folded into the preceding Conv or dense layer",
             "Pad": "zero padding (folded into the next Conv)",
             "Transpose": "NHWC <-> NCHW layout (exact where nothing moves, or before a flatten)",
             **{op: "quantizer (QONNX)" for op in QONNX_OPS},
             "Trunc": "truncating average pooling (QONNX, after AveragePool)",
             "ReduceMean": "global average pooling (over axes 2, 3)",
             "ReduceMax": "global max pooling (over axes 2, 3)",
             "Shape": "the sample's shape (feeding a flatten's Reshape)",
             "Scaler": "input normalization (ai.onnx.ml, folded into the first layer)",
             **{op: "quantizer (QDQ/QCDQ)" for op in ("QuantizeLinear", "DequantizeLinear")},
             "Clip": "clipped activation clip(z, min, max) (ReLU6, Hardtanh), or a QCDQ quantizer's range",
             **{op: "pass-through" for op in PASS_THROUGH},
             **{op: "classifier post-processing (dropped where it keeps the decision)" for op in POST_PROCESSING}}
    return sorted(roles.items())


def unsupported(node: onnx.NodeProto, opset: int) -> UnsupportedOpError:
    """One short line: the op, the node, what hwq reads in a few words."""
    name = node.name or "?"
    if node.op_type in REFUSED_CONV:
        why = REFUSED_CONV[node.op_type]
        return UnsupportedOpError(node.op_type, name, opset, why, what=f"node '{name}' ({node.op_type}): {why}")
    if node.op_type in RECURRENT_OPS:
        return UnsupportedOpError(node.op_type, name, opset, "recurrent networks are not supported",
                                  what=f"node '{name}' ({node.op_type}): recurrent networks are not supported")
    domain = f" from domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
    return UnsupportedOpError(node.op_type + domain, name, opset, SUPPORTED_SUMMARY)


# ---------------------------------------------------------------- driver


def read_model(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
        check_external_data(model, path)  # before onnx reads any file the model names
        onnx.load_external_data_for_model(model, str(path.parent))
        onnx.checker.check_model(model)
    except ModelFormatError:
        raise
    except Exception as exc:  # protobuf DecodeError, ValidationError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFormatError(f"{path}: not a valid ONNX model ({first[:160]})") from None
    return model


def model_tensors(graph: onnx.GraphProto):
    """Every tensor a graph holds: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            yield from ([a.t] if a.HasField("t") else [])
            yield from a.tensors
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from model_tensors(g)


def check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Refuse external-data locations that are absolute or leave the model's folder (``../``,
    symlinks out of it): CVE-2024-27318-style path traversal, checked by hwq itself."""
    base = path.parent.resolve()
    for t in model_tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        where = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (base / where).resolve()
        if (not where or Path(where).is_absolute() or ".." in Path(where).parts
                or not target.is_relative_to(base)):
            raise ModelFormatError(
                f"{path}: tensor '{t.name}' names external data at '{where}', outside the "
                "model's folder; refused", hint="keep external data files beside the model")


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_opset(opset: int) -> None:
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ModelFormatError(f"the model declares ONNX opset {opset}; the newest this onnx knows is {newest}",
                               hint="export with an opset onnxruntime and onnx support")
    if opset < OLDEST_OPSET:
        raise ModelFormatError(f"the model uses ONNX opset {opset}; hwq reads opset {OLDEST_OPSET} and later "
                               "(older ops carry attributes such as broadcast and consumed_inputs)",
                               hint="re-export the model with a newer opset")


def data_input(inputs: list[onnx.ValueInfoProto]) -> tuple[int | None, tuple[int, ...] | None]:
    """The data input's rank and sample dims (None where unknown), refusing what onnxruntime
    would refuse to feed: a non-float32 input, a rank below 2 (no batch axis), a zero-size dim."""
    if len(inputs) != 1:
        raise InvalidModelError(f"the model must have exactly one data input, found {len(inputs)}")
    v = inputs[0]
    kind = v.type.WhichOneof("value")
    if kind != "tensor_type" or v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        got = (onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type) if kind == "tensor_type"
               else kind or "untyped")
        raise InvalidModelError(f"the data input '{v.name}' is {got}; hwq reads float32 samples",
                                hint="export the model with a float32 input")
    if not v.type.tensor_type.HasField("shape"):
        return None, None
    dims = v.type.tensor_type.shape.dim
    if len(dims) < 2:
        raise InvalidModelError(f"the data input '{v.name}' has rank {len(dims)}; hwq reads batches "
                                "(N, features...)", hint="export with a batch axis")
    if any(d.HasField("dim_value") and d.dim_value <= 0 for d in dims):
        raise InvalidModelError(f"the data input '{v.name}' has a zero-size dimension")
    sample = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims[1:])
    return len(dims), (sample if all(d > 0 for d in sample) else None)


def sample_shape(model: onnx.ModelProto, inputs: list[onnx.ValueInfoProto]) -> tuple[int, ...]:
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value for d in dims[1:])
    return shape if shape and all(d > 0 for d in shape) else ()


def read_attrs(node: onnx.NodeProto, fn: Callable, skip: int) -> dict:
    """The node's attributes as keyword arguments of ``fn`` (its parameters after the first
    ``skip``), refusing in one line an attribute ``fn`` does not read or of the wrong type."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    known = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty and p.name != "declared"}
    out = {}
    for a in node.attribute:
        where = f"node '{node.name or '?'}' ({node.op_type})"
        if a.name not in known:
            raise InvalidModelError(f"{where}: attribute '{a.name}' is not read by hwq",
                                    hint="export with a current opset; older attributes are not supported")
        try:
            value = onnx.helper.get_attribute_value(a)
        except Exception:
            raise InvalidModelError(f"{where}: attribute '{a.name}' cannot be read") from None
        default = known[a.name]
        ok = {int: (int,), float: (int, float), str: (str, bytes), tuple: (list, tuple)}.get(
            type(default), (int, float, str, bytes))
        if isinstance(value, bool) or not isinstance(value, ok):
            raise InvalidModelError(f"{where}: attribute '{a.name}' is a {type(value).__name__}, expected "
                                    f"{type(default).__name__ if default is not None else 'a number'}")
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out[a.name] = value
    return out


def check_inputs(node: onnx.NodeProto) -> None:
    need = MIN_INPUTS.get(node.op_type, 1)
    if len(node.input) < need or any(not n for n in node.input[:need]):
        raise InvalidModelError(f"node '{node.name or '?'}' ({node.op_type}) has {len(node.input)} inputs; "
                                f"it needs at least {need}")


def fold_constant(st: Importer, node: onnx.NodeProto) -> None:
    """Evaluate a node whose inputs are all constants (weight transposes, casts, Q/DQ)."""
    args = [st.consts[n] if n else None for n in node.input]
    if node.op_type in QUANT_OPS and (node.domain in QONNX_DOMAINS or node.op_type == "DequantizeLinear"):
        check_inputs(node)
        fn = QUANT_OPS[node.op_type]
        params = list(inspect.signature(fn).parameters.values())
        positional = [p for p in params if p.default is inspect.Parameter.empty]
        if len(args) > len(positional) + (node.op_type == "DequantizeLinear"):
            raise InvalidModelError(f"node '{node.name or '?'}' ({node.op_type}) has {len(args)} inputs, "
                                    f"more than {node.op_type} takes")
        at = read_attrs(node, fn, skip=len(positional) + (node.op_type == "DequantizeLinear"))
        st.folder.check(node, args, at)
        declared = st.clips.get(node.input[0])  # without a Clip: the bits the codes need
        w, grid = fn(*args, **at, declared=declared)
        st.consts[node.output[0]] = w
        st.grids[node.output[0]] = grid
        return
    outs = st.folder.run(node, args, attrs(node))
    for name, value in zip(node.output, outs):
        st.consts[name] = value
    if node.op_type == "Clip" and np.issubdtype(st.consts[node.output[0]].dtype, np.integer):
        a = attrs(node)
        lo = args[1] if len(args) > 1 and args[1] is not None else a.get("min", np.iinfo(args[0].dtype).min)
        hi = args[2] if len(args) > 2 and args[2] is not None else a.get("max", np.iinfo(args[0].dtype).max)
        st.clips[node.output[0]] = (int(np.asarray(lo).reshape(-1)[0]), int(np.asarray(hi).reshape(-1)[0]))
    if node.op_type in PASS_THROUGH | {"Cast"} and node.input[0] in st.grids:
        st.grids[node.output[0]] = st.grids[node.input[0]]


def start_post(st: Importer) -> None:
    """The network ends here: what reads the stream from now on is post-processing. A Sigmoid
    on the last layer becomes the sigmoid output (its probability is the ``binary`` kind)."""
    kind = "scores"
    if st.output is None and st.nodes and st.nodes[-1] == ir.Activation("sigmoid"):
        st.nodes.pop()
        st.output = ir.Output("sigmoid")
        kind = "binary"
    st.scores = st.stream
    st.post = outputs.PostProcessing(st.stream, kind, st.rank, st.opset, st.consts)


def import_node(st: Importer, node: onnx.NodeProto) -> None:
    ml_prelude = node.domain == "ai.onnx.ml" and node.op_type in ML_OPS and before_first_layer(st)
    if st.post is None and st.stream in node.input and not ml_prelude and (
        st.output is not None or node.op_type in POST_PROCESSING or node.domain == "ai.onnx.ml"
        or (node.op_type in ("Sub", "Concat") and st.nodes and st.nodes[-1] == ir.Activation("sigmoid")
            and not (node.op_type == "Sub" and node.input[0] == st.stream))
    ):
        start_post(st)
    if st.post is not None and st.post.reads(node):
        st.post.node(node, attrs(node))
        st.notes.append(f"dropped classifier post-processing '{node.name}' ({node.op_type})")
        return
    if node.op_type == "Shape" and node.domain in ("", "ai.onnx") and node.input[0] in st.shapes:
        return conv_ops.shape_of_stream(st, node, **read_attrs(node, conv_ops.shape_of_stream, skip=2))
    if st.stream not in node.input:
        if all(n in st.consts or not n for n in node.input):
            return fold_constant(st, node)
        raise InvalidModelError(
            f"node '{node.name}' ({node.op_type}) branches off the network",
            hint="hwq imports feed-forward chains: one input, one path",
        )
    if node.op_type in PASS_THROUGH:
        st.stream = node.output[0]
        return
    if st.pad_pending is not None and node.op_type not in ("Conv", "AveragePool"):
        raise InvalidModelError(f"node '{node.name}' ({node.op_type}) follows a Pad; hwq folds zero padding "
                                "into the next Conv or AveragePool only")
    if st.perm is not None and node.op_type not in ("Flatten", "Reshape", "Gemm", "MatMul", "Transpose"):
        raise InvalidModelError(f"node '{node.name}' ({node.op_type}) reads channel-last (NHWC) maps after a "
                                "Transpose; hwq reads them only flattened into a dense layer")
    if st.carry != 1.0 and node.op_type not in CARRY_OK:
        raise InvalidModelError(f"node '{node.name}' ({node.op_type}) follows a truncating average pooling; "
                                "hwq reads it only before Flatten/Reshape and a Conv or dense layer")
    if node.domain in QONNX_DOMAINS and node.op_type in QONNX_OPS:
        op = QONNX_OPS[node.op_type]
    elif ml_prelude:
        op = ML_OPS[node.op_type]
    elif node.domain in ("", "ai.onnx") and node.op_type in OPS:
        op = OPS[node.op_type]
    else:
        raise unsupported(node, st.opset)
    check_inputs(node)
    try:
        op(st, node, **read_attrs(node, op, skip=2))
    except InvalidModelError as exc:  # every refusal names the node (a Window's own checks do not)
        name = node.name or "?"
        if f"'{name}'" in exc.message:
            raise
        raise type(exc)(f"{node.op_type} '{name}': {exc.message}", hint=exc.hint) from None
    st.stream = node.output[0]
    st.shapes[st.stream] = st.sample_dims


def graph_from_model(model: onnx.ModelProto) -> ir.Graph:
    g = model.graph
    st = Importer(opset=opset_of(model))
    check_opset(st.opset)
    nodes = outputs.needed_nodes(g)
    used = {n for node in nodes for n in node.input} | {o.name for o in g.output}
    initialized = {init.name for init in g.initializer}
    for init in g.initializer:
        if init.name in used:
            st.consts[init.name] = tensor_array(init)
    inputs = [i for i in g.input if i.name not in initialized]
    st.rank, st.sample_dims = data_input(inputs)
    st.stream = inputs[0].name
    st.shapes[st.stream] = st.sample_dims
    for node in nodes:
        import_node(st, node)
    if st.pending == "sign":
        raise InvalidModelError("Sign on the output scores is not supported",
                                hint="sign (+-1) is a hidden activation; the output is raw scores, Softmax or Sigmoid")
    if st.pending is not None:
        raise InvalidModelError(f"incomplete step pattern ({st.pending}) at the end of the graph")
    if st.qpending is not None:
        raise InvalidModelError(f"QuantizeLinear '{st.qpending['name']}' has no DequantizeLinear")
    if st.prelude is not None:
        raise InvalidModelError("the input normalization is not followed by a dense or convolution layer")
    if st.pad_pending is not None or st.perm is not None or st.carry != 1.0 or st.nhwc:
        raise InvalidModelError("the graph ends with a Pad, a Transpose or a truncating pooling that no layer reads")
    outputs.check_declared(g, st.scores or st.stream, st.post, st.logits)
    output = st.output
    if output is None and st.nodes and st.nodes[-1] == ir.Activation("sigmoid"):
        st.nodes.pop()
        output = ir.Output("sigmoid")
    nodes = tuple(st.nodes)
    affines = [n for n in nodes if isinstance(n, ir.Affine)]
    shape = st.input_shape or sample_shape(model, inputs) or ((affines[0].n_in,) if affines else ())
    graph = ir.Graph(shape, nodes, output or ir.Output("identity"), tuple(st.notes), st.input_quant)
    graph.layers()  # validates the chain
    if graph.output.kind == "sigmoid" and graph.n_outputs != 1:
        raise InvalidModelError("a Sigmoid output needs exactly one output unit")
    return graph


def load_onnx(path: str | Path) -> ir.Graph:
    """Read an ONNX file into the float IR, with a clear error for anything unsupported."""
    return graph_from_model(read_model(path))


def model_metadata(path: str | Path) -> dict[str, str]:
    return {p.key: p.value for p in read_model(path).metadata_props}
