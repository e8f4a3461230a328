"""Attack-strength lists: ``START:STOP:STEP`` (inclusive), ``a,b,c`` or a single value."""

from __future__ import annotations

import numpy as np

from hwq.errors import UsageError

MAX_EPSILONS = 100_000


def parse_epsilons(text: str) -> np.ndarray:
    text = text.strip()
    try:
        if ":" in text:
            start, stop, step = (float(p) for p in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(np.floor((stop - start) / step + 1e-9)) + 1
            values = start + step * np.arange(count)
        else:
            values = np.array([float(p) for p in text.split(",")])
    except ValueError:
        raise UsageError(
            f"malformed --eps '{text}'", hint="use START:STOP:STEP (e.g. 0:0.5:0.005) or a,b,c"
        ) from None
    return check_epsilons(values)


def check_epsilons(values) -> np.ndarray:
    values = np.round(np.asarray(values, dtype=np.float64), 12)
    if values.ndim != 1 or values.size == 0 or values.size > MAX_EPSILONS:
        raise UsageError(f"need 1..{MAX_EPSILONS} attack strengths, got {values.size}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise UsageError("attack strengths must be finite and non-negative")
    return values
