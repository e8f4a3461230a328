"""The compiled per-row signs Square draws every iteration (``noise.row_signs``) equal the numpy
counter-based streams (``noise.signs(noise.keys(...))``) bit for bit."""

import numpy as np
import pytest

from hwq.attack import noise


@pytest.mark.parametrize("seed", [0, 7, 2**63 + 5, -3])
@pytest.mark.parametrize("width", [1, 3, 28])
def test_row_signs_equal_the_numpy_streams(seed, width):
    rng = np.random.default_rng(abs(seed) % 1000 + width)
    eps = np.round(rng.uniform(0, 0.5, 4), 12)
    for tag in (0, 1, 2**20, 2**20 + 999, 2**64 - 1):
        which = rng.integers(0, len(eps), 50)
        index = rng.integers(0, 10**6, 50)
        want = noise.signs(noise.keys(seed, eps, tag)[which], index, width)
        np.testing.assert_array_equal(noise.row_signs(seed, eps, tag, which, index, width), want)


def test_row_signs_are_a_stream_per_strength_and_input():
    """A row's signs depend only on (seed, its strength, tag, its input): not on the other rows."""
    eps = np.array([0.1, 0.2])
    full = noise.row_signs(3, eps, 5, np.array([0, 1, 1]), np.array([4, 4, 9]), 16)
    alone = noise.row_signs(3, eps[1:], 5, np.array([0]), np.array([9]), 16)
    np.testing.assert_array_equal(full[2], alone[0])
    assert not np.array_equal(full[0], full[1])  # another strength, another stream
    assert set(np.unique(full)) == {-1.0, 1.0}
