"""NSCS spike files (``.sfti``): one JSON object per line ([D], NeMo ``scripts/test``)::

    {"class":"SpikeWriter","encoding":"TEXT","nscsVersion":"1.4.0"}
    {"version":"sfti1.0", "defaultDestinationDelay" : 1}
    {"spike":{"srcTime":0,"destCore":0,"destAxon":3}}

A spike stamped ``srcTime = t`` integrates at tick ``t + defaultDestinationDelay`` (1 when the
header does not say). Blank lines are skipped; anything else is an error naming the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwq.errors import DataError, FileFormatError
from hwq.files.atomic import atomic_write_bytes

from .core import AXONS, MAX_DELAY


@dataclass(frozen=True)
class SpikeInput:
    """Input spikes: ``times[k]`` (the stamped ``srcTime``), ``cores[k]``, ``axons[k]``; each
    integrates at ``times + delay``."""

    times: np.ndarray
    cores: np.ndarray
    axons: np.ndarray
    delay: int = 1

    @property
    def arrival(self) -> np.ndarray:
        return self.times + self.delay

    def __len__(self) -> int:
        return len(self.times)


def read_spikes(path) -> SpikeInput:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"cannot read spike file {path}: {exc}") from None
    return parse_spikes(lines, str(path))


def parse_spikes(lines, what: str = "spikes") -> SpikeInput:
    delay, rows = 1, []
    for k, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FileFormatError(f"{what} line {k}: not a JSON object ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise FileFormatError(f"{what} line {k}: expected a JSON object")
        if "spike" in obj:
            rows.append(spike_row(obj["spike"], f"{what} line {k}"))
        elif "defaultDestinationDelay" in obj:
            delay = obj["defaultDestinationDelay"]
            if not isinstance(delay, int) or isinstance(delay, bool) or not 1 <= delay <= MAX_DELAY:
                raise FileFormatError(f"{what} line {k}: defaultDestinationDelay must be 1..{MAX_DELAY}, got {delay!r}")
        elif not ({"class", "version"} & obj.keys()):
            raise FileFormatError(f"{what} line {k}: neither a spike nor a header line")
    a = np.array(rows, np.int64).reshape(-1, 3)
    return SpikeInput(a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy(), delay)


def spike_row(spike, where: str) -> tuple[int, int, int]:
    try:
        t, c, a = (spike[key] for key in ("srcTime", "destCore", "destAxon"))
    except (KeyError, TypeError):
        raise FileFormatError(f"{where}: a spike needs srcTime, destCore and destAxon") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (t, c, a)):
        raise FileFormatError(f"{where}: srcTime, destCore and destAxon must be integers")
    if t < 0 or c < 0 or not 0 <= a < AXONS:
        raise FileFormatError(f"{where}: spike (srcTime {t}, destCore {c}, destAxon {a}) is out of range",
                              hint=f"srcTime >= 0, destCore >= 0, destAxon 0..{AXONS - 1}")
    return t, c, a


def dumps_spikes(spikes: SpikeInput) -> str:
    head = ['{"class":"SpikeWriter","encoding":"TEXT","nscsVersion":"1.4.0"}',
            f'{{"version":"sfti1.0", "defaultDestinationDelay" : {spikes.delay}}}']
    body = [f'{{"spike":{{"srcTime":{t},"destCore":{c},"destAxon":{a}}}}}'
            for t, c, a in zip(spikes.times.tolist(), spikes.cores.tolist(), spikes.axons.tolist())]
    return "\n".join(head + body) + "\n"


def write_spikes(spikes: SpikeInput, path) -> None:
    atomic_write_bytes(Path(path), dumps_spikes(spikes).encode())


def spikes_from_drive(drive, core_ids, frame: int = 0, delay: int = 1) -> SpikeInput:
    """One frame of a host drive (``emulator.Drive``: active axons per core position and arrival
    tick) as spike-file rows: ``srcTime = arrival - delay``, ``destCore = core_ids[position]``,
    sorted by time, core and axon. The file then arrives on the drive's ticks in any simulator
    that reads ``defaultDestinationDelay``."""
    if not 0 <= frame < drive.frames:
        raise DataError(f"frame {frame} is outside the drive's {drive.frames} frame(s)")
    rows = []
    for t, per_core in drive.by_tick.items():
        if t < delay:
            raise DataError(f"a host spike arrives at tick {t}, before the spike file's delay {delay}")
        for c, active in per_core.items():
            for a in np.flatnonzero(active[frame]).tolist():
                rows.append((t - delay, int(core_ids[c]), a))
    a = np.array(sorted(rows), np.int64).reshape(-1, 3)
    return SpikeInput(a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy(), delay)
