"""The device interface: integer input codes in, int64 scores out.

``Device`` is what hwq talks to; ``SocketDevice`` (a device server over the wire protocol),
``LocalDevice`` (a compiled program or any function, in this process) and your own subclass of
``BoardDevice`` (the template for a driver) all implement it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hwq.errors import DataError

from .fingerprint import model_hash


class Device:
    """Base class. ``open`` connects (idempotent), ``infer`` runs one batch, ``close`` lets go.

    ``identity`` names the device (board, firmware, serial number...), ``model_hash`` is the
    32-byte hash of the model it serves (``hwq.devices.model_hash``), or None if it cannot say.
    ``connections`` counts (re)connects so a session knows when to repeat its golden check.
    """

    identity: str = "device"
    model_hash: bytes | None = None
    connections: int = 0

    def open(self) -> Device:
        self.connections = max(self.connections, 1)
        return self

    def infer(self, codes: np.ndarray) -> np.ndarray:
        """Scores (N, n_out) int64 for integer input codes (N, n_features)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Device:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def as_scores(scores, n: int) -> np.ndarray:
    """``scores`` as an int64 (n, n_out) array, or a clear error."""
    arr = np.asarray(scores)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or len(arr) != n or arr.dtype.kind not in "iu":
        raise DataError(f"a device must return integer scores of shape ({n}, n_out), "
                        f"got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64, copy=False)


class LocalDevice(Device):
    """A compiled program (its ``forward``) or a function ``codes -> scores`` as a device."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], *, identity: str = "local",
                 model_hash: bytes | None = None, n_features: int | None = None,
                 n_outputs: int | None = None, input_bits: int | None = None,
                 input_range: tuple[int, int] | None = None, input_shape: tuple[int, ...] | None = None):
        self.fn, self.identity, self.model_hash = fn, identity, model_hash
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)  # a CNN's (C, H, W)
        self.n_features, self.n_outputs, self.input_bits = n_features, n_outputs, input_bits
        self.input_range = input_range  # (lowest, highest) input code; the server refuses others

    @classmethod
    def from_program(cls, program, identity: str | None = None) -> LocalDevice:
        net = program.net
        return cls(program.forward, identity=identity or f"hwq {program.target}",
                   model_hash=model_hash(program), n_features=net.n_features,
                   n_outputs=net.layers[-1].n_out, input_bits=net.input.bits,
                   input_range=(int(net.input.qmin), int(net.input.qmax)),
                   input_shape=tuple(net.input_shape) if net.input_shape else None)

    def infer(self, codes: np.ndarray) -> np.ndarray:
        return as_scores(self.fn(codes), len(codes))


class BoardDevice(Device):
    """Template for your board: copy it and fill in the three driver calls (docs/devices.md).

    ``model_hash`` must be the hash of the ``.hwq`` file whose mapping you loaded onto the board
    (``hwq.devices.model_hash(hwq.load_program(path))``); the golden check catches a board that
    computes something else anyway.
    """

    identity = "my-board (firmware ?)"

    def __init__(self, program):
        self.program = program  # the compiled model: weights, mapping (program.artifacts)
        self.model_hash = model_hash(program)

    def open(self) -> BoardDevice:
        # e.g. self.board = mydriver.open("/dev/ttyUSB0"); self.board.load(self.program.artifacts)
        raise NotImplementedError("BoardDevice.open: call your driver here (docs/devices.md)")

    def infer(self, codes: np.ndarray) -> np.ndarray:
        # e.g. return self.board.run(codes.astype(np.int32))  # reset state between samples!
        raise NotImplementedError("BoardDevice.infer: call your driver here (docs/devices.md)")

    def close(self) -> None:
        pass  # e.g. self.board.close()
