"""Parse and check the values users type, once: attack strengths (`START:STOP:STEP` inclusive,
`a,b,c` or one value), integer lists and seeds, names, norms and gradient sources."""

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
def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """``START:STOP`` (inclusive) or ``a,b,c``."""
    try:
        if ":" in text:
            start, stop = (int(p) for p in text.split(":"))
            if stop < start:
                raise ValueError
            return tuple(range(start, stop + 1))
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise UsageError(f"malformed {what} '{text}'", hint="use START:STOP or a,b,c") from None


def parse_seeds(text: str) -> tuple[int, ...]:
    """A count (``5`` -> seeds 0..4) or explicit seeds (``0,3,7``, ``2:4``)."""
    if text.strip().isdigit():
        count = int(text)
        if count < 1:
            raise UsageError(f"--seeds must be at least 1, got {count}")
        return tuple(range(count))
    return parse_ints(text, "--seeds")


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


NORMS = ("linf", "l2")
GRADIENTS = ("surrogate", "float")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise UsageError(f"unknown norm '{norm}'", hint="use " + " or ".join(NORMS))
    return norm


def check_gradient(name: str) -> str:
    if name not in GRADIENTS:
        raise UsageError(f"unknown gradient source '{name}'", hint="use " + " or ".join(GRADIENTS))
    return name
