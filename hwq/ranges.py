"""Parse and check the values users type, once: attack strengths (`START:STOP:STEP` inclusive,
`a,b,c` or one value), integer lists and seeds, names, norms and gradient sources."""

from __future__ import annotations

import numpy as np

from hwq.errors import UsageError

MAX_EPSILONS = 100_000
MAX_EPSILON = 1e39  # beyond twice float32's largest value: no float32 input can use more
MAX_INTS = 10_000  # values in one integer list (--bits, --seeds)


def parse_epsilons(text: str) -> np.ndarray:
    """``START:STOP:STEP`` (inclusive), ``a,b,c`` or one value; a range is counted before any
    array is made, so ``0:1e9:1`` is refused at once."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, step = (float(p) for p in text.split(":"))
            if np.isfinite([start, stop, step]).all() and (step <= 0 or stop < start):
                raise ValueError
        else:
            values = np.array([float(p) for p in text.split(",")])
    except ValueError:
        raise UsageError(
            f"malformed --eps '{text}'", hint="use START:STOP:STEP (e.g. 0:0.5:0.005) or a,b,c"
        ) from None
    if ":" in text:
        check_epsilons([start, stop])
        if not np.isfinite(step):
            raise UsageError(f"--eps step {step} is not finite")
        count = np.floor((stop - start) / step + 1e-9) + 1  # a float: may be huge or inf
        if count > MAX_EPSILONS:
            raise UsageError(f"--eps '{text}' asks for {count:.4g} attack strengths; at most {MAX_EPSILONS}")
        values = start + step * np.arange(int(count))
    return check_epsilons(values)


def check_epsilons(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or values.size > MAX_EPSILONS:
        raise UsageError(f"need 1..{MAX_EPSILONS} attack strengths, got {values.size}")
    if not np.all(np.isfinite(values)):
        raise UsageError("attack strengths must be finite, got " + ", ".join(
            str(v) for v in values[~np.isfinite(values)][:3]))
    if np.any(values < 0):
        raise UsageError(f"attack strengths must be non-negative, got {values.min():g}")
    if np.any(values > MAX_EPSILON):
        raise UsageError(f"attack strength {values.max():g} is out of range: at most {MAX_EPSILON:g} "
                         "(inputs are float32)")
    return np.round(values, 12) + 0.0  # + 0.0: -0 reads as 0


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """``START:STOP`` (inclusive) or ``a,b,c``; at most ``MAX_INTS`` values, counted first."""
    try:
        if ":" in text:
            start, stop = (int(p) for p in text.split(":"))
            if stop < start:
                raise ValueError
            values = range(start, stop + 1)
        else:
            values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"malformed {what} '{text}'", hint="use START:STOP or a,b,c") from None
    if len(values) > MAX_INTS:
        raise UsageError(f"{what} '{text}' asks for {len(values)} values; at most {MAX_INTS}")
    return tuple(values)


def parse_seeds(text: str) -> tuple[int, ...]:
    """A count (``5`` -> seeds 0..4) or explicit seeds (``0,3,7``, ``2:4``)."""
    if text.strip().isdigit():
        count = int(text)
        if count < 1:
            raise UsageError(f"--seeds must be at least 1, got {count}")
        if count > MAX_INTS:
            raise UsageError(f"--seeds {count} asks for {count} seeds; at most {MAX_INTS}")
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
