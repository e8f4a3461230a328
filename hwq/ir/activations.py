"""Activations as typed objects: each kind says how it computes in floats, what gradient the
trainer and the attack surrogate follow through it, and which integer codes it emits.

One table, shared by the QAT trainer, the float model, the attack surrogate and the backends,
so the gradient an attack follows is the gradient the network was trained with, and a new kind
is added in one place. Names are the serialized form (IR, ``.hwq`` files); ``kind(name)``
gives the object. This table is the only place an activation's name is compared
(``tests/test_activation_names.py``): code elsewhere asks the kind (``binary``,
``requantizes``, ``codes``, ``code_range``) or compares kind objects (``kind is RELU``).

The integer half: ``codes(v, act_bits, lut)`` maps a layer's accumulator (``binary`` kinds and
identity) or its requantized value (``requantizes`` kinds) to the codes passed on, and
``code_range`` bounds them (docs/integer-semantics.md, section 3).

==========  =====================  ===============================================  ==============
name        forward f(z)           backward f'(z)                                   integer codes
==========  =====================  ===============================================  ==============
identity    z                      1                                                the accumulator
relu        max(z, 0)              [z > 0]                                          0 .. 2^A - 1
sigmoid     1 / (1 + exp(-z))      f(z) (1 - f(z))                                  the LUT's range
step        [z > 0]                surrogate 1 / (1 + |z|)^2 (fast sigmoid; the     0, 1
                                   true derivative is zero almost everywhere)
sign        +1 if z >= 0 else -1   surrogate 2 / (1 + |z|)^2 (sign = 2 step - 1     -1, +1
                                   up to z = 0)
==========  =====================  ===============================================  ==============
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hwq.errors import UsageError

HIDDEN_ACTIVATIONS = ("step", "sigmoid", "relu")


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


@dataclass(frozen=True)
class Kind:
    """An activation kind. ``binary``: emits two fixed codes (no requantization);
    ``requantizes``: the integer layer rescales its accumulator before the activation;
    neither (identity): the accumulator itself is passed on."""

    name: str = "identity"
    binary: bool = False
    requantizes: bool = False

    @property
    def graded(self) -> bool:
        """Codes with more than two levels (identity, relu, sigmoid)."""
        return not self.binary

    @property
    def passes_accumulator(self) -> bool:
        """The layer's codes are its accumulator (identity: an output layer or a linear hidden one)."""
        return not (self.binary or self.requantizes)

    @property
    def uses_lut(self) -> bool:
        """The codes come from a lookup table indexed by the requantized value (sigmoid)."""
        return False

    @property
    def takes_quantizer(self) -> bool:
        """A QAT file can give this kind's output a quantizer (relu, sigmoid; sign's bipolar
        scale): the hidden layers whose activation grid a file may carry."""
        return self.requantizes

    def forward(self, z: np.ndarray) -> np.ndarray:
        return z

    def derivative(self, z: np.ndarray) -> np.ndarray:
        return np.ones_like(z)

    def codes(self, v: np.ndarray, act_bits: int, lut: np.ndarray | None) -> np.ndarray:
        """The int64 codes passed on for ``v``: the accumulator, or for ``requantizes`` kinds the
        requantized accumulator (identity: ``v`` itself)."""
        return v

    def code_range(self, act_bits: int, lut: np.ndarray | None,
                   acc_bound: int | Callable[[], int]) -> tuple[int, int]:
        """The integer codes this kind passes on (identity: ``[-B, B]`` with ``B`` the largest
        |accumulator|; ``acc_bound`` may be a function computing it, called only here)."""
        bound = acc_bound() if callable(acc_bound) else acc_bound
        return -bound, bound


@dataclass(frozen=True)
class ReLU(Kind):
    name: str = "relu"
    requantizes: bool = True

    def forward(self, z):
        return np.maximum(z, 0)

    def derivative(self, z):
        return (z > 0).astype(z.dtype)

    def codes(self, v, act_bits, lut):
        return np.clip(v, 0, 2**act_bits - 1)

    def code_range(self, act_bits, lut, acc_bound):
        return 0, max(0, 2**act_bits - 1)


@dataclass(frozen=True)
class Sigmoid(Kind):
    name: str = "sigmoid"
    requantizes: bool = True

    def forward(self, z):
        return sigmoid(z)

    @property
    def uses_lut(self) -> bool:
        return True

    def derivative(self, z):
        s = sigmoid(z)
        return s * (1 - s)

    def codes(self, v, act_bits, lut):
        """``lut[clip(v, -H, H - 1) + H]`` with ``H`` half the table (2^11)."""
        half = lut.shape[0] // 2
        return lut[np.clip(v, -half, half - 1) + half]

    def code_range(self, act_bits, lut, acc_bound):
        return int(lut.min()), int(lut.max())


@dataclass(frozen=True)
class Step(Kind):
    name: str = "step"
    binary: bool = True

    def forward(self, z):
        return (z > 0).astype(z.dtype)

    def derivative(self, z):
        return 1.0 / (1.0 + np.abs(z)) ** 2

    def codes(self, v, act_bits, lut):
        return (v > 0).astype(np.int64)

    def code_range(self, act_bits, lut, acc_bound):
        return 0, 1


@dataclass(frozen=True)
class Sign(Kind):
    name: str = "sign"
    binary: bool = True

    def forward(self, z):
        return np.where(z >= 0, 1.0, -1.0).astype(z.dtype)

    def derivative(self, z):
        return 2.0 / (1.0 + np.abs(z)) ** 2

    @property
    def takes_quantizer(self) -> bool:
        return True

    def codes(self, v, act_bits, lut):
        return np.where(v >= 0, 1, -1).astype(np.int64)

    def code_range(self, act_bits, lut, acc_bound):
        return -1, 1


IDENTITY, RELU, SIGMOID, STEP, SIGN = Kind(), ReLU(), Sigmoid(), Step(), Sign()
KINDS: dict[str, Kind] = {k.name: k for k in (IDENTITY, RELU, SIGMOID, STEP, SIGN)}


def kind(name: str | Kind) -> Kind:
    """The activation object for a name (or the object itself)."""
    if isinstance(name, Kind):
        return name
    if name not in KINDS:
        raise UsageError(f"unknown activation '{name}'", hint="use " + ", ".join(sorted(KINDS)))
    return KINDS[name]


def forward(name: str | Kind, z: np.ndarray) -> np.ndarray:
    return kind(name).forward(z)


def derivative(name: str | Kind, z: np.ndarray) -> np.ndarray:
    return kind(name).derivative(z)
