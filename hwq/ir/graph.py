"""The float IR: a chain of small frozen nodes, as imported from ONNX.

Node names follow NIR (``Affine``, ``Threshold``, ``Flatten``) so an NIR bridge is mechanical.
A :class:`Graph` is a value: a sample shape and a tuple of nodes applied in order. Every node
maps a batch ``x`` of shape ``(N, features...)`` to the next; ``hwq.ir.conv`` adds ``Conv2d`` and
the poolings over ``(C, H, W)`` maps. ``Graph.stages()`` reads the chain as stages (a linear node
with its activation, or a pooling), the form quantization walks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwq.errors import InvalidModelError
from hwq.ir import activations
from hwq.ir.codes import code_range
from hwq.ir.conv import AvgPool2d, Conv2d, MaxPool2d, SumPool2d
from hwq.ir.values import MAX_MAGNITUDE, Grid, frozen_array  # noqa: F401 (re-exported)


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


Node = Affine | Activation | Flatten | Conv2d | AvgPool2d | SumPool2d | MaxPool2d


def shape_text(shape) -> str:
    """``1x28x28 inputs (784 features)`` for maps, ``64 features`` for flat samples."""
    shape = tuple(int(d) for d in shape)
    n = int(np.prod(shape, dtype=object))
    if len(shape) <= 1:
        return f"{n} features"
    return f"{'x'.join(str(d) for d in shape)} inputs ({n} features)"


@dataclass(frozen=True)
class Stage:
    """One stage of the chain: a linear node (``Affine`` or ``Conv2d``) with the activation that
    follows it (``identity`` where none does) and that activation's quantizer from the file, or a
    pooling (``AvgPool2d``, ``SumPool2d``, ``MaxPool2d``). ``in_shape``/``out_shape``: one sample."""

    node: object
    activation: str = "identity"
    quant: Quantizer | None = None
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()

    @property
    def linear(self) -> bool:
        return hasattr(self.node, "weight")


def _describe(node, index: int) -> str:
    return f"node {index} ({type(node).__name__})"


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
        """The dense layers (``linears`` also holds the convolutions)."""
        return [n for n in self.nodes if isinstance(n, Affine)]

    @property
    def linears(self) -> list:
        """The nodes with a weight matrix, in order: dense layers and convolutions."""
        return [n for n in self.nodes if isinstance(n, (Affine, Conv2d))]

    @property
    def n_features(self) -> int:
        return int(np.prod(self.sample_shape))

    @property
    def convolutional(self) -> bool:
        """Whether the chain holds a convolution or a pooling (its samples are maps)."""
        return any(isinstance(n, (Conv2d, AvgPool2d, SumPool2d, MaxPool2d)) for n in self.nodes)

    def input_mismatch(self, n_features: int, what: str = "the data") -> str:
        """One line for data whose rows do not fit the model: ``the model takes 1x28x28 inputs (784
        features), the data has 64``."""
        return f"the model takes {shape_text(self.input_shape)}, {what} has {int(n_features)}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape as the first node reads it: the first convolution's or pooling's maps
        ``(C, H, W)``, else ``sample_shape``."""
        for node in self.nodes:
            if hasattr(node, "window"):
                return tuple(int(d) for d in node.window.in_shape)
            if isinstance(node, (Affine, Flatten)):  # a leading Flatten: rows in the declared layout (NHWC)
                break
        return tuple(int(d) for d in self.sample_shape)

    def stages(self) -> list[Stage]:
        """The network as a chain of stages: each linear node (``Affine``, ``Conv2d``) with its
        following activation, and each pooling. ``Flatten`` is C-order (a no-op on the codes); a
        dense layer reads any maps flattened, a convolution or pooling a flat vector of its size as
        C-order maps. An activation after a max pooling moves before it (exact: every activation
        is monotone non-decreasing, so ``f(max z) = max f(z)``). The last stage is a linear node
        without activation (the output rule lives in ``output``). Raises ``InvalidModelError`` in
        one line naming the node."""
        stages: list[Stage] = []
        shape = tuple(int(d) for d in self.sample_shape)
        for k, node in enumerate(self.nodes):
            if isinstance(node, Flatten):
                shape = (int(np.prod(shape)),)
            elif isinstance(node, Affine):
                if int(np.prod(shape)) != node.n_in:
                    previous = [s for s in stages if isinstance(s.node, Affine)]
                    if stages and previous and stages[-1] is previous[-1]:
                        raise InvalidModelError(f"layer widths do not chain: {previous[-1].node.n_out} -> {node.n_in}")
                    if not stages:
                        raise InvalidModelError(f"first layer expects {node.n_in} inputs, samples have "
                                                f"{self.n_features}")
                    raise InvalidModelError(f"{_describe(node, k)} expects {node.n_in} inputs, it receives "
                                            f"{shape_text(shape)}")
                stages.append(Stage(node, "identity", None, shape, (node.n_out,)))
                shape = (node.n_out,)
            elif isinstance(node, (Conv2d, AvgPool2d, SumPool2d, MaxPool2d)):
                want = tuple(int(d) for d in node.window.in_shape)
                if shape != want and not (len(shape) == 1 and shape[0] == int(np.prod(want))):
                    raise InvalidModelError(f"{_describe(node, k)} reads maps of shape {want}, it receives "
                                            + ("the samples" if not stages else "maps") + f" of shape {shape}")
                if not isinstance(node, Conv2d) and not stages:
                    raise InvalidModelError(f"{_describe(node, k)}: a pooling cannot be the model's first node")
                stages.append(Stage(node, "identity", None, want, tuple(node.out_shape)))
                shape = tuple(node.out_shape)
            elif isinstance(node, Activation):
                at = len(stages) - 1
                while at > 0 and isinstance(stages[at].node, MaxPool2d):
                    at -= 1  # an activation after max pooling commutes with it
                if at < 0 or not stages[at].linear or not passes_accumulator(stages[at].activation):
                    after = stages[-1].node if stages else None
                    if isinstance(after, (AvgPool2d, SumPool2d)):
                        raise InvalidModelError(f"activation '{node.kind}' ({_describe(node, k)}) follows an average "
                                                "pooling; hwq applies activations at dense and convolution layers",
                                                hint="put the activation before the pooling")
                    raise InvalidModelError(f"activation '{node.kind}' must follow a dense or convolution layer")
                stages[at] = Stage(stages[at].node, node.kind, node.quant, stages[at].in_shape, stages[at].out_shape)
        linear = [s for s in stages if s.linear]
        if not linear:
            raise InvalidModelError("the model has no dense (Gemm/MatMul) or convolution (Conv) layer")
        if not stages[-1].linear:
            raise InvalidModelError(f"the model ends with a pooling ({type(stages[-1].node).__name__}); hwq reads "
                                    "the raw scores of a dense or convolution layer at the output")
        if not passes_accumulator(stages[-1].activation):
            raise InvalidModelError(
                f"the last {'dense' if isinstance(stages[-1].node, Affine) else 'convolution'} layer is followed "
                f"by '{stages[-1].activation}'",
                hint="hwq expects raw scores, Softmax or a single Sigmoid at the output",
            )
        return stages

    def layers(self) -> list[tuple[Affine, str]]:
        """The linear nodes (``Affine``, ``Conv2d``) as (node, following activation) pairs, as
        ``stages()`` without the poolings; the last pair's activation is ``identity`` (the output
        rule lives in ``output``)."""
        return [(s.node, s.activation) for s in self.stages() if s.linear]

    def activation_quants(self) -> list[Quantizer | None]:
        """The file's output quantizer of each (linear node, activation) pair of ``layers()``."""
        return [s.quant for s in self.stages() if s.linear]

    @property
    def n_outputs(self) -> int:
        return self.linears[-1].n_out

    @property
    def n_classes(self) -> int:
        return 2 if self.n_outputs == 1 else self.n_outputs
