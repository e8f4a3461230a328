"""The client side of ``apgd_torch.py``: the worker in a process of a Python with torch and
torchattacks; ``run(command)`` -> its JSON answer (``bench_attacks.py``, ``cross_check_apgd.py``)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np


class Worker:
    def __init__(self, python, problem: dict, folder):
        path = os.path.join(folder, "apgd_problem.npz")
        np.savez(path, **problem)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apgd_torch.py")
        self.proc = subprocess.Popen([python, script, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.proc.stdout.readline())

    def run(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
