"""``DeviceProgram``: a device presented as a program, so the attack engine judges on it.

It has ``net``, ``target``, ``forward``, ``decide``, ``report`` and ``artifacts`` but no
``trace``: a device has no operating point to differentiate, so attacks take their gradient
from the bit-exact model of the same compiled network (``reference``).
"""

from __future__ import annotations

import numpy as np

from .fingerprint import model_hash, short
from .session import Session


class DeviceProgram:
    def __init__(self, device, reference, *, golden: int = 8, check_every: int = 50):
        self.device, self.reference, self.net = device, reference, reference.net
        self.target = "device"
        self.exact = False  # a device claims nothing; the golden gate and disagreement counts check it
        self.options: dict = {}
        self.artifacts: dict = {}
        self.session = Session(device, reference, golden=golden, every=check_every)
        self.hash = model_hash(reference)

    @property
    def address(self) -> str:
        return getattr(self.device, "address", "local")

    @property
    def report(self) -> dict:
        return {"device": self.address, "identity": self.device.identity,
                "model_hash": self.hash.hex(), "reference_target": self.reference.target,
                "golden_checks": self.session.checks, "batches": self.session.batches}

    def open(self) -> DeviceProgram:
        self.session.open()
        return self

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> DeviceProgram:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def bit_exact_model(self):
        """The model the surrogate gradient follows (``hwq.attack.gradients.reference_for``)."""
        return self.reference

    def forward(self, x_q) -> np.ndarray:
        return self.session.infer(np.asarray(x_q))

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return self.reference.decide(scores)

    def describe(self) -> str:
        return f"{self.address} ({self.device.identity}, model {short(self.hash)})"
