"""A device server: clients served side by side, one reply per frame, never brought down by one.

Each connection has its own thread, so an idle, slow or hostile client costs only its own
connection: it is dropped after ``idle_timeout`` seconds without a frame, or when a frame
does not arrive whole within ``frame_timeout + size / MIN_RATE`` seconds of its first byte.
Garbage, oversized or truncated frames cost that connection (with a log line and, where it
can still be sent, an ERROR frame); a well-framed message with bad content (wrong payload
type, bad JSON, inputs of the wrong shape or range) and errors inside the device are
answered with an ERROR frame and the connection stays up.

Memory is bounded: frames are at most ``limit`` bytes, a request is admitted only if its
reply fits ``limit`` too (``max_rows``, in the IDENTITY), requests in flight together hold at
most twice the limit, and the device computes big batches in chunks of ``CHUNK_BYTES``. The
device itself is called by one thread at a time (a board is one board).
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable

import numpy as np

from .base import Device, LocalDevice, as_scores
from .errors import BadMessage, ConnectionClosed, FrameTooLarge, ProtocolError, TruncatedFrame
from .fingerprint import short
from .protocol import (
    DEFAULT_LIMIT,
    NO_HASH,
    VERSION,
    Frame,
    Header,
    Kind,
    array_frame,
    json_frame,
    one_line,
    read_frame,
)
from .wire import TimedReader, is_loopback, send, tune

Log = Callable[[str], None]
TURN_AWAY = 256  # clients told "busy" at once (each for at most a second); more are just closed
CHUNK_BYTES = 8 * 2**20  # input codes, counted as int64, handed to the device per call


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


class Budget:
    """Bytes of frames held in memory by all connections together."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self.cond = threading.Condition()

    def take(self, n: int, timeout: float) -> bool:
        with self.cond:
            if not self.cond.wait_for(lambda: self.used + n <= self.total, timeout):
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        if n:
            with self.cond:
                self.used -= n
                self.cond.notify_all()


class Server:
    """Listens on ``host:port`` (loopback unless another address is given explicitly, with a
    warning; port 0 picks a free one) and serves ``device`` to up to ``max_clients`` clients
    at once; one more is answered with an ERROR frame (``"busy": true``; ``SocketDevice``
    retries within its connect window) and let go."""

    def __init__(self, device, host: str = "127.0.0.1", port: int = 0, *,
                 model_hash: bytes | None = None, identity: str | None = None,
                 limit: int = DEFAULT_LIMIT, frame_timeout: float = 30.0, idle_timeout: float = 600.0,
                 max_clients: int = 32, log: Log = stderr_log):
        self.device = as_device(device, model_hash=model_hash, identity=identity)
        self.limit, self.frame_timeout, self.idle_timeout, self.log = limit, frame_timeout, idle_timeout, log
        self.max_clients = max_clients
        n_out = getattr(self.device, "n_outputs", None)
        self.max_rows = limit // (8 * n_out) if n_out else None  # the largest batch whose reply fits
        if not is_loopback(host):
            log(f"warning: listening on {host}, not loopback: anyone who can reach it can query "
                "the model (the protocol has no authentication)")
        self.sock = socket.create_server((host, port), backlog=max(128, max_clients))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.requests = 0
        self.budget = Budget(2 * limit)
        self.device_lock = threading.Lock()
        self.lock = threading.Lock()  # guards the two sets below and ``requests``
        self.threads: set[threading.Thread] = set()
        self.turning_away = 0
        self.conns: set[socket.socket] = set()

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
                    break  # closed
                served += 1
                self.start(conn, f"{peer[0]}:{peer[1]}")
            while live := list(self.threads):  # let the connections finish (close() ends them at once)
                live[0].join(1.0)
        finally:
            self.device.close()

    def start(self, conn: socket.socket, peer: str) -> None:
        with self.lock:
            busy = len(self.threads) >= self.max_clients
            if not busy:
                thread = threading.Thread(target=self.connection, args=(conn, peer), daemon=True,
                                          name=f"hwq serve {peer}")
                self.threads.add(thread)
                self.conns.add(conn)
        if busy:
            self.log(f"{peer}: turned away, {self.max_clients} clients are connected")
            with self.lock:
                self.turning_away += 1
                polite = self.turning_away <= TURN_AWAY  # else just closed: a flood gets no more threads
            if polite:
                threading.Thread(target=self.turn_away, args=(conn, peer), daemon=True).start()
            else:
                self.turned(conn)
            return
        thread.start()

    def turn_away(self, conn: socket.socket, peer: str) -> None:
        """Tell one client too many that the server is busy (then let its HELLO drain, so that
        the reply is not lost to a connection reset)."""
        try:
            if self.reply(conn, peer, json_frame(Kind.ERROR, 0, self.hash, {
                    "error": f"the device server is busy ({self.max_clients} clients connected); retry later",
                    "busy": True})):
                drain(conn, 1.0, 2**20)
        finally:
            self.turned(conn)

    def turned(self, conn: socket.socket) -> None:
        conn.close()
        with self.lock:
            self.turning_away -= 1

    def close(self) -> None:
        self.sock.close()
        with self.lock:
            for conn in self.conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def connection(self, conn: socket.socket, peer: str) -> None:
        try:
            with conn:
                self.handle(conn, peer)
        except Exception as exc:  # a thread's last word: one log line, never a traceback, never the server
            self.log(f"{peer}: connection dropped after an unexpected {type(exc).__name__}: {one_line(str(exc))}")
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())
                self.conns.discard(conn)

    def handle(self, conn: socket.socket, peer: str) -> None:
        tune(conn)
        while self.serve_one(conn, peer):
            pass

    def serve_one(self, conn: socket.socket, peer: str) -> bool:
        """Read one frame and answer it; False once the connection is done."""
        reader = TimedReader(conn, self.idle_timeout, self.frame_timeout, self.frame_timeout)
        held = [0]

        def admit(head: Header) -> None:
            reader.expect(head)
            held[0] = self.admit(head)

        try:
            try:
                frame = read_frame(reader, self.limit, admit)
            except ConnectionClosed:
                return False
            except TruncatedFrame as exc:
                self.log(f"{peer}: truncated frame, connection dropped ({exc})")
                return False
            except BadMessage as exc:  # a whole frame: the stream is in step, the connection stays
                return self.reply(conn, peer, self.error(exc.request_id, exc.message))
            except ProtocolError as exc:
                self.log(f"{peer}: bad frame, connection dropped ({exc})")
                if self.reply(conn, peer, json_frame(Kind.ERROR, exc.request_id, self.hash, {"error": exc.message})):
                    drain(conn)
                return False
            except TimeoutError:
                if reader.started is None:
                    self.log(f"{peer}: idle for {self.idle_timeout:g} s, connection dropped")
                else:
                    self.log(f"{peer}: sent {reader.got} bytes of a frame too slowly, connection dropped")
                return False
            except OSError as exc:
                self.log(f"{peer}: connection lost ({exc})")
                return False
            return self.reply(conn, peer, self.respond(frame))
        finally:
            self.budget.give(held[0])

    def admit(self, head: Header) -> int:
        """Refuse an INFER whose reply would exceed the limit, before reading it; then wait for
        room in the memory budget. Returns the bytes taken from the budget."""
        if head.kind != Kind.INFER:
            return 0
        rows = head.shape[0] if head.shape else 0
        if self.max_rows is not None and len(head.shape) == 2 and rows > self.max_rows:
            raise FrameTooLarge(f"a batch of {rows} rows would need a reply of {rows * 8 * self.device.n_outputs} "
                                f"bytes, over the limit of {self.limit}; send at most {self.max_rows} rows "
                                "per request", request_id=head.request_id)
        need = head.length + (rows * 8 * self.device.n_outputs if self.max_rows is not None else head.length)
        if not self.budget.take(need, self.frame_timeout):
            raise FrameTooLarge(f"the server is busy with other large requests ({need} bytes needed); "
                                "retry, or send smaller batches", request_id=head.request_id)
        return need

    def reply(self, conn: socket.socket, peer: str, frame: Frame) -> bool:
        try:
            send(conn, frame, self.frame_timeout)
            return True
        except TimeoutError:
            self.log(f"{peer}: did not read its reply, connection dropped")
            return False
        except OSError as exc:
            self.log(f"{peer}: connection lost while replying ({exc})")
            return False

    def identity(self) -> dict:
        d = self.device
        return {"identity": d.identity, "model_hash": self.hash.hex(), "protocol": VERSION,
                "limit": self.limit, "max_rows": self.max_rows, "n_features": getattr(d, "n_features", None),
                "n_outputs": getattr(d, "n_outputs", None), "input_bits": getattr(d, "input_bits", None),
                "input_shape": (list(d.input_shape) if getattr(d, "input_shape", None) else None)}

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
        lo, hi = getattr(self.device, "input_range", None) or (None, None)
        if codes.size and lo is not None and (int(codes.min()) < lo or int(codes.max()) > hi):
            return self.error(rid, f"input codes must lie in [{lo}, {hi}], got codes from {int(codes.min())} "
                                   f"to {int(codes.max())}")
        try:
            scores = self.compute(codes)
        except Exception as exc:  # the device's failure goes back to the client, not up
            return self.error(rid, f"the device failed: {type(exc).__name__}: {one_line(str(exc))}")
        if scores.nbytes > self.limit:
            return self.error(rid, f"the reply of {scores.nbytes} bytes would exceed the limit of {self.limit}; "
                                   "send smaller batches")
        with self.lock:
            self.requests += 1
        return array_frame(Kind.SCORES, rid, self.hash, scores, 64)

    def compute(self, codes: np.ndarray) -> np.ndarray:
        """The device's scores for ``codes``, in chunks of ``CHUNK_BYTES`` of int64 codes (a
        device may widen them), one chunk at a time on the device."""
        step = max(1, CHUNK_BYTES // (8 * max(1, codes.shape[1])))
        if len(codes) <= step:
            with self.device_lock:
                return as_scores(self.device.infer(codes), len(codes))
        out = None
        for start in range(0, len(codes), step):
            chunk = codes[start:start + step]
            with self.device_lock:
                part = as_scores(self.device.infer(chunk), len(chunk))
            if out is None:
                out = np.empty((len(codes), part.shape[1]), np.int64)
                if out.nbytes > self.limit:
                    raise ValueError(f"the scores of {len(codes)} rows would exceed the limit of {self.limit} bytes")
            elif part.shape[1] != out.shape[1]:
                raise ValueError(f"the device returned {part.shape[1]} scores per row, earlier {out.shape[1]}")
            out[start:start + len(chunk)] = part
        return out

    def error(self, rid: int, message: str) -> Frame:
        message = one_line(message, 2000)
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
