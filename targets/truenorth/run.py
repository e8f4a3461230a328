"""Run a model file on input spikes: the library side of ``hwq truenorth run``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq.errors import UsageError
from hwq.files.atomic import atomic_write_bytes

from .core import Model
from .emulator import Drive, Emulator, EmulatorConfig
from .spikefile import SpikeInput


@dataclass(frozen=True)
class ModelRun:
    """``spikes``: rows ``(tick, core id, neuron)`` of every spike of every neuron, sorted."""

    spikes: np.ndarray
    stats: dict


def drive_from_spikes(model: Model, spikes: SpikeInput) -> tuple[Drive, int]:
    """Host spikes by arrival tick (``srcTime + defaultDestinationDelay``); spikes for a core
    the model does not have are dropped and counted (the second value)."""
    pos = model.index()
    drive = Drive(1)
    where = np.array([pos.get(int(c), -1) for c in spikes.cores], np.int64)
    dropped = int(np.count_nonzero(where < 0))
    ok = where >= 0
    arrival, where, axons = spikes.arrival[ok], where[ok], spikes.axons[ok]
    for t in np.unique(arrival):
        at = arrival == t
        for c in np.unique(where[at]):
            active = np.zeros((1, 256), bool)
            active[0, axons[at & (where == c)]] = True
            drive.add(int(t), int(c), active)
    return drive, dropped


def run_model(model: Model, spikes: SpikeInput, ticks: int, config: EmulatorConfig | None = None,
              progress=None) -> ModelRun:
    """Run ticks ``0 .. ticks - 1`` of ``model`` with host ``spikes``; every spike of every
    neuron, whatever its destination. ``progress(t, ticks)`` hears of each finished tick."""
    if ticks < 0:
        raise UsageError(f"ticks must be >= 0, got {ticks}")
    drive, dropped = drive_from_spikes(model, spikes)
    result = Emulator(model, config).run(ticks, drive, record_spikes=True, progress=progress)
    rows = result.spikes
    out = np.stack([rows[:, 0], model.ids[rows[:, 1]], rows[:, 3]], 1) if len(rows) else np.zeros((0, 3), np.int64)
    out = out[np.lexsort((out[:, 2], out[:, 1], out[:, 0]))]
    stats = dict(result.stats, input_spikes=len(spikes), inputs_dropped_absent=dropped,
                 input_merged=len(spikes) - dropped - drive.count)
    stats["merged"] += stats["input_merged"]
    return ModelRun(out.astype(np.int64), stats)


def spikes_csv(spikes: np.ndarray) -> bytes:
    lines = ["tick,core,neuron"] + [f"{t},{c},{j}" for t, c, j in spikes.tolist()]
    return ("\n".join(lines) + "\n").encode()


def write_spikes_csv(spikes: np.ndarray, path) -> None:
    atomic_write_bytes(path, spikes_csv(spikes))
