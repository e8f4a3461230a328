"""Float activations and the derivatives that training and surrogate gradients use.

One table, shared by the QAT trainer, the float model and the attack surrogate, so the
gradient an attack follows is the gradient the network was trained with.

==========  =====================  ===============================================
name        forward f(z)           backward f'(z)
==========  =====================  ===============================================
identity    z                      1
relu        max(z, 0)              [z > 0]
sigmoid     1 / (1 + exp(-z))      f(z) (1 - f(z))
step        [z > 0]                surrogate 1 / (1 + |z|)^2 (fast sigmoid; the true
                                   derivative is zero almost everywhere)
sign        +1 if z >= 0 else -1   surrogate 2 / (1 + |z|)^2 (sign = 2 step - 1 up to z = 0)
==========  =====================  ===============================================
"""

from __future__ import annotations

import numpy as np

from hwq.errors import UsageError

HIDDEN_ACTIVATIONS = ("step", "sigmoid", "relu")


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def forward(name: str, z: np.ndarray) -> np.ndarray:
    if name == "identity":
        return z
    if name == "relu":
        return np.maximum(z, 0)
    if name == "sigmoid":
        return sigmoid(z)
    if name == "step":
        return (z > 0).astype(z.dtype)
    if name == "sign":
        return np.where(z >= 0, 1.0, -1.0).astype(z.dtype)
    raise UsageError(f"unknown activation '{name}'", hint="use step, sign, sigmoid, relu or identity")


def derivative(name: str, z: np.ndarray) -> np.ndarray:
    if name == "identity":
        return np.ones_like(z)
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "sigmoid":
        s = sigmoid(z)
        return s * (1 - s)
    if name == "step":
        return 1.0 / (1.0 + np.abs(z)) ** 2
    if name == "sign":
        return 2.0 / (1.0 + np.abs(z)) ** 2
    raise UsageError(f"unknown activation '{name}'", hint="use step, sign, sigmoid, relu or identity")
