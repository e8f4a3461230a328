"""The straight-through estimator's shape: the derivative the surrogate gradient follows
through a binary activation (``step``, ``sign``), whose true derivative is zero almost
everywhere. A masking remedy (``--ste``), beside the logit temperature (``gradients``).

A shape is the derivative ``s(z)`` of a smooth stand-in for ``step(z) = [z > 0]`` at the
real pre-activation ``z`` (accumulator times its scale: ``W`` and ``S`` are in those units);
``sign = 2 step - 1`` takes twice it (each binary kind's code step: ``hi - lo`` of its code
range). The names are the BNN/SNN literature's:

=================  ====================================  =======================================
``--ste``          ``s(z)`` for step                     known as
=================  ====================================  =======================================
fast-sigmoid[:S]   ``1 / (1 + S |z|)^2`` (S = 1)         the default (``hwq.ir.activations``);
                                                         SuperSpike's surrogate (Zenke & Ganguli
                                                         2018), snntorch's ``fast_sigmoid(slope)``
identity           ``1``                                 the plain STE (Bengio et al. 2013)
box:W              ``[|z| <= W]``                        the clipped / hardtanh STE (Hubara et
                                                         al. 2016: W = 1)
sigmoid:S          ``S sigma(S z) (1 - sigma(S z))``     the sigmoid-derivative surrogate of
                                                         slope S (snntorch's ``sigmoid(slope)``)
=================  ====================================  =======================================

The default (``fast-sigmoid`` with S = 1, or nothing given) leaves the activation objects as
they are, so the gradient is the one hwq always computed, bit for bit. Other kinds (ReLU:
``[0 < z]`` and 0 above the top code, the integer clip; sigmoid: its own derivative) keep
their derivatives; the rounding of every quantizer stays straight through (identity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq.errors import UsageError
from hwq.ir import activations
from hwq.ir.activations import Kind

SHAPES = ("fast-sigmoid[:S]", "identity", "box:W", "sigmoid:S")
DEFAULT = "fast-sigmoid"


def _identity(z, _value):
    return np.ones_like(z)


def _box(z, width):
    return (np.abs(z) <= width).astype(z.dtype)


def _sigmoid(z, slope):
    s = activations.sigmoid(slope * z)
    return slope * s * (1 - s)


def _fast_sigmoid(z, slope):
    return 1.0 / (1.0 + slope * np.abs(z)) ** 2


# name -> (s(z, value), what its value is: None = takes none, default value or None = required)
DERIVATIVES = {"identity": (_identity, None, None), "box": (_box, "the width W", None),
               "sigmoid": (_sigmoid, "the slope S", None), "fast-sigmoid": (_fast_sigmoid, "the slope S", 1.0)}


@dataclass(frozen=True)
class Shape:
    """A straight-through shape: its ``name`` (a key of ``DERIVATIVES``) and its width ``W`` or
    slope ``S`` (``value``; None for ``identity``)."""

    name: str
    value: float | None = None

    @property
    def spec(self) -> str:
        """The text form (``box:0.5``), what results and sweep files record."""
        if self.value is None:
            return self.name
        text = repr(float(self.value))  # the shortest text that reads back as the same float
        return f"{self.name}:{text[:-2] if text.endswith('.0') else text}"

    def derivative(self, z: np.ndarray) -> np.ndarray:
        """``s(z)`` for the step (module doc)."""
        return DERIVATIVES[self.name][0](np.asarray(z), self.value)


def parse_ste(text) -> Shape | None:
    """``--ste`` text as a :class:`Shape`, or None for the default (nothing given, or
    ``fast-sigmoid`` with slope 1: the activations' own surrogate). Bad text: one ``UsageError``."""
    if text is None or isinstance(text, Shape):
        return None if isinstance(text, Shape) and text.spec == DEFAULT else text
    name, colon, arg = str(text).strip().partition(":")
    if name not in DERIVATIVES:
        raise UsageError(f"--ste: unknown straight-through shape '{text}'", hint="use " + " | ".join(SHAPES))
    _, takes, default = DERIVATIVES[name]
    value = None
    if takes is None and colon:
        raise UsageError(f"--ste {text}: {name} takes no value", hint="use " + " | ".join(SHAPES))
    if takes is not None and not colon and default is not None:
        value = default
    elif takes is not None:
        try:
            value = float(arg)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value) or value <= 0:
            raise UsageError(f"--ste {text}: {takes} must be a positive number", hint="use " + " | ".join(SHAPES))
    shape = Shape(name, value)
    return None if shape.spec == DEFAULT + ":1" else shape


def check_ste(text) -> str | None:
    """The canonical text of a shape (``box:0.5``), None for the default."""
    shape = parse_ste(text)
    return None if shape is None else shape.spec


@dataclass(frozen=True)
class Straight(Kind):
    """A binary kind (``base``: step or sign) whose backward is ``shape``'s, scaled by the
    kind's code step (1 for step, 2 for sign); forward and codes stay the base's."""

    base: Kind = activations.STEP
    shape: Shape = Shape("identity")

    def forward(self, z):
        return self.base.forward(z)

    def derivative(self, z):
        lo, hi = self.base.code_range(0, None, 0)
        return (hi - lo) * self.shape.derivative(z)

    def codes(self, v, act_bits, lut):
        return self.base.codes(v, act_bits, lut)

    def code_range(self, act_bits, lut, acc_bound):
        return self.base.code_range(act_bits, lut, acc_bound)


def shaped(acts: list, ste) -> list:
    """``acts`` (activation kinds or names, per node) with each binary kind's backward replaced
    by the shape ``ste`` (text or :class:`Shape`); the list itself for the default."""
    shape = parse_ste(ste)
    if shape is None:
        return acts
    out = []
    for act in acts:
        k = activations.kind(act)
        out.append(Straight(name=k.name, binary=True, requantizes=k.requantizes, base=k, shape=shape)
                   if k.binary else act)
    return out


def has_binary(acts: list) -> bool:
    """Whether any node's activation is binary (where a shape changes the gradient)."""
    return any(activations.kind(a).binary for a in acts)
