"""Analysis: the paper's geometric model, its Monte Carlo check, critical attack strengths.

- :mod:`hwq.study.analysis.geometry`   regular-simplex formulas (Section 3), pure and vectorised
- :mod:`hwq.study.analysis.montecarlo` uniform points in a simplex, KS goodness of fit
- :mod:`hwq.study.analysis.critical`   critical attack strength from accuracy-vs-bits sweeps
"""

from hwq.study.analysis.critical import (
    CriticalStrength,
    critical_strength,
    min_variance_strength,
    relative_accuracy,
    slope_crossing_strength,
)
from hwq.study.analysis.geometry import model_summary

__all__ = [
    "CriticalStrength",
    "critical_strength",
    "min_variance_strength",
    "model_summary",
    "relative_accuracy",
    "slope_crossing_strength",
]
