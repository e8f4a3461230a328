"""Attacks judged on a device, journaled batch by batch.

Gradients come from the bit-exact surrogate of the compiled model (``reference``); every
point is judged on the device (a ``DeviceProgram`` behind the golden gate), and the same
points are judged on the bit-exact model too, giving the per-strength disagreement between
device and model. Each batch of inputs, once done, is written to ``JOURNAL/part-<i>.npz``
(temporary name, then rename) with the run's key inside; a rerun with the same key (model,
device model, data, strengths, attack and its parameters, gradient, batch size, hwq version)
loads the finished batches and runs only the missing ones, so its arrays equal an
uninterrupted run's. A part whose key, batch or shapes differ is never loaded as this run's.

The journal is a marked, locked folder (``hwq.files.journal``): a second run on the same
output is refused while the first holds the lock, a folder under the journal's name that hwq
did not make is refused and left alone, and only hwq's files are ever deleted. The caller
removes the journal (``DeviceRun.journal.remove()``) after writing the results file; the lock
is held until then.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwq.attack.base import AttackResult
from hwq.files import journal as folders
from hwq.files.atomic import atomic_path
from hwq.version import __version__

from .fingerprint import digest
from .program import DeviceProgram

PER_INPUT = ("correct", "predictions", "queries", "reference_predictions")  # (K, N)
PER_SAMPLE = ("clean_correct", "zero_gradient", "nonfinite_gradient", "direction")  # (N, ...)
KIND = "hwq-attack-journal"
KEY_FILE = "key.json"
PART = re.compile(r"part-\d+\.npz")


def ours(name: str) -> bool:
    """The names of the files an attack journal holds besides the marker and the lock."""
    return name == KEY_FILE or PART.fullmatch(name) is not None


def _legacy(path: Path) -> bool:
    """A journal of an hwq that did not mark its journals: its ``key.json`` is there (its parts
    carry no key, so none of them is ever loaded)."""
    info = folders.small_json(path / KEY_FILE)
    return isinstance(info, dict) and isinstance(info.get("key"), str)


@dataclass(frozen=True)
class DeviceRun:
    result: AttackResult  # judged on the device
    disagreement: np.ndarray  # (K,) share of inputs where device and bit-exact model differ
    resumed: int  # batches taken from the journal
    journal: Journal | None = None  # still locked: ``remove()`` it once the results are written


class Journal:
    """The parts of one run in the folder ``path`` (None: no journal), under its lock.

    ``output`` names the results file in messages. Parts of another key (a finished or killed
    run with other settings; no other run can hold the lock) are deleted before this run
    starts; files hwq did not write are never touched."""

    def __init__(self, path: Path | None, key: dict, output: Path | None = None):
        self.path, self.key, self.lock = path, digest({"journal": key, "hwq": __version__}).hex(), None
        if path is None:
            return
        output = output or path.with_name(path.name.removesuffix(".parts"))
        folders.make_journal(path, KIND, output, legacy=_legacy)
        self.lock = folders.JournalLock(
            path, f"{output} is being written by another hwq attack (its journal {path} is locked)")
        try:
            stamp = path / KEY_FILE
            if self._stamped() != self.key:  # another run's parts: it is over (we hold the lock)
                folders.clear_journal(path, ours)
                with atomic_path(stamp) as tmp:
                    tmp.write_text(json.dumps({"key": self.key}))
        except BaseException:
            self.close()
            raise

    def _stamped(self) -> str | None:
        info = folders.small_json(self.path / KEY_FILE)
        return info.get("key") if isinstance(info, dict) else None

    def load(self, i: int, rows: int, n_eps: int) -> dict | None:
        """Part ``i`` if it was saved under this run's key for ``rows`` inputs and ``n_eps``
        strengths; None otherwise (it is then computed again)."""
        part = self.path / f"part-{i}.npz" if self.path else None
        if part is None or not part.is_file():
            return None
        try:
            with np.load(part, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception:  # noqa: BLE001  (a damaged part is computed again)
            return None
        if str(arrays.pop("key", np.array(""))) != self.key or int(arrays.pop("part", -1)) != i:
            return None
        for k, a in arrays.items():
            shape = (n_eps, rows) if k in PER_INPUT else (rows,)
            if a.shape[:len(shape)] != shape:
                return None
        if not {"correct", "predictions", "reference_predictions", "clean_correct",
                "zero_gradient"} <= set(arrays):
            return None
        return arrays

    def save(self, i: int, arrays: dict) -> None:
        if self.path is None:
            return
        with atomic_path(self.path / f"part-{i}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, key=np.array(self.key), part=np.array(i), **arrays)

    def close(self) -> None:
        """Release the lock and keep the parts (a failed or stopped run resumes from them)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def remove(self) -> list[str]:
        """Delete the journal's files (hwq's only) and release the lock; returns the names of
        files left behind that hwq did not write."""
        left = folders.remove_journal(self.path, ours) if self.path is not None else []
        self.close()
        return left


def batch_arrays(dev: AttackResult, ref: AttackResult) -> dict:
    out = {k: np.asarray(getattr(dev, k)) for k in PER_INPUT + PER_SAMPLE if getattr(dev, k, None) is not None}
    out["reference_predictions"] = ref.predictions
    return out


def attack_on_device(attack, reference, device, x, y, epsilons, *, gradient, bounds=None,
                     journal: Path | None = None, key: dict | None = None, batch: int = 256,
                     golden: int = 8, check_every: int = 50, progress=None,
                     output: Path | None = None) -> DeviceRun:
    """``attack(program, x, y, eps, ...)`` (``hwq.api.attack``) on ``device`` batch by batch.
    With ``journal``, the returned run holds the journal still locked: ``run.journal.remove()``
    once the results are written (on an error the lock is released and the parts are kept)."""
    jr = Journal(journal, {"run": key or {}, "batch": batch, "n": len(y), "eps": list(map(float, epsilons))},
                 output)
    try:
        return _run(jr, attack, reference, device, x, y, epsilons, gradient, bounds, batch, golden,
                    check_every, progress)
    except BaseException:
        jr.close()
        raise


def _run(jr, attack, reference, device, x, y, epsilons, gradient, bounds, batch, golden, check_every,
         progress) -> DeviceRun:
    program = DeviceProgram(device, reference, golden=golden, check_every=check_every)
    program.open()  # the golden gate, before any attack
    parts, resumed, first = [], 0, None
    try:
        for i, start in enumerate(range(0, len(y), batch)):
            sl = slice(start, min(len(y), start + batch))
            part = jr.load(i, sl.stop - sl.start, len(epsilons))
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
    return DeviceRun(result, disagreement, resumed, jr if jr.path is not None else None)
