"""ONNX -> IR for convolutional networks: one function per ONNX op, registered by ``importer``.

The stream's sample shape ``(C, H, W)`` is tracked in ``Importer.sample_dims`` (without the batch
axis); every convolution or pooling becomes an ``ir.Conv2d`` / pool over an ``ir.Window`` built
from the ONNX attributes (``shared/specs/cnn.md`` section 1 lists what real exporters write):

* ``Conv``: ``pads = (top, left, bottom, right)`` as ONNX orders them (``x1_begin, x2_begin,
  x1_end, x2_end``); ``auto_pad`` SAME_UPPER / SAME_LOWER: ``out = ceil(in / s)``,
  ``total = max(0, (out - 1) s + d (k - 1) + 1 - in)``, the odd pixel at the end (UPPER) or the
  start (LOWER); VALID: no padding. A preceding zero ``Pad`` adds to the pads.
* ``MaxPool`` / ``AveragePool``: ``ceil_mode = 1`` adds end padding ``e = (out_ceil - 1) s + k -
  (in + pads)`` where the last window starts inside the image or its begin padding (exact for max
  pooling, whose padding never wins; refused for average pooling, whose divisor would shrink, and
  where a window would start in the end padding: onnxruntime keeps it, ONNX shape inference drops
  it); ``count_include_pad = 0`` with padding is refused (its divisor varies).
* ``MaxPool``'s ``storage_order`` only orders its ``Indices`` output, which is refused.
* ``GlobalAveragePool`` / ``GlobalMaxPool`` and ``ReduceMean`` / ``ReduceMax`` over axes (2, 3):
  a pooling whose window is the whole map.
* ``BatchNormalization`` after a convolution: ``g = gamma / sqrt(var + eps)``,
  ``gain' = gain g``, ``bias' = bias - mean / gain + beta / (gain g)`` (so
  ``gain' (W x + bias') = g (gain (W x + bias) - mean) + beta``); after a dense layer without a
  weight grid: rows scaled, ``W' = g W``, ``bias' = g (bias - mean / gain) + beta / gain``.
* Constant ``Add``/``Sub``/``Mul``/``Div`` after a convolution, per channel (shape ``(C, 1, 1)``):
  ``bias += c / gain``, ``gain *= c``.
* Input normalization ``x -> a x + c`` before the first convolution (per channel ``a``, ``c``):
  ``W'[o, ci] = a[ch] W[o, ci]``, ``bias'[o] = bias[o] + sum_{ci, i, j} W[o, ci, i, j] c[ch]``
  with ``ch = (o // (C_out / groups)) cg + ci``; exact only where no window reads padding or
  ``c = 0`` (padding reads 0 *after* the offset), refused otherwise.
* Layout: ``Reshape`` keeps the C-order flat sample, so it only renames the dims; ``Transpose``
  ``[0, 3, 1, 2]`` on an NHWC input (tf2onnx's Keras models) makes the first convolution read the
  rows as one ``H x (W C)`` image (``nhwc_conv`` below: exact for groups 1 and horizontal dilation 1,
  refused otherwise); ``[0, 2, 3, 1]`` before a flatten makes the next dense layer read
  ``(H, W, C)``-ordered features, folded into its weight columns: ``W'[:, perm[i]] = W[:, i]``.
* Brevitas ``TruncAvgPool2d``: ``AveragePool`` then QONNX ``Trunc`` (or a QCDQ quantizer) on
  ``k = kh kw`` codes of scale ``s``: ``floor(sum / 2^t)`` codes of scale ``s_out``, which is
  ``SumPool2d(shift=t)`` (``floor(sum / 2^t) s``) and the factor ``s_out / s`` folded into the
  next linear layer's weights (and grid scales).
"""

from __future__ import annotations

import math

import numpy as np

from hwq import ir
from hwq.errors import InvalidModelError

LINEAR = (ir.Affine, ir.Conv2d)


def where(node) -> str:
    return f"{node.op_type} '{node.name or '?'}'"


def refuse(node, text: str, hint: str | None = None) -> InvalidModelError:
    return InvalidModelError(f"{where(node)}: {text}", hint=hint)


# ---------------------------------------------------------------- shared checks


def maps(st, node) -> tuple[int, int, int]:
    """The stream's ``(C, H, W)``, refusing in one line where it is unknown or not maps."""
    st.check_open(node)
    st.close_sign(node)
    if st.perm is not None:
        raise refuse(node, "reads channel-last (NHWC) maps after a Transpose; hwq reads NCHW maps")
    if st.nhwc and node.op_type != "Conv":
        raise refuse(node, "reads the NHWC input; hwq reads an NHWC input into a Conv only")
    dims = st.sample_dims
    if dims is None or any(d <= 0 for d in dims):
        raise refuse(node, "needs the sample's (C, H, W) shape", hint="declare the input's dimensions")
    if len(dims) != 3:
        raise refuse(node, f"reads 2-D maps (N, C, H, W); the sample has shape {tuple(dims)}")
    return tuple(int(d) for d in dims)


def pair(node, name: str, value, default: int) -> tuple[int, int]:
    v = tuple(int(x) for x in value) if len(value) else (default, default)
    if len(v) != 2:
        raise refuse(node, f"{name} {list(v)}: hwq reads 2-D windows")
    return v


def window_pads(node, auto_pad: str, pads, hw, kernel, stride, dilation) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` from ``pads`` or ``auto_pad`` (module docstring)."""
    mode = auto_pad.upper()
    explicit = tuple(int(p) for p in pads) if len(pads) else (0, 0, 0, 0)
    if len(explicit) != 4:
        raise refuse(node, f"pads {list(explicit)}: hwq reads 2-D windows (4 pads)")
    if any(p < 0 for p in explicit):
        raise refuse(node, f"negative pads {list(explicit)} (cropping) are not supported")
    if mode == "NOTSET":
        return explicit
    if any(explicit):
        raise refuse(node, f"both auto_pad {mode} and pads {list(explicit)}")
    if mode == "VALID":
        return (0, 0, 0, 0)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise refuse(node, f"auto_pad '{auto_pad}' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    begin, end = [], []
    for size, k, s, d in zip(hw, kernel, stride, dilation):
        out = -(-size // s)
        total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return (begin[0], begin[1], end[0], end[1])


def take_pad(st, pads: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Add a pending zero ``Pad`` to a window's pads."""
    extra, st.pad_pending = st.pad_pending, None
    return pads if extra is None else tuple(a + b for a, b in zip(pads, extra))


# ---------------------------------------------------------------- Conv


def Conv(st, node, auto_pad="NOTSET", dilations=(), group=1, kernel_shape=(), pads=(), strides=()):
    c, h, w = maps(st, node)
    if node.input[0] != st.stream:
        raise refuse(node, "the sample must be input X")
    weight = np.asarray(st.const(node, node.input[1]), np.float64)
    if weight.ndim != 4:
        raise refuse(node, f"weight of shape {weight.shape}: hwq reads 2-D convolutions (4-D weights)")
    kernel = tuple(int(k) for k in weight.shape[2:])
    if len(kernel_shape) and tuple(int(k) for k in kernel_shape) != kernel:
        raise refuse(node, f"kernel_shape {list(kernel_shape)} differs from the weight's {list(kernel)}")
    if group < 1 or c % group or weight.shape[1] * group != c or weight.shape[0] % group:
        raise refuse(node, f"weight {weight.shape} with group {group} does not fit {c} input channels")
    stride, dilation = pair(node, "strides", strides, 1), pair(node, "dilations", dilations, 1)
    window_pad = take_pad(st, window_pads(node, auto_pad, pads, (h, w), kernel, stride, dilation))
    win = ir.Window((c, h, w), kernel, stride, window_pad, dilation, int(group))
    bias = np.zeros(weight.shape[0])
    if len(node.input) > 2 and node.input[2]:
        b = np.asarray(st.const(node, node.input[2]), np.float64)
        if b.shape != (weight.shape[0],):
            raise refuse(node, f"bias of shape {b.shape} does not fit {weight.shape[0]} output channels")
        bias = b
    grid = st.grids.get(node.input[1])
    if grid is not None and len(grid.weight_scale) not in (1, weight.shape[0]):
        raise refuse(node, f"{len(grid.weight_scale)} weight scales do not fit {weight.shape[0]} output channels")
    win.validate()
    if st.prelude is not None:
        weight, bias, grid = fold_prelude_conv(st, node, weight, bias, grid, win)
    weight, grid = take_carry(st, weight, grid)
    if st.nhwc:
        weight, win = nhwc_conv(st, node, weight, win)
    st.nodes.append(ir.Conv2d(weight, bias, win, grid=grid))
    st.sample_dims = (int(weight.shape[0]), *win.out_hw)
    st.rank = 4


def nhwc_conv(st, node, weight: np.ndarray, win: ir.Window):
    """The first convolution on an NHWC input (rows flat in ``(H, W, C)`` order) as a 1-channel
    convolution over the ``H x (W C)`` image: pixel ``(y, x, ch)`` sits at column ``x C + ch``, so
    a window's ``kw`` pixels of ``C`` channels are ``kw C`` adjacent columns. Exact for ``groups = 1``
    and horizontal dilation 1: kernel ``(kh, kw C)``, stride ``(sh, sw C)``, pads ``(top, left C,
    bottom, right C)``, dilation ``(dh, 1)``, ``W'[o, 0, i, j C + ch] = W[o, ch, i, j]``."""
    st.nhwc = False
    if win.groups != 1 or win.dilation[1] != 1:
        raise refuse(node, "on an NHWC input with groups or horizontal dilation: hwq reads channel-last "
                           "inputs into a plain convolution only",
                     hint="export an NCHW input: tf2onnx --inputs-as-nchw")
    c, h, w = win.in_shape
    (kh, kw), (sh, sw), (top, left, bottom, right) = win.kernel, win.stride, win.pads
    flat = ir.Window((1, h, w * c), (kh, kw * c), (sh, sw * c), (top, left * c, bottom, right * c),
                     (win.dilation[0], 1), 1)
    flat.validate()
    out = weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], 1, kh, kw * c)
    return out, flat


def channel_of(weight: np.ndarray, groups: int) -> np.ndarray:
    """``ch[o, ci]``: the input channel that weight ``[o, ci]`` reads."""
    n_out, cg = weight.shape[:2]
    return (np.arange(n_out) // (n_out // groups))[:, None] * cg + np.arange(cg)[None, :]


def per_channel(node, v: np.ndarray, c: int, what: str) -> np.ndarray:
    """A flat per-feature array (size 1 or C H W) as one value per channel, or a refusal."""
    v = np.asarray(v, np.float64).reshape(-1)
    if v.size == 1:
        return np.full(c, v[0])
    m = v.reshape(c, -1)
    if not np.all(m == m[:, :1]):
        raise refuse(node, f"the input normalization's {what} varies within a channel; hwq folds "
                           "per-channel normalization into the first convolution only",
                     hint="normalize the data before hwq")
    return m[:, 0].copy()


def fold_prelude_conv(st, node, weight, bias, grid, win: ir.Window):
    a, off = st.prelude
    st.prelude = None
    c = win.channels
    if a.size not in (1, win.n_in) or off.size not in (1, win.n_in):
        raise refuse(node, f"the input normalization has {max(a.size, off.size)} features, the "
                           f"convolution reads {win.n_in}")
    a_ch, c_ch = per_channel(node, a, c, "scale"), per_channel(node, off, c, "offset")
    if np.any(c_ch != 0) and win.padded:
        raise refuse(node, "an input offset (Sub/Add before the first convolution) with padding "
                           "cannot be folded exactly (the padding reads 0 after the offset)",
                     hint="normalize the data before hwq, or pad without normalization in the model")
    if grid is not None:
        if not (np.all(a_ch == a_ch[0]) and a_ch[0] > 0 and np.all(c_ch == 0)):
            raise refuse(node, "an input normalization with offsets or per-channel scales cannot be "
                               "folded exactly into QAT grid weights", hint="normalize the data before hwq")
        grid = ir.Grid(grid.scheme, grid.bits, tuple(s * float(a_ch[0]) for s in grid.weight_scale),
                       grid.source + " (input scale folded in)")
    ch = channel_of(weight, win.groups)
    with np.errstate(all="ignore"):
        new_bias = bias + np.sum(weight * c_ch[ch][:, :, None, None], axis=(1, 2, 3))
        new_weight = weight * a_ch[ch][:, :, None, None]
    return new_weight, new_bias, grid


def take_carry(st, weight: np.ndarray, grid):
    """A pending positive input factor (after a truncating average pool) into a linear layer's
    weights: ``W' = f W``, grid scales ``f s``."""
    f, st.carry = st.carry, 1.0
    if f == 1.0:
        return weight, grid
    if grid is not None:
        grid = ir.Grid(grid.scheme, grid.bits, tuple(s * f for s in grid.weight_scale),
                       grid.source + " (pooling scale folded in)")
    return weight * f, grid


# ---------------------------------------------------------------- pooling


def pool_window(st, node, c, h, w, kernel_shape, strides, pads, auto_pad, ceil_mode, dilations):
    if not len(kernel_shape):
        raise refuse(node, "has no kernel_shape")
    kernel = pair(node, "kernel_shape", kernel_shape, 1)
    stride = pair(node, "strides", strides, 1)
    if any(int(d) != 1 for d in dilations):
        raise refuse(node, f"dilations {list(dilations)}: hwq pools without dilation")
    top, left, bottom, right = window_pads(node, auto_pad, pads, (h, w), kernel, stride, (1, 1))
    extra = [0, 0]
    if ceil_mode:
        for axis, (size, k, s, lo, hi) in enumerate(((h, kernel[0], stride[0], top, bottom),
                                                     (w, kernel[1], stride[1], left, right))):
            out = -(-(size + lo + hi - k) // s) + 1
            if (out - 1) * s >= size + lo:  # onnxruntime keeps that window, ONNX shape inference drops it
                raise refuse(node, "ceil_mode=1 makes a window that starts in the end padding (onnxruntime and "
                                   "ONNX shape inference disagree on it)", hint="use ceil_mode=0 or less padding")
            extra[axis] = max(0, (out - 1) * s + k - (size + lo + hi))
    return kernel, stride, (top, left, bottom + extra[0], right + extra[1]), any(extra)


def MaxPool(st, node, auto_pad="NOTSET", ceil_mode=0, dilations=(), kernel_shape=(), pads=(),
            storage_order=0, strides=()):
    c, h, w = maps(st, node)
    if len(node.output) > 1 and node.output[1]:
        raise refuse(node, "the Indices output is not supported")
    kernel, stride, padding, _ = pool_window(st, node, c, h, w, kernel_shape, strides, pads, auto_pad,
                                             ceil_mode, dilations)
    add_pool(st, node, ir.MaxPool2d, ir.Window((c, h, w), kernel, stride, padding, (1, 1), c))


def AveragePool(st, node, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=(),
                kernel_shape=(), pads=(), strides=()):
    c, h, w = maps(st, node)
    kernel, stride, padding, overhang = pool_window(st, node, c, h, w, kernel_shape, strides, pads,
                                                    auto_pad, ceil_mode, dilations)
    if overhang:
        raise refuse(node, "ceil_mode=1 makes windows that overhang the padded map (their divisor "
                           "shrinks); hwq divides by the whole window", hint="use ceil_mode=0")
    if any(padding) and not count_include_pad:
        raise refuse(node, "count_include_pad=0 with padding (the divisor varies per window); hwq "
                           "divides by the whole window", hint="use count_include_pad=1 or no padding")
    padding = take_pad(st, padding)
    add_pool(st, node, ir.AvgPool2d, ir.Window((c, h, w), kernel, stride, padding, (1, 1), c))


def add_pool(st, node, kind, win: ir.Window) -> None:
    win.validate()
    if not any(isinstance(n, LINEAR) for n in st.nodes):
        raise refuse(node, "a pooling before the first convolution is not supported")
    st.nodes.append(kind(win))
    st.sample_dims = (win.channels, *win.out_hw)
    st.rank = 4


def global_pool(st, node, kind) -> None:
    c, h, w = maps(st, node)
    add_pool(st, node, kind, ir.Window((c, h, w), (h, w), (1, 1), (0, 0, 0, 0), (1, 1), c))


def GlobalAveragePool(st, node):
    global_pool(st, node, ir.AvgPool2d)


def GlobalMaxPool(st, node):
    global_pool(st, node, ir.MaxPool2d)


def reduce_pool(st, node, kind, axes, keepdims, noop_with_empty_axes) -> None:
    """ReduceMean / ReduceMax over the two spatial axes of the maps: a global pooling."""
    if st.sample_dims is None or len(st.sample_dims) != 3:
        raise refuse(node, "hwq reads ReduceMean/ReduceMax over the spatial axes (2, 3) of 2-D maps only")
    if len(node.input) > 1 and node.input[1]:
        axes = np.asarray(st.const(node, node.input[1])).reshape(-1).tolist()
    if not len(axes) and noop_with_empty_axes:
        raise refuse(node, "reduces nothing (noop_with_empty_axes)")
    got = sorted({int(a) % 4 for a in axes}) if len(axes) else [0, 1, 2, 3]
    if got != [2, 3]:
        raise refuse(node, f"over axes {list(axes)}: hwq reads global pooling over the spatial axes (2, 3)")
    global_pool(st, node, kind)
    if not keepdims:
        st.nodes.append(ir.Flatten())
        st.sample_dims, st.rank = (st.sample_dims[0],), 2


def ReduceMean(st, node, axes=(), keepdims=1, noop_with_empty_axes=0):
    reduce_pool(st, node, ir.AvgPool2d, axes, keepdims, noop_with_empty_axes)


def ReduceMax(st, node, axes=(), keepdims=1, noop_with_empty_axes=0):
    reduce_pool(st, node, ir.MaxPool2d, axes, keepdims, noop_with_empty_axes)


def Pad(st, node, mode="constant", pads=(), value=0.0):
    """A zero ``Pad`` on the spatial axes, folded into the next Conv (or AveragePool with
    ``count_include_pad = 1``)."""
    c, h, w = maps(st, node)
    if st.pad_pending is not None:
        raise refuse(node, "two Pad nodes in a row are not supported")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise refuse(node, f"mode '{mode}': hwq folds zero (constant) padding only")
    amounts = np.asarray(st.const(node, node.input[1]) if len(node.input) > 1 and node.input[1] else pads)
    amounts = amounts.reshape(-1).astype(np.int64)
    if len(node.input) > 3 and node.input[3]:
        raise refuse(node, "the axes input is not supported")
    fill = float(np.asarray(st.const(node, node.input[2])).reshape(-1)[0]) if (
        len(node.input) > 2 and node.input[2]) else float(value)
    if fill != 0:
        raise refuse(node, f"pads with {fill:g}; hwq folds zero padding only")
    if amounts.size != 8 or np.any(amounts[[0, 1, 4, 5]] != 0) or np.any(amounts < 0):
        raise refuse(node, f"pads {amounts.tolist()}: hwq folds non-negative padding of the spatial axes only")
    st.pad_pending = (int(amounts[2]), int(amounts[3]), int(amounts[6]), int(amounts[7]))


# ---------------------------------------------------------------- BatchNormalization and constants


def BatchNormalization(st, node, epsilon=1e-5, momentum=0.9, spatial=1, training_mode=0):
    st.check_open(node)
    if training_mode or not spatial or any(node.output[1:]):
        raise refuse(node, "training-mode statistics are not supported (export in eval mode)")
    last = st.nodes[-1] if st.nodes and st.pending is None else None
    if not isinstance(last, LINEAR):
        raise refuse(node, "must directly follow a Conv or Gemm/MatMul (hwq folds it into that layer)")
    gamma, beta, mean, var = (np.asarray(st.const(node, n), np.float64).reshape(-1) for n in node.input[1:5])
    n = last.channels if isinstance(last, ir.Conv2d) else last.n_out
    if any(v.size != n for v in (gamma, beta, mean, var)):
        raise refuse(node, f"parameters do not have the layer's {n} channels")
    if np.any(var + epsilon <= 0):
        raise refuse(node, "variance + epsilon is not positive")
    g = gamma / np.sqrt(var + epsilon)
    if np.any(g == 0):
        raise refuse(node, "a channel's scale gamma is 0 (the channel is a constant)")
    if isinstance(last, ir.Conv2d):
        st.nodes[-1] = ir.Conv2d(last.weight, last.bias - mean / last.gain + beta / (last.gain * g),
                                 last.window, last.gain * g, last.grid)
        return
    if last.grid is not None:
        raise refuse(node, "after a dense layer on a QAT weight grid cannot be folded exactly")
    st.nodes[-1] = ir.Affine(last.weight * g[:, None], g * (last.bias - mean / last.gain) + beta / last.gain,
                             last.gain)


def after_conv(st) -> bool:
    return st.pending is None and bool(st.nodes) and isinstance(st.nodes[-1], ir.Conv2d)


def channel_values(node, c: np.ndarray, conv: ir.Conv2d) -> np.ndarray:
    """A constant that broadcasts per channel onto ``(N, C, H, W)``: ``()``, ``(1,)``, ``(C, 1, 1)``,
    ``(1, C, 1, 1)``; refused in one line otherwise."""
    n = conv.channels
    full = (1, n, 1, 1)
    try:
        fits = c.ndim <= 4 and np.broadcast_shapes(c.shape, full) == full
    except ValueError:
        fits = False
    if not fits:
        raise refuse(node, f"constant of shape {c.shape} after a convolution: hwq folds per-channel "
                           f"constants of shape ({n}, 1, 1)")
    return np.broadcast_to(np.asarray(c, np.float64), full).reshape(-1)


def conv_constant(st, node, c: np.ndarray, op: str) -> None:
    """``Add``/``Sub``/``Mul``/``Div`` of a per-channel constant after a convolution."""
    conv = st.nodes[-1]
    v = channel_values(node, c, conv)
    if op in ("Add", "Sub"):
        st.nodes[-1] = ir.Conv2d(conv.weight, conv.bias + (v if op == "Add" else -v) / conv.gain,
                                 conv.window, conv.gain, conv.grid)
        return
    if np.any(v == 0) or not np.all(np.isfinite(v)):
        raise refuse(node, "a zero or non-finite per-channel factor")
    gain = conv.gain * v if op == "Mul" else conv.gain / v
    st.nodes[-1] = ir.Conv2d(conv.weight, conv.bias, conv.window, gain, conv.grid)


# ---------------------------------------------------------------- layout


def Transpose(st, node, perm=()):
    st.check_open(node)
    perm = [int(p) for p in perm]
    dims = st.sample_dims
    if dims is None or len(dims) != 3 or sorted(perm) != [0, 1, 2, 3]:
        raise refuse(node, f"perm {perm}: hwq reads Transpose between NHWC and NCHW 2-D maps only")
    if perm == [0, 1, 2, 3]:
        return
    moves = sum(d > 1 for d in dims) > 1 and not (dims[0] == 1 if perm == [0, 2, 3, 1] else dims[2] == 1)
    if perm == [0, 3, 1, 2]:  # NHWC -> NCHW
        if st.perm is not None:  # back to NCHW after [0, 2, 3, 1]
            st.perm, st.sample_dims = None, (dims[2], dims[0], dims[1])
            return
        if st.nodes:
            raise refuse(node, "perm [0, 3, 1, 2] is read on the model's input only")
        h, w, c = dims
        st.sample_dims = (c, h, w)
        if not moves:  # nothing moves in the flat rows
            st.input_shape = st.sample_dims
            return
        st.nhwc = True  # the next Conv reads (H, W, C) rows (nhwc_conv)
        st.nodes.append(ir.Flatten())
        if st.prelude is not None:  # its per-feature arrays to channel-first order
            st.prelude = tuple(v if v.size == 1 else v.reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
                               for v in st.prelude)
        return
    if perm == [0, 2, 3, 1]:  # NCHW -> NHWC before a flatten
        if st.perm is not None or st.pad_pending is not None:
            raise refuse(node, "perm [0, 2, 3, 1] twice")
        c, h, w = dims
        st.perm = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
        st.sample_dims = (h, w, c)
        return
    raise refuse(node, f"perm {perm}: hwq reads Transpose between NHWC and NCHW 2-D maps only")


def permute_columns(st, node, w: np.ndarray) -> np.ndarray:
    """A dense layer reading ``(H, W, C)``-ordered features: its columns moved to C-order
    ``(C, H, W)``."""
    perm, st.perm = st.perm, None
    if perm is None:
        return w
    if not st.nodes or not isinstance(st.nodes[-1], ir.Flatten) or w.shape[1] != perm.size:
        raise refuse(node, "reads channel-last maps: hwq reads them only flattened into a dense layer")
    out = np.empty_like(w)
    out[:, perm] = w
    return out


def reshape_maps(st, node, shape: np.ndarray, allowzero: int) -> None:
    """``Reshape`` to ``(N, d1, d2, ...)``: the C-order flat sample is unchanged, only its dims."""
    dims = st.sample_dims
    if dims is None or st.perm is not None:
        raise refuse(node, f"to {shape.tolist()}: hwq needs the sample's shape to reshape it (NCHW)")
    rest = [int(d) for d in shape[1:]]
    if not allowzero:
        rest = [dims[i] if d == 0 and i < len(dims) else d for i, d in enumerate(rest)]
    total = int(np.prod(dims))
    if rest.count(-1) == 1:
        known = int(np.prod([d for d in rest if d != -1]))
        rest = [total // known if d == -1 and known and total % known == 0 else d for d in rest]
    if any(d <= 0 for d in rest) or int(np.prod(rest)) != total or shape[0] not in (-1, 0, 1):
        raise refuse(node, f"to {shape.tolist()} does not fit samples of shape {tuple(dims)}")
    if not st.nodes:
        st.input_shape = tuple(rest)
    elif tuple(rest) != tuple(dims):
        st.nodes.append(ir.Flatten())
    st.sample_dims, st.rank = tuple(rest), len(shape)


def shape_of_stream(st, node, start=0, end=None) -> None:
    """``Shape`` of the sample: a constant with ``-1`` for the batch axis (it only feeds the
    shape arithmetic of a flatten: Gather/Slice/Concat -> Reshape)."""
    dims = st.shapes[node.input[0]]
    if dims is None:
        raise refuse(node, "the Shape of the sample needs the input's dimensions")
    full = np.array([-1, *dims], np.int64)
    st.consts[node.output[0]] = full[start:end]


# ---------------------------------------------------------------- truncating average pooling


def stream_grid(st) -> ir.Quantizer | None:
    """The file quantizer of the codes that enter the last pooling (before any max poolings)."""
    for n in reversed(st.nodes[:-1]):
        if isinstance(n, ir.MaxPool2d):
            continue
        return n.quant if isinstance(n, ir.Activation) else None
    return st.input_quant


def truncate(st, node, out_scale: float, scale_in: float | None, shift: float, lo: int, hi: int,
             rounding: str) -> None:
    """Replace the last ``AvgPool2d`` (over ``k`` codes of scale ``s``) by ``SumPool2d(shift)`` and
    carry ``out_scale / s`` to the next linear layer (module docstring)."""
    pool = st.nodes[-1] if st.nodes else None
    if not isinstance(pool, ir.AvgPool2d) or pool.window.padded:
        raise refuse(node, "hwq reads a truncation only right after an unpadded AveragePool "
                           "(Brevitas TruncAvgPool2d)")
    q = stream_grid(st)
    if q is None or q.bits == 1:
        raise refuse(node, "the codes entering the average pooling have no file quantizer (grid)")
    k = pool.window.size
    if scale_in is not None and not math.isclose(scale_in * k, q.scale, rel_tol=1e-5):
        raise refuse(node, f"scale {scale_in:g} is not the pooled codes' scale {q.scale:g} / {k}")
    t = round(shift)
    if not (math.isclose(shift, t, abs_tol=1e-6) and 0 <= t <= 30):
        raise refuse(node, f"a shift of {shift:g} bits is not a whole number in 0..30")
    if (k * q.hi) >> t > hi or (k * q.lo) >> t < lo:
        raise refuse(node, f"the truncated sums ({k} codes in [{q.lo}, {q.hi}], shift {t}) exceed the "
                           f"range [{lo}, {hi}] (clipping is not supported)")
    if rounding != "FLOOR":
        raise refuse(node, f"rounding mode {rounding}: hwq truncates (FLOOR) after an average pooling")
    st.nodes[-1] = ir.SumPool2d(pool.window, t)
    st.carry *= out_scale / q.scale


def Trunc(st, node, rounding_mode="FLOOR", signed=1, narrow=0):
    """QONNX ``Trunc`` (qonnx ``trunc_v1`` with 5 inputs, ``trunc_v2`` with 6):
    ``y = clip(round(x / scale + zp) / 2^t, out range)``, floored, times ``scale`` (v1) or
    ``output_scale`` (v2); ``t = in_bits - out_bits`` (v1) or ``round(log2(output_scale / scale))``."""
    from hwq.ir.codes import code_range

    scale = float(np.asarray(st.const(node, node.input[1])).reshape(-1)[0])
    if np.any(np.asarray(st.const(node, node.input[2])) != 0):
        raise refuse(node, "a non-zero zero point is not supported")
    in_bits = float(np.asarray(st.const(node, node.input[3])).reshape(-1)[0])
    if len(node.input) > 5 and node.input[5]:
        out_scale = float(np.asarray(st.const(node, node.input[4])).reshape(-1)[0])
        out_bits = float(np.asarray(st.const(node, node.input[5])).reshape(-1)[0])
        shift = math.log2(out_scale / scale) if scale > 0 and out_scale > 0 else float("nan")
        shift = float(round(shift)) if math.isfinite(shift) else shift
    else:
        out_bits = float(np.asarray(st.const(node, node.input[4])).reshape(-1)[0])
        out_scale, shift = scale, in_bits - out_bits
    if not (scale > 0 and out_scale > 0 and out_bits == int(out_bits) and 1 <= out_bits <= 32):
        raise refuse(node, "scales must be positive and the output bit width a whole number")
    lo, hi = code_range(int(out_bits), bool(signed), bool(narrow))
    mode = (rounding_mode.decode() if isinstance(rounding_mode, bytes) else rounding_mode).upper()
    truncate(st, node, out_scale, scale, shift, lo, hi, mode)
    st.notes.append(f"'{node.name}': AveragePool + Trunc read as a truncating sum pooling (shift "
                    f"{st.nodes[-1].shift})")


def quant_after_avgpool(st, node, quant: ir.Quantizer) -> None:
    """A QCDQ quantizer right after an ``AveragePool`` (Brevitas ``TruncAvgPool2d`` exported
    QCDQ): read as Brevitas' truncation; onnxruntime rounds half to even there instead."""
    pool = st.nodes[-1]
    q = stream_grid(st)
    if q is None:
        raise refuse(node, "a quantizer after an average pooling of codes without a file grid")
    shift = math.log2(quant.scale * pool.window.size / q.scale) if quant.scale > 0 else float("nan")
    truncate(st, node, quant.scale, None, shift, quant.lo, quant.hi, "FLOOR")
    st.notes.append(f"'{node.name}': a quantizer after AveragePool read as Brevitas' truncating sum "
                    f"pooling (floor, shift {st.nodes[-1].shift}); onnxruntime rounds half to even here")


OPS = {f.__name__: f for f in (Conv, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean,
                               ReduceMax, Pad, BatchNormalization, Transpose)}
