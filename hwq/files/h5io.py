"""One generic HDF5 writer/reader for hwq's frozen dataclasses (NIR-style).

A dataclass becomes a group with attribute ``type`` (its class name); each field becomes a
dataset (arrays), a sub-group (dataclasses, tuples of dataclasses) or an attribute (numbers,
strings, tuples of numbers; ``None`` is an absent attribute). Files are written to a temporary
name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from hwq import ir
from hwq.errors import FileFormatError
from hwq.files.atomic import atomic_path
from hwq.quant import qnet

TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (ir.Grid, ir.Affine, ir.Activation, ir.Output, ir.Flatten, ir.Graph, ir.Quantizer,
                qnet.InputFormat, qnet.Requant, qnet.QLayer, qnet.TensorReport,
                qnet.QuantSettings, qnet.QuantizedNetwork)
}
SEQUENCE = "sequence"


def write(group: h5py.Group, obj) -> None:
    group.attrs["type"] = type(obj).__name__
    for f in dataclasses.fields(obj):
        write_value(group, f.name, getattr(obj, f.name))


def write_value(group: h5py.Group, name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, np.ndarray):
        group.create_dataset(name, data=value)
    elif dataclasses.is_dataclass(value):
        write(group.create_group(name), value)
    elif isinstance(value, tuple) and value and all(dataclasses.is_dataclass(v) for v in value):
        sub = group.create_group(name)
        sub.attrs["type"] = SEQUENCE
        for i, v in enumerate(value):
            write(sub.create_group(str(i)), v)
    elif isinstance(value, tuple) and not value:
        group.attrs[name] = np.zeros(0)
    else:
        group.attrs[name] = value


def read(group: h5py.Group):
    kind = group.attrs.get("type")
    if kind == SEQUENCE:
        return tuple(read(group[str(i)]) for i in range(len(group)))
    if kind not in TYPES:
        raise FileFormatError(f"unknown object type {kind!r} in {group.name}")
    cls = TYPES[kind]
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in group:
            item = group[f.name]
            kwargs[f.name] = read(item) if isinstance(item, h5py.Group) else item[()]
        elif f.name in group.attrs:
            kwargs[f.name] = plain(group.attrs[f.name])
    return cls(**kwargs)


def plain(value):
    """HDF5 attributes back to the Python types the dataclasses declare."""
    if isinstance(value, np.ndarray):
        return tuple(value.tolist())
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


@contextmanager
def atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """Open a temporary HDF5 file for writing and rename it over ``path`` only on success."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        yield f


def open_checked(path: str | Path, kind: str, versions: tuple[int, ...]) -> h5py.File:
    """Open an hwq HDF5 file and check its ``format`` and ``version`` attributes."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise FileFormatError(f"{path}: not an HDF5 file, or a corrupt one") from None
    fmt, version = f.attrs.get("format"), f.attrs.get("version", -1)
    if fmt != kind:
        f.close()
        raise FileFormatError(f"{path}: not an hwq {kind} file (format={fmt!r})")
    if int(version) not in versions:
        f.close()
        raise FileFormatError(f"{path}: {kind} version {version} is not supported",
                              hint=f"this hwq reads versions {', '.join(map(str, versions))}")
    return f


def guarded(path, action: Callable):
    """Run ``action`` and turn any low-level read error into one FileFormatError line."""
    try:
        return action()
    except FileFormatError:
        raise
    except Exception as exc:
        raise FileFormatError(f"{path}: corrupt file ({type(exc).__name__}: {exc})") from None
