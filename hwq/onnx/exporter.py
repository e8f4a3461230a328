"""The compiled integer network as an ONNX graph that onnxruntime runs bit-exactly.

``export_onnx(net)`` writes the formulas of ``hwq/quant/reference.py`` (``docs/integer-semantics.md``)
with plain ONNX ops, no fused QDQ:

* input ``x_q``: the integer input codes (N, n_features), in the smallest container
  onnxruntime multiplies natively: ``uint8`` (unsigned formats of <= 8 bits), ``int8`` (signed
  <= 8 bits), else ``int32``. Real inputs are quantized outside the graph with the formula in
  the metadata (``hwq.input``). The graph is exact for codes inside the input format.
* products: ``MatMulInteger`` (int32 result) when the codes sit in an 8-bit container, every
  weight is within ``[-64, 64]`` and ``255 * max_row sum|W| < 2^31``
  (``bounds.u8s8_exact_on_every_cpu``: onnxruntime's AVX2 kernel adds pairs of u8 x s8
  products in a saturating int16, so wider int8 weights are exact only on some CPUs);
  otherwise an integer-valued ``double`` ``MatMul``, exact on every CPU because every partial
  sum is an integer below ``2^53`` (checked).
* bias, requantization, activation in ``double`` (``requant_nodes`` proves exactness), or in
  int64 with ``Mod``/``Div`` when ``|acc * M|`` may reach ``2^53``; step is ``Greater`` +
  ``Cast``, relu ``Clip``, sigmoid ``Clip`` + ``Gather`` in the LUT.
* convolutions (``QLayer.window``): the patches are a ``Gather`` of the flat input with a
  constant index (``Window.gather_index``; padding reads an appended column of code 0, added by
  ``Pad``), ``(N, P, g K)``, times the block-diagonal ``(g K, C_out)`` weight through the same
  product as a dense layer (the same bounds: a patch holds input codes and zeros); the epilogue
  is the dense one, per channel, broadcast over the positions. Maps stay position-major inside
  the graph (``Codes.order``); the next gather index and the next dense weight's columns are
  permuted to match, and a convolution that ends the network is put back in C-order.
* pooling (``QPool``): max is a ``Gather`` (padding entries repeat an element of the same
  window, so they never change the maximum) and ``ReduceMax``; average is a ``Gather`` with the
  zero column, ``ReduceSum`` in double (``k * peak < 2^53``, checked) and the requantization
  (bias 0; no half where ``truncate``).
* outputs: ``scores`` (int64, the last layer's accumulator) and ``decision`` (int64 class:
  ``ArgMax`` with the lowest index on ties, or ``scores[:, 0] > 0`` for one output); the rule
  is also spelled out in the metadata (``hwq.decision``).

Graph optimizations do not matter for these ops (tests run onnxruntime with
``ORT_DISABLE_ALL`` and ``ORT_ENABLE_ALL`` and get identical integers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwq.errors import InvalidModelError
from hwq.files.atomic import atomic_write_bytes
from hwq.ir import activations
from hwq.quant.bounds import (
    F64_EXACT,
    channel_bounds,
    check_layer,
    check_pool,
    check_shift_range,
    rounding_half,
    row_sum_bound,
    u8s8_exact_on_every_cpu,
)
from hwq.quant.qnet import SIGMOID_LUT_HALF, QLayer, QPool, QuantizedNetwork
from hwq.version import __version__

OPSET = 17
IR_VERSION = 8  # onnxruntime 1.23 refuses onnx 1.23's default IR version 14
CONTAINERS = {  # ONNX type, numpy dtype, code range
    "uint8": (TensorProto.UINT8, np.uint8, 0, 255),
    "int8": (TensorProto.INT8, np.int8, -128, 127),
    "int32": (TensorProto.INT32, np.int32, -(2**31), 2**31 - 1),
    "double": (TensorProto.DOUBLE, np.float64, -F64_EXACT, F64_EXACT),
}


@dataclass
class Codes:
    """A tensor of integer codes in the graph: its name, container and value range. ``order``:
    the C-order index (``(c H + y) W + x``) each column of the flat ``(N, n)`` tensor holds
    (None: C-order itself); a convolution or pooling leaves its maps position-major."""

    name: str
    container: str
    lo: int
    hi: int
    order: np.ndarray | None = None

    @property
    def peak(self) -> int:
        return max(abs(self.lo), abs(self.hi))


@dataclass
class GraphBuilder:
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    count: int = 0

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.fresh(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(stem)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.fresh(op_type), **attrs))
        return out

    def cast(self, name: str, container: str, stem: str) -> str:
        return self.op("Cast", [name], stem, to=CONTAINERS[container][0])


def smallest_container(lo: int, hi: int) -> str:
    for name in ("uint8", "int8"):
        if CONTAINERS[name][2] <= lo and hi <= CONTAINERS[name][3]:
            return name
    return "double"


def input_container(net: QuantizedNetwork) -> str:
    fmt = net.input
    if fmt.bits <= 8:
        return "int8" if fmt.signed else "uint8"
    return "int32"


def product(b: GraphBuilder, w: np.ndarray, h: Codes, i: int) -> str:
    """``h @ w.T`` as an integer-valued double tensor (exact: see the module docstring); ``h``
    may carry leading axes (a convolution's ``(N, P, g K)`` patches)."""
    row_sum = row_sum_bound(w)
    if h.container in ("uint8", "int8") and u8s8_exact_on_every_cpu(w):
        acc = b.op("MatMulInteger", [h.name, b.const(f"w{i}", w.T.astype(np.int8))], f"prod{i}")
        return b.cast(acc, "double", f"prod{i}_f64")
    if row_sum * h.peak >= F64_EXACT:
        raise InvalidModelError(
            f"layer {i}: products reach 2^53, no exact ONNX double MatMul",
            hint="use fewer weight or activation bits")
    x = h.name if h.container == "double" else b.cast(h.name, "double", f"h{i}_f64")
    return b.op("MatMul", [x, b.const(f"w{i}", w.T.astype(np.float64))], f"prod{i}")


def requant_route(mult: np.ndarray, half: np.ndarray, acc_bound: np.ndarray) -> str:
    """``double`` when ``|acc| * M + 2^(S-1) < 2^53`` on every channel, else ``int64``."""
    bound = np.abs(np.asarray(acc_bound, dtype=object) * mult) + half
    return "double" if max(bound, default=0) < F64_EXACT else "int64"


def requant_terms(layer: QLayer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel ``M``, ``S`` and ``2^(S-1)`` (0 when S == 0) as exact Python integers."""
    m = layer.weight.shape[0]
    mult = np.broadcast_to(layer.requant.multiplier, (m,)).astype(object)
    shift = np.broadcast_to(layer.requant.shift, (m,)).astype(np.int64)
    check_shift_range(shift)
    half = rounding_half(shift).astype(object)
    return mult, shift, half


def requant_nodes(b: GraphBuilder, layer: QLayer, prod: str, acc_bound: np.ndarray, i: int) -> str:
    """``floor((acc * M + 2^(S-1)) / 2^S)`` with ``acc = prod + bias``, per output channel.

    Double route, when ``B = (|prod| + |bias|) * M + 2^(S-1) < 2^53`` for every channel:
    ``v = prod * (M * 2^-S) + (bias * M + 2^(S-1)) * 2^-S``, then ``Floor(v)``. Exact because
    (1) ``prod``, ``M`` and ``bias * M + 2^(S-1)`` are integers below 2^53, held exactly;
    (2) scaling by a power of two is exact (no overflow or underflow at these magnitudes), so
    ``M * 2^-S`` and the constant term are exact; (3) ``prod * M`` is an integer below 2^53, so
    the rounded product ``prod * (M * 2^-S)`` equals the exact ``prod * M / 2^S``; (4) the exact
    sum ``u / 2^S`` with ``u = acc * M + 2^(S-1)`` an integer below 2^53 is representable, so
    the rounded sum is exact; (5) ``Floor(u / 2^S)`` is the arithmetic right shift by S.

    int64 route otherwise (the reference itself needs ``|u| < 2^63``): ``t = acc * M + 2^(S-1)``
    and ``floor(t / 2^S) = (t - Mod(t, 2^S)) / 2^S``: ``Mod`` with ``fmod=0`` takes the
    divisor's sign, so ``Div`` (which truncates toward zero) divides an exact multiple. The
    result is cast to double for the clip that follows: rounding is monotonic and the clip
    bounds are small integers (exact in double), so ``clip(double(z)) == clip(z)``. (Clipping
    in int64 is not an option: onnxruntime 1.23's CPU ``Clip`` mis-clamps int64 values outside
    the int32 range, e.g. ``Clip(2^31, 0, 65535) == 0``.)

    Returns a double tensor of integer values.
    """
    mult, shift, half = requant_terms(layer)
    return rescale_nodes(b, prod, layer.bias, mult, shift, half, acc_bound, i)


def rescale_nodes(b: GraphBuilder, prod: str, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray,
                  half: np.ndarray, acc_bound: np.ndarray, i: int) -> str:
    """``floor(((prod + bias) * M + half) / 2^S)`` per channel (the last axis of ``prod``), by the
    double or the int64 route of ``requant_nodes`` (``half`` is ``2^(S-1)``, or 0 for a
    truncating average pooling: the proofs do not depend on its value, only on its bound)."""
    if requant_route(mult, half, acc_bound) == "double":
        scale = np.ldexp(mult.astype(np.float64), -shift)
        offset = np.ldexp((bias.astype(object) * mult + half).astype(np.float64), -shift)
        scaled = b.op("Mul", [prod, b.const(f"m{i}", scale)], f"scaled{i}")
        return b.op("Floor", [b.op("Add", [scaled, b.const(f"c{i}", offset)], f"u{i}")], f"z{i}")
    acc = b.op("Add", [prod, b.const(f"b{i}", bias.astype(np.float64))], f"acc{i}")
    acc = b.op("Cast", [acc], f"acc{i}_i64", to=TensorProto.INT64)
    t = b.op("Mul", [acc, b.const(f"m{i}", mult.astype(np.int64))], f"am{i}")
    t = b.op("Add", [t, b.const(f"half{i}", half.astype(np.int64))], f"t{i}")
    p = b.const(f"p{i}", np.array([2 ** int(s) for s in shift], dtype=np.int64))
    r = b.op("Mod", [t, p], f"r{i}", fmod=0)
    return b.cast(b.op("Div", [b.op("Sub", [t, r], f"tr{i}"), p], f"z{i}_i64"), "double", f"z{i}")


def clip(b: GraphBuilder, z: str, lo: int, hi: int, i: int) -> str:
    """``Clip`` of integer-valued doubles to integer bounds."""
    return b.op("Clip", [z, b.const(f"lo{i}", np.float64(lo)), b.const(f"hi{i}", np.float64(hi))],
                f"clip{i}")


def activation(b: GraphBuilder, layer: QLayer, prod: str, acc_bound: np.ndarray, i: int) -> Codes:
    """The codes layer ``i`` passes on, in the container the next product wants."""
    kind = layer.activation_kind
    if not kind.requantizes:
        acc = b.op("Add", [prod, b.const(f"b{i}", layer.bias.astype(np.float64))], f"acc{i}")
        if kind is activations.STEP:
            gt = b.op("Greater", [acc, b.const(f"zero{i}", np.float64(0))], f"gt{i}")
            return Codes(b.cast(gt, "uint8", f"h{i + 1}"), "uint8", 0, 1)
        if kind is activations.SIGN:  # +1 if acc >= 0 else -1: 2 [acc >= 0] - 1
            ge = b.cast(b.op("GreaterOrEqual", [acc, b.const(f"zero{i}", np.float64(0))], f"ge{i}"),
                        "int8", f"ge{i}_i8")
            two = b.op("Mul", [ge, b.const(f"two{i}", np.int8(2))], f"ge2_{i}")
            return Codes(b.op("Sub", [two, b.const(f"one{i}", np.int8(1))], f"h{i + 1}"), "int8", -1, 1)
        peak = int(acc_bound.max(initial=0))
        return Codes(acc, "double", -peak, peak)
    z = requant_nodes(b, layer, prod, acc_bound, i)
    if kind is activations.RELU or isinstance(kind, activations.Clip):  # clip(z, lo, hi) to the code range
        lo, hi = kind.code_range(layer.act_bits, layer.lut, 0)
        y = clip(b, z, lo, hi, i)
        out = smallest_container(lo, hi)
        return Codes(b.op("Cast", [y], f"h{i + 1}", to=CONTAINERS[out][0]), out, lo, hi)
    if kind is activations.SIGMOID:
        k = clip(b, z, -SIGMOID_LUT_HALF, SIGMOID_LUT_HALF - 1, i)
        idx = b.op("Cast", [k], f"k{i}", to=TensorProto.INT64)
        idx = b.op("Add", [idx, b.const(f"half{i}", np.int64(SIGMOID_LUT_HALF))], f"idx{i}")
        lo, hi = int(layer.lut.min()), int(layer.lut.max())
        out = smallest_container(lo, hi)
        lut = b.const(f"lut{i}", layer.lut.astype(CONTAINERS[out][1]))
        return Codes(b.op("Gather", [lut, idx], f"h{i + 1}", axis=0), out, lo, hi)
    raise InvalidModelError(f"layer {i}: unknown activation {kind.name!r}")


def decision(b: GraphBuilder, net: QuantizedNetwork, acc: str) -> str:
    """Class per input: ``ArgMax`` (first index on ties) or ``scores[:, 0] > 0``."""
    if net.output == "sign":
        first = b.op("Gather", [acc, b.const("col0", np.int64(0))], "score0", axis=1)
        gt = b.op("Greater", [first, b.const("zero_out", np.float64(0))], "positive")
        return b.op("Cast", [gt], "decision", out="decision", to=TensorProto.INT64)
    return b.op("ArgMax", [acc], "decision", out="decision", axis=1, keepdims=0,
                select_last_index=0)


def column_of(h: Codes, n: int) -> np.ndarray:
    """For every C-order index of a map of ``n`` codes, the column of ``h`` that holds it."""
    if h.order is None:
        return np.arange(n, dtype=np.int64)
    col = np.empty(n, dtype=np.int64)
    col[h.order] = np.arange(n, dtype=np.int64)
    return col


def position_major(channels: int, positions: int) -> np.ndarray:
    """``Codes.order`` of a ``(N, P, C)`` map flattened: column ``p C + c`` holds ``c P + p``."""
    return (np.arange(channels)[None, :] * positions + np.arange(positions)[:, None]).reshape(-1)


def window_index(win, h: Codes, padding: str) -> np.ndarray:
    """The ``Gather`` index ``(P, g, K)`` into the columns of ``h`` for every patch element
    (``Window.gather_index``, permuted to ``h.order``). ``padding="zero"``: padding reads column
    ``n_in``, the code 0 that ``Pad`` appends; ``"repeat"``: padding repeats the window's first
    element inside the image (every window touches the image, ``Window.validate``)."""
    idx = win.gather_index  # (g, P, K), -1: padding
    if padding == "repeat":
        first = np.take_along_axis(idx, np.argmax(idx >= 0, axis=2)[..., None], axis=2)
        cols = column_of(h, win.n_in)[np.where(idx < 0, first, idx)]
    else:
        cols = np.where(idx < 0, win.n_in, column_of(h, win.n_in)[np.maximum(idx, 0)])
    return np.ascontiguousarray(cols.transpose(1, 0, 2)).astype(np.int64)


def gather_patches(b: GraphBuilder, win, h: Codes, padding: str, i: int) -> str:
    """``(N, P, g, K)``: every patch element of ``h`` (``window_index``)."""
    x = h.name
    if padding == "zero" and win.padded:  # the column of code 0 that padding reads
        x = b.op("Pad", [x, b.const(f"pads{i}", np.array([0, 0, 0, 1], dtype=np.int64))], f"padded{i}")
    return b.op("Gather", [x, b.const(f"idx{i}", window_index(win, h, padding))], f"patches{i}", axis=1)


def flatten(b: GraphBuilder, name: str, i: int) -> str:
    """``(N, ...)`` -> ``(N, n)``, row-major."""
    return b.op("Reshape", [name, b.const(f"flat{i}", np.array([0, -1], dtype=np.int64))], f"flat{i}")


def block_diagonal(layer: QLayer) -> np.ndarray:
    """The ``(C_out, g K)`` matrix that multiplies a grouped convolution's ``g K`` patch elements:
    output channel ``o`` of group ``o // (C_out / g)`` sees its group's ``K`` and zeros elsewhere
    (row sums and largest weight unchanged, so the product bounds are the dense layer's)."""
    w, g = layer.weight, layer.window.groups
    if g == 1:
        return w
    per = w.shape[0] // g
    out = np.zeros((w.shape[0], g * w.shape[1]), dtype=w.dtype)
    for o in range(w.shape[0]):
        gi = o // per
        out[o, gi * w.shape[1]:(gi + 1) * w.shape[1]] = w[o]
    return out


def layer_product(b: GraphBuilder, layer: QLayer, h: Codes, i: int) -> str:
    """A dense layer's ``h @ W.T`` (columns of ``W`` permuted to ``h.order``), or a convolution's
    product over its gathered patches ``(N, P, C_out)``: both integer-valued doubles."""
    if layer.window is None:
        w = layer.weight if h.order is None else layer.weight[:, h.order]
        return product(b, w, h, i)
    win = layer.window
    patches = gather_patches(b, win, h, "zero", i)  # (N, P, g, K)
    patches = b.op("Reshape", [patches, b.const(f"pk{i}", np.array([0, win.positions, -1], dtype=np.int64))],
                   f"patch_rows{i}")
    return product(b, block_diagonal(layer), Codes(patches, h.container, h.lo, h.hi), i)


def pool_nodes(b: GraphBuilder, node: QPool, h: Codes, lo: int, hi: int, i: int) -> Codes:
    """A pooling node on ``h``: ``(N, P C)`` position-major codes (module docstring)."""
    win = node.window
    c, positions = win.channels, win.positions
    order = position_major(c, positions)
    if node.op == "max":  # a repeated element never changes a maximum: padding is ignored
        top = b.op("ReduceMax", [gather_patches(b, win, h, "repeat", i)], f"max{i}", axes=[-1], keepdims=0)
        return Codes(flatten(b, top, i), h.container, h.lo, h.hi, order)
    a, z = node.sum_range(lo, hi)
    worst = max(abs(a), abs(z))
    if worst >= F64_EXACT:
        raise InvalidModelError(f"layer {i}: pooling sums reach 2^53, no exact ONNX export",
                                hint="use fewer activation bits before the pooling")
    patches = gather_patches(b, win, h, "zero", i)
    if h.container != "double":
        patches = b.cast(patches, "double", f"patches{i}_f64")
    s = b.op("ReduceSum", [patches, b.const(f"axis{i}", np.array([-1], dtype=np.int64))], f"sum{i}", keepdims=0)
    mult = node.requant.multiplier.astype(object)
    shift = node.requant.shift.astype(np.int64)
    check_shift_range(shift)
    half = np.zeros(c, dtype=object) if node.truncate else rounding_half(shift).astype(object)
    y = rescale_nodes(b, s, np.zeros(c, dtype=np.int64), mult, shift, half, np.full(c, worst, dtype=object), i)
    out_lo, out_hi = node.out_range(lo, hi)
    out = smallest_container(out_lo, out_hi)
    if out != "double":
        y = b.cast(y, out, f"avg{i}")
    return Codes(flatten(b, y, i), out, out_lo, out_hi, order)


def to_c_order(b: GraphBuilder, acc: str, layer: QLayer, i: int) -> str:
    """The last layer's accumulators as ``(N, n_out)`` in C-order (a convolution's ``(N, P, C)``
    transposed to ``(N, C, P)``)."""
    if layer.window is None:
        return acc
    return flatten(b, b.op("Transpose", [acc], f"acc{i}_cp", perm=[0, 2, 1]), i)


def build_graph(net: QuantizedNetwork) -> onnx.GraphProto:
    b = GraphBuilder()
    fmt = net.input
    container = input_container(net)
    h = Codes("x_q", container, fmt.qmin, fmt.qmax)
    if container == "int32":
        h = Codes(b.cast("x_q", "double", "x_f64"), "double", fmt.qmin, fmt.qmax)
    for i, layer, _, (lo, hi) in net.walk():  # [lo, hi]: the codes layer i receives (h's range)
        peak = max(abs(lo), abs(hi))
        if isinstance(layer, QPool):
            check_pool(layer, i, lo, hi)
            h = pool_nodes(b, layer, h, lo, hi, i)
            continue
        check_layer(layer, i, -peak, peak)  # int64 cannot wrap (Python-integer bound)
        acc_bound = np.array(channel_bounds(layer.weight, layer.bias, peak), dtype=object)
        if int(acc_bound.max(initial=0)) >= F64_EXACT:
            raise InvalidModelError(f"layer {i}: accumulators reach 2^53, no exact ONNX export")
        prod = layer_product(b, layer, h, i)
        if i + 1 == len(net.layers):
            acc = b.op("Add", [prod, b.const(f"b{i}", layer.bias.astype(np.float64))], f"acc{i}")
            acc = to_c_order(b, acc, layer, i)
            b.op("Cast", [acc], "scores", out="scores", to=TensorProto.INT64)
            decision(b, net, acc)
            break
        h = activation(b, layer, prod, acc_bound, i)
        if layer.window is not None:
            h = Codes(flatten(b, h.name, i), h.container, h.lo, h.hi,
                      position_major(layer.weight.shape[0], layer.window.positions))
    n_out = net.layers[-1].n_out
    inputs = [helper.make_tensor_value_info("x_q", CONTAINERS[container][0], ["N", net.n_features])]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.INT64, ["N", n_out]),
               helper.make_tensor_value_info("decision", TensorProto.INT64, ["N"])]
    return helper.make_graph(b.nodes, "hwq_integer", inputs, outputs, b.inits,
                             doc_string="hwq integer network: see hwq.onnx.exporter")


def describe_node(node) -> str:
    if isinstance(node, QPool):
        return f"{node.op}pool {node.window.describe()} {node.window.n_in}->{node.n_out}"
    if node.window is not None:
        return f"{node.activation} conv {node.window.describe()} {node.window.n_in}->{node.n_out}"
    return f"{node.activation} {node.weight.shape[1]}->{node.weight.shape[0]}"


def metadata(net: QuantizedNetwork) -> dict[str, str]:
    fmt = net.input
    rule = ("argmax over scores, the lowest index wins ties" if net.output == "argmax"
            else "class 1 iff scores[:, 0] > 0, else class 0")
    return {
        "hwq.version": __version__,
        "hwq.decision": rule,
        "hwq.input": (f"x_q = clip(floor(x * {fmt.inv_scale!r} + 1/2), {fmt.qmin}, {fmt.qmax})"
                      f" ({fmt.name}); bounds {fmt.bounds}"),
        "hwq.input_dtype": input_container(net),
        "hwq.layers": "; ".join(describe_node(layer) for layer in net.layers),
        "hwq.semantics": "docs/integer-semantics.md (integers exact; scores are int64 accumulators)",
    }


def export_onnx(net: QuantizedNetwork) -> onnx.ModelProto:
    """``net`` as an ONNX model (opset 17, IR 8) whose outputs ``scores`` and ``decision``
    equal ``hwq.quant.reference.forward`` / ``decide`` bit for bit for codes in the input format."""
    model = helper.make_model(build_graph(net), producer_name="hwq", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    helper.set_model_props(model, metadata(net))
    onnx.checker.check_model(model)
    return model


def save_onnx(net: QuantizedNetwork, path: str | Path) -> Path:
    """Export ``net`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    atomic_write_bytes(path, export_onnx(net).SerializeToString())
    return path
