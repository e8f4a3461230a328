"""torchattacks' APGD / APGDT (a port of the reference implementation, fra31/auto-attack) on
the float model in PyTorch: the reference for hwq's APGD, run by ``bench_attacks.py`` and
``cross_check_apgd.py`` as a worker process (any Python with numpy, torch and torchattacks;
hwq itself is not needed, only its pure-numpy ``hwq/attack/noise.py``, loaded by path).

    python apgd_torch.py PROBLEM.npz

``PROBLEM.npz``: ``w1, b1, w2, b2`` (the float 784-h-10 ReLU model), ``x, y``, ``eps``,
``steps``, ``seed``, ``norm`` ("linf" | "l2"), ``side`` (images are ``side x side``). The worker
prints ``ready``, then for each line on stdin runs once and prints one JSON line:

* ``ce matched`` / ``t matched``: APGD-CE / APGDT (9 targets, DLR-targeted) with the random
  start of every run replaced by hwq's (``torch.rand`` inside ``attack_single_run`` returns
  ``hwq.attack.noise.uniform(keys(seed, eps, run), input index)``, run = target - 2 for
  APGDT): the same starts, so the two differ only in arithmetic (float32 here, float64 in
  hwq) and in what judges (the float model here, the 16-bit integer model in hwq). Prints
  ``robust`` (K, N): the float model right on the returned point and on every iterate.
* ``ce`` / ``t``: the same with torchattacks' own randomness (``torch.manual_seed(seed)``).
Each line also has ``wall`` (seconds) and ``row_steps`` (steps x rows attacked: torchattacks
runs every attacked row every step).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import numpy as np
import torch
import torchattacks

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("hwq_noise", os.path.join(HERE, "..", "hwq", "attack", "noise.py"))
noise = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(noise)


class MLP(torch.nn.Module):
    def __init__(self, w1, b1, w2, b2):
        super().__init__()
        self.w1, self.b1, self.w2, self.b2 = (torch.nn.Parameter(torch.tensor(v, dtype=torch.float32),
                                                                 requires_grad=False) for v in (w1, b1, w2, b2))

    def forward(self, v):
        v = v.reshape(len(v), -1)
        return torch.relu(v @ self.w1.T + self.b1) @ self.w2.T + self.b2


class Matched:
    """Within ``attack_single_run``, ``torch.rand(shape)`` returns hwq's start noise for the
    rows being attacked (found by their content) and the current run."""

    def __init__(self, x, seed, eps):
        self.index = {row.tobytes(): i for i, row in enumerate(np.asarray(x, np.float32))}
        self.seed, self.eps = seed, float(np.round(eps, 12))

    def __call__(self, attack, original, x_in, y_in):
        rows = np.array([self.index[r.tobytes()] for r in x_in.reshape(len(x_in), -1).numpy()])
        run = attack.target_class - 2 if getattr(attack, "target_class", None) else 0
        key = np.repeat(noise.keys(self.seed, [self.eps], run), len(rows))
        u = noise.uniform(key, rows, int(np.prod(x_in.shape[1:])))
        real = torch.rand

        def rand(*shape, **kw):
            return torch.tensor(u.reshape(tuple(x_in.shape)), dtype=torch.float32)

        torch.rand = rand
        try:
            return original(attack, x_in, y_in)
        finally:
            torch.rand = real


def run(problem, which: str, matched: bool):
    d = problem
    model = MLP(d["w1"], d["b1"], d["w2"], d["b2"]).eval()
    side = int(d["side"])
    X = torch.tensor(np.asarray(d["x"], np.float32).reshape(-1, 1, side, side))
    Y = torch.tensor(np.asarray(d["y"], np.int64))
    norm = {"linf": "Linf", "l2": "L2"}[str(d["norm"])]
    robust, row_steps, wall = [], 0, 0.0
    cls = torchattacks.APGD if which == "ce" else torchattacks.APGDT
    original = cls.attack_single_run
    for e in d["eps"]:
        e = float(e)
        with torch.no_grad():
            clean = model(X).argmax(1) == Y
        if e == 0:
            robust.append(clean.numpy().tolist())
            continue
        kw = dict(norm=norm, eps=e, steps=int(d["steps"]), n_restarts=1, seed=int(d["seed"]))
        attack = cls(model, loss="ce", **kw) if which == "ce" else cls(model, n_classes=10, **kw)
        counted = {"rows": 0}

        def single(self, x_in, y_in, matcher=Matched(d["x"], int(d["seed"]), e) if matched else None,
                   counted=counted):
            counted["rows"] += len(x_in)
            if matcher is None:
                return original(self, x_in, y_in)
            return matcher(self, original, x_in, y_in)

        cls.attack_single_run = single
        try:
            t = time.perf_counter()
            adv = attack(X, Y)
            wall += time.perf_counter() - t
        finally:
            cls.attack_single_run = original
        row_steps += counted["rows"] * int(d["steps"])
        with torch.no_grad():
            robust.append(((model(adv).argmax(1) == Y) & clean).numpy().tolist())
    return {"robust": robust, "wall": wall, "row_steps": row_steps}


def main():
    problem = dict(np.load(sys.argv[1]))
    print(json.dumps({"ready": True, "torch": torch.__version__, "torchattacks": torchattacks.__version__,
                      "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        parts = line.split()
        print(json.dumps(run(problem, parts[0], len(parts) > 1 and parts[1] == "matched")), flush=True)


if __name__ == "__main__":
    main()
