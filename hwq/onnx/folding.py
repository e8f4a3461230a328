"""Constants of an ONNX file: reading tensors and folding nodes whose inputs are all constants,
within budgets.

Only nodes the declared outputs need are folded (``outputs.needed_nodes``). Before a node is
evaluated its output size is bounded from its inputs' shapes and values (``ConstantOfShape``,
``Range``, ``Expand``, ``Tile`` and products are where a few bytes of file can ask for
gigabytes or hours): a folded tensor may hold at most ``MAX_ELEMENTS`` elements, all folded
tensors together ``MAX_TOTAL``, and folded products at most ``MAX_WORK`` multiply-adds.
Control flow (``Loop``, ``Scan``, ``If``) and random ops are never folded; an op without a
bound here is refused in one line rather than run blind.
"""

from __future__ import annotations

import math
import time

import numpy as np
import onnx
from onnx import numpy_helper

from hwq.errors import InvalidModelError
from hwq.onnx.grids import QUANT_OPS

MAX_ELEMENTS = 2**24  # one folded tensor (128 MiB in float64)
MAX_TOTAL = 2**26  # all folded tensors of one model together
MAX_WORK = 2**31  # multiply-adds of all folded products together (a few seconds)
MAX_SECONDS = 60.0  # wall time of all folding together

# ops whose output holds at most as many elements as their first input
SHRINKING = {
    "Identity", "Cast", "CastLike", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice",
    "Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Relu", "Sigmoid",
    "Tanh", "Softmax", "LogSoftmax", "Clip", "Not", "IsNaN", "IsInf", "Erf", "Dropout", "QuantizeLinear",
    "DequantizeLinear", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
    "ReduceL2", "ArgMax", "ArgMin", "Split", "Shape", "Size", "NonZero", "CumSum", "EyeLike",
    "Quant", "IntQuant", "BipolarQuant", "Trunc",
}
# elementwise ops with broadcasting: the output has the broadcast shape of the inputs
BROADCASTING = {
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Mean", "Sum", "Where", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor", "BitShift", "PRelu",
}
NEVER = {"Loop", "Scan", "If", "SequenceMap", "RandomNormal", "RandomUniform", "RandomNormalLike",
         "RandomUniformLike", "Multinomial", "Bernoulli"}


def count(dims) -> int:
    return math.prod(int(d) for d in dims)


def tensor_array(t: onnx.TensorProto) -> np.ndarray:
    """A tensor's value, refusing data that does not match its dims in one line."""
    if any(d < 0 for d in t.dims) or count(t.dims) > MAX_ELEMENTS * 4:
        raise InvalidModelError(f"tensor '{t.name}': dims {list(t.dims)} are negative or too large")
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        raise InvalidModelError(f"tensor '{t.name}' holds {onnx.TensorProto.DataType.Name(t.data_type)} "
                                "values; hwq reads numeric constants")
    if t.HasField("raw_data"):
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(t.data_type, 8 * itemsize)
        need = (count(t.dims) * bits + 7) // 8
        if len(t.raw_data) != need:
            raise InvalidModelError(f"tensor '{t.name}': raw data holds {len(t.raw_data)} bytes, its dims "
                                    f"{list(t.dims)} need {need}")
    try:
        return np.asarray(numpy_helper.to_array(t))
    except Exception as exc:  # typed data whose length disagrees with dims, unknown types
        raise InvalidModelError(f"tensor '{t.name}' cannot be read: {str(exc).splitlines()[0][:120]}") from None


def _broadcast(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """numpy broadcasting on shapes alone (python ints: no overflow, no allocation)."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = {s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0} - {1}
        if len(dims) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _ints(a) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


def output_bound(op: str, args: list, at: dict) -> tuple[int, int]:
    """An upper bound on the elements of the node's outputs, and the multiply-adds it does."""
    shapes = [tuple(int(d) for d in np.shape(a)) for a in args if a is not None]
    first = args[0] if args and args[0] is not None else None
    if op == "Constant":
        return 0, 0
    if op in SHRINKING:
        return (sum(count(s) for s in shapes[:1]) or 1), 0
    if op in BROADCASTING:
        return count(_broadcast(shapes)), 0
    if op == "Concat":
        return sum(count(s) for s in shapes), 0
    if op == "ConstantOfShape":
        dims = _ints(first) if first is not None else []
        if any(d < 0 for d in dims):
            raise ValueError(f"negative shape {dims}")
        return count(dims), 0
    if op == "Range":
        start, limit, delta = (float(np.asarray(a).reshape(-1)[0]) for a in args[:3])
        if not all(map(math.isfinite, (start, limit, delta))) or delta == 0:
            raise ValueError("start, limit and delta must be finite and delta non-zero")
        return max(0, math.ceil((limit - start) / delta)), 0
    if op == "Expand":
        return count(_broadcast([shapes[0], tuple(_ints(args[1]))])), 0
    if op == "Tile":
        reps = _ints(args[1])
        if len(reps) != len(shapes[0]) or any(r < 0 for r in reps):
            raise ValueError(f"repeats {reps} do not fit shape {shapes[0]}")
        return count(d * r for d, r in zip(shapes[0], reps)), 0
    if op in ("Gather", "GatherElements", "GatherND"):
        return count(shapes[0]) * max(1, count(shapes[1])), 0
    if op in ("MatMul", "MatMulInteger", "Gemm"):
        a, b = (s if len(s) >= 2 else (1,) * (2 - len(s)) + s for s in shapes[:2])
        if op == "Gemm":
            a, b = (a[::-1] if at.get("transA") else a), (b[::-1] if at.get("transB") else b)
        out = count(_broadcast([a[:-2], b[:-2]])) * a[-2] * b[-1]
        return out, out * a[-1]
    if op == "OneHot":
        return count(shapes[0]) * max(1, int(np.asarray(args[1]).reshape(-1)[0])), 0
    raise LookupError(op)


class Folder:
    """Folds constant nodes into ``consts`` and records their weight grids and Clip ranges."""

    def __init__(self):
        self.total = 0
        self.work = 0
        self.seconds = 0.0

    def check(self, node: onnx.NodeProto, args: list, at: dict) -> None:
        where = f"constant node '{node.name}' ({node.op_type})"
        if node.op_type in NEVER or node.domain not in ("", "ai.onnx") and node.op_type not in QUANT_OPS:
            raise InvalidModelError(f"cannot fold {where}: hwq folds elementwise, shape and quantizer ops "
                                    "on constants, not control flow, random or custom ops")
        try:
            elements, work = output_bound(node.op_type, args, at)
        except LookupError:
            raise InvalidModelError(f"cannot fold {where}: hwq folds elementwise, shape, product and "
                                    "quantizer ops on constants") from None
        except (ValueError, TypeError, IndexError, OverflowError) as exc:
            raise InvalidModelError(f"cannot fold {where}: {str(exc)[:120]}") from None
        if elements > MAX_ELEMENTS or self.total + elements > MAX_TOTAL:
            raise InvalidModelError(f"cannot fold {where}: it would make {elements:,} elements (at most "
                                    f"{MAX_ELEMENTS:,} per tensor, {MAX_TOTAL:,} in all)")
        if self.work + work > MAX_WORK:
            raise InvalidModelError(f"cannot fold {where}: {work:,} multiply-adds exceed the folding "
                                    f"budget of {MAX_WORK:,}")
        if self.seconds > MAX_SECONDS:
            raise InvalidModelError(f"cannot fold {where}: folding constants took over {MAX_SECONDS:g} s")
        self.total += elements
        self.work += work

    def run(self, node: onnx.NodeProto, args: list, at: dict) -> list[np.ndarray]:
        """Evaluate one node on constant ``args`` within the budgets."""
        self.check(node, args, at)
        from onnx.reference import ReferenceEvaluator

        start = time.perf_counter()
        try:
            outs = ReferenceEvaluator(node).run(None, dict(zip(node.input, args)))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            raise InvalidModelError(f"cannot fold constant node '{node.name}' ({node.op_type}): {first}") from None
        finally:
            self.seconds += time.perf_counter() - start
        outs = [np.asarray(v) for v in outs]
        if any(v.size > MAX_ELEMENTS for v in outs):
            raise InvalidModelError(f"cannot fold constant node '{node.name}' ({node.op_type}): output "
                                    f"exceeds {MAX_ELEMENTS:,} elements")
        return outs
