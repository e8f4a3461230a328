"""The float formulas of the IR's nodes on arrays, written once: the float evaluator
(``hwq.ir.evaluate``), calibration (``hwq.quant.quantize``), the float model's gradient
(``hwq.attack.float_backward``) and training's forward (``hwq.train``) all compute with these.

Samples are rows ``(N, n_features)``, maps flattened in C-order (``hwq.ir.window``):

* ``dense``: ``gain (h W^T + b)`` (``b``, ``gain`` optional);
* ``patches``: ``(N, groups, Ho Wo, cg kh kw)``, the window's ``gather_index`` over ``h`` with
  the padding read as ``pad``;
* ``conv``: ``y[n, o, p] = gain[o] (sum_k W[o, k] patch[n, g(o), p, k] + b[o])``, flat;
* ``max_pool``: the window's maximum, padding ``-inf`` (never wins);
* ``window_sum``: the window's sum, padding 0 (an average pooling divides it by ``kh kw``, a
  QONNX sum pooling by ``2^shift``).

A convolution's sum over the patch is a floating-point sum, so its last bits depend on the
order in which numpy adds; three orders are in use and each caller keeps the one it had
(``CONV_ORDERS``; on random small convolutions they disagree in the last bit for about half of
the outputs, so unifying them would change numbers): ``einsum-optimized`` (numpy's optimized
contraction: the float evaluator), ``einsum`` (the plain C loop: the float model's gradient)
and ``matmul`` (batched BLAS GEMM: calibration).
"""

from __future__ import annotations

import numpy as np

CONV_ORDERS = ("einsum-optimized", "einsum", "matmul")


def dense(h: np.ndarray, weight: np.ndarray, bias=None, gain=None) -> np.ndarray:
    """``gain * (h @ weight.T + bias)``: ``bias`` or ``gain`` None leaves that step out (a
    scalar or per-output ``gain``; the dtype is the operands' own: float32 in training)."""
    z = h @ weight.T
    if bias is not None:
        z = z + bias
    return z if gain is None else gain * z


def patches(window, h: np.ndarray, pad=0.0) -> np.ndarray:
    """Every patch of the maps ``h`` (N, C H W): ``(N, groups, Ho Wo, cg kh kw)``, padding read
    as ``pad`` (``window.gather_index``: its ``-1`` reads the extra last column)."""
    padded = np.concatenate([h, np.full((len(h), 1), pad, h.dtype)], axis=1)
    return padded[:, window.gather_index]


def conv_sums(window, matrix: np.ndarray, h: np.ndarray, order: str = "einsum-optimized") -> np.ndarray:
    """``sum_k W[o, k] patch[n, g(o), p, k]`` as ``(N, C_out, Ho Wo)`` for a weight matrix
    ``(C_out, cg kh kw)``, padding reading 0, summed in ``order`` (``CONV_ORDERS``)."""
    p = patches(window, h)  # (N, g, P, K)
    w = matrix.reshape(window.groups, -1, window.patch_len)  # (g, O/g, K)
    n, shape = len(h), (len(h), matrix.shape[0], window.positions)
    if order == "matmul":
        z = np.matmul(p, np.swapaxes(w, 1, 2)[None])  # (N, g, P, O/g)
        return np.swapaxes(z, 2, 3).reshape(shape)
    if order not in CONV_ORDERS:
        raise ValueError(f"unknown summation order {order!r}; one of {CONV_ORDERS}")
    acc = np.einsum("ngpk,gok->ngop", p, w, optimize=order == "einsum-optimized")
    return acc.reshape(n, *shape[1:])


def conv(window, matrix: np.ndarray, h: np.ndarray, bias=None, gain=None,
         order: str = "einsum-optimized") -> np.ndarray:
    """A convolution's output ``gain[o] (sums + bias[o])`` flat ``(N, C_out Ho Wo)`` (``bias``,
    ``gain`` per output channel, None: left out)."""
    z = conv_sums(window, matrix, h, order)
    if bias is not None:
        z = z + bias[None, :, None]
    if gain is not None:
        z = gain[None, :, None] * z
    return z.reshape(len(h), -1)


def max_pool(window, h: np.ndarray) -> np.ndarray:
    """Each window's maximum, flat ``(N, C Ho Wo)``; padding never wins."""
    return patches(window, h, -np.inf).max(axis=-1).reshape(len(h), -1)


def window_sum(window, h: np.ndarray) -> np.ndarray:
    """Each window's sum, flat ``(N, C Ho Wo)``; padding adds 0."""
    return patches(window, h).sum(axis=-1).reshape(len(h), -1)
