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
from dataclasses import dataclass

import numpy as np

from hwq import ir
from hwq.errors import InvalidModelError, UsageError
from hwq.ir import activations, evaluate, float_ops
from hwq.ir.codes import container
from hwq.ir.conv import MaxPool2d, SumPool2d
from hwq.quant.bounds import MAX_SHIFT, check_layers, check_pool
from hwq.quant.qnet import (
    SIGMOID_INDEX_BITS,
    SIGMOID_LUT_HALF,
    SIGMOID_STEP,
    InputFormat,
    QLayer,
    QPool,
    QuantizedNetwork,
    QuantSettings,
    Requant,
    TensorReport,
)
from hwq.quant.reference import pool, quantize_input
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


def weight_codes(w: np.ndarray, grid, settings: QuantSettings, one_scale: bool, per_row: bool):
    """Codes and per-row scales for one weight matrix ``w`` (out channels x patch length), and
    whether they were already on grid: the file's ``grid`` where ``w`` sits on it, else the
    scheme's unit grid, else post-training scales (per row where ``per_row``). ``one_scale``: the
    layer needs one scale for all rows (the output layer's argmax, an accumulator passed on)."""
    scheme = get_scheme(settings.scheme)
    rows = w.shape[0]
    if grid is not None and len(grid.weight_scale) in (1, rows):
        scale = np.broadcast_to(np.array(grid.weight_scale), (rows,)).astype(float)
        codes = np.rint(w / scale[:, None])
        exact = np.allclose(codes * scale[:, None], w, rtol=0, atol=ON_GRID_TOLERANCE * scale.max())
        if exact and grid.bits <= settings.bits and (not one_scale or len(set(scale)) == 1):
            return codes.astype(np.int64), scale, True
    unit = scheme.unit_scale(settings.bits)
    codes = scheme.to_codes(w / unit, settings.bits)
    if np.allclose(codes * unit, w, rtol=0, atol=ON_GRID_TOLERANCE * unit):
        return codes, np.full(rows, unit), True
    per_row = per_row and not one_scale  # argmax needs one scale at the output
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
    codes, w_scale, on_grid = weight_codes(affine.weight, affine.grid, settings, last or kind.passes_accumulator,
                                           settings.per_channel)
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
    z = float_ops.dense(x_float, codes * w_scale[:, None], bias * acc_unit, affine.gain)
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
    if isinstance(kind, activations.Clip):  # the scale puts the clip bounds on the code grid
        clo, chi, out_scale = kind.grid(act_bits)
        rq = requant_for(layer.acc_scale / out_scale, layer.acc_bound)
        q = np.clip(np.rint(h / out_scale), clo, chi)
        reports.append(clip_report(name, kind, act_bits, q, h))
        layer = QLayer(codes, bias, w_scale, in_fmt_scale, affine.gain, act, act_bits, rq, None, out_scale, in_max)
        return layer, reports, q * out_scale, out_scale, max(-clo, chi)
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


def clip_report(name: str, kind, act_bits: int, q: np.ndarray, h: np.ndarray) -> TensorReport:
    """The report of a clipped activation's codes ``q`` for real outputs ``h``: the format (noting a
    bound off the code grid, ``activations.clip_grid``) and the largest error."""
    clo, chi, scale = kind.grid(act_bits)
    off = max(abs(clo * scale - kind.lo), abs(chi * scale - kind.hi))
    signed = "s" if clo < 0 else "u"
    fmt = f"{kind.name}: {signed}{act_bits} codes [{clo}, {chi}] x {scale:.4g}"
    if off > activations.GRID_TOLERANCE * max(kind.hi, -kind.lo):
        fmt += f" (a bound is {off:.3g} off the grid)"
    err = float(np.max(np.abs(q * scale - h), initial=0))
    return TensorReport(f"{name}.clip", fmt, err, 0, False)  # calibrated by hwq, not a file's grid


CHUNK_VALUES = 2**22  # float64 patch values per calibration chunk of a convolution (32 MB)


@dataclass
class Samples:
    """The calibration samples at a stage's input as the integer network carries them: ``codes``
    (N, features; real value ``codes * scale``), or the real ``values`` where a layer passes its
    accumulator on. ``lo, hi``: the code range the walk gives this stage; ``in_max``: the largest
    |code| the stage is told it receives (``QLayer.in_max``)."""

    scale: float
    lo: int
    hi: int
    in_max: int
    codes: np.ndarray | None = None
    values: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.codes if self.values is None else self.values)

    def real(self, rows=slice(None)) -> np.ndarray:
        if self.values is not None:
            return self.values[rows]
        return self.codes[rows].astype(np.float64) * self.scale


def compact(codes: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``codes`` in the narrowest integer type holding ``[lo, hi]`` (calibration maps stay small)."""
    return codes.astype(container(lo, hi))


def chunks(n: int, per_sample: int):
    """Row slices of the calibration samples, about ``CHUNK_VALUES`` values each."""
    step = max(1, CHUNK_VALUES // max(1, per_sample))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def quantize_conv(conv, act, samples: Samples, settings, last, index, quant=None):
    """Quantize one convolution and its activation; returns (QLayer, reports, the next stage's
    Samples). Per-channel weight scales (as Brevitas), except where the layer needs one scale
    (the output, an accumulator passed on) or ``settings.conv_per_channel`` is off (and
    ``per_channel`` too: one scale per layer, as Loihi's ReLU layers need). The channel scale ``gain`` (a folded
    BatchNorm) goes
    into ``weight_scale``, not into the codes, so QAT codes stay on their grid; a negative gain
    flips that channel's codes. Where one scale is needed and the |gain| differ, the gains are
    folded into the weights instead (re-quantized; the report says so)."""
    kind = activations.kind(act)
    one = last or kind.passes_accumulator or not (settings.per_channel or settings.conv_per_channel)
    name = f"layer{index}"
    gain = np.asarray(conv.gain, dtype=np.float64)
    w, grid = conv.matrix, conv.grid
    folded = one and len(set(np.abs(gain).tolist())) > 1
    if folded:  # one scale for all channels: the channel scales go into the weights
        w, grid, gain_in_scale = w * gain[:, None], None, np.ones_like(gain)
    else:
        gain_in_scale = gain
    codes, s, on_grid = weight_codes(w, grid, settings, one, True)
    flip = np.where(gain_in_scale < 0, -1, 1).astype(np.int64)
    w_scale = np.abs(gain_in_scale) * s
    real_w = codes * flip[:, None] * w_scale[:, None]  # = gain * W on the grid
    real_b = gain * conv.bias
    acc_unit = samples.scale * w_scale
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        bias_codes = np.rint(real_b / acc_unit)
    if not np.all(np.abs(bias_codes) < 2.0**62):
        raise InvalidModelError(f"layer {index}: a bias does not fit the 64-bit accumulator",
                                hint="the weight or input scale is too small for this bias")
    bias = bias_codes.astype(np.int64)
    fmt = weight_format(conv, codes, on_grid, settings) + (" per-channel" if len(set(w_scale)) > 1 else "")
    if folded:
        fmt += " (channel scales folded into the weights: one scale for the layer)"
    elif np.any(gain != 1):
        flipped = int(np.sum(gain < 0))
        fmt += " x channel scale" + (f", {flipped} channel{'s' if flipped > 1 else ''} flipped" if flipped else "")
    w_err = float(np.max(np.abs(codes * s[:, None] - w), initial=0))
    b_err = float(np.max(np.abs(bias * acc_unit - real_b), initial=0))
    reports = [TensorReport(f"{name}.weight", fmt, w_err, clipped_count(w, s, settings), on_grid),
               TensorReport(f"{name}.bias", f"int64 x {acc_unit.min():.3g}", b_err, 0, b_err < 1e-9)]
    layer = QLayer(codes * flip[:, None], bias, w_scale, samples.scale, 1.0, act, in_max=samples.in_max,
                   window=conv.window)
    n = len(samples)
    parts = chunks(n, conv.window.groups * conv.window.positions * conv.window.patch_len)

    def outputs():
        for rows in parts:
            z = float_ops.conv(conv.window, real_w, samples.real(rows), bias * acc_unit, order="matmul")
            yield rows, z, activations.forward(act, z)

    def codes_of(values, lo, hi):
        return compact(values.reshape(len(values), -1), lo, hi)

    if kind.binary:
        out = 1.0 if quant is None or kind is activations.STEP else quant.scale
        got = [codes_of(np.rint(h), -1, 1) for _, _, h in outputs()]
        if kind is activations.SIGN:
            reports.append(TensorReport(f"{name}.sign", "+-1" + (f" x {out:.4g}" if out != 1 else ""), 0.0, 0,
                                        quant is not None))
        lo, hi = layer.out_range(samples.lo, samples.hi)
        return layer, reports, Samples(out, lo, hi, 1, codes=np.concatenate(got))
    if kind.passes_accumulator:  # the accumulator itself is the next stage's input
        lo, hi = layer.out_range(samples.lo, samples.hi)
        values = np.concatenate([h.reshape(len(h), -1) for _, _, h in outputs()])
        return layer, reports, Samples(float(layer.acc_scale[0]), lo, hi, max(-lo, hi), values=values)
    act_bits, file_scale = act_format(act, quant, settings)
    levels = 2**act_bits - 1
    src = " (file)" if quant is not None else ""
    mbits = MULTIPLIER_BITS if quant is None else FILE_MULTIPLIER_BITS
    lut = None
    if isinstance(kind, activations.Clip):  # the scale puts the clip bounds on the code grid
        clo, chi, out_scale = kind.grid(act_bits)
        rq = requant_for(layer.acc_scale / out_scale, layer.acc_bound)
        got, err = [], 0.0
        for _, _, h in outputs():
            q = np.clip(np.rint(h / out_scale), clo, chi)
            err = max(err, clip_report(name, kind, act_bits, q, h).max_abs_error)
            got.append(codes_of(q, clo, chi))
        rep = clip_report(name, kind, act_bits, np.zeros(0), np.zeros(0))
        reports.append(dataclasses.replace(rep, max_abs_error=err))
        layer = QLayer(layer.weight, bias, w_scale, samples.scale, 1.0, act, act_bits, rq, None, out_scale,
                       samples.in_max, conv.window)
        lo, hi = layer.out_range(samples.lo, samples.hi)
        return layer, reports, Samples(out_scale, lo, hi, max(-lo, hi), codes=np.concatenate(got))
    if kind is activations.RELU:
        if file_scale:
            out_scale = file_scale
        else:  # calibrated on the feature maps, one scale per tensor
            peak = max((float(np.max(h)) for _, _, h in outputs() if h.size), default=1.0)
            out_scale = (peak if peak > 0 else 1.0) / levels
        rq = requant_for(layer.acc_scale / out_scale, layer.acc_bound, mbits)
    else:  # sigmoid: as a dense layer (quantize_layer)
        half = SIGMOID_LUT_HALF
        rq = requant_for(layer.acc_scale / SIGMOID_STEP, layer.acc_bound)
        out_scale = file_scale or 1.0 / levels
        grid_z = (np.arange(2 * half) - half) * SIGMOID_STEP
        lut = np.clip(np.rint(activations.sigmoid(grid_z) / out_scale), 0, levels).astype(np.int64)
    err, clipped, got = 0.0, 0, []
    for _, z, h in outputs():
        q = np.rint(h / out_scale)
        if lut is None:
            err = max(err, float(np.max(np.abs(np.clip(q, 0, levels) * out_scale - h), initial=0)))
        else:
            idx = np.clip(np.floor(z / SIGMOID_STEP + 0.5), -half, half - 1).astype(np.int64) + half
            err = max(err, float(np.max(np.abs(lut[idx] * out_scale - h), initial=0)))
        clipped += int(np.sum(q > levels))
        got.append(codes_of(np.clip(q, 0, levels), 0, levels))
    if lut is None:
        reports.append(TensorReport(f"{name}.relu", f"u{act_bits} x {out_scale:.3g}{src}", err, clipped,
                                    quant is not None))
    else:
        reports.append(TensorReport(f"{name}.sigmoid", f"LUT 2^{SIGMOID_INDEX_BITS} -> u{act_bits} x "
                                    f"{out_scale:.4g}{src}", err, 0, quant is not None))
    layer = QLayer(layer.weight, bias, w_scale, samples.scale, 1.0, act, act_bits, rq, lut, out_scale,
                   samples.in_max, conv.window)
    lo, hi = layer.out_range(samples.lo, samples.hi)
    return layer, reports, Samples(out_scale, lo, hi, max(-lo, hi), codes=np.concatenate(got))


def avg_requant(k: int) -> tuple[int, int]:
    """``(M, S)`` with ``M / 2^S`` about ``1 / k`` for a window of ``k`` elements: ``M = 1,
    S = log2 k`` (exact) for a power of two, else ``S = 16 + ceil(log2 k)``, ``M = round(2^S / k)``."""
    if k & (k - 1) == 0:
        return 1, k.bit_length() - 1
    shift = 16 + math.ceil(math.log2(k))
    return int(round(2**shift / k)), shift


def quantize_pool(node, samples: Samples, index: int):
    """A pooling on codes: ``MaxPool2d`` -> ``QPool("max")`` (exact); ``AvgPool2d`` -> ``QPool("avg")``
    with ``M / 2^S`` about ``1 / (kh kw)`` (``avg_requant``) and ``out_scale = in_scale 2^S / (M kh kw)``
    (real values kept); ``SumPool2d(shift)`` -> ``QPool("avg", truncate=True)`` with ``M = 1, S = shift``:
    ``floor(sum / 2^shift)`` truncates (QONNX ``Trunc``), codes at the input's scale. Returns
    (QPool, reports, the next stage's Samples)."""
    win, k = node.window, node.window.size
    channels = win.channels
    name = f"layer{index}"
    if isinstance(node, MaxPool2d):
        qp = QPool("max", win, in_scale=samples.scale, out_scale=samples.scale, in_max=samples.in_max)
    elif isinstance(node, SumPool2d):
        rq = Requant(np.ones(channels, np.int64), np.full(channels, node.shift, np.int64))
        qp = QPool("avg", win, rq, True, samples.scale, samples.scale, samples.in_max)
    else:
        m, sh = avg_requant(k)
        rq = Requant(np.full(channels, m, np.int64), np.full(channels, sh, np.int64))
        qp = QPool("avg", win, rq, False, samples.scale, samples.scale * 2.0**sh / (m * k), samples.in_max)
    check_pool(qp, index, samples.lo, samples.hi)  # the window sums fit int64, or refused
    lo, hi = qp.out_range(samples.lo, samples.hi)
    a, b = qp.sum_range(samples.lo, samples.hi)
    err, got, values = 0.0, [], []
    for rows in chunks(len(samples), channels * win.positions * k):
        x = samples.real(rows)
        want = evaluate.pool(node, x)  # the float node: max, mean, or sum over 2^shift (real values)
        if samples.codes is not None:
            out = pool(qp, samples.codes[rows].astype(np.int64))
            got.append(compact(out, lo, hi))
            err = max(err, float(np.max(np.abs(out * qp.out_scale - want.reshape(len(x), -1)), initial=0)))
        else:  # real accumulators: pooled as real values
            values.append(want.reshape(len(x), -1))
    if qp.op == "max":
        fmt = f"max {win.describe()} on codes [{samples.lo}, {samples.hi}] (exact)"
    elif qp.truncate:
        fmt = (f"sum {win.describe()}: {k} codes, sum in [{a}, {b}] >> {node.shift} (truncates, QONNX Trunc) "
               f"-> [{lo}, {hi}] x {qp.out_scale:.3g}")
    else:
        m, sh = int(qp.requant.multiplier[0]), int(qp.requant.shift[0])
        fmt = (f"avg {win.describe()}: sum of {k} in [{a}, {b}] x {m} / 2^{sh} -> [{lo}, {hi}] "
               f"x {qp.out_scale:.3g}")
    reports = [TensorReport(f"{name}.{'max' if qp.op == 'max' else 'sum' if qp.truncate else 'avg'}pool", fmt,
                            err, 0, bool(qp.truncate))]
    nxt = Samples(qp.out_scale, lo, hi, max(-lo, hi), codes=np.concatenate(got) if got else None,
                  values=np.concatenate(values) if values else None)
    return qp, reports, nxt


def quantize(graph: ir.Graph, settings: QuantSettings, x_calib: np.ndarray, bounds=None) -> QuantizedNetwork:
    """Quantize ``graph`` with ``settings``; ``x_calib`` (N, features) calibrates the input and
    activation formats (a convolutional network reads each row as C-order maps of its input
    shape); ``bounds`` is the data's valid range ((0, 1) for images)."""
    check_bits(settings.bits)
    get_scheme(settings.scheme)
    if not 1 <= settings.act_bits <= 16 or not 2 <= settings.input_bits <= 16:
        raise UsageError("activation bits must be in 1..16 and input bits in 2..16")
    x_calib = np.asarray(x_calib, dtype=np.float64).reshape(len(x_calib), -1)
    if not settings.calibration:
        settings = dataclasses.replace(settings, calibration=describe_calibration(x_calib))
    stages = graph.stages()
    if x_calib.shape[1] != graph.n_features:
        if not graph.convolutional:
            raise UsageError(f"calibration data has {x_calib.shape[1]} features, the model expects "
                             f"{graph.n_features}")
        raise UsageError(graph.input_mismatch(x_calib.shape[1], "the calibration data"))
    fmt = file_input_format(graph.input_quant, bounds) or input_format(x_calib, bounds, settings.input_bits)
    in_max = max(abs(fmt.qmin), fmt.qmax)
    codes = compact(quantize_input(fmt, x_calib), fmt.qmin, fmt.qmax)
    samples = Samples(fmt.scale, fmt.qmin, fmt.qmax, in_max, codes=codes)
    in_src = " (file)" if graph.input_quant is not None else ""
    layers, reports = [], [TensorReport("input", fmt.name + in_src, 0.5 * fmt.scale, 0, bool(in_src))]
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        if isinstance(stage.node, ir.Affine):
            layer, rep, x, scale, in_max = quantize_layer(stage.node, stage.activation, samples.scale,
                                                          samples.in_max, samples.real(), settings, last, i,
                                                          stage.quant)
            lo, hi = layer.out_range(samples.lo, samples.hi)
            samples = Samples(scale, lo, hi, in_max, values=x)
        elif isinstance(stage.node, ir.Conv2d):
            layer, rep, samples = quantize_conv(stage.node, stage.activation, samples, settings, last, i,
                                                stage.quant)
        else:
            layer, rep, samples = quantize_pool(stage.node, samples, i)
        layers.append(layer)
        reports.extend(rep)
    output = "sign" if graph.output.kind == "sigmoid" else "argmax"
    in_shape = graph.input_shape if graph.convolutional else None
    check_layers(layers, fmt.qmin, fmt.qmax, in_shape)  # no int64 intermediate wraps, or refused
    return QuantizedNetwork(fmt, tuple(layers), output, true_bits(settings, graph, reports), graph,
                            tuple(reports), input_shape=in_shape)


def describe_calibration(x_calib: np.ndarray) -> str:
    """``N samples, sha256 <16 hex>`` of the float64 calibration array: two quantizations
    used the same data iff these agree (stored in the settings, shown by ``hwq info``)."""
    digest = hashlib.sha256(np.ascontiguousarray(x_calib, dtype=np.float64).tobytes()).hexdigest()
    return f"{len(x_calib)} samples, sha256 {digest[:16]}"


def true_bits(settings: QuantSettings, graph: ir.Graph, reports) -> QuantSettings:
    """A ``--bits`` above the file's QAT grids keeps their codes: record the bits they use
    (ternary codes stay q=2, not the requested q=4)."""
    weights = [r for r in reports if r.tensor.endswith(".weight")]
    grids = [a.grid for a in graph.linears]
    if weights and all(r.on_grid for r in weights) and all(g is not None for g in grids):
        return dataclasses.replace(settings, bits=min(settings.bits, max(g.bits for g in grids)))
    return settings
