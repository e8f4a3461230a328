"""``SocketDevice``: a device server reached over TCP, speaking the wire protocol.

Every request waits for its own reply: the reply must echo the request id and the model
hash, or it is refused. No first byte of the reply within ``timeout + per_row * rows``
seconds, no byte for ``timeout`` seconds once the reply flows, or the whole reply not in
within ``timeout + size / MIN_RATE`` seconds of its first byte raises ``DeviceTimeout``
naming the last acknowledged request. A dropped connection is retried ``reconnects`` times,
then ``DeviceError``. Everything the device says is checked before it is used (the IDENTITY's
fields, the replies' kinds, shapes and types): a device that breaks the protocol gives one
``DeviceError`` line, never another exception. Batches larger than a frame allows (by the
device's limit and this side's, for the request and for its reply) go as several requests.
"""

from __future__ import annotations

import socket
import time

import numpy as np

from hwq.errors import DataError
from hwq.ir.codes import container

from .base import Device, as_scores
from .errors import (
    ConnectionClosed,
    DeviceBusy,
    DeviceError,
    DeviceMismatch,
    DeviceTimeout,
    ProtocolError,
    TruncatedFrame,
)
from .fingerprint import short
from .protocol import DEFAULT_LIMIT, NO_HASH, VERSION, Frame, Kind, array_frame, json_frame, one_line, read_frame
from .wire import TimedReader, parse_address, send, tune

DROPS = (ConnectionClosed, TruncatedFrame, OSError)  # TimeoutError (an OSError) is caught first
WIRE_DTYPES = [np.dtype(t) for t in ("u1", "i1", "u2", "i2", "i4", "i8")]


def narrow(codes: np.ndarray) -> np.ndarray:
    """The codes in the smallest wire dtype that holds them (uint8 for 8-bit codes)."""
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        if codes.size and not np.array_equal(codes, np.round(codes)):
            raise DataError("device inputs must be integer codes")
    if codes.dtype in WIRE_DTYPES[:4]:
        return codes
    lo, hi = (int(codes.min()), int(codes.max())) if codes.size else (0, 0)
    dtype = container(lo, hi, WIRE_DTYPES, wide=None)
    if dtype is not None:
        return codes.astype(dtype)
    raise DataError("device inputs do not fit in 64-bit codes")


def whole(value, low: int, high: int | None = None) -> int | None:
    """``value`` if it is an integer in [low, high] (not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high):
        return value
    return None


IDENTITY_FIELDS = {  # field: (lowest, highest, may be null)
    "protocol": (VERSION, VERSION, True), "limit": (1, None, True), "max_rows": (1, None, True),
    "n_features": (1, None, True), "n_outputs": (1, None, True), "input_bits": (1, 64, True),
}


def read_identity(info: dict, where: str) -> dict:
    """The IDENTITY's fields, each checked (integers in range or null; the identity as one
    printable line), or a ``DeviceError`` naming the first bad one."""
    out = {"identity": one_line(info.get("identity") if isinstance(info.get("identity"), str) else "unknown device",
                                120) or "unknown device"}
    for name, (low, high, nullable) in IDENTITY_FIELDS.items():
        value = info.get(name)
        if value is None and nullable:
            out[name] = None
            continue
        if whole(value, low, high) is None:
            span = f"{low}" + (f" to {high}" if high is not None else " or more")
            raise DeviceError(f"{where} sent an invalid identity: {name} is {one_line(repr(value), 40)} "
                              f"(expected an integer, {span}, or null)",
                              hint="the device does not speak hwq's protocol correctly")
        out[name] = value
    shape = info.get("input_shape")  # a CNN's sample shape (C, H, W), C-order rows of n_features
    if shape is not None and (not isinstance(shape, list) or not 1 <= len(shape) <= 3
                              or any(whole(d, 1) is None for d in shape)
                              or (out["n_features"] is not None and int(np.prod(shape)) != out["n_features"])):
        raise DeviceError(f"{where} sent an invalid identity: input_shape is {one_line(repr(shape), 40)} "
                          "(expected 1 to 3 positive integers whose product is n_features, or null)",
                          hint="the device does not speak hwq's protocol correctly")
    out["input_shape"] = shape
    return out


class SocketDevice(Device):
    def __init__(self, address: str, *, model_hash: bytes | None = None, timeout: float = 30.0,
                 per_row: float = 1e-3, connect_timeout: float = 10.0, reconnects: int = 3,
                 limit: int = DEFAULT_LIMIT):
        self.host, self.port = parse_address(address)
        self.address = f"tcp://{self.host}:{self.port}"
        self.expected = model_hash
        self.timeout, self.per_row, self.connect_timeout = timeout, per_row, connect_timeout
        self.reconnects, self.limit = reconnects, limit
        self.reconnect_window = min(connect_timeout, 2.0)  # per reconnect attempt
        self.sock: socket.socket | None = None
        self.info: dict = {}
        self.next_id, self.last_ack, self.connections = 1, None, 0

    @property
    def where(self) -> str:
        return f"the device at {self.address}"

    # -- session -----------------------------------------------------------------------
    def open(self) -> SocketDevice:
        if self.sock is None:
            self._connect()
        return self

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _connect(self, window: float | None = None) -> None:
        """Connect and exchange HELLO/IDENTITY within ``window`` seconds (a device that is
        down, or busy with as many clients as it takes, is retried until then)."""
        deadline = time.monotonic() + (self.connect_timeout if window is None else window)
        while True:
            try:
                reply = self._hello(deadline)
                break
            except DeviceBusy:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.model_hash = reply.model_hash
        self.identity = self.info["identity"]
        self.connections += 1
        if self.expected is not None and reply.model_hash != self.expected:
            self.close()
            raise DeviceMismatch(f"{self.where} ({self.identity}) serves model "
                                 f"{short(reply.model_hash)}, expected {short(self.expected)}",
                                 hint="serve the same .hwq file on the device")

    def _hello(self, deadline: float) -> Frame:
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=max(0.1, deadline - time.monotonic()))
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise DeviceError(f"cannot reach {self.where} ({exc.strerror or exc})",
                                      hint="is `hwq serve` running there?") from None
                time.sleep(0.1)
        tune(sock)
        self.sock = sock
        try:
            reply = self._exchange(json_frame(Kind.HELLO, self._id(), self.expected or NO_HASH,
                                              {"client": "hwq"}), Kind.IDENTITY, 0)
            self.info = read_identity(reply.data, self.where)
        except DROPS as exc:
            self.close()
            raise DeviceError(f"{self.where} closed the connection before it identified itself "
                              f"({one_line(str(exc), 200)})", hint="is it an hwq device server?") from None
        except BaseException:
            self.close()
            raise
        return reply

    def _id(self) -> int:
        rid, self.next_id = self.next_id, self.next_id + 1
        return rid

    def rows_per_request(self, codes: np.ndarray) -> int:
        """The largest batch one request may carry: its frame within the device's limit, its
        reply (int64 scores) within the device's and this side's."""
        limit = min(self.info.get("limit") or self.limit, self.limit)
        rows = (self.info.get("limit") or self.limit) // max(1, codes.shape[1] * codes.dtype.itemsize)
        if self.info.get("n_outputs"):
            rows = min(rows, limit // (8 * self.info["n_outputs"]))
        if self.info.get("max_rows"):
            rows = min(rows, self.info["max_rows"])
        return max(1, rows)

    # -- one exchange --------------------------------------------------------------------
    def infer(self, codes: np.ndarray) -> np.ndarray:
        codes = narrow(codes)
        if codes.ndim != 2:
            raise DataError(f"device inputs must be 2-D (N, n_features), got shape {codes.shape}")
        if self.sock is None and not self.info:
            self.open()
        step = self.rows_per_request(codes)
        if len(codes) <= step:
            return self._infer(codes)
        parts = [self._infer(codes[i:i + step]) for i in range(0, len(codes), step)]
        if len({part.shape[1] for part in parts}) != 1:
            raise DeviceError(f"{self.where} returned a different number of scores per row for parts of one batch")
        return np.concatenate(parts)

    def _infer(self, codes: np.ndarray) -> np.ndarray:
        dropped = None
        for attempt in range(self.reconnects + 1):
            if dropped is not None:
                time.sleep(min(2.0, 0.2 * 2 ** (attempt - 1)))
            try:
                if self.sock is None:
                    self._connect(self.connect_timeout if dropped is None else self.reconnect_window)
            except DeviceMismatch:
                raise
            except DeviceError:
                if dropped is None:
                    raise
                continue
            bits = min(self.info.get("input_bits") or 64, codes.dtype.itemsize * 8)
            frame = array_frame(Kind.INFER, self._id(), self.model_hash or NO_HASH, codes, bits)
            try:
                return self._scores(self._exchange(frame, Kind.SCORES, len(codes)), len(codes))
            except DROPS as exc:
                self.close()
                dropped = (frame.request_id, exc)
        rid, exc = dropped
        raise DeviceError(
            f"{self.where} dropped the connection during request {rid} and did "
            f"not come back after {self.reconnects} reconnects ({exc}); last acknowledged "
            f"request: {self.last_ack}", hint="restart the device server and rerun")

    def _scores(self, reply: Frame, n: int) -> np.ndarray:
        n_out = self.info.get("n_outputs")
        scores = reply.data
        if scores.ndim != 2 or len(scores) != n or (n_out and scores.shape[1] != n_out):
            self.close()
            raise DeviceError(f"{self.where} answered request {reply.request_id} with scores of shape "
                              f"{scores.shape}, expected ({n}, {n_out or 'n_outputs'})")
        return as_scores(scores, n)

    def _exchange(self, frame: Frame, want: Kind, rows: int) -> Frame:
        first = self.timeout + self.per_row * rows
        reader = TimedReader(self.sock, first, self.timeout, self.timeout)
        sent = False
        try:
            send(self.sock, frame, self.timeout)
            sent = True
            reply = read_frame(reader, self.limit, reader.expect)
        except TimeoutError:
            self.close()
            if not sent:
                what = f"did not take request {frame.request_id} ({rows} rows) in time"
            elif reader.started is None:
                what = f"did not answer request {frame.request_id} ({rows} rows) within {first:.1f} s"
            else:
                what = (f"sent its reply to request {frame.request_id} too slowly ({reader.got} bytes in "
                        f"{time.monotonic() - reader.started:.1f} s)")
            raise DeviceTimeout(f"{self.where} {what}; last acknowledged request: {self.last_ack}",
                                hint="raise the timeout if the device is just slow") from None
        except DROPS:
            raise
        except ProtocolError as exc:  # the stream is out of step: this connection is done
            self.close()
            raise DeviceError(f"{self.where} sent a bad frame in reply to request {frame.request_id}: "
                              f"{exc.message}", hint="the device does not speak hwq's protocol correctly") from None
        return self._check(frame, reply, want)

    def _check(self, frame: Frame, reply: Frame, want: Kind) -> Frame:
        where = self.where
        if reply.kind == Kind.ERROR and reply.request_id == 0 != frame.request_id:  # refused before it read the id
            self.close()
            reason = reply.data.get("error")
            raise (DeviceBusy if reply.data.get("busy") is True else DeviceError)(
                f"{where} refused the connection: "
                f"{one_line(reason, 500) if isinstance(reason, str) else 'no reason given'}")
        if reply.request_id != frame.request_id:
            self.close()
            raise DeviceError(f"{where} answered request {reply.request_id} while request "
                              f"{frame.request_id} was waiting: stale or foreign reply refused")
        if reply.kind == Kind.ERROR:
            reason = reply.data.get("error")
            raise DeviceError(f"{where} refused request {frame.request_id}: "
                              f"{one_line(reason, 500) if isinstance(reason, str) else 'no reason given'}")
        if reply.kind != want:
            self.close()
            raise DeviceError(f"{where} sent a {reply.kind.name} frame, expected {want.name}")
        if frame.kind != Kind.HELLO and reply.model_hash != self.model_hash:
            self.close()
            raise DeviceMismatch(f"{where} answered request {frame.request_id} for model "
                                 f"{short(reply.model_hash)}, the session is for "
                                 f"{short(self.model_hash or NO_HASH)}: reply refused")
        self.last_ack = frame.request_id
        return reply
