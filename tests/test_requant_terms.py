"""The requantization terms every integer path shares (hwq.quant.bounds): the rounding half
``2^(S-1)`` and the shift range ``0..MAX_SHIFT``, against Python integers."""

from __future__ import annotations

import numpy as np
import pytest

from hwq.errors import InvalidModelError
from hwq.quant.bounds import MAX_SHIFT, check_shift_range, rounding_half
from hwq.quant.qnet import Requant
from hwq.quant.reference import requantize


def test_rounding_half_is_two_to_the_shift_minus_one():
    shifts = np.arange(MAX_SHIFT + 1)
    half = rounding_half(shifts)
    assert half.dtype == np.int64
    assert [int(h) for h in half] == [0] + [2 ** (s - 1) for s in range(1, MAX_SHIFT + 1)]
    assert int(rounding_half(0)) == 0 and int(rounding_half(np.int64(5))) == 16


@pytest.mark.parametrize("bad", [-1, MAX_SHIFT + 1, [3, 63], [-2, 4]])
def test_shift_range_is_refused_in_one_line(bad):
    with pytest.raises(InvalidModelError, match=f"shifts must be in 0..{MAX_SHIFT}") as info:
        check_shift_range(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidModelError, match=f"0..{MAX_SHIFT}"):
        Requant(np.ones(np.size(bad), np.int64), np.atleast_1d(bad))


def test_requantize_rounds_half_up_like_python_integers():
    rng = np.random.default_rng(0)
    acc = rng.integers(-(2**20), 2**20, (50, 4))
    mult, shift = np.array([1, 3, 1000, 7]), np.array([0, 1, 12, 30])
    want = [[(int(a) * int(m) + (2 ** (int(s) - 1) if s else 0)) // 2 ** int(s) for a, m, s in zip(row, mult, shift)]
            for row in acc]
    assert requantize(acc, Requant(mult, shift)).tolist() == want
    check_shift_range(shift)


def test_code_range_of_every_width_matches_python_integers():
    from hwq.ir import Quantizer
    from hwq.ir.codes import code_range
    from hwq.quant.qnet import InputFormat

    for bits in range(2, 33):
        assert code_range(bits, False) == (0, 2**bits - 1)
        assert code_range(bits, True) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        assert code_range(bits, True, narrow=True) == (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1)
        assert code_range(bits, False, narrow=True) == (0, 2**bits - 2)
        fmt = InputFormat(bits, True, 1.0)
        assert (fmt.qmin, fmt.qmax) == code_range(bits, True)
        q = Quantizer(bits, True, 0.5, narrow=True)
        assert (q.lo, q.hi) == code_range(bits, True, narrow=True)
    assert (Quantizer(1, True, 1.0).lo, Quantizer(1, True, 1.0).hi) == (-1, 1)  # bipolar: its own rule
