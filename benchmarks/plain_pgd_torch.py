"""PGD written plainly in PyTorch on the float 784-100-10 ReLU model: the baseline of
``bench_attacks.py``, run by it as a worker process (any Python with numpy and torch; hwq
itself is not needed here).

    python plain_pgd_torch.py PROBLEM.npz

``PROBLEM.npz`` holds ``w1, b1, w2, b2`` (float model), ``x, y`` (inputs, labels), ``eps``,
``steps``, ``rel`` (step = rel * eps). The worker prints ``ready``, then for each line
``plain`` or ``careful`` on stdin runs that PGD once and prints one JSON line: its wall time
in seconds and the accuracy per epsilon (the float model's decision after every step; a row
once wrong stays wrong, as hwq keeps the first adversarial point).

* ``plain``: what the issue asks for and a user writes first: autograd through the forward
  pass, ``cross_entropy(reduction="sum")``, ``x + a sign(g)``, projection and clip as
  ``torch.minimum/maximum/clamp`` (new tensors each step), a second forward for the decision.
* ``careful``: the same arithmetic written for speed: the projection bounds
  ``clamp(x -+ eps, 0, 1)`` computed once, the step and the projection in place,
  ``addmm`` with pre-transposed weights.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def plain(p) -> torch.Tensor:
    w1, b1, w2, b2, X, Y, E, rel, steps = p
    cur, broken = X.clone(), torch.zeros(len(X), dtype=torch.bool)
    for _ in range(steps):
        cur.requires_grad_(True)
        logits = torch.relu(cur @ w1.T + b1) @ w2.T + b2
        loss = torch.nn.functional.cross_entropy(logits, Y, reduction="sum")
        (g,) = torch.autograd.grad(loss, cur)
        with torch.no_grad():
            cur = torch.clamp(torch.minimum(torch.maximum(cur + rel * E * g.sign(), X - E), X + E), 0, 1)
            broken |= (torch.relu(cur @ w1.T + b1) @ w2.T + b2).argmax(1) != Y
    return broken


def careful(p) -> torch.Tensor:
    w1, b1, w2, b2, X, Y, E, rel, steps = p
    lower, upper = (X - E).clamp_(0, 1), (X + E).clamp_(0, 1)
    alpha = rel * E
    w1t, w2t = w1.T.contiguous(), w2.T.contiguous()
    cur, broken = X.clone(), torch.zeros(len(X), dtype=torch.bool)
    for _ in range(steps):
        cur.requires_grad_(True)
        logits = torch.addmm(b2, torch.relu(torch.addmm(b1, cur, w1t)), w2t)
        loss = torch.nn.functional.cross_entropy(logits, Y, reduction="sum")
        (g,) = torch.autograd.grad(loss, cur)
        with torch.no_grad():
            cur = cur.detach()
            cur.addcmul_(alpha, g.sign_())
            torch.maximum(cur, lower, out=cur)
            torch.minimum(cur, upper, out=cur)
            broken |= torch.addmm(b2, torch.relu(torch.addmm(b1, cur, w1t)), w2t).argmax(1) != Y
    return broken


def load(path):
    d = np.load(path)
    f32 = {k: torch.tensor(np.asarray(d[k], np.float32)) for k in ("w1", "b1", "w2", "b2")}
    x, y, eps = d["x"], d["y"], d["eps"]
    X = torch.tensor(np.tile(x, (len(eps), 1)), dtype=torch.float32)
    Y = torch.tensor(np.tile(y, len(eps)), dtype=torch.int64)
    E = torch.tensor(np.repeat(eps, len(x)), dtype=torch.float32)[:, None]
    return (f32["w1"], f32["b1"], f32["w2"], f32["b2"], X, Y, E, float(d["rel"]), int(d["steps"])), len(eps)


def main():
    problem, k = load(sys.argv[1])
    runs = {"plain": plain, "careful": careful}
    for f in runs.values():  # warm-up (allocator, thread pool)
        f(problem[:4] + tuple(t[:64] for t in problem[4:7]) + (problem[7], 2))
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        t = time.perf_counter()
        broken = runs[name](problem)
        wall = time.perf_counter() - t
        accuracy = (1 - broken.numpy().reshape(k, -1).mean(axis=1)).tolist()
        print(json.dumps({"wall": wall, "accuracy": accuracy}), flush=True)


if __name__ == "__main__":
    main()
