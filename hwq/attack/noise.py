"""Counter-based randomness for the attacks: every random number is a function of the attack's
seed, the strength, a stream tag (restart, iteration, ...), the input's index in the whole data
set and the component, never of which other strengths, inputs or chunks run beside it.

So an attack's result at ``eps = e`` is the same whether ``e`` runs alone or within a longer
list, and whatever the chunking (``batch_size``, the number of strengths, which decide how
many inputs share a chunk).

The generator is SplitMix64 (Steele et al. 2014) used as a hash: a stream's key is
``mix(mix(mix(seed + G) ^ bits(eps)) + tag)``; its ``c``-th 64-bit word is
``mix(key + G (c + 1))`` with ``c = input * width + component``, where ``bits(eps)`` is the
IEEE-754 pattern of the strength (float64, as ``check_epsilons`` records it: rounded to 12
decimals), ``G = 0x9E3779B97F4A7C15`` and ``mix`` is
SplitMix64's finaliser. A uniform in [0, 1) takes the word's top 53 bits; normals come from
Box-Muller on two words; signs from the top bit. All arithmetic is modulo 2^64.
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))


def mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, elementwise on uint64 (wrapping)."""
    z = np.asarray(z, np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def keys(seed: int, eps, tag: int) -> np.ndarray:
    """One stream key per strength in ``eps`` for ``(seed, tag)``."""
    bits = np.ascontiguousarray(np.asarray(eps, np.float64).reshape(-1)).view(np.uint64)
    with np.errstate(over="ignore"):
        s = mix(np.array([int(seed) % 2**64], np.uint64) + GOLDEN)
        return mix(mix(s ^ bits) + np.uint64(int(tag) % 2**64))


def words(key: np.ndarray, index: np.ndarray, width: int) -> np.ndarray:
    """(rows, width) 64-bit words: row ``r`` of stream ``key[r]`` for input ``index[r]``."""
    c = (np.asarray(index, np.uint64)[:, None] * np.uint64(width)
         + np.arange(width, dtype=np.uint64)[None, :] + np.uint64(1))
    with np.errstate(over="ignore"):
        return mix(np.asarray(key, np.uint64)[:, None] + GOLDEN * c)


def uniform(key, index, width) -> np.ndarray:
    """Uniform numbers in [0, 1), (rows, width)."""
    return (words(key, index, width) >> _S11).astype(np.float64) * 2.0**-53


def normal(key, index, width) -> np.ndarray:
    """Standard normals (Box-Muller on the words of two components per number)."""
    u = uniform(key, index, 2 * width)
    u1, u2 = 1.0 - u[:, 0::2], u[:, 1::2]  # u1 in (0, 1]
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def signs(key, index, width) -> np.ndarray:
    """+1 or -1, (rows, width)."""
    return np.where(words(key, index, width) >> np.uint64(63), 1.0, -1.0)

