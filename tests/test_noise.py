"""The compiled per-row signs Square draws every iteration (``square.stream_signs``) equal the numpy
counter-based streams (``noise.signs(noise.keys(...))``) bit for bit."""

import numpy as np
import pytest

from hwq.attack import noise
from hwq.attack.square import stream_signs


@pytest.mark.parametrize("seed", [0, 7, 2**63 + 5, -3])
@pytest.mark.parametrize("width", [1, 3, 28])
def test_row_signs_equal_the_numpy_streams(seed, width):
    rng = np.random.default_rng(abs(seed) % 1000 + width)
    eps = np.round(rng.uniform(0, 0.5, 4), 12)
    for tag in (0, 1, 2**20, 2**20 + 999, 2**64 - 1):
        which = rng.integers(0, len(eps), 50)
        index = rng.integers(0, 10**6, 50)
        want = noise.signs(noise.keys(seed, eps, tag)[which], index, width)
        np.testing.assert_array_equal(stream_signs(seed, eps, tag, which, index, width), want)


def test_row_signs_are_a_stream_per_strength_and_input():
    """A row's signs depend only on (seed, its strength, tag, its input): not on the other rows."""
    eps = np.array([0.1, 0.2])
    full = stream_signs(3, eps, 5, np.array([0, 1, 1]), np.array([4, 4, 9]), 16)
    alone = stream_signs(3, eps[1:], 5, np.array([0]), np.array([9]), 16)
    np.testing.assert_array_equal(full[2], alone[0])
    assert not np.array_equal(full[0], full[1])  # another strength, another stream
    assert set(np.unique(full)) == {-1.0, 1.0}


def test_noise_needs_only_numpy():
    """The torch baselines (benchmarks/apgd_torch.py) load ``noise.py`` alone in a Python without
    hwq's dependencies: it imports numpy and the standard library only."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(noise.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= {"numpy", "__future__"}, names
