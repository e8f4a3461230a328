"""Frames over a TCP socket: addresses, progress-based reads, sends without copies."""

from __future__ import annotations

import ipaddress
import socket

from hwq.errors import UsageError

from .protocol import Frame, Reader, encode


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


def send(sock: socket.socket, frame: Frame) -> None:
    for part in encode(frame):
        sock.sendall(part)


def progress_reader(sock: socket.socket, first: float | None, idle: float | None) -> Reader:
    """``recv_into`` that waits up to ``first`` seconds for the first bytes, then up to
    ``idle`` seconds for each further chunk: a slow but moving transfer is not cut off."""
    sock.settimeout(first)
    state = {"started": False}

    def readinto(view):
        n = sock.recv_into(view)
        if not state["started"]:
            state["started"] = True
            sock.settimeout(idle)
        return n

    return readinto
