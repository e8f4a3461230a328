"""The float IR: a chain of small frozen nodes, as imported from ONNX.

Node names follow NIR (``Affine``, ``Threshold``, ``Flatten``) so an NIR bridge is mechanical.
A :class:`Graph` is a value: a sample shape and a tuple of nodes applied in order. Every node
maps a batch ``x`` of shape ``(N, features...)`` to the next. Conv2d would be one more node
kind with its own parameters; nothing in the chain assumes flat tensors except ``Affine``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwq.errors import InvalidModelError
from hwq.ir import activations
from hwq.ir.codes import code_range

MAX_MAGNITUDE = 1e18  # |weight|, |bias|, gain of a float layer: beyond it scales overflow int64 requantization


def frozen_array(a, dtype=np.float64) -> np.ndarray:
    """A read-only copy: IR values cannot be mutated after construction."""
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class Grid:
    """Weights that already sit on a quantization grid: ``weight == codes * scale`` exactly."""

    scheme: str
    bits: int
    weight_scale: tuple[float, ...]  # one value per tensor, or one per output row
    source: str = ""  # where the grid was read: "DequantizeLinear", "Quant", "metadata", ...


@dataclass(frozen=True, eq=False)
class Affine:
    """``y = gain * (W x + b)``; ``W`` has shape (n_out, n_in)."""

    weight: np.ndarray
    bias: np.ndarray
    gain: float = 1.0
    grid: Grid | None = None

    def __post_init__(self):
        object.__setattr__(self, "weight", frozen_array(self.weight))
        object.__setattr__(self, "bias", frozen_array(self.bias))
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise InvalidModelError(
                f"Affine weight {self.weight.shape} and bias {self.bias.shape} do not fit"
            )
        if self.weight.size == 0:
            raise InvalidModelError(f"a dense layer of shape {self.weight.shape} has no units or no inputs")
        for name, a in (("weight", self.weight), ("bias", self.bias)):
            if not np.all(np.isfinite(a)):
                raise InvalidModelError(f"Affine {name} contains NaN or Inf values")
        if not (np.isfinite(self.gain) and self.gain > 0):
            raise InvalidModelError(f"Affine gain must be a positive number, got {self.gain}")
        top = max(float(np.max(np.abs(self.weight), initial=0)), float(np.max(np.abs(self.bias), initial=0)))
        if top * max(self.gain, 1.0) > MAX_MAGNITUDE or not self.gain >= 1 / MAX_MAGNITUDE:
            raise InvalidModelError(f"a dense layer's weights, bias or gain reach {top * self.gain:.3g}; hwq "
                                    f"reads values within 1e{int(np.log10(MAX_MAGNITUDE))} (not a trained network)")

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """The integer layer's weight matrix shape (out channels x patch length)."""
        return tuple(self.weight.shape)

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]


@dataclass(frozen=True)
class Quantizer:
    """A uniform quantizer read from the file (QCDQ ``QuantizeLinear -> [Clip] -> DequantizeLinear``
    or QONNX ``Quant``): ``q = clip(round(x / scale), lo, hi)``, real value ``q * scale``, with
    ``[lo, hi]`` the ``bits``-bit signed or unsigned range (``narrow`` drops the most negative
    signed code). ``rounding`` is the file's rounding mode (``ROUND`` is half to even).
    ``bits == 1, signed`` is QONNX's ``BipolarQuant``: ``+1 if x >= 0 else -1``."""

    bits: int
    signed: bool
    scale: float
    narrow: bool = False
    rounding: str = "ROUND"
    source: str = ""

    @property
    def lo(self) -> int:
        if self.bits == 1 and self.signed:
            return -1
        return code_range(self.bits, self.signed, self.narrow)[0]

    @property
    def hi(self) -> int:
        if self.bits == 1 and self.signed:
            return 1
        return code_range(self.bits, self.signed, self.narrow)[1]

    @property
    def name(self) -> str:
        kind = "bipolar" if self.bits == 1 and self.signed else ("s" if self.signed else "u") + str(self.bits)
        return f"{kind}{' narrow' if self.narrow else ''} x {self.scale:.4g}"


def passes_accumulator(name: str) -> bool:
    """Whether the activation named ``name`` passes its layer's accumulator on (identity);
    False for an unknown name."""
    kind = activations.KINDS.get(name)
    return kind is not None and kind.passes_accumulator


@dataclass(frozen=True)
class Activation:
    """An elementwise hidden activation: ``relu``, ``sigmoid``, ``step`` (``[x > 0]``), ``sign``
    (``+1 if x >= 0 else -1``, binarized networks) or ``identity``. ``step`` is NIR's
    ``Threshold`` with threshold 0. ``quant`` is the file's output quantizer, if any (QAT)."""

    kind: str
    quant: Quantizer | None = None


@dataclass(frozen=True)
class Output:
    """How the final scores become a decision: ``softmax`` / ``identity`` (argmax, lowest
    index wins ties) or ``sigmoid`` over a single score (class 1 iff score > 0)."""

    kind: str


@dataclass(frozen=True)
class Flatten:
    """Collapse all sample dimensions into one (a no-op on flat data)."""


Node = Affine | Activation | Flatten


@dataclass(frozen=True)
class Graph:
    """A feed-forward chain ``nodes`` applied to samples of ``sample_shape``, then ``output``."""

    sample_shape: tuple[int, ...]
    nodes: tuple[Node, ...]
    output: Output = Output("identity")
    notes: tuple[str, ...] = field(default=())
    input_quant: Quantizer | None = None  # the file's input quantizer (QAT), if any

    @property
    def affines(self) -> list[Affine]:
        return [n for n in self.nodes if isinstance(n, Affine)]

    @property
    def n_features(self) -> int:
        return int(np.prod(self.sample_shape))

    def layers(self) -> list[tuple[Affine, str]]:
        """The network as (affine, following activation) pairs; the last pair's activation
        is ``identity`` (the output rule lives in ``output``)."""
        pairs: list[tuple[Affine, str]] = []
        for node in self.nodes:
            if isinstance(node, Affine):
                pairs.append((node, "identity"))
            elif isinstance(node, Activation):
                if not pairs or not passes_accumulator(pairs[-1][1]):
                    raise InvalidModelError(
                        f"activation '{node.kind}' must follow a dense layer"
                    )
                pairs[-1] = (pairs[-1][0], node.kind)
        if not pairs:
            raise InvalidModelError("the model has no dense (Gemm/MatMul) layer")
        if not passes_accumulator(pairs[-1][1]):
            raise InvalidModelError(
                f"the last dense layer is followed by '{pairs[-1][1]}'",
                hint="hwq expects raw scores, Softmax or a single Sigmoid at the output",
            )
        for (a, _), (b, _) in zip(pairs, pairs[1:]):
            if a.n_out != b.n_in:
                raise InvalidModelError(f"layer widths do not chain: {a.n_out} -> {b.n_in}")
        if pairs[0][0].n_in != self.n_features:
            raise InvalidModelError(
                f"first layer expects {pairs[0][0].n_in} inputs, samples have {self.n_features}"
            )
        return pairs

    def activation_quants(self) -> list[Quantizer | None]:
        """The file's output quantizer of each (affine, activation) pair of ``layers()``."""
        quants: list[Quantizer | None] = []
        for node in self.nodes:
            if isinstance(node, Affine):
                quants.append(None)
            elif isinstance(node, Activation) and quants:
                quants[-1] = node.quant
        return quants

    @property
    def n_outputs(self) -> int:
        return self.affines[-1].n_out

    @property
    def n_classes(self) -> int:
        return 2 if self.n_outputs == 1 else self.n_outputs
