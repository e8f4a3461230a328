"""The integer codes of a bit width: one formula for every format that stores codes (input
formats, QONNX/QCDQ quantizers, graph quantizers)."""

from __future__ import annotations


def code_range(bits: int, signed, narrow=False) -> tuple[int, int]:
    """``[-2^(b-1) + narrow, 2^(b-1) - 1]`` signed, ``[0, 2^b - 1 - narrow]`` unsigned: the
    smallest and largest code of ``bits`` bits (``narrow``: the most negative signed code, or
    the largest unsigned one, unused)."""
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1 - int(narrow)
