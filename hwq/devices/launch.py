"""Device servers started as commands: their address, within a start-up deadline.

A device command (``hwq serve MODEL``, a board's flashing and serving script, Lava's device
in its own Python) prints ``listening tcp://HOST:PORT`` as its first line on stdout. A command
that prints something else, exits, or says nothing within the deadline is an error, never a
wait without end.
"""

from __future__ import annotations

import subprocess
import threading

from .errors import DeviceError
from .protocol import one_line

START_TIMEOUT = 120.0  # seconds for a device command to start listening


def wait_listening(proc: subprocess.Popen, timeout: float | None = None, what: str = "the device command") -> str:
    """The address from ``proc``'s first stdout line within ``timeout`` seconds (default
    ``START_TIMEOUT``), or a one-line ``DeviceError`` (with the last line the command wrote to
    stderr, where stderr is a pipe and the command has ended). The caller stops ``proc``."""
    timeout = START_TIMEOUT if timeout is None else timeout
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if line and line[0].startswith("listening ") and len(line[0].split()) == 2:
        return line[0].split()[1]
    if not line:
        raise DeviceError(f"{what} did not print 'listening tcp://HOST:PORT' within {timeout:g} s",
                          hint="check that it starts a device server and prints its address first")
    try:
        code = proc.wait(2.0 if not line[0] else 0.0)
    except subprocess.TimeoutExpired:
        code = None
    last = ""
    if proc.stderr is not None and code is not None:
        last = next((s for s in reversed(proc.stderr.read().strip().splitlines()) if s.strip()), "")
    got = (f"it printed {one_line(line[0], 80)!r}" if line[0] else
           "it closed its output" if code is None else f"it exited with code {code}")
    raise DeviceError(f"{what} did not print 'listening tcp://HOST:PORT' ({got}"
                      + (f"; its last words: {one_line(last, 200)}" if last else "") + ")")
