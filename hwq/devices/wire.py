"""Frames over a TCP socket: addresses, reads and sends with deadlines, sends without copies."""

from __future__ import annotations

import ipaddress
import socket
import time

from hwq.errors import UsageError

from .protocol import HEADER, Frame, Header, encode

MIN_RATE = 2**20  # bytes per second: the slowest transfer a deadline allows for (1 MiB/s)


def parse_address(address: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``tcp://HOST:PORT``, ``HOST:PORT`` or ``PORT`` -> (host, port)."""
    text = address.removeprefix("tcp://")
    host, sep, port = text.rpartition(":")
    host = (host if sep else "") or default_host
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if "://" in text or not 0 <= number < 65536:
        raise UsageError(f"bad device address '{address}'", hint="use tcp://HOST:PORT")
    return host, number


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def tune(sock: socket.socket) -> None:
    """No Nagle delay. Buffer sizes are left to the kernel: setting SO_RCVBUF would turn off
    its autotuning, which grows larger than ``net.core.rmem_max`` allows to ask for."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send(sock: socket.socket, frame: Frame, timeout: float | None = None) -> None:
    """Send ``frame``; with ``timeout``, all of it within ``timeout + size / MIN_RATE`` seconds
    (a peer that stops reading raises ``TimeoutError`` instead of blocking forever)."""
    parts = encode(frame)
    if timeout is not None:
        deadline = time.monotonic() + timeout + sum(memoryview(p).nbytes for p in parts) / MIN_RATE
    for part in parts:
        if timeout is not None:
            sock.settimeout(max(1e-3, deadline - time.monotonic()))
        sock.sendall(part)


class TimedReader:
    """``recv_into`` for one frame, with three limits: the frame's first byte within ``first``
    seconds (None: wait as long as it takes), then the whole frame within ``base + size /
    MIN_RATE`` seconds of that first byte (the header's ``base`` alone until the header says
    how long the frame is), and never ``stall`` seconds without a byte. A peer that trickles a
    byte now and then is cut off at the deadline; a slow but steady transfer is not."""

    def __init__(self, sock: socket.socket, first: float | None, base: float, stall: float | None = None):
        self.sock, self.first, self.base, self.stall = sock, first, base, stall
        self.started: float | None = None  # when the first byte came
        self.deadline: float | None = None
        self.got = 0

    def __call__(self, view: memoryview) -> int:
        if self.started is None:
            self.sock.settimeout(self.first)
        else:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("frame deadline passed")
            self.sock.settimeout(left if self.stall is None else min(left, self.stall))
        n = self.sock.recv_into(view)
        if self.started is None:
            self.started = time.monotonic()
            self.deadline = self.started + self.base
        self.got += n
        return n

    def expect(self, head: Header) -> None:
        """The header has come: the rest of the frame is due by ``base + size / MIN_RATE``."""
        self.deadline = self.started + self.base + (HEADER.size + head.length + 4) / MIN_RATE
