"""Gradient sources for white-box attacks on integer models (foolbox's ``value_and_grad``).

An integer network has no gradient. A source supplies ``dL/dx`` for the cross-entropy loss
of the true label, from:

* ``SurrogateGradient`` (default): the real-valued weights ``W * weight_scale`` of the very
  integer network the target runs (the mapped weights where the target rounds them: loihi),
  backpropagated at the target's own operating point (its pre-activations ``z`` from
  ``trace``): straight through the rounding and input quantization, the true derivative for
  ReLU (0 where the integer ReLU saturates at ``2^A - 1``) and sigmoid, the fast-sigmoid
  surrogate for the step (``hwq.ir.activations``). This is "white box against the hardware model".
* ``FloatGradient``: the original float model (a transfer attack).

Backprop, for ``z_l = g_l (W_l h_{l-1} + b_l)``, ``h_l = f_l(z_l)``:
``delta_L = p - onehot(y)`` (softmax CE; ``sigmoid(z) - y`` for one output),
``delta_{l-1} = f'_{l-1}(z_{l-1}) * (g_l delta_l W_l)``, ``dL/dx = g_1 delta_1 W_1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hwq import ir
from hwq.attack.ste import check_ste, shaped
from hwq.attack.transpose import integer_node_op, node_activation, node_gain, product
from hwq.errors import UsageError
from hwq.ir import activations
from hwq.params import declared, param
from hwq.quant.qnet import QLayer, QuantizedNetwork
from hwq.quant.reference import quantize_input
from hwq.ranges import check_gradient
from hwq.target.protocol import Accumulating, HasBitExactModel, OwnSurrogate, ReferenceProgram, Traceable


class GradientSource(Protocol):
    name: str

    def value_and_grad(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def output_loss(z: np.ndarray, y: np.ndarray, single: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample cross-entropy and its gradient with respect to the scores ``z``."""
    if single:
        p = activations.sigmoid(z[:, 0])
        loss = np.logaddexp(0, z[:, 0]) - y * z[:, 0]
        return loss, (p - y)[:, None]
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    delta = np.exp(logp)
    delta[np.arange(len(y)), y] -= 1
    return -logp[np.arange(len(y)), y], delta


_BLAS = {"controller": None}  # threadpoolctl's controller, made at the first gradient


def one_blas_thread():
    """A context in which numpy's BLAS runs on one thread (threadpoolctl), the count before
    restored after.

    Gradient products run this way: OpenBLAS's worker threads busy-wait for a while after a
    threaded call returns, and an attack step alternates BLAS with the integer pass's own
    threads (Numba, the VNNI pool) every few milliseconds; when another process holds a core
    the two sets of threads take the cores from each other (``bench_attacks.py``: threaded,
    the attack takes 1.56x as long under load, 0.94x idle; benchmarks/README.md). Sweeps run one
    cell per single-threaded process; two attacks in threads of one process would each set
    and restore the count around their own products."""
    if _BLAS["controller"] is None:
        from threadpoolctl import ThreadpoolController

        _BLAS["controller"] = ThreadpoolController()
    return _BLAS["controller"].limit(limits=1, user_api="blas")


def logit_temperature(z: np.ndarray, y: np.ndarray, single: bool) -> np.ndarray:
    """Per row, the temperature ``T`` (from ``TEMPERATURE_GRID``) at which the cross-entropy's
    gradient with respect to the logits, ``|softmax(z / T) - onehot(y)|_2 / T`` (sigmoid for
    one output), is largest: saturated rows (``p_y`` = 1 in float64, the gradient exactly 0)
    get a high temperature, flat ones a low one. The rule of ``temperature="auto"``
    (per input, in the spirit of Gupta & Ajanthan's PGD++, whose own rules scale by the
    network's Jacobian or the Hessian's norm; this one needs no extra backward pass)."""
    best, out = np.full(len(z), -1.0), np.ones(len(z))
    for t in TEMPERATURE_GRID:
        _, delta = output_loss(z / t, y, single)
        size = np.linalg.norm(delta, axis=1) / t
        better = size > best
        best[better], out[better] = size[better], t
    return out


TEMPERATURE_GRID = tuple(2.0**k for k in range(-12, 13))


def check_temperature(value):
    """``None`` (no scaling), a positive number, or ``"auto"`` (per input, ``logit_temperature``)."""
    if value is None or value == "auto":
        return value
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not np.isfinite(t) or t <= 0:
        raise UsageError(f"--temperature must be a positive number or 'auto', got {value!r}")
    return t


def remedy_tag(temperature=None, ste=None) -> str:
    """What a source's name adds for its remedies: `` T=0.25``, `` ste=box:1`` (nothing for the defaults)."""
    return ("" if temperature is None else f" T={temperature}") + ("" if ste is None else f" ste={ste}")


def backprop(weights, gains, acts, zs, y, single, tops=None, sign_dtype=None, loss=None,
             temperature=None) -> tuple[np.ndarray, np.ndarray]:
    """``(loss, dL/dx)`` through nodes ``weights[l]`` at pre-activations ``zs``: a dense
    matrix (n_out, n_in), or a node's backward operator (``hwq.attack.transpose``: a
    convolution's transposed product, a pool's spread or routing, which reads the operating
    point ``zs[l - 1]`` of the node below);
    ``tops[l]``: where layer ``l``'s ReLU saturates (real value; None: it does not), so
    the derivative is 0 above it.

    ``sign_dtype`` (e.g. ``np.float32``; ``weights`` then in that dtype): for callers that use
    only the sign of each component (l-inf steps). The loss, the softmax and the activation
    derivatives stay float64; before each product every row of ``delta`` is scaled by a power
    of two (exact in float64, so the float64 signs are unchanged) that brings its largest
    entry to [1/2, 1), then the product runs in ``sign_dtype``: no underflow of confident
    softmax deltas or saturated sigmoid derivatives, and a sign differs from float64's only
    where the component is below the rounding error of the narrower sum. The products run
    on one BLAS thread (``one_blas_thread``).

    ``loss``: a callable ``z -> (value, dvalue/dz)`` per row (APGD's DLR losses), else the
    cross-entropy of ``y``. ``temperature`` ``T`` (a number, or ``"auto"``: per row,
    ``logit_temperature``): the loss of ``z / T`` (a masking remedy: Galloway et al. 2018;
    Gupta & Ajanthan 2022), its gradient ``(1/T) dloss(z/T)``."""
    with one_blas_thread():
        return _products(weights, gains, acts, zs, y, single, tops, sign_dtype, loss, temperature)


def top_loss(z, y, single, loss=None, temperature=None) -> tuple[np.ndarray, np.ndarray]:
    """``(value, dvalue/dz)`` of ``loss`` (default: the cross-entropy of ``y``) at the scores
    ``z`` scaled by ``1 / temperature``."""
    if temperature is None:
        return loss(z) if loss is not None else output_loss(z, y, single)
    t = logit_temperature(z, y, single) if temperature == "auto" else np.full(len(z), float(temperature))
    value, delta = loss(z / t[:, None]) if loss is not None else output_loss(z / t[:, None], y, single)
    return value, delta / t[:, None]


def _products(weights, gains, acts, zs, y, single, tops, sign_dtype, loss_fn=None, temperature=None):
    loss, delta = top_loss(zs[-1], y, single, loss_fn, temperature)
    for layer in range(len(weights) - 1, -1, -1):
        if sign_dtype is not None:
            delta = pow2_rows(delta).astype(sign_dtype)
        grad_h = gains[layer] * product(weights[layer], delta, zs[layer - 1] if layer else None)
        if layer == 0:
            return loss, grad_h
        z = zs[layer - 1]
        delta = grad_h * activations.derivative(acts[layer - 1], z)
        top = None if tops is None else tops[layer - 1]
        if top is not None:
            delta = delta * (z < top)
    raise AssertionError("unreachable")


def pow2_rows(a: np.ndarray) -> np.ndarray:
    """``a`` with each row scaled by the power of two that brings its largest ``|entry|`` to
    [1/2, 1) (exact in float64; all-zero rows unchanged)."""
    _, exponent = np.frexp(np.abs(a).max(axis=1, keepdims=True))
    return np.ldexp(a, -exponent)


def relu_top(layer) -> float | None:
    """The real pre-activation where an integer ReLU reaches its largest code ``2^A - 1``
    (None for a pool or another kind)."""
    if not isinstance(layer, QLayer) or layer.activation_kind is not activations.RELU or not layer.act_bits:
        return None
    return (2**layer.act_bits - 1) * layer.out_scale


def surrogate_layers(program) -> tuple[list, list]:
    """``(backward operators, ReLU tops)`` per node of what ``program`` computes: its own
    ``surrogate_layers()`` (real weights) where it maps weights differently (loihi), else the
    network's ``W * weight_scale``; a convolution's weight as its transposed product, pools as
    their spread or routing (``hwq.attack.transpose.integer_node_op``); the ``2^A - 1`` clip of
    each ReLU."""
    layers = program.net.layers
    if isinstance(program, OwnSurrogate):
        weights, tops = program.surrogate_layers()
    else:
        weights, tops = [None] * len(layers), [relu_top(layer) for layer in layers]
    return [integer_node_op(layers, i, w) for i, w in enumerate(weights)], list(tops)


def narrow(op, dtype):
    """A backward operator with its weights in ``dtype`` (the sign-only products)."""
    return np.asarray(op, dtype) if isinstance(op, np.ndarray) else op.astype(dtype)


class SurrogateGradient:
    """Gradient of the integer network's own weights at the operating point of ``reference``,
    a program that can trace (``hwq.target.protocol.Traceable``): the judged program itself
    when it can, else the bit-exact model of the same compiled network.

    Besides ``value_and_grad`` (float64), iterative attacks use the split form: ``point(codes)``
    (the operating point of device codes), ``judged_point(codes)`` (the integer scores and the
    operating point from one integer forward pass, where ``fuses_with(program)``: the judged
    program is the reference and gives its accumulators) and ``grad_at(zs, y, sign_only)``.
    ``sign_only``: the caller uses only each component's sign (l-inf), and the products run in
    ``sign_dtype`` (float32 by default; ``backprop``); None keeps float64 everywhere."""

    name = "surrogate"

    def __init__(self, reference, sign_dtype=np.float32, temperature=None, ste=None):
        if not isinstance(reference, Traceable):
            raise UsageError(f"the {reference.target} program cannot trace its pre-activations",
                             hint="build the surrogate from its bit-exact model (default_gradient)")
        self.program = reference
        net: QuantizedNetwork = reference.net
        self.weights, self.tops = surrogate_layers(reference)
        self.sign_dtype = sign_dtype
        self.narrow = None if sign_dtype is None else [narrow(w, sign_dtype) for w in self.weights]
        self.gains = [node_gain(layer) for layer in net.layers]
        self.ste = check_ste(ste)  # the straight-through shape of binary kinds (hwq.attack.ste)
        self.acts = shaped([node_activation(layer) for layer in net.layers], self.ste)
        self.scales = [layer.unit_scale for layer in net.layers]
        self.single = net.output == "sign"
        self.temperature = check_temperature(temperature)
        self.name = "surrogate" + remedy_tag(self.temperature, self.ste)

    def value_and_grad(self, x, y, loss=None):
        return self.grad_at(self.point(quantize_input(self.program.net.input, x)), y, loss=loss)

    def with_temperature(self, temperature) -> SurrogateGradient:
        """The same source with another logit temperature (a masking remedy)."""
        return SurrogateGradient(self.program, self.sign_dtype, temperature, self.ste)

    def with_ste(self, ste) -> SurrogateGradient:
        """The same source with another straight-through shape (a masking remedy)."""
        return SurrogateGradient(self.program, self.sign_dtype, self.temperature, ste)

    def point(self, codes) -> list[np.ndarray]:
        """The reference's pre-activations ``z`` per layer for device codes."""
        return self.program.trace(codes)

    def fuses_with(self, program) -> bool:
        """Whether ``judged_point`` gives ``program``'s own scores: ``program`` is the reference
        and exposes its int64 accumulators (``sim``), whose last layer is ``forward``'s scores
        and whose ``acc * acc_scale`` is ``trace``."""
        return program is self.program and isinstance(program, Accumulating)

    def judged_point(self, codes) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(integer scores, z per layer)`` from one pass of the reference (``fuses_with``)."""
        accs = self.program.accumulators(codes)
        return accs[-1], [acc * scale for acc, scale in zip(accs, self.scales)]

    def grad_at(self, zs, y, sign_only: bool = False, loss=None):
        """``(loss, dL/dx)`` at the operating point ``zs``; ``sign_only``: see the class doc;
        ``loss``: see ``backprop`` (default: the cross-entropy of ``y``)."""
        if sign_only and self.sign_dtype is not None:
            return backprop(self.narrow, self.gains, self.acts, zs, y, self.single, self.tops,
                            sign_dtype=self.sign_dtype, loss=loss, temperature=self.temperature)
        return backprop(self.weights, self.gains, self.acts, zs, y, self.single, self.tops, loss=loss,
                        temperature=self.temperature)


class FloatGradient:
    """Gradient of the original float model (transfer attack), dense or convolutional
    (``hwq.attack.float_backward``): the forward computes with the float evaluator's formulas
    (``hwq.ir.float_ops``) and records the pre-activations the backward reads."""

    name = "float"

    def __init__(self, graph: ir.Graph, temperature=None, ste=None):
        from hwq.attack.float_backward import float_chain

        if graph is None:
            raise UsageError("this network keeps no float model (built in integers), so --grad float has "
                             "nothing to differentiate", hint="use --grad surrogate")
        self.graph, self.temperature, self.ste = graph, check_temperature(temperature), check_ste(ste)
        self.name = "float" + remedy_tag(self.temperature, self.ste)
        self.chain = float_chain(graph)
        self.acts = shaped([node.act for node in self.chain], self.ste)
        self.single = graph.output.kind == "sigmoid"

    def forward(self, x: np.ndarray) -> list[np.ndarray]:
        from hwq.attack.float_backward import float_trace

        return float_trace(self.chain, x)

    def with_temperature(self, temperature) -> FloatGradient:
        return FloatGradient(self.graph, temperature, self.ste)

    def with_ste(self, ste) -> FloatGradient:
        return FloatGradient(self.graph, self.temperature, ste)

    def value_and_grad(self, x, y, loss=None):
        weights = [node.back for node in self.chain]
        gains = [node.back_gain for node in self.chain]
        return backprop(weights, gains, self.acts, self.forward(x), y, self.single, loss=loss,
                        temperature=self.temperature)


def reference_for(program):
    """The program whose operating point the surrogate follows: ``program`` itself when it can
    trace, else its ``bit_exact_model()`` (a device's local model), else the numpy reference
    of the same integer network."""
    if isinstance(program, Traceable):
        return program
    return program.bit_exact_model() if isinstance(program, HasBitExactModel) else ReferenceProgram(program.net)


def default_gradient(program, temperature=None, ste=None) -> SurrogateGradient:
    return SurrogateGradient(reference_for(program), temperature=temperature, ste=ste)


TRANSFER_FORMS = ("surrogate", "float", "bits:Q", "target:NAME", "model:FILE.hwq")


def check_gradient_name(name: str) -> str:
    """``surrogate`` | ``float`` | ``bits:Q`` (the same float model re-quantized to Q bits) |
    ``target:NAME`` (the surrogate of the network compiled for another target) |
    ``model:FILE.hwq`` (the surrogate of another compiled model, e.g. another bit width of
    the same training run)."""
    kind, _, arg = name.partition(":")
    if kind in ("bits", "target", "model"):
        if not arg:
            raise UsageError(f"gradient source '{name}' needs a value after ':'",
                             hint="use " + " | ".join(TRANSFER_FORMS))
        if kind == "bits":
            from hwq.quant.schemes import check_bits

            try:
                check_bits(int(arg))
            except ValueError:
                raise UsageError(f"gradient source '{name}': bits must be an integer",
                                 hint="e.g. bits:2") from None
        return name
    try:
        return check_gradient(name)
    except UsageError:
        raise UsageError(f"unknown gradient source '{name}'", hint="use " + " | ".join(TRANSFER_FORMS)) from None


class Named:
    """A gradient source under another name (what the results record): ``base`` and the
    source's remedies (``remedy_tag``)."""

    def __init__(self, source, base: str):
        self.source, self.base = source, base
        self.name = base + remedy_tag(source.temperature, source.ste)

    def with_temperature(self, temperature) -> Named:
        return Named(self.source.with_temperature(temperature), self.base)

    def with_ste(self, ste) -> Named:
        return Named(self.source.with_ste(ste), self.base)

    def value_and_grad(self, x, y, **kw):
        return self.source.value_and_grad(x, y, **kw)

    def __getattr__(self, attr):  # point, grad_at, fuses_with, ... where the source has them
        if attr in ("source", "base"):
            raise AttributeError(attr)
        return getattr(self.source, attr)


def gradient_source(name: str, program, *, calibration=None, bounds=None, temperature=None,
                    ste=None) -> GradientSource:
    """A gradient source by name for attacks on ``program`` (``check_gradient_name``).
    ``bits:Q`` re-quantizes the float model with the program's settings at Q bits, calibrated
    on ``calibration`` (the CLI and sweeps pass the training inputs). ``temperature``: the
    logit temperature of its loss (``backprop``; a number or ``"auto"``); ``ste``: the
    straight-through shape of binary activations (``hwq.attack.ste``; None: the default)."""
    kind, _, arg = check_gradient_name(name).partition(":")
    temperature, ste = check_temperature(temperature), check_ste(ste)
    if kind == "surrogate":
        return default_gradient(program, temperature, ste)
    if kind == "float":
        return FloatGradient(program.net.float_graph, temperature, ste)
    if kind == "bits":
        from dataclasses import replace

        from hwq.quant.quantize import quantize

        if calibration is None:
            raise UsageError("gradient source bits:Q needs calibration data")
        settings = replace(program.net.settings, bits=int(arg))
        net = quantize(program.net.float_graph, settings, calibration, bounds)
        return Named(default_gradient(ReferenceProgram(net), temperature, ste), name)
    if kind == "target":
        from hwq.target.registry import get_target, resolve_target

        target, options = resolve_target(arg)
        return Named(default_gradient(get_target(target).compile(program.net, **options), temperature, ste), name)
    from hwq.files.program import load_program

    other = load_program(arg)
    if other.net.n_features != program.net.n_features:
        raise UsageError(f"{arg} expects {other.net.n_features} inputs, the attacked model "
                         f"{program.net.n_features}")
    return Named(default_gradient(other, temperature, ste), name)


@dataclass(frozen=True)
class GradientOptions:
    """The gradient source's options (its masking remedies), declared once (``hwq.params``):
    the options of ``hwq attack`` and ``hwq sweep`` (``hwq.cli.common.gradient_options``) and
    the sweep spec's ``AttackSettings`` fields are made from these fields, and ``check_option``
    checks a value of each."""

    temperature: str | float | None = param(
        None, help="Logit temperature of the gradient's loss: a number (e.g. 0.25) or auto (per input); "
                   "a masking remedy.")
    ste: str | None = param(
        None, help="Straight-through shape of step/sign activations in the gradient: fast-sigmoid[:S] "
                   "(default), identity, box:W (hardtanh), sigmoid:S; a masking remedy (docs/attacks.md).")


GRADIENT_OPTIONS = declared(GradientOptions)
_OPTION_CHECKS = {"temperature": check_temperature, "ste": check_ste}


def check_option(name: str, value):
    """A gradient option's value in its canonical form (None: the default), else a ``UsageError``."""
    return _OPTION_CHECKS[name](value)
