"""The hwq device wire protocol, version 1 (docs/devices.md): one frame per message.

A frame is a fixed 96-byte little-endian header, the payload, and the 4-byte end marker::

    off size field
      0    4 magic        b"HWQD"
      4    1 version      1
      5    1 kind         1 HELLO, 2 IDENTITY, 3 INFER, 4 SCORES, 5 ERROR
      6    1 dtype        1 u8, 2 i8, 3 u16, 4 i16, 5 i32, 6 i64, 16 UTF-8 JSON
      7    1 bits         significant bits of each value (<= 8 * itemsize)
      8    8 request id   u64; a response echoes its request's id
     16   32 model hash   SHA-256 of the compiled model; a response echoes the device's
     48    1 ndim         0..4
     49    7 reserved     zero
     56   32 shape        4 x u64 (unused dimensions 0)
     88    8 payload len  bytes; must equal prod(shape) * itemsize and not exceed the limit
     96    n payload      C-order little-endian values (or UTF-8 JSON text)
   96+n    4 end marker   b"HWQE"

Nothing from the wire is executed or unpickled: arrays are read straight into numpy buffers
of the declared dtype, and JSON payloads are parsed with ``json.loads`` only, after their
size (``JSON_LIMIT``) and nesting depth (``JSON_DEPTH``) are checked. HELLO, IDENTITY and
ERROR carry a JSON object, INFER and SCORES an array; any other pairing is refused.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from .errors import BadMessage, ConnectionClosed, FrameTooLarge, ProtocolError, TruncatedFrame

MAGIC, END, VERSION = b"HWQD", b"HWQE", 1
HEADER = struct.Struct("<4sBBBBQ32sB7s4QQ")
MAX_DIMS = 4
DEFAULT_LIMIT = 512 * 2**20  # bytes of payload per frame
JSON_LIMIT = 64 * 2**10  # bytes of a JSON payload (HELLO, IDENTITY, ERROR are a few hundred)
JSON_DEPTH = 8  # nesting of JSON objects and arrays; the protocol's messages are flat
NO_HASH = bytes(32)


class Kind(IntEnum):
    HELLO = 1
    IDENTITY = 2
    INFER = 3
    SCORES = 4
    ERROR = 5


JSON = 16
JSON_KINDS = frozenset({Kind.HELLO, Kind.IDENTITY, Kind.ERROR})  # the others carry arrays
DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<i1"), 3: np.dtype("<u2"), 4: np.dtype("<i2"),
          5: np.dtype("<i4"), 6: np.dtype("<i8")}
CODES = {dt: code for code, dt in DTYPES.items()}


@dataclass(frozen=True, eq=False)
class Frame:
    """One message. ``data`` is an ndarray (INFER, SCORES) or a JSON object (the others)."""

    kind: Kind
    request_id: int
    model_hash: bytes
    data: Any
    bits: int = 0


def json_frame(kind: Kind, request_id: int, model_hash: bytes, obj: dict) -> Frame:
    return Frame(kind, request_id, model_hash, obj, 8)


def array_frame(kind: Kind, request_id: int, model_hash: bytes, array: np.ndarray,
                bits: int | None = None) -> Frame:
    array = np.asarray(array)
    array = np.require(array, dtype=array.dtype.newbyteorder("<"), requirements="C")
    return Frame(kind, request_id, model_hash, array, array.dtype.itemsize * 8 if bits is None else bits)


def encode(frame: Frame) -> list:
    """The frame as three buffers (header, payload, end marker); the payload is not copied."""
    if isinstance(frame.data, np.ndarray):
        arr = frame.data
        if arr.dtype not in CODES or arr.ndim > MAX_DIMS or not arr.flags.c_contiguous:
            raise ProtocolError(f"cannot send an array of dtype {arr.dtype}, shape {arr.shape}")
        dtype, shape, payload = CODES[arr.dtype], arr.shape, memoryview(arr.reshape(-1).view(np.uint8))
    else:
        payload = memoryview(json.dumps(frame.data, separators=(",", ":")).encode())
        dtype, shape = JSON, (len(payload),)
    if len(frame.model_hash) != 32 or not 0 <= frame.request_id < 2**64:
        raise ProtocolError("a frame needs a 32-byte model hash and a u64 request id")
    dims = tuple(shape) + (0,) * (MAX_DIMS - len(shape))
    header = HEADER.pack(MAGIC, VERSION, int(frame.kind), dtype, frame.bits, frame.request_id,
                         frame.model_hash, len(shape), bytes(7), *dims, payload.nbytes)
    return [header, payload, END]


def to_bytes(frame: Frame) -> bytes:
    return b"".join(bytes(part) for part in encode(frame))


Reader = Callable[[memoryview], int]  # like socket.recv_into: bytes read, 0 at end of stream


def read_exact(readinto: Reader, view: memoryview, what: str) -> None:
    got = 0
    while got < len(view):
        n = readinto(view[got:])
        if n == 0:
            raise TruncatedFrame(f"connection closed after {got} of {len(view)} bytes of the {what}")
        got += n


@dataclass(frozen=True)
class Header:
    kind: Kind
    dtype: int
    bits: int
    request_id: int
    model_hash: bytes
    shape: tuple
    length: int


def parse_header(raw: bytes, limit: int) -> Header:
    magic, version, kind, dtype, bits, rid, mhash, ndim, reserved, *rest = HEADER.unpack(raw)
    dims, length = rest[:MAX_DIMS], rest[MAX_DIMS]
    if magic != MAGIC:
        raise ProtocolError(f"not an hwq device frame (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version} is not supported (this side speaks {VERSION})")
    if kind not in Kind._value2member_map_:
        raise ProtocolError(f"unknown frame kind {kind}")
    if dtype != JSON and dtype not in DTYPES:
        raise ProtocolError(f"unknown dtype code {dtype}")
    if reserved != bytes(7):
        raise ProtocolError("reserved header bytes are not zero")
    if ndim > MAX_DIMS or any(dims[ndim:]):
        raise ProtocolError(f"bad shape: ndim {ndim}, dims {dims}")
    shape = tuple(dims[:ndim])
    if length > (JSON_LIMIT if dtype == JSON else limit):
        raise FrameTooLarge(f"frame payload of {length} bytes exceeds the limit of "
                            f"{JSON_LIMIT if dtype == JSON else limit} bytes", request_id=rid)
    itemsize = 1 if dtype == JSON else DTYPES[dtype].itemsize
    if (dtype == JSON and ndim != 1) or int(np.prod(shape, dtype=object)) * itemsize != length:
        raise ProtocolError(f"payload length {length} does not match shape {shape}")
    if bits > 8 * itemsize:
        raise ProtocolError(f"bit width {bits} does not fit dtype code {dtype}")
    return Header(Kind(kind), dtype, bits, rid, mhash, shape, length)


def read_frame(readinto: Reader, limit: int = DEFAULT_LIMIT,
               on_header: Callable[[Header], None] | None = None) -> Frame:
    """Read one frame. Raises ``ConnectionClosed`` at a clean end of stream before a frame,
    ``TruncatedFrame``, ``FrameTooLarge`` or ``ProtocolError`` for anything malformed, and
    ``BadMessage`` for a whole frame whose payload does not suit its kind (the stream is still
    in step then). ``on_header`` sees the header before any payload is allocated or read (to
    refuse it, raise; to set a deadline for the rest, note its length)."""
    raw = bytearray(HEADER.size)
    view = memoryview(raw)
    first = readinto(view)
    if first == 0:
        raise ConnectionClosed("the peer closed the connection")
    read_exact(readinto, view[first:], "frame header")
    head = parse_header(bytes(raw), limit)
    if on_header is not None:
        on_header(head)
    if head.dtype == JSON:
        buf = bytearray(head.length)
        read_exact(readinto, memoryview(buf), "frame payload")
        data = bytes(buf)
    else:
        data = np.empty(head.shape, DTYPES[head.dtype])
        read_exact(readinto, memoryview(data.reshape(-1).view(np.uint8)), "frame payload")
    end = bytearray(len(END))
    read_exact(readinto, memoryview(end), "end-of-frame marker")
    if bytes(end) != END:
        raise ProtocolError(f"missing end-of-frame marker (got {bytes(end)!r})", request_id=head.request_id)
    if (head.dtype == JSON) != (head.kind in JSON_KINDS):
        want = "a JSON object" if head.kind in JSON_KINDS else "an integer array"
        raise BadMessage(f"{head.kind.name} frames carry {want}, not this payload", request_id=head.request_id)
    if head.dtype == JSON:
        data = decode_json(data, head.request_id)
    return Frame(head.kind, head.request_id, head.model_hash, data, head.bits)


STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_depth(buf: bytes) -> int:
    """How deeply the objects and arrays of JSON text nest (brackets inside strings aside)."""
    text = np.frombuffer(STRINGS.sub(b'""', buf), np.uint8)
    step = np.isin(text, (ord("["), ord("{"))).astype(np.int64) - np.isin(text, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def decode_json(buf: bytes, request_id: int = 0) -> dict:
    """A JSON object from the wire: at most ``JSON_LIMIT`` bytes and ``JSON_DEPTH`` levels
    deep, checked before ``json.loads`` sees it (whose recursion is Python's)."""
    if len(buf) > JSON_LIMIT:
        raise BadMessage(f"a JSON payload of {len(buf)} bytes exceeds the limit of {JSON_LIMIT}",
                         request_id=request_id)
    if (depth := json_depth(buf)) > JSON_DEPTH:
        raise BadMessage(f"JSON nested {depth} levels deep (at most {JSON_DEPTH})", request_id=request_id)
    try:
        obj = json.loads(buf.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadMessage(f"bad JSON payload: {one_line(str(exc))}", request_id=request_id) from None
    if not isinstance(obj, dict):
        raise BadMessage("a JSON payload must be an object", request_id=request_id)
    return obj


def one_line(text: str, most: int = 300) -> str:
    """Text from a peer as one printable line of at most ``most`` characters."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return text if len(text) <= most else text[:most - 3] + "..."


def from_bytes(buf: bytes, limit: int = DEFAULT_LIMIT) -> Frame:
    """Decode one frame from ``buf`` (tests, tools); trailing bytes are an error."""
    pos = 0

    def readinto(view: memoryview) -> int:
        nonlocal pos
        n = min(len(view), len(buf) - pos)
        view[:n] = buf[pos:pos + n]
        pos += n
        return n

    frame = read_frame(readinto, limit)
    if pos != len(buf):
        raise ProtocolError(f"{len(buf) - pos} bytes after the end-of-frame marker")
    return frame
