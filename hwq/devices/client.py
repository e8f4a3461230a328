"""``SocketDevice``: a device server reached over TCP, speaking the wire protocol.

Every request waits for its own reply: the reply must echo the request id and the model
hash, or it is refused. No reply within ``timeout + per_row * rows`` seconds (and no
progress for ``timeout`` seconds once a reply is flowing) raises ``DeviceTimeout`` naming the
last acknowledged request. A dropped connection is retried ``reconnects`` times, then
``DeviceError``.
"""

from __future__ import annotations

import socket
import time

import numpy as np

from hwq.errors import DataError

from .base import Device, as_scores
from .errors import ConnectionClosed, DeviceError, DeviceMismatch, DeviceTimeout, TruncatedFrame
from .fingerprint import short
from .protocol import DEFAULT_LIMIT, NO_HASH, Frame, Kind, array_frame, json_frame, read_frame
from .wire import parse_address, progress_reader, send, tune

DROPS = (ConnectionClosed, TruncatedFrame, ConnectionError, BrokenPipeError)
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
    for dt in WIRE_DTYPES:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return codes.astype(dt)
    raise DataError("device inputs do not fit in 64-bit codes")


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
        deadline = time.monotonic() + (self.connect_timeout if window is None else window)
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=max(0.1, deadline - time.monotonic()))
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise DeviceError(f"cannot reach the device at {self.address} ({exc.strerror or exc})",
                                      hint="is `hwq serve` running there?") from None
                time.sleep(0.1)
        tune(sock)
        self.sock = sock
        try:
            reply = self._exchange(json_frame(Kind.HELLO, self._id(), self.expected or NO_HASH,
                                              {"client": "hwq"}), Kind.IDENTITY, 0)
        except BaseException:
            self.close()
            raise
        self.info, self.model_hash = reply.data, reply.model_hash
        self.identity = str(self.info.get("identity", "unknown device"))
        self.connections += 1
        if self.expected is not None and reply.model_hash != self.expected:
            self.close()
            raise DeviceMismatch(f"the device at {self.address} ({self.identity}) serves model "
                                 f"{short(reply.model_hash)}, expected {short(self.expected)}",
                                 hint="serve the same .hwq file on the device")

    def _id(self) -> int:
        rid, self.next_id = self.next_id, self.next_id + 1
        return rid

    # -- one exchange --------------------------------------------------------------------
    def infer(self, codes: np.ndarray) -> np.ndarray:
        codes = narrow(codes)
        if codes.ndim != 2:
            raise DataError(f"device inputs must be 2-D (N, n_features), got shape {codes.shape}")
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
            bits = min(int(self.info.get("input_bits") or 64), codes.dtype.itemsize * 8)
            frame = array_frame(Kind.INFER, self._id(), self.model_hash or NO_HASH, codes, bits)
            try:
                return as_scores(self._exchange(frame, Kind.SCORES, len(codes)).data, len(codes))
            except DROPS as exc:
                self.close()
                dropped = (frame.request_id, exc)
        rid, exc = dropped
        raise DeviceError(
            f"the device at {self.address} dropped the connection during request {rid} and did "
            f"not come back after {self.reconnects} reconnects ({exc}); last acknowledged "
            f"request: {self.last_ack}", hint="restart the device server and rerun")

    def _exchange(self, frame: Frame, want: Kind, rows: int) -> Frame:
        limit = self.timeout + self.per_row * rows
        try:
            send(self.sock, frame)
            reply = read_frame(progress_reader(self.sock, limit, self.timeout), self.limit)
        except TimeoutError:
            self.close()
            raise DeviceTimeout(
                f"the device at {self.address} did not answer request {frame.request_id} "
                f"({rows} rows) within {limit:.1f} s; last acknowledged request: {self.last_ack}",
                hint="raise the timeout if the device is just slow") from None
        return self._check(frame, reply, want)

    def _check(self, frame: Frame, reply: Frame, want: Kind) -> Frame:
        where = f"the device at {self.address}"
        if reply.request_id != frame.request_id:
            self.close()
            raise DeviceError(f"{where} answered request {reply.request_id} while request "
                              f"{frame.request_id} was waiting: stale or foreign reply refused")
        if reply.kind == Kind.ERROR:
            raise DeviceError(f"{where} refused request {frame.request_id}: "
                              f"{reply.data.get('error', 'no reason given')}")
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
