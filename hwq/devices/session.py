"""Sessions: a device is trusted only while it reproduces the compiled model bit for bit.

At connect (and after every reconnect) and again every ``every`` batches, a golden batch of
a few input codes with known integer scores from the compiled model must come back
identical; otherwise ``DeviceMismatch`` stops the run with a per-input diff.
"""

from __future__ import annotations

import numpy as np

from .errors import DeviceMismatch
from .fingerprint import model_hash

MAX_SHOWN = 3  # differing inputs spelled out in the error


def golden_codes(net, n: int, seed: int) -> np.ndarray:
    """``n`` input codes: all-min, all-max, alternating, then seeded uniform and sparse rows."""
    fmt, d = net.input, net.n_features
    rng = np.random.default_rng(seed)
    rows = [np.full(d, fmt.qmin), np.full(d, fmt.qmax), np.resize([fmt.qmin, fmt.qmax], d)]
    while len(rows) < n:
        row = rng.integers(fmt.qmin, fmt.qmax, d, endpoint=True)
        if len(rows) % 2:
            row = np.where(rng.random(d) < 0.8, max(fmt.qmin, 0), row)
        rows.append(row)
    return np.asarray(rows[:n], dtype=np.int64)


class Golden:
    """The golden batch of a compiled program: codes and the scores the program gives them."""

    def __init__(self, program, n: int = 8):
        seed = int.from_bytes(model_hash(program)[:8], "little")
        self.codes = golden_codes(program.net, n, seed)
        self.scores = np.asarray(program.forward(self.codes), dtype=np.int64)

    def diff(self, got: np.ndarray) -> list[str]:
        got = np.asarray(got)
        if got.shape != self.scores.shape:
            return [f"scores of shape {got.shape}, expected {self.scores.shape}"]
        bad = np.flatnonzero(np.any(got != self.scores, axis=1))
        return [f"input {i}: expected {self.scores[i].tolist()}, got {got[i].tolist()}" for i in bad]

    def check(self, device, when: str) -> None:
        lines = self.diff(device.infer(self.codes))
        if lines:
            shown = "; ".join(lines[:MAX_SHOWN]) + (f"; and {len(lines) - MAX_SHOWN} more"
                                                     if len(lines) > MAX_SHOWN else "")
            where = getattr(device, "address", None) or device.identity
            raise DeviceMismatch(f"the device at {where} failed the golden check {when}: "
                                 f"{len(lines)} of {len(self.codes)} inputs differ ({shown})",
                                 hint="the device does not compute this compiled model")


class Session:
    """``infer`` through ``device`` behind the golden gate of ``reference``."""

    def __init__(self, device, reference, *, golden: int = 8, every: int = 50):
        self.device, self.golden, self.every = device, Golden(reference, golden), every
        self.batches, self.checks, self.checked_connection = 0, 0, None

    def open(self) -> Session:
        self.device.open()
        self._gate("at connect")
        return self

    def _gate(self, when: str) -> None:
        self.golden.check(self.device, when)
        self.checks += 1
        self.checked_connection = self.device.connections

    def infer(self, codes: np.ndarray) -> np.ndarray:
        if self.checked_connection is None:
            self.open()
        elif self.every and self.batches and self.batches % self.every == 0:
            self._gate(f"after {self.batches} batches")
        scores = self.device.infer(codes)
        if self.device.connections != self.checked_connection:
            self._gate("after a reconnect")  # the batch went to a fresh session: check it too
            scores = self.device.infer(codes)
        self.batches += 1
        return scores

    def close(self) -> None:
        self.device.close()
