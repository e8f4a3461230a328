"""A device server: one client at a time, one reply per frame, never brought down by a client.

Garbage, oversized or truncated frames and dropped connections cost that connection (with a
log line), not the server. Errors inside the device are sent back as an ERROR frame and the
connection stays up.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable

import numpy as np

from .base import Device, LocalDevice
from .errors import ConnectionClosed, ProtocolError, TruncatedFrame
from .fingerprint import short
from .protocol import DEFAULT_LIMIT, NO_HASH, VERSION, Frame, Kind, array_frame, json_frame, read_frame
from .wire import is_loopback, progress_reader, send, tune

Log = Callable[[str], None]


def stderr_log(line: str) -> None:
    print(f"hwq serve: {line}", file=sys.stderr, flush=True)


def as_device(obj, *, model_hash: bytes | None = None, identity: str | None = None) -> Device:
    """A Device from a Device, a compiled program, or a function ``codes -> scores``."""
    if isinstance(obj, Device):
        device = obj
    elif hasattr(obj, "forward") and hasattr(obj, "net"):
        device = LocalDevice.from_program(obj, identity)
    elif callable(obj):
        device = LocalDevice(obj)
    else:
        raise TypeError(f"cannot serve {type(obj).__name__}: need a Device, a program or a function")
    if model_hash is not None:
        device.model_hash = model_hash
    if identity is not None:
        device.identity = identity
    return device


class Server:
    """Listens on ``host:port`` (loopback unless another address is given explicitly, with a
    warning; port 0 picks a free one) and serves ``device`` to one client at a time."""

    def __init__(self, device, host: str = "127.0.0.1", port: int = 0, *,
                 model_hash: bytes | None = None, identity: str | None = None,
                 limit: int = DEFAULT_LIMIT, frame_timeout: float = 30.0, log: Log = stderr_log):
        self.device = as_device(device, model_hash=model_hash, identity=identity)
        self.limit, self.frame_timeout, self.log = limit, frame_timeout, log
        if not is_loopback(host):
            log(f"warning: listening on {host}, not loopback: anyone who can reach it can query "
                "the model (the protocol has no authentication)")
        self.sock = socket.create_server((host, port), backlog=1)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.requests = 0

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def hash(self) -> bytes:
        return self.device.model_hash or NO_HASH

    def serve_forever(self, connections: int | None = None) -> None:
        """Serve until closed (or ``connections`` clients have come and gone)."""
        self.device.open()
        served = 0
        try:
            while connections is None or served < connections:
                try:
                    conn, peer = self.sock.accept()
                except OSError:
                    return  # closed
                served += 1
                with conn:
                    self.handle(conn, f"{peer[0]}:{peer[1]}")
        finally:
            self.device.close()

    def close(self) -> None:
        self.sock.close()

    def handle(self, conn: socket.socket, peer: str) -> None:
        tune(conn)
        while True:
            try:
                frame = read_frame(progress_reader(conn, None, self.frame_timeout), self.limit)
            except ConnectionClosed:
                return
            except TruncatedFrame as exc:
                return self.log(f"{peer}: truncated frame, connection dropped ({exc})")
            except ProtocolError as exc:
                self.log(f"{peer}: bad frame, connection dropped ({exc})")
                if self.reply(conn, peer, json_frame(Kind.ERROR, 0, self.hash, {"error": exc.message})):
                    drain(conn)
                return
            except TimeoutError:
                return self.log(f"{peer}: stalled in the middle of a frame, connection dropped")
            except OSError as exc:
                return self.log(f"{peer}: connection lost ({exc})")
            if not self.reply(conn, peer, self.respond(frame)):
                return

    def reply(self, conn: socket.socket, peer: str, frame: Frame) -> bool:
        try:
            send(conn, frame)
            return True
        except OSError as exc:
            self.log(f"{peer}: connection lost while replying ({exc})")
            return False

    def identity(self) -> dict:
        d = self.device
        return {"identity": d.identity, "model_hash": self.hash.hex(), "protocol": VERSION,
                "limit": self.limit, "n_features": getattr(d, "n_features", None),
                "n_outputs": getattr(d, "n_outputs", None), "input_bits": getattr(d, "input_bits", None)}

    def respond(self, frame: Frame) -> Frame:
        rid = frame.request_id
        if frame.kind == Kind.HELLO:
            return json_frame(Kind.IDENTITY, rid, self.hash, self.identity())
        if frame.kind != Kind.INFER:
            return self.error(rid, f"unexpected {frame.kind.name} frame (expected HELLO or INFER)")
        if frame.model_hash not in (self.hash, NO_HASH):
            return self.error(rid, f"request for model {short(frame.model_hash)}, this device "
                                   f"serves {short(self.hash)}")
        codes = frame.data
        n_features = getattr(self.device, "n_features", None)
        if codes.ndim != 2 or (n_features is not None and codes.shape[1] != n_features):
            return self.error(rid, f"inputs must have shape (N, {n_features}), got {codes.shape}")
        try:
            scores = np.asarray(self.device.infer(codes), dtype=np.int64)
        except Exception as exc:  # the device's failure goes back to the client, not up
            return self.error(rid, f"the device failed: {type(exc).__name__}: {exc}")
        self.requests += 1
        return array_frame(Kind.SCORES, rid, self.hash, scores, 64)

    def error(self, rid: int, message: str) -> Frame:
        self.log(f"request {rid}: {message}")
        return json_frame(Kind.ERROR, rid, self.hash, {"error": message})


def drain(conn: socket.socket, seconds: float = 1.0, most: int = 64 * 2**20) -> None:
    """Half-close and discard what the client still sends (briefly), so that the ERROR reply
    reaches it instead of being lost to a connection reset."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(seconds)
        got = 0
        while got < most and (chunk := conn.recv(2**20)):
            got += len(chunk)
    except OSError:
        pass


def serve(device, host: str = "127.0.0.1", port: int = 0, *, ready: Callable[[Server], None] | None = None,
          **options) -> None:
    """Serve ``device`` (a Device, a compiled program, or ``codes -> scores`` with
    ``model_hash=``) until interrupted. ``ready(server)`` is called once listening."""
    server = Server(device, host, port, **options)
    (ready or (lambda s: server.log(f"listening on {s.address} (model {short(s.hash)})")))(server)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.log("stopped")
    finally:
        server.close()
