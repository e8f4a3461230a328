"""The convolutional nodes of the NIR export (``hwq/files/nir.py``): ``Conv2d``, the pools,
``Flatten`` and the activations over maps, and the integer fields they carry as metadata.

NIR types carry no batch axis: maps are ``(C, H, W)``, flattened in C-order (``Flatten(start_dim=0)``,
``(c, y, x) -> (c H + y) W + x``, hwq's sample order) where a dense layer reads them.

==============  =====================================================================================
convolution     ``Conv2d(input_shape=(H, W), weight, stride, padding=(top, left), dilation, groups,
                bias)``: ``weight = (gain W weight_scale).reshape(C_out, C_in / groups, kh, kw)`` (the
                patch order ``k = (c kh + i) kw + j``), ``bias = acc_scale b``: a cross-correlation
                of the real inputs ``x = code in_scale`` giving ``z = acc_scale acc``, exactly
                hwq's accumulator in real units (padding reads 0, real zero). NIR pads
                symmetrically: pads with ``top != bottom`` or ``left != right`` are refused.
                NIR 1.0.8 types a Conv2d's input as ``(weight.shape[1], H, W)`` (``C_in / groups``
                where grouped: ``nir.read`` would reject it) and infers both output axes from
                ``kh``: a grouped convolution is written ungrouped (``groups = 1``, zero weights
                outside each group's block: the same sums), a non-square kernel whose width
                gives another output size is refused. The metadata keeps the window's groups.
max pooling     exact only on binary codes: after a step (or sign) layer's ``Threshold(0)``,
                ``max = [sum > 0]``: ``SumPool2d`` then ``Threshold(0)`` (padding adds 0; every
                window touches the image). Sign's ``+-s`` follows the pool (``2 s t - s``).
                Max pooling of graded codes is refused: NIR has no max pooling.
avg pooling     hwq: ``floor((s M + 2^(S-1)) / 2^S)`` codes of ``out_scale``, i.e. about
                ``alpha s in_scale`` with ``alpha = M / 2^S out_scale / in_scale`` per channel.
                ``AvgPool2d`` where ``alpha = 1 / (kh kw)`` and the window is unpadded (NIR does
                not say whether a padded window's divisor counts the padding; hwq's does), else
                ``SumPool2d`` then ``Scale(alpha)``. Approximate: NIR does not round (the integer
                codes in the metadata are exact).
sign on maps    ``Threshold(0)`` then a 1x1 ``Conv2d`` (weight ``2 s I``, bias ``-s``): NIR's ``Affine``
                reads vectors only (and a depthwise one would meet the groups typing above).
step            ``Threshold(0)`` gives 1.0; where the next node's ``in_scale`` ``s`` is not 1, a
                ``Scale(s)`` follows (the real value of code 1).
==============  =====================================================================================
"""

from __future__ import annotations

import numpy as np

from hwq.errors import FileFormatError, UsageError
from hwq.ir.window import Window
from hwq.quant.qnet import QLayer, QPool, Requant

WINDOW_KEYS = ("in_shape", "kernel", "stride", "pads", "dilation")
RTOL = 1e-12


def window_metadata(win: Window) -> dict:
    """The window's integer geometry (int64 arrays; ``groups`` a scalar)."""
    meta = {key: np.array(getattr(win, key), np.int64) for key in WINDOW_KEYS}
    meta["groups"] = np.int64(win.groups)
    return meta


def read_window(meta: dict) -> Window:
    """The ``Window`` of a node's metadata (``window_metadata``); validated by ``QuantizedNetwork.validate``."""
    fields = {}
    for key in WINDOW_KEYS:
        a = np.asarray(meta[key])
        if a.dtype.kind not in "iu" or a.ndim != 1:
            raise FileFormatError(f"window {key} should be integers, found {a.dtype} {a.shape}")
        fields[key] = tuple(int(v) for v in a)
    groups = np.asarray(meta["groups"])
    if groups.dtype.kind not in "iu" or groups.shape != ():
        raise FileFormatError(f"window groups should be one integer, found {groups.dtype} {groups.shape}")
    return Window(fields["in_shape"], fields["kernel"], fields["stride"], fields["pads"], fields["dilation"],
                  int(groups))


def symmetric_padding(win: Window, i: int) -> tuple[int, int]:
    """``(top, left)`` where NIR can say the pads (one per axis, both sides), else ``UsageError``."""
    top, left, bottom, right = win.pads
    if top != bottom or left != right:
        raise UsageError(f"layer {i}: NIR pads symmetrically (one padding per axis); pads (top, left, bottom, "
                         f"right) = {win.pads} are not symmetric",
                         hint="export --format onnx, or train with symmetric padding")
    return int(top), int(left)


def conv_node(layer: QLayer, i: int, metadata: dict):
    """The ``Conv2d`` of convolution layer ``i`` (module docstring); refused where NIR's own
    shape inference disagrees with the window (NIR 1.0.8 infers both output axes from the
    kernel height: a non-square kernel whose width gives another size)."""
    import nir

    win = layer.window
    weight = ungrouped((layer.gain * layer.weight * layer.weight_scale[:, None]).reshape(
        layer.weight.shape[0], win.group_channels, *win.kernel), win.groups)
    node = nir.Conv2d(input_shape=tuple(int(v) for v in win.in_shape[1:]), weight=weight,
                      stride=tuple(int(v) for v in win.stride), padding=symmetric_padding(win, i),
                      dilation=tuple(int(v) for v in win.dilation), groups=1,
                      bias=layer.acc_scale * layer.bias, metadata=metadata)
    inferred = tuple(int(v) for v in node.output_type["output"])
    if inferred != layer.out_shape:
        raise UsageError(f"layer {i}: NIR infers this Conv2d's output as {inferred}, not {layer.out_shape} "
                         f"(its shape inference reads the kernel height for both axes; kernel {win.kernel}); "
                         "NIR readers would reject the file",
                         hint="export --format onnx, or use square kernels")
    return node


def ungrouped(weight: np.ndarray, groups: int) -> np.ndarray:
    """The ``(C_out, C_in, kh, kw)`` weight of a grouped ``(C_out, C_in / groups, kh, kw)`` one:
    output channel ``o`` of group ``g = o // (C_out / groups)`` keeps its weights on input
    channels ``g cg .. (g + 1) cg - 1`` and zeros elsewhere (the same sums)."""
    if groups == 1:
        return weight
    c_out, cg = weight.shape[:2]
    full = np.zeros((c_out, cg * groups, *weight.shape[2:]))
    per_group = c_out // groups
    for o in range(c_out):
        g = o // per_group
        full[o, g * cg:(g + 1) * cg] = weight[o]
    return full


def pool_scale(pool: QPool) -> np.ndarray:
    """``alpha`` per channel: the real output of one unit of the window's real sum."""
    rq = pool.requant
    return rq.multiplier / 2.0 ** rq.shift * (pool.out_scale / pool.in_scale)


def pool_nodes(pool: QPool, i: int, after_binary: bool, metadata: dict) -> list[tuple[str, object]]:
    """The NIR nodes of pooling ``i`` as ``(name suffix, node)`` (module docstring); the first
    carries ``metadata``. ``after_binary``: the pool reads step/sign codes (0/1 after Threshold)."""
    import nir

    win = pool.window
    kernel, stride = np.array(win.kernel, np.int64), np.array(win.stride, np.int64)
    padding = np.array(symmetric_padding(win, i), np.int64)
    if pool.op == "max":
        if not after_binary:
            raise UsageError(f"layer {i}: NIR has no max pooling (exact here only on the binary codes of a "
                             "step or sign layer: a sum pool then Threshold(0))",
                             hint="export --format onnx, or use average pooling")
        return [("", nir.SumPool2d(kernel, stride, padding, metadata=metadata)),
                (".threshold", nir.Threshold(threshold=np.zeros(pool.out_shape)))]
    alpha = pool_scale(pool)
    if not win.padded and np.allclose(alpha * win.size, 1.0, rtol=RTOL, atol=0):
        return [("", nir.AvgPool2d(kernel, stride, padding, metadata=metadata))]
    nodes = [("", nir.SumPool2d(kernel, stride, padding, metadata=metadata))]
    if not np.all(alpha == 1.0):
        nodes.append((".scale", nir.Scale(scale=np.broadcast_to(alpha[:, None, None], pool.out_shape).copy())))
    return nodes


def sign_node(shape: tuple[int, ...], s: float):
    """``2 s t - s`` on the 0/1 outputs of ``Threshold(0)``: an ``Affine`` on vectors, a 1x1
    ``Conv2d`` on maps ``(C, H, W)``."""
    import nir

    if len(shape) == 1:
        n = shape[0]
        return nir.Affine(weight=2 * s * np.eye(n), bias=np.full(n, -s))
    c = shape[0]
    return nir.Conv2d(input_shape=tuple(shape[1:]), weight=(2 * s * np.eye(c))[:, :, None, None], stride=(1, 1),
                      padding=(0, 0), dilation=(1, 1), groups=1, bias=np.full(c, -s))


def pool_metadata(pool: QPool) -> dict:
    meta = {"op": pool.op, "truncate": np.int64(bool(pool.truncate)), "in_scale": float(pool.in_scale),
            "out_scale": float(pool.out_scale), "in_max": str(int(pool.in_max)), **window_metadata(pool.window)}
    if pool.requant is not None:
        meta.update(requant_multiplier=pool.requant.multiplier.copy(), requant_shift=pool.requant.shift.copy())
    return meta


def read_pool(meta: dict, integers, text) -> QPool:
    """The ``QPool`` of a pool node's metadata (``pool_metadata``)."""
    requant = None
    if "requant_multiplier" in meta:
        requant = Requant(integers(meta, "requant_multiplier"), integers(meta, "requant_shift"))
    truncate = int(np.asarray(meta["truncate"]))
    if truncate not in (0, 1):
        raise FileFormatError(f"pool truncate should be 0 or 1, found {truncate}")
    return QPool(text(meta["op"]), read_window(meta), requant, bool(truncate), float(meta["in_scale"]),
                 float(meta["out_scale"]), int(text(meta["in_max"])))
