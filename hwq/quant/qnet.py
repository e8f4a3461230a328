"""The quantized integer network: what every target compiles and the reference defines.

All integer fields are int64 and read-only. Real values follow from codes and scales:
``x = x_q / inv_scale`` at the input, ``w = W[i, j] * weight_scale[i]`` for weights, and
``z_i = gain * weight_scale[i] * in_scale * acc_i`` for a layer's pre-activation. The exact
integer semantics are in ``hwq/quant/reference.py`` and ``docs/integer-semantics.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwq import ir
from hwq.errors import InvalidModelError
from hwq.ir import activations, frozen_array
from hwq.ir.codes import code_range
from hwq.ir.window import Window
from hwq.quant.bounds import MAX_SHIFT, check_shift_range
from hwq.quant.walk import walk, walk_layers  # noqa: F401 (re-exported: qnet.walk)

SIGMOID_INDEX_BITS = 12  # sigmoid LUT index: z in [-8, 8) with step 2^-8
LUT_SIZE = 2**SIGMOID_INDEX_BITS
SIGMOID_LUT_HALF = LUT_SIZE // 2  # the LUT index of z = 0: index = clip(v, -H, H - 1) + H
SIGMOID_STEP = 2.0**-8  # z per LUT index (the requantization's target scale)
MAX_CODE_BITS = 16  # activation codes (quantize: 1..16 bits)
MAX_INPUT_BITS = 32
OUTPUT_RULES = ("argmax", "sign")


def positive(name: str, value) -> None:
    """A finite number > 0 (scales, gains), else ``InvalidModelError``."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        bad = arr[~(np.isfinite(arr) & (arr > 0))] if arr.size else arr
        got = f"{float(bad.flat[0])}" if bad.size else "nothing"
        raise InvalidModelError(f"{name} must be finite and > 0, got {got}"
                                + (f" (among {arr.size} values)" if arr.ndim else ""))


def short(value, limit: int = 60) -> str:
    """``repr(value)`` on one line, at most ``limit`` characters (values read from files)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def integer_in(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
        raise InvalidModelError(f"{name} must be an integer in {lo}..{hi}, got {short(value)}")


@dataclass(frozen=True)
class InputFormat:
    """How the device receives a sample: ``x_q = clip(floor(x * inv_scale + 1/2), lo, hi)``
    with ``[lo, hi]`` the ``bits``-bit signed or unsigned range. ``bounds`` records the data's
    valid range as given to ``quantize`` (None: unbounded); it is not what attacks clip to:
    ``hwq.attack`` clips to its own ``bounds`` argument (the CLI and sweeps pass the data
    set's bounds), then quantizes."""

    bits: int
    signed: bool
    inv_scale: float
    bounds: tuple[float, float] | None = None

    @property
    def qmin(self) -> int:
        return code_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return code_range(self.bits, self.signed)[1]

    @property
    def scale(self) -> float:
        return 1.0 / self.inv_scale

    @property
    def name(self) -> str:
        return f"{'s' if self.signed else 'u'}{self.bits} x 1/{self.inv_scale:g}"

    def validate(self) -> None:
        """What ``quantize`` guarantees: 1..32 bits, a finite positive ``inv_scale``, bounds
        ``lo <= hi`` (finite) or None. Raises ``InvalidModelError``."""
        integer_in("input bits", self.bits, 1, MAX_INPUT_BITS)
        if not isinstance(self.signed, (bool, np.bool_)):
            raise InvalidModelError(f"input 'signed' must be a boolean, got {short(self.signed)}")
        positive("the input scale (inv_scale)", self.inv_scale)
        if self.bounds is not None:
            b = np.asarray(self.bounds, dtype=np.float64)
            if b.shape != (2,) or not np.all(np.isfinite(b)) or b[0] > b[1]:
                raise InvalidModelError(f"input bounds must be two finite numbers lo <= hi, got {short(self.bounds)}")


@dataclass(frozen=True, eq=False)
class Requant:
    """Per-output-channel rescaling ``y = floor((acc * multiplier + 2^(shift-1)) / 2^shift)``
    (round half up; ``shift == 0`` gives ``acc * multiplier``)."""

    multiplier: np.ndarray
    shift: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "multiplier", frozen_array(self.multiplier, np.int64))
        object.__setattr__(self, "shift", frozen_array(self.shift, np.int64))
        check_shift_range(self.shift)
        if np.any(self.multiplier < 0):
            raise InvalidModelError(f"requantization needs multipliers >= 0 and shifts in 0..{MAX_SHIFT}")

    def validate(self, n_out: int | None = None) -> None:
        """One multiplier and shift per output channel (``n_out`` where known)."""
        if self.multiplier.ndim != 1 or self.shift.shape != self.multiplier.shape:
            raise InvalidModelError(f"requantization multiplier {self.multiplier.shape} and shift "
                                    f"{self.shift.shape} must be vectors of one length")
        if n_out is not None and self.multiplier.shape != (n_out,):
            raise InvalidModelError(f"requantization has {self.multiplier.size} channels, the layer {n_out}")


@dataclass(frozen=True, eq=False)
class QLayer:
    """The integer network's node: a linear product and its epilogue, in integers.

    The linear part: ``acc = W @ h + bias`` (exact, int64) with ``W`` the 2-D code matrix
    (out channels x patch length), per-channel ``weight_scale`` and ``bias``. ``window`` is the
    window geometry of a convolution (``hwq.ir.window.Window``: ``W`` applied to every patch,
    padding reads code 0, the code of real zero in every hwq format; outputs ``(C_out, Ho, Wo)``
    in C-order); None for a dense layer. The epilogue, by the activation kind (``activation_kind``, a
    ``hwq.ir.activations.Kind``): ``identity``: the codes are ``acc``; ``step``: ``[acc > 0]``;
    ``sign``: ``+1 if acc >= 0 else -1``; ``relu``: ``clip(requant(acc), 0, 2^act_bits - 1)``;
    ``sigmoid``: ``lut[clip(requant(acc), -2^11, 2^11 - 1) + 2^11]``.
    ``out_range(lo, hi)`` bounds the codes passed on for inputs in ``[lo, hi]``.
    """

    weight: np.ndarray
    bias: np.ndarray
    weight_scale: np.ndarray
    in_scale: float
    gain: float
    activation: str
    act_bits: int = 0
    requant: Requant | None = None
    lut: np.ndarray | None = None
    out_scale: float = 1.0
    in_max: int = 1  # largest |input code| this layer can receive
    window: Window | None = None  # convolution window geometry; None: a dense layer

    def __post_init__(self):
        object.__setattr__(self, "weight", frozen_array(self.weight, np.int64))
        object.__setattr__(self, "bias", frozen_array(self.bias, np.int64))
        object.__setattr__(self, "weight_scale", frozen_array(self.weight_scale))
        if self.lut is not None:
            object.__setattr__(self, "lut", frozen_array(self.lut, np.int64))

    def validate(self) -> None:
        """The invariants ``quantize`` guarantees for one layer (checked on every layer read
        from a file): shapes that fit, finite positive scales and gain, a known activation,
        ``act_bits`` in 1..16 and a requantization where the activation requantizes (relu,
        sigmoid) and none elsewhere, a sigmoid LUT of exactly 2^12 codes in
        ``[0, 2^act_bits - 1]``. Raises ``InvalidModelError``."""
        w = self.weight
        if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
            raise InvalidModelError(f"weight codes must be a non-empty matrix, got shape {w.shape}")
        n_out = w.shape[0]
        for name in ("bias", "weight_scale"):
            if getattr(self, name).shape != (n_out,):
                raise InvalidModelError(f"{name} has shape {getattr(self, name).shape}, the layer {n_out} outputs")
        positive("weight_scale", self.weight_scale)
        positive("in_scale", self.in_scale)
        positive("gain", self.gain)
        positive("out_scale", self.out_scale)
        if not isinstance(self.activation, str) or self.activation not in activations.KINDS:
            raise InvalidModelError(f"unknown activation {short(self.activation)}",
                                    hint="one of " + ", ".join(sorted(activations.KINDS)))
        if self.window is not None:
            if not isinstance(self.window, Window):
                raise InvalidModelError(f"a layer's window must be a Window, got {short(self.window)}")
            self.window.validate()
            if w.shape[1] != self.window.patch_len:
                raise InvalidModelError(f"a convolution over {self.window.describe()} windows of "
                                        f"{self.window.group_channels} channels reads patches of "
                                        f"{self.window.patch_len}, the weight matrix has {w.shape[1]} columns")
            if n_out % self.window.groups:
                raise InvalidModelError(f"{n_out} output channels do not divide into {self.window.groups} groups")
        integer_in("in_max", self.in_max, 0, 2**63 - 1)
        kind = self.activation_kind
        if kind.requantizes:
            integer_in(f"{self.activation} activation bits", self.act_bits, 1, MAX_CODE_BITS)
            if self.requant is None:
                raise InvalidModelError(f"a {self.activation} layer needs its requantization (multiplier, shift)")
            self.requant.validate(n_out)
        else:
            integer_in(f"{self.activation} activation bits", self.act_bits, 0, MAX_CODE_BITS)
            if self.requant is not None:
                raise InvalidModelError(f"a {self.activation} layer has no requantization")
        if kind.uses_lut:
            top = 2**self.act_bits - 1
            if self.lut is None or self.lut.shape != (LUT_SIZE,):
                raise InvalidModelError(f"the sigmoid lookup table must have {LUT_SIZE} entries, got "
                                        f"{'none' if self.lut is None else self.lut.shape}")
            if self.lut.min() < 0 or self.lut.max() > top:
                raise InvalidModelError(f"sigmoid lookup codes must lie in 0..{top} ({self.act_bits} bits)")
        elif self.lut is not None:
            raise InvalidModelError(f"a {self.activation} layer has no lookup table")

    @property
    def activation_kind(self) -> activations.Kind:
        """The typed activation (``activation`` is its serialized name)."""
        return activations.kind(self.activation)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The shape of one input sample (the patch length for a dense layer, (C, H, W) for a
        convolution)."""
        if self.window is not None:
            return tuple(int(v) for v in self.window.in_shape)
        return (int(self.weight.shape[1]),)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The shape of one output sample (out channels for a dense layer, (C_out, Ho, Wo) for a
        convolution)."""
        if self.window is not None:
            return (int(self.weight.shape[0]), *self.window.out_hw)
        return (int(self.weight.shape[0]),)

    @property
    def n_out(self) -> int:
        """Codes per output sample (``prod(out_shape)``)."""
        return int(np.prod(self.out_shape))

    def out_range(self, lo: int, hi: int) -> tuple[int, int]:
        """The codes this layer passes on for input codes in ``[lo, hi]``: the kind's
        ``code_range`` (identity: ``[-B, B]``, ``B = max_j sum_i |W[j, i]| max(|lo|, |hi|) + |b_j|``,
        in Python integers)."""
        from hwq.quant.bounds import accumulator_bound

        peak = max(abs(int(lo)), abs(int(hi)))
        return self.activation_kind.code_range(self.act_bits, self.lut,
                                               lambda: accumulator_bound(self.weight, self.bias, peak))

    @property
    def acc_scale(self) -> np.ndarray:
        """Real value of one accumulator unit, per output channel (gain included)."""
        return self.gain * self.weight_scale * self.in_scale

    @property
    def unit_scale(self) -> np.ndarray:
        """Real value of one accumulator unit at every output (``acc_scale`` repeated over a
        convolution's positions, C-order): ``trace`` entries times this are real pre-activations."""
        positions = 1 if self.window is None else self.window.positions
        return np.repeat(self.acc_scale, positions)

    @property
    def real_weight(self) -> np.ndarray:
        return self.weight * self.weight_scale[:, None]

    @property
    def acc_bound(self) -> int:
        """max |acc| over all inputs the layer can receive, in Python integers (exact even
        beyond int64; ``hwq.quant.bounds``)."""
        from hwq.quant.bounds import accumulator_bound

        return accumulator_bound(self.weight, self.bias, self.in_max)


POOL_OPS = ("max", "avg")


@dataclass(frozen=True, eq=False)
class QPool:
    """A pooling node on codes, channel by channel (``window.groups`` equals the channels; the
    window's kernel, stride and pads; no dilation). ``max``: the largest code in the window,
    padding ignored (exact: every epilogue is monotone, so pooling codes equals pooling real
    values). ``avg``: the window's sum ``s`` (padding adds code 0; the divisor is the whole
    window), then ``floor((s M + 2^(S-1)) / 2^S)`` (round half up, as every requantization), or
    ``floor(s M / 2^S)`` where ``truncate`` (QONNX ``Trunc`` after a sum pool); ``M / 2^S`` is
    about ``1 / (kh kw)`` (exactly where the window holds a power of two).
    ``out_scale`` is the real value of one output code."""

    op: str
    window: Window
    requant: Requant | None = None
    truncate: bool = False
    in_scale: float = 1.0
    out_scale: float = 1.0
    in_max: int = 1  # largest |input code| this node can receive

    def validate(self) -> None:
        if self.op not in POOL_OPS:
            raise InvalidModelError(f"unknown pooling {short(self.op)}", hint="max or avg")
        if not isinstance(self.window, Window):
            raise InvalidModelError(f"a pooling's window must be a Window, got {short(self.window)}")
        self.window.validate()
        if self.window.groups != self.window.channels or self.window.dilation != (1, 1):
            raise InvalidModelError("a pooling window reads one channel at a time (groups = channels) "
                                    "without dilation")
        positive("in_scale", self.in_scale)
        positive("out_scale", self.out_scale)
        integer_in("in_max", self.in_max, 0, 2**63 - 1)
        if not isinstance(self.truncate, (bool, np.bool_)):
            raise InvalidModelError(f"a pooling's 'truncate' must be a boolean, got {short(self.truncate)}")
        if self.op == "avg":
            if self.requant is None:
                raise InvalidModelError("an average pooling needs its requantization (multiplier, shift)")
            self.requant.validate(self.window.channels)
        elif self.requant is not None or self.truncate:
            raise InvalidModelError("a max pooling has no requantization")

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.window.in_shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.window.channels, *self.window.out_hw)

    @property
    def n_out(self) -> int:
        return int(np.prod(self.out_shape))

    @property
    def unit_scale(self) -> np.ndarray:
        """Real value of one output code at every output (``out_scale``)."""
        return np.full(self.n_out, float(self.out_scale))

    def sum_range(self, lo: int, hi: int) -> tuple[int, int]:
        """The window sums for codes in ``[lo, hi]`` (padding adds 0), in Python integers."""
        k = self.window.size
        if self.window.padded:
            return k * min(int(lo), 0), k * max(int(hi), 0)
        return k * int(lo), k * int(hi)

    def rescale(self, s: int, channel: int = 0) -> int:
        """The average pooling's epilogue on one sum of ``channel``, in Python integers (monotone in ``s``)."""
        m, sh = int(self.requant.multiplier[channel]), int(self.requant.shift[channel])
        half = 0 if self.truncate or sh == 0 else 2 ** (sh - 1)
        return (s * m + half) >> sh

    def out_range(self, lo: int, hi: int) -> tuple[int, int]:
        """``max``: ``[lo, hi]`` (padding never wins); ``avg``: the epilogue of the extreme sums,
        over every channel."""
        if self.op == "max":
            return int(lo), int(hi)
        a, b = self.sum_range(lo, hi)
        pairs = {(int(m), int(sh)) for m, sh in zip(self.requant.multiplier, self.requant.shift)}
        outs = [((v * m + (0 if self.truncate or sh == 0 else 2 ** (sh - 1))) >> sh)
                for m, sh in pairs for v in (a, b)]
        return min(outs), max(outs)


@dataclass(frozen=True)
class TensorReport:
    """What quantization did to one tensor."""

    tensor: str
    format: str
    max_abs_error: float
    clipped: int
    on_grid: bool

    def validate(self) -> None:
        if not (self.max_abs_error >= 0) or self.clipped < 0:  # NaN fails the first test
            raise InvalidModelError(f"report row {short(self.tensor)}: error {self.max_abs_error} or clip count "
                                    f"{self.clipped} is negative or not a number")


@dataclass(frozen=True)
class QuantSettings:
    bits: int
    scheme: str = "narrow"
    per_channel: bool = False
    act_bits: int = 8
    input_bits: int = 8
    calibration: str = ""  # what calibrated the input/activation formats (set by quantize)
    conv_per_channel: bool = True  # convolutions: one weight scale per output channel (Brevitas' default)

    def validate(self) -> None:
        """The ranges ``quantize`` accepts (bits 1..16, a known scheme)."""
        from hwq.quant.schemes import SCHEMES

        integer_in("weight bits", self.bits, 1, 16)
        integer_in("activation bits", self.act_bits, 1, MAX_CODE_BITS)
        integer_in("input bits", self.input_bits, 1, MAX_INPUT_BITS)
        if self.scheme not in SCHEMES:
            raise InvalidModelError(f"unknown weight scheme {short(self.scheme)}")


@dataclass(frozen=True)
class QuantizedNetwork:
    input: InputFormat
    layers: tuple[QLayer | QPool, ...]  # the nodes in order (a QPool never first or last)
    output: str  # "argmax" (lowest index wins ties) or "sign" (class 1 iff score > 0)
    settings: QuantSettings
    float_graph: ir.Graph | None = None  # the float model it came from (None: built in integers)
    report: tuple[TensorReport, ...] = field(default=())
    input_shape: tuple[int, ...] | None = None  # one sample's shape; None (files before it): the first weight's

    def __post_init__(self):
        if self.input_shape is None and self.layers and isinstance(self.layers[0], (QLayer, QPool)):
            object.__setattr__(self, "input_shape", self.layers[0].in_shape)
        elif isinstance(self.input_shape, (tuple, list)):
            object.__setattr__(self, "input_shape", tuple(self.input_shape))

    def validate(self) -> None:
        """Everything a file's network must satisfy before a target runs it: each part valid
        (``validate`` of the input format, layers, settings), at least one layer, widths that
        chain, weight codes within the settings' bits, a known output rule (``sign`` over
        exactly one score), no int64 intermediate that can wrap
        (``bounds.check_layers``), and a float graph (where kept) of the same shapes.
        Raises ``InvalidModelError`` naming the layer."""
        from hwq.quant.bounds import check_layers

        self.input.validate()
        self.settings.validate()
        if not self.layers:
            raise InvalidModelError("the network has no layers")
        shape = self.input_shape
        if (not isinstance(shape, tuple) or not shape
                or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in shape)):
            raise InvalidModelError(f"the input shape must be positive integers, got {short(shape)}")
        if int(np.prod(shape, dtype=object)) != int(np.prod(self.layers[0].in_shape)):
            raise InvalidModelError(f"the input shape {shape} holds {int(np.prod(shape, dtype=object))} codes, "
                                    f"layer 0 takes {int(np.prod(self.layers[0].in_shape))}")
        if self.output not in OUTPUT_RULES:
            raise InvalidModelError(f"unknown output rule {short(self.output)}", hint="argmax or sign")
        top_code = 2**self.settings.bits - 1  # every scheme's codes for q bits lie within
        prev_shape = tuple(int(d) for d in shape)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, (QLayer, QPool)):
                raise InvalidModelError(f"layer {i} is a {type(layer).__name__}, not an integer node")
            try:
                layer.validate()
            except InvalidModelError as exc:
                raise InvalidModelError(f"layer {i}: {exc.message}", hint=exc.hint) from None
            windowed = isinstance(layer, QPool) or layer.window is not None
            if windowed and layer.in_shape != prev_shape and (i or len(prev_shape) != 1):
                raise InvalidModelError(f"layer {i} reads maps of shape {layer.in_shape}, "
                                        f"{'layer ' + str(i - 1) if i else 'the input'} gives {prev_shape}")
            if int(np.prod(layer.in_shape)) != int(np.prod(prev_shape)):
                raise InvalidModelError(f"layer {i} takes {int(np.prod(layer.in_shape))} inputs, "
                                        f"{'layer ' + str(i - 1) if i else 'the input'} has "
                                        f"{int(np.prod(prev_shape))} outputs")
            prev_shape = layer.out_shape
            if isinstance(layer, QPool):
                if i == 0 or i == len(self.layers) - 1:
                    raise InvalidModelError(f"layer {i}: a pooling can be neither the first nor the last node")
                continue
            if max(-int(layer.weight.min()), int(layer.weight.max())) > top_code:
                raise InvalidModelError(f"layer {i}: weight codes beyond the {self.settings.bits}-bit range "
                                        f"(|W| <= {top_code})")
        if not self.layers[-1].activation_kind.passes_accumulator:
            raise InvalidModelError(f"the output layer must be identity, not {self.layers[-1].activation}")
        if self.output == "sign" and self.layers[-1].n_out != 1:
            raise InvalidModelError("the sign output rule needs exactly one output score")
        check_layers(self.layers, self.input.qmin, self.input.qmax, self.input_shape)
        if self.float_graph is not None:
            shapes = [tuple(a.matrix_shape) for a, _ in self.float_graph.layers()]
            if shapes != [layer.weight.shape for layer in self.layers if isinstance(layer, QLayer)]:
                raise InvalidModelError(f"the float graph's layers {shapes} do not match the integer layers")
        for t in self.report:
            t.validate()

    @property
    def n_features(self) -> int:
        """Codes per sample at the program boundary (``prod(input_shape)``; samples are (N, n_features))."""
        return int(np.prod(self.input_shape))

    def walk(self, lo: int | None = None, hi: int | None = None):
        """``walk(self, lo, hi)``: every node with its input shape and input code range."""
        return walk(self, lo, hi)

    @property
    def n_classes(self) -> int:
        return 2 if self.output == "sign" else self.layers[-1].n_out

    @property
    def dense(self) -> bool:
        """Only dense layers (no convolution window, no pooling): what every target ran before CNNs."""
        return all(isinstance(n, QLayer) and n.window is None for n in self.layers)

    @property
    def linear_layers(self) -> tuple[QLayer, ...]:
        """The nodes with a weight matrix (dense and convolution layers), in order."""
        return tuple(n for n in self.layers if isinstance(n, QLayer))

