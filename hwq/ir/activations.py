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
clip(l,h)   min(max(z, l), h)      [l < z < h] (zero outside the clip range, as     lo_A .. hi_A
                                   ReLU's below 0; PyTorch's Hardtanh backward)     (``clip_grid``)
==========  =====================  ===============================================  ==============

``clip(l,h)`` is a parametric kind: ReLU6 is ``clip(0.0,6.0)``, Hardtanh ``clip(-1.0,1.0)``. Its
name carries the real bounds (``repr`` of two floats, ``clip_name``); ``kind(name)`` parses it,
and ``KINDS`` answers ``in``/``get``/``[]`` for every valid clip name while iterating only the
fixed kinds. The quantizer puts both bounds on the code grid (``clip_grid``, docs/integer-
semantics.md section "Clipped activations").
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from hwq.errors import InvalidModelError, UsageError

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
    def family(self) -> str:
        """The kind's name without parameters (``clip`` for every ``clip(l,h)``): how a backend
        picks its epilogue."""
        return self.name

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


def clip_name(lo: float, hi: float) -> str:
    """The serialized name of ``clip(z, lo, hi)``: ``clip(0.0,6.0)`` (ReLU6), ``clip(-1.0,1.0)``
    (Hardtanh); ``repr`` of the float64 bounds, so the name round-trips them exactly."""
    return f"clip({float(lo) + 0.0!r},{float(hi) + 0.0!r})"  # + 0.0: -0.0 is written 0.0


def clip_problem(lo: float, hi: float) -> str | None:
    """Why ``clip(z, lo, hi)`` is not a supported activation (None: it is): finite bounds with
    ``lo <= 0 < hi``, so that real zero is code 0 (padding and the bias rule rely on it)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"clip bounds [{lo:g}, {hi:g}] must be finite"
    if not lo <= 0 < hi:
        return f"clip bounds [{lo:g}, {hi:g}] must satisfy min <= 0 < max (real zero is code 0)"
    return None


GRID_TOLERANCE = 1e-9  # |lo / s - round(lo / s)| below which a bound counts as on the grid


def clip_grid(lo: float, hi: float, act_bits: int) -> tuple[int, int, float]:
    """``(code_lo, code_hi, scale)`` of ``clip(z, lo, hi)`` at ``act_bits`` bits: the codes are
    ``[code_lo, code_hi]`` and code ``c`` is the real value ``c * scale``.

    ``lo == 0`` (ReLU6): unsigned codes ``0 .. 2^A - 1`` with ``scale = hi / (2^A - 1)``.
    ``lo < 0`` (Hardtanh): signed codes within ``[-(2^(A-1) - 1), 2^(A-1) - 1]`` (symmetric, no
    offset): the largest ``n <= 2^(A-1) - 1`` with ``n lo / max(-lo, hi)`` an integer, scale
    ``max(-lo, hi) / n``, so both bounds are codes (``clip(-1, 1)``: ``n = 2^(A-1) - 1``,
    ``clip(-1, 3)``: ``n`` a multiple of 3). Where no ``n`` of at least half that range puts the
    smaller bound on the grid, ``n = 2^(A-1) - 1`` and it rounds to the nearest code (the
    quantizer reports the error). Raises ``InvalidModelError`` for 1-bit signed codes."""
    problem = clip_problem(lo, hi)
    if problem:
        raise InvalidModelError(problem)
    if lo == 0:
        top = 2**act_bits - 1
        return 0, top, hi / top
    top = 2 ** (act_bits - 1) - 1
    if top < 1:
        raise InvalidModelError(f"{clip_name(lo, hi)} has a negative lower bound: its signed codes need "
                                f"at least 2 activation bits, got {act_bits}", hint="use --act-bits 2 or more")
    peak, small = max(-lo, hi), min(-lo, hi)
    ratio = small / peak
    n = next((k for k in range(top, (top + 1) // 2 - 1, -1)
              if abs(ratio * k - round(ratio * k)) < GRID_TOLERANCE), top)
    scale = peak / n
    return int(round(lo / scale)), int(round(hi / scale)), scale


@dataclass(frozen=True)
class Clip(Kind):
    """``clip(z, lo, hi)``: ReLU6 (``lo, hi = 0, 6``), Hardtanh (``-1, 1``). Its integer codes
    are ``clip(requant(acc), code_lo, code_hi)`` with the bounds on the grid (``clip_grid``)."""

    lo: float = 0.0
    hi: float = 6.0
    name: str = field(default="", init=False)
    requantizes: bool = True

    def __post_init__(self):
        object.__setattr__(self, "lo", float(self.lo))
        object.__setattr__(self, "hi", float(self.hi))
        object.__setattr__(self, "name", clip_name(self.lo, self.hi))

    @property
    def family(self) -> str:
        return "clip"

    @property
    def takes_quantizer(self) -> bool:
        return False  # the scale follows from the bounds (clip_grid)

    def forward(self, z):
        return np.clip(z, self.lo, self.hi)

    def derivative(self, z):
        return ((z > self.lo) & (z < self.hi)).astype(z.dtype)

    def grid(self, act_bits: int) -> tuple[int, int, float]:
        return clip_grid(self.lo, self.hi, act_bits)

    def codes(self, v, act_bits, lut):
        lo, hi, _ = self.grid(act_bits)
        return np.clip(v, lo, hi)

    def code_range(self, act_bits, lut, acc_bound):
        lo, hi, _ = self.grid(act_bits)
        return lo, hi


CLIP_NAME = re.compile(r"clip\(([^,()]+),([^,()]+)\)")


@functools.lru_cache(maxsize=256)
def parse_clip(name: str) -> Clip | None:
    """The ``Clip`` kind a canonical clip name (``clip_name``) stands for, else None."""
    m = CLIP_NAME.fullmatch(name)
    if m is None:
        return None
    try:
        lo, hi = float(m.group(1)), float(m.group(2))
    except ValueError:
        return None
    if clip_problem(lo, hi) or clip_name(lo, hi) != name:
        return None
    return Clip(lo=lo, hi=hi)


class KindTable(Mapping):
    """The kinds by name: the fixed kinds, and every canonical ``clip(l,h)`` name on lookup
    (``in``, ``get``, ``[]``); iteration lists the fixed kinds."""

    def __init__(self, fixed: tuple[Kind, ...]):
        self.fixed = {k.name: k for k in fixed}

    def __getitem__(self, name) -> Kind:
        if isinstance(name, str):
            if name in self.fixed:
                return self.fixed[name]
            found = parse_clip(name)
            if found is not None:
                return found
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.fixed)

    def __len__(self) -> int:
        return len(self.fixed)


def clip(lo: float, hi: float) -> Clip:
    """The clip kind with real bounds ``lo, hi`` (``UsageError`` where unsupported)."""
    problem = clip_problem(float(lo), float(hi))
    if problem:
        raise UsageError(problem)
    return parse_clip(clip_name(lo, hi))


IDENTITY, RELU, SIGMOID, STEP, SIGN = Kind(), ReLU(), Sigmoid(), Step(), Sign()
KINDS: Mapping[str, Kind] = KindTable((IDENTITY, RELU, SIGMOID, STEP, SIGN))


def kind(name: str | Kind) -> Kind:
    """The activation object for a name (or the object itself)."""
    if isinstance(name, Kind):
        return name
    if name not in KINDS:
        raise UsageError(f"unknown activation '{name}'",
                         hint="use " + ", ".join(sorted(KINDS)) + " or clip(min,max) (e.g. clip(0.0,6.0))")
    return KINDS[name]


def forward(name: str | Kind, z: np.ndarray) -> np.ndarray:
    return kind(name).forward(z)


def derivative(name: str | Kind, z: np.ndarray) -> np.ndarray:
    return kind(name).derivative(z)
