"""A windowed loihi layer (a convolution, or a pooling mapped as a ones kernel) as a lava-dl netx
``conv`` layer: the fields netx reads and the layout it expects (targets/loihi/netx.py).

What netx does with them (lava-dl 0.6.0 ``src/lava/lib/dl/netx/hdf5.py``, ``create_conv``;
the same layout lava-dl's own exporter writes, ``slayer/block/base.py`` ``AbstractConv.export_hdf5``):

* ``shape`` (C, H, W) is read reversed as Lava's (x, y, z) = (W, H, C);
* ``weight`` (C_out, C_in / groups, kH, kW), PyTorch's cross-correlation layout, is flipped
  (``weight[:, :, ::-1, ::-1]``) and transposed to Lava's (C_out, W, H, C_in / groups) for
  ``lava.proc.conv``'s true convolution: the flip makes the two the same sum;
* ``stride``, ``padding``, ``dilation`` (H, W) are read reversed as (x, y); Lava pads both sides
  alike (``np.pad(..., ((px, px), (py, py), (0, 0)))`` in ``lava/proc/conv/utils.py``);
* ``groups`` an integer; ``bias`` one ``bias_mant`` per output channel (broadcast over the
  positions by ``AbstractBlock._neuron``);
* the weights go to Lava's ``Conv`` as they are: netx calls no ``optimize_weight_bits`` for a
  convolution, and Lava's ``Conv`` stores ``weight_exp`` but never applies it (Lava issue #803).
  So a convolution is exported only where hwq's synapse groups add up to plain integer weights
  (every exponent >= 0: no shift) that one 8-bit synapse holds.

A pooling hwq maps onto Loihi (docs/loihi.md section 9) is a step layer over a ones kernel, one
channel per group; netx has no pooling layer (``create_pool`` raises ``NotImplementedError``),
so it is written as what it computes: a depthwise ``conv`` (``groups`` = channels) of ones
with the same LIF neurons.
"""

from __future__ import annotations

import numpy as np

from hwq.errors import TargetError

from .mapping import LayerMap


def conv_fields(lm: LayerMap, weight: np.ndarray, i: int) -> dict:
    """The netx ``conv`` fields of windowed layer ``i`` whose effective integer weights are
    ``weight`` (C_out, patch), patch index ``(c kh + i) kw + j`` (hwq.ir.window)."""
    win = lm.window
    top, left, bottom, right = win.pads
    if (top, left) != (bottom, right):
        raise TargetError(f"layer {i}: padding (top, left, bottom, right) {win.pads} is asymmetric, and netx's "
                          "conv layers pad both sides alike (Lava Conv's padding (x, y))",
                          hint="use symmetric pads, or export as onnx/nir")
    c_out = weight.shape[0]
    kh, kw = win.kernel
    ho, wo = win.out_hw
    return {"type": "conv",
            "shape": np.array([c_out, ho, wo], np.int64),
            "inChannels": win.channels, "outChannels": c_out,
            "kernelSize": np.array(win.kernel, np.int64),
            "stride": np.array(win.stride, np.int64),
            "padding": np.array([top, left], np.int64),
            "dilation": np.array(win.dilation, np.int64),
            "groups": int(win.groups),
            "weight": np.asarray(weight, np.int64).reshape(c_out, win.group_channels, kh, kw)}
