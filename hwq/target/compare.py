"""Compare two compiled programs on the same input codes (for example ``sim`` against
``loihi``, or one target's two backends): how often their decisions and scores differ."""

from __future__ import annotations

import numpy as np

from hwq.errors import UsageError


def compare_programs(a, b, x_q: np.ndarray) -> dict:
    """Run both programs on integer input codes ``x_q`` (N, n_features).

    Returns counts and fractions of inputs whose decisions differ and whose score vectors
    differ (any element; scores of different targets may be in different units, so their
    difference says where the integer arithmetic departs, not by how much).
    """
    x_q = np.asarray(x_q)
    if a.net.n_features != b.net.n_features:
        raise UsageError(f"the programs take {a.net.n_features} and {b.net.n_features} features")
    sa, sb = a.forward(x_q), b.forward(x_q)
    n = len(x_q)
    dec = int(np.sum(a.decide(sa) != b.decide(sb)))
    if sa.shape == sb.shape:
        scores = int(np.sum(np.any(sa != sb, axis=1))) if n else 0
    else:
        scores = n
    same_units = a.target == b.target  # one target's backends give the same integers
    return {
        "targets": [a.target, b.target],
        "inputs": n,
        "decisions_differ": dec,
        "decisions_differ_fraction": dec / n if n else 0.0,
        "scores_differ": scores,
        "scores_differ_fraction": scores / n if n else 0.0,
        "score_units": "same" if same_units else
        f"different: {a.target} and {b.target} scale their integer scores differently (shifted sums, spike "
        "counts), so scores differ even where the decisions agree; compare decisions (fidelity)",
    }
