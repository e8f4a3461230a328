"""The integer codes of a bit width: one formula for every format that stores codes (input
formats, QONNX/QCDQ quantizers, graph quantizers)."""

from __future__ import annotations

import numpy as np


def code_range(bits: int, signed, narrow=False) -> tuple[int, int]:
    """``[-2^(b-1) + narrow, 2^(b-1) - 1]`` signed, ``[0, 2^b - 1 - narrow]`` unsigned: the
    smallest and largest code of ``bits`` bits (``narrow``: the most negative signed code, or
    the largest unsigned one, unused)."""
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1 - int(narrow)


CONTAINERS = ("uint8", "int8", "uint16", "int16", "int32")  # narrowest first


def container(lo: int, hi: int, choices=CONTAINERS, wide="int64"):
    """The first of ``choices`` (numpy integer dtypes, narrowest first) that holds every code
    in ``[lo, hi]``, else ``wide`` (None: nothing); the one rule for the container codes are stored or passed
    in (calibration maps, a layer's input block, wire frames). Returns a numpy scalar type."""
    for dtype in choices:
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype).type
    return None if wide is None else np.dtype(wide).type
