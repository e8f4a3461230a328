"""Float IR -> quantized integer network (post-training, or keeping QAT grids exactly).

Steps, per layer in order: weights to codes (kept exactly when they already sit on the
requested grid), bias aligned to the accumulator (``b_q = rint(b / (s_in * s_w))``, ties to
even), then the activation's output format, calibrated on sample inputs. A report records the
format, max error and clip count of every tensor instead of printing warnings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np

from hwq import ir
from hwq.errors import InvalidModelError, UsageError
from hwq.ir import activations
from hwq.quant.bounds import MAX_SHIFT, check_layers
from hwq.quant.qnet import (
    SIGMOID_INDEX_BITS,
    SIGMOID_LUT_HALF,
    SIGMOID_STEP,
    InputFormat,
    QLayer,
    QuantizedNetwork,
    QuantSettings,
    Requant,
    TensorReport,
)
from hwq.quant.schemes import check_bits, get_scheme

MULTIPLIER_BITS = 16
FILE_MULTIPLIER_BITS = 24  # a file's own quantizer: as fine as its float32 requantization
ON_GRID_TOLERANCE = 1e-6


def input_format(x_calib: np.ndarray, bounds, bits: int) -> InputFormat:
    """Unsigned ``bits``-bit codes over [0, hi] for non-negative bounded data (images:
    1/255), otherwise signed fixed point with power-of-two steps covering max |x|."""
    if bounds is not None and bounds[0] >= 0:
        return InputFormat(bits, False, (2**bits - 1) / float(bounds[1]), tuple(bounds))
    peak = float(np.max(np.abs(x_calib))) if x_calib.size else 1.0
    peak = max(peak, 2.0**-20)
    frac = bits - 1 - math.ceil(math.log2(peak * (1 + 2.0 ** -(bits - 1))))
    return InputFormat(bits, True, 2.0**frac, None if bounds is None else tuple(bounds))


def file_input_format(quant, bounds) -> InputFormat | None:
    """The input format of a QAT file's input quantizer: ``x_q = clip(round(x / scale))``
    becomes ``inv_scale = 1 / scale`` (hwq rounds half up in float64; the file half to even
    in float32: they differ only where ``x / scale`` is within float32 rounding of a tie)."""
    if quant is None:
        return None
    return InputFormat(quant.bits, quant.signed, 1.0 / quant.scale, None if bounds is None else tuple(bounds))


def requant_for(ratio: np.ndarray, acc_bound: int, bits: int = MULTIPLIER_BITS) -> Requant:
    """Integer ``M / 2^S`` closest to each ``ratio`` with a ``bits``-bit M, trailing
    zeros of M folded into S (a power-of-two ratio becomes a pure shift)."""
    ratio = np.asarray(ratio, dtype=np.float64)
    exp = np.floor(np.log2(ratio)).astype(np.int64)
    shift = np.clip(bits - 1 - exp, 0, MAX_SHIFT)  # tiny ratios: M rounds toward 0
    mult = np.rint(ratio * 2.0**shift).astype(np.int64)
    while np.any((mult % 2 == 0) & (shift > 0) & (mult > 0)):
        even = (mult % 2 == 0) & (shift > 0) & (mult > 0)
        mult = np.where(even, mult // 2, mult)
        shift = np.where(even, shift - 1, shift)
    if acc_bound * int(mult.max()) >= 2**62:
        raise InvalidModelError("requantization would overflow 64 bits; use fewer bits")
    return Requant(mult, shift)


def weight_codes(affine: ir.Affine, settings: QuantSettings, last: bool):
    """Codes and per-row scales for one weight matrix, and whether they were already on grid."""
    scheme = get_scheme(settings.scheme)
    w = affine.weight
    rows = w.shape[0]
    if affine.grid is not None and len(affine.grid.weight_scale) in (1, rows):
        scale = np.broadcast_to(np.array(affine.grid.weight_scale), (rows,)).astype(float)
        codes = np.rint(w / scale[:, None])
        exact = np.allclose(codes * scale[:, None], w, rtol=0, atol=ON_GRID_TOLERANCE * scale.max())
        if exact and affine.grid.bits <= settings.bits and (not last or len(set(scale)) == 1):
            return codes.astype(np.int64), scale, True
    unit = scheme.unit_scale(settings.bits)
    codes = scheme.to_codes(w / unit, settings.bits)
    if np.allclose(codes * unit, w, rtol=0, atol=ON_GRID_TOLERANCE * unit):
        return codes, np.full(rows, unit), True
    per_row = settings.per_channel and not last  # argmax needs one scale at the output
    scale = scheme.ptq_scale(w, settings.bits, axis=0 if per_row else None)
    scale = np.broadcast_to(scale, (rows,)).astype(float)
    return scheme.to_codes(w / scale[:, None], settings.bits), scale, False


def clipped_count(w: np.ndarray, scale: np.ndarray, settings: QuantSettings) -> int:
    top = get_scheme(settings.scheme).max_code(settings.bits)
    return int(np.sum(np.abs(w / scale[:, None]) > top + 0.5))


def weight_format(affine, codes, on_grid, settings) -> str:
    """The report's format of one weight matrix: the bits its codes really use when they were
    kept from a QAT grid, with a note when ``--bits`` re-quantized a finer grid."""
    grid = affine.grid
    if on_grid and grid is not None:
        fmt = f"{settings.scheme} q={min(grid.bits, settings.bits)}"
    else:
        fmt = f"{settings.scheme} q={settings.bits}"
        if grid is not None and grid.bits > settings.bits:
            fmt += f" (re-quantized from the file's q={grid.bits} grid)"
    return fmt


def act_format(act: str, quant, settings: QuantSettings) -> tuple[int, float | None]:
    """Bits and scale of a ReLU/sigmoid output: the file's quantizer (QAT), else
    ``act_bits`` with a calibrated scale (None). A signed quantizer on a non-negative output
    uses its non-negative half: ``b - 1`` bits."""
    if quant is None:
        return settings.act_bits, None
    bits = quant.bits - 1 if quant.signed else quant.bits
    if not 1 <= bits <= 16:
        raise InvalidModelError(f"a {quant.name} quantizer after {act} leaves {bits} bits")
    return bits, quant.scale


def quantize_layer(affine, act, in_fmt_scale, in_max, x_float, settings, last, index, quant=None):
    """Quantize one (affine, activation) pair; returns (QLayer, reports, float output,
    the next layer's input scale, its largest |input code|). ``quant`` is the activation's
    quantizer from the file (QAT), if any."""
    # the output layer, and a hidden layer without activation (its accumulator feeds the next
    # layer directly), need one scale for the whole row vector
    kind = activations.kind(act)
    codes, w_scale, on_grid = weight_codes(affine, settings, last or kind.passes_accumulator)
    acc_unit = in_fmt_scale * w_scale
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        bias_codes = np.rint(affine.bias / acc_unit)
    if not np.all(np.abs(bias_codes) < 2.0**62):
        raise InvalidModelError(f"layer {index}: a bias does not fit the 64-bit accumulator",
                                hint="the weight or input scale is too small for this bias")
    bias = bias_codes.astype(np.int64)
    name = f"layer{index}"
    w_err = float(np.max(np.abs(codes * w_scale[:, None] - affine.weight), initial=0))
    b_err = float(np.max(np.abs(bias * acc_unit - affine.bias), initial=0))
    fmt = weight_format(affine, codes, on_grid, settings) + (" per-channel" if len(set(w_scale)) > 1 else "")
    reports = [
        TensorReport(f"{name}.weight", fmt, w_err, clipped_count(affine.weight, w_scale, settings), on_grid),
        TensorReport(f"{name}.bias", f"int64 x {acc_unit.min():.3g}", b_err, 0, b_err < 1e-9),
    ]
    layer = QLayer(codes, bias, w_scale, in_fmt_scale, affine.gain, act, in_max=in_max)
    z = affine.gain * (x_float @ (codes * w_scale[:, None]).T + bias * acc_unit)
    h = activations.forward(act, z)
    if kind is activations.STEP:
        return layer, reports, h, 1.0, 1
    if kind is activations.SIGN:  # +-1 codes; a bipolar quantizer's scale is the real value of +1
        out = 1.0 if quant is None else quant.scale
        reports.append(TensorReport(f"{name}.sign", "+-1" + (f" x {out:.4g}" if out != 1 else ""), 0.0, 0,
                                    quant is not None))
        return layer, reports, h * out, out, 1
    if kind.passes_accumulator:  # the accumulator itself is the next layer's input
        return layer, reports, h, float(layer.acc_scale[0]), layer.acc_bound
    act_bits, file_scale = act_format(act, quant, settings)
    levels = 2**act_bits - 1
    src = " (file)" if quant is not None else ""
    if kind is activations.RELU:
        peak = float(np.max(h)) if h.size else 1.0
        out_scale = file_scale or (peak if peak > 0 else 1.0) / levels
        mbits = MULTIPLIER_BITS if quant is None else FILE_MULTIPLIER_BITS
        rq = requant_for(layer.acc_scale / out_scale, layer.acc_bound, mbits)
        q = np.rint(h / out_scale)
        err = float(np.max(np.abs(np.clip(q, 0, levels) * out_scale - h), initial=0))
        reports.append(TensorReport(f"{name}.relu", f"u{act_bits} x {out_scale:.3g}{src}", err,
                                    int(np.sum(q > levels)), quant is not None))
        lut = None
    else:  # sigmoid: index z in [-8, 8) with step 2^-8, then a lookup table
        half = SIGMOID_LUT_HALF
        rq = requant_for(layer.acc_scale / SIGMOID_STEP, layer.acc_bound)
        grid_z = (np.arange(2 * half) - half) * SIGMOID_STEP
        out_scale = file_scale or 1.0 / levels
        lut = np.clip(np.rint(activations.sigmoid(grid_z) / out_scale), 0, levels).astype(np.int64)
        lut_format = f"LUT 2^{SIGMOID_INDEX_BITS} -> u{act_bits} x {out_scale:.4g}{src}"
        index = np.clip(np.floor(z / SIGMOID_STEP + 0.5), -half, half - 1).astype(np.int64) + half
        err = float(np.max(np.abs(lut[index] * out_scale - h), initial=0))  # measured on calibration
        reports.append(TensorReport(f"{name}.sigmoid", lut_format, err, 0, quant is not None))
    layer = QLayer(codes, bias, w_scale, in_fmt_scale, affine.gain, act, act_bits, rq, lut, out_scale, in_max)
    return layer, reports, np.clip(np.rint(h / out_scale), 0, levels) * out_scale, out_scale, levels


def quantize(graph: ir.Graph, settings: QuantSettings, x_calib: np.ndarray, bounds=None) -> QuantizedNetwork:
    """Quantize ``graph`` with ``settings``; ``x_calib`` (N, features) calibrates the input and
    activation formats; ``bounds`` is the data's valid range ((0, 1) for images)."""
    check_bits(settings.bits)
    get_scheme(settings.scheme)
    if not 1 <= settings.act_bits <= 16 or not 2 <= settings.input_bits <= 16:
        raise UsageError("activation bits must be in 1..16 and input bits in 2..16")
    x_calib = np.asarray(x_calib, dtype=np.float64).reshape(len(x_calib), -1)
    if not settings.calibration:
        settings = dataclasses.replace(settings, calibration=describe_calibration(x_calib))
    pairs = graph.layers()
    if x_calib.shape[1] != pairs[0][0].n_in:
        raise UsageError(f"calibration data has {x_calib.shape[1]} features, the model expects {pairs[0][0].n_in}")
    fmt = file_input_format(graph.input_quant, bounds) or input_format(x_calib, bounds, settings.input_bits)
    from hwq.quant.reference import quantize_input

    x = quantize_input(fmt, x_calib) * fmt.scale
    scale, in_max = fmt.scale, max(abs(fmt.qmin), fmt.qmax)
    in_src = " (file)" if graph.input_quant is not None else ""
    layers, reports = [], [TensorReport("input", fmt.name + in_src, 0.5 * fmt.scale, 0, bool(in_src))]
    quants = graph.activation_quants()
    for i, (affine, act) in enumerate(pairs):
        last = i == len(pairs) - 1
        layer, rep, x, scale, in_max = quantize_layer(affine, act, scale, in_max, x, settings, last, i,
                                                      quants[i])
        layers.append(layer)
        reports.extend(rep)
    output = "sign" if graph.output.kind == "sigmoid" else "argmax"
    check_layers(layers, fmt.qmin, fmt.qmax)  # no int64 intermediate wraps, or refused
    return QuantizedNetwork(fmt, tuple(layers), output, true_bits(settings, graph, reports), graph,
                            tuple(reports))


def describe_calibration(x_calib: np.ndarray) -> str:
    """``N samples, sha256 <16 hex>`` of the float64 calibration array: two quantizations
    used the same data iff these agree (stored in the settings, shown by ``hwq info``)."""
    digest = hashlib.sha256(np.ascontiguousarray(x_calib, dtype=np.float64).tobytes()).hexdigest()
    return f"{len(x_calib)} samples, sha256 {digest[:16]}"


def true_bits(settings: QuantSettings, graph: ir.Graph, reports) -> QuantSettings:
    """A ``--bits`` above the file's QAT grids keeps their codes: record the bits they use
    (ternary codes stay q=2, not the requested q=4)."""
    weights = [r for r in reports if r.tensor.endswith(".weight")]
    grids = [a.grid for a in graph.affines]
    if weights and all(r.on_grid for r in weights) and all(g is not None for g in grids):
        return dataclasses.replace(settings, bits=min(settings.bits, max(g.bits for g in grids)))
    return settings
