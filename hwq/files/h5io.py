"""One generic HDF5 writer/reader for hwq's frozen dataclasses (NIR-style).

A dataclass becomes a group with attribute ``type`` (its class name); each field becomes a
dataset (arrays), a sub-group (dataclasses, tuples of dataclasses) or an attribute (numbers,
strings, tuples of numbers; ``None`` is an absent attribute). Files are written to a temporary
name and renamed, so a reader never sees half a file.

Reading is one safe path for every HDF5 file hwq reads: ``open_h5`` opens a regular file and
walks its whole tree first (``check_tree``), refusing soft and external links, datasets with
external storage or virtual sources, groups reached twice (link cycles) and datasets that
declare far more data than they store; ``read`` checks every field against its dataclass's
declared types, then the class's own ``validate()``; ``sealed_h5``/``check_seal`` put the
sha256 of a file's bytes in its HDF5 user block and verify it before anything parses the file
(``.hwq`` files).
"""

from __future__ import annotations

import dataclasses
import hashlib
import stat
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from hwq import ir
from hwq.errors import FileFormatError, HwqError
from hwq.files.atomic import atomic_path
from hwq.quant import qnet
from hwq.quant.qnet import short

TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (ir.Grid, ir.Affine, ir.Activation, ir.Output, ir.Flatten, ir.Graph, ir.Quantizer,
                ir.Window, ir.Conv2d, ir.AvgPool2d, ir.SumPool2d, ir.MaxPool2d,
                qnet.InputFormat, qnet.Requant, qnet.QLayer, qnet.QPool, qnet.TensorReport,
                qnet.QuantSettings, qnet.QuantizedNetwork)
}
SEQUENCE = "sequence"


def register(*classes: type) -> None:
    """Let ``read`` build these frozen dataclasses too: a target's typed artifacts (its mapping
    records), registered by the target's module. A name already taken by another class is a
    programming error, refused at import."""
    for cls in classes:
        if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):
            raise TypeError(f"h5io.register: {cls.__name__} is not a frozen dataclass")
        if TYPES.get(cls.__name__, cls) is not cls:
            raise TypeError(f"h5io.register: the type name {cls.__name__} is taken by {TYPES[cls.__name__]}")
        TYPES[cls.__name__] = cls


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
    """The object stored in ``group``: every field checked against the type its dataclass
    declares (``check_field``; integer arrays must be stored as integers), then the class's
    ``validate()`` where it has one. Anything else is a one-line ``FileFormatError``."""
    if not isinstance(group, h5py.Group):
        raise FileFormatError(f"{group.name} should be a group, found a dataset")
    kind = plain(group.attrs.get("type"))
    if kind == SEQUENCE:
        names = sorted(group)
        if names != sorted(str(i) for i in range(len(names))):
            raise FileFormatError(f"{group.name}: a sequence's members must be named 0..{len(names) - 1}")
        return tuple(read(group[str(i)]) for i in range(len(names)))
    if not isinstance(kind, str) or kind not in TYPES:
        raise FileFormatError(f"unknown object type {short(kind)} in {group.name}")
    cls = TYPES[kind]
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for extra in sorted((set(group) | set(group.attrs)) - names - {"type"}):
        raise FileFormatError(f"{group.name}: unexpected field {short(extra)} in a {kind}")
    kwargs, raw = {}, {}
    for f in dataclasses.fields(cls):
        if f.name in group and f.name in group.attrs:
            raise FileFormatError(f"{group.name}/{f.name} is stored twice")
        if f.name in group:
            item = group[f.name]
            value = read(item) if isinstance(item, h5py.Group) else item[()]
        elif f.name in group.attrs:
            value = plain(group.attrs[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise FileFormatError(f"{group.name}: the {kind} has no {f.name!r}")
        else:
            continue
        if not check_field(value, hints[f.name]):
            raise FileFormatError(f"{group.name}/{f.name}: {describe(value)} is not a valid "
                                  f"{type_name(hints[f.name])}")
        kwargs[f.name], raw[f.name] = value, value
    try:
        obj = cls(**kwargs)
    except HwqError as exc:
        raise FileFormatError(f"{group.name}: {exc.line()}") from None
    for name, value in raw.items():  # a stored array must survive the field's dtype unchanged
        if isinstance(value, np.ndarray):
            lossless(group.name, name, value, getattr(obj, name))
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except HwqError as exc:
            raise FileFormatError(f"{group.name}: {exc.line()}") from None
    return obj


def lossless(where: str, name: str, raw: np.ndarray, stored: np.ndarray) -> None:
    """Refuse a stored array that the field's dtype would change: float codes in an integer
    field (truncated), integers beyond int64, booleans or text where numbers belong."""
    if not isinstance(stored, np.ndarray) or raw.shape != stored.shape:
        raise FileFormatError(f"{where}/{name}: shape {raw.shape} changed on reading")
    if np.issubdtype(stored.dtype, np.integer):
        ok = raw.dtype.kind in "iu" and (raw.size == 0 or (int(raw.min()) >= np.iinfo(stored.dtype).min
                                                          and int(raw.max()) <= np.iinfo(stored.dtype).max))
        if not ok:
            raise FileFormatError(f"{where}/{name}: integer codes expected, found {raw.dtype} values"
                                  + (" out of int64 range" if raw.dtype.kind in "iu" else ""))
    elif np.issubdtype(stored.dtype, np.floating) and raw.dtype.kind not in "iuf":
        raise FileFormatError(f"{where}/{name}: numbers expected, found {raw.dtype}")


def check_field(value, hint) -> bool:
    """Whether ``value`` (as read) fits the declared type ``hint`` (``int``, ``float``,
    ``str``, ``bool``, ``np.ndarray``, dataclasses, ``tuple[...]``, unions)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(check_field(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is np.ndarray:
        return isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(check_field(v, args[0]) for v in value)
        return len(value) == len(args) and all(check_field(v, a) for v, a in zip(value, args))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return False


def type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("numpy.", "np.")


def describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"{type(value).__name__} {short(value, 40)}"


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


MAX_OBJECTS = 1_000_000  # groups and datasets in one file
MAX_EXPANSION = 1100  # deflate, the only compression hwq writes, inflates at most 1032:1
SLACK_BYTES = 1 << 20


def open_h5(path: str | Path) -> h5py.File:
    """Open an HDF5 file for reading, the one way hwq does: a regular file (not a device, a
    FIFO or a folder), whose whole tree passes ``check_tree``; one-line ``FileFormatError``
    otherwise. The caller closes it (``with open_h5(p) as f``)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError:
        raise FileFormatError(f"{path}: no such file") from None
    if not stat.S_ISREG(mode):
        raise FileFormatError(f"{path}: not a regular file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise FileFormatError(f"{path}: not an HDF5 file, or a corrupt one") from None
    try:
        guarded(path, lambda: check_tree(f))
    except FileFormatError as exc:
        f.close()
        prefix = "" if exc.message.startswith(f"{path}:") else f"{path}: "
        raise FileFormatError(prefix + exc.message, hint=exc.hint) from None
    except BaseException:
        f.close()
        raise
    return f


def check_tree(f: h5py.File) -> None:
    """Walk every link of the file (iteratively, each group once) and refuse what could make a
    reader leave the file or loop: soft links, external links, a group reached twice (a hard
    link cycle), datasets with external storage or virtual sources, datasets that declare
    more data than their stored bytes can hold, references. Raises ``FileFormatError``."""
    seen = {f.id}
    stack: list[h5py.Group] = [f]
    count = 0
    while stack:
        group = stack.pop()
        for name in group:
            if not name.isprintable():
                raise FileFormatError(f"{group.name}: a member name with control characters: {short(name)}")
            link = group.get(name, getlink=True)
            where = f"{group.name.rstrip('/')}/{name}"
            if isinstance(link, h5py.SoftLink):
                raise FileFormatError(f"{where} is a soft link (to {short(link.path)}); hwq files have none")
            if isinstance(link, h5py.ExternalLink):
                raise FileFormatError(f"{where} is an external link (to {short(link.filename)}); "
                                      "hwq reads nothing outside the file")
            if not isinstance(link, h5py.HardLink):
                raise FileFormatError(f"{where} is a link of an unknown kind")
            count += 1
            if count > MAX_OBJECTS:
                raise FileFormatError(f"more than {MAX_OBJECTS} objects in the file")
            obj = group[name]
            if isinstance(obj, h5py.Group):
                if obj.id in seen:
                    raise FileFormatError(f"{where} links to a group already seen (a link cycle)")
                seen.add(obj.id)
                stack.append(obj)
            elif isinstance(obj, h5py.Dataset):
                check_dataset(obj, where)
            else:
                raise FileFormatError(f"{where} is a {type(obj).__name__}, not a group or dataset")


def check_dataset(d: h5py.Dataset, where: str) -> None:
    if d.external:
        raise FileFormatError(f"{where} keeps its data in external files ({short(d.external[0][0])}); "
                              "hwq reads nothing outside the file")
    if d.is_virtual:
        raise FileFormatError(f"{where} is a virtual dataset (its data lives in other files)")
    if h5py.check_dtype(ref=d.dtype) is not None or (d.dtype.kind == "O" and h5py.check_string_dtype(d.dtype) is None):
        raise FileFormatError(f"{where} holds references or variable-length data ({d.dtype})")
    if d.dtype.kind != "O":
        stored = d.id.get_storage_size()
        if d.nbytes > MAX_EXPANSION * stored + SLACK_BYTES:
            raise FileFormatError(f"{where} declares {d.nbytes} bytes of data but stores {stored}")


SEAL_SIZE = 512  # HDF5 user block: bytes the HDF5 library skips
SEAL_MAGIC = b"hwq-sha256 "
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@contextmanager
def sealed_h5(path: str | Path) -> Iterator[h5py.File]:
    """``atomic_h5`` for a file whose bytes are sealed: written with a 512-byte user block that
    receives the sha256 of every byte after it (``seal``) before the rename."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=SEAL_SIZE) as f:
            yield f
        seal(tmp)


def _bytes_digest(fh) -> str:
    fh.seek(SEAL_SIZE)
    h = hashlib.sha256()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def seal(path: str | Path) -> None:
    """Write ``hwq-sha256 <hex>`` (the sha256 of the bytes after the user block) into the
    user block of an HDF5 file made with ``userblock_size=SEAL_SIZE``."""
    with open(path, "r+b") as fh:
        line = SEAL_MAGIC + _bytes_digest(fh).encode() + b"\n"
        fh.seek(0)
        fh.write(line.ljust(SEAL_SIZE, b"\0"))


def check_seal(path: str | Path) -> bool:
    """Verify a sealed file's bytes before any HDF5 parsing (a damaged HDF5 file can make the
    library loop or crash). False when the file has no user block (an HDF5 signature at byte
    0: written before seals, or not by hwq); ``FileFormatError`` when the seal is unreadable or
    the bytes differ from what was written."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise FileFormatError(f"{path}: not a regular file")
        with open(path, "rb") as fh:
            head = fh.read(SEAL_SIZE)
            if head.startswith(HDF5_SIGNATURE):
                return False
            if len(head) < SEAL_SIZE or not head.startswith(SEAL_MAGIC):
                raise FileFormatError(f"{path}: damaged file, or not one hwq wrote (no readable content digest)")
            stored = head[len(SEAL_MAGIC):len(SEAL_MAGIC) + 64]
            if _bytes_digest(fh).encode() != stored:
                raise FileFormatError(f"{path}: damaged file: its bytes do not match the sha256 digest it was "
                                      "written with", hint="recompile the model or restore the file")
    except OSError as exc:
        raise FileFormatError(f"{path}: {exc.strerror or exc}") from None
    return True


def open_checked(path: str | Path, kind: str, versions: tuple[int, ...]) -> h5py.File:
    """Open an hwq HDF5 file (``open_h5``) and check its ``format`` and ``version`` attributes."""
    path = Path(path)
    f = open_h5(path)

    def check():
        fmt, version = plain(f.attrs.get("format")), plain(f.attrs.get("version", -1))
        if not isinstance(fmt, str) or fmt != kind:
            raise FileFormatError(f"{path}: not an hwq {kind} file (format={short(fmt)})")
        if not isinstance(version, int) or isinstance(version, bool) or version not in versions:
            raise FileFormatError(f"{path}: {kind} version {short(version)} is not supported",
                                  hint=f"this hwq reads versions {', '.join(map(str, versions))}")
    try:
        guarded(path, check)
    except BaseException:
        f.close()
        raise
    return f


def guarded(path, action: Callable):
    """Run ``action`` and turn any low-level read error into one FileFormatError line that
    names the file."""
    try:
        return action()
    except FileFormatError as exc:
        if exc.message.startswith(f"{path}:"):
            raise
        raise FileFormatError(f"{path}: {exc.message}", hint=exc.hint) from None
    except Exception as exc:
        raise FileFormatError(f"{path}: corrupt file ({type(exc).__name__}: {exc})") from None
