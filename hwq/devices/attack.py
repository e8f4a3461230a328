"""Attacks judged on a device, journaled batch by batch.

Gradients come from the bit-exact surrogate of the compiled model (``reference``); every
point is judged on the device (a ``DeviceProgram`` behind the golden gate), and the same
points are judged on the bit-exact model too, giving the per-strength disagreement between
device and model. Each batch of inputs, once done, is written to ``JOURNAL/part-<i>.npz``
(temporary name, then rename); a rerun with the same key (model, device model, data,
strengths, attack, batch size) loads the finished batches and runs only the missing ones, so
its arrays equal an uninterrupted run's. The caller removes the journal after writing the
results file.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwq.attack.base import AttackResult
from hwq.files.atomic import atomic_path

from .fingerprint import digest
from .program import DeviceProgram

PER_INPUT = ("correct", "predictions", "queries", "reference_predictions")  # (K, N)
PER_SAMPLE = ("clean_correct", "zero_gradient", "nonfinite_gradient", "direction")  # (N, ...)


@dataclass(frozen=True)
class DeviceRun:
    result: AttackResult  # judged on the device
    disagreement: np.ndarray  # (K,) share of inputs where device and bit-exact model differ
    resumed: int  # batches taken from the journal


class Journal:
    def __init__(self, path: Path | None, key: dict):
        self.path, self.key = path, digest(key).hex()
        if path is None:
            return
        stamp = path / "key.json"
        if path.exists() and (not stamp.exists() or json.loads(stamp.read_text())["key"] != self.key):
            shutil.rmtree(path)  # another run's journal: start over
        path.mkdir(parents=True, exist_ok=True)
        if not stamp.exists():
            with atomic_path(stamp) as tmp:
                tmp.write_text(json.dumps({"key": self.key}))

    def load(self, i: int) -> dict | None:
        part = self.path / f"part-{i}.npz" if self.path else None
        if part is None or not part.exists():
            return None
        with np.load(part, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    def save(self, i: int, arrays: dict) -> None:
        if self.path is None:
            return
        with atomic_path(self.path / f"part-{i}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            shutil.rmtree(self.path)


def batch_arrays(dev: AttackResult, ref: AttackResult) -> dict:
    out = {k: np.asarray(getattr(dev, k)) for k in PER_INPUT + PER_SAMPLE if getattr(dev, k, None) is not None}
    out["reference_predictions"] = ref.predictions
    return out


def attack_on_device(attack, reference, device, x, y, epsilons, *, gradient, bounds=None,
                     journal: Path | None = None, key: dict | None = None, batch: int = 256,
                     golden: int = 8, check_every: int = 50, progress=None) -> DeviceRun:
    """``attack(program, x, y, eps, ...)`` (``hwq.api.attack``) on ``device`` batch by batch."""
    program = DeviceProgram(device, reference, golden=golden, check_every=check_every)
    program.open()  # the golden gate, before any attack
    jr = Journal(journal, {"run": key or {}, "batch": batch, "n": len(y), "eps": list(map(float, epsilons))})
    parts, resumed, first = [], 0, None
    try:
        for i, start in enumerate(range(0, len(y), batch)):
            sl = slice(start, min(len(y), start + batch))
            part = jr.load(i)
            if part is None:
                dev = attack(program, x[sl], y[sl], epsilons, gradient=gradient, bounds=bounds)
                ref = attack(reference, x[sl], y[sl], epsilons, gradient=gradient, bounds=bounds)
                first = first or dev
                part = batch_arrays(dev, ref)
                jr.save(i, part)
            else:
                resumed += 1
            parts.append(part)
            if progress:
                progress(sl.stop - sl.start)
        if first is None:  # everything came from the journal: one tiny batch for the metadata
            first = attack(reference, x[:1], y[:1], epsilons, gradient=gradient, bounds=bounds)
    finally:
        program.close()
    joined = {k: np.concatenate([p[k] for p in parts], axis=1 if k in PER_INPUT else 0)
              for k in parts[0]}
    result = AttackResult(
        np.asarray(first.epsilons), joined["correct"], joined["predictions"], joined["clean_correct"],
        joined["zero_gradient"], np.asarray(x, dtype=np.float64).reshape(len(x), -1), np.asarray(y),
        first.bounds, first.attack, first.params, first.gradient, program.target,
        direction=joined.get("direction"), queries=joined.get("queries"),
        nonfinite_gradient=joined.get("nonfinite_gradient"), input_scale=first.input_scale)
    disagreement = (joined["predictions"] != joined["reference_predictions"]).mean(axis=1)
    return DeviceRun(result, disagreement, resumed)
